//! `shoal-storage`: Shoal's embedded LSM-tree storage engine.
//!
//! A write goes to the write-ahead log, then to the memtable; full memtables
//! become immutable and are flushed to SSTables by a background thread; leveled
//! compaction merges SSTables in the background. The engine stores opaque byte
//! keys and values and knows nothing of replication. See `docs/storage-format.md`
//! for the on-disk formats.

pub mod bloom;
pub mod db;
pub mod error;
pub mod iterator;
pub mod key;
pub mod log;
pub mod memtable;
pub mod merge;
pub mod options;
pub mod sstable;
pub mod version;

pub use db::{Db, DbIterator, DbStats, Snapshot, WriteBatch};
pub use error::{Error, Result};
pub use options::{Options, SyncMode, WriteOptions};
