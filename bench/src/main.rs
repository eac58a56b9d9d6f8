//! `shoal-bench`: load generator and engine micro-benchmarks.
//!
//! `shoal-bench engine` drives Shoal's storage engine (see `engine.rs`);
//! `shoal-bench run` is the YCSB-style cluster load generator (`run.rs`);
//! `ping` and `quic-floor` measure the request path against raw quinn
//! (`floor.rs`).

mod check;
mod engine;
mod floor;
mod run;
mod turns;

/// jemalloc, as in `shoald` (why: `server/src/main.rs`).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use engine::{Engine, Parameters, Workload};
use shoal_storage::{Db, Options, WriteOptions};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "shoal-bench",
    about = "Shoal's load generator and engine micro-benchmarks"
)]
struct Arguments {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// db_bench-style micro-benchmark of the storage engine.
    Engine {
        /// Database directory (fill workloads need it empty or absent, or --fresh).
        #[arg(long)]
        dir: PathBuf,
        /// The workload.
        #[arg(long, value_enum)]
        workload: Workload,
        /// Number of entries and operations.
        #[arg(long, default_value_t = 1_000_000)]
        num: u64,
        /// Value size in bytes.
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// Threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Fsync every write.
        #[arg(long)]
        sync: bool,
        /// Delete the directory's contents first (fill workloads).
        #[arg(long)]
        fresh: bool,
        /// SSTable data block size before compression (default: the engine's).
        #[arg(long)]
        block_size: Option<usize>,
    },
    /// Cluster load generator (YCSB core workloads) over the client library.
    Run {
        /// The workload: a, b, c, d, f (YCSB) or w (all updates).
        #[arg(long, value_enum)]
        workload: run::Workload,
        /// Client configuration (default: $SHOAL_CONFIG, then ./.cluster/client.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Keys loaded before the run.
        #[arg(long, default_value_t = 10_000)]
        records: u64,
        /// Operations in the run.
        #[arg(long, default_value_t = 100_000)]
        ops: u64,
        /// Run for this many seconds instead of a number of operations.
        #[arg(long)]
        duration: Option<f64>,
        /// End the run as soon as this file exists (checked every 100 ms):
        /// measures a window another process decides, such as a membership
        /// change (scripts/bench-moves.sh).
        #[arg(long)]
        stop_file: Option<PathBuf>,
        /// Pause and resume every member's background work (anti-entropy,
        /// data moves) in turns of this many seconds, and report latency
        /// with it running and paused side by side ("background_running",
        /// "background_paused"): a control taken in the same minutes as
        /// what it controls. The first second of each turn counts in
        /// neither. Background work is left running at the end.
        #[arg(long)]
        alternate_background: Option<f64>,
        /// Requests in flight (closed loop) or workers (open loop).
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Value size in bytes.
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// Key choice (default: latest for d, zipfian otherwise).
        #[arg(long, value_enum)]
        distribution: Option<run::Distribution>,
        /// Read quorum: one, quorum, all or a number.
        #[arg(long)]
        r: Option<shoal_cluster::message::Quorum>,
        /// Write quorum.
        #[arg(long)]
        w: Option<shoal_cluster::message::Quorum>,
        /// Writes count only once fsynced on each replica.
        #[arg(long)]
        durable: bool,
        /// Open loop: this many operations per second, latency from the intended time.
        #[arg(long)]
        rate: Option<f64>,
        /// Skip the load phase.
        #[arg(long)]
        skip_load: bool,
        /// Also write the JSON summary to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write a self-contained HTML report to this file.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Seed of the key choices (default: a fresh one, given in the
        /// summary as `seed`). Two runs with one seed on the same data
        /// choose the same keys in the same order, and a run's first update
        /// of a key it has not read is blind: repeating a seed adds a
        /// sibling to the same keys run after run.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// No-op requests through the client library and a node's event loop.
    Ping {
        /// Client configuration.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The node to ping (default: the configuration's first).
        #[arg(long)]
        node: Option<std::net::SocketAddr>,
        /// Requests in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Requests.
        #[arg(long, default_value_t = 200_000)]
        ops: u64,
    },
    /// Jepsen-style checker: load and faults on a cluster of scripts/cluster.sh.
    Check {
        /// The cluster's directory.
        #[arg(long, default_value = "./.cluster")]
        dir: PathBuf,
        /// scripts/cluster.sh (for the nemesis).
        #[arg(long, default_value = "scripts/cluster.sh")]
        script: PathBuf,
        /// Seconds of load and faults.
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
        /// Keys of the set workload.
        #[arg(long, default_value_t = 5)]
        set_keys: usize,
        /// Keys of the register workload.
        #[arg(long, default_value_t = 5)]
        register_keys: usize,
        /// Workers adding to the sets.
        #[arg(long, default_value_t = 4)]
        set_workers: usize,
        /// Workers on the registers.
        #[arg(long, default_value_t = 2)]
        register_workers: usize,
        /// Faults to inject, comma-separated: kill, pause, rolling, partition (needs --netns).
        #[arg(long, value_delimiter = ',', default_value = "kill,pause")]
        faults: Vec<String>,
        /// Membership changes, comma-separated, spread evenly over the run:
        /// `add` (one more node joins) and `decommission:I` (node I leaves,
        /// hands off its data and stops). Example: add,add,decommission:1.
        #[arg(long, value_delimiter = ',')]
        topology: Vec<String>,
        /// Seconds between faults (each lasts until the next).
        #[arg(long, default_value_t = 5.0)]
        fault_interval: f64,
        /// Seconds allowed for convergence after healing.
        #[arg(long, default_value_t = 60.0)]
        converge_deadline: f64,
        /// The history file (one JSON line per operation).
        #[arg(long, default_value = "check-history.jsonl")]
        history: PathBuf,
        /// Seed of the fault schedule and key choices.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// `r` of register reads.
        #[arg(long, default_value = "one")]
        register_r: shoal_cluster::message::Quorum,
        /// `w` of register writes.
        #[arg(long, default_value = "quorum")]
        register_w: shoal_cluster::message::Quorum,
        /// The nodes' hint_bytes_per_target_max (shoald's default).
        #[arg(long, default_value_t = 256 << 20)]
        hint_bytes_per_target_max: u64,
    },
    /// The same framed requests against a raw in-process quinn server.
    QuicFloor {
        /// Requests in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Multiplex every request on one long-lived stream (as the client
        /// library does) instead of one stream per request.
        #[arg(long)]
        framed: bool,
        /// Requests.
        #[arg(long, default_value_t = 200_000)]
        ops: u64,
    },
}

fn client_config_path(config: Option<PathBuf>) -> PathBuf {
    config
        .or_else(|| std::env::var_os("SHOAL_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("./.cluster/client.toml"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // One thread: on few cores it drives QUIC faster than a work-stealing pool.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

struct ShoalEngine(Db);

impl Engine for ShoalEngine {
    fn put(&self, key: &[u8], value: &[u8], sync: bool) -> Result<(), String> {
        self.0
            .put(key, value, &WriteOptions { sync })
            .map_err(|error| error.to_string())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.0.get(key).map_err(|error| error.to_string())
    }

    fn scan_all(&self) -> Result<u64, String> {
        let mut iterator = self.0.iter(None);
        iterator
            .seek_to_first()
            .map_err(|error| error.to_string())?;
        let mut count = 0;
        while iterator.valid() {
            count += 1;
            iterator.next().map_err(|error| error.to_string())?;
        }
        Ok(count)
    }

    fn flush(&self) -> Result<(), String> {
        self.0.flush().map_err(|error| error.to_string())
    }

    fn compact_all(&self) -> Result<(), String> {
        self.0.compact().map_err(|error| error.to_string())
    }

    fn size_on_disk_bytes(&self) -> u64 {
        self.0.size_on_disk_bytes()
    }
}

fn main() -> anyhow::Result<()> {
    let arguments = Arguments::parse();
    match arguments.command {
        Command::Engine {
            dir,
            workload,
            num,
            value_size,
            threads,
            sync,
            fresh,
            block_size,
        } => {
            if workload.fills() && dir.exists() {
                let empty = std::fs::read_dir(&dir)
                    .with_context(|| format!("reading {}", dir.display()))?
                    .next()
                    .is_none();
                if !empty && !fresh {
                    anyhow::bail!(
                        "{} is not empty; a fill starts from an empty database (pass --fresh to delete its contents)",
                        dir.display()
                    );
                }
                if fresh {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("removing {}", dir.display()))?;
                }
            }
            if !workload.fills() && !dir.join("CURRENT").exists() {
                anyhow::bail!(
                    "{} holds no database; run a fill workload first",
                    dir.display()
                );
            }
            let defaults = Options::default();
            let options = Options {
                block_size_bytes: block_size.unwrap_or(defaults.block_size_bytes),
                ..defaults
            };
            let db =
                Db::open(&dir, options).with_context(|| format!("opening {}", dir.display()))?;
            let engine = ShoalEngine(db);
            let parameters = Parameters {
                workload,
                num,
                value_size,
                threads,
                sync,
            };
            let report =
                engine::run(&engine, &parameters).map_err(|error| anyhow::anyhow!(error))?;
            engine::print_report("shoal", &report);
            engine.0.close().context("closing the database")?;
            Ok(())
        }
        Command::Run {
            workload,
            config,
            records,
            ops,
            duration,
            stop_file,
            alternate_background,
            concurrency,
            value_size,
            distribution,
            r,
            w,
            durable,
            rate,
            skip_load,
            json,
            html,
            seed,
        } => {
            if alternate_background.is_some_and(|turn| !(turn >= 2.0 && turn.is_finite())) {
                anyhow::bail!("--alternate-background must be at least 2 seconds");
            }
            if rate.is_some_and(|rate| !(rate > 0.0 && rate.is_finite())) {
                anyhow::bail!("--rate must be a positive number of operations per second");
            }
            if duration.is_some_and(|duration| !(duration > 0.0 && duration.is_finite())) {
                anyhow::bail!("--duration must be a positive number of seconds");
            }
            let parameters = run::RunParameters {
                config: client_config_path(config),
                workload,
                records,
                ops,
                duration: duration.map(std::time::Duration::from_secs_f64),
                stop_file,
                alternate_background: alternate_background.map(std::time::Duration::from_secs_f64),
                concurrency,
                value_size,
                distribution,
                r,
                w,
                durable,
                rate,
                skip_load,
                json,
                html,
                seed: seed.unwrap_or_else(run::fresh_seed),
            };
            runtime()?.block_on(run::run(parameters))
        }
        Command::Ping {
            config,
            node,
            concurrency,
            ops,
        } => runtime()?.block_on(floor::ping(
            &client_config_path(config),
            node,
            concurrency,
            ops,
        )),
        Command::Check {
            dir,
            script,
            duration,
            set_keys,
            register_keys,
            set_workers,
            register_workers,
            faults,
            topology,
            fault_interval,
            converge_deadline,
            history,
            seed,
            register_r,
            register_w,
            hint_bytes_per_target_max,
        } => {
            for (name, value) in [
                ("--duration", duration),
                ("--fault-interval", fault_interval),
                ("--converge-deadline", converge_deadline),
            ] {
                if !(value > 0.0 && value.is_finite()) {
                    anyhow::bail!("{name} must be a positive number of seconds");
                }
            }
            let parameters = check::CheckParameters {
                dir,
                script,
                duration: std::time::Duration::from_secs_f64(duration),
                set_keys,
                register_keys,
                set_workers,
                register_workers,
                faults,
                topology,
                fault_interval: std::time::Duration::from_secs_f64(fault_interval),
                converge_deadline: std::time::Duration::from_secs_f64(converge_deadline),
                history,
                seed,
                register_r,
                register_w,
                hint_bytes_per_target_max,
            };
            if runtime()?.block_on(check::check(parameters))? {
                Ok(())
            } else {
                std::process::exit(1);
            }
        }
        Command::QuicFloor {
            concurrency,
            ops,
            framed,
        } => runtime()?.block_on(floor::quic_floor(concurrency, ops, framed)),
    }
}
