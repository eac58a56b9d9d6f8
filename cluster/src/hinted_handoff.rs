//! Hinted handoff (Dynamo §4.6): a fallback keeps the writes meant for a
//! primary it believes down, apart from its own data, and hands them over when
//! the primary is reported alive again.
//!
//! Stored layout: `0x01 ‖ target u64 BE ‖ partition u32 BE ‖ user key` →
//! `updated u64 BE (wall-clock µs) ‖ KeyState::encode()`. There is at most one
//! hint per (target, key): a new hint for the same key is merged (sync) into
//! the stored one, so hints never hold a key twice.
//!
//! Invariants: the bytes held for one target never exceed
//! `hint_bytes_per_target_max` (a hint that would exceed it is dropped and
//! counted, and the write is not acknowledged by this fallback); a hint not
//! updated for `hint_age_max` is dropped and counted on the next replay round
//! (so a write it acknowledged lives at least that long); a hint
//! is deleted only after the target acknowledged exactly its current content
//! (the digest of the stored bytes), so a hint updated while its replay was in
//! flight is replayed again; a corrupt hint is dropped and counted, never a panic.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::id::{NodeId, Partition};
use crate::replica::{HINT_PREFIX, ReplicaError};
use crate::siblings::KeyState;
use crate::store::{Durability, Store};

/// Page size when scanning hints at start.
const LOAD_PAGE_ENTRIES: usize = 1024;

/// Bounds on hint storage and replay.
#[derive(Debug, Clone, Copy)]
pub struct HintLimits {
    /// Most bytes (stored keys plus values) held for one target.
    pub bytes_per_target_max: u64,
    /// Hints not updated for this many microseconds are dropped.
    pub age_max_micros: u64,
    /// Most hints sent to one target per replay round.
    pub replay_batch_max: usize,
}

/// What happened to a hint handed to [`Hints::store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintOutcome {
    /// The hint is stored (merged into an older hint for the same key if any).
    Stored,
    /// Storing it would exceed the target's byte bound; nothing changed.
    Dropped,
}

/// One hint to send to its target.
#[derive(Debug, Clone)]
pub struct HintToReplay {
    /// The user key.
    pub key: Bytes,
    /// The hinted state.
    pub state: KeyState,
    /// Digest of the stored hint; the target echoes it.
    pub digest: u64,
}

/// A replay round's hints for one target, and what it dropped on the way.
#[derive(Debug, Clone, Default)]
pub struct ReplayBatch {
    /// Hints to send.
    pub hints: Vec<HintToReplay>,
    /// Hints dropped because they were older than the age bound.
    pub expired: u64,
    /// Hints dropped because they failed their checks.
    pub corrupt: u64,
}

/// The hint keys of one target occupy `[start, end)`.
fn target_range(target: NodeId) -> (Vec<u8>, Vec<u8>) {
    let mut start = vec![HINT_PREFIX];
    start.extend_from_slice(&target.0.to_be_bytes());
    let end = match target.0.checked_add(1) {
        Some(next) => {
            let mut end = vec![HINT_PREFIX];
            end.extend_from_slice(&next.to_be_bytes());
            end
        }
        None => vec![HINT_PREFIX + 1],
    };
    (start, end)
}

/// The stored key of the hint for `target` of `key` in `partition`.
pub fn hint_key(target: NodeId, partition: Partition, key: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(13 + key.len());
    stored.push(HINT_PREFIX);
    stored.extend_from_slice(&target.0.to_be_bytes());
    stored.extend_from_slice(&partition.0.to_be_bytes());
    stored.extend_from_slice(key);
    stored
}

/// Splits a hint key into target, partition and user key.
pub fn parse_hint_key(stored: &[u8]) -> Option<(NodeId, Partition, &[u8])> {
    let (&prefix, rest) = stored.split_first()?;
    if prefix != HINT_PREFIX || rest.len() < 12 {
        return None;
    }
    let (target, rest) = rest.split_at(8);
    let (partition, key) = rest.split_at(4);
    Some((
        NodeId(u64::from_be_bytes(target.try_into().ok()?)),
        Partition(u32::from_be_bytes(partition.try_into().ok()?)),
        key,
    ))
}

fn encode_hint(created_micros: u64, state: &KeyState) -> Vec<u8> {
    let mut value = created_micros.to_be_bytes().to_vec();
    value.extend_from_slice(&state.encode());
    value
}

/// Splits a stored hint into its creation time (µs) and its state.
pub fn decode_hint(value: &[u8]) -> Result<(u64, KeyState), ReplicaError> {
    if value.len() < 8 {
        return Err(ReplicaError::Corrupt(format!(
            "hint of {} bytes",
            value.len()
        )));
    }
    let (created, state) = value.split_at(8);
    let created = u64::from_be_bytes(
        created
            .try_into()
            .map_err(|_| ReplicaError::Corrupt("hint header".into()))?,
    );
    let state =
        KeyState::decode(state).map_err(|error| ReplicaError::Corrupt(format!("{error:?}")))?;
    Ok((created, state))
}

fn digest(value: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(value)
}

/// A node's hints for the other members, with per-target accounting.
#[derive(Debug, Clone)]
pub struct Hints {
    limits: HintLimits,
    bytes_per_target: BTreeMap<NodeId, u64>,
    /// Where the next replay round for a target resumes (its last sent key).
    cursors: BTreeMap<NodeId, Vec<u8>>,
}

impl Hints {
    /// Rebuilds the accounting from the hints in `store` (at start).
    pub fn load(store: &mut impl Store, limits: HintLimits) -> Result<Hints, ReplicaError> {
        let mut hints = Hints {
            limits,
            bytes_per_target: BTreeMap::new(),
            cursors: BTreeMap::new(),
        };
        let mut start = vec![HINT_PREFIX];
        let end = vec![HINT_PREFIX + 1];
        loop {
            let page = store.scan(&start, &end, LOAD_PAGE_ENTRIES)?;
            let Some((last, _)) = page.last() else { break };
            let mut next = last.clone();
            next.push(0);
            for (key, value) in &page {
                if let Some((target, _, _)) = parse_hint_key(key) {
                    *hints.bytes_per_target.entry(target).or_insert(0) +=
                        (key.len() + value.len()) as u64;
                }
            }
            if page.len() < LOAD_PAGE_ENTRIES {
                break;
            }
            start = next;
        }
        Ok(hints)
    }

    /// Bytes held for `target`.
    pub fn bytes(&self, target: NodeId) -> u64 {
        self.bytes_per_target.get(&target).copied().unwrap_or(0)
    }

    /// Bytes held for all targets.
    pub fn bytes_total(&self) -> u64 {
        self.bytes_per_target.values().sum()
    }

    /// Targets for which hints are held.
    pub fn targets(&self) -> Vec<NodeId> {
        self.bytes_per_target
            .iter()
            .filter(|(_, bytes)| **bytes > 0)
            .map(|(target, _)| *target)
            .collect()
    }

    fn account(&mut self, target: NodeId, removed: usize, added: usize) {
        let bytes = self.bytes_per_target.entry(target).or_insert(0);
        *bytes = bytes.saturating_sub(removed as u64) + added as u64;
        if *bytes == 0 {
            self.bytes_per_target.remove(&target);
            self.cursors.remove(&target);
        }
    }

    /// Stores (merges) a hint for `target`, unless that would exceed its bound.
    #[allow(clippy::too_many_arguments)]
    pub fn store(
        &mut self,
        store: &mut impl Store,
        target: NodeId,
        partition: Partition,
        key: &[u8],
        state: &KeyState,
        now_micros: u64,
        durability: Durability,
    ) -> Result<HintOutcome, ReplicaError> {
        let stored_key = hint_key(target, partition, key);
        let existing = store.read(&stored_key)?;
        let (created, merged, old_size) = match &existing {
            None => (now_micros, state.clone(), 0),
            Some(value) => match decode_hint(value) {
                // The age counts from the last update: keeping the first
                // write's time would let a fresh, just acknowledged write
                // expire with the old hint it was merged into.
                Ok((_, mut merged)) => {
                    merged.sync(state);
                    (now_micros, merged, stored_key.len() + value.len())
                }
                // A corrupt hint is replaced by the new one.
                Err(_) => (now_micros, state.clone(), stored_key.len() + value.len()),
            },
        };
        let value = encode_hint(created, &merged);
        let new_size = stored_key.len() + value.len();
        let after = self.bytes(target).saturating_sub(old_size as u64) + new_size as u64;
        if after > self.limits.bytes_per_target_max {
            return Ok(HintOutcome::Dropped);
        }
        store.write(&stored_key, Some(&value), durability)?;
        self.account(target, old_size, new_size);
        Ok(HintOutcome::Stored)
    }

    /// The hinted state of `key` for `target` (empty when there is none).
    pub fn read(
        &self,
        store: &mut impl Store,
        target: NodeId,
        partition: Partition,
        key: &[u8],
    ) -> Result<KeyState, ReplicaError> {
        match store.read(&hint_key(target, partition, key))? {
            None => Ok(KeyState::default()),
            Some(value) => Ok(decode_hint(&value)?.1),
        }
    }

    /// The next hints to send to `target`, dropping (and counting) expired and
    /// corrupt ones on the way. Rounds resume where the last one stopped and
    /// wrap around, so a hint that is never acknowledged does not starve others.
    pub fn replay_batch(
        &mut self,
        store: &mut impl Store,
        target: NodeId,
        now_micros: u64,
    ) -> Result<ReplayBatch, ReplicaError> {
        let (range_start, range_end) = target_range(target);
        let start = match self.cursors.get(&target) {
            Some(cursor) => {
                let mut after = cursor.clone();
                after.push(0);
                after
            }
            None => range_start,
        };
        let page = store.scan(&start, &range_end, self.limits.replay_batch_max)?;
        if page.len() < self.limits.replay_batch_max {
            self.cursors.remove(&target);
        } else if let Some((last, _)) = page.last() {
            self.cursors.insert(target, last.clone());
        }
        let mut batch = ReplayBatch::default();
        for (stored_key, value) in page {
            let size = stored_key.len() + value.len();
            let decoded = decode_hint(&value);
            let user_key =
                parse_hint_key(&stored_key).map(|(_, _, key)| Bytes::copy_from_slice(key));
            match (decoded, user_key) {
                (Ok((created, state)), Some(key)) => {
                    if now_micros.saturating_sub(created) > self.limits.age_max_micros {
                        store.write(&stored_key, None, Durability::Buffered)?;
                        self.account(target, size, 0);
                        batch.expired += 1;
                    } else {
                        batch.hints.push(HintToReplay {
                            key,
                            state,
                            digest: digest(&value),
                        });
                    }
                }
                _ => {
                    store.write(&stored_key, None, Durability::Buffered)?;
                    self.account(target, size, 0);
                    batch.corrupt += 1;
                }
            }
        }
        Ok(batch)
    }

    /// The target stored the hint with `hint_digest`: delete it if it is
    /// still exactly that. Returns whether it was deleted.
    pub fn acknowledge(
        &mut self,
        store: &mut impl Store,
        target: NodeId,
        partition: Partition,
        key: &[u8],
        hint_digest: u64,
    ) -> Result<bool, ReplicaError> {
        let stored_key = hint_key(target, partition, key);
        let Some(value) = store.read(&stored_key)? else {
            return Ok(false);
        };
        if digest(&value) != hint_digest {
            return Ok(false);
        }
        store.write(&stored_key, None, Durability::Buffered)?;
        self.account(target, stored_key.len() + value.len(), 0);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Actor;
    use crate::siblings::SiblingValue;
    use crate::store::MemStore;
    use crate::version_vector::VersionVector;

    fn limits(bytes_per_target_max: u64) -> HintLimits {
        HintLimits {
            bytes_per_target_max,
            age_max_micros: 1_000_000,
            replay_batch_max: 2,
        }
    }

    fn state(node: u64, text: &'static str) -> KeyState {
        let mut state = KeyState::default();
        let actor = Actor {
            node: NodeId(node),
            epoch: 1,
        };
        state.coordinate_write(
            actor,
            &VersionVector::default(),
            SiblingValue::Value(Bytes::from_static(text.as_bytes())),
            1,
        );
        state
    }

    #[test]
    fn hint_is_kept_apart_from_data_and_merged_per_key() {
        let mut store = MemStore::new();
        let mut hints = Hints::load(&mut store, limits(1 << 20)).unwrap();
        let target = NodeId(7);
        assert_eq!(
            hints
                .store(
                    &mut store,
                    target,
                    Partition(3),
                    b"k",
                    &state(1, "a"),
                    0,
                    Durability::Buffered
                )
                .unwrap(),
            HintOutcome::Stored
        );
        assert_eq!(
            hints
                .store(
                    &mut store,
                    target,
                    Partition(3),
                    b"k",
                    &state(2, "b"),
                    0,
                    Durability::Buffered
                )
                .unwrap(),
            HintOutcome::Stored
        );
        assert_eq!(store.len(), 1);
        let held = hints.read(&mut store, target, Partition(3), b"k").unwrap();
        assert_eq!(held.sibling_count(), 2);
        assert!(store.scan(&[0x00], &[0x01], 10).unwrap().is_empty());
    }

    #[test]
    fn hint_over_the_byte_bound_is_dropped_and_nothing_changes() {
        let mut store = MemStore::new();
        let mut hints = Hints::load(&mut store, limits(1 << 20)).unwrap();
        hints
            .store(
                &mut store,
                NodeId(7),
                Partition(0),
                b"a",
                &state(1, "a"),
                0,
                Durability::Buffered,
            )
            .unwrap();
        let one_hint = hints.bytes(NodeId(7));
        let mut hints = Hints::load(&mut store, limits(one_hint + 1)).unwrap();
        assert_eq!(hints.bytes(NodeId(7)), one_hint);
        let outcome = hints
            .store(
                &mut store,
                NodeId(7),
                Partition(0),
                b"b",
                &state(1, "b"),
                0,
                Durability::Buffered,
            )
            .unwrap();
        assert_eq!(outcome, HintOutcome::Dropped);
        assert_eq!(hints.bytes(NodeId(7)), one_hint);
        assert_eq!(store.len(), 1);
        // Another target has its own bound.
        let outcome = hints
            .store(
                &mut store,
                NodeId(8),
                Partition(0),
                b"b",
                &state(1, "b"),
                0,
                Durability::Buffered,
            )
            .unwrap();
        assert_eq!(outcome, HintOutcome::Stored);
    }

    #[test]
    fn hint_is_deleted_only_when_the_acknowledged_content_is_current() {
        let mut store = MemStore::new();
        let mut hints = Hints::load(&mut store, limits(1 << 20)).unwrap();
        let target = NodeId(7);
        hints
            .store(
                &mut store,
                target,
                Partition(0),
                b"k",
                &state(1, "a"),
                0,
                Durability::Buffered,
            )
            .unwrap();
        let batch = hints.replay_batch(&mut store, target, 10).unwrap();
        assert_eq!(batch.hints.len(), 1);
        let sent = batch.hints[0].digest;
        // Updated while the replay was in flight: the old acknowledgement must not delete it.
        hints
            .store(
                &mut store,
                target,
                Partition(0),
                b"k",
                &state(2, "b"),
                20,
                Durability::Buffered,
            )
            .unwrap();
        assert!(
            !hints
                .acknowledge(&mut store, target, Partition(0), b"k", sent)
                .unwrap()
        );
        let batch = hints.replay_batch(&mut store, target, 30).unwrap();
        assert!(
            hints
                .acknowledge(
                    &mut store,
                    target,
                    Partition(0),
                    b"k",
                    batch.hints[0].digest
                )
                .unwrap()
        );
        assert_eq!(hints.bytes(target), 0);
        assert!(store.is_empty());
        assert!(hints.targets().is_empty());
    }

    #[test]
    fn merging_a_new_write_into_an_old_hint_restarts_its_age() {
        let mut store = MemStore::new();
        let mut hints = Hints::load(&mut store, limits(1 << 20)).unwrap();
        hints
            .store(
                &mut store,
                NodeId(7),
                Partition(0),
                b"k",
                &state(1, "a"),
                0,
                Durability::Buffered,
            )
            .unwrap();
        hints
            .store(
                &mut store,
                NodeId(7),
                Partition(0),
                b"k",
                &state(2, "b"),
                1_500_000,
                Durability::Buffered,
            )
            .unwrap();
        let batch = hints
            .replay_batch(&mut store, NodeId(7), 2_000_000)
            .unwrap();
        assert_eq!(batch.expired, 0);
        assert_eq!(batch.hints.len(), 1);
    }

    #[test]
    fn expired_hints_are_dropped_and_counted() {
        let mut store = MemStore::new();
        let mut hints = Hints::load(&mut store, limits(1 << 20)).unwrap();
        hints
            .store(
                &mut store,
                NodeId(7),
                Partition(0),
                b"k",
                &state(1, "a"),
                0,
                Durability::Buffered,
            )
            .unwrap();
        let batch = hints
            .replay_batch(&mut store, NodeId(7), 2_000_000)
            .unwrap();
        assert_eq!(batch.expired, 1);
        assert!(batch.hints.is_empty());
        assert_eq!(hints.bytes(NodeId(7)), 0);
    }

    #[test]
    fn corrupt_hint_is_dropped_and_counted_not_a_panic() {
        let mut store = MemStore::new();
        store
            .write(
                &hint_key(NodeId(7), Partition(0), b"k"),
                Some(b"bad"),
                Durability::Buffered,
            )
            .unwrap();
        let mut hints = Hints::load(&mut store, limits(1 << 20)).unwrap();
        assert!(hints.bytes(NodeId(7)) > 0);
        let batch = hints.replay_batch(&mut store, NodeId(7), 0).unwrap();
        assert_eq!(batch.corrupt, 1);
        assert_eq!(hints.bytes(NodeId(7)), 0);
    }

    #[test]
    fn replay_rounds_resume_after_the_last_sent_hint_and_wrap() {
        let mut store = MemStore::new();
        let mut hints = Hints::load(&mut store, limits(1 << 20)).unwrap();
        for key in [b"a", b"b", b"c"] {
            hints
                .store(
                    &mut store,
                    NodeId(7),
                    Partition(0),
                    key,
                    &state(1, "v"),
                    0,
                    Durability::Buffered,
                )
                .unwrap();
        }
        let keys = |batch: ReplayBatch| {
            batch
                .hints
                .into_iter()
                .map(|hint| hint.key)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(hints.replay_batch(&mut store, NodeId(7), 0).unwrap()),
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
        assert_eq!(
            keys(hints.replay_batch(&mut store, NodeId(7), 0).unwrap()),
            vec![Bytes::from_static(b"c")]
        );
        assert_eq!(
            keys(hints.replay_batch(&mut store, NodeId(7), 0).unwrap()).len(),
            2
        );
    }

    #[test]
    fn accounting_survives_a_restart() {
        let mut store = MemStore::new();
        let mut hints = Hints::load(&mut store, limits(1 << 20)).unwrap();
        hints
            .store(
                &mut store,
                NodeId(7),
                Partition(0),
                b"k",
                &state(1, "a"),
                0,
                Durability::Buffered,
            )
            .unwrap();
        hints
            .store(
                &mut store,
                NodeId(u64::MAX),
                Partition(0),
                b"k",
                &state(1, "a"),
                0,
                Durability::Buffered,
            )
            .unwrap();
        let reloaded = Hints::load(&mut store, limits(1 << 20)).unwrap();
        assert_eq!(reloaded.bytes(NodeId(7)), hints.bytes(NodeId(7)));
        assert_eq!(
            reloaded.bytes(NodeId(u64::MAX)),
            hints.bytes(NodeId(u64::MAX))
        );
        assert_eq!(reloaded.targets(), vec![NodeId(7), NodeId(u64::MAX)]);
    }
}
