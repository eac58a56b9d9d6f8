#!/usr/bin/env bash
# Shoal clusters side by side with Redis and etcd, in one sitting (issue 6;
# results in docs/bench.md). Prints markdown tables.
#
#   scripts/bench-cluster.sh [--quick]
#
# Needs release binaries (cargo build --release), redis-server and
# redis-benchmark, etcd, and bench/etcd-load built
# (cd bench/etcd-load && cargo build --release; needs protoc).
# OPS (default 60000) operations per Shoal run; --quick runs a smaller matrix.
# Only processes started here are stopped, by PID.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${SHOAL_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"
ETCD_LOAD="${ETCD_LOAD:-${ETCD_TARGET_DIR:-$ROOT/bench/etcd-load/target}/release/etcd-load}"
OPS="${OPS:-60000}"
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
WORK="$(mktemp -d /tmp/shoal-bench-XXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  SHOAL_BIN_DIR="$BIN" "$ROOT/scripts/cluster.sh" stop --dir "$WORK/c1" >/dev/null 2>&1 || true
  SHOAL_BIN_DIR="$BIN" "$ROOT/scripts/cluster.sh" stop --dir "$WORK/c3" >/dev/null 2>&1 || true
}
trap cleanup EXIT

cpu_ticks() { # total utime+stime (clock ticks) of the given PIDs
  local total=0
  for pid in "$@"; do
    if [ -r "/proc/$pid/stat" ]; then
      total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    fi
  done
  echo "$total"
}
TICKS=$(getconf CLK_TCK)

shoal_row() { # label dir workload concurrency r w
  local label="$1" dir="$2" workload="$3" concurrency="$4" r="$5" w="$6"
  local pids=() before after json
  for pid_file in "$dir"/node-*/pid; do pids+=("$(cat "$pid_file")"); done
  before=$(cpu_ticks "${pids[@]}")
  json=$("$BIN/shoal-bench" run --workload "$workload" --config "$dir/client.toml" --skip-load \
    --records 10000 --ops "$OPS" --concurrency "$concurrency" --r "$r" --w "$w" 2>/dev/null | tail -1)
  after=$(cpu_ticks "${pids[@]}")
  echo "$json" | jq -r --arg name "$label" --arg c "$concurrency" --arg r "$r" --arg w "$w" \
    --argjson cpu "$(( (after - before) ))" --argjson ticks "$TICKS" '
    def lat(op): if .[op] then "\(.[op].p50_us) / \(.[op].p99_us) / \(.[op].p999_us)" else "–" end;
    "| \($name) | \(.workload) | \($r)/\($w) | \($c) | \(.ops_per_sec|floor) | \(lat("read")) | \(lat("update")) | \((($cpu / $ticks) * 1000 / .ops * 1000) | floor) | \(.errors) |"'
}

header() {
  echo "| cluster | workload | r/w | clients | ops/s | read p50/p99/p999 µs | update p50/p99/p999 µs | cluster CPU µs/op | errors |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
}

echo "## Shoal (release, $(date -u +%F), $(nproc) cores, client on the same machine)"
echo
header
export SHOAL_BIN_DIR="$BIN"
for nodes in 1 3; do
  dir="$WORK/c$nodes"
  replicas=$([ "$nodes" = 1 ] && echo 1 || echo 3)
  "$ROOT/scripts/cluster.sh" start --dir "$dir" --nodes "$nodes" --replicas "$replicas" \
    --base-port $((17000 + nodes * 100)) >/dev/null
  "$BIN/shoal-bench" run --workload w --config "$dir/client.toml" --records 10000 --ops 10000 \
    --concurrency 64 >/dev/null 2>&1
  quorums="one quorum all"
  workloads="a b c"
  clients="1 16 64"
  if [ "$QUICK" = 1 ]; then quorums="quorum"; workloads="a c"; clients="64"; fi
  [ "$nodes" = 1 ] && quorums="one"
  for q in $quorums; do
    for workload in $workloads; do
      for c in $clients; do
        shoal_row "$nodes node(s)" "$dir" "$workload" "$c" "$q" "$q"
      done
    done
    shoal_row "$nodes node(s)" "$dir" w 64 "$q" "$q"
  done
  "$ROOT/scripts/cluster.sh" stop --dir "$dir" >/dev/null
done

echo
echo "## Redis $(redis-server --version | awk '{print $3}'), appendfsync everysec"
echo
redis_port=17999
redis-server --port "$redis_port" --save "" --appendonly yes --appendfsync everysec \
  --dir "$WORK" --daemonize no >/dev/null 2>&1 &
PIDS+=($!)
redis_pid=$!
for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
echo "| clients | SET ops/s | SET p50/p99 ms | GET ops/s | GET p50/p99 ms | server CPU µs/op |"
echo "| --- | --- | --- | --- | --- | --- |"
for c in 1 16 64; do
  before=$(cpu_ticks "$redis_pid")
  out=$(redis-benchmark -h 127.0.0.1 -p "$redis_port" -t set,get -d 100 -r 1000000 -n 200000 -c "$c" --csv 2>/dev/null)
  after=$(cpu_ticks "$redis_pid")
  set_line=$(echo "$out" | grep '^"SET"' | tr -d '"')
  get_line=$(echo "$out" | grep '^"GET"' | tr -d '"')
  cpu=$(awk -v t=$((after - before)) -v k="$TICKS" 'BEGIN { printf "%.1f", t / k * 1e6 / 400000 }')
  echo "| $c | $(echo "$set_line" | cut -d, -f2) | $(echo "$set_line" | cut -d, -f5) / $(echo "$set_line" | cut -d, -f7) | $(echo "$get_line" | cut -d, -f2) | $(echo "$get_line" | cut -d, -f5) / $(echo "$get_line" | cut -d, -f7) | $cpu |"
done
kill "$redis_pid"

echo
echo "## etcd $(etcd --version | head -1 | awk '{print $3}'), 3 members on 127.0.0.1"
echo
cluster="e1=http://127.0.0.1:17380,e2=http://127.0.0.1:17381,e3=http://127.0.0.1:17382"
etcd_pids=()
for i in 1 2 3; do
  peer=$((17379 + i)); client=$((17389 + i))
  etcd --name "e$i" --data-dir "$WORK/etcd-$i" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --initial-cluster "$cluster" --initial-cluster-state new >"$WORK/etcd-$i.log" 2>&1 &
  PIDS+=($!); etcd_pids+=($!)
done
sleep 3
endpoints="http://127.0.0.1:17390,http://127.0.0.1:17391,http://127.0.0.1:17392"
echo "| clients | puts/s | p50 / p99 µs | cluster CPU µs/put |"
echo "| --- | --- | --- | --- |"
for c in 1 16 64; do
  before=$(cpu_ticks "${etcd_pids[@]}")
  json=$("$ETCD_LOAD" "$endpoints" "$c" $((c == 1 ? 3000 : 20000)) | tail -1)
  after=$(cpu_ticks "${etcd_pids[@]}")
  echo "$json" | jq -r --argjson cpu $((after - before)) --argjson ticks "$TICKS" \
    '"| \(.concurrency) | \(.ops_per_sec) | \(.p50_us) / \(.p99_us) | \((($cpu / $ticks) * 1e6 / .ops) | floor) |"'
done
