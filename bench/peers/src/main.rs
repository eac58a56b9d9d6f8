//! `shoal-bench-peers`: the peers of Shoal's engine (fjall, and RocksDB with
//! `--features rocksdb`) driven by the very same workload code as
//! `shoal-bench engine` (`../src/engine.rs`), for side-by-side runs.

#[path = "../../src/engine.rs"]
#[allow(dead_code)]
mod engine;

/// jemalloc for every engine here, as in `shoal-bench` (see its main.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::Context;
use clap::Parser;
use engine::{Engine, Parameters, Workload};
use std::path::{Path, PathBuf};

#[derive(Parser)]
struct Arguments {
    /// fjall or rocksdb.
    #[arg(long)]
    engine: String,
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, value_enum)]
    workload: Workload,
    #[arg(long, default_value_t = 1_000_000)]
    num: u64,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long)]
    sync: bool,
    #[arg(long)]
    fresh: bool,
}

/// Bytes of a directory's files but write-ahead logs and journals, like
/// Shoal's figure (live tables only).
fn data_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().to_lowercase();
            if name.ends_with(".log") || name.contains("journal") || name.starts_with("log") {
                return 0;
            }
            match entry.metadata() {
                Ok(metadata) if metadata.is_dir() => data_bytes(&entry.path()),
                Ok(metadata) => metadata.len(),
                Err(_) => 0,
            }
        })
        .sum()
}

struct Fjall {
    database: fjall::Database,
    keyspace: fjall::Keyspace,
    path: PathBuf,
}

impl Engine for Fjall {
    fn put(&self, key: &[u8], value: &[u8], sync: bool) -> Result<(), String> {
        self.keyspace
            .insert(key, value)
            .map_err(|error| error.to_string())?;
        if sync {
            self.database
                .persist(fjall::PersistMode::SyncData)
                .map_err(|error| error.to_string())?;
        }
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.keyspace
            .get(key)
            .map(|value| value.map(|value| value.to_vec()))
            .map_err(|error| error.to_string())
    }

    fn scan_all(&self) -> Result<u64, String> {
        let mut count = 0;
        for item in self.keyspace.iter() {
            item.into_inner().map_err(|error| error.to_string())?;
            count += 1;
        }
        Ok(count)
    }

    fn flush(&self) -> Result<(), String> {
        self.database
            .persist(fjall::PersistMode::SyncAll)
            .map_err(|error| error.to_string())
    }

    fn compact_all(&self) -> Result<(), String> {
        self.keyspace
            .major_compact()
            .map_err(|error| error.to_string())
    }

    /// Table bytes: the directory without the journal.
    fn size_on_disk_bytes(&self) -> u64 {
        data_bytes(&self.path)
    }
}

#[cfg(feature = "rocksdb")]
struct Rocks {
    db: rocksdb::DB,
    path: PathBuf,
}

#[cfg(feature = "rocksdb")]
impl Engine for Rocks {
    fn put(&self, key: &[u8], value: &[u8], sync: bool) -> Result<(), String> {
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(sync);
        self.db
            .put_opt(key, value, &options)
            .map_err(|error| error.to_string())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.db.get(key).map_err(|error| error.to_string())
    }

    fn scan_all(&self) -> Result<u64, String> {
        let mut count = 0;
        for item in self.db.iterator(rocksdb::IteratorMode::Start) {
            item.map_err(|error| error.to_string())?;
            count += 1;
        }
        Ok(count)
    }

    fn flush(&self) -> Result<(), String> {
        self.db.flush().map_err(|error| error.to_string())
    }

    fn compact_all(&self) -> Result<(), String> {
        self.db.compact_range(None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// Table bytes: the directory without the write-ahead log.
    fn size_on_disk_bytes(&self) -> u64 {
        data_bytes(&self.path)
    }
}

fn main() -> anyhow::Result<()> {
    let arguments = Arguments::parse();
    if arguments.fresh && arguments.dir.exists() {
        std::fs::remove_dir_all(&arguments.dir).context("removing the directory")?;
    }
    let parameters = Parameters {
        workload: arguments.workload,
        num: arguments.num,
        value_size: arguments.value_size,
        threads: arguments.threads,
        sync: arguments.sync,
    };
    let report = match arguments.engine.as_str() {
        "fjall" => {
            let database = fjall::Database::builder(&arguments.dir)
                .cache_size(64 << 20)
                .open()
                .context("opening fjall")?;
            let keyspace = database
                .keyspace("bench", fjall::KeyspaceCreateOptions::default)
                .context("opening the keyspace")?;
            let engine = Fjall {
                database,
                keyspace,
                path: arguments.dir.clone(),
            };
            engine::run(&engine, &parameters).map_err(|error| anyhow::anyhow!(error))?
        }
        #[cfg(feature = "rocksdb")]
        "rocksdb" => {
            let mut options = rocksdb::Options::default();
            options.create_if_missing(true);
            options.set_write_buffer_size(64 << 20);
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_bloom_filter(10.0, false);
            options.set_block_based_table_factory(&table);
            let db = rocksdb::DB::open(&options, &arguments.dir).context("opening rocksdb")?;
            let engine = Rocks {
                db,
                path: arguments.dir.clone(),
            };
            engine::run(&engine, &parameters).map_err(|error| anyhow::anyhow!(error))?
        }
        other => {
            anyhow::bail!("unknown engine {other} (fjall, or rocksdb with --features rocksdb)")
        }
    };
    engine::print_report(&arguments.engine, &report);
    Ok(())
}
