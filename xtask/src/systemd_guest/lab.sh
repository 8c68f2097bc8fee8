#!/bin/bash
# The systemd guest's checks (`cargo xtask vm-test --systemd`): the Debian package under its
# systemd unit, on Debian 12's stock kernel with systemd as PID 1. xtask writes this script to
# the lab disk (/mnt/lab, read-only) with the package; faultline-lab.service runs it with the
# serial console as its output. Two boots: the first installs and checks, then reboots hard
# (sysrq) with faults active; the second checks that nothing was left. Every line starts with
# `lab:`; the verdict is one `FAULTLINE-SYSTEMD-RESULT:` line (or the reboot marker).
set -u
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
STATE=/var/lib/faultline-lab
mkdir -p "$STATE"

# The lab network: namespace fls-a behind a veth pair; the agent acts on fls-b0, the host side.
NS=fls-a
HOST_IP=10.77.0.1
PEER_IP=10.77.0.2
DEV=fls-b0
PORT=7070
RATE_PORT=7071

PREFIX=lab
RESULT_MARKER="FAULTLINE-SYSTEMD-RESULT:"
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

diagnose() {
    echo "--- systemctl status faultline"
    systemctl status faultline --no-pager -l | tail -n 20
    echo "--- journalctl -u faultline (last 40 lines)"
    journalctl -u faultline --no-pager -n 40
}

fl() { faultline "$@"; }

# Applies a fault with --detach and prints its id.
apply() {
    local out
    out=$(faultline "$@" --detach 2>&1) || fail "faultline $* refused: $out"
    # The id is the last word of the one line --detach prints.
    echo "$out" | tail -n 1 | awk '{ print $NF }'
}

state_of() { faultline get "$1" 2>/dev/null | sed -n 's/^state: *//p'; }

# TCP connect from the namespace to the agent's side: prints connected, refused or timeout.
connect() {
    local out
    out=$(ip netns exec "$NS" timeout 3 bash -c "exec 3<>/dev/tcp/$HOST_IP/$PORT" 2>&1)
    case $? in
        0) echo connected ;;
        124) echo timeout ;;
        *) case $out in *refused*) echo refused ;; *) echo "error: $out" ;; esac ;;
    esac
}

# Percentage of 200 pings lost (from the namespace to the agent's side).
ping_loss() {
    ip netns exec "$NS" ping -q -n -c 200 -i 0.01 -W 1 "$HOST_IP" 2>/dev/null |
        sed -n 's/.* \([0-9.]*\)% packet loss.*/\1/p'
}

# Average round-trip time in ms of 10 pings.
ping_rtt() {
    ip netns exec "$NS" ping -q -n -c 10 -i 0.2 "$HOST_IP" 2>/dev/null |
        sed -n 's|.*= [0-9.]*/\([0-9.]*\)/.*|\1|p'
}

# Throughput in kbit/s of 2 MiB sent from the agent's side to the namespace over TCP.
throughput() {
    ip netns exec "$NS" nc -l "$RATE_PORT" < /dev/null > /dev/null &
    local listener=$!
    sleep 0.5
    local start end
    start=$(now)
    head -c 2097152 /dev/zero | nc -N -w 30 "$PEER_IP" "$RATE_PORT"
    wait "$listener"
    end=$(now)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%d", 2097152 * 8 / 1000 / (b - a) }'
}

# The cgroup directory of a stress fault: wherever the agent put it.
cgroup_of() { find /sys/fs/cgroup -type d -name "$1" 2>/dev/null | head -n 1; }

# CPU the cgroup used over 4 s, in hundredths of a CPU.
cpu_load() {
    local a b
    a=$(sed -n 's/^usage_usec //p' "$1/cpu.stat")
    sleep 4
    b=$(sed -n 's/^usage_usec //p' "$1/cpu.stat")
    echo $(((b - a) / 40000))
}

lab_network() {
    ip netns add "$NS" || fail "creating namespace $NS"
    ip link add "$DEV" type veth peer name fls-a0 netns "$NS" || fail "creating the veth pair"
    ip addr add "$HOST_IP/24" dev "$DEV"
    ip link set "$DEV" up
    ip -n "$NS" addr add "$PEER_IP/24" dev fls-a0
    ip -n "$NS" link set fls-a0 up
    ip -n "$NS" link set lo up
    # A listener that accepts connections one after another, for the block check.
    (while true; do nc -lk "$PORT" < /dev/null > /dev/null 2>&1; done) &
    sleep 1
    [ "$(connect)" = connected ] || fail "no connection across the lab network before any fault"
}

# Nothing of faultline's left in the kernel: no nftables table, no qdisc or filter on the lab
# device, no stress cgroup, no worker.
assert_clean() {
    local what="$1"
    nft list table inet faultline > /dev/null 2>&1 && fail "$what: the nftables table is left"
    tc qdisc show dev "$DEV" | grep -Eq 'clsact|netem|tbf|htb' &&
        fail "$what: qdiscs left on $DEV: $(tc qdisc show dev "$DEV")"
    tc filter show dev "$DEV" ingress 2>/dev/null | grep -q bpf && fail "$what: a classifier is left"
    local left
    left=$(find /sys/fs/cgroup -mindepth 1 -type d -regex '.*/faultline/[^/]+' 2>/dev/null)
    [ -z "$left" ] || fail "$what: stress cgroups left: $left"
    pgrep -f 'faultline __worker' > /dev/null && fail "$what: stress workers left: $(pgrep -af 'faultline __worker')"
    [ "$(connect)" = connected ] || fail "$what: no connection across the lab network"
    true
}

wait_active() {
    local i
    for i in $(seq 1 120); do
        [ "$(systemctl show -p SubState --value faultline)" = running ] && return 0
        sleep 0.5
    done
    fail "faultline did not come back to active (running) within 60s"
}

phase1() {
    step "install the package"
    dpkg -i /mnt/lab/faultline.deb 2>&1 | sed 's/^/lab:   /'
    [ "${PIPESTATUS[0]}" = 0 ] || fail "dpkg -i faultline.deb"
    [ "$(systemctl is-active faultline)" = inactive ] || fail "the package started the agent"
    done_step

    step "systemctl start faultline (Type=notify)"
    systemctl start faultline || fail "systemctl start faultline"
    local show
    show=$(systemctl show -p Type -p ActiveState -p SubState -p NotifyAccess faultline | tr '\n' ' ')
    say "$show"
    case $show in
        *Type=notify*ActiveState=active*SubState=running*) ;;
        *) fail "not active (running) through Type=notify: $show" ;;
    esac
    systemctl status faultline --no-pager 2>&1 | head -n 5 | sed 's/^/lab:   /'
    done_step

    step "faultline info answers on the socket"
    fl info 2>&1 | sed 's/^/lab:   /'
    [ "${PIPESTATUS[0]}" = 0 ] || fail "faultline info"
    done_step

    step "the unit's logs are in journalctl -u faultline"
    local lines
    lines=$(journalctl -u faultline --no-pager -o cat | grep -vc '^Start\|^Started')
    journalctl -u faultline --no-pager -o cat | tail -n 3 | sed 's/^/lab:   /'
    [ "$lines" -gt 0 ] || fail "journalctl -u faultline holds no line of the agent's"
    done_step

    lab_network

    step "block (nftables reject) under the unit"
    local id
    id=$(apply block --dir in --proto tcp --port "$PORT" --reject --for 120s)
    [ "$(connect)" = refused ] || fail "block: a connection to the blocked port was not refused ($(connect))"
    fl revert "$id" > /dev/null || fail "revert $id"
    [ "$(connect)" = connected ] || fail "block: no connection after its revert"
    done_step

    step "loss (eBPF classifier) under the unit"
    id=$(apply loss --dev "$DEV" --dir in --percent 50 --for 120s)
    local lost
    lost=$(ping_loss)
    say "50% loss: ${lost}% of 200 pings lost"
    awk -v l="$lost" 'BEGIN { exit !(l >= 35 && l <= 65) }' || fail "loss: ${lost}% lost under 50%"
    fl revert "$id" > /dev/null || fail "revert $id"
    lost=$(ping_loss)
    say "after revert: ${lost}% lost"
    awk -v l="$lost" 'BEGIN { exit !(l <= 2) }' || fail "loss: ${lost}% lost after its revert"
    done_step

    step "delay (netem) under the unit"
    local rtt
    id=$(apply delay --dev "$DEV" --dir out --delay 200ms --for 120s)
    rtt=$(ping_rtt)
    say "200ms delay: average rtt ${rtt} ms"
    awk -v r="$rtt" 'BEGIN { exit !(r >= 195 && r <= 400) }' || fail "delay: rtt ${rtt} ms under 200ms"
    fl revert "$id" > /dev/null || fail "revert $id"
    rtt=$(ping_rtt)
    say "after revert: average rtt ${rtt} ms"
    awk -v r="$rtt" 'BEGIN { exit !(r < 100) }' || fail "delay: rtt ${rtt} ms after its revert"
    done_step

    step "rate cap (tbf) under the unit"
    local free capped
    free=$(throughput)
    say "uncapped: ${free} kbit/s"
    id=$(apply rate --dev "$DEV" --dir out --rate 4mbit --for 120s)
    capped=$(throughput)
    say "4mbit cap: ${capped} kbit/s"
    [ "$capped" -le 4800 ] && [ "$capped" -ge 2000 ] || fail "rate: ${capped} kbit/s under a 4mbit cap"
    fl revert "$id" > /dev/null || fail "revert $id"
    done_step

    step "CPU and memory stress under the unit"
    local cpu mem cg_cpu cg_mem load held
    cpu=$(apply stress cpu --load 50 --cores 1 --for 300s)
    mem=$(apply stress memory --size 64MiB --for 300s)
    cg_cpu=$(cgroup_of "$cpu")
    cg_mem=$(cgroup_of "$mem")
    [ -n "$cg_cpu" ] && [ -n "$cg_mem" ] || fail "stress: no cgroup found for $cpu or $mem"
    say "stress cgroups: $cg_cpu $cg_mem"
    # Delegate=yes and --cgroup-delegated: the stress cgroups sit in the unit's own subtree,
    # beside the agent's leaf.
    local unit_cg agent_cg
    unit_cg=/sys/fs/cgroup$(systemctl show -p ControlGroup --value faultline)
    agent_cg=$(sed -n 's/^0:://p' "/proc/$(systemctl show -p MainPID --value faultline)/cgroup")
    say "the unit's cgroup: $unit_cg (Delegate=$(systemctl show -p Delegate --value faultline)); the agent is in $agent_cg"
    [ "/sys/fs/cgroup$agent_cg" = "$unit_cg/agent" ] || fail "the agent is in $agent_cg, not in $unit_cg/agent"
    for cg in "$cg_cpu" "$cg_mem"; do
        case $cg in
            "$unit_cg"/faultline/*) ;;
            *) fail "stress cgroup $cg is outside the unit's delegated cgroup $unit_cg" ;;
        esac
    done
    load=$(cpu_load "$cg_cpu")
    say "CPU stress at 50% of 1 core (cpu.max $(cat "$cg_cpu/cpu.max")): the kernel counts ${load}% of a CPU"
    # The upper bound is the kernel's limit; the lower one only that it runs: the guest's vCPUs
    # are host threads on a shared machine and may get less than they ask.
    [ "$load" -ge 15 ] && [ "$load" -le 60 ] || fail "stress cpu: ${load}% of a CPU under a 50% load"
    held=$(($(cat "$cg_mem/memory.current") / 1048576))
    say "memory stress of 64 MiB: the cgroup holds ${held} MiB"
    [ "$held" -ge 60 ] || fail "stress memory: ${held} MiB held of 64"
    done_step

    step "daemon-reload and restarting another unit while the stress runs"
    printf '[Service]\nExecStart=/bin/sleep infinity\n' > /run/systemd/system/fls-other.service
    systemctl daemon-reload || fail "daemon-reload"
    systemctl start fls-other && systemctl restart fls-other || fail "restarting fls-other"
    systemctl daemon-reload || fail "daemon-reload"
    for id in "$cpu" "$mem"; do
        [ "$(state_of "$id")" = active ] || fail "after daemon-reload: fault $id is $(state_of "$id")"
    done
    [ -d "$cg_cpu" ] || fail "after daemon-reload: $cg_cpu is gone"
    load=$(cpu_load "$cg_cpu")
    say "after daemon-reload and a restart of fls-other: ${load}% of a CPU"
    [ "$load" -ge 15 ] || fail "after daemon-reload: the CPU stress runs at ${load}%"
    systemctl stop fls-other
    done_step

    step "systemctl stop reverts every fault before the unit is inactive"
    id=$(apply block --dir in --proto tcp --port "$PORT" --reject --for 300s)
    local loss_id
    loss_id=$(apply loss --dev "$DEV" --dir in --percent 100 --for 300s)
    systemctl stop faultline || fail "systemctl stop faultline"
    [ "$(systemctl is-active faultline)" = inactive ] || fail "after stop: $(systemctl is-active faultline)"
    assert_clean "after systemctl stop"
    journalctl -u faultline --no-pager -o cat -n 6 | sed 's/^/lab:   /'
    done_step

    step "systemctl kill -s KILL: Restart=on-failure, and the restart reverts what was left"
    systemctl start faultline || fail "systemctl start faultline"
    local before
    before=$(systemctl show -p NRestarts --value faultline)
    id=$(apply block --dir in --proto tcp --port "$PORT" --reject --for 300s)
    cpu=$(apply stress cpu --load 20 --cores 1 --for 300s)
    [ "$(connect)" = refused ] || fail "the block before the kill is not in effect"
    systemctl kill -s KILL faultline
    sleep 1
    wait_active
    local after
    after=$(systemctl show -p NRestarts --value faultline)
    say "NRestarts $before -> $after"
    [ "$after" -gt "$before" ] || fail "systemd did not restart the killed agent"
    assert_clean "after the restart of a killed agent"
    for f in "$id" "$cpu"; do
        say "fault $f after the restart: $(state_of "$f")"
        [ "$(state_of "$f")" = active ] && fail "fault $f is still active after the restart"
    done
    done_step

    step "a hard reboot with faults active"
    systemctl enable faultline 2>&1 | sed 's/^/lab:   /'
    id=$(apply block --dir in --proto tcp --port "$PORT" --reject --for 600s)
    loss_id=$(apply loss --dev "$DEV" --dir in --percent 100 --for 600s)
    cpu=$(apply stress cpu --load 20 --cores 1 --for 600s)
    echo "$id $loss_id $cpu" > "$STATE/rebooted-with"
    echo 2 > "$STATE/phase"
    sync
    say "rebooting with faults $id $loss_id $cpu active (sysrq: no clean shutdown)"
    echo "FAULTLINE-SYSTEMD-REBOOT"
    echo b > /proc/sysrq-trigger
    sleep 60
    fail "the guest did not reboot"
}

phase2() {
    step "after the reboot: the agent starts and closes what the old boot left"
    wait_active
    local f
    for f in $(cat "$STATE/rebooted-with"); do
        local state
        state=$(state_of "$f")
        say "fault $f after the reboot: ${state:-unknown to the agent}"
        [ "$state" = active ] && fail "fault $f is still active after the reboot"
    done
    journalctl -u faultline -b --no-pager -o cat | grep -iE 'recover|revert|journal' | head -n 8 |
        sed 's/^/lab:   /' >&2
    say "journal directory: $(ls /var/lib/faultline | tr '\n' ' ')"
    # The lab network died with the boot; make it again to check nothing acts on it.
    lab_network
    assert_clean "after the reboot"
    local open
    open=$(fl ls 2>/dev/null | awk '$3 == "active"' | wc -l)
    [ "$open" = 0 ] || fail "after the reboot: $open faults active"
    done_step

    step "systemd-analyze security faultline"
    systemd-analyze security faultline --no-pager 2>&1 | sed 's/^/lab:   /' >&2
    done_step
}

case "$(cat "$STATE/phase" 2>/dev/null || echo 1)" in
    1) phase1 ;;
    2) phase2 ;;
    *) fail "unknown phase $(cat "$STATE/phase")" ;;
esac
echo "$RESULT_MARKER pass"
finish 0
