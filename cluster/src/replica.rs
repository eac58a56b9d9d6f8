//! A replica's local state: key states in a [`Store`], coordinated writes and
//! syncs applied to them, and the node's epoch (Dynamo §4.4 versions, with
//! the dotted version vectors of design.md §3).
//!
//! Stored layout (one ordered key space shared with hints and metadata):
//! - data: `0x00 ‖ partition u32 BE ‖ bucket u16 BE ‖ user key` →
//!   `KeyState::encode()`, where the bucket is the key's leaf in its
//!   partition's hash tree ([`anti_entropy::bucket_of`]). So each leaf's
//!   keys lie together, and an exchange that finds a few leaves differing
//!   reads those leaves only, not the whole partition in search of them.
//!   Ranges within a partition therefore run in this order — bucket, then
//!   key — which [`anti_entropy::position`] gives,
//! - hints: `0x01 ‖ …` (see `hinted_handoff`),
//! - metadata: `0x02 ‖ name`; the epoch is `0x02 ‖ "epoch"` → u32 BE; the
//!   layout's version is `0x02 ‖ "layout"` → u32 BE ([`check_layout`]).
//!
//! Invariants: a state read back is checked (the envelope's checksum) and a
//! corrupt one is an error, never a panic; a coordinated write that would
//! leave more than `sibling_count_max` siblings stores nothing; a sync never
//! loses what the stored state held that the incoming one does not cover;
//! the epoch is written durably before any dot of that epoch is issued, and
//! every start takes a new one (so a dot is never issued twice, KV679).

use crate::anti_entropy;
use crate::id::{Actor, NodeId, Partition};
use crate::siblings::{ConflictPolicy, KeyState, SiblingValue};
use crate::store::{Durability, Store, StoreError};
use crate::version_vector::{Dot, VersionVector};

/// First byte of every data key.
pub const DATA_PREFIX: u8 = 0x00;
/// First byte of every hint key.
pub const HINT_PREFIX: u8 = 0x01;
/// First byte of every metadata key.
pub const METADATA_PREFIX: u8 = 0x02;

/// Why a replica operation failed. The stored state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record failed its checks.
    #[error("corrupt stored record: {0}")]
    Corrupt(String),
    /// The write would leave more siblings than allowed.
    #[error("too many siblings: {count} (max {max})")]
    TooManySiblings {
        /// Siblings the write would leave.
        count: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The encoded state would be larger than allowed.
    #[error("key state too large: {size} bytes (max {max})")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
}

/// Limits and policy a replica applies to every write.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaLimits {
    /// How concurrent siblings are resolved.
    pub conflict_policy: ConflictPolicy,
    /// Most siblings a coordinated write may leave.
    pub sibling_count_max: usize,
    /// Largest encoded key state.
    pub key_state_size_max_bytes: usize,
}

/// The stored key of a user key's data in `partition`.
pub fn data_key(partition: Partition, key: &[u8]) -> Vec<u8> {
    let mut stored = bucket_start(partition, anti_entropy::bucket_of(key));
    stored.extend_from_slice(key);
    stored
}

/// The user key and partition of a data key, or `None` when it is not one.
pub fn parse_data_key(stored: &[u8]) -> Option<(Partition, &[u8])> {
    let (&prefix, rest) = stored.split_first()?;
    if prefix != DATA_PREFIX || rest.len() < 6 {
        return None;
    }
    let (partition, rest) = rest.split_at(4);
    let partition = u32::from_be_bytes(partition.try_into().ok()?);
    Some((Partition(partition), &rest[2..]))
}

/// The first stored key of `bucket` in `partition`; with `bucket` equal to
/// [`anti_entropy::BUCKETS`], the first after the partition's data.
pub fn bucket_start(partition: Partition, bucket: u16) -> Vec<u8> {
    let mut stored = Vec::with_capacity(7 + 32);
    stored.push(DATA_PREFIX);
    stored.extend_from_slice(&partition.0.to_be_bytes());
    stored.extend_from_slice(&bucket.to_be_bytes());
    stored
}

/// The first stored key of `partition`'s data.
pub fn partition_start(partition: Partition) -> Vec<u8> {
    bucket_start(partition, 0)
}

/// The first stored key after every data key of `partition`.
pub fn partition_end(partition: Partition) -> Vec<u8> {
    bucket_start(partition, anti_entropy::BUCKETS as u16)
}

/// The stored key where a range of `partition` that starts at the user key
/// `from` starts: the empty key, which no user key is, is the partition's
/// start (as [`anti_entropy::position`] orders it).
pub fn range_key(partition: Partition, from: &[u8]) -> Vec<u8> {
    if from.is_empty() {
        partition_start(partition)
    } else {
        data_key(partition, from)
    }
}

/// The version of the stored layout this build reads and writes: 2 put the
/// bucket in data keys.
pub const LAYOUT: u32 = 2;

/// The stored key of the layout's version.
pub fn layout_key() -> Vec<u8> {
    let mut key = vec![METADATA_PREFIX];
    key.extend_from_slice(b"layout");
    key
}

/// Why a store's data cannot be read by this build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data was written in another layout.
    #[error(
        "the data directory holds data in stored layout {found}, and this build reads layout \
         {LAYOUT}: start it with the build that wrote it, or empty it and let the node \
         refill from its peers"
    )]
    Other {
        /// The layout found (1: before versions were recorded).
        found: u32,
    },
}

/// Checks, when a node opens its store, that the data in it is in this
/// build's layout, and records the layout in a store that holds no data
/// yet (durably). A store with data but no record was written before
/// layouts were recorded: layout 1, keys without their bucket.
pub fn check_layout(store: &mut impl Store) -> Result<(), LayoutError> {
    let found = match store.read(&layout_key())? {
        Some(bytes) => match <[u8; 4]>::try_from(bytes.as_slice()) {
            Ok(bytes) => u32::from_be_bytes(bytes),
            Err(_) => return Err(LayoutError::Other { found: 0 }),
        },
        None => {
            let data = store.scan(&[DATA_PREFIX], &[DATA_PREFIX + 1], 1)?;
            if !data.is_empty() {
                return Err(LayoutError::Other { found: 1 });
            }
            store.write(
                &layout_key(),
                Some(&LAYOUT.to_be_bytes()),
                Durability::Durable,
            )?;
            LAYOUT
        }
    };
    if found == LAYOUT {
        Ok(())
    } else {
        Err(LayoutError::Other { found })
    }
}

/// The stored key of the node's epoch.
pub fn epoch_key() -> Vec<u8> {
    let mut key = vec![METADATA_PREFIX];
    key.extend_from_slice(b"epoch");
    key
}

/// The stored key written durably when a pulled partition is complete.
pub fn moves_key() -> Vec<u8> {
    let mut key = vec![METADATA_PREFIX];
    key.extend_from_slice(b"moves");
    key
}

/// The stored key of the node's copy of the ring (written by the shell, in
/// the same log as the data it governs).
pub fn ring_key() -> Vec<u8> {
    let mut key = vec![METADATA_PREFIX];
    key.extend_from_slice(b"ring");
    key
}

/// The stored key written durably when a sweep of stale copies ends (its
/// value: the assignment version cleared), so that the sweep's deletes are
/// on disk before the ring says so.
pub fn cleared_key() -> Vec<u8> {
    let mut key = vec![METADATA_PREFIX];
    key.extend_from_slice(b"cleared");
    key
}

/// Reads a stored, encoded key state; absent is the empty state.
pub fn decode_state(bytes: Option<Vec<u8>>) -> Result<KeyState, ReplicaError> {
    match bytes {
        None => Ok(KeyState::default()),
        Some(bytes) => {
            KeyState::decode(&bytes).map_err(|error| ReplicaError::Corrupt(format!("{error:?}")))
        }
    }
}

/// Reads the replica's state of `key` in `partition` (empty when absent).
pub fn read_state(
    store: &mut impl Store,
    partition: Partition,
    key: &[u8],
) -> Result<KeyState, ReplicaError> {
    decode_state(store.read(&data_key(partition, key))?)
}

fn write_state(
    store: &mut impl Store,
    partition: Partition,
    key: &[u8],
    state: &KeyState,
    limits: &ReplicaLimits,
    durability: Durability,
) -> Result<(), ReplicaError> {
    let encoded = state.encode();
    if encoded.len() > limits.key_state_size_max_bytes {
        return Err(ReplicaError::TooLarge {
            size: encoded.len(),
            max: limits.key_state_size_max_bytes,
        });
    }
    store.write(&data_key(partition, key), Some(&encoded), durability)?;
    Ok(())
}

/// Coordinates a write at this replica (design.md §3): the new sibling gets
/// the dot `(actor, clock[actor] + 1)` and supersedes what `context` covers.
/// Returns the new state and the dot; stores nothing on error.
#[allow(clippy::too_many_arguments)]
pub fn coordinate_write(
    store: &mut impl Store,
    partition: Partition,
    key: &[u8],
    actor: Actor,
    context: &VersionVector,
    value: SiblingValue,
    timestamp: u64,
    limits: &ReplicaLimits,
    durability: Durability,
) -> Result<(KeyState, Dot), ReplicaError> {
    let mut state = read_state(store, partition, key)?;
    let dot = state.coordinate_write(actor, context, value, timestamp);
    state.apply_policy(limits.conflict_policy);
    let count = state.sibling_count();
    if count > limits.sibling_count_max {
        return Err(ReplicaError::TooManySiblings {
            count,
            max: limits.sibling_count_max,
        });
    }
    write_state(store, partition, key, &state, limits, durability)?;
    Ok((state, dot))
}

/// Merges `incoming` into the stored state of `key` (design.md §3 sync) and
/// stores the result. A durable request rewrites even an unchanged state so
/// that the state counted as durable really is.
pub fn apply_sync(
    store: &mut impl Store,
    partition: Partition,
    key: &[u8],
    incoming: &KeyState,
    limits: &ReplicaLimits,
    durability: Durability,
) -> Result<KeyState, ReplicaError> {
    let mut state = read_state(store, partition, key)?;
    let unchanged = state.dominates_or_equals(incoming);
    if !unchanged {
        state.sync(incoming);
        state.apply_policy(limits.conflict_policy);
    }
    if !unchanged || durability == Durability::Durable {
        write_state(store, partition, key, &state, limits, durability)?;
    }
    Ok(state)
}

/// Takes the node's next epoch: the stored one plus one, or `floor` if that
/// is larger, stored durably. Called once per start, before any write is
/// coordinated. `floor` comes from the wall clock (seconds since 2026), so
/// that a node whose disk was wiped — its stored epoch lost — still takes an
/// epoch it never used, and never issues a dot twice (Riak's KV679).
pub fn start_epoch(store: &mut impl Store, floor: u32) -> Result<u32, ReplicaError> {
    let key = epoch_key();
    let previous = match store.read(&key)? {
        None => 0,
        Some(bytes) => {
            let bytes: [u8; 4] = bytes.as_slice().try_into().map_err(|_| {
                ReplicaError::Corrupt(format!("epoch record of {} bytes", bytes.len()))
            })?;
            u32::from_be_bytes(bytes)
        }
    };
    let epoch = previous
        .checked_add(1)
        .ok_or_else(|| ReplicaError::Corrupt("epoch exhausted".into()))?
        .max(floor);
    store.write(&key, Some(&epoch.to_be_bytes()), Durability::Durable)?;
    Ok(epoch)
}

/// The actor a node issues dots as in `epoch`.
pub fn actor(node: NodeId, epoch: u32) -> Actor {
    Actor { node, epoch }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use bytes::Bytes;

    fn limits() -> ReplicaLimits {
        ReplicaLimits {
            conflict_policy: ConflictPolicy::Siblings,
            sibling_count_max: 3,
            key_state_size_max_bytes: 1 << 20,
        }
    }

    fn value(text: &'static str) -> SiblingValue {
        SiblingValue::Value(Bytes::from_static(text.as_bytes()))
    }

    #[test]
    fn data_key_is_prefix_partition_bucket_and_user_key() {
        let stored = data_key(Partition(0x0102_0304), b"k");
        let [high, low] = anti_entropy::bucket_of(b"k").to_be_bytes();
        assert_eq!(stored, vec![0x00, 1, 2, 3, 4, high, low, b'k']);
        assert_eq!(
            parse_data_key(&stored),
            Some((Partition(0x0102_0304), &b"k"[..]))
        );
        assert_eq!(parse_data_key(&[0x01, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(parse_data_key(&[0x00, 0, 0, 0, 0, 0]), None);
        // A bucket's keys lie together, between its start and the next's.
        let partition = Partition(7);
        for key in [&b"a"[..], b"b", b"key0001", &[0xff; 40]] {
            let bucket = anti_entropy::bucket_of(key);
            let stored = data_key(partition, key);
            assert!(bucket_start(partition, bucket) < stored);
            assert!(stored < bucket_start(partition, bucket + 1));
            assert!(partition_start(partition) < stored);
            assert!(stored < partition_end(partition));
            assert!(partition_end(partition) <= partition_start(Partition(8)));
        }
        assert_eq!(range_key(partition, b""), partition_start(partition));
        assert_eq!(range_key(partition, b"a"), data_key(partition, b"a"));
    }

    #[test]
    fn a_store_in_another_layout_is_refused_and_a_new_one_recorded() {
        // A new store: recorded, durably, and accepted from then on.
        let mut store = MemStore::new();
        check_layout(&mut store).unwrap();
        store.crash_machine();
        assert_eq!(
            store.read(&layout_key()).unwrap(),
            Some(LAYOUT.to_be_bytes().to_vec())
        );
        store
            .write(
                &data_key(Partition(1), b"k"),
                Some(b"state"),
                Durability::Buffered,
            )
            .unwrap();
        check_layout(&mut store).unwrap();
        // Data without a record: written before layouts were recorded.
        let mut old = MemStore::new();
        old.write(
            &[DATA_PREFIX, 0, 0, 0, 1, b'k'],
            Some(b"state"),
            Durability::Buffered,
        )
        .unwrap();
        let error = check_layout(&mut old).unwrap_err();
        assert_eq!(error, LayoutError::Other { found: 1 });
        assert!(error.to_string().contains("layout 1"), "{error}");
        assert_eq!(old.read(&layout_key()).unwrap(), None);
        // A later layout, or a garbled record.
        let mut later = MemStore::new();
        later
            .write(
                &layout_key(),
                Some(&3u32.to_be_bytes()),
                Durability::Buffered,
            )
            .unwrap();
        assert_eq!(
            check_layout(&mut later),
            Err(LayoutError::Other { found: 3 })
        );
        later
            .write(&layout_key(), Some(b"xy"), Durability::Buffered)
            .unwrap();
        assert!(check_layout(&mut later).is_err());
        // Metadata alone (an epoch, a ring) is no data: recorded.
        let mut epoch_only = MemStore::new();
        start_epoch(&mut epoch_only, 0).unwrap();
        check_layout(&mut epoch_only).unwrap();
    }

    #[test]
    fn every_start_takes_a_new_epoch_durably() {
        let mut store = MemStore::new();
        assert_eq!(start_epoch(&mut store, 0).unwrap(), 1);
        assert_eq!(start_epoch(&mut store, 0).unwrap(), 2);
        store.crash_machine();
        assert_eq!(start_epoch(&mut store, 0).unwrap(), 3);
        // The wall clock's floor lifts it; later starts go on from there.
        assert_eq!(start_epoch(&mut store, 1000).unwrap(), 1000);
        assert_eq!(start_epoch(&mut store, 1000).unwrap(), 1001);
        // A wiped store: the floor alone keeps the epoch new.
        let mut wiped = MemStore::new();
        assert_eq!(start_epoch(&mut wiped, 2000).unwrap(), 2000);
    }

    #[test]
    fn corrupt_epoch_record_is_an_error_not_a_panic() {
        let mut store = MemStore::new();
        store
            .write(&epoch_key(), Some(b"xy"), Durability::Durable)
            .unwrap();
        assert!(matches!(
            start_epoch(&mut store, 0),
            Err(ReplicaError::Corrupt(_))
        ));
    }

    #[test]
    fn corrupt_key_state_is_an_error_not_a_panic() {
        let mut store = MemStore::new();
        let key = data_key(Partition(0), b"k");
        store
            .write(&key, Some(b"garbage"), Durability::Buffered)
            .unwrap();
        assert!(matches!(
            read_state(&mut store, Partition(0), b"k"),
            Err(ReplicaError::Corrupt(_))
        ));
    }

    #[test]
    fn write_over_the_sibling_limit_stores_nothing() {
        let mut store = MemStore::new();
        let actor = actor(NodeId(1), 1);
        let empty = VersionVector::default();
        for text in ["a", "b", "c"] {
            coordinate_write(
                &mut store,
                Partition(0),
                b"k",
                actor,
                &empty,
                value(text),
                1,
                &limits(),
                Durability::Buffered,
            )
            .unwrap();
        }
        let before = read_state(&mut store, Partition(0), b"k").unwrap();
        let error = coordinate_write(
            &mut store,
            Partition(0),
            b"k",
            actor,
            &empty,
            value("d"),
            1,
            &limits(),
            Durability::Buffered,
        )
        .unwrap_err();
        assert_eq!(error, ReplicaError::TooManySiblings { count: 4, max: 3 });
        assert_eq!(read_state(&mut store, Partition(0), b"k").unwrap(), before);
    }

    #[test]
    fn write_with_the_read_context_supersedes_what_was_read() {
        let mut store = MemStore::new();
        let actor = actor(NodeId(1), 1);
        let empty = VersionVector::default();
        let (first, _) = coordinate_write(
            &mut store,
            Partition(0),
            b"k",
            actor,
            &empty,
            value("a"),
            1,
            &limits(),
            Durability::Buffered,
        )
        .unwrap();
        let (second, dot) = coordinate_write(
            &mut store,
            Partition(0),
            b"k",
            actor,
            &first.context(),
            value("b"),
            2,
            &limits(),
            Durability::Buffered,
        )
        .unwrap();
        assert_eq!(second.sibling_count(), 1);
        assert!(second.context().covers(&dot));
        assert_eq!(
            second.values().cloned().collect::<Vec<_>>(),
            vec![Bytes::from_static(b"b")]
        );
    }

    #[test]
    fn sync_keeps_concurrent_writes_from_both_sides() {
        let mut left = MemStore::new();
        let mut right = MemStore::new();
        let empty = VersionVector::default();
        coordinate_write(
            &mut left,
            Partition(0),
            b"k",
            actor(NodeId(1), 1),
            &empty,
            value("a"),
            1,
            &limits(),
            Durability::Buffered,
        )
        .unwrap();
        let (theirs, _) = coordinate_write(
            &mut right,
            Partition(0),
            b"k",
            actor(NodeId(2), 1),
            &empty,
            value("b"),
            1,
            &limits(),
            Durability::Buffered,
        )
        .unwrap();
        let merged = apply_sync(
            &mut left,
            Partition(0),
            b"k",
            &theirs,
            &limits(),
            Durability::Buffered,
        )
        .unwrap();
        assert_eq!(merged.sibling_count(), 2);
        assert_eq!(read_state(&mut left, Partition(0), b"k").unwrap(), merged);
    }

    #[test]
    fn durable_sync_of_an_unchanged_state_makes_it_survive_a_machine_crash() {
        let mut store = MemStore::new();
        let empty = VersionVector::default();
        let (state, _) = coordinate_write(
            &mut store,
            Partition(0),
            b"k",
            actor(NodeId(1), 1),
            &empty,
            value("a"),
            1,
            &limits(),
            Durability::Buffered,
        )
        .unwrap();
        apply_sync(
            &mut store,
            Partition(0),
            b"k",
            &state,
            &limits(),
            Durability::Durable,
        )
        .unwrap();
        store.crash_machine();
        assert_eq!(read_state(&mut store, Partition(0), b"k").unwrap(), state);
    }
}
