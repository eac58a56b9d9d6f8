#!/usr/bin/env bash
# Shoal's engine and its peers through the same harness, phase by phase, in
# one sitting; one JSON line per engine and phase on stdout (docs/bench.md).
# Build first: cargo build --release -p shoal-bench; (cd bench/peers && cargo build --release [--features rocksdb])
# (RocksDB: about 40 minutes on 2 cores; bindgen needs libclang: apt-get install libclang-dev)
# ENGINES="shoal fjall rocksdb" N=1000000 scripts/bench-engines.sh
set -u
cd "$(dirname "$0")/.."
S=${SHOAL_BENCH:-target/release/shoal-bench}
P=${PEERS_BENCH:-bench/peers/target/release/shoal-bench-peers}
DIR=${BENCH_DIR:-/tmp/shoal-engine-bench}
mkdir -p "$DIR"
N=${N:-1000000}
ENGINES=${ENGINES:-"shoal fjall"}
run() { # engine, args...
    local engine=$1; shift
    if [ "$engine" = shoal ]; then "$S" engine --dir "$DIR/shoal" "$@" 2>>"$DIR.err" | tail -1
    else "$P" --engine "$engine" --dir "$DIR/$engine" "$@" 2>>"$DIR.err" | tail -1; fi
}
for phase in "--workload fillseq --num $N --fresh" \
             "--workload fillrandom --num $N --fresh" \
             "--workload overwrite --num $N" \
             "--workload readrandom --num $N" \
             "--workload readmissing --num $N" \
             "--workload compact --num $N" \
             "--workload fillrandom --num $N --threads 2 --fresh" \
             "--workload readrandom --num $N --threads 2" \
             "--workload fillrandom --num 5000 --sync --fresh"; do
    for engine in $ENGINES; do run $engine $phase; done
done
