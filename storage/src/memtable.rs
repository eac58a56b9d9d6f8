//! The memtable: the newest writes, in memory, sorted by internal key, until
//! a flush turns them into an SSTable. Every write reaches the write-ahead
//! log before it reaches a memtable, so a memtable is always recoverable.
//!
//! A `BTreeSet` of entries (internal key and value in one allocation) under
//! a reader-writer lock: writers insert a whole group under one write lock;
//! readers and iterators take the read lock briefly, iterators copying a
//! batch of entries per lookup. Invariant: entries are never removed or
//! changed, so an iterator that re-seeks after its last key sees a
//! consistent order.

use crate::Result;
use crate::iterator::InternalIterator;
use crate::key::{TRAILER_BYTES, ValueKind, encode_internal_key};
use std::cmp::Ordering;
use std::collections::{BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, RwLock};

/// One entry: the internal key (user key ‖ 8-byte trailer) and the value in
/// one allocation, ordered as [`crate::key::compare_internal_keys`] orders
/// internal keys: user key ascending, then sequence descending.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// `user_key ‖ trailer ‖ value`.
    bytes: Box<[u8]>,
    user_key_len: u32,
}

impl Entry {
    fn new(user_key: &[u8], sequence: u64, kind: ValueKind, value: &[u8]) -> Entry {
        let mut bytes = Vec::with_capacity(user_key.len() + TRAILER_BYTES + value.len());
        encode_internal_key(&mut bytes, user_key, sequence, kind);
        bytes.extend_from_slice(value);
        Entry {
            bytes: bytes.into_boxed_slice(),
            user_key_len: user_key.len() as u32,
        }
    }

    /// A probe at an encoded internal key (no value).
    fn probe(internal_key: &[u8]) -> Entry {
        Entry {
            bytes: internal_key.into(),
            user_key_len: internal_key.len().saturating_sub(TRAILER_BYTES) as u32,
        }
    }

    fn user_key(&self) -> &[u8] {
        &self.bytes[..self.user_key_len as usize]
    }

    fn trailer(&self) -> u64 {
        let start = self.user_key_len as usize;
        let mut trailer = [0u8; TRAILER_BYTES];
        if let Some(bytes) = self.bytes.get(start..start + TRAILER_BYTES) {
            trailer.copy_from_slice(bytes);
        }
        u64::from_be_bytes(trailer)
    }

    fn internal_key(&self) -> &[u8] {
        &self.bytes[..(self.user_key_len as usize + TRAILER_BYTES).min(self.bytes.len())]
    }

    fn value(&self) -> &[u8] {
        self.bytes
            .get(self.user_key_len as usize + TRAILER_BYTES..)
            .unwrap_or(&[])
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Entry) -> Ordering {
        self.user_key()
            .cmp(other.user_key())
            .then_with(|| other.trailer().cmp(&self.trailer()))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Overhead counted per entry on top of key and value bytes.
const ENTRY_OVERHEAD_BYTES: usize = 48;

/// Entries an iterator copies out per lookup.
const ITERATOR_BATCH: usize = 64;

/// A sorted in-memory table of internal keys.
#[derive(Debug, Default)]
pub struct Memtable {
    set: RwLock<BTreeSet<Entry>>,
    size_bytes: AtomicUsize,
}

/// One entry to insert.
pub type MemEntry<'a> = (u64, ValueKind, &'a [u8], &'a [u8]);

impl Memtable {
    /// An empty memtable.
    pub fn new() -> Memtable {
        Memtable::default()
    }

    /// Inserts a group of `(sequence, kind, key, value)` entries.
    pub fn insert_all<'a>(&self, entries: impl Iterator<Item = MemEntry<'a>>) {
        // Entries are built before the lock is taken.
        let entries: Vec<Entry> = entries
            .map(|(sequence, kind, key, value)| Entry::new(key, sequence, kind, value))
            .collect();
        let added: usize = entries
            .iter()
            .map(|entry| entry.bytes.len() - TRAILER_BYTES + ENTRY_OVERHEAD_BYTES)
            .sum();
        let mut set = self
            .set
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        for entry in entries {
            set.insert(entry);
        }
        drop(set);
        self.size_bytes.fetch_add(added, AtomicOrdering::Relaxed);
    }

    /// The newest version of `user_key` with sequence `<= sequence_max`.
    pub fn get(&self, user_key: &[u8], sequence_max: u64) -> Option<(ValueKind, Vec<u8>)> {
        let target = Entry::new(user_key, sequence_max, ValueKind::Value, &[]);
        let set = self.set.read().unwrap_or_else(|poison| poison.into_inner());
        let entry = set.range(target..).next()?;
        if entry.user_key() != user_key {
            return None;
        }
        let kind = ValueKind::from_u8((entry.trailer() & 0xff) as u8)?;
        Some((kind, entry.value().to_vec()))
    }

    /// Approximate bytes held.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes.load(AtomicOrdering::Relaxed)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.set
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .len()
    }

    /// True when nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A cursor over the entries.
    pub fn iter(self: &Arc<Memtable>) -> MemtableIterator {
        MemtableIterator {
            table: Arc::clone(self),
            batch: VecDeque::new(),
            exhausted: true,
        }
    }
}

/// A cursor over a memtable. It copies up to [`ITERATOR_BATCH`] entries per
/// lookup; entries are never removed, and one inserted behind the cursor
/// after it passed is not seen, as with a single-entry cursor.
#[derive(Debug)]
pub struct MemtableIterator {
    table: Arc<Memtable>,
    /// The current entry first, then the ones after it.
    batch: VecDeque<Entry>,
    /// No entries after the last of `batch`.
    exhausted: bool,
}

impl MemtableIterator {
    fn fill(&mut self, bound: Bound<&Entry>) {
        let set = self
            .table
            .set
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut range = set.range((bound, Bound::Unbounded));
        self.batch
            .extend(range.by_ref().take(ITERATOR_BATCH).cloned());
        self.exhausted = self.batch.len() < ITERATOR_BATCH;
    }

    fn position(&mut self, bound: Bound<&Entry>) {
        self.batch.clear();
        self.fill(bound);
    }
}

impl InternalIterator for MemtableIterator {
    fn valid(&self) -> bool {
        !self.batch.is_empty()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.position(Bound::Unbounded);
        Ok(())
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        self.position(Bound::Included(&Entry::probe(target)));
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        if self.batch.len() == 1 && !self.exhausted {
            if let Some(last) = self.batch.pop_front() {
                self.fill(Bound::Excluded(&last));
            }
            return Ok(());
        }
        self.batch.pop_front();
        Ok(())
    }

    fn key(&self) -> &[u8] {
        self.batch.front().map_or(&[], Entry::internal_key)
    }

    fn value(&self) -> &[u8] {
        self.batch.front().map_or(&[], Entry::value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::parse_internal_key;

    #[test]
    fn get_sees_the_newest_version_at_or_below_the_snapshot() {
        let table = Memtable::new();
        table.insert_all(
            [
                (1, ValueKind::Value, &b"k"[..], &b"one"[..]),
                (3, ValueKind::Value, b"k", b"three"),
                (5, ValueKind::Deletion, b"k", b""),
                (2, ValueKind::Value, b"j", b"jay"),
            ]
            .into_iter(),
        );
        assert_eq!(table.get(b"k", 0), None);
        assert_eq!(
            table.get(b"k", 2),
            Some((ValueKind::Value, b"one".to_vec()))
        );
        assert_eq!(
            table.get(b"k", 4),
            Some((ValueKind::Value, b"three".to_vec()))
        );
        assert_eq!(table.get(b"k", 9), Some((ValueKind::Deletion, Vec::new())));
        assert_eq!(table.get(b"kk", 9), None);
        let table = Arc::new(table);
        let mut iterator = table.iter();
        iterator.seek_to_first().unwrap();
        let mut keys = Vec::new();
        while iterator.valid() {
            let parsed = parse_internal_key(iterator.key()).unwrap();
            keys.push((parsed.user_key.to_vec(), parsed.sequence));
            iterator.next().unwrap();
        }
        assert_eq!(
            keys,
            vec![
                (b"j".to_vec(), 2),
                (b"k".to_vec(), 5),
                (b"k".to_vec(), 3),
                (b"k".to_vec(), 1)
            ]
        );
    }
}
