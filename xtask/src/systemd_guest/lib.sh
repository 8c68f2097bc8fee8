# What the guests' check scripts (lab.sh, fleet.sh) share, sourced from the lab disk beside
# them: output, timing and failing. The script sets PREFIX (each line's first word) and
# RESULT_MARKER (its verdict line) before sourcing this, and may define `diagnose`, run when a
# check fails, to print what explains it.

# stderr, like stdout, is the console; and it stays the console inside $(...).
say() { echo "$PREFIX: $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
MAIN=$$

# Powers the guest off (qemu then exits) with the script's status.
finish() {
    systemctl poweroff --no-block
    exit "$1"
}

# Fails the run from the main shell or from inside $(...): the verdict goes to the console,
# and the main shell is stopped too.
fail() {
    say "FAILED: $*"
    if declare -F diagnose > /dev/null; then
        diagnose 2>&1 | sed "s/^/$PREFIX:   /" >&2
    fi
    echo "$RESULT_MARKER fail $*" >&2
    systemctl poweroff --no-block
    [ "$BASHPID" = "$MAIN" ] || kill -KILL "$MAIN"
    exit 1
}

# step NAME: starts timing a check; done_step prints its time.
step() {
    STEP="$1"
    STEP_START=$(now)
    say "== $STEP"
}
done_step() { say "ok: $STEP ($(since "$STEP_START")s)"; }
