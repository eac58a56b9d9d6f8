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
use bytes::{Bytes, BytesMut};
use std::cmp::Ordering;
use std::collections::{BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, RwLock};

/// One entry: the internal key (user key ‖ 8-byte trailer) and the value,
/// contiguous in one of the memtable's arena chunks, ordered as
/// [`crate::key::compare_internal_keys`] orders internal keys: user key
/// ascending, then sequence descending.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// `user_key ‖ trailer ‖ value`, a view into an arena chunk.
    bytes: Bytes,
    user_key_len: u32,
}

/// Bytes of one arena chunk: entries are carved out of chunks this large, so
/// that a memtable is a few large allocations, freed at once when it is
/// dropped — not one allocation per entry, whose freeing on the flush thread
/// would contend with writers for the allocator.
const ARENA_CHUNK_BYTES: usize = 1 << 20;

impl Entry {
    fn new(
        arena: &mut BytesMut,
        user_key: &[u8],
        sequence: u64,
        kind: ValueKind,
        value: &[u8],
    ) -> Entry {
        let length = user_key.len() + TRAILER_BYTES + value.len();
        if arena.capacity() - arena.len() < length {
            *arena = BytesMut::with_capacity(ARENA_CHUNK_BYTES.max(length));
        }
        arena.extend_from_slice(user_key);
        arena.extend_from_slice(&((sequence << 8) | kind as u64).to_be_bytes());
        arena.extend_from_slice(value);
        Entry {
            bytes: arena.split().freeze(),
            user_key_len: user_key.len() as u32,
        }
    }

    /// A probe at an internal key (no value).
    fn probe(user_key: &[u8], sequence: u64, kind: ValueKind) -> Entry {
        let mut bytes = Vec::with_capacity(user_key.len() + TRAILER_BYTES);
        encode_internal_key(&mut bytes, user_key, sequence, kind);
        Entry {
            bytes: Bytes::from(bytes),
            user_key_len: user_key.len() as u32,
        }
    }

    /// A probe at an encoded internal key.
    fn probe_encoded(internal_key: &[u8]) -> Entry {
        Entry {
            bytes: Bytes::copy_from_slice(internal_key),
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

/// The entries and the arena chunk being filled.
#[derive(Debug, Default)]
struct Entries {
    set: BTreeSet<Entry>,
    arena: BytesMut,
}

/// A sorted in-memory table of internal keys.
#[derive(Debug, Default)]
pub struct Memtable {
    set: RwLock<Entries>,
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
        let mut added = 0;
        let mut guard = self
            .set
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        let Entries { set, arena } = &mut *guard;
        for (sequence, kind, key, value) in entries {
            added += key.len() + value.len() + ENTRY_OVERHEAD_BYTES;
            set.insert(Entry::new(arena, key, sequence, kind, value));
        }
        drop(guard);
        self.size_bytes.fetch_add(added, AtomicOrdering::Relaxed);
    }

    /// The newest version of `user_key` with sequence `<= sequence_max`.
    pub fn get(&self, user_key: &[u8], sequence_max: u64) -> Option<(ValueKind, Vec<u8>)> {
        let target = Entry::probe(user_key, sequence_max, ValueKind::Value);
        let entries = self.set.read().unwrap_or_else(|poison| poison.into_inner());
        let entry = entries.set.range(target..).next()?;
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
            .set
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
        let entries = self
            .table
            .set
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut range = entries.set.range((bound, Bound::Unbounded));
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
        self.position(Bound::Included(&Entry::probe_encoded(target)));
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
    use crate::key::{compare_internal_keys, internal_key, parse_internal_key};
    use proptest::prelude::*;

    /// Every entry of the table in iteration order, as (internal key, value).
    fn scan(table: &Arc<Memtable>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut iterator = table.iter();
        iterator.seek_to_first().unwrap();
        let mut out = Vec::new();
        while iterator.valid() {
            out.push((iterator.key().to_vec(), iterator.value().to_vec()));
            iterator.next().unwrap();
        }
        out
    }

    #[test]
    fn many_chunks_and_an_entry_larger_than_a_chunk_stay_in_order() {
        let table = Arc::new(Memtable::new());
        let mut expected = Vec::new();
        let mut state = 7u64;
        for sequence in 1..=30_000u64 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let key = format!("{:05}", (state >> 33) % 20_000).into_bytes();
            let value = if sequence == 12_345 {
                vec![0xab; 3 * ARENA_CHUNK_BYTES / 2]
            } else {
                vec![(sequence % 251) as u8; 120]
            };
            table.insert_all([(sequence, ValueKind::Value, &key[..], &value[..])].into_iter());
            expected.push((internal_key(&key, sequence, ValueKind::Value), value));
        }
        expected.sort_by(|a, b| compare_internal_keys(&a.0, &b.0));
        assert_eq!(table.len(), 30_000);
        assert_eq!(scan(&table), expected);
        // A seek lands on the first entry at or after its target.
        let mut iterator = table.iter();
        for (index, (key, _)) in expected.iter().enumerate().step_by(997) {
            iterator.seek(key).unwrap();
            assert_eq!(iterator.key(), &key[..]);
            if let Some((after, _)) = expected.get(index + 1) {
                iterator.next().unwrap();
                assert_eq!(iterator.key(), &after[..]);
            }
        }
    }

    proptest! {
        #[test]
        fn the_table_agrees_with_a_sorted_model(
            writes in prop::collection::vec((0u8..40, any::<bool>(), 0usize..300), 1..400),
            probes in prop::collection::vec((0u8..45, 0u64..450), 1..40),
        ) {
            let table = Arc::new(Memtable::new());
            let mut model: Vec<(Vec<u8>, ValueKind, u64, Vec<u8>)> = Vec::new();
            for (index, (key, delete, value_len)) in writes.iter().enumerate() {
                let key = vec![b'k', *key];
                let sequence = index as u64 + 1;
                let (kind, value) = if *delete {
                    (ValueKind::Deletion, Vec::new())
                } else {
                    (ValueKind::Value, vec![*value_len as u8; *value_len])
                };
                table.insert_all([(sequence, kind, &key[..], &value[..])].into_iter());
                model.push((key, kind, sequence, value));
            }
            let mut sorted: Vec<(Vec<u8>, Vec<u8>)> = model
                .iter()
                .map(|(key, kind, sequence, value)| (internal_key(key, *sequence, *kind), value.clone()))
                .collect();
            sorted.sort_by(|a, b| compare_internal_keys(&a.0, &b.0));
            prop_assert_eq!(scan(&table), sorted);
            for (key, sequence_max) in probes {
                let key = vec![b'k', key];
                let expected = model
                    .iter()
                    .filter(|(k, _, sequence, _)| *k == key && *sequence <= sequence_max)
                    .max_by_key(|(_, _, sequence, _)| *sequence)
                    .map(|(_, kind, _, value)| (*kind, value.clone()));
                prop_assert_eq!(table.get(&key, sequence_max), expected);
            }
        }
    }

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
