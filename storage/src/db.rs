//! The database: the public API of the engine and the control flow between
//! its parts — write-ahead log, memtables, SSTables, manifest, flush and
//! compaction threads.
//!
//! Write path: a writer takes the write lock, gets the next sequence numbers,
//! appends the batch to the log, inserts it into the memtable and publishes
//! the sequence; then, if the write must be durable, it joins the *group
//! commit*: whoever holds the sync lock fsyncs everything appended so far, so
//! one fsync covers every writer that appended before it started.
//!
//! Invariants:
//! - A write is visible (its sequence published) only after its log append,
//!   and acknowledged under `sync` only after an fsync that covers it.
//! - Log files are deleted only after the tables holding their writes are in
//!   a manifest edit that was fsynced.
//! - Any failed log write or fsync makes the database read-only until it is
//!   reopened, so no acknowledged write can depend on bytes that were lost.
//! - Level 0 never grows past `level0_stop_trigger` tables: writers wait for
//!   compaction there (and are slowed a little from `level0_slowdown_trigger`).
//! - Tombstones are dropped only by a compaction into the bottom of their key
//!   range (no deeper table overlaps) and only when no snapshot can see below them.

use crate::iterator::InternalIterator;
use crate::key::{
    SEQUENCE_MAX, ValueKind, compare_internal_keys, encode_internal_key, parse_internal_key,
    user_key,
};
use crate::log::{LogWriter, read_log, sync_directory};
use crate::memtable::{MemEntry, Memtable};
use crate::merge::{MergingIterator, Source};
use crate::options::{Options, SyncMode, WriteOptions};
use crate::sstable::block::{get_varint, put_varint};
use crate::sstable::{Compression, Table, TableBuilder, TableOptions};
use crate::version::{TableFile, Version, VersionEdit};
use crate::{Error, Result};
use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// An atomic group of puts and deletes.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    body: Vec<u8>,
    count: u32,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.body.push(ValueKind::Value as u8);
        put_varint(&mut self.body, key.len() as u64);
        self.body.extend_from_slice(key);
        put_varint(&mut self.body, value.len() as u64);
        self.body.extend_from_slice(value);
        self.count += 1;
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: &[u8]) {
        self.body.push(ValueKind::Deletion as u8);
        put_varint(&mut self.body, key.len() as u64);
        self.body.extend_from_slice(key);
        self.count += 1;
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Removes every operation.
    pub fn clear(&mut self) {
        self.body.clear();
        self.count = 0;
    }
}

/// Decodes a batch body into `(kind, key, value)` operations.
/// One decoded batch operation: kind, key, value.
type Operation<'a> = (ValueKind, &'a [u8], &'a [u8]);

fn batch_operations(body: &[u8], count: u32) -> Option<Vec<Operation<'_>>> {
    let mut operations = Vec::with_capacity(count.min(1 << 16) as usize);
    let mut position = 0;
    for _ in 0..count {
        let kind = ValueKind::from_u8(*body.get(position)?)?;
        position += 1;
        let mut field = || -> Option<&[u8]> {
            let length = usize::try_from(get_varint(body, &mut position)?).ok()?;
            let end = position.checked_add(length)?;
            let bytes = body.get(position..end)?;
            position = end;
            Some(bytes)
        };
        let key = field()?;
        let value = if kind == ValueKind::Value {
            field()?
        } else {
            &[]
        };
        operations.push((kind, key, value));
    }
    (position == body.len()).then_some(operations)
}

/// A consistent read view; keeps the versions it sees from being compacted away.
#[derive(Debug)]
pub struct Snapshot {
    sequence: u64,
    inner: Arc<Inner>,
}

impl Snapshot {
    /// The sequence number the snapshot sees up to.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let mut state = self.inner.lock_state();
        if let Some(count) = state.snapshots.get_mut(&self.sequence) {
            *count -= 1;
            if *count == 0 {
                state.snapshots.remove(&self.sequence);
            }
        }
    }
}

/// Figures about the engine, for metrics and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct DbStats {
    /// Tables per level.
    pub level_tables: Vec<usize>,
    /// Bytes per level.
    pub level_bytes: Vec<u64>,
    /// Bytes in the mutable memtable.
    pub memtable_bytes: usize,
    /// Memtables flushed.
    pub flushes: u64,
    /// Compactions run.
    pub compactions: u64,
    /// Bytes written by compactions.
    pub compaction_bytes_written: u64,
    /// Writes that waited for a flush or compaction.
    pub write_stalls: u64,
    /// Total time writers spent stalled.
    pub write_stall_micros: u64,
    /// Writes delayed a millisecond because level 0 reached
    /// `level0_slowdown_trigger`.
    pub write_slowdowns: u64,
    /// Log fsyncs performed.
    pub wal_syncs: u64,
}

/// A table with the level it sits in.
type LeveledFile = (usize, Arc<TableFile>);

struct WriterState {
    wal: LogWriter,
    wal_number: u64,
    /// A second handle on the log file, for fsyncs outside the write lock.
    wal_sync_handle: Arc<File>,
    next_sequence: u64,
}

struct SyncState {
    /// (log number, offset) known durable.
    synced: (u64, u64),
    /// Every log numbered below this is durable in full.
    fully_synced_below: u64,
    /// Test hook: per log, the bytes known durable, for a simulated machine
    /// crash to keep exactly those.
    #[cfg(test)]
    durable: BTreeMap<u64, u64>,
}

impl SyncState {
    /// Records that log `number` is durable up to `offset` (`u64::MAX`: all).
    fn record_durable(&mut self, number: u64, offset: u64) {
        #[cfg(test)]
        {
            let durable = self.durable.entry(number).or_insert(0);
            *durable = (*durable).max(offset);
        }
        #[cfg(not(test))]
        let _ = (number, offset);
    }
}

/// A frozen memtable and the log its writes are in.
struct Frozen {
    table: Arc<Memtable>,
    wal_number: u64,
    /// The log itself when it still has to be fsynced (every sync mode but
    /// `Always`); the flush thread does it first.
    wal: Option<LogWriter>,
    /// A handle on the log for fsyncs that must not wait for the flush
    /// thread ([`Inner::group_sync`]).
    sync_handle: Arc<File>,
}

/// A fresh, empty log whose directory entry is durable.
struct SpareLog {
    number: u64,
    wal: LogWriter,
    handle: File,
}

struct State {
    mem: Arc<Memtable>,
    /// Frozen memtables waiting to be flushed, oldest first; at most
    /// `max_immutable_memtables`.
    imms: VecDeque<Frozen>,
    mem_wal_number: u64,
    version: Arc<Version>,
    next_file_number: u64,
    log_number: u64,
    last_flushed_sequence: u64,
    snapshots: BTreeMap<u64, usize>,
    read_only: Option<String>,
    shutting_down: bool,
    compacting: bool,
    manual_compaction: bool,
    compact_pointer: Vec<Vec<u8>>,
    stats: DbStats,
}

struct Inner {
    path: PathBuf,
    options: Options,
    table_options: TableOptions,
    _lock: File,
    writer: Mutex<WriterState>,
    /// The manifest log. Its lock orders version edits (taken before
    /// `state`, never by writers), so a manifest fsync does not hold the
    /// state lock that every write needs.
    manifest: Mutex<LogWriter>,
    /// A log created ahead of need by the flush thread, so that switching
    /// memtables does not create a file and fsync the directory on the
    /// write path.
    spare_wal: Mutex<Option<SpareLog>>,
    /// The flush thread should prepare the spare log now: set when the
    /// first memtable after opening is half full (not earlier, so that a
    /// database that is only read, or written little, pays no log's worth
    /// of zeros) and at every switch.
    spare_wanted: AtomicBool,
    sync: Mutex<SyncState>,
    /// Offset appended to the current log, for the group commit.
    appended: AtomicU64,
    /// Number of the current log.
    current_wal: AtomicU64,
    visible_sequence: AtomicU64,
    read_only: AtomicBool,
    state: Mutex<State>,
    /// Test hook: the flush thread flushes nothing while set.
    #[cfg(test)]
    hold_flush: AtomicBool,
    /// Test hook: the next log append fails as a full disk would.
    #[cfg(test)]
    fail_next_append: AtomicBool,
    /// Wakes the flush and compaction threads.
    work: Condvar,
    /// Wakes writers waiting for a flush or compaction.
    progress: Condvar,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Db")
            .field("path", &self.path)
            .finish()
    }
}

/// An open database. `Send + Sync`: share it between threads by reference or `Arc`.
#[derive(Debug)]
pub struct Db {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn file_name(number: u64, extension: &str) -> String {
    format!("{number:06}.{extension}")
}

fn parse_file_name(name: &str) -> Option<(u64, &str)> {
    let (stem, extension) = name.split_once('.')?;
    Some((stem.parse().ok()?, extension))
}

impl Db {
    /// Opens (or creates) the database in `path`, recovering from the log.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Db> {
        let path = path.as_ref().to_path_buf();
        if options.level_count < 2 || options.memtable_size_bytes == 0 {
            return Err(Error::InvalidArgument(
                "level_count must be at least 2 and memtable_size_bytes positive".into(),
            ));
        }
        if options.create_if_missing {
            std::fs::create_dir_all(&path).map_err(|error| Error::io(&path, error))?;
        }
        let lock_path = path.join("LOCK");
        let lock = File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|error| Error::io(&lock_path, error))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked { path }),
            Err(std::fs::TryLockError::Error(error)) => return Err(Error::io(&lock_path, error)),
        }
        let table_options = TableOptions {
            block_size_bytes: options.block_size_bytes,
            restart_interval: 16,
            bloom_bits_per_key: options.bloom_bits_per_key,
            compression: if options.compression {
                Compression::Snappy
            } else {
                Compression::None
            },
        };

        // 1. The manifest: which tables form the database.
        let mut version = Version::new(options.level_count);
        let mut edit = VersionEdit {
            next_file_number: 1,
            ..VersionEdit::default()
        };
        let mut old_manifest = None;
        // The manifest and offset of a cut (torn) manifest tail, if any.
        let mut manifest_cut: Option<(PathBuf, u64)> = None;
        let current_path = path.join("CURRENT");
        if current_path.exists() {
            let current = std::fs::read_to_string(&current_path)
                .map_err(|error| Error::io(&current_path, error))?;
            let manifest_path = path.join(current.trim());
            let (records, torn) = read_log(&manifest_path)?;
            // Where a cut tail begins, for errors about it.
            let cut_offset: u64 = records
                .iter()
                .map(|record| (crate::log::HEADER_BYTES + record.len()) as u64)
                .sum();
            let mut live: BTreeMap<u64, (usize, u64, Vec<u8>, Vec<u8>)> = BTreeMap::new();
            for (index, record) in records.iter().enumerate() {
                let recorded = VersionEdit::decode(record).ok_or_else(|| {
                    Error::corruption(
                        &manifest_path,
                        0,
                        format!("manifest edit {index} is malformed"),
                    )
                })?;
                edit.next_file_number = edit.next_file_number.max(recorded.next_file_number);
                edit.last_sequence = edit.last_sequence.max(recorded.last_sequence);
                edit.log_number = edit.log_number.max(recorded.log_number);
                for (_, number) in &recorded.deleted {
                    live.remove(number);
                }
                for (level, number, size, smallest, largest) in recorded.added {
                    if level as usize >= options.level_count {
                        return Err(Error::corruption(
                            &manifest_path,
                            0,
                            format!("table {number} at level {level} beyond the configured levels"),
                        ));
                    }
                    live.insert(number, (level as usize, size, smallest, largest));
                }
            }
            let mut added = Vec::new();
            for (number, (level, size, smallest, largest)) in live {
                let table_path = path.join(file_name(number, "sst"));
                // A table is deleted only after the edit that drops it is
                // durable; with a cut tail, a missing table means the cut
                // record was such an edit, damaged, not torn by a crash.
                if torn && !table_path.exists() {
                    return Err(Error::corruption(
                        &manifest_path,
                        cut_offset,
                        format!(
                            "the manifest's last record is damaged: table {number} it leaves live is gone"
                        ),
                    ));
                }
                let table = Table::open(&table_path)?;
                added.push((
                    level,
                    Arc::new(TableFile {
                        number,
                        size_bytes: size,
                        smallest,
                        largest,
                        table: Arc::new(table),
                    }),
                ));
            }
            version = version.apply(&[], &added);
            if torn {
                manifest_cut = Some((manifest_path.clone(), cut_offset));
            }
            old_manifest = Some(manifest_path);
        }

        // 2. Replay the logs not yet covered by tables.
        let mut logs: Vec<u64> = Vec::new();
        let mut orphans: Vec<PathBuf> = Vec::new();
        let live_tables: Vec<u64> = version
            .levels
            .iter()
            .flatten()
            .map(|file| file.number)
            .collect();
        for entry in std::fs::read_dir(&path).map_err(|error| Error::io(&path, error))? {
            let entry = entry.map_err(|error| Error::io(&path, error))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match parse_file_name(&name) {
                Some((number, "log")) if number >= edit.log_number => logs.push(number),
                Some((_, "log")) => orphans.push(entry.path()),
                Some((number, "sst")) if !live_tables.contains(&number) => {
                    orphans.push(entry.path())
                }
                _ => {}
            }
            if let Some((number, _)) = parse_file_name(&name) {
                edit.next_file_number = edit.next_file_number.max(number + 1);
            }
        }
        logs.sort_unstable();
        // A log is deleted only after the edit that moves past it is durable.
        // With a cut manifest tail, the log the manifest names being gone
        // while a newer one exists means the cut record was such an edit,
        // damaged rather than torn; replaying from the newer log would lose
        // the writes of the table that edit recorded.
        if let Some((manifest_path, cut_offset)) = &manifest_cut
            && logs.first().is_some_and(|first| *first > edit.log_number)
            && edit.log_number > 0
        {
            return Err(Error::corruption(
                manifest_path,
                *cut_offset,
                format!(
                    "the manifest's last record is damaged: log {} it names is gone",
                    edit.log_number
                ),
            ));
        }
        let recovered = Arc::new(Memtable::new());
        let mut last_sequence = edit.last_sequence;
        for number in &logs {
            let log_path = path.join(file_name(*number, "log"));
            let (records, _) = read_log(&log_path)?;
            for (index, record) in records.iter().enumerate() {
                let malformed = || {
                    Error::corruption(
                        &log_path,
                        0,
                        format!("log record {index} is not a write batch"),
                    )
                };
                if record.len() < 12 {
                    return Err(malformed());
                }
                let mut header = [0u8; 8];
                header.copy_from_slice(&record[..8]);
                let sequence = u64::from_le_bytes(header);
                let count = u32::from_le_bytes([record[8], record[9], record[10], record[11]]);
                let operations = batch_operations(&record[12..], count).ok_or_else(malformed)?;
                recovered.insert_all(operations.iter().enumerate().map(
                    |(offset, (kind, key, value))| (sequence + offset as u64, *kind, *key, *value),
                ));
                last_sequence = last_sequence.max(sequence + u64::from(count).saturating_sub(1));
            }
        }

        // 3. Write what the logs held into a level-0 table.
        let mut next_file_number = edit.next_file_number;
        if !recovered.is_empty() {
            let number = next_file_number;
            next_file_number += 1;
            let file = write_table_from(&path, number, &table_options, recovered.iter())?;
            if let Some(file) = file {
                version = version.apply(&[], &[(0, file)]);
            }
        }

        // 4. A fresh manifest holding the whole version, then a fresh log.
        let wal_number = next_file_number;
        let manifest_number = next_file_number + 1;
        next_file_number += 2;
        let snapshot_edit = VersionEdit {
            next_file_number,
            last_sequence,
            log_number: wal_number,
            deleted: Vec::new(),
            added: version
                .levels
                .iter()
                .enumerate()
                .flat_map(|(level, files)| {
                    files.iter().map(move |file| {
                        (
                            level as u32,
                            file.number,
                            file.size_bytes,
                            file.smallest.clone(),
                            file.largest.clone(),
                        )
                    })
                })
                .collect(),
        };
        let manifest_path = path.join(file_name(manifest_number, "manifest"));
        let mut manifest = LogWriter::create(&manifest_path, 1 << 20)?;
        manifest.append(&snapshot_edit.encode())?;
        manifest.sync()?;
        let wal_path = path.join(file_name(wal_number, "log"));
        let mut wal = LogWriter::create_mapped(&wal_path, options.wal_preallocate_bytes)?;
        wal.zero_fill()?;
        let wal_sync_handle =
            Arc::new(File::open(&wal_path).map_err(|error| Error::io(&wal_path, error))?);
        sync_directory(&path)?;
        let temporary = path.join("CURRENT.tmp");
        std::fs::write(
            &temporary,
            format!("{}\n", file_name(manifest_number, "manifest")),
        )
        .map_err(|error| Error::io(&temporary, error))?;
        File::open(&temporary)
            .and_then(|file| file.sync_all())
            .map_err(|error| Error::io(&temporary, error))?;
        std::fs::rename(&temporary, &current_path)
            .map_err(|error| Error::io(&current_path, error))?;
        sync_directory(&path)?;
        // Only now are the old logs and manifest covered; remove them.
        for number in &logs {
            let _ = std::fs::remove_file(path.join(file_name(*number, "log")));
        }
        if let Some(old) = old_manifest {
            let _ = std::fs::remove_file(old);
        }
        for orphan in orphans {
            let _ = std::fs::remove_file(orphan);
        }
        sync_directory(&path)?;

        let level_count = options.level_count;
        let inner = Arc::new(Inner {
            path,
            table_options,
            _lock: lock,
            manifest: Mutex::new(manifest),
            spare_wal: Mutex::new(None),
            spare_wanted: AtomicBool::new(false),
            writer: Mutex::new(WriterState {
                wal,
                wal_number,
                wal_sync_handle,
                next_sequence: last_sequence + 1,
            }),
            sync: Mutex::new(SyncState {
                synced: (wal_number, 0),
                fully_synced_below: wal_number,
                #[cfg(test)]
                durable: BTreeMap::new(),
            }),
            current_wal: AtomicU64::new(wal_number),
            appended: AtomicU64::new(0),
            visible_sequence: AtomicU64::new(last_sequence),
            read_only: AtomicBool::new(false),
            state: Mutex::new(State {
                mem: Arc::new(Memtable::new()),
                imms: VecDeque::new(),
                mem_wal_number: wal_number,
                version: Arc::new(version),
                next_file_number,
                log_number: wal_number,
                last_flushed_sequence: last_sequence,
                snapshots: BTreeMap::new(),
                read_only: None,
                shutting_down: false,
                compacting: false,
                manual_compaction: false,
                compact_pointer: vec![Vec::new(); level_count],
                stats: DbStats::default(),
            }),
            options,
            #[cfg(test)]
            fail_next_append: AtomicBool::new(false),
            #[cfg(test)]
            hold_flush: AtomicBool::new(false),
            work: Condvar::new(),
            progress: Condvar::new(),
        });
        let mut threads = Vec::new();
        for (name, body) in [
            ("shoal-flush", flush_thread as fn(Arc<Inner>)),
            ("shoal-compact", compaction_thread),
            ("shoal-wal-sync", interval_sync_thread),
        ] {
            let worker = Arc::clone(&inner);
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || body(worker))
                .map_err(|error| Error::io(&inner.path, error))?;
            threads.push(handle);
        }
        inner.work.notify_all();
        Ok(Db {
            inner,
            threads: Mutex::new(threads),
        })
    }

    /// Sets `key` to `value`.
    pub fn put(&self, key: &[u8], value: &[u8], options: &WriteOptions) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(key, value);
        self.write(&batch, options)
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &[u8], options: &WriteOptions) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.delete(key);
        self.write(&batch, options)
    }

    /// Applies a batch atomically: after a crash, all of it or none is there.
    pub fn write(&self, batch: &WriteBatch, options: &WriteOptions) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let operations = batch_operations(&batch.body, batch.count)
            .ok_or_else(|| Error::InvalidArgument("malformed write batch".into()))?;
        for (_, key, value) in &operations {
            if key.len() > self.inner.options.key_size_max_bytes {
                return Err(Error::InvalidArgument(format!(
                    "key of {} bytes exceeds the maximum of {}",
                    key.len(),
                    self.inner.options.key_size_max_bytes
                )));
            }
            if value.len() > self.inner.options.value_size_max_bytes {
                return Err(Error::InvalidArgument(format!(
                    "value of {} bytes exceeds the maximum of {}",
                    value.len(),
                    self.inner.options.value_size_max_bytes
                )));
            }
        }
        self.inner.check_writable()?;
        self.inner.make_room()?;

        let sync = options.sync || self.inner.options.sync_mode == SyncMode::Always;
        // The record is built before the lock; only its sequence number,
        // known under the lock, is filled in there.
        let mut record = Vec::with_capacity(12 + batch.body.len());
        record.extend_from_slice(&0u64.to_le_bytes());
        record.extend_from_slice(&batch.count.to_le_bytes());
        record.extend_from_slice(&batch.body);
        let (wal_number, offset, handle) = {
            let mut writer = self.inner.lock_writer_for_write();
            self.inner.check_writable()?;
            let sequence = writer.next_sequence;
            record[..8].copy_from_slice(&sequence.to_le_bytes());
            #[cfg(test)]
            if self
                .inner
                .fail_next_append
                .swap(false, AtomicOrdering::AcqRel)
            {
                let error = Error::io(
                    writer.wal.path(),
                    std::io::Error::from_raw_os_error(28), // ENOSPC
                );
                self.inner.fail(&error);
                return Err(error);
            }
            let appended = if sync {
                writer.wal.append_for_sync(&record)
            } else {
                writer.wal.append(&record)
            };
            if let Err(error) = appended {
                self.inner.fail(&error);
                return Err(error);
            }
            let mem = Arc::clone(&self.inner.lock_state().mem);
            mem.insert_all(operations.iter().enumerate().map(
                |(index, (kind, key, value))| -> MemEntry<'_> {
                    (sequence + index as u64, *kind, key, value)
                },
            ));
            writer.next_sequence += u64::from(batch.count);
            self.inner
                .visible_sequence
                .store(writer.next_sequence - 1, AtomicOrdering::Release);
            let offset = writer.wal.offset();
            self.inner.appended.store(offset, AtomicOrdering::Release);
            (
                writer.wal_number,
                offset,
                Arc::clone(&writer.wal_sync_handle),
            )
        };
        if sync {
            self.inner.group_sync(wal_number, offset, &handle)?;
        }
        Ok(())
    }

    /// Reads the newest value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_at(
            key,
            self.inner.visible_sequence.load(AtomicOrdering::Acquire),
        )
    }

    /// Reads `key` as of a snapshot.
    pub fn get_snapshot(&self, key: &[u8], snapshot: &Snapshot) -> Result<Option<Vec<u8>>> {
        self.get_at(key, snapshot.sequence)
    }

    fn get_at(&self, key: &[u8], sequence: u64) -> Result<Option<Vec<u8>>> {
        let (mem, imms, version) = {
            let state = self.inner.lock_state();
            (
                Arc::clone(&state.mem),
                state
                    .imms
                    .iter()
                    .rev()
                    .map(|frozen| Arc::clone(&frozen.table))
                    .collect::<Vec<_>>(),
                Arc::clone(&state.version),
            )
        };
        let found = |entry: (ValueKind, Vec<u8>)| match entry.0 {
            ValueKind::Value => Some(entry.1),
            ValueKind::Deletion => None,
        };
        if let Some(entry) = mem.get(key, sequence) {
            return Ok(found(entry));
        }
        for imm in imms {
            if let Some(entry) = imm.get(key, sequence) {
                return Ok(found(entry));
            }
        }
        for file in &version.levels[0] {
            if file.overlaps(key, key)
                && let Some(entry) = file.table.get(key, sequence)?
            {
                return Ok(found(entry));
            }
        }
        for level in 1..version.levels.len() {
            if let Some(file) = version.find_in_level(level, key)
                && let Some(entry) = file.table.get(key, sequence)?
            {
                return Ok(found(entry));
            }
        }
        Ok(None)
    }

    /// Takes a snapshot of the current state.
    pub fn snapshot(&self) -> Snapshot {
        let mut state = self.inner.lock_state();
        let sequence = self.inner.visible_sequence.load(AtomicOrdering::Acquire);
        *state.snapshots.entry(sequence).or_insert(0) += 1;
        Snapshot {
            sequence,
            inner: Arc::clone(&self.inner),
        }
    }

    /// An iterator over the live keys, as of `snapshot` (or now).
    pub fn iter(&self, snapshot: Option<&Snapshot>) -> DbIterator {
        let sequence = snapshot.map_or_else(
            || self.inner.visible_sequence.load(AtomicOrdering::Acquire),
            Snapshot::sequence,
        );
        let state = self.inner.lock_state();
        let mut sources: Vec<Source> = vec![Box::new(state.mem.iter())];
        for frozen in state.imms.iter().rev() {
            sources.push(Box::new(frozen.table.iter()));
        }
        for file in state.version.levels.iter().flatten() {
            sources.push(Box::new(file.table.iter()));
        }
        DbIterator {
            merged: MergingIterator::new(sources),
            sequence,
            key: Vec::new(),
            value: Vec::new(),
            valid: false,
        }
    }

    /// Up to `limit` live `(key, value)` pairs with `start <= key < end`.
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut iterator = self.iter(None);
        iterator.seek(start)?;
        let mut out = Vec::new();
        while iterator.valid() && out.len() < limit && iterator.key() < end {
            out.push((iterator.key().to_vec(), iterator.value().to_vec()));
            iterator.next()?;
        }
        Ok(out)
    }

    /// Writes the memtable to a table and waits until it is in the manifest.
    pub fn flush(&self) -> Result<()> {
        {
            let _writer = self.inner.lock_writer();
            if self.inner.lock_state().mem.is_empty() {
                return self.inner.check_writable();
            }
        }
        self.inner.switch_memtable(true)?;
        let mut state = self.inner.lock_state();
        while !state.imms.is_empty() && state.read_only.is_none() {
            state = self.inner.wait_progress(state);
        }
        drop(state);
        self.inner.check_writable()
    }

    /// Flushes, then merges every table into one sorted bottom run
    /// (dropping overwritten versions and tombstones no snapshot needs).
    pub fn compact(&self) -> Result<()> {
        self.flush()?;
        let mut state = self.inner.lock_state();
        while state.compacting {
            state = self.inner.wait_progress(state);
        }
        state.compacting = true;
        state.manual_compaction = true;
        let version = Arc::clone(&state.version);
        drop(state);
        let mut inputs = Vec::new();
        let mut output_level = 1;
        for (level, files) in version.levels.iter().enumerate() {
            for file in files {
                inputs.push((level, Arc::clone(file)));
                output_level = output_level.max(level);
            }
        }
        let result = if inputs.is_empty() {
            Ok(())
        } else {
            self.inner.run_compaction(inputs, output_level, true)
        };
        let mut state = self.inner.lock_state();
        state.compacting = false;
        state.manual_compaction = false;
        drop(state);
        self.inner.progress.notify_all();
        self.inner.work.notify_all();
        result
    }

    /// Current figures.
    pub fn stats(&self) -> DbStats {
        let state = self.inner.lock_state();
        let mut stats = state.stats.clone();
        stats.level_tables = state.version.levels.iter().map(Vec::len).collect();
        stats.level_bytes = (0..state.version.levels.len())
            .map(|level| state.version.level_bytes(level))
            .collect();
        stats.memtable_bytes = state.mem.size_bytes();
        stats
    }

    /// Total bytes of live tables.
    pub fn size_on_disk_bytes(&self) -> u64 {
        let state = self.inner.lock_state();
        (0..state.version.levels.len())
            .map(|level| state.version.level_bytes(level))
            .sum()
    }

    /// Stops the background threads and syncs the log. Also done on drop.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    /// Test hook: stops as a machine crash would — the background threads
    /// end, and every log not yet flushed to a table loses everything after
    /// what was fsynced of it.
    #[cfg(test)]
    pub(crate) fn simulate_machine_crash(self) {
        self.stop_threads();
        let writer = self.inner.lock_writer();
        let sync = self
            .inner
            .sync
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut unsynced: Vec<(u64, u64)> = self
            .inner
            .lock_state()
            .imms
            .iter()
            .map(|frozen| frozen.wal_number)
            .chain([writer.wal_number])
            .filter(|number| *number >= sync.fully_synced_below)
            .map(|number| (number, sync.durable.get(&number).copied().unwrap_or(0)))
            .collect();
        unsynced.retain(|(_, durable)| *durable != u64::MAX);
        drop(sync);
        drop(writer);
        // Mark as read-only so drop does not sync what the "machine" lost.
        self.inner.read_only.store(true, AtomicOrdering::Release);
        for (number, kept) in unsynced {
            let path = self.inner.path.join(file_name(number, "log"));
            let file = File::options()
                .write(true)
                .open(&path)
                .expect("the test's log exists");
            file.set_len(kept).expect("truncating the test's log");
            file.set_len(kept + (1 << 20))
                .expect("re-extending the test's log");
        }
        drop(self);
    }

    /// Test hook: while held, the flush thread flushes nothing (it still
    /// prepares spare logs).
    #[cfg(test)]
    pub(crate) fn hold_flushes(&self, held: bool) {
        self.inner.hold_flush.store(held, AtomicOrdering::Release);
        self.inner.work.notify_all();
    }

    /// Ends the background threads and waits for them.
    fn stop_threads(&self) {
        {
            let mut state = self.inner.lock_state();
            state.shutting_down = true;
        }
        self.inner.work.notify_all();
        self.inner.progress.notify_all();
        let threads = std::mem::take(
            &mut *self
                .threads
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        for thread in threads {
            let _ = thread.join();
        }
    }

    fn shutdown(&self) -> Result<()> {
        self.stop_threads();
        if self.inner.read_only.load(AtomicOrdering::Acquire) {
            return Ok(());
        }
        let mut writer = self.inner.lock_writer();
        writer.wal.sync()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// A cursor over live keys in order, at one sequence number.
pub struct DbIterator {
    merged: MergingIterator,
    sequence: u64,
    key: Vec<u8>,
    value: Vec<u8>,
    valid: bool,
}

impl std::fmt::Debug for DbIterator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DbIterator")
            .field("sequence", &self.sequence)
            .finish()
    }
}

impl DbIterator {
    /// Moves to the first live key.
    pub fn seek_to_first(&mut self) -> Result<()> {
        self.merged.seek_to_first()?;
        self.settle(None)
    }

    /// Moves to the first live key `>= key`.
    pub fn seek(&mut self, key: &[u8]) -> Result<()> {
        let target = crate::key::internal_key(key, self.sequence, ValueKind::Value);
        self.merged.seek(&target)?;
        self.settle(None)
    }

    /// Moves to the next live key.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<()> {
        if !self.valid {
            return Ok(());
        }
        let current = std::mem::take(&mut self.key);
        self.settle(Some(&current))
    }

    /// Skips to the newest visible version of the next user key that is live.
    fn settle(&mut self, skip: Option<&[u8]>) -> Result<()> {
        let mut deleted: Option<Vec<u8>> = None;
        while self.merged.valid() {
            let Some(parsed) = parse_internal_key(self.merged.key()) else {
                return Err(Error::corruption(
                    PathBuf::new(),
                    0,
                    "malformed internal key in iteration",
                ));
            };
            // Entries are sorted by user key, then newest first: the first
            // visible entry of a key decides it; the rest of that key is skipped.
            let hidden = parsed.sequence > self.sequence
                || skip == Some(parsed.user_key)
                || deleted.as_deref() == Some(parsed.user_key);
            if !hidden {
                if parsed.kind == ValueKind::Deletion {
                    deleted = Some(parsed.user_key.to_vec());
                } else {
                    self.key = parsed.user_key.to_vec();
                    self.value = self.merged.value().to_vec();
                    self.valid = true;
                    return Ok(());
                }
            }
            self.merged.next()?;
        }
        self.valid = false;
        Ok(())
    }

    /// True when on a key.
    pub fn valid(&self) -> bool {
        self.valid
    }

    /// The current key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The current value.
    pub fn value(&self) -> &[u8] {
        &self.value
    }
}

/// Writes every entry of `source` to table `number`; `None` if there were none.
fn write_table_from(
    directory: &Path,
    number: u64,
    options: &TableOptions,
    mut source: impl InternalIterator,
) -> Result<Option<Arc<TableFile>>> {
    let path = directory.join(file_name(number, "sst"));
    let mut builder = TableBuilder::create(&path, options)?;
    source.seek_to_first()?;
    while source.valid() {
        builder.add(source.key(), source.value())?;
        source.next()?;
    }
    if builder.entries() == 0 {
        drop(builder);
        let _ = std::fs::remove_file(&path);
        return Ok(None);
    }
    let summary = builder.finish()?;
    let table = Table::open(&path)?;
    Ok(Some(Arc::new(TableFile {
        number,
        size_bytes: summary.file_size_bytes,
        smallest: summary.smallest_key,
        largest: summary.largest_key,
        table: Arc::new(table),
    })))
}

impl Inner {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn lock_writer(&self) -> MutexGuard<'_, WriterState> {
        self.writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The writer lock for a write. A writer holds it for a microsecond or
    /// two, so a second writer spins for it a while before it sleeps:
    /// sleeping costs a futex wake-up, and while the sleeper waits to be
    /// scheduled the holder takes the lock again and again (measured with two
    /// writer threads: p99 40 µs and 450k writes/s sleeping at once, 9–16 µs
    /// and 590–740k spinning first).
    fn lock_writer_for_write(&self) -> MutexGuard<'_, WriterState> {
        for _ in 0..WRITER_SPINS {
            match self.writer.try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(poison)) => return poison.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => std::hint::spin_loop(),
            }
        }
        self.lock_writer()
    }

    fn wait_progress<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.progress
            .wait_timeout(guard, Duration::from_millis(100))
            .map(|(guard, _)| guard)
            .unwrap_or_else(|poison| poison.into_inner().0)
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only.load(AtomicOrdering::Acquire) {
            let reason = self
                .lock_state()
                .read_only
                .clone()
                .unwrap_or_else(|| "earlier failure".into());
            return Err(Error::ReadOnly { reason });
        }
        Ok(())
    }

    /// Records a failure that makes the database read-only.
    fn fail(&self, error: &Error) {
        self.read_only.store(true, AtomicOrdering::Release);
        let mut state = self.lock_state();
        if state.read_only.is_none() {
            state.read_only = Some(error.to_string());
        }
        drop(state);
        self.progress.notify_all();
    }

    /// Makes the durable offset of log `wal_number` reach `offset`, sharing
    /// one fsync among every writer waiting at the same time.
    fn group_sync(&self, wal_number: u64, offset: u64, handle: &File) -> Result<()> {
        let mut sync = self
            .sync
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if wal_number < sync.fully_synced_below
            || (sync.synced.0 == wal_number && sync.synced.1 >= offset)
        {
            return Ok(());
        }
        self.check_writable()?;
        // Frozen memtables' logs the flush thread has not synced yet come
        // first: otherwise a machine crash could keep this write and lose
        // an earlier one (a `sync` write after a switch, or an interval
        // sync, under every mode but `Always`).
        let earlier: Vec<(u64, Arc<File>)> = self
            .lock_state()
            .imms
            .iter()
            .filter(|frozen| {
                frozen.wal_number >= sync.fully_synced_below && frozen.wal_number < wal_number
            })
            .map(|frozen| (frozen.wal_number, Arc::clone(&frozen.sync_handle)))
            .collect();
        for (number, earlier_handle) in earlier {
            if let Err(error) = earlier_handle.sync_data() {
                let error = Error::io(self.path.join(file_name(number, "log")), error);
                self.fail(&error);
                return Err(error);
            }
            sync.fully_synced_below = sync.fully_synced_below.max(number + 1);
            sync.record_durable(number, u64::MAX);
        }
        // Everything appended to this log up to now is covered by this fsync.
        let covered = if self.current_wal.load(AtomicOrdering::Acquire) == wal_number {
            self.appended.load(AtomicOrdering::Acquire).max(offset)
        } else {
            offset
        };
        if let Err(error) = handle.sync_data() {
            let error = Error::io(self.path.join(file_name(wal_number, "log")), error);
            self.fail(&error);
            return Err(error);
        }
        if wal_number >= sync.synced.0 {
            sync.synced = (wal_number, covered);
        }
        sync.record_durable(wal_number, covered);
        self.lock_state().stats.wal_syncs += 1;
        Ok(())
    }

    /// Waits while level 0 is full or the memtable is full with a flush
    /// already under way; switches a full memtable.
    fn make_room(&self) -> Result<()> {
        let mut stalled: Option<Instant> = None;
        let mut slowed = false;
        loop {
            let state = self.lock_state();
            if let Some(reason) = &state.read_only {
                return Err(Error::ReadOnly {
                    reason: reason.clone(),
                });
            }
            let level0 = state.version.levels[0].len();
            let memtable_bytes = state.mem.size_bytes();
            if memtable_bytes >= self.options.memtable_size_bytes / 2
                && !self.spare_wanted.swap(true, AtomicOrdering::AcqRel)
            {
                self.work.notify_all();
            }
            let memtable_full = memtable_bytes >= self.options.memtable_size_bytes;
            if level0 >= self.options.level0_stop_trigger
                || (memtable_full
                    && state.imms.len() >= self.options.max_immutable_memtables.max(1))
            {
                stalled.get_or_insert_with(Instant::now);
                self.work.notify_all();
                drop(self.wait_progress(state));
                continue;
            }
            if !slowed && level0 >= self.options.level0_slowdown_trigger {
                // A short delay per write lets compaction catch up smoothly
                // instead of stopping writers at the stop trigger.
                let mut state = state;
                state.stats.write_slowdowns += 1;
                drop(state);
                slowed = true;
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            drop(state);
            if let Some(started) = stalled {
                let mut state = self.lock_state();
                state.stats.write_stalls += 1;
                state.stats.write_stall_micros += started.elapsed().as_micros() as u64;
            }
            if memtable_full {
                self.switch_memtable(false)?;
            }
            return Ok(());
        }
    }

    /// Whether a test holds flushes back ([`Db::hold_flushes`]).
    fn flush_held(&self) -> bool {
        #[cfg(test)]
        return self.hold_flush.load(AtomicOrdering::Acquire);
        #[cfg(not(test))]
        false
    }

    /// Creates a new, empty log and makes its directory entry durable.
    fn create_log(&self) -> Result<SpareLog> {
        let number = {
            let mut state = self.lock_state();
            state.next_file_number += 1;
            state.next_file_number - 1
        };
        let wal_path = self.path.join(file_name(number, "log"));
        let wal = LogWriter::create_mapped(&wal_path, self.options.wal_preallocate_bytes)?;
        let handle = File::open(&wal_path).map_err(|error| Error::io(&wal_path, error))?;
        sync_directory(&self.path)?;
        Ok(SpareLog {
            number,
            wal,
            handle,
        })
    }

    /// Creates the spare log the next memtable switch will take, if none is
    /// ready. A failure here only costs the switch creating its own.
    fn prepare_spare_log(&self) {
        let missing = self
            .spare_wal
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .is_none();
        if !missing {
            return;
        }
        // Zeros written ahead turn the allocated blocks into written ones:
        // appends then change no file-system metadata, and syncing the log
        // later commits no extent conversions that a writer's page faults
        // would wait behind (measured: 3-10 ms write stalls without this).
        let prepared = self.create_log().and_then(|mut spare| {
            spare.wal.zero_fill()?;
            Ok(spare)
        });
        match prepared {
            Ok(spare) => {
                *self
                    .spare_wal
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner()) = Some(spare);
            }
            Err(error) => {
                // Not asked again before the next switch or half-full
                // memtable: a failing disk must not keep this thread busy.
                self.spare_wanted.store(false, AtomicOrdering::Release);
                tracing::warn!(%error, "could not prepare the next log");
            }
        }
    }

    /// Freezes the memtable and starts a new log. With `force`, even if the
    /// memtable is not full (a requested flush).
    fn switch_memtable(&self, force: bool) -> Result<()> {
        let mut writer = self.lock_writer();
        let mut state = self.lock_state();
        loop {
            if state.read_only.is_some() {
                drop(state);
                return self.check_writable();
            }
            // Looked at before waiting: when two writers find the memtable
            // full at once, the second one gets here after the first has
            // switched it, and must not wait for a flush, holding the writer
            // lock, for nothing (it did: every writer stopped for the whole
            // flush, 50–190 ms, in two-thread fills).
            if state.mem.is_empty()
                || (!force && state.mem.size_bytes() < self.options.memtable_size_bytes)
            {
                return Ok(());
            }
            if state.imms.len() < self.options.max_immutable_memtables.max(1) {
                break;
            }
            self.work.notify_all();
            state = self.wait_progress(state);
        }
        drop(state);
        let spare = self
            .spare_wal
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        // Logs are replayed from the oldest needed one by number, so a new
        // log must be numbered above the current one; a spare created while
        // an earlier switch made its own log is stale.
        let spare = match spare {
            Some(stale) if stale.number < writer.wal_number => {
                let _ = std::fs::remove_file(stale.wal.path());
                None
            }
            spare => spare,
        };
        // The flush thread prepares the next spare right away, before it
        // flushes the memtable frozen here.
        self.spare_wanted.store(true, AtomicOrdering::Release);
        let (number, wal, handle) = match spare.map_or_else(|| self.create_log(), Ok) {
            Ok(spare) => (spare.number, spare.wal, spare.handle),
            Err(error) => {
                self.fail(&error);
                return Err(error);
            }
        };
        self.work.notify_all();
        // The old log must be durable before its memtable's table replaces
        // it. Under `Always` it already is but for writes in flight, so the
        // fsync is cheap and done here; otherwise the flush thread does it
        // first thing, keeping a long fsync off the write path.
        let always = self.options.sync_mode == SyncMode::Always;
        if always {
            if let Err(error) = writer.wal.sync() {
                self.fail(&error);
                return Err(error);
            }
            let mut sync = self
                .sync
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            sync.fully_synced_below = number;
            sync.record_durable(writer.wal_number, u64::MAX);
        }
        let old_number = writer.wal_number;
        let old_wal = std::mem::replace(&mut writer.wal, wal);
        writer.wal_number = number;
        let old_sync_handle = std::mem::replace(&mut writer.wal_sync_handle, Arc::new(handle));
        self.appended.store(0, AtomicOrdering::Release);
        self.current_wal.store(number, AtomicOrdering::Release);
        let mut state = self.lock_state();
        let old_wal = (!always).then_some(old_wal);
        let frozen = std::mem::replace(&mut state.mem, Arc::new(Memtable::new()));
        state.imms.push_back(Frozen {
            table: frozen,
            wal_number: old_number,
            wal: old_wal,
            sync_handle: old_sync_handle,
        });
        state.mem_wal_number = number;
        drop(state);
        drop(writer);
        self.work.notify_all();
        Ok(())
    }

    /// Appends an edit to the manifest (fsynced) and installs the new
    /// version; returns the state lock taken to install it. `log_number`
    /// moves the oldest needed log forward, or keeps it with `None`. The
    /// fsync runs under the manifest lock only, not the state lock.
    fn log_and_apply(
        &self,
        deleted: &[(usize, u64)],
        added: &[(usize, Arc<TableFile>)],
        log_number: Option<u64>,
    ) -> Result<MutexGuard<'_, State>> {
        let mut manifest = self
            .manifest
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let (next_file_number, log_number, last_flushed_sequence) = {
            let state = self.lock_state();
            (
                state.next_file_number,
                log_number.unwrap_or(state.log_number),
                state.last_flushed_sequence,
            )
        };
        let edit = VersionEdit {
            next_file_number,
            last_sequence: self
                .visible_sequence
                .load(AtomicOrdering::Acquire)
                .max(last_flushed_sequence),
            log_number,
            deleted: deleted
                .iter()
                .map(|(level, number)| (*level as u32, *number))
                .collect(),
            added: added
                .iter()
                .map(|(level, file)| {
                    (
                        *level as u32,
                        file.number,
                        file.size_bytes,
                        file.smallest.clone(),
                        file.largest.clone(),
                    )
                })
                .collect(),
        };
        manifest.append(&edit.encode())?;
        manifest.sync()?;
        let mut state = self.lock_state();
        state.version = Arc::new(state.version.apply(deleted, added));
        state.log_number = log_number;
        Ok(state)
    }

    fn flush_immutable(&self) -> Result<()> {
        let (imm, number, old_wal, old_wal_number) = {
            let mut state = self.lock_state();
            let number = state.next_file_number;
            let Some(oldest) = state.imms.front_mut() else {
                return Ok(());
            };
            let taken = (
                Arc::clone(&oldest.table),
                number,
                oldest.wal.take(),
                oldest.wal_number,
            );
            state.next_file_number += 1;
            taken
        };
        if let Some(mut old_wal) = old_wal {
            old_wal.unmap();
            old_wal.sync()?;
            let mut sync = self
                .sync
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            sync.fully_synced_below = sync.fully_synced_below.max(old_wal_number + 1);
            sync.record_durable(old_wal_number, u64::MAX);
        }
        let file = write_table_from(&self.path, number, &self.table_options, imm.iter())?;
        sync_directory(&self.path)?;
        let added: Vec<(usize, Arc<TableFile>)> = file.into_iter().map(|file| (0, file)).collect();
        // The oldest log still needed is the next frozen memtable's, or the
        // current one's. Read now, it can only be older than the truth when
        // the edit lands (a switch in between freezes the current log).
        let log_number = {
            let state = self.lock_state();
            state
                .imms
                .get(1)
                .map_or(state.mem_wal_number, |next| next.wal_number)
        };
        let old_log = old_wal_number;
        // The table is in the version before its memtable leaves: a reader
        // may see both for a moment, never neither.
        let mut state = self.log_and_apply(&[], &added, Some(log_number))?;
        state.imms.pop_front();
        state.stats.flushes += 1;
        drop(state);
        let _ = std::fs::remove_file(self.path.join(file_name(old_log, "log")));
        self.progress.notify_all();
        self.work.notify_all();
        Ok(())
    }

    fn level_target_bytes(&self, level: usize) -> u64 {
        let mut target = self.options.level1_size_bytes;
        for _ in 1..level {
            target = target.saturating_mul(self.options.level_size_multiplier);
        }
        target
    }

    /// Picks the next compaction: (inputs with their levels, output level).
    fn pick_compaction(&self, state: &mut State) -> Option<(Vec<LeveledFile>, usize)> {
        let version = Arc::clone(&state.version);
        let last = version.levels.len() - 1;
        let (level, seeds): (usize, Vec<Arc<TableFile>>) =
            if version.levels[0].len() >= self.options.level0_compaction_trigger {
                (0, version.levels[0].clone())
            } else {
                let mut best: Option<(f64, usize)> = None;
                for level in 1..last {
                    let score =
                        version.level_bytes(level) as f64 / self.level_target_bytes(level) as f64;
                    if score > 1.0 && best.is_none_or(|(top, _)| score > top) {
                        best = Some((score, level));
                    }
                }
                let (_, level) = best?;
                let pointer = &state.compact_pointer[level];
                let file = version.levels[level]
                    .iter()
                    .find(|file| compare_internal_keys(&file.largest, pointer) == Ordering::Greater)
                    .or_else(|| version.levels[level].first())?;
                (level, vec![Arc::clone(file)])
            };
        let start = seeds
            .iter()
            .map(|file| user_key(&file.smallest))
            .min()?
            .to_vec();
        let end = seeds
            .iter()
            .map(|file| user_key(&file.largest))
            .max()?
            .to_vec();
        let output = level + 1;
        let mut inputs: Vec<(usize, Arc<TableFile>)> =
            seeds.into_iter().map(|file| (level, file)).collect();
        for file in &version.levels[output] {
            if file.overlaps(&start, &end) {
                inputs.push((output, Arc::clone(file)));
            }
        }
        if let Some((_, last_input)) = inputs
            .iter()
            .rfind(|(input_level, _)| *input_level == level)
        {
            state.compact_pointer[level] = last_input.largest.clone();
        }
        Some((inputs, output))
    }

    /// Merges `inputs` into new tables at `output_level`.
    fn run_compaction(
        &self,
        inputs: Vec<(usize, Arc<TableFile>)>,
        output_level: usize,
        everything: bool,
    ) -> Result<()> {
        let (smallest_snapshot, bottom) = {
            let state = self.lock_state();
            let smallest_snapshot = state
                .snapshots
                .keys()
                .next()
                .copied()
                .unwrap_or_else(|| self.visible_sequence.load(AtomicOrdering::Acquire));
            let start = inputs
                .iter()
                .map(|(_, file)| user_key(&file.smallest))
                .min()
                .unwrap_or(&[])
                .to_vec();
            let end = inputs
                .iter()
                .map(|(_, file)| user_key(&file.largest))
                .max()
                .unwrap_or(&[])
                .to_vec();
            let bottom = everything
                || state.version.levels[output_level + 1..]
                    .iter()
                    .flatten()
                    .all(|file| !file.overlaps(&start, &end));
            (smallest_snapshot, bottom)
        };
        // Sources in recency order: level 0 newest first, then deeper levels.
        let mut ordered = inputs.clone();
        ordered.sort_by(|(level_a, a), (level_b, b)| {
            level_a.cmp(level_b).then(b.number.cmp(&a.number))
        });
        let sources: Vec<Source> = ordered
            .iter()
            .map(|(_, file)| Box::new(file.table.iter()) as Source)
            .collect();
        let mut merged = MergingIterator::new(sources);
        merged.seek_to_first()?;

        let mut outputs: Vec<Arc<TableFile>> = Vec::new();
        let mut builder: Option<(u64, TableBuilder)> = None;
        let mut current_user_key: Option<Vec<u8>> = None;
        let mut last_sequence_for_key = SEQUENCE_MAX;
        let mut bytes_written = 0u64;
        let mut zeroed = Vec::new();
        while merged.valid() {
            let Some(parsed) = parse_internal_key(merged.key()) else {
                return Err(Error::corruption(
                    &self.path,
                    0,
                    "malformed internal key during compaction",
                ));
            };
            let new_key = current_user_key.as_deref() != Some(parsed.user_key);
            if new_key {
                // Tables may only be cut between user keys.
                if let Some((_, open)) = &builder
                    && open.estimated_size_bytes() >= self.options.table_size_bytes
                    && let Some((number, finished)) = builder.take()
                {
                    outputs.extend(self.finish_output(number, finished)?);
                }
                current_user_key = Some(parsed.user_key.to_vec());
                last_sequence_for_key = SEQUENCE_MAX;
            }
            let drop_entry = if last_sequence_for_key <= smallest_snapshot {
                // A newer version of this key is visible to every snapshot.
                true
            } else {
                parsed.kind == ValueKind::Deletion && parsed.sequence <= smallest_snapshot && bottom
            };
            last_sequence_for_key = parsed.sequence;
            if !drop_entry {
                if builder.is_none() {
                    let number = {
                        let mut state = self.lock_state();
                        let number = state.next_file_number;
                        state.next_file_number += 1;
                        number
                    };
                    let path = self.path.join(file_name(number, "sst"));
                    builder = Some((number, TableBuilder::create(&path, &self.table_options)?));
                }
                if let Some((_, open)) = builder.as_mut() {
                    if bottom && parsed.sequence <= smallest_snapshot && parsed.sequence > 0 {
                        // The only version left, visible to every snapshot:
                        // its sequence no longer matters, and zeros
                        // compress (as RocksDB does at the bottom level).
                        zeroed.clear();
                        encode_internal_key(&mut zeroed, parsed.user_key, 0, parsed.kind);
                        open.add(&zeroed, merged.value())?;
                    } else {
                        open.add(merged.key(), merged.value())?;
                    }
                }
            }
            merged.next()?;
        }
        if let Some((number, finished)) = builder.take() {
            outputs.extend(self.finish_output(number, finished)?);
        }
        sync_directory(&self.path)?;
        for output in &outputs {
            bytes_written += output.size_bytes;
        }
        let deleted: Vec<(usize, u64)> = inputs
            .iter()
            .map(|(level, file)| (*level, file.number))
            .collect();
        let added: Vec<(usize, Arc<TableFile>)> = outputs
            .into_iter()
            .map(|file| (output_level, file))
            .collect();
        let mut state = self.log_and_apply(&deleted, &added, None)?;
        state.stats.compactions += 1;
        state.stats.compaction_bytes_written += bytes_written;
        drop(state);
        // Readers holding a table keep its mapping; unlinking is safe.
        for (_, file) in &inputs {
            let _ = std::fs::remove_file(self.path.join(file_name(file.number, "sst")));
        }
        self.progress.notify_all();
        Ok(())
    }

    fn finish_output(&self, number: u64, builder: TableBuilder) -> Result<Option<Arc<TableFile>>> {
        let summary = builder.finish()?;
        let path = self.path.join(file_name(number, "sst"));
        let table = Table::open(&path)?;
        Ok(Some(Arc::new(TableFile {
            number,
            size_bytes: summary.file_size_bytes,
            smallest: summary.smallest_key,
            largest: summary.largest_key,
            table: Arc::new(table),
        })))
    }
}

/// How many times a writer tries the writer lock before sleeping on it
/// (a few tens of microseconds of `spin_loop`).
const WRITER_SPINS: usize = 4000;

/// Lowers the calling thread's CPU priority (nice 10), so that a writer
/// thread is not preempted by flushes and compactions sharing its core:
/// foreground latency first, as RocksDB's lowered background pools do. The
/// work itself is never starved for long: a writer that waits on it sleeps
/// and leaves the core to it.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_thread_priority() {
    // SAFETY: setpriority takes plain integers; on Linux, PRIO_PROCESS with
    // `who` 0 applies to the calling thread only.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    if result != 0 {
        tracing::debug!("could not lower a background thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_thread_priority() {}

fn flush_thread(inner: Arc<Inner>) {
    lower_thread_priority();
    loop {
        {
            let spare_needed = || {
                inner.spare_wanted.load(AtomicOrdering::Acquire)
                    && inner
                        .spare_wal
                        .lock()
                        .unwrap_or_else(|poison| poison.into_inner())
                        .is_none()
            };
            let mut state = inner.lock_state();
            while (state.imms.is_empty() || inner.flush_held())
                && !state.shutting_down
                && !spare_needed()
            {
                state = inner
                    .work
                    .wait(state)
                    .unwrap_or_else(|poison| poison.into_inner());
            }
            if state.read_only.is_some() {
                return;
            }
            // The next switch's log comes before a flush: a switch that
            // finds no spare creates its log itself, and the writer then
            // fills blocks the file system has not initialised, waiting on
            // its journal (measured with logs never zero-filled: single
            // writes of 23 ms), while a flush a little later costs nothing
            // as long as the frozen memtables fit in
            // `max_immutable_memtables`.
            if !state.shutting_down && spare_needed() {
                drop(state);
                inner.prepare_spare_log();
                continue;
            }
            if state.imms.is_empty() || inner.flush_held() {
                if state.shutting_down {
                    return;
                }
                continue;
            }
        }
        if let Err(error) = inner.flush_immutable() {
            tracing::error!(%error, "flush failed; the database is read-only until reopened");
            inner.fail(&error);
            return;
        }
    }
}

fn compaction_thread(inner: Arc<Inner>) {
    lower_thread_priority();
    loop {
        let picked = {
            let mut state = inner.lock_state();
            loop {
                if state.shutting_down || state.read_only.is_some() {
                    return;
                }
                if !state.compacting
                    && let Some(picked) = inner.pick_compaction(&mut state)
                {
                    state.compacting = true;
                    break picked;
                }
                state = inner
                    .work
                    .wait_timeout(state, Duration::from_millis(200))
                    .map(|(guard, _)| guard)
                    .unwrap_or_else(|poison| poison.into_inner().0);
            }
        };
        let (inputs, output_level) = picked;
        let result = inner.run_compaction(inputs, output_level, false);
        inner.lock_state().compacting = false;
        inner.progress.notify_all();
        if let Err(error) = result {
            tracing::error!(%error, "compaction failed; the database is read-only until reopened");
            inner.fail(&error);
            return;
        }
    }
}

fn interval_sync_thread(inner: Arc<Inner>) {
    let SyncMode::Interval(interval) = inner.options.sync_mode else {
        return;
    };
    loop {
        {
            let state = inner.lock_state();
            if state.shutting_down || state.read_only.is_some() {
                return;
            }
            let _ = inner
                .work
                .wait_timeout(state, interval)
                .unwrap_or_else(|poison| poison.into_inner());
        }
        let (number, handle) = {
            let writer = inner.lock_writer();
            (writer.wal_number, Arc::clone(&writer.wal_sync_handle))
        };
        let offset = inner.appended.load(AtomicOrdering::Acquire);
        if inner.group_sync(number, offset, &handle).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
