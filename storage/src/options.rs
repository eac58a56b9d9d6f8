//! Engine options: sizes, limits and durability. Every structure that grows
//! with input is bounded by one of these.

use std::time::Duration;

/// When the write-ahead log is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Every write is fsynced before it returns (one fsync per group of
    /// concurrent writers).
    Always,
    /// The log is fsynced in the background at this interval; a machine crash
    /// loses at most that much.
    Interval(Duration),
    /// The operating system decides; a machine crash may lose recent writes.
    Never,
}

/// Options for opening a database.
#[derive(Debug, Clone)]
pub struct Options {
    /// Create the directory and an empty database if none exists.
    pub create_if_missing: bool,
    /// A memtable is frozen and flushed once it holds this many bytes.
    pub memtable_size_bytes: usize,
    /// Frozen memtables that may wait for their flush before writers stall
    /// (memory is bounded by `(1 + this) × memtable_size_bytes`).
    pub max_immutable_memtables: usize,
    /// Durability of the write-ahead log.
    pub sync_mode: SyncMode,
    /// Largest key accepted.
    pub key_size_max_bytes: usize,
    /// Largest value accepted.
    pub value_size_max_bytes: usize,
    /// Level-0 table count that triggers a compaction into level 1.
    pub level0_compaction_trigger: usize,
    /// Level-0 table count at which each write is delayed a little.
    pub level0_slowdown_trigger: usize,
    /// Level-0 table count at which writes wait for compaction.
    pub level0_stop_trigger: usize,
    /// Target size of level 1; level `i` targets this × multiplier^(i-1).
    pub level1_size_bytes: u64,
    /// Growth factor between levels.
    pub level_size_multiplier: u64,
    /// Number of levels (the last is the bottom, where tombstones are dropped).
    pub level_count: usize,
    /// Target size of one SSTable written by compaction.
    pub table_size_bytes: u64,
    /// SSTable data block size before compression.
    pub block_size_bytes: usize,
    /// Bloom filter bits per key (10 gives about 1 % false positives).
    pub bloom_bits_per_key: usize,
    /// Compress blocks with Snappy when it saves space.
    pub compression: bool,
    /// Preallocated size of each write-ahead log file.
    pub wal_preallocate_bytes: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            create_if_missing: true,
            memtable_size_bytes: 64 << 20,
            max_immutable_memtables: 2,
            sync_mode: SyncMode::Never,
            key_size_max_bytes: 64 << 10,
            value_size_max_bytes: 16 << 20,
            level0_compaction_trigger: 4,
            level0_slowdown_trigger: 12,
            level0_stop_trigger: 20,
            level1_size_bytes: 256 << 20,
            level_size_multiplier: 10,
            level_count: 7,
            table_size_bytes: 32 << 20,
            block_size_bytes: 4096,
            bloom_bits_per_key: 10,
            compression: true,
            wal_preallocate_bytes: 64 << 20,
        }
    }
}

/// Options for one write.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// Fsync the log before returning, whatever the sync mode.
    pub sync: bool,
}
