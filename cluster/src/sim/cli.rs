//! `shoal-sim cluster`: arguments, entry point and the JSON summary line.
//!
//! Exit status 0 if and only if every invariant held in every run. The last
//! line of standard output is one JSON object (see docs/testing.md).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use serde_json::json;

use crate::siblings::ConflictPolicy;
use crate::sim::world::{self, Faults, Report, SimulationOptions};

/// Arguments of `shoal-sim cluster`.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// The seed of the run (ignored when --seeds is given).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A range of seeds `A..B` (B excluded) to run one after another.
    #[arg(long)]
    pub seeds: Option<String>,
    /// Cluster members.
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Client operations per run.
    #[arg(long, default_value_t = 5000)]
    pub ops: usize,
    /// Faults to inject: any of drop,delay,dup,reorder,partition,crash,powerloss, or all, or none.
    #[arg(
        long,
        default_value = "drop,delay,dup,reorder,partition,crash,powerloss"
    )]
    pub faults: String,
    /// Conflict policy of the replicas: siblings (default) or lww. Under lww
    /// the set workload loses concurrent adds by design and is not checked.
    #[arg(long, default_value = "siblings")]
    pub policy: String,
    /// End the run on anti-entropy alone: no repair reads; wait until every
    /// replica of every key holds the same state.
    #[arg(long)]
    pub anti_entropy_only: bool,
    /// When the workload ends, wipe node 0's whole store and restart it empty.
    #[arg(long)]
    pub wipe: bool,
    /// Change membership under the workload: two nodes join, then a
    /// founder leaves (data moves while faults go on).
    #[arg(long)]
    pub topology: bool,
    /// With --topology: the second join and the leave are asked at the same
    /// instant at different nodes, shortly after the first join.
    #[arg(long, requires = "topology")]
    pub concurrent_changes: bool,
    /// With --topology: once the drain's deletes are reaped, the first
    /// joiner leaves again, moving partitions back to their former owners.
    #[arg(long, requires = "topology")]
    pub move_back: bool,
}

/// Runs one seed, turning a panic into a failed report.
pub fn run_seed(options: SimulationOptions) -> Result<Report, String> {
    let seed = options.seed;
    match catch_unwind(AssertUnwindSafe(|| world::run(options))) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Ok(Report {
                seed,
                violations: vec![format!("panic: {message}")],
                ..Report::default()
            })
        }
    }
}

fn parse_seeds(text: &str) -> Result<(u64, u64), String> {
    let (start, end) = text
        .split_once("..")
        .ok_or_else(|| format!("--seeds {text:?}: expected A..B"))?;
    let start: u64 = start
        .trim()
        .parse()
        .map_err(|_| format!("--seeds: bad start {start:?}"))?;
    let end: u64 = end
        .trim()
        .parse()
        .map_err(|_| format!("--seeds: bad end {end:?}"))?;
    if end <= start {
        return Err(format!("--seeds {text:?}: empty range"));
    }
    Ok((start, end))
}

/// The JSON line for one run.
pub fn report_json(report: &Report, wall_seconds: f64) -> serde_json::Value {
    let ops_per_second = if wall_seconds > 0.0 {
        report.ops_completed as f64 / wall_seconds
    } else {
        0.0
    };
    let metrics = &report.metrics;
    json!({
        "seed": report.seed,
        "passed": report.passed(),
        "acked_writes": report.acked_writes,
        "lost_writes": report.lost_writes,
        "converged": report.converged,
        "unsynced_writes_lost": report.unsynced_writes_lost,
        "violations": report.violations,
        "ops_completed": report.ops_completed,
        "failed_requests": report.failed_requests,
        "strict_reads_checked": report.strict_reads_checked,
        "simulated_ms": report.simulated_millis,
        "events": report.events,
        "messages_sent": report.messages_sent,
        "messages_lost": report.messages_lost,
        "process_crashes": report.process_crashes,
        "machine_crashes": report.machine_crashes,
        "partitions": report.partitions,
        "store_failures_injected": report.store_failures_injected,
        "joins": report.joins,
        "leaves": report.leaves,
        "reaped_before_move_back": report.reaped_before_move_back,
        "replicas_returned": report.replicas_returned,
        "moves_completed": metrics.moves_completed,
        "move_records": metrics.move_records,
        "tombstones_reaped": metrics.tombstones_reaped,
        "stale_keys_deleted": metrics.stale_keys_deleted,
        "move_keys_received": metrics.move_keys_received,
        "store_failures": metrics.store_failures,
        "quorum_failures": metrics.quorum_failures,
        "sibling_limit_rejections": metrics.sibling_limit_rejections,
        "read_repairs": metrics.read_repairs,
        "anti_entropy_rounds": metrics.anti_entropy_rounds,
        "anti_entropy_trees_differed": metrics.anti_entropy_trees_differed,
        "anti_entropy_keys_sent": metrics.anti_entropy_keys_sent,
        "anti_entropy_steps_dropped": metrics.anti_entropy_steps_dropped,
        "hints_stored": metrics.hints_stored,
        "hints_replayed": metrics.hints_replayed,
        "hints_dropped": metrics.hints_dropped_full + metrics.hints_dropped_expired + metrics.hints_dropped_corrupt,
        "trace_hash": format!("{:016x}", report.trace_hash),
        "wall_ms": (wall_seconds * 1000.0).round() as u64,
        "sim_ops_per_sec": ops_per_second.round() as u64,
    })
}

/// Runs one simulation (or a range of seeds) and returns the process exit status.
pub fn run_cluster(args: ClusterArgs) -> i32 {
    let faults = match Faults::parse(&args.faults) {
        Ok(faults) => faults,
        Err(error) => {
            eprintln!("shoal-sim cluster: {error}");
            return 2;
        }
    };
    let conflict_policy = match args.policy.as_str() {
        "siblings" => ConflictPolicy::Siblings,
        "lww" => ConflictPolicy::Lww,
        other => {
            eprintln!("shoal-sim cluster: unknown policy {other:?} (expected siblings or lww)");
            return 2;
        }
    };
    let (start, end) = match &args.seeds {
        None => (args.seed, args.seed.saturating_add(1)),
        Some(text) => match parse_seeds(text) {
            Ok(range) => range,
            Err(error) => {
                eprintln!("shoal-sim cluster: {error}");
                return 2;
            }
        },
    };
    let single = args.seeds.is_none();
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut ops = 0u64;
    let mut acked = 0u64;
    let mut lost = 0u64;
    let mut converged = true;
    let mut last = None;
    for seed in start..end {
        let options = SimulationOptions {
            nodes: args.nodes,
            ops: args.ops,
            faults,
            conflict_policy,
            anti_entropy_only: args.anti_entropy_only,
            wipe_at_drain: args.wipe,
            topology: args.topology,
            concurrent_changes: args.concurrent_changes,
            move_back: args.move_back,
            ..SimulationOptions::new(seed)
        };
        let seed_started = Instant::now();
        let report = match run_seed(options) {
            Ok(report) => report,
            Err(error) => {
                eprintln!("shoal-sim cluster: {error}");
                return 2;
            }
        };
        let line = report_json(&report, seed_started.elapsed().as_secs_f64());
        ops += report.ops_completed;
        acked += report.acked_writes;
        lost += report.lost_writes;
        converged &= report.converged;
        if !report.passed() {
            failed.push(seed);
            for violation in &report.violations {
                eprintln!("seed {seed}: {violation}");
            }
            eprintln!(
                "seed {seed} FAILED; replay with: shoal-sim cluster --seed {seed} --nodes {} --ops {} --faults {} --policy {}{}{}{}{}{}",
                args.nodes,
                args.ops,
                args.faults,
                args.policy,
                if args.anti_entropy_only {
                    " --anti-entropy-only"
                } else {
                    ""
                },
                if args.wipe { " --wipe" } else { "" },
                if args.topology { " --topology" } else { "" },
                if args.concurrent_changes {
                    " --concurrent-changes"
                } else {
                    ""
                },
                if args.move_back { " --move-back" } else { "" },
            );
        }
        if !single {
            println!("{line}");
        }
        last = Some(line);
    }
    let wall = started.elapsed().as_secs_f64();
    if single {
        if let Some(line) = last {
            println!("{line}");
        }
    } else {
        let summary = json!({
            "seeds": format!("{start}..{end}"),
            "seeds_run": end - start,
            "failed_seeds": failed,
            "acked_writes": acked,
            "lost_writes": lost,
            "converged": converged,
            "wall_ms": (wall * 1000.0).round() as u64,
            "sim_ops_per_sec": if wall > 0.0 { (ops as f64 / wall).round() as u64 } else { 0 },
        });
        println!("{summary}");
    }
    if failed.is_empty() { 0 } else { 1 }
}
