//! `shoal-bench`: load generator and engine micro-benchmarks.
//!
//! `shoal-bench engine` drives Shoal's storage engine (see `engine.rs`). The
//! cluster load generator, `shoal-bench run`, needs the node and client,
//! which are not built yet; it says so instead of pretending.

mod engine;

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
    },
    /// Cluster load generator (YCSB workloads) — not built yet.
    Run,
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
            let db = Db::open(&dir, Options::default())
                .with_context(|| format!("opening {}", dir.display()))?;
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
        Command::Run => {
            eprintln!(
                "shoal-bench run: the cluster load generator is not built yet (it needs shoald and shoal-client)"
            );
            std::process::exit(2);
        }
    }
}
