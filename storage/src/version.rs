//! Versions and the manifest: which SSTables form the database, level by
//! level, and the log of edits that records every change to that set.
//!
//! A [`Version`] is immutable; a flush or a compaction builds the next one from
//! a [`VersionEdit`] (tables added and deleted, plus the counters), appends the
//! edit to the manifest and fsyncs it before installing the new version.
//! Level 0 holds flushed tables whose key ranges may overlap, newest first;
//! every deeper level holds tables with disjoint ranges sorted by key.
//! `CURRENT` names the live manifest and is switched atomically
//! (write a temporary file, fsync, rename, fsync the directory).

use crate::key::{compare_internal_keys, user_key};
use crate::sstable::Table;
use crate::sstable::block::{get_varint, put_varint};
use std::cmp::Ordering;
use std::sync::Arc;

/// One table in a version.
#[derive(Debug)]
pub struct TableFile {
    /// File number (`NNNNNN.sst`).
    pub number: u64,
    /// File size.
    pub size_bytes: u64,
    /// Smallest internal key.
    pub smallest: Vec<u8>,
    /// Largest internal key.
    pub largest: Vec<u8>,
    /// The open table.
    pub table: Arc<Table>,
}

impl TableFile {
    /// True when the table's user-key range meets `[start, end]`.
    pub fn overlaps(&self, start: &[u8], end: &[u8]) -> bool {
        user_key(&self.largest) >= start && user_key(&self.smallest) <= end
    }
}

/// The set of tables at one moment.
#[derive(Debug, Clone, Default)]
pub struct Version {
    /// Tables per level; level 0 newest first, deeper levels by key.
    pub levels: Vec<Vec<Arc<TableFile>>>,
}

impl Version {
    /// An empty version with `level_count` levels.
    pub fn new(level_count: usize) -> Version {
        Version {
            levels: vec![Vec::new(); level_count],
        }
    }

    /// Total bytes in a level.
    pub fn level_bytes(&self, level: usize) -> u64 {
        self.levels[level].iter().map(|file| file.size_bytes).sum()
    }

    /// Applies an edit whose added tables are already open.
    pub fn apply(&self, deleted: &[(usize, u64)], added: &[(usize, Arc<TableFile>)]) -> Version {
        let mut next = self.clone();
        for (level, number) in deleted {
            next.levels[*level].retain(|file| file.number != *number);
        }
        for (level, file) in added {
            next.levels[*level].push(Arc::clone(file));
        }
        next.levels[0].sort_by_key(|file| std::cmp::Reverse(file.number));
        for level in next.levels.iter_mut().skip(1) {
            level.sort_by(|a, b| compare_internal_keys(&a.smallest, &b.smallest));
        }
        next
    }

    /// The table of a sorted level (≥ 1) whose range may hold `key`.
    pub fn find_in_level(&self, level: usize, key: &[u8]) -> Option<&Arc<TableFile>> {
        let files = &self.levels[level];
        let index =
            files.partition_point(|file| user_key(&file.largest).cmp(key) == Ordering::Less);
        files
            .get(index)
            .filter(|file| user_key(&file.smallest) <= key)
    }
}

/// A table added by an edit: (level, number, size, smallest key, largest key).
pub type AddedTable = (u32, u64, u64, Vec<u8>, Vec<u8>);

/// A change to the set of tables, as logged in the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionEdit {
    /// The next file number to hand out.
    pub next_file_number: u64,
    /// The highest sequence number in any table.
    pub last_sequence: u64,
    /// Write-ahead logs numbered below this are no longer needed.
    pub log_number: u64,
    /// Tables removed: (level, number).
    pub deleted: Vec<(u32, u64)>,
    /// Tables added: (level, number, size, smallest, largest).
    pub added: Vec<AddedTable>,
}

impl VersionEdit {
    /// Encodes the edit as a manifest record payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for value in [self.next_file_number, self.last_sequence, self.log_number] {
            put_varint(&mut out, value);
        }
        put_varint(&mut out, self.deleted.len() as u64);
        for (level, number) in &self.deleted {
            put_varint(&mut out, u64::from(*level));
            put_varint(&mut out, *number);
        }
        put_varint(&mut out, self.added.len() as u64);
        for (level, number, size, smallest, largest) in &self.added {
            put_varint(&mut out, u64::from(*level));
            put_varint(&mut out, *number);
            put_varint(&mut out, *size);
            for key in [smallest, largest] {
                put_varint(&mut out, key.len() as u64);
                out.extend_from_slice(key);
            }
        }
        out
    }

    /// Decodes a manifest record payload; `None` if malformed.
    pub fn decode(bytes: &[u8]) -> Option<VersionEdit> {
        let mut position = 0;
        let mut next = || get_varint(bytes, &mut position);
        let mut edit = VersionEdit {
            next_file_number: next()?,
            last_sequence: next()?,
            log_number: next()?,
            ..VersionEdit::default()
        };
        let deleted = get_varint(bytes, &mut position)?;
        for _ in 0..deleted {
            let level = u32::try_from(get_varint(bytes, &mut position)?).ok()?;
            edit.deleted
                .push((level, get_varint(bytes, &mut position)?));
        }
        let added = get_varint(bytes, &mut position)?;
        for _ in 0..added {
            let level = u32::try_from(get_varint(bytes, &mut position)?).ok()?;
            let number = get_varint(bytes, &mut position)?;
            let size = get_varint(bytes, &mut position)?;
            let mut keys = Vec::with_capacity(2);
            for _ in 0..2 {
                let length = usize::try_from(get_varint(bytes, &mut position)?).ok()?;
                let end = position.checked_add(length)?;
                keys.push(bytes.get(position..end)?.to_vec());
                position = end;
            }
            let largest = keys.pop()?;
            let smallest = keys.pop()?;
            edit.added.push((level, number, size, smallest, largest));
        }
        (position == bytes.len()).then_some(edit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn edits_round_trip_and_garbage_never_panics(
            counters in (any::<u64>(), any::<u64>(), any::<u64>()),
            deleted in proptest::collection::vec((0u32..7, any::<u64>()), 0..5),
            added in proptest::collection::vec((0u32..7, any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..20), proptest::collection::vec(any::<u8>(), 0..20)), 0..5),
            garbage in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let edit = VersionEdit { next_file_number: counters.0, last_sequence: counters.1, log_number: counters.2, deleted, added };
            prop_assert_eq!(VersionEdit::decode(&edit.encode()), Some(edit));
            let _ = VersionEdit::decode(&garbage);
        }
    }
}
