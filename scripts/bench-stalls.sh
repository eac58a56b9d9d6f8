#!/usr/bin/env bash
# Where the worst writes come from: each engine's write phases, ROUNDS times,
# interleaved, with every put slower than LIMIT_US µs logged together with
# what the writing thread did meanwhile (bench/src/engine.rs, ThreadUsage).
# Each slow put is put in one class (ThreadUsage::class):
#   waited     the thread blocked (a voluntary switch: a lock, a condvar, I/O);
#   worked     it was on the CPU for at least half the time;
#   preempted  another task took its CPU (an involuntary switch only);
#   lost       neither: it never left the CPU yet got under half of it, which
#              is time the hypervisor stole or interrupts took.
# The first two are the engine's doing; the last two are the machine's.
# Build as for scripts/bench-engines.sh, then, for instance:
# ENGINES="shoal rocksdb" ROUNDS=10 scripts/bench-stalls.sh
# PHASES picks among fillseq, fillrandom, fillrandom-2threads and
# fillrandom-sync (all four by default).
set -u
cd "$(dirname "$0")/.."
S=${SHOAL_BENCH:-target/release/shoal-bench}
P=${PEERS_BENCH:-bench/peers/target/release/shoal-bench-peers}
DIR=${BENCH_DIR:-/tmp/shoal-stall-bench}
N=${N:-1000000}
ROUNDS=${ROUNDS:-5}
LIMIT_US=${LIMIT_US:-1000}
ENGINES=${ENGINES:-"shoal fjall"}
PHASES=${PHASES:-"fillseq fillrandom fillrandom-2threads fillrandom-sync"}
mkdir -p "$DIR"
run() { # engine, args...: the report's JSON line, then the slow lines
    local engine=$1; shift
    if [ "$engine" = shoal ]; then
        SHOAL_BENCH_LOG_SLOW_US=$LIMIT_US "$S" engine --dir "$DIR/shoal" "$@" 2>"$DIR/err" | tail -1
    else
        SHOAL_BENCH_LOG_SLOW_US=$LIMIT_US "$P" --engine "$engine" --dir "$DIR/$engine" "$@" 2>"$DIR/err" | tail -1
    fi
    tr '\r' '\n' <"$DIR/err" | grep -o 'slow: .*' || true
}
# One line per run: engine, phase, round, worst put (µs), then the count of
# slow puts in each class and the worst of each.
classify() { # engine phase round
    awk -v engine="$1" -v phase="$2" -v round="$3" '
        /^\{/ { if (match($0, /"max_us":[0-9.]+/)) max = substr($0, RSTART + 9, RLENGTH - 9) }
        /^slow:/ {
            for (i = 1; i <= NF; i++) {
                if ($i == "took") wall = $(i + 1)
                if ($i == "class") class = $(i + 1)
            }
            count[class]++
            if (wall > worst[class]) worst[class] = wall
        }
        END {
            printf "%-8s %-16s %2d max %6d us", engine, phase, round, max
            n = split("waited worked preempted lost", classes, " ")
            for (i = 1; i <= n; i++)
                printf "  %s %d (%d us)", classes[i], count[classes[i]], worst[classes[i]]
            printf "\n"
        }'
}
flags() { # phase
    case $1 in
        fillseq) echo "--workload fillseq --num $N --fresh" ;;
        fillrandom) echo "--workload fillrandom --num $N --fresh" ;;
        fillrandom-2threads) echo "--workload fillrandom --num $N --threads 2 --fresh" ;;
        fillrandom-sync) echo "--workload fillrandom --num 5000 --sync --fresh" ;;
        *) echo "unknown phase $1" >&2; exit 1 ;;
    esac
}
for phase in $PHASES; do flags "$phase" >/dev/null || exit 1; done
for round in $(seq 1 "$ROUNDS"); do
    for phase in $PHASES; do
        for engine in $ENGINES; do
            # shellcheck disable=SC2046 # the phase's flags are split on purpose
            run "$engine" $(flags "$phase") | classify "$engine" "$phase" "$round"
        done
    done
done
