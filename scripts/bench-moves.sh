#!/usr/bin/env bash
# Membership changes under foreground load on real processes (docs/bench.md).
# A 3-node cluster holding RECORDS keys of VALUE bytes runs YCSB b at RATE
# ops/s while node 4 joins, node 5 joins and node 1 is decommissioned
# (3 -> 4 -> 5 -> 4 members). Each change is measured against quiet windows
# of the same load on the members it starts from and ends with, so that what
# is compared is the change's work, not the cost of one more process on the
# same cores:
#   quiet (3 members, BASELINE s) | add 4 | quiet (4, SETTLED s) | add 5 |
#   quiet (5) | decommission 1 | quiet (4)
# A change's window runs from 5 s before it until it is committed and no
# node has flushed or compacted for QUIET s (the compactions of what moved
# are its cost too). Quiet windows start once nothing flushes or compacts.
# Prints, per change, how long it took and the bytes new owners pulled; the
# windows' latency summaries (JSON lines from shoal-bench run); and per
# change, its read p99 against the mean of the quiet windows around it.
# With ALTERNATE=T, each change's load also pauses and resumes every
# member's background work in turns of T s (shoal-bench run
# --alternate-background) and the script prints, per change, the read p99
# of its running turns against its paused turns: a paired control, taken in
# the same minutes on the same members, pooled and turn by turn (each
# running turn's read p99 over the paused turns beside it: median and
# quartiles, of all such triples and of those the host's steal left
# alone). Pausing stretches the changes.
#   cargo build --release --workspace --bins
#   RECORDS=200000 VALUE=1000 RATE=3000 scripts/bench-moves.sh
#   ALTERNATE=10 RECORDS=200000 VALUE=1000 RATE=3000 scripts/bench-moves.sh
# STEPS picks the changes (default "add:4 add:5 decommission_1:4"; "_"
# stands for a space): STEPS=add:4 measures the first join alone. The step
# "idle:3" changes nothing for IDLE s: with ALTERNATE, the null experiment
# (what background work costs with nothing to move).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v jq >/dev/null || { echo "bench-moves.sh needs jq (apt-get install jq)" >&2; exit 1; }
B=${SHOAL_BIN_DIR:-target/release}
export SHOAL_BIN_DIR=$B
DIR=${BENCH_DIR:-/tmp/shoal-moves-bench}
RECORDS=${RECORDS:-200000}
VALUE=${VALUE:-1000}
RATE=${RATE:-3000}
BASELINE=${BASELINE:-30}
DURING=${DURING:-900}
IDLE=${IDLE:-300}
SETTLED=${SETTLED:-60}
POLL=${POLL:-0.5}
QUIET=${QUIET:-5}
ALTERNATE=${ALTERNATE:-}
# The changes, each "<cluster.sh command>:<active members after it>".
STEPS=${STEPS:-"add:4 add:5 decommission_1:4"}
BASE_PORT=${BASE_PORT:-7300}
C=$DIR/client.toml

scripts/cluster.sh wipe --dir "$DIR" >/dev/null 2>&1 || true
scripts/cluster.sh start --dir "$DIR" --nodes 3 --base-port "$BASE_PORT" >/dev/null
MAIN=$BASHPID
# Only the script itself stops the cluster, never a subshell that exits.
trap '[ "$BASHPID" != "$MAIN" ] || scripts/cluster.sh stop --dir "$DIR" >/dev/null 2>&1 || true' EXIT

load() { # extra args
    "$B/shoal-bench" run --config "$C" --workload b --records "$RECORDS" --skip-load \
        --rate "$RATE" --concurrency 32 --value-size "$VALUE" "$@"
}
# Bytes of key states (and digests) received by pulls, summed over the nodes.
pulled() { counter shoal_move_bytes_received_total; }
# One look at node $1's view: "<moves> <members joining or leaving> <active
# members>". jq, not python: a python start costs ~110 ms of CPU, and a
# poller starting two every 0.2 s took a quarter of this 2-core machine
# during the changes only (runs before session 8), inflating their p99.
look() {
    "$B/shoal" --config "$C" --nodes "127.0.0.1:$((BASE_PORT + $1))" status --json 2>/dev/null \
        | jq -r '[.moves.total,
                  ([.members[] | select(.ring_state == "Joining" or .ring_state == "Leaving")] | length),
                  ([.members[] | select(.ring_state == "Active")] | length)] | @tsv' 2>/dev/null || true
}
# Waits until node $1's view has $2 active members, nothing moving and
# nobody joining or leaving; prints the most moves its view showed meanwhile.
settled() {
    local node=$1 active=$2 most=0 moves changing members
    while true; do
        read -r moves changing members <<<"$(look "$node")" || true
        if [ -n "${moves:-}" ]; then
            [ "$moves" -gt "$most" ] && most=$moves
            if [ "$moves" -eq 0 ] && [ "$changing" -eq 0 ] && [ "$members" -eq "$active" ]; then
                echo "$most"
                return 0
            fi
        fi
        sleep "$POLL"
    done
}
# The same looks at the same pace with nothing to wait for: runs during the
# baseline and after windows, so every window carries the observer's cost.
# It stops when its stop file appears, not by a signal: in one run, killing
# an observer a moment after it started stopped the whole cluster (the
# EXIT trap run by the subshell, the likely cause; the trap now checks).
observe() {
    while [ ! -e "$DIR/observer.stop" ]; do
        look 2 >/dev/null
        sleep "$POLL"
    done
}
start_observer() {
    rm -f "$DIR/observer.stop"
    observe &
    OBSERVER=$!
}
stop_observer() {
    touch "$DIR/observer.stop"
    wait "$OBSERVER" 2>/dev/null || true
}
with_observer() { # command...
    local status=0
    start_observer
    "$@" || status=$?
    stop_observer
    return "$status"
}
# Sums counter $1 over the nodes running.
counter() {
    local total=0 i value
    for i in 1 2 3 4 5; do
        value=$(curl -s "http://127.0.0.1:$((BASE_PORT + 1000 + i))/metrics" 2>/dev/null \
            | awk -v name="$1" '$1 == name {print $2}')
        total=$((total + ${value:-0}))
    done
    echo "$total"
}
# Waits until no node has flushed or compacted for QUIET seconds (the load
# leaves compactions behind; a baseline taken over them is not undisturbed).
quiet() {
    local last=-1 same=0 now
    while [ "$same" -lt "$QUIET" ]; do
        now=$(($(counter shoal_storage_compactions_total) + $(counter shoal_storage_flushes_total)))
        if [ "$now" -eq "$last" ]; then same=$((same + 1)); else same=0; fi
        last=$now
        sleep 1
    done
}

# Runs the load for $2 s as window "$1", under the observer; prints its summary.
window() {
    with_observer load --duration "$2" | tail -1 \
        | jq -c --arg run "$1" '{run: $run, summary: .}'
}

echo "loading $RECORDS keys of $VALUE bytes" >&2
"$B/shoal-bench" run --config "$C" --workload w --records "$RECORDS" --ops 1 --value-size "$VALUE" >/dev/null
echo "waiting for the nodes' compactions to end" >&2
quiet
echo "quiet: YCSB b at $RATE ops/s for $BASELINE s on 3 members" >&2
window "quiet, 3 members" "$BASELINE" | tee "$DIR/window.0"
index=0
for step in $STEPS; do
    active=${step#*:}
    step=${step%:*}
    step=${step//_/ }
    index=$((index + 1))
    echo "$step, under the same load" >&2
    rm -f "$DIR/change.done"
    # The window ends when the change is committed and the compactions it
    # caused are over (or after DURING s).
    # shellcheck disable=SC2046
    load --duration "$DURING" --stop-file "$DIR/change.done" \
        $([ -n "$ALTERNATE" ] && echo --alternate-background "$ALTERNATE") > "$DIR/change.txt" 2>&1 &
    LOAD=$!
    start_observer
    sleep 5
    stop_observer
    before=$(pulled)
    started=$(date +%s.%N)
    if [ "$step" = idle ]; then
        # The observer looks as `settled` would during a change.
        with_observer sleep "$IDLE"
        moves=0
    else
        # shellcheck disable=SC2086
        scripts/cluster.sh $step --dir "$DIR" >/dev/null
        moves=$(settled 2 "$active")
    fi
    ended=$(date +%s.%N)
    after=$(pulled)
    start_observer
    quiet
    stop_observer
    touch "$DIR/change.done"
    wait "$LOAD" || true
    seconds=$(awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.1f", b - a }')
    echo "{\"step\":\"$step\",\"seconds\":$seconds,\"moves\":$moves,\"bytes_pulled\":$((after - before))}"
    tail -1 "$DIR/change.txt" | jq -c --arg run "$step" '{run: $run, summary: .}' \
        | tee "$DIR/change.$index"
    echo "quiet: the same load for $SETTLED s on $active members" >&2
    window "quiet, $active members" "$SETTLED" | tee "$DIR/window.$index"
done
echo "{\"admission_throttles\":$(counter shoal_admission_throttles_total),\"pull_asks_deferred\":$(counter shoal_move_asks_deferred_total)}"
CHANGES=$index
# Each change's read p99 against the mean of the quiet windows around it.
for index in $(seq 1 "$CHANGES"); do
    jq -c -n --slurpfile change "$DIR/change.$index" \
        --slurpfile before "$DIR/window.$((index - 1))" --slurpfile after "$DIR/window.$index" '
        ($change[0].summary.read.p99_us) as $during
        | (($before[0].summary.read.p99_us + $after[0].summary.read.p99_us) / 2) as $quiet
        | {change: $change[0].run, read_p99_us: $during,
           quiet_read_p99_us: [$before[0].summary.read.p99_us, $after[0].summary.read.p99_us],
           ratio: (($during / $quiet) * 100 | round / 100)}'
done
# With ALTERNATE: each change's running turns against its paused turns.
if [ -n "$ALTERNATE" ]; then
    for index in $(seq 1 "$CHANGES"); do
        jq -c '.summary as $s
            | {change: .run, turns: $s.background_turns,
               toggle_failures: $s.background_toggle_failures,
               running_read_p99_us: $s.background_running.read.p99_us,
               paused_read_p99_us: $s.background_paused.read.p99_us,
               running_reads: $s.background_running.read.count,
               paused_reads: $s.background_paused.read.count,
               ratio: (($s.background_running.read.p99_us / $s.background_paused.read.p99_us)
                       * 100 | round / 100),
               by_turn: $s.background_by_turn.read_p99_ratio,
               by_turn_steal_under_5: $s.background_by_turn.read_p99_ratio_steal_under_5}' \
            "$DIR/change.$index"
    done
fi
