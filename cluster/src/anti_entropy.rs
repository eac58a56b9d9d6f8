//! Anti-entropy (Dynamo §4.7): replicas of a partition compare hash trees
//! and exchange only the keys of the ranges that differ, so that every
//! replica converges, including on keys nobody reads.
//!
//! The tree of a partition is two levels over [`BUCKETS`] leaves. A key
//! falls in the leaf chosen by a hash of the key; a leaf's hash is the XOR of
//! the digests of its keys' stored states, so a write updates it in O(1):
//! XOR out the old state's digest, XOR in the new one. The root is a hash of
//! the leaves. An exchange sends the root; only when roots differ are the
//! leaves sent, and only for differing leaves are key states sent — merged
//! with the same `sync` as read repair.
//!
//! A leaf's keys lie together in the store (the data layout in
//! [`crate::replica`] puts the bucket before the user key), so the states of
//! a few differing leaves are read alone: an exchange whose partition
//! differs in one leaf reads that leaf, not the partition, and an exchange
//! cut short and started again skips the leaves it already made equal.
//!
//! Trees are not persisted: after a start each one is built by scanning its
//! partition in bounded steps, the first time an exchange needs it. While a
//! build is under way, writes to keys the scan has passed update the tree
//! and the others are left to the scan, so the built tree is exact.
//!
//! This module computes; [`crate::node`] decides when to exchange and sends
//! the messages. [`Tracked`] is the store adapter that keeps trees in step
//! with every data write the node makes.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::id::Partition;
use crate::replica::{
    bucket_start, data_key, parse_data_key, partition_end, partition_start, range_key,
};
use crate::store::{Durability, Entries, Store, StoreError};

/// Leaves per partition tree.
pub const BUCKETS: usize = 256;

/// Seed of the bucket hash (distinct from the partitioner's).
const BUCKET_SEED: u64 = 0xae;

/// The leaf a user key falls in.
pub fn bucket_of(key: &[u8]) -> u16 {
    (xxh3_64_with_seed(key, BUCKET_SEED) % BUCKETS as u64) as u16
}

/// Where a user key lies in its partition's stored order: its bucket, then
/// the key. Ranges within a partition (`[from, until)` of an exchange or a
/// pull) run in this order. The empty key, which no user key is, stands
/// for the partition's start.
pub fn position(key: &[u8]) -> (u16, &[u8]) {
    if key.is_empty() {
        (0, key)
    } else {
        (bucket_of(key), key)
    }
}

/// Whether `key` lies in `[from, until)` of its partition's stored order
/// (`until: None`: to the end).
pub fn in_range(key: &[u8], from: &[u8], until: Option<&[u8]>) -> bool {
    let at = position(key);
    at >= position(from) && until.is_none_or(|until| at < position(until))
}

/// Whether a range's end `until` lies after its start `from`: the range
/// moved on.
pub fn is_after(until: &[u8], from: &[u8]) -> bool {
    position(until) > position(from)
}

/// The digest of one stored key state: its key and its encoded bytes.
pub fn digest(key: &[u8], encoded_state: &[u8]) -> u64 {
    let key_hash = xxh3_64(key);
    xxh3_64_with_seed(encoded_state, key_hash)
}

/// The buckets whose leaves differ; empty when either side is malformed.
pub fn differing_buckets(ours: &[u64], theirs: &[u64]) -> Vec<u16> {
    if ours.len() != BUCKETS || theirs.len() != BUCKETS {
        return Vec::new();
    }
    ours.iter()
        .zip(theirs)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(bucket, _)| bucket as u16)
        .collect()
}

/// How far a tree's build has come.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Build {
    /// The scan has covered every user key `<= last` (none yet with `None`).
    Scanning { last: Option<Vec<u8>> },
    /// Exact.
    Built,
}

/// One partition's tree.
#[derive(Debug, Clone)]
pub struct PartitionTree {
    leaves: Vec<u64>,
    build: Build,
}

impl PartitionTree {
    fn new() -> PartitionTree {
        PartitionTree {
            leaves: vec![0; BUCKETS],
            build: Build::Scanning { last: None },
        }
    }

    /// Whether the tree covers every key of the partition.
    pub fn is_built(&self) -> bool {
        self.build == Build::Built
    }

    /// The leaves.
    pub fn leaves(&self) -> &[u64] {
        &self.leaves
    }

    /// A hash of the leaves.
    pub fn root(&self) -> u64 {
        let mut bytes = Vec::with_capacity(BUCKETS * 8);
        for leaf in &self.leaves {
            bytes.extend_from_slice(&leaf.to_le_bytes());
        }
        xxh3_64(&bytes)
    }

    fn covers(&self, key: &[u8]) -> bool {
        match &self.build {
            Build::Built => true,
            Build::Scanning { last } => last
                .as_deref()
                .is_some_and(|last| position(key) <= position(last)),
        }
    }

    fn toggle(&mut self, key: &[u8], encoded_state: &[u8]) {
        self.leaves[bucket_of(key) as usize] ^= digest(key, encoded_state);
    }
}

/// Every partition's tree on this node.
#[derive(Debug, Clone, Default)]
pub struct Trees {
    trees: BTreeMap<Partition, PartitionTree>,
}

impl Trees {
    /// No trees yet; each is built when first needed.
    pub fn new() -> Trees {
        Trees::default()
    }

    /// A data write: `old` and `new` are the [`digest`]s of the states
    /// before and after (`None` for absent).
    pub fn on_write(
        &mut self,
        partition: Partition,
        key: &[u8],
        old: Option<u64>,
        new: Option<u64>,
    ) {
        let Some(tree) = self.trees.get_mut(&partition) else {
            // Not started: the build's scan will see the write.
            return;
        };
        if !tree.covers(key) {
            return;
        }
        let leaf = &mut tree.leaves[bucket_of(key) as usize];
        *leaf ^= old.unwrap_or(0) ^ new.unwrap_or(0);
    }

    /// Starts the partition's tree before its first write, when no build
    /// has: built at once if the partition holds no key yet (one seek,
    /// nothing read), else left for [`Trees::build_step`] to scan. So a
    /// node that starts empty — a new cluster, a wiped replica — keeps
    /// every tree from its first write and never scans to build one.
    fn start(&mut self, partition: Partition, store: &mut impl Store) -> Result<(), StoreError> {
        if self.trees.contains_key(&partition) {
            return Ok(());
        }
        let first = store.scan(&partition_start(partition), &partition_end(partition), 1)?;
        let mut tree = PartitionTree::new();
        if first.is_empty() {
            tree.build = Build::Built;
        }
        self.trees.insert(partition, tree);
        Ok(())
    }

    /// The partition's tree when it is built.
    pub fn built(&self, partition: Partition) -> Option<&PartitionTree> {
        self.trees.get(&partition).filter(|tree| tree.is_built())
    }

    /// Advances the partition's build by at most `keys_max` keys and about
    /// `bytes_max` bytes of states (sized as [`states_in_range`] sizes its
    /// scans): a step is one bounded turn of the node's loop, not 4,096
    /// states of whatever size.
    pub fn build_step(
        &mut self,
        partition: Partition,
        store: &mut impl Store,
        keys_max: usize,
        bytes_max: usize,
    ) -> Result<BuildStep, StoreError> {
        let tree = self
            .trees
            .entry(partition)
            .or_insert_with(PartitionTree::new);
        let mut last = match &tree.build {
            Build::Built => {
                return Ok(BuildStep {
                    done: true,
                    read: 0,
                });
            }
            Build::Scanning { last } => last.clone(),
        };
        // Just after `last`: the same key with a zero byte appended.
        let start = match &last {
            Some(last) => {
                let mut start = data_key(partition, last);
                start.push(0);
                start
            }
            None => partition_start(partition),
        };
        let scan = scan_bounded(
            store,
            start,
            &partition_end(partition),
            (keys_max, bytes_max),
            SCAN_FIRST,
        )?;
        for (stored, value) in &scan.entries {
            if let Some((_, key)) = parse_data_key(stored) {
                tree.toggle(key, value);
                last = Some(key.to_vec());
            }
        }
        tree.build = if scan.ended {
            Build::Built
        } else {
            Build::Scanning { last }
        };
        Ok(BuildStep {
            done: scan.ended,
            read: scan.read,
        })
    }
}

/// One step of a tree's build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildStep {
    /// The tree is built.
    pub done: bool,
    /// Bytes of states read by the step.
    pub read: usize,
}

/// What [`states_in_range`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeStates {
    /// User key and encoded state, in key order.
    pub states: Entries,
    /// Where the range really ended: the first user key not looked at, when
    /// the size limit cut it short; else the requested end.
    pub until: Option<Vec<u8>>,
    /// Bytes of every state read over the range, in the buckets wanted or
    /// not: the work the step did, which is what background work is
    /// charged for.
    pub read: usize,
}

/// Entries the first scan of a range reads; later scans are sized from what
/// it found.
const SCAN_FIRST: usize = 32;

/// How many more entries a scan that read `read` bytes in `scanned`
/// entries should read to reach `bytes_max`, plus one past it that shows
/// where the range ends.
fn entries_for(bytes_max: usize, read: usize, scanned: usize) -> usize {
    (bytes_max.saturating_sub(read).saturating_mul(scanned) / read.max(1)).saturating_add(1)
}

/// What [`scan_bounded`] read.
#[derive(Debug)]
pub(crate) struct BoundedScan {
    /// Stored key and value, in order.
    pub(crate) entries: Entries,
    /// The scan reached the end of its range.
    pub(crate) ended: bool,
    /// Bytes of stored keys and values read.
    pub(crate) read: usize,
}

/// The stored entries in `[start, end)`, scanned in chunks until the range
/// ends or `limits` — at most `.0` entries and about `.1` bytes — are
/// reached: the first chunk is `first` entries, later ones sized from what
/// came so far ([`entries_for`]). Shared by tree builds and the tombstone
/// sweep.
pub(crate) fn scan_bounded(
    store: &mut impl Store,
    start: Vec<u8>,
    end: &[u8],
    (keys_max, bytes_max): (usize, usize),
    first: usize,
) -> Result<BoundedScan, StoreError> {
    let keys_max = keys_max.max(1);
    let mut entries: Entries = Vec::new();
    let (mut read, mut cursor) = (0, start);
    let mut chunk = first.clamp(1, keys_max);
    loop {
        let found = store.scan(&cursor, end, chunk)?;
        let ended = found.len() < chunk;
        for (key, value) in found {
            read += key.len() + value.len();
            cursor.clone_from(&key);
            cursor.push(0);
            entries.push((key, value));
        }
        let left = keys_max - entries.len();
        if ended || left == 0 || read >= bytes_max {
            return Ok(BoundedScan {
                entries,
                ended,
                read,
            });
        }
        chunk = entries_for(bytes_max, read, entries.len()).clamp(1, left);
    }
}

/// The partition's stored states (user key, encoded state) whose keys fall
/// in `buckets` and lie in `[from, until)`, until about `bytes_max` bytes
/// were read. Only the wanted buckets are read: each bucket's keys lie
/// together in the store, and each run of consecutive wanted buckets is
/// one stretch of it. (When buckets were spread over the partition, a step
/// that wanted one bucket of 256 read 256 times what it found, and an
/// exchange started again re-read the part of the partition it had already
/// made equal.)
/// Each stretch is scanned in chunks of at most `scan_chunk` keys, each
/// sized to what the range still allows at the size states came so far: a
/// step of 256 KiB reads about 256 KiB, not `scan_chunk` states (4,096 of
/// 1 KB each, 16 times what it sends, as it once did on every step of a
/// move).
pub fn states_in_range(
    store: &mut impl Store,
    partition: Partition,
    buckets: &[u16],
    from: &[u8],
    until: Option<&[u8]>,
    bytes_max: usize,
    scan_chunk: usize,
) -> Result<RangeStates, StoreError> {
    let mut wanted = [false; BUCKETS];
    for bucket in buckets {
        if let Some(slot) = wanted.get_mut(*bucket as usize) {
            *slot = true;
        }
    }
    let range_start = range_key(partition, from);
    let range_end = match until {
        Some(until) => range_key(partition, until),
        None => partition_end(partition),
    };
    let scan_chunk = scan_chunk.max(1);
    let mut chunk = SCAN_FIRST.min(scan_chunk);
    let mut states = Vec::new();
    let (mut read, mut scanned) = (0, 0);
    let mut bucket = 0;
    while bucket < BUCKETS {
        if !wanted[bucket] {
            bucket += 1;
            continue;
        }
        let run_end = (bucket..BUCKETS)
            .find(|next| !wanted[*next])
            .unwrap_or(BUCKETS);
        let mut start = bucket_start(partition, bucket as u16).max(range_start.clone());
        let end = bucket_start(partition, run_end as u16).min(range_end.clone());
        bucket = run_end;
        while start < end {
            let entries: Entries = store.scan(&start, &end, chunk)?;
            let finished = entries.len() < chunk;
            scanned += entries.len();
            for (stored, value) in entries {
                start.clone_from(&stored);
                start.push(0);
                let Some((_, key)) = parse_data_key(&stored) else {
                    continue;
                };
                if read >= bytes_max {
                    // Full: the range ends before this key.
                    return Ok(RangeStates {
                        states,
                        until: Some(key.to_vec()),
                        read,
                    });
                }
                read += key.len() + value.len();
                states.push((key.to_vec(), value));
            }
            if finished {
                break;
            }
            chunk =
                entries_for(bytes_max, read, scanned).clamp(SCAN_FIRST.min(scan_chunk), scan_chunk);
        }
    }
    Ok(RangeStates {
        states,
        until: until.map(<[u8]>::to_vec),
        read,
    })
}

/// A store that keeps [`Trees`] in step with every data write through it.
/// It remembers the digest of the last data key read, because the replica
/// code reads a key's state before writing it; otherwise it reads the old
/// state itself.
#[derive(Debug)]
pub struct Tracked<'a, S: Store> {
    store: &'a mut S,
    trees: &'a mut Trees,
    /// The last data key read or written and its state's digest.
    last_read: Option<(Vec<u8>, Option<u64>)>,
}

impl<'a, S: Store> Tracked<'a, S> {
    /// Wraps `store`.
    pub fn new(store: &'a mut S, trees: &'a mut Trees) -> Tracked<'a, S> {
        Tracked {
            store,
            trees,
            last_read: None,
        }
    }

    /// The trees.
    pub fn trees(&mut self) -> &mut Trees {
        self.trees
    }

    /// The store and the trees, apart.
    pub fn parts(&mut self) -> (&mut S, &mut Trees) {
        (self.store, self.trees)
    }
}

impl<S: Store> Store for Tracked<'_, S> {
    fn read(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.store.read(key)?;
        if let Some((_, user_key)) = parse_data_key(key) {
            let old = value.as_deref().map(|value| digest(user_key, value));
            self.last_read = Some((key.to_vec(), old));
        }
        Ok(value)
    }

    fn write(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let Some((partition, user_key)) = parse_data_key(key) else {
            return self.store.write(key, value, durability);
        };
        let old = match self.last_read.take() {
            Some((read_key, old)) if read_key == key => old,
            _ => self.store.read(key)?.map(|value| digest(user_key, &value)),
        };
        self.trees.start(partition, self.store)?;
        self.store.write(key, value, durability)?;
        let new = value.map(|value| digest(user_key, value));
        self.trees.on_write(partition, user_key, old, new);
        self.last_read = Some((key.to_vec(), new));
        Ok(())
    }

    fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
        self.store.scan(start, end, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn put(store: &mut impl Store, partition: Partition, key: &[u8], value: &[u8]) {
        store
            .write(&data_key(partition, key), Some(value), Durability::Buffered)
            .unwrap();
    }

    /// `count` keys `key0000`, `key0001`, … in `partition`, each `value`.
    fn fill(store: &mut impl Store, partition: Partition, count: u32, value: &[u8]) {
        for i in 0..count {
            put(store, partition, format!("key{i:04}").as_bytes(), value);
        }
    }

    #[test]
    fn a_tree_kept_on_writes_equals_one_built_from_scratch() {
        let partition = Partition(3);
        let mut tracked_trees = Trees::new();
        let mut store = MemStore::new();
        // Some keys before the tree exists, in this and a neighbouring partition.
        for i in 0..50u32 {
            put(&mut store, partition, format!("a{i}").as_bytes(), b"one");
            put(&mut store, Partition(4), format!("a{i}").as_bytes(), b"x");
        }
        // Build in small steps, writing between the steps: keys before and
        // after the scan's position, overwrites and deletes.
        let mut step = 0;
        while !tracked_trees
            .build_step(partition, &mut store, 7, usize::MAX)
            .unwrap()
            .done
        {
            let mut tracked = Tracked::new(&mut store, &mut tracked_trees);
            let key = format!("a{}", (step * 13) % 60);
            put(
                &mut tracked,
                partition,
                key.as_bytes(),
                format!("v{step}").as_bytes(),
            );
            let deleted = format!("a{}", (step * 7 + 3) % 60);
            tracked
                .write(
                    &data_key(partition, deleted.as_bytes()),
                    None,
                    Durability::Buffered,
                )
                .unwrap();
            step += 1;
        }
        assert!(step > 3, "the build took {step} steps");
        for i in 0..20u32 {
            let mut tracked = Tracked::new(&mut store, &mut tracked_trees);
            put(&mut tracked, partition, format!("b{i}").as_bytes(), b"late");
        }
        let mut fresh = Trees::new();
        while !fresh
            .build_step(partition, &mut store, 1000, usize::MAX)
            .unwrap()
            .done
        {}
        let kept = tracked_trees.built(partition).unwrap();
        let built = fresh.built(partition).unwrap();
        assert_eq!(kept.leaves(), built.leaves());
        assert_eq!(kept.root(), built.root());
        assert_ne!(kept.root(), PartitionTree::new().root());
    }

    /// The keys `key0000`… of [`fill`], in their partition's stored order.
    fn in_stored_order(count: u32) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = (0..count)
            .map(|i| format!("key{i:04}").into_bytes())
            .collect();
        keys.sort_by(|a, b| position(a).cmp(&position(b)));
        keys
    }

    #[test]
    fn ranges_cut_by_size_walk_every_state_exactly_once() {
        let partition = Partition(9);
        let mut store = MemStore::new();
        fill(&mut store, partition, 500, &[1u8; 40]);
        put(&mut store, Partition(10), b"key0000", b"other partition");
        put(&mut store, Partition(8), b"key0000", b"other partition");
        let all: Vec<u16> = (0..BUCKETS as u16).collect();
        // Some buckets only, in runs and alone, first and last among them.
        let some: Vec<u16> = [0, 1, 2, 9, 40, 41, 200, 255].to_vec();
        for buckets in [&all, &some] {
            let mut from = Vec::new();
            let mut seen = Vec::new();
            let mut steps = 0;
            loop {
                let found =
                    states_in_range(&mut store, partition, buckets, &from, None, 1000, 7).unwrap();
                assert_eq!(
                    found.read,
                    found
                        .states
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
                );
                seen.extend(found.states.into_iter().map(|(key, _)| key));
                steps += 1;
                match found.until {
                    Some(until) => {
                        assert!(is_after(&until, &from), "a range must make progress");
                        from = until;
                    }
                    None => break,
                }
            }
            let expected: Vec<Vec<u8>> = in_stored_order(500)
                .into_iter()
                .filter(|key| buckets.contains(&bucket_of(key)))
                .collect();
            assert!(steps > expected.len() / 25, "{steps} steps");
            assert_eq!(seen, expected);
        }
        // A bounded range stops at its end.
        let keys = in_stored_order(500);
        let bounded = states_in_range(
            &mut store,
            partition,
            &all,
            &keys[100],
            Some(&keys[110]),
            usize::MAX,
            3,
        )
        .unwrap();
        let found: Vec<Vec<u8>> = bounded.states.into_iter().map(|(key, _)| key).collect();
        assert_eq!(found, keys[100..110]);
        assert_eq!(bounded.until.as_deref(), Some(&keys[110][..]));
        assert!(
            keys[100..110]
                .iter()
                .all(|key| in_range(key, &keys[100], Some(&keys[110])))
        );
        assert!(!in_range(&keys[110], &keys[100], Some(&keys[110])));
        assert!(!in_range(&keys[99], &keys[100], None));
        assert!(in_range(&keys[0], b"", None));
    }

    /// Counts the entries scans return.
    struct Counting<'a>(&'a mut MemStore, usize);

    impl Store for Counting<'_> {
        fn read(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.0.read(key)
        }
        fn write(
            &mut self,
            key: &[u8],
            value: Option<&[u8]>,
            durability: Durability,
        ) -> Result<(), StoreError> {
            self.0.write(key, value, durability)
        }
        fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, StoreError> {
            let entries = self.0.scan(start, end, limit)?;
            self.1 += entries.len();
            Ok(entries)
        }
    }

    #[test]
    fn a_range_reads_about_what_it_returns() {
        let partition = Partition(3);
        let mut store = MemStore::new();
        fill(&mut store, partition, 5000, &[7u8; 100]);
        let all: Vec<u16> = (0..BUCKETS as u16).collect();
        // About 100 states of ~110 bytes fill 11,000 bytes.
        let mut counting = Counting(&mut store, 0);
        let found =
            states_in_range(&mut counting, partition, &all, &[], None, 11_000, 4096).unwrap();
        let returned = found.states.len();
        assert!((90..=110).contains(&returned), "{returned}");
        let read = counting.1;
        assert!(
            read <= returned + 40,
            "read {read} entries to return {returned}"
        );
        let bytes = |states: &Entries| -> usize {
            states
                .iter()
                .map(|(key, value)| key.len() + value.len())
                .sum()
        };
        assert_eq!(found.read, bytes(&found.states));
        // Wanting a few buckets, a step reads those buckets only: each
        // bucket's keys lie together, so nothing else is scanned.
        let few: Vec<u16> = vec![3, 100, 101, 200];
        let mut counting = Counting(&mut store, 0);
        let found =
            states_in_range(&mut counting, partition, &few, &[], None, 1 << 30, 4096).unwrap();
        assert_eq!(found.until, None);
        let in_few = (0..5000u32)
            .filter(|i| few.contains(&bucket_of(format!("key{i:04}").as_bytes())))
            .count();
        assert!(in_few > 40, "{in_few}");
        assert_eq!(found.states.len(), in_few);
        assert!(
            found
                .states
                .iter()
                .all(|(key, _)| few.contains(&bucket_of(key)))
        );
        assert_eq!(counting.1, in_few, "entries scanned");
        assert_eq!(found.read, bytes(&found.states));
        // And a step cut by its limit read about the limit, all of it wanted.
        let mut counting = Counting(&mut store, 0);
        let found =
            states_in_range(&mut counting, partition, &few, &[], None, 2_000, 4096).unwrap();
        assert!(
            found.until.is_some(),
            "2,000 bytes cannot hold {in_few} states"
        );
        assert!((2_000..2_200).contains(&found.read), "{}", found.read);
        assert_eq!(found.read, bytes(&found.states));
        assert!(
            counting.1 <= found.states.len() + 32,
            "{} entries",
            counting.1
        );
    }

    #[test]
    fn differing_buckets_name_exactly_the_changed_leaves() {
        let partition = Partition(0);
        let mut a = MemStore::new();
        let mut b = MemStore::new();
        for i in 0..100u32 {
            let key = format!("k{i}");
            put(&mut a, partition, key.as_bytes(), b"same");
            put(&mut b, partition, key.as_bytes(), b"same");
        }
        put(&mut b, partition, b"k7", b"newer");
        put(&mut b, partition, b"only-b", b"x");
        let mut trees_a = Trees::new();
        let mut trees_b = Trees::new();
        while !trees_a.build_step(partition, &mut a, 16, 64).unwrap().done {}
        while !trees_b.build_step(partition, &mut b, 16, 64).unwrap().done {}
        let leaves_a = trees_a.built(partition).unwrap().leaves();
        let leaves_b = trees_b.built(partition).unwrap().leaves();
        let mut expected = vec![bucket_of(b"k7"), bucket_of(b"only-b")];
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(differing_buckets(leaves_a, leaves_b), expected);
        let found =
            states_in_range(&mut b, partition, &expected, &[], None, usize::MAX, 8).unwrap();
        assert_eq!(found.until, None);
        let keys: Vec<&[u8]> = found.states.iter().map(|(key, _)| key.as_slice()).collect();
        assert!(keys.contains(&&b"k7"[..]) && keys.contains(&&b"only-b"[..]));
        assert!(
            found
                .states
                .iter()
                .all(|(key, _)| expected.contains(&bucket_of(key)))
        );
        assert!(differing_buckets(leaves_a, &leaves_b[1..]).is_empty());
    }
}
