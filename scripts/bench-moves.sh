#!/usr/bin/env bash
# Membership changes under foreground load on real processes (docs/bench.md).
# A 3-node cluster holding RECORDS keys of VALUE bytes runs YCSB b at RATE
# ops/s; once undisturbed (BASELINE seconds), then while node 4 joins, node 5
# joins and node 1 is decommissioned (3 -> 5 -> 4), then AFTER seconds on the
# settled 4-node cluster (the same processes count as during most of the
# changes, nothing moving). Prints, per change, how long it took until
# committed and the bytes new owners pulled, then the runs' latency
# summaries (JSON lines from shoal-bench run).
#   cargo build --release --workspace --bins
#   RECORDS=200000 VALUE=1000 RATE=3000 scripts/bench-moves.sh
set -euo pipefail
cd "$(dirname "$0")/.."
B=${SHOAL_BIN_DIR:-target/release}
export SHOAL_BIN_DIR=$B
DIR=${BENCH_DIR:-/tmp/shoal-moves-bench}
RECORDS=${RECORDS:-200000}
VALUE=${VALUE:-1000}
RATE=${RATE:-3000}
BASELINE=${BASELINE:-30}
DURING=${DURING:-240}
AFTER=${AFTER:-60}
BASE_PORT=${BASE_PORT:-7300}
C=$DIR/client.toml

scripts/cluster.sh wipe --dir "$DIR" >/dev/null 2>&1 || true
scripts/cluster.sh start --dir "$DIR" --nodes 3 --base-port "$BASE_PORT" >/dev/null
trap 'scripts/cluster.sh stop --dir "$DIR" >/dev/null 2>&1 || true' EXIT

load() { # extra args
    "$B/shoal-bench" run --config "$C" --workload b --records "$RECORDS" --skip-load \
        --rate "$RATE" --concurrency 32 --value-size "$VALUE" "$@"
}
# Bytes of key states (and digests) received by pulls, summed over the nodes.
pulled() {
    local total=0 i value
    for i in 1 2 3 4 5; do
        value=$(curl -s "http://127.0.0.1:$((BASE_PORT + 1000 + i))/metrics" 2>/dev/null \
            | awk '$1 == "shoal_move_bytes_received_total" {print $2}')
        total=$((total + ${value:-0}))
    done
    echo "$total"
}
# Waits until node $1's view has $2 active members, nothing moving and
# nobody joining or leaving; prints the most moves its view showed meanwhile.
settled() {
    local node=$1 active=$2 most=0
    while true; do
        local status
        status=$("$B/shoal" --config "$C" --nodes "127.0.0.1:$((BASE_PORT + node))" status --json 2>/dev/null || true)
        if [ -n "$status" ]; then
            local total
            total=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["moves"]["total"])' "$status")
            [ "$total" -gt "$most" ] && most=$total
            if python3 -c '
import json, sys
s = json.loads(sys.argv[1])
moving = s["moves"]["total"] > 0
changing = any(m["ring_state"] in ("Joining", "Leaving") for m in s["members"])
active = sum(m["ring_state"] == "Active" for m in s["members"])
sys.exit(1 if moving or changing or active != int(sys.argv[2]) else 0)' "$status" "$active"; then
                echo "$most"
                return 0
            fi
        fi
        sleep 0.2
    done
}

echo "loading $RECORDS keys of $VALUE bytes" >&2
"$B/shoal-bench" run --config "$C" --workload w --records "$RECORDS" --ops 1 --value-size "$VALUE" >/dev/null
echo "baseline: YCSB b at $RATE ops/s for $BASELINE s" >&2
load --duration "$BASELINE" | tail -1 | sed 's/^/{"run":"baseline","summary":/; s/$/}/'

echo "changes under the same load" >&2
load --duration "$DURING" > "$DIR/during.txt" 2>&1 &
LOAD=$!
sleep 5
for step in "add:4" "add:5" "decommission 1:4"; do
    active=${step#*:}
    step=${step%:*}
    before=$(pulled)
    started=$(date +%s.%N)
    # shellcheck disable=SC2086
    scripts/cluster.sh $step --dir "$DIR" >/dev/null
    moves=$(settled 2 "$active")
    ended=$(date +%s.%N)
    after=$(pulled)
    seconds=$(python3 -c "print(round($ended - $started, 1))")
    echo "{\"step\":\"$step\",\"seconds\":$seconds,\"moves\":$moves,\"bytes_pulled\":$((after - before))}"
done
echo "changes done; waiting for the load run ($DURING s) to end" >&2
wait "$LOAD" || true
tail -1 "$DIR/during.txt" | sed 's/^/{"run":"during changes","summary":/; s/$/}/'
if [ "$AFTER" -gt 0 ]; then
    echo "settled: the same load for $AFTER s" >&2
    load --duration "$AFTER" | tail -1 | sed 's/^/{"run":"after changes","summary":/; s/$/}/'
fi
counter() { # metric name: summed over the nodes still running
    local total=0 i value
    for i in 1 2 3 4 5; do
        value=$(curl -s "http://127.0.0.1:$((BASE_PORT + 1000 + i))/metrics" 2>/dev/null \
            | awk -v name="$1" '$1 == name {print $2}')
        total=$((total + ${value:-0}))
    done
    echo "$total"
}
echo "{\"admission_throttles\":$(counter shoal_admission_throttles_total),\"pull_asks_deferred\":$(counter shoal_move_asks_deferred_total)}"
