//! Stale copies: once a membership change is committed, a node deletes what
//! it still holds of partitions it is no longer a primary of, then says so
//! in the ring ([`crate::ring::Ring::set_cleared`]).
//!
//! Why: such a copy is what the new owners pulled, frozen at the commit. It
//! is never read, but should the partition move back to this node later,
//! the pull would merge into it; and if a tombstone of the partition had
//! been reaped in between, the copy's older value of that key would come
//! back. So reaping waits until every member has cleared the current
//! assignment version (`Ring::everyone_cleared`), and clearing runs only
//! while nothing moves, so it never deletes what a pull or a write under a
//! move put here: every write acknowledged during a move reached `w` of the
//! committed primaries too, which is where a pull reads from.
//!
//! A write can still reach this node for a partition it does not own: a
//! coordinator that already knows of a newer change making this node an
//! owner again, a hint, a repair. Deleting it could drop one of a write
//! quorum's copies. So the sweep starts only after [`CLEAR_QUIET`] without
//! such a write, and starts over after one; a node that is written to as an
//! owner learns of the change long before that (the ring is gossiped), and
//! then stops clearing since the change moves partitions.
//!
//! The sweep goes partition by partition (a node's data is keyed by
//! partition first), skipping the ones this node is a primary of, and
//! deletes at most [`CLEAR_KEYS_PER_STEP`] keys a step. What a step reads is
//! charged to the background budget, as anti-entropy and pulls are.

use std::time::{Duration, Instant};

use super::{BackgroundWork, Node};
use crate::anti_entropy::{self, Tracked};
use crate::id::Partition;
use crate::replica;
use crate::store::{Durability, Store};

/// How often a clearing step runs while one is needed.
const CLEAR_INTERVAL: Duration = Duration::from_millis(100);

/// Most keys deleted by one step.
const CLEAR_KEYS_PER_STEP: usize = 256;

/// How long the sweep waits after a data write for a partition this node
/// does not own (and after the change that makes clearing needed).
const CLEAR_QUIET: Duration = Duration::from_secs(10);

/// Where a sweep of stale copies stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ClearSweep {
    /// The assignment version being cleared.
    version: u64,
    /// The partition under way, and the stored key to go on from in it.
    partition: u32,
    from: Vec<u8>,
    /// `Node::unowned_writes` when the sweep (re)started.
    unowned_writes: u64,
}

impl Node {
    /// Whether this node has to sweep: it is a member not removed, nothing
    /// moves, and either its mark is below the current assignment version
    /// or data of partitions it does not own arrived since its last sweep.
    pub(super) fn clearing_needed(&self) -> bool {
        let version = self.ring.assignment_version();
        let member = self
            .ring
            .get(self.id)
            .is_some_and(|entry| entry.state != crate::ring::MemberState::Removed);
        let behind =
            version > self.ring.cleared(self.id) || self.unowned_writes != self.unowned_swept;
        member && behind && self.layout.is_some() && !self.moving()
    }

    /// Arms the clearing timer when a sweep is needed (after ring changes).
    pub(super) fn schedule_clearing(&mut self, now: Instant) {
        if self.clearing_needed() && self.next_clear.is_none() {
            self.clear_sweep = Some(self.new_sweep(self.ring.assignment_version()));
            self.next_clear = Some(now + CLEAR_QUIET);
        }
    }

    /// One step of the sweep: deletes up to [`CLEAR_KEYS_PER_STEP`] keys of
    /// partitions this node is not a primary of; at the end of the last
    /// partition, marks the version cleared in the ring.
    pub(super) fn clear_step<S: Store>(&mut self, now: Instant, store: &mut Tracked<'_, S>) {
        self.next_clear = None;
        if !self.clearing_needed() {
            self.clear_sweep = None;
            return;
        }
        let version = self.ring.assignment_version();
        let mut sweep = match self.clear_sweep.take() {
            Some(sweep)
                if sweep.version == version && sweep.unowned_writes == self.unowned_writes =>
            {
                sweep
            }
            _ => {
                // A new version, or a write as to an owner since the last
                // step: start over once things have been quiet.
                self.clear_sweep = Some(self.new_sweep(version));
                self.next_clear = Some(now + CLEAR_QUIET);
                return;
            }
        };
        if !self.ae_may_send(now) {
            self.clear_later(now, sweep);
            return;
        }
        let mut budget = CLEAR_KEYS_PER_STEP;
        let mut read_bytes = 0;
        while sweep.partition < self.config.partition_count && budget > 0 {
            let partition = Partition(sweep.partition);
            let owned = self
                .layout
                .as_ref()
                .is_some_and(|layout| layout.current().primaries(partition).contains(&self.id));
            let end = replica::partition_end(partition);
            let entries = if owned {
                Vec::new()
            } else {
                let (inner, _) = store.parts();
                match inner.scan(&sweep.from, &end, budget) {
                    Ok(entries) => entries,
                    Err(_) => {
                        self.metrics.store_failures += 1;
                        self.clear_later(now, sweep);
                        return;
                    }
                }
            };
            let full = entries.len() >= budget;
            budget -= entries.len();
            read_bytes += super::states_bytes(&entries);
            for (stored_key, encoded) in &entries {
                let Some((_, key)) = replica::parse_data_key(stored_key) else {
                    continue;
                };
                let (inner, trees) = store.parts();
                if inner.write(stored_key, None, Durability::Buffered).is_err() {
                    self.metrics.store_failures += 1;
                    self.clear_later(now, sweep);
                    return;
                }
                trees.on_write(
                    partition,
                    key,
                    Some(anti_entropy::digest(key, encoded)),
                    None,
                );
                self.metrics.stale_keys_deleted += 1;
            }
            match entries.last() {
                Some((last, _)) if full => {
                    let mut next = last.clone();
                    next.push(0);
                    sweep.from = next;
                }
                _ => {
                    sweep.partition += 1;
                    sweep.from = end;
                }
            }
        }
        self.spend_background(BackgroundWork::StaleSweep, read_bytes);
        if sweep.partition < self.config.partition_count {
            self.clear_later(now, sweep);
            return;
        }
        // The deletes reach the disk before the ring says they were made.
        let (inner, _) = store.parts();
        if inner
            .write(
                &replica::cleared_key(),
                Some(&version.to_be_bytes()),
                Durability::Durable,
            )
            .is_err()
        {
            self.metrics.store_failures += 1;
            self.clear_later(now, sweep);
            return;
        }
        self.unowned_swept = sweep.unowned_writes;
        if self.ring.set_cleared(self.id, version) {
            self.outputs
                .push_back(crate::message::Output::Ring(self.ring.clone()));
        }
    }
}

impl Node {
    /// Keeps the sweep where it stands; the next step runs after
    /// [`CLEAR_INTERVAL`].
    fn clear_later(&mut self, now: Instant, sweep: ClearSweep) {
        self.clear_sweep = Some(sweep);
        self.next_clear = Some(now + CLEAR_INTERVAL);
    }

    fn new_sweep(&self, version: u64) -> ClearSweep {
        ClearSweep {
            version,
            partition: 0,
            from: replica::partition_start(Partition(0)),
            unowned_writes: self.unowned_writes,
        }
    }
}
