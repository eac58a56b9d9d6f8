//! The memtable: the newest writes, in memory, sorted by internal key, until
//! a flush turns them into an SSTable. Every write reaches the write-ahead
//! log before it reaches a memtable, so a memtable is always recoverable.
//!
//! A skip list under a reader-writer lock: writers insert a whole group
//! under one write lock; readers and iterators take the read lock briefly,
//! iterators copying a batch of entries per lookup.
//!
//! Each node — its tower of links, internal key and value — is one
//! contiguous run of bytes in a chunk of 1 MiB, so a memtable is a few large
//! allocations, and a search step reads one place. The `BTreeSet` this
//! replaced allocated its nodes one by one from the writer's heap: the heap
//! grew a page at a time, each growth an `mprotect` waiting on the process's
//! memory-map lock, and the flush thread freeing a memtable's nodes
//! contended for the writer's allocator (measured in `docs/bench.md`).
//!
//! Invariant: nodes are never removed or changed but for their links, so a
//! node's address stays valid and an iterator continues from the last node
//! it copied.

use crate::Result;
use crate::iterator::InternalIterator;
use crate::key::{TRAILER_BYTES, ValueKind, compare_internal_keys, encode_internal_key};
use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, RwLock};

/// Overhead counted per entry on top of key and value bytes (a node takes
/// about 30 bytes more: its links, lengths and trailer; the rest allows for
/// the unused end of chunks).
const ENTRY_OVERHEAD_BYTES: usize = 48;

/// Entries an iterator copies out per lookup.
const ITERATOR_BATCH: usize = 64;

/// Tallest tower of a node; with a branching of 4, ample for the entries
/// of any memtable that fits in memory.
const HEIGHT_MAX: usize = 12;

/// Bytes of a chunk of nodes (larger for a node that does not fit).
const CHUNK_BYTES: usize = 1 << 20;

/// "No node": the end of a level, or the head as a predecessor.
const NIL: u64 = u64::MAX;

/// Bytes of a link.
const LINK_BYTES: usize = 8;

/// A node's layout from its address: `height (u8) ‖ links (height × u64 LE)
/// ‖ internal key length (u32 LE) ‖ value length (u32 LE) ‖ internal key ‖
/// value`. An address is `chunk << 32 | offset`.
struct Layout;

impl Layout {
    fn size(height: usize, internal_key: usize, value: usize) -> usize {
        1 + height * LINK_BYTES + 8 + internal_key + value
    }
}

/// The skip list.
#[derive(Debug)]
struct Entries {
    /// Chunks of nodes, each allocated at its full capacity and never
    /// grown, so adding a node never moves the others.
    chunks: Vec<Vec<u8>>,
    /// The head's links, one per level.
    head: [u64; HEIGHT_MAX],
    /// Levels in use.
    height: usize,
    len: usize,
    /// State of the generator of tower heights (xorshift).
    random: u64,
}

impl Default for Entries {
    fn default() -> Entries {
        Entries {
            chunks: Vec::new(),
            head: [NIL; HEIGHT_MAX],
            height: 1,
            len: 0,
            random: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

/// Reads a little-endian integer of `N` bytes at `at` (0 past the end,
/// which the layout never reaches).
fn read_le<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(field) = bytes.get(at..at + N) {
        out.copy_from_slice(field);
    }
    out
}

impl Entries {
    /// The chunk holding `node` and the node's offset in it.
    fn place(&self, node: u64) -> (&[u8], usize) {
        let chunk = self
            .chunks
            .get((node >> 32) as usize)
            .map_or(&[][..], Vec::as_slice);
        (chunk, (node & 0xffff_ffff) as usize)
    }

    /// The next node after `from` (the head for [`NIL`]) on `level`.
    fn next(&self, from: u64, level: usize) -> u64 {
        if from == NIL {
            return self.head[level];
        }
        let (chunk, offset) = self.place(from);
        u64::from_le_bytes(read_le(chunk, offset + 1 + level * LINK_BYTES))
    }

    fn set_next(&mut self, from: u64, level: usize, to: u64) {
        if from == NIL {
            self.head[level] = to;
            return;
        }
        let offset = (from & 0xffff_ffff) as usize + 1 + level * LINK_BYTES;
        if let Some(link) = self
            .chunks
            .get_mut((from >> 32) as usize)
            .and_then(|chunk| chunk.get_mut(offset..offset + LINK_BYTES))
        {
            link.copy_from_slice(&to.to_le_bytes());
        }
    }

    /// The internal key and value of `node`.
    fn entry(&self, node: u64) -> (&[u8], &[u8]) {
        let (chunk, offset) = self.place(node);
        let height = chunk.get(offset).copied().unwrap_or(0) as usize;
        let lengths = offset + 1 + height * LINK_BYTES;
        let key_len = u32::from_le_bytes(read_le(chunk, lengths)) as usize;
        let value_len = u32::from_le_bytes(read_le(chunk, lengths + 4)) as usize;
        let key_start = lengths + 8;
        let value_start = key_start + key_len;
        (
            chunk.get(key_start..value_start).unwrap_or(&[]),
            chunk
                .get(value_start..value_start + value_len)
                .unwrap_or(&[]),
        )
    }

    /// The first node whose internal key is `>= target`, or [`NIL`]; with
    /// `previous`, also the last node before it on every level.
    fn seek(&self, target: &[u8], mut previous: Option<&mut [u64; HEIGHT_MAX]>) -> u64 {
        let mut at = NIL;
        let mut level = self.height - 1;
        loop {
            let next = self.next(at, level);
            if next != NIL && compare_internal_keys(self.entry(next).0, target) == Ordering::Less {
                at = next;
                continue;
            }
            if let Some(previous) = previous.as_deref_mut() {
                previous[level] = at;
            }
            if level == 0 {
                return next;
            }
            level -= 1;
        }
    }

    /// A tower height: 1, and one more with probability 1/4 each time.
    fn random_height(&mut self) -> usize {
        let mut height = 1;
        while height < HEIGHT_MAX {
            self.random ^= self.random << 13;
            self.random ^= self.random >> 7;
            self.random ^= self.random << 17;
            if self.random & 3 != 0 {
                break;
            }
            height += 1;
        }
        height
    }

    /// Adds a node; `scratch` holds the internal key while it is searched.
    fn insert(
        &mut self,
        scratch: &mut Vec<u8>,
        user_key: &[u8],
        sequence: u64,
        kind: ValueKind,
        value: &[u8],
    ) {
        scratch.clear();
        encode_internal_key(scratch, user_key, sequence, kind);
        let mut previous = [NIL; HEIGHT_MAX];
        self.seek(scratch, Some(&mut previous));
        let height = self.random_height();
        // Levels above the current height start at the head (NIL already).
        self.height = self.height.max(height);
        let size = Layout::size(height, scratch.len(), value.len());
        if self
            .chunks
            .last()
            .is_none_or(|chunk| chunk.capacity() - chunk.len() < size)
        {
            self.chunks.push(Vec::with_capacity(CHUNK_BYTES.max(size)));
        }
        let index = self.chunks.len() - 1;
        let Some(chunk) = self.chunks.last_mut() else {
            return;
        };
        let node = (index as u64) << 32 | chunk.len() as u64;
        chunk.push(height as u8);
        for (level, before) in previous.iter().enumerate().take(height) {
            let after = if *before == NIL {
                self.head[level]
            } else {
                NIL // filled in below, once the chunk is not borrowed
            };
            chunk.extend_from_slice(&after.to_le_bytes());
        }
        chunk.extend_from_slice(&(scratch.len() as u32).to_le_bytes());
        chunk.extend_from_slice(&(value.len() as u32).to_le_bytes());
        chunk.extend_from_slice(scratch);
        chunk.extend_from_slice(value);
        for (level, before) in previous.iter().enumerate().take(height) {
            if *before != NIL {
                let after = self.next(*before, level);
                self.set_next(node, level, after);
            }
            self.set_next(*before, level, node);
        }
        self.len += 1;
    }
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
        let mut scratch = Vec::new();
        let mut guard = self
            .set
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        for (sequence, kind, key, value) in entries {
            added += key.len() + value.len() + ENTRY_OVERHEAD_BYTES;
            guard.insert(&mut scratch, key, sequence, kind, value);
        }
        drop(guard);
        self.size_bytes.fetch_add(added, AtomicOrdering::Relaxed);
    }

    /// The newest version of `user_key` with sequence `<= sequence_max`.
    pub fn get(&self, user_key: &[u8], sequence_max: u64) -> Option<(ValueKind, Vec<u8>)> {
        let mut target = Vec::with_capacity(user_key.len() + TRAILER_BYTES);
        encode_internal_key(&mut target, user_key, sequence_max, ValueKind::Value);
        let entries = self.set.read().unwrap_or_else(|poison| poison.into_inner());
        let found = entries.seek(&target, None);
        if found == NIL {
            return None;
        }
        let (key, value) = entries.entry(found);
        let (found_user_key, trailer) = key.split_at(key.len().checked_sub(TRAILER_BYTES)?);
        if found_user_key != user_key {
            return None;
        }
        let kind = ValueKind::from_u8(*trailer.last()?)?;
        Some((kind, value.to_vec()))
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
            .len
    }

    /// True when nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A cursor over the entries.
    pub fn iter(self: &Arc<Memtable>) -> MemtableIterator {
        MemtableIterator {
            table: Arc::clone(self),
            bytes: Vec::new(),
            batch: VecDeque::new(),
            last: NIL,
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
    /// The copied entries' keys and values, back to back.
    bytes: Vec<u8>,
    /// Per copied entry: where its key starts in `bytes`, and the lengths of
    /// its key and value; the current entry first.
    batch: VecDeque<(usize, usize, usize)>,
    /// The node of the last entry of `batch`: the next batch starts after it.
    last: u64,
    /// No entries after the last of `batch`.
    exhausted: bool,
}

/// Where a batch starts.
enum From<'a> {
    First,
    AtOrAfter(&'a [u8]),
    After(u64),
}

impl MemtableIterator {
    fn fill(&mut self, from: From<'_>) {
        let entries = self
            .table
            .set
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut at = match from {
            From::First => entries.next(NIL, 0),
            From::AtOrAfter(target) => entries.seek(target, None),
            From::After(node) => entries.next(node, 0),
        };
        self.bytes.clear();
        self.batch.clear();
        while at != NIL && self.batch.len() < ITERATOR_BATCH {
            let (key, value) = entries.entry(at);
            self.batch
                .push_back((self.bytes.len(), key.len(), value.len()));
            self.bytes.extend_from_slice(key);
            self.bytes.extend_from_slice(value);
            self.last = at;
            at = entries.next(at, 0);
        }
        self.exhausted = at == NIL;
    }

    fn current(&self) -> (&[u8], &[u8]) {
        let Some(&(start, key_len, value_len)) = self.batch.front() else {
            return (&[], &[]);
        };
        let key_end = start + key_len;
        (
            self.bytes.get(start..key_end).unwrap_or(&[]),
            self.bytes.get(key_end..key_end + value_len).unwrap_or(&[]),
        )
    }
}

impl InternalIterator for MemtableIterator {
    fn valid(&self) -> bool {
        !self.batch.is_empty()
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.fill(From::First);
        Ok(())
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        self.fill(From::AtOrAfter(target));
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        self.batch.pop_front();
        if self.batch.is_empty() && !self.exhausted {
            self.fill(From::After(self.last));
        }
        Ok(())
    }

    fn key(&self) -> &[u8] {
        self.current().0
    }

    fn value(&self) -> &[u8] {
        self.current().1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{internal_key, parse_internal_key};
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
                vec![0xab; 3 * CHUNK_BYTES / 2]
            } else {
                vec![(sequence % 251) as u8; 120]
            };
            table.insert_all([(sequence, ValueKind::Value, &key[..], &value[..])].into_iter());
            expected.push((internal_key(&key, sequence, ValueKind::Value), value));
        }
        expected.sort_by(|a, b| compare_internal_keys(&a.0, &b.0));
        assert_eq!(table.len(), 30_000);
        assert!(table.set.read().unwrap().chunks.len() > 4);
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
