#!/bin/bash
# The fleet lab's checks (`cargo xtask vm-test --fleet`): three guests of the systemd guest's
# image, each its own kernel, on one virtual network (10.78.0.0/24), each with the Debian
# package under systemd and the agent's mutual-TLS listener on port 7443, its certificate made
# by `faultline certs` and a policy that makes the controller's certificate admin. The guest
# named ctl runs `faultline fleet run` across all three over mutual TLS; a and b serve it and
# check their own side when ctl asks them (a line on TCP port 7999). xtask writes this script,
# the package, the guest's role and its certificates to the lab disk (/mnt/lab, read-only);
# faultline-lab.service runs it with the serial console as its output. Every line starts with
# `fleet:`; each guest's verdict is one `FAULTLINE-FLEET-RESULT:` line, then it powers off.
set -u
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
LAB=/mnt/lab
ROLE=$(cat "$LAB/role")
declare -A IP=([ctl]=10.78.0.1 [a]=10.78.0.2 [b]=10.78.0.3)
declare -A MAC=([ctl]=52:54:00:78:00:01 [a]=52:54:00:78:00:02 [b]=52:54:00:78:00:03)
# ctl's second address: a's loss is aimed at it alone, so the pings that measure the loss
# lose packets while the controller's own gRPC traffic to a (from IP[ctl]) does not.
PING_FROM=10.78.0.11
DEV=lab0
LISTEN_PORT=7443
CONTROL_PORT=7999
# b's TCP services: 7100 is blocked in the first experiment, 7101 delayed.
BLOCKED_PORT=7100
DELAYED_PORT=7101
TLS=/etc/faultline/tls
RUN=/run/fleet-lab
mkdir -p "$RUN"

PREFIX=fleet
RESULT_MARKER="FAULTLINE-FLEET-RESULT:"
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

diagnose() {
    echo "--- journalctl -u faultline (last 30 lines)"
    journalctl -u faultline --no-pager -n 30
}

# The faultline CLI against one of the three agents, over mutual TLS with the controller's
# certificate.
remote() {
    local who="$1"
    shift
    faultline --agent "https://${IP[$who]}:$LISTEN_PORT" --tls-cert "$TLS/controller/client.pem" \
        --tls-key "$TLS/controller/client-key.pem" --ca "$TLS/controller/ca.pem" "$@"
}

# TCP connect to HOST PORT: prints connected, refused or timeout.
connect() {
    local out
    out=$(timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>&1)
    case $? in
        0) echo connected ;;
        124) echo timeout ;;
        *) case $out in *refused*) echo refused ;; *) echo "error: $out" ;; esac ;;
    esac
}

# Milliseconds one TCP connect to HOST PORT takes (bash's /dev/tcp: the SYN and its answer),
# timed inside the one shell that connects, so that starting it is not counted; -1 if none.
connect_ms() {
    timeout 5 bash -c 'a=$EPOCHREALTIME; exec 3<>"/dev/tcp/$0/$1" || exit 1; b=$EPOCHREALTIME
        echo $(( (${b/./} - ${a/./}) / 1000 ))' "$1" "$2" 2>/dev/null || echo -1
}

# Percentage of N pings from PING_FROM to HOST that were lost.
ping_loss() {
    ping -q -n -c "$2" -i 0.05 -W 1 -I "$PING_FROM" "$1" 2>/dev/null |
        sed -n 's/.* \([0-9.]*\)% packet loss.*/\1/p'
}

# The network: the NIC with this role's MAC becomes lab0 with the role's address.
network() {
    local nic=""
    for d in /sys/class/net/*; do
        [ "$(cat "$d/address")" = "${MAC[$ROLE]}" ] && nic=$(basename "$d")
    done
    [ -n "$nic" ] || fail "no NIC with MAC ${MAC[$ROLE]}: $(ls /sys/class/net)"
    ip link set "$nic" down
    ip link set "$nic" name "$DEV" || fail "renaming $nic to $DEV"
    ip addr add "${IP[$ROLE]}/24" dev "$DEV"
    [ "$ROLE" = ctl ] && ip addr add "$PING_FROM/24" dev "$DEV"
    ip link set "$DEV" up
    hostnamectl set-hostname "fleet-$ROLE" 2>/dev/null || hostname "fleet-$ROLE"
}

# The package, its TLS files and its configuration, then the agent under systemd.
agent() {
    dpkg -i "$LAB/faultline.deb" 2>&1 | sed 's/^/fleet:   /' >&2
    [ "${PIPESTATUS[0]}" = 0 ] || fail "dpkg -i faultline.deb"
    mkdir -p "$TLS"
    cp -r "$LAB/tls/." "$TLS/"
    chmod -R go-rwx "$TLS"
    cat >> /etc/faultline/faultline.toml <<EOF

# The fleet lab's settings (fleet.sh).
listen = "${IP[$ROLE]}:$LISTEN_PORT"
tls-cert = "$TLS/agent/agent.pem"
tls-key = "$TLS/agent/agent-key.pem"
client-ca = "$TLS/agent/ca.pem"
policy = "/etc/faultline/policy.toml"
EOF
    cat > /etc/faultline/policy.toml <<EOF
# The fleet lab's controller may do everything, --force included.
[admin]
certificates = ["controller"]
EOF
    systemctl start faultline || fail "systemctl start faultline"
    [ "$(systemctl show -p SubState --value faultline)" = running ] ||
        fail "faultline is not running: $(systemctl show -p SubState --value faultline)"
    ss -ltn "sport = :$LISTEN_PORT" | sed 's/^/fleet:   /' >&2
    ss -ltn "sport = :$LISTEN_PORT" | grep -q LISTEN || fail "nothing listens on $LISTEN_PORT"
}

# What a guest must not hold once every fault is over.
assert_clean() {
    local what="$1"
    nft list table inet faultline > /dev/null 2>&1 &&
        fail "$what: the nftables table is left: $(nft list table inet faultline)"
    tc qdisc show dev "$DEV" | grep -Eq 'clsact|netem|tbf|htb' &&
        fail "$what: qdiscs left on $DEV: $(tc qdisc show dev "$DEV")"
    ip -o link show | grep -q ' fl-' && fail "$what: an IFB is left: $(ip -o link show | grep ' fl-')"
    local left
    left=$(find /sys/fs/cgroup -mindepth 1 -type d -regex '.*/faultline/[^/]+' 2>/dev/null)
    [ -z "$left" ] || fail "$what: stress cgroups left: $left"
    pgrep -f 'faultline __worker' > /dev/null && fail "$what: stress workers left"
    local open
    open=$(faultline ls -o json | jq '[.[] | select(.state == "active")] | length')
    [ "$open" = 0 ] || fail "$what: $open faults active"
    true
}

# a and b: the faults of experiment EXP that the controller could no longer renew were
# reverted by this agent when their lease ran out, within a second of it (read from this
# guest's own clock: the lease's expiry that the agent kept, and its audit line for the revert).
check_lease() {
    local exp="$1" ids id
    ids=$(faultline ls -o json | jq -r --arg e "$exp" '.[] | select(.labels.experiment == $e) | .id')
    [ -n "$ids" ] || fail "no fault of experiment $exp on this agent"
    for id in $ids; do
        local fault state reason expires reverted late
        fault=$(faultline get "$id" -o json)
        state=$(jq -r .state <<< "$fault")
        reason=$(jq -r .reason <<< "$fault")
        expires=$(jq -r .lease_expires_at <<< "$fault")
        reverted=$(jq -r --arg id "$id" \
            'select(.rpc == "automatic-revert" and .fault.id == $id) | .time' \
            /var/lib/faultline/audit.log | tail -n 1)
        say "fault $id: $state ($reason); lease ran out at $expires, reverted at $reverted"
        [ "$state" = reverted ] || fail "fault $id of $exp is $state"
        [ "$reason" = "lease expired" ] || fail "fault $id of $exp ended for \"$reason\", not its lease"
        [ -n "$reverted" ] || fail "no automatic-revert audit line for fault $id"
        late=$(awk -v a="$(date -d "$expires" +%s.%N)" -v b="$(date -d "$reverted" +%s.%N)" \
            'BEGIN { printf "%.3f", b - a }')
        say "fault $id reverted ${late}s after its lease ran out"
        awk -v l="$late" 'BEGIN { exit !(l >= -0.05 && l <= 1.0) }' ||
            fail "fault $id reverted ${late}s after its lease ran out (want within 1 s)"
    done
}

# a and b: serve until ctl says `done`; each command is one line on CONTROL_PORT.
serve() {
    if [ "$ROLE" = b ]; then
        nc -lk "$BLOCKED_PORT" < /dev/null > /dev/null 2>&1 &
        nc -lk "$DELAYED_PORT" < /dev/null > /dev/null 2>&1 &
    fi
    say "ready: agent on ${IP[$ROLE]}:$LISTEN_PORT, commands on $CONTROL_PORT"
    local line
    while true; do
        line=$(timeout 1800 nc -l "$CONTROL_PORT" < /dev/null) || fail "no command from ctl in 30 minutes"
        say "ctl asks: $line"
        set -- $line
        case "${1:-}" in
            lease) step "the lease reverted experiment $2's faults"; check_lease "$2"; done_step ;;
            clean) step "nothing is left"; assert_clean "at the end"; done_step ;;
            done) return 0 ;;
            *) say "unknown command: $line" ;;
        esac
    done
}

# ctl: sends a command to a or b (retried while the guest is busy with the previous one).
tell() {
    local who="$1" i
    shift
    for i in $(seq 1 120); do
        echo "$*" | nc -N -w 5 "${IP[$who]}" "$CONTROL_PORT" 2>/dev/null && return 0
        sleep 1
    done
    fail "$who did not take \"$*\" within 2 minutes"
}

targets() {
    cat <<EOF
targets:
  - {address: "https://${IP[ctl]}:$LISTEN_PORT", labels: {role: ctl}}
  - {address: "https://${IP[a]}:$LISTEN_PORT", labels: {role: a}}
  - {address: "https://${IP[b]}:$LISTEN_PORT", labels: {role: b}}
tls: {cert: $TLS/controller/client.pem, key: $TLS/controller/client-key.pem, ca: $TLS/controller/ca.pem}
EOF
}

# ctl: waits until the experiment's N faults are active on the agents.
wait_active() {
    local exp="$1" want="$2" i n who
    for i in $(seq 1 120); do
        n=0
        for who in ctl a b; do
            n=$((n + $(remote "$who" ls -o json 2>/dev/null |
                jq --arg e "$exp" '[.[] | select(.labels.experiment == $e and .state == "active")] | length')))
        done
        [ "$n" -ge "$want" ] && return 0
        sleep 0.5
    done
    fail "the $want faults of $exp were not active within 60 s"
}

controller() {
    step "the three agents answer over mutual TLS"
    local who i
    for who in ctl a b; do
        for i in $(seq 1 300); do
            remote "$who" info > "$RUN/info-$who" 2>&1 && break
            sleep 1
        done
        remote "$who" info > "$RUN/info-$who" 2>&1 || fail "$who: $(cat "$RUN/info-$who")"
        say "$who: kernel $(remote "$who" info -o json | jq -r .kernel_release)"
    done
    done_step

    step "experiment 1: loss, a block and a delay across the virtual network, graded"
    local loss0 refused0 ms0
    loss0=$(ping_loss "${IP[a]}" 100)
    refused0=$(connect "${IP[b]}" "$BLOCKED_PORT")
    ms0=$(connect_ms "${IP[b]}" "$DELAYED_PORT")
    [ "$ms0" -ge 0 ] || fail "b:$DELAYED_PORT is not reachable before any fault"
    say "without faults: ${loss0}% of pings to a lost; b:$BLOCKED_PORT $refused0; connect to b:$DELAYED_PORT ${ms0} ms"
    [ "$refused0" = connected ] || fail "b:$BLOCKED_PORT is not reachable before any fault"
    cat > "$RUN/exp1.yaml" <<EOF
name: fleet-network
$(targets)
baseline: 2s
duration: 45s
lease: 6s
interval: 1s
faults:
  - select: {role: a}
    fault: {kind: loss, device: $DEV, direction: egress, percent: 50, match: {cidrs: ["$PING_FROM/32"]}}
  - select: {role: b}
    fault: {kind: block, direction: ingress, reject: true, match: {protocol: tcp, ports: [{first: $BLOCKED_PORT, last: $BLOCKED_PORT}]}}
  - select: {role: ctl}
    fault: {kind: netem, device: $DEV, direction: egress, delay: 0.2, match: {protocol: tcp, ports: [{first: $DELAYED_PORT, last: $DELAYED_PORT}], cidrs: ["${IP[b]}/32"]}}
slos:
  - {name: Availability, metric: connect_success_ratio, destination: "${IP[b]}:$BLOCKED_PORT", target: 0.99}
  - {name: Latency, metric: connect_p95_seconds, destination: "${IP[b]}:$DELAYED_PORT", target: 0.1}
EOF
    faultline fleet check "$RUN/exp1.yaml" 2>&1 | sed 's/^/fleet:   /' >&2
    faultline fleet run "$RUN/exp1.yaml" -o json > "$RUN/exp1.json" 2> "$RUN/exp1.err" &
    local fleet=$!
    wait_active fleet-network 3
    local loss refused ms n
    loss=$(ping_loss "${IP[a]}" 200)
    for n in $(seq 1 10); do refused=$(connect "${IP[b]}" "$BLOCKED_PORT"); done
    ms=$(connect_ms "${IP[b]}" "$DELAYED_PORT")
    for n in $(seq 1 4); do connect_ms "${IP[b]}" "$DELAYED_PORT" > /dev/null; done
    say "with the faults: ${loss}% of 200 pings to a lost; b:$BLOCKED_PORT $refused; connect to b:$DELAYED_PORT ${ms} ms"
    awk -v l="$loss" 'BEGIN { exit !(l >= 30 && l <= 70) }' || fail "a's 50% loss: ${loss}% of pings lost"
    [ "$refused" = refused ] || fail "b's block: b:$BLOCKED_PORT $refused"
    [ "$ms" -ge $((ms0 + 150)) ] || fail "ctl's 200 ms delay: a connect took ${ms} ms (${ms0} ms without)"
    wait "$fleet"
    local status=$?
    sed 's/^/fleet:   /' "$RUN/exp1.err" >&2
    jq -c '{outcome, hosts, overall}' "$RUN/exp1.json" 2>&1 | sed 's/^/fleet:   /' >&2
    [ "$status" = 0 ] || fail "fleet run of experiment 1 exited with $status: $(cat "$RUN/exp1.json")"
    local hosts
    hosts=$(jq '.hosts | length' "$RUN/exp1.json")
    [ "$hosts" = 3 ] || fail "experiment 1's scorecard has $hosts hosts, not 3"
    jq -e --arg h "https://${IP[ctl]}:$LISTEN_PORT" \
        '.hosts[$h].scores | map(select(.pass == false)) | length == 2' \
        "$RUN/exp1.json" > /dev/null || fail "ctl's scorecard does not fail both SLOs"
    for who in ctl a b; do
        n=$(remote "$who" ls -o json | jq '[.[] | select(.labels.experiment == "fleet-network" and .state == "active")] | length')
        [ "$n" = 0 ] || fail "$who still has $n faults of experiment 1 active"
    done
    loss=$(ping_loss "${IP[a]}" 100)
    [ "$(connect "${IP[b]}" "$BLOCKED_PORT")" = connected ] || fail "b:$BLOCKED_PORT after experiment 1"
    awk -v l="$loss" 'BEGIN { exit !(l <= 5) }' || fail "after experiment 1: ${loss}% of pings to a lost"
    done_step

    step "experiment 2: a guard breached on b aborts the experiment and reverts"
    cat > "$RUN/exp2.yaml" <<EOF
name: fleet-guard
$(targets)
duration: 2m
lease: 6s
interval: 500ms
faults:
  - select: {role: b}
    fault: {kind: cpu, load: 100}
  - select: {role: a}
    fault: {kind: block, direction: ingress, match: {protocol: udp, ports: [{first: 7300, last: 7300}]}}
guards:
  - {name: cpu, metric: cpu_busy_percent, max: 70}
EOF
    local started
    started=$(now)
    faultline fleet run "$RUN/exp2.yaml" -o json > "$RUN/exp2.json" 2> "$RUN/exp2.err"
    status=$?
    local took
    took=$(since "$started")
    sed 's/^/fleet:   /' "$RUN/exp2.err" >&2
    jq -c '{outcome, guard_breach, breaches}' "$RUN/exp2.json" 2>&1 | sed 's/^/fleet:   /' >&2
    say "fleet run exited with $status after ${took}s (of a 2 minute experiment)"
    [ "$status" = 7 ] || fail "experiment 2 exited with $status, not 7 (aborted)"
    jq -e --arg h "https://${IP[b]}:$LISTEN_PORT" '.outcome | contains("guard cpu breached on " + $h)' \
        "$RUN/exp2.json" > /dev/null || fail "experiment 2 was not aborted by b's cpu guard: $(jq -c .outcome "$RUN/exp2.json")"
    awk -v t="$took" 'BEGIN { exit !(t < 60) }' || fail "the guard took ${took}s to abort"
    for who in a b; do
        n=$(remote "$who" ls -o json | jq '[.[] | select(.labels.experiment == "fleet-guard" and .state == "active")] | length')
        [ "$n" = 0 ] || fail "$who still has $n faults of experiment 2 active"
    done
    done_step

    step "experiment 3: ctl cuts itself off with --force; a and b revert when their leases run out"
    cat > "$RUN/exp3.yaml" <<EOF
name: fleet-cutoff
$(targets)
duration: 30s
lease: 4s
interval: 1s
faults:
  - select: {role: ctl}
    fault: {kind: block, direction: egress, match: {protocol: tcp, ports: [{first: $LISTEN_PORT, last: $LISTEN_PORT}], cidrs: ["${IP[a]}/32", "${IP[b]}/32"]}}
  - select: {role: a}
    fault: {kind: block, direction: ingress, match: {protocol: udp, ports: [{first: 7301, last: 7301}]}}
  - select: {role: b}
    fault: {kind: block, direction: ingress, match: {protocol: udp, ports: [{first: 7301, last: 7301}]}}
# Carry on when a and b are lost, so that ctl's own block stays for the whole 30 s: the agents
# must revert on their own, without a controller.
abort: {on_agent_lost: false}
EOF
    faultline fleet run --force "$RUN/exp3.yaml" -o json > "$RUN/exp3.json" 2> "$RUN/exp3.err" &
    fleet=$!
    local i cut=""
    for i in $(seq 1 120); do
        if faultline ls -o json | jq -e '[.[] | select(.labels.experiment == "fleet-cutoff" and .state == "active")] | length == 1' > /dev/null; then
            cut=$(connect "${IP[a]}" "$LISTEN_PORT")
            break
        fi
        sleep 0.5
    done
    say "ctl's block is active; a connect to a's listener: $cut"
    [ "$cut" = timeout ] || fail "ctl's own block did not cut it off from a (connect: ${cut:-no block})"
    wait "$fleet"
    status=$?
    sed 's/^/fleet:   /' "$RUN/exp3.err" >&2
    jq -c '{outcome, breaches}' "$RUN/exp3.json" 2>&1 | sed 's/^/fleet:   /' >&2
    say "fleet run exited with $status"
    jq -e '.breaches | map(select(contains("lost"))) | length == 2' "$RUN/exp3.json" > /dev/null ||
        fail "the controller did not report a and b lost"
    # Its block gone with the experiment's end, the controller reaches a and b again on new
    # connections and hears their faults' final state instead of giving up on them.
    jq -e '.unreverted | length == 0' "$RUN/exp3.json" > /dev/null ||
        fail "the controller gave up on faults it could reach again: $(jq -c .unreverted "$RUN/exp3.json")"
    [ "$(connect "${IP[a]}" "$LISTEN_PORT")" = connected ] || fail "ctl's block outlived the experiment"
    tell a lease fleet-cutoff
    tell b lease fleet-cutoff
    done_step

    step "nothing is left on any guest"
    assert_clean "on ctl"
    tell a clean
    tell b clean
    done_step
    tell a done
    tell b done
}

step "network and agent ($ROLE, ${IP[$ROLE]})"
network
agent
done_step
case "$ROLE" in
    ctl) controller ;;
    a | b) serve ;;
    *) fail "unknown role $ROLE" ;;
esac
echo "$RESULT_MARKER pass" >&2
finish 0
