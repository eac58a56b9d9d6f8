//! Tombstone reaping: a deleted key's tombstone is removed from the store
//! once it is older than `tombstone_grace`, no partition moves, and every
//! primary holds exactly the same tombstone.
//!
//! The first primary of a partition sweeps its keys in bounded steps, as
//! background work (paced by the budget, held still with the rest). A
//! node whose last whole pass found no tombstone, and that has written
//! none since (a delete it coordinated, or a deleted state merged from a
//! peer), idles instead of reading its data again: a store without
//! deletes is read once per start, not forever at an eighth of the rate
//! (and not at all when the node started without data). For a
//! tombstone old enough it asks the other primaries whether they hold the
//! same state (`ReapQuery` with the state's digest). When every one says yes
//! it sends `Reap` and deletes its own copy; each primary deletes only a
//! state whose digest is still the one named, so a write that arrived since
//! survives. A primary that did not answer, or holds anything else, leaves
//! the tombstone for a later sweep.
//!
//! Why nothing deleted comes back: every primary held the tombstone, which
//! covers every older write of the key; a hint holding an older write cannot
//! exist any more, since hints are dropped after `hint_age_max`, which the
//! grace exceeds (checked by `Config::validate`); no move was under way,
//! so no node about to receive the partition holds something older; and
//! every member had deleted its copies of partitions that moved away from it
//! (`super::stale`), so no later move back can merge an older value in.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{BackgroundWork, Node};
use crate::anti_entropy::{self, Tracked};
use crate::id::{NodeId, Partition};
use crate::message::Message;
use crate::replica::{self, DATA_PREFIX};
use crate::siblings::KeyState;
use crate::store::{Durability, Store};

/// How often a sweep step runs.
pub(super) const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// The share of the background rate the sweep may read. It reads every
/// stored state to find the few tombstones, so at a low rate it must leave
/// the rest to exchanges and moves: reading 256 keys a second (256 KB of
/// 1 KB values) it took all of admission control's 128 KiB/s floor, and a
/// refill under that control crawled (docs/bench.md, session 16). At an
/// eighth of the floor, a pass over 1 GB takes about 17 hours, within the
/// day of `tombstone_grace` by default.
const REAP_SHARE: f64 = 1.0 / 8.0;

/// States the sweep's first scan of a step reads; later scans are sized
/// from them.
const REAP_SCAN_FIRST: usize = 8;

/// Most reaps waiting for answers at once.
const REAPS_PENDING_MAX: usize = 256;

/// How long a reap waits for answers before it is given up.
const REAP_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A reap waiting for the other primaries' answers.
#[derive(Debug)]
pub(super) struct PendingReap {
    partition: Partition,
    digest: u64,
    waiting: BTreeSet<NodeId>,
    asked_at: Instant,
}

impl Node {
    /// One sweep step: the next keys of the store, in order; tombstones old
    /// enough whose partition this node leads are proposed for reaping.
    pub(super) fn reap_round<S: Store>(&mut self, now: Instant, store: &mut Tracked<'_, S>) {
        self.next_reap = Some(now + REAP_INTERVAL);
        self.reaps
            .retain(|_, pending| now < pending.asked_at + REAP_ANSWER_TIMEOUT);
        // Every member must have deleted its copies of partitions that moved
        // away (`super::stale`), or one could bring a reaped key back.
        if self.moving() || self.config.tombstone_grace.is_zero() || !self.ring.everyone_cleared() {
            return;
        }
        // A node whose last whole pass found no tombstone, and that wrote
        // none since, has none: it does not read its data again until one
        // is written (a delete, or a tombstone merged from a peer).
        if self.reap_idle {
            if self.reap_pass_written == self.tombstones_written {
                return;
            }
            self.reap_idle = false;
            self.reap_cursor.clear();
            self.reap_pass_found = false;
            self.reap_pass_written = self.tombstones_written;
        }
        // The sweep reads the store: background work, which waits for the
        // budget (and holds still with the rest) and is charged.
        if !self.ae_may_send(now) {
            return;
        }
        let grace = u64::try_from(self.config.tombstone_grace.as_micros()).unwrap_or(u64::MAX);
        let Some(horizon) = self.wall_micros(now).checked_sub(grace) else {
            return;
        };
        let start = if self.reap_cursor.is_empty() {
            vec![DATA_PREFIX]
        } else {
            self.reap_cursor.clone()
        };
        let Some(scan) = self.reap_scan(start, store) else {
            self.metrics.store_failures += 1;
            return;
        };
        self.spend_background(BackgroundWork::TombstoneSweep, scan.read);
        // The next step starts after the last key; a sweep that reached the
        // end of the data starts again from the beginning.
        let pass_ended = scan.ended;
        self.reap_cursor = match scan.entries.last() {
            Some((last, _)) if !scan.ended => {
                let mut next = last.clone();
                next.push(0);
                next
            }
            _ => Vec::new(),
        };
        for (stored_key, encoded) in scan.entries {
            if self.reaps.len() >= REAPS_PENDING_MAX {
                // The rest is left unlooked at: the next pass looks.
                self.reap_pass_found = true;
                break;
            }
            let Some((partition, key)) = replica::parse_data_key(&stored_key) else {
                continue;
            };
            let Ok(state) =
                KeyState::decode_with_limit(&encoded, self.config.key_state_size_max_bytes)
            else {
                continue;
            };
            if state.is_deleted() {
                self.reap_pass_found = true;
            }
            let newest = state.siblings.iter().map(|sibling| sibling.timestamp).max();
            let old_tombstone = state.is_deleted() && newest.is_none_or(|at| at < horizon);
            if !old_tombstone {
                continue;
            }
            let primaries = match self.primaries(partition) {
                Ok(primaries) => primaries,
                Err(_) => continue,
            };
            // The partition's first primary leads; every primary must be up.
            if primaries.first() != Some(&self.id)
                || !primaries.iter().all(|node| self.is_alive(*node))
            {
                continue;
            }
            let key = Bytes::copy_from_slice(key);
            if self.reaps.contains_key(&key) {
                continue;
            }
            let digest = anti_entropy::digest(&key, &encoded);
            let others: BTreeSet<NodeId> = primaries
                .iter()
                .copied()
                .filter(|node| *node != self.id)
                .collect();
            if others.is_empty() {
                self.reap_local(partition, &key, digest, store);
                continue;
            }
            for other in &others {
                self.send(
                    *other,
                    Message::ReapQuery {
                        key: key.clone(),
                        digest,
                    },
                );
            }
            self.reaps.insert(
                key,
                PendingReap {
                    partition,
                    digest,
                    waiting: others,
                    asked_at: now,
                },
            );
        }
        if pass_ended {
            self.reap_idle =
                !self.reap_pass_found && self.reap_pass_written == self.tombstones_written;
            self.reap_pass_found = false;
            self.reap_pass_written = self.tombstones_written;
        }
    }

    /// The next keys of the sweep from `start`: at most
    /// `tombstone_reap_keys_per_round`, and about [`REAP_SHARE`] of a
    /// second of the background rate in bytes. `None` when the store
    /// failed.
    fn reap_scan<S: Store>(
        &self,
        start: Vec<u8>,
        store: &mut Tracked<'_, S>,
    ) -> Option<anti_entropy::BoundedScan> {
        let allowance = if self.config.anti_entropy_bytes_per_second == 0 {
            usize::MAX
        } else {
            (self.admission.rate() * REAP_SHARE * REAP_INTERVAL.as_secs_f64()) as usize
        };
        let (inner, _) = store.parts();
        anti_entropy::scan_bounded(
            inner,
            start,
            &[DATA_PREFIX + 1],
            (self.config.tombstone_reap_keys_per_round, allowance),
            REAP_SCAN_FIRST,
        )
        .ok()
    }

    /// Whether any partition moves (reaping waits until none does).
    pub(super) fn moving(&self) -> bool {
        self.layout
            .as_ref()
            .is_some_and(|layout| !layout.moves().is_empty())
    }

    /// This node's stored state of `key`, as its digest (`None`: none).
    fn stored_digest<S: Store>(
        &mut self,
        partition: Partition,
        key: &[u8],
        store: &mut Tracked<'_, S>,
    ) -> Option<u64> {
        let (inner, _) = store.parts();
        match inner.read(&replica::data_key(partition, key)) {
            Ok(state) => state.map(|state| anti_entropy::digest(key, &state)),
            Err(_) => {
                self.metrics.store_failures += 1;
                None
            }
        }
    }

    /// Deletes this node's state of `key` if its digest is still `digest`.
    fn reap_local<S: Store>(
        &mut self,
        partition: Partition,
        key: &[u8],
        digest: u64,
        store: &mut Tracked<'_, S>,
    ) {
        if self.stored_digest(partition, key, store) != Some(digest) {
            return;
        }
        // Through the tracking store, so the partition's tree follows.
        match store.write(
            &replica::data_key(partition, key),
            None,
            Durability::Buffered,
        ) {
            Ok(()) => self.metrics.tombstones_reaped += 1,
            Err(_) => self.metrics.store_failures += 1,
        }
    }

    /// The leader asks whether this node holds the same tombstone.
    pub(super) fn receive_reap_query<S: Store>(
        &mut self,
        from: NodeId,
        (key, digest): (Bytes, u64),
        store: &mut Tracked<'_, S>,
    ) {
        if !self.key_is_valid(&key) {
            return;
        }
        let partition = self.partitioner.partition_of(&key);
        let same = self.stored_digest(partition, &key, store) == Some(digest);
        self.send(from, Message::ReapAnswer { key, digest, same });
    }

    /// A primary's answer: when every one holds the same tombstone, all
    /// delete it.
    pub(super) fn receive_reap_answer<S: Store>(
        &mut self,
        from: NodeId,
        (key, digest, same): (Bytes, u64, bool),
        store: &mut Tracked<'_, S>,
    ) {
        let Some(pending) = self.reaps.get_mut(&key) else {
            return;
        };
        if pending.digest != digest || !pending.waiting.contains(&from) {
            return;
        }
        if !same {
            self.reaps.remove(&key);
            return;
        }
        pending.waiting.remove(&from);
        if !pending.waiting.is_empty() {
            return;
        }
        let partition = pending.partition;
        self.reaps.remove(&key);
        if let Ok(primaries) = self.primaries(partition) {
            let me = self.id;
            for other in primaries.into_iter().filter(|node| *node != me) {
                self.send(
                    other,
                    Message::Reap {
                        key: key.clone(),
                        digest,
                    },
                );
            }
        }
        self.reap_local(partition, &key, digest, store);
    }

    /// The leader found every primary holding the tombstone: delete it here
    /// too, if it is still the same.
    pub(super) fn receive_reap<S: Store>(
        &mut self,
        from: NodeId,
        (key, digest): (Bytes, u64),
        store: &mut Tracked<'_, S>,
    ) {
        if !self.key_is_valid(&key) {
            return;
        }
        let partition = self.partitioner.partition_of(&key);
        // Only the partition's leader may ask, and only while nothing moves.
        let leader = self
            .primaries(partition)
            .is_ok_and(|primaries| primaries.first() == Some(&from));
        if !leader || self.moving() {
            self.metrics.malformed_messages += 1;
            return;
        }
        self.reap_local(partition, &key, digest, store);
    }
}
