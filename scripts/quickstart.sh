#!/usr/bin/env bash
# The first command of the README: builds the release binaries (first time
# only), starts a local 3-node cluster in ./.cluster with scripts/cluster.sh,
# and makes a first put and get through the shoal CLI.
# Stop it with: scripts/cluster.sh stop   (or wipe, to delete its data too)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/cluster.sh start "$@"
BIN="${SHOAL_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"
DIR=./.cluster
for ((i = 1; i <= $#; i++)); do
  if [ "${!i}" = "--dir" ]; then j=$((i + 1)); DIR="${!j}"; fi
done
run() {
  echo "\$ shoal $*"
  scripts/cluster.sh exec --dir "$DIR" -- "$BIN/shoal" --config "$DIR/client.toml" "$@"
}
run put hello "world"
run get hello --json
run status
