#!/usr/bin/env bash
# A local multi-process Shoal cluster (see ../shared/interfaces.md).
#
#   scripts/cluster.sh start [--nodes 3] [--replicas 3] [--dir DIR] [--base-port 7100] [--netns]
#   scripts/cluster.sh status | stop | wipe
#   scripts/cluster.sh kill I | restart I | pause I | resume I
#   scripts/cluster.sh add | decommission I
#   scripts/cluster.sh partition 1,2/3,4,5 | heal        (needs --netns at start)
#   scripts/cluster.sh exec -- COMMAND ...
#
# Every subcommand takes --dir DIR (default $SHOAL_CLUSTER_DIR, then ./.cluster).
# Node i listens on 127.0.0.1:(base-port + i), keeps its data in DIR/node-i
# and its PID in DIR/node-i/pid. Only processes this script started (by
# those PIDs, checked to be shoald) are ever signalled.
# $SHOAL_CLUSTER_TOML (lines of TOML) goes into each new node's [cluster]
# section, e.g. SHOAL_CLUSTER_TOML='admission_control = false'.
# Binaries come from $SHOAL_BIN_DIR, else ${CARGO_TARGET_DIR:-target}/release
# (built with cargo if missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${SHOAL_CLUSTER_DIR:-./.cluster}"
NODES=3
REPLICAS=3
BASE_PORT=7100
NETNS=0

die() { echo "cluster.sh: $*" >&2; exit 1; }

usage() {
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[ $# -ge 1 ] || usage
COMMAND="$1"; shift
ARGS=()
EXEC_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --nodes) NODES="$2"; shift 2 ;;
    --replicas) REPLICAS="$2"; shift 2 ;;
    --base-port) BASE_PORT="$2"; shift 2 ;;
    --netns) NETNS=1; shift ;;
    --) shift; EXEC_ARGS=("$@"); break ;;
    -h|--help) usage ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

bin_dir() {
  if [ -n "${SHOAL_BIN_DIR:-}" ]; then echo "$SHOAL_BIN_DIR"; return; fi
  local target="${CARGO_TARGET_DIR:-$ROOT/target}"
  echo "$target/release"
}

ensure_binaries() {
  local bins; bins="$(bin_dir)"
  if [ ! -x "$bins/shoald" ] || [ ! -x "$bins/shoal" ]; then
    [ -z "${SHOAL_BIN_DIR:-}" ] || die "no shoald/shoal in SHOAL_BIN_DIR=$SHOAL_BIN_DIR"
    echo "cluster.sh: building release binaries (first time only, a few minutes)..." >&2
    (cd "$ROOT" && cargo build --release --locked -p shoal-server -p shoal-client >&2) \
      || die "cargo build failed"
  fi
  SHOALD="$bins/shoald"
  SHOAL="$bins/shoal"
}

load_state() {
  [ -f "$DIR/cluster.env" ] || die "no cluster in $DIR (run: scripts/cluster.sh start --dir $DIR)"
  # shellcheck disable=SC1091
  . "$DIR/cluster.env"
}

save_state() {
  cat > "$DIR/cluster.env" <<EOF
NODES=$NODES
REPLICAS=$REPLICAS
BASE_PORT=$BASE_PORT
NETNS=$NETNS
NETNS_NAME=${NETNS_NAME:-}
EOF
}

port_of() { echo $((BASE_PORT + $1)); }

in_ns() {
  if [ "$NETNS" = 1 ]; then ip netns exec "$NETNS_NAME" "$@"; else "$@"; fi
}

node_pid() {
  local pid_file="$DIR/node-$1/pid"
  [ -f "$pid_file" ] || return 1
  local pid; pid="$(cat "$pid_file")"
  # Ours only if it is alive and is shoald started with this node's data dir.
  if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "shoald.*--data-dir $(abs_dir)/node-$1 "; then
    echo "$pid"; return 0
  fi
  return 1
}

abs_dir() { (cd "$DIR" && pwd); }

check_index() {
  [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$NODES" ] \
    || die "no node $1 (nodes are 1..$NODES)"
}

write_client_config() {
  local nodes=""
  for i in $(seq 1 "$NODES"); do
    nodes="$nodes\"127.0.0.1:$(port_of "$i")\", "
  done
  cat > "$DIR/client.toml" <<EOF
# Written by scripts/cluster.sh for the shoal CLI and shoal-bench.
nodes = [${nodes%, }]
[tls]
ca = "$(abs_dir)/certs/ca.pem"
server_name = "shoal"
EOF
}

make_certificates() {
  local certs="$DIR/certs"
  if [ ! -f "$certs/ca.pem" ]; then
    "$SHOALD" cert ca --dir "$certs" >/dev/null
  fi
  for i in $(seq 1 "$NODES"); do
    [ -f "$certs/node-$i.pem" ] || "$SHOALD" cert node --dir "$certs" --name "node-$i" >/dev/null
  done
}

write_node_config() {
  local i="$1" dir; dir="$(abs_dir)"
  mkdir -p "$dir/node-$i"
  [ -f "$dir/node-$i/shoald.toml" ] && return 0
  cat > "$dir/node-$i/shoald.toml" <<EOF
node_id = $i
listen = "127.0.0.1:$(port_of "$i")"
data_dir = "$dir/node-$i"
seeds = ["127.0.0.1:$(port_of 1)"]
metrics_listen = "127.0.0.1:$((BASE_PORT + 1000 + i))"
[tls]
ca = "$dir/certs/ca.pem"
cert = "$dir/certs/node-$i.pem"
key = "$dir/certs/node-$i.key"
[cluster]
replication_factor = $REPLICAS
${SHOAL_CLUSTER_TOML:-}
EOF
}

start_node() {
  local i="$1" extra="${2:-}" dir; dir="$(abs_dir)"
  if node_pid "$i" >/dev/null; then return 0; fi
  write_node_config "$i"
  local log="$dir/node-$i/shoald.log"
  touch "$log"
  local before; before="$(wc -l < "$log")"
  # Started directly (not through a shell function) so that $! is shoald's
  # own PID; `ip netns exec` execs in place, keeping the PID.
  if [ "$NETNS" = 1 ]; then
    # shellcheck disable=SC2086
    ip netns exec "$NETNS_NAME" "$SHOALD" --config "$dir/node-$i/shoald.toml" \
      --data-dir "$dir/node-$i" $extra >>"$log" 2>&1 &
  else
    # shellcheck disable=SC2086
    "$SHOALD" --config "$dir/node-$i/shoald.toml" --data-dir "$dir/node-$i" $extra \
      >>"$log" 2>&1 &
  fi
  echo $! > "$dir/node-$i/pid"
  # Wait for the listening line, or report why it died.
  for _ in $(seq 1 100); do
    if ! kill -0 "$(cat "$dir/node-$i/pid")" 2>/dev/null; then
      die "node $i did not start: $(tail -n +$((before + 1)) "$log" | grep -h 'shoald:' | tail -1)"
    fi
    if tail -n +$((before + 1)) "$log" | grep -q "listening on 127.0.0.1:$(port_of "$i")"; then
      return 0
    fi
    sleep 0.1
  done
  die "node $i did not report listening within 10 s (see $log)"
}

wait_until_all_alive() {
  local deadline=$((SECONDS + 30))
  while [ $SECONDS -lt $deadline ]; do
    local ready=1
    for i in $(seq 1 "$NODES"); do
      node_pid "$i" >/dev/null || continue
      local alive
      alive="$(in_ns "$SHOAL" --config "$DIR/client.toml" --nodes "127.0.0.1:$(port_of "$i")" status --json 2>/dev/null \
        | grep -o '"liveness":"alive"' | wc -l || true)"
      [ "$alive" -ge "$(running_count)" ] || ready=0
    done
    [ "$ready" = 1 ] && return 0
    sleep 0.3
  done
  die "the nodes did not all see each other alive within 30 s (see $DIR/node-*/shoald.log)"
}

running_count() {
  local count=0
  for i in $(seq 1 "$NODES"); do node_pid "$i" >/dev/null && count=$((count + 1)); done
  echo "$count"
}

cmd_start() {
  [[ "$NODES" =~ ^[0-9]+$ ]] && [ "$NODES" -ge 1 ] || die "--nodes must be a positive number"
  [[ "$BASE_PORT" =~ ^[0-9]+$ ]] && [ "$BASE_PORT" -ge 1024 ] || die "--base-port must be a number >= 1024"
  ensure_binaries
  mkdir -p "$DIR"
  if [ -f "$DIR/cluster.env" ]; then
    local wanted_netns="$NETNS"
    load_state
    [ "$wanted_netns" = 0 ] || [ "$NETNS" = 1 ] || die "this cluster was started without --netns; wipe it first"
  else
    if [ "$NETNS" = 1 ]; then
      [ "$(id -u)" = 0 ] || die "--netns needs root (network namespaces and nftables)"
      command -v nft >/dev/null || die "--netns needs nftables (apt-get install nftables)"
      NETNS_NAME="shoal-$$-$(date +%s)"
      ip netns add "$NETNS_NAME" || die "cannot create network namespace $NETNS_NAME"
      ip netns exec "$NETNS_NAME" ip link set lo up
    fi
    save_state
  fi
  make_certificates
  write_client_config
  for i in $(seq 1 "$NODES"); do start_node "$i"; done
  wait_until_all_alive
  echo "cluster of $NODES nodes running in $DIR (ports $(port_of 1)..$(port_of "$NODES"), metrics on $((BASE_PORT + 1001))..)"
  echo "try: $(cmd_prefix)$SHOAL --config $DIR/client.toml put hello world"
  echo "     $(cmd_prefix)$SHOAL --config $DIR/client.toml get hello"
}

cmd_prefix() {
  if [ "$NETNS" = 1 ]; then echo "scripts/cluster.sh exec --dir $DIR -- "; fi
}

cmd_status() {
  load_state
  for i in $(seq 1 "$NODES"); do
    local pid state
    if pid="$(node_pid "$i")"; then
      state="running"
      [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = "T" ] && state="paused"
      echo "node $i  127.0.0.1:$(port_of "$i")  pid $pid  $state"
    else
      echo "node $i  127.0.0.1:$(port_of "$i")  stopped"
    fi
  done
}

signal_node() {
  local signal="$1" i="$2" pid
  pid="$(node_pid "$i")" || die "node $i is not running"
  kill "-$signal" "$pid"
}

cmd_stop() {
  load_state
  local pids=()
  for i in $(seq 1 "$NODES"); do
    if pid="$(node_pid "$i")"; then
      kill -CONT "$pid" 2>/dev/null || true
      kill -TERM "$pid"
      pids+=("$pid")
    fi
  done
  local deadline=$((SECONDS + 15))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "cluster.sh: pid $pid did not stop within 15 s; killing it" >&2
      kill -KILL "$pid"
    fi
  done
  echo "stopped ${#pids[@]} node(s)"
}

cmd_wipe() {
  [ -f "$DIR/cluster.env" ] || die "no cluster in $DIR"
  cmd_stop
  load_state
  if [ "$NETNS" = 1 ] && [ -n "$NETNS_NAME" ]; then
    ip netns delete "$NETNS_NAME" 2>/dev/null || true
  fi
  rm -rf "$DIR"
  echo "wiped $DIR"
}

cmd_partition() {
  load_state
  [ "$NETNS" = 1 ] || die "partition needs a cluster started with --netns"
  local spec="${ARGS[0]:-}"
  [[ "$spec" =~ ^[0-9,]+(/[0-9,]+)+$ ]] || die "partition takes groups like 1,2/3,4,5"
  ip netns exec "$NETNS_NAME" nft delete table inet shoal 2>/dev/null || true
  ip netns exec "$NETNS_NAME" nft add table inet shoal
  ip netns exec "$NETNS_NAME" nft add chain inet shoal output '{ type filter hook output priority 0; policy accept; }'
  IFS='/' read -r -a groups <<< "$spec"
  for a in "${!groups[@]}"; do
    for b in "${!groups[@]}"; do
      [ "$a" = "$b" ] && continue
      IFS=',' read -r -a left <<< "${groups[$a]}"
      IFS=',' read -r -a right <<< "${groups[$b]}"
      for x in "${left[@]}"; do
        check_index "$x"
        for y in "${right[@]}"; do
          check_index "$y"
          ip netns exec "$NETNS_NAME" nft add rule inet shoal output \
            udp sport "$(port_of "$x")" udp dport "$(port_of "$y")" drop
        done
      done
    done
  done
  echo "partitioned: $spec"
}

cmd_heal() {
  load_state
  [ "$NETNS" = 1 ] || die "heal needs a cluster started with --netns"
  ip netns exec "$NETNS_NAME" nft delete table inet shoal 2>/dev/null || true
  echo "healed"
}

cmd_add() {
  ensure_binaries
  load_state
  NODES=$((NODES + 1))
  save_state
  make_certificates
  write_client_config
  start_node "$NODES" "--join"
  echo "node $NODES started at 127.0.0.1:$(port_of "$NODES") (joining: it pulls its share of the partitions, then becomes active; watch 'shoal status')"
}

cmd_decommission() {
  ensure_binaries
  load_state
  local i="${ARGS[0]:-x}"
  check_index "$i"
  local pid; pid="$(node_pid "$i")" || die "node $i is not running (a dead node is removed with: shoal remove $i)"
  in_ns "$SHOAL" --config "$DIR/client.toml" --nodes "127.0.0.1:$(port_of "$i")" leave "$i" \
    || die "node $i refused to leave"
  # The node stops by itself once its partitions have moved and the change
  # is committed; wait for that (bounded).
  local deadline=$((SECONDS + ${DECOMMISSION_TIMEOUT:-900}))
  while kill -0 "$pid" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "node $i is still handing off after ${DECOMMISSION_TIMEOUT:-900} s (see 'shoal status')"
    sleep 0.5
  done
  echo "node $i decommissioned: its partitions moved to the others and it stopped"
}

case "$COMMAND" in
  start) cmd_start ;;
  status) cmd_status ;;
  stop) cmd_stop ;;
  wipe) cmd_wipe ;;
  kill) load_state; check_index "${ARGS[0]:-x}"; signal_node KILL "${ARGS[0]}"; echo "killed node ${ARGS[0]}" ;;
  pause) load_state; check_index "${ARGS[0]:-x}"; signal_node STOP "${ARGS[0]}"; echo "paused node ${ARGS[0]}" ;;
  resume) load_state; check_index "${ARGS[0]:-x}"; signal_node CONT "${ARGS[0]}"; echo "resumed node ${ARGS[0]}" ;;
  restart)
    ensure_binaries; load_state; check_index "${ARGS[0]:-x}"
    node_pid "${ARGS[0]}" >/dev/null && die "node ${ARGS[0]} is running (kill it first)"
    start_node "${ARGS[0]}"; echo "restarted node ${ARGS[0]}" ;;
  add) cmd_add ;;
  decommission) cmd_decommission ;;
  partition) cmd_partition ;;
  heal) cmd_heal ;;
  exec)
    load_state
    [ ${#EXEC_ARGS[@]} -gt 0 ] || die "exec needs a command after --"
    in_ns "${EXEC_ARGS[@]}" ;;
  *) usage ;;
esac
