//! The memtable: the newest writes, in memory, sorted by internal key, until
//! a flush turns them into an SSTable. Every write reaches the write-ahead
//! log before it reaches a memtable, so a memtable is always recoverable.
//!
//! A `BTreeMap` under a reader-writer lock: writers insert a whole group
//! under one write lock; readers and iterators take the read lock briefly.
//! Invariant: entries are never removed or changed, so an iterator that
//! re-seeks after its last key sees a consistent order.

use crate::Result;
use crate::iterator::InternalIterator;
use crate::key::{ValueKind, compare_internal_keys, internal_key, parse_internal_key};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, RwLock};

/// An internal key ordered by [`compare_internal_keys`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemKey(pub Vec<u8>);

impl Ord for MemKey {
    fn cmp(&self, other: &MemKey) -> Ordering {
        compare_internal_keys(&self.0, &other.0)
    }
}

impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &MemKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Overhead counted per entry on top of key and value bytes.
const ENTRY_OVERHEAD_BYTES: usize = 48;

/// A sorted in-memory table of internal keys.
#[derive(Debug, Default)]
pub struct Memtable {
    map: RwLock<BTreeMap<MemKey, Vec<u8>>>,
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
        let mut map = self
            .map
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        for (sequence, kind, key, value) in entries {
            added += key.len() + value.len() + ENTRY_OVERHEAD_BYTES;
            map.insert(MemKey(internal_key(key, sequence, kind)), value.to_vec());
        }
        self.size_bytes.fetch_add(added, AtomicOrdering::Relaxed);
    }

    /// The newest version of `user_key` with sequence `<= sequence_max`.
    pub fn get(&self, user_key: &[u8], sequence_max: u64) -> Option<(ValueKind, Vec<u8>)> {
        let target = MemKey(internal_key(user_key, sequence_max, ValueKind::Value));
        let map = self.map.read().unwrap_or_else(|poison| poison.into_inner());
        let (key, value) = map.range(target..).next()?;
        let parsed = parse_internal_key(&key.0)?;
        (parsed.user_key == user_key).then(|| (parsed.kind, value.clone()))
    }

    /// Approximate bytes held.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes.load(AtomicOrdering::Relaxed)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map
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
            current: None,
        }
    }
}

/// A cursor over a memtable; each step is one ordered lookup.
#[derive(Debug)]
pub struct MemtableIterator {
    table: Arc<Memtable>,
    current: Option<(Vec<u8>, Vec<u8>)>,
}

impl MemtableIterator {
    fn position(&mut self, bound: Bound<MemKey>) {
        let map = self
            .table
            .map
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        self.current = map
            .range((bound, Bound::Unbounded))
            .next()
            .map(|(key, value)| (key.0.clone(), value.clone()));
    }
}

impl InternalIterator for MemtableIterator {
    fn valid(&self) -> bool {
        self.current.is_some()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.position(Bound::Unbounded);
        Ok(())
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        self.position(Bound::Included(MemKey(target.to_vec())));
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        if let Some((key, _)) = self.current.take() {
            self.position(Bound::Excluded(MemKey(key)));
        }
        Ok(())
    }

    fn key(&self) -> &[u8] {
        self.current.as_ref().map_or(&[], |(key, _)| key)
    }

    fn value(&self) -> &[u8] {
        self.current.as_ref().map_or(&[], |(_, value)| value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
