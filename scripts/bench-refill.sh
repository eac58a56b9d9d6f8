#!/usr/bin/env bash
# A wiped node refilled by anti-entropy alone, under foreground load, on real
# processes (docs/bench.md). A 3-node cluster holds RECORDS keys of VALUE
# bytes (N = 3: every node holds every key); YCSB b runs at RATE ops/s,
# undisturbed for BASELINE seconds, then while node 3, killed and with its
# data deleted, is restarted and refilled. Prints how long until
# anti-entropy stopped sending (no growth for QUIET seconds), the key states
# sent, a check that SAMPLE keys read back from node 3, and both latency
# summaries.
# With ALTERNATE=T the load during the refill is one run that pauses and
# resumes every node's background work in turns of T s (shoal-bench run
# --alternate-background); its summary has the read p99 of the running and
# the paused turns side by side, and the script prints their ratio. The
# refill then waits out the pauses: QUIET is at least 2 T + 1. The load
# during the refill stops after LOAD_MAX s (3600) if the refill has not.
#   cargo build --release --workspace --bins
#   RECORDS=1000000 VALUE=1000 RATE=3000 scripts/bench-refill.sh
#   ALTERNATE=10 RECORDS=1000000 VALUE=1000 RATE=3000 scripts/bench-refill.sh
set -euo pipefail
cd "$(dirname "$0")/.."
B=${SHOAL_BIN_DIR:-target/release}
export SHOAL_BIN_DIR=$B
DIR=${BENCH_DIR:-/tmp/shoal-refill-bench}
RECORDS=${RECORDS:-1000000}
VALUE=${VALUE:-1000}
RATE=${RATE:-3000}
BASELINE=${BASELINE:-30}
QUIET=${QUIET:-15}
SAMPLE=${SAMPLE:-200}
BASE_PORT=${BASE_PORT:-7400}
ALTERNATE=${ALTERNATE:-}
# Longest the load during the refill runs, in seconds.
LOAD_MAX=${LOAD_MAX:-3600}
if [ -n "$ALTERNATE" ]; then
    QUIET=$(python3 -c "print(max($QUIET, int(2 * $ALTERNATE + 1)))")
fi
C=$DIR/client.toml

scripts/cluster.sh wipe --dir "$DIR" >/dev/null 2>&1 || true
scripts/cluster.sh start --dir "$DIR" --nodes 3 --base-port "$BASE_PORT" >/dev/null
trap 'scripts/cluster.sh stop --dir "$DIR" >/dev/null 2>&1 || true' EXIT

load() {
    "$B/shoal-bench" run --config "$C" --workload b --records "$RECORDS" --skip-load \
        --rate "$RATE" --concurrency 32 --value-size "$VALUE" "$@"
}
metric_sum() { # metric name: its sum over the three nodes
    local total=0 i value
    for i in 1 2 3; do
        value=$(curl -s "http://127.0.0.1:$((BASE_PORT + 1000 + i))/metrics" 2>/dev/null \
            | awk -v name="$1" '$1 == name {print $2}')
        total=$((total + ${value:-0}))
    done
    echo "$total"
}
sent() { metric_sum shoal_anti_entropy_keys_sent_total; }

echo "loading $RECORDS keys of $VALUE bytes" >&2
"$B/shoal-bench" run --config "$C" --workload w --records "$RECORDS" --ops 1 --value-size "$VALUE" >&2
echo "baseline: YCSB b at $RATE ops/s for $BASELINE s" >&2
load --duration "$BASELINE" | tail -1 | sed 's/^/{"run":"baseline","summary":/; s/$/}/'

rm -f "$DIR/stop" "$DIR/during.jsonl" "$DIR/load.err"
start_load() {
    if [ -n "$ALTERNATE" ]; then
        # One run, in turns of background work running and paused.
        # Its progress and any failed requests' error samples: load.err.
        load --duration "$LOAD_MAX" --stop-file "$DIR/stop" --alternate-background "$ALTERNATE" \
            2>"$DIR/load.err" | tail -1 > "$DIR/during.jsonl" &
    else
        # The load during the refill runs in 20 s pieces, one summary line each.
        ( while [ ! -f "$DIR/stop" ]; do load --duration 20 2>>"$DIR/load.err" | tail -1 >> "$DIR/during.jsonl"; done ) &
    fi
    LOAD=$!
}
# Without ALTERNATE the load runs through the kill (its first piece shows
# it); with it, the load starts once node 3 is back, so that the kill's
# timeouts land in neither kind of turn.
[ -n "$ALTERNATE" ] || start_load
sleep 5
scripts/cluster.sh kill 3 --dir "$DIR" >/dev/null
rm -rf "$DIR/node-3/db"
before=$(sent)
started=$(date +%s.%N)
scripts/cluster.sh restart 3 --dir "$DIR" >/dev/null
[ -z "$ALTERNATE" ] || start_load
last=$before
last_change=$(date +%s.%N)
while true; do
    sleep 1
    now=$(sent)
    if [ "$now" != "$last" ]; then
        last=$now
        last_change=$(date +%s.%N)
    elif python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) - float(sys.argv[2]) >= $QUIET else 1)" "$(date +%s.%N)" "$last_change"; then
        break
    fi
done
seconds=$(python3 -c "print(round($last_change - $started, 1))")
# The load ends here: the sampling below is not the refill's cost.
touch "$DIR/stop"
# Keys spread over the key space, read from node 3's store directly.
sample() {
    local present=0 i key
    for i in $(seq 1 "$SAMPLE"); do
        key=$(printf 'user%012d' $(( (i * 7919) % RECORDS )))
        if "$B/shoal" --config "$C" inspect "$key" --node "127.0.0.1:$((BASE_PORT + 3))" --json 2>/dev/null \
            | grep -q '"siblings":\[{'; then
            present=$((present + 1))
        fi
    done
    echo "$present"
}
present=$(sample)
later=$present
if [ "$present" -lt "$SAMPLE" ]; then
    # Not all back yet: look again after a while, and say so.
    sleep 60
    later=$(sample)
fi
dropped=$(metric_sum shoal_anti_entropy_steps_dropped_total)
echo "{\"refilled_after_seconds\":$seconds,\"key_states_sent\":$((last - before)),\"records\":$RECORDS,\"sample_present\":\"$present/$SAMPLE\",\"sample_present_60s_later\":\"$later/$SAMPLE\",\"steps_dropped\":$dropped}"
wait "$LOAD" 2>/dev/null || true
sed 's/^/{"run":"during the refill","summary":/; s/$/}/' "$DIR/during.jsonl"
if [ -n "$ALTERNATE" ]; then
    python3 - "$DIR/during.jsonl" <<'PY'
import json, sys
summary = json.loads(open(sys.argv[1]).read())
running = summary["background_running"]["read"]["p99_us"]
paused = summary["background_paused"]["read"]["p99_us"]
updates = [summary[side].get("update", {}).get("p99_us")
           for side in ("background_running", "background_paused")]
print(json.dumps({"running_read_p99_us": running, "paused_read_p99_us": paused,
                  "update_ratio": round(updates[0] / updates[1], 2) if all(updates) else None,
                  "turns": summary["background_turns"],
                  "toggle_failures": summary["background_toggle_failures"],
                  "ratio": round(running / paused, 2),
                  "by_turn": summary["background_by_turn"]["read_p99_ratio"],
                  "by_turn_steal_under_5":
                      summary["background_by_turn"]["read_p99_ratio_steal_under_5"]}))
PY
fi
