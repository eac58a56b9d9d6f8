//! A replica's local state: key states in a [`Store`], coordinated writes and
//! syncs applied to them, and the node's epoch (Dynamo §4.4 versions, with
//! the dotted version vectors of design.md §3).
//!
//! Stored layout (one ordered key space shared with hints and metadata):
//! - data: `0x00 ‖ partition u32 BE ‖ user key` → `KeyState::encode()`,
//! - hints: `0x01 ‖ …` (see `hinted_handoff`),
//! - metadata: `0x02 ‖ name`; the epoch is `0x02 ‖ "epoch"` → u32 BE.
//!
//! Invariants: a state read back is checked (the envelope's checksum) and a
//! corrupt one is an error, never a panic; a coordinated write that would
//! leave more than `sibling_count_max` siblings stores nothing; a sync never
//! loses what the stored state held that the incoming one does not cover;
//! the epoch is written durably before any dot of that epoch is issued, and
//! every start takes a new one (so a dot is never issued twice, KV679).

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
    let mut stored = Vec::with_capacity(5 + key.len());
    stored.push(DATA_PREFIX);
    stored.extend_from_slice(&partition.0.to_be_bytes());
    stored.extend_from_slice(key);
    stored
}

/// The user key and partition of a data key, or `None` when it is not one.
pub fn parse_data_key(stored: &[u8]) -> Option<(Partition, &[u8])> {
    let (&prefix, rest) = stored.split_first()?;
    if prefix != DATA_PREFIX || rest.len() < 4 {
        return None;
    }
    let (partition, key) = rest.split_at(4);
    let partition = u32::from_be_bytes(partition.try_into().ok()?);
    Some((Partition(partition), key))
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
    fn data_key_is_prefix_partition_and_user_key() {
        let stored = data_key(Partition(0x0102_0304), b"k");
        assert_eq!(stored, vec![0x00, 1, 2, 3, 4, b'k']);
        assert_eq!(
            parse_data_key(&stored),
            Some((Partition(0x0102_0304), &b"k"[..]))
        );
        assert_eq!(parse_data_key(&[0x01, 0, 0, 0, 0]), None);
        assert_eq!(parse_data_key(&[0x00, 0, 0]), None);
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
