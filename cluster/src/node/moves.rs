//! The node's side of ownership moves (`crate::transition` decides what
//! moves): its steps in the ring, the pulls of partitions moving to it, and
//! the answers to other nodes' pulls.
//!
//! A new owner pulls a partition from every committed primary, so that it
//! ends with the union of what they hold (a write acknowledged by any `w` of
//! them is in it). It pulls the whole partition from one of them — a
//! departing one if there is one — and then, from each of the others, only
//! the key states that differ: the source sends digests of its states, and
//! the new owner asks for the keys whose digest differs from its own. So a
//! move sends about one copy of the partition plus a digest per key and
//! source, not one copy per source. It still reads every source's copy, and
//! the new owner reads its own to compare: each step is charged to the
//! background budget for the states it read or merged, not for the digests
//! that crossed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{BackgroundWork, Node, states_bytes};
use crate::anti_entropy::{self, BUCKETS, Tracked};
use crate::id::{NodeId, Partition};
use crate::message::{Message, Output};
use crate::replica;
use crate::ring::MemberState;
use crate::store::{Durability, Store};
use crate::transition::{self, Layout};

/// Most pulls of moving partitions in flight at once.
const PULLS_IN_FLIGHT_MAX: usize = 4;

/// How long an unanswered pull request waits before it is asked again.
const PULL_RETRY: Duration = Duration::from_secs(1);

/// How often pulls are looked at while any is under way.
const PULL_TICK: Duration = Duration::from_millis(50);

/// How long a partition pulled in full waits for others before the moves
/// are recorded in the ring together: each record is a ring change that
/// every node makes durable and gossips (once per move, it was 150–200
/// changes per join, each an fsync on every node's loop). A move's commit
/// waits this much longer at most.
pub(super) const MOVES_RECORD_WAIT: Duration = Duration::from_secs(1);

/// Bytes of one key state's digest on the wire.
const DIGEST_BYTES: usize = 8;

/// One pull of a moving partition from one source.
#[derive(Debug, Default)]
pub(super) struct Pull {
    /// Whole states (the first source) or digests, then differing states.
    digests: bool,
    /// The first user key not yet received.
    cursor: Bytes,
    /// Received up to the partition's end.
    done: bool,
    /// When the request for `cursor` was sent, if it is unanswered.
    asked_at: Option<Instant>,
    /// With digests: the keys asked for after a range's digests, and where
    /// that range ends.
    asked_keys: Option<(Vec<Bytes>, Option<Bytes>)>,
}

#[cfg(test)]
impl Pull {
    /// A digest pull from the partition's start, asked just now.
    pub(super) fn digests_asked(now: Instant) -> Pull {
        Pull {
            digests: true,
            cursor: Bytes::new(),
            done: false,
            asked_at: Some(now),
            asked_keys: None,
        }
    }
}

impl Node {
    /// The ring changed: take this node's steps in it, recompute the layout,
    /// and start or drop pulls.
    pub(super) fn ring_changed(&mut self, now: Instant) {
        let (count, replicas) = (self.config.partition_count, self.config.replication_factor);
        let mut changed = false;
        // Each step raises the ring (a version, a mark, a commit); a handful
        // is the most one ring can need. A node that has yet to learn its
        // cluster's ring takes none: its ring of itself alone would record
        // an assignment of every partition to it, which gossip would merge
        // into the cluster's — where a version tied with the cluster's can
        // win the merge (the simulator's founders record theirs at 1).
        let steps = if self.ring_learnt() { 8 } else { 0 };
        for _ in 0..steps {
            match transition::ring_step(&self.ring, self.id, count, replicas) {
                Some(next) => {
                    self.ring.merge(&next);
                    changed = true;
                }
                None => break,
            }
        }
        let layout = Layout::new(&self.ring, count, replicas);
        self.placement = Some(layout.effective().clone());
        if layout.id() != self.pulls_version {
            self.pulls.clear();
            self.moves_unrecorded.clear();
            self.next_moves_record = None;
            self.pulls_version = layout.id();
        }
        let mut wanted = BTreeMap::new();
        let mut finished = Vec::new();
        for item in layout.moves() {
            if item.to != self.id || item.done {
                continue;
            }
            let target = layout.target().primaries(item.partition);
            let mut sources: Vec<NodeId> = item
                .sources
                .iter()
                .copied()
                .filter(|source| *source != self.id)
                .collect();
            if sources.is_empty() {
                // Every committed holder is gone: nothing to pull.
                finished.push(item.partition);
            }
            // The whole partition from a departing source if there is one
            // (it is the one whose data would otherwise leave the group).
            sources.sort_by_key(|source| (target.contains(source), *source));
            for (index, source) in sources.into_iter().enumerate() {
                wanted.insert((item.partition, source), index > 0);
            }
        }
        self.pulls.retain(|key, _| wanted.contains_key(key));
        for (key, digests) in wanted {
            self.pulls.entry(key).or_insert_with(|| Pull {
                digests,
                ..Pull::default()
            });
        }
        self.metrics.moves_pulling = self.pulls.values().filter(|pull| !pull.done).count() as u64;
        if self.pulls.values().any(|pull| !pull.done) && self.next_pull.is_none() {
            self.next_pull = Some(now);
        }
        self.layout = Some(layout);
        let mut completed = false;
        for partition in finished {
            completed |= self
                .ring
                .complete_move(self.pulls_version, partition.0, self.id);
        }
        if changed || completed {
            self.outputs.push_back(Output::Ring(self.ring.clone()));
        }
        if completed {
            // Bounded: a move completes once.
            self.ring_changed(now);
        }
        self.schedule_clearing(now);
    }

    /// The pulls under way, in words (for debugging).
    pub fn pulls_summary(&self) -> String {
        self.pulls
            .iter()
            .filter(|(_, pull)| !pull.done)
            .map(|((partition, source), pull)| {
                format!(
                    "{}<-{source}@{}:{:?}",
                    partition.0,
                    pull.cursor.len(),
                    pull.asked_at.is_some()
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Progress of the moves of the current assignment.
    pub fn moves_status(&self) -> crate::protocol::MovesStatus {
        let Some(layout) = self.layout.as_ref() else {
            return crate::protocol::MovesStatus::default();
        };
        crate::protocol::MovesStatus {
            assignment_version: layout.version(),
            total: layout.moves().len(),
            done: layout.moves().iter().filter(|item| item.done).count(),
            pulling_here: self.metrics.moves_pulling,
        }
    }

    /// The members a write to `partition` goes to: the effective primaries,
    /// then, while the partition moves, the other group's.
    pub(super) fn write_set(&self, partition: Partition) -> Vec<NodeId> {
        let mut set = self
            .placement
            .as_ref()
            .map(|placement| placement.primaries(partition).to_vec())
            .unwrap_or_default();
        if let Some((old, new)) = self
            .layout
            .as_ref()
            .and_then(|layout| layout.write_groups(partition))
        {
            for node in old.iter().chain(new) {
                if !set.contains(node) {
                    set.push(*node);
                }
            }
        }
        set
    }

    /// Asks sources for the next step of every pull that is ready, within
    /// the in-flight bound and the anti-entropy byte budget (pulls and
    /// exchanges share it). Digest pulls of a partition wait until its whole
    /// pull is done, so that most keys are already here to compare.
    pub(super) fn pull_tick(&mut self, now: Instant) {
        self.next_pull = None;
        if self.pulls.values().all(|pull| pull.done) {
            return;
        }
        self.next_pull = Some(now + PULL_TICK);
        let ready: BTreeSet<Partition> = self
            .layout
            .as_ref()
            .map(|layout| {
                layout
                    .moves()
                    .iter()
                    .filter(|item| item.to == self.id && item.ready)
                    .map(|item| item.partition)
                    .collect()
            })
            .unwrap_or_default();
        let whole_done: BTreeSet<Partition> = self
            .pulls
            .iter()
            .filter(|(_, pull)| !pull.digests && pull.done)
            .map(|((partition, _), _)| *partition)
            .collect();
        let waiting = |pull: &Pull| pull.asked_at.is_some_and(|at| now < at + PULL_RETRY);
        let mut in_flight = self.pulls.values().filter(|pull| waiting(pull)).count();
        let version = self.pulls_version.0;
        let mut requests = Vec::new();
        for ((partition, source), pull) in &mut self.pulls {
            if in_flight >= PULLS_IN_FLIGHT_MAX {
                break;
            }
            let blocked = pull.digests && !whole_done.contains(partition);
            if pull.done || waiting(pull) || blocked || !ready.contains(partition) {
                continue;
            }
            pull.asked_at = Some(now);
            in_flight += 1;
            let message = match &pull.asked_keys {
                Some((keys, _)) => Message::PullKeys {
                    partition: partition.0,
                    version,
                    keys: keys.clone(),
                },
                None => Message::PullStates {
                    partition: partition.0,
                    version,
                    from: pull.cursor.clone(),
                    digests: pull.digests,
                },
            };
            requests.push((*source, *partition, message));
        }
        for (source, partition, message) in requests {
            if !self.ae_may_send(now) {
                // Out of budget: forget the ask, so the next tick sends it.
                if let Some(pull) = self.pulls.get_mut(&(partition, source)) {
                    pull.asked_at = None;
                }
                continue;
            }
            self.send(source, message);
        }
    }

    /// Whether `from` may pull from this node now: a member of the ring
    /// that is not removed, while this node's own background budget (set by
    /// its own foreground latency) is not too deep in debt and its
    /// background work does not hold still (paused, or probing). A refused
    /// ask is asked again by the puller a second later.
    fn may_pull(&mut self, now: Instant, from: NodeId) -> bool {
        let member = self
            .ring
            .get(from)
            .is_some_and(|entry| entry.state != MemberState::Removed);
        if !member {
            self.metrics.malformed_messages += 1;
            return false;
        }
        if self.background_held() {
            self.metrics.move_asks_deferred += 1;
            return false;
        }
        // Answers may take the budget into debt down to two messages' worth,
        // not further: anti-entropy, which waits for a positive budget, can
        // then never starve a pull.
        if self.config.anti_entropy_bytes_per_second > 0 {
            self.ae_refill(now);
            let floor = -2.0 * self.config.anti_entropy_bytes_max as f64;
            if self.ae_budget < floor {
                self.metrics.move_asks_deferred += 1;
                return false;
            }
        }
        true
    }

    /// A new owner asks for this node's states (or their digests) of a
    /// moving partition from a key on.
    pub(super) fn serve_pull(
        &mut self,
        now: Instant,
        from: NodeId,
        (partition, version): (u32, u64),
        range_from: Bytes,
        digests: bool,
        store: &mut impl Store,
    ) {
        let Some(partition) = self.ae_partition(partition) else {
            return;
        };
        if !self.may_pull(now, from) {
            return;
        }
        if range_from.len() > self.config.key_size_max_bytes {
            self.metrics.malformed_messages += 1;
            return;
        }
        let every_bucket: Vec<u16> = (0..BUCKETS as u16).collect();
        let found = match anti_entropy::states_in_range(
            store,
            partition,
            &every_bucket,
            &range_from,
            None,
            self.config.anti_entropy_bytes_max,
            self.config.anti_entropy_build_keys_max,
        ) {
            Ok(found) => found,
            Err(_) => {
                self.metrics.store_failures += 1;
                return;
            }
        };
        self.metrics.move_keys_sent += found.states.len() as u64;
        // Charged for the states read, whether they or their digests are
        // sent: the scan is the work (as for exchanges' digests). Digests
        // priced at their own size, ~30 times less, let the digest steps
        // of a move scan its other sources at thirty times the rate.
        let read = found.read;
        let states = found
            .states
            .into_iter()
            .map(|(key, state)| {
                let value = if digests {
                    Bytes::copy_from_slice(&anti_entropy::digest(&key, &state).to_be_bytes())
                } else {
                    Bytes::from(state)
                };
                (Bytes::from(key), value)
            })
            .collect::<Vec<(Bytes, Bytes)>>();
        self.spend_background(BackgroundWork::MoveServe, read);
        self.send(
            from,
            Message::PullReply {
                partition: partition.0,
                version,
                from: range_from,
                until: found.until.map(Bytes::from),
                states,
                digests,
            },
        );
    }

    /// A new owner asks for this node's states of named keys (those whose
    /// digests differed).
    pub(super) fn serve_pull_keys(
        &mut self,
        now: Instant,
        from: NodeId,
        (partition, version): (u32, u64),
        keys: Vec<Bytes>,
        store: &mut impl Store,
    ) {
        let Some(partition) = self.ae_partition(partition) else {
            return;
        };
        if !self.may_pull(now, from) {
            return;
        }
        // The keys came from one range of digests, itself cut at
        // `anti_entropy_bytes_max` of whole states: no more key bytes than that.
        let key_bytes: usize = keys.iter().map(Bytes::len).sum();
        if key_bytes > self.config.anti_entropy_bytes_max + self.config.key_size_max_bytes {
            self.metrics.malformed_messages += 1;
            return;
        }
        let keys: Vec<Bytes> = keys
            .into_iter()
            .filter(|key| self.key_is_valid(key) && self.partitioner.partition_of(key) == partition)
            .collect();
        let Some(states) = self.stored_states(partition, keys, store) else {
            return;
        };
        self.metrics.move_keys_sent += states.len() as u64;
        self.spend_background(BackgroundWork::MoveServe, states_bytes(&states));
        self.send(
            from,
            Message::PullKeysReply {
                partition: partition.0,
                version,
                states,
            },
        );
    }

    /// Merges pulled states of `partition` (as read repair merges) whose
    /// keys `in_place` accepts. Returns the bytes taken, or `None` when the
    /// store failed (the step is asked again).
    fn merge_pulled<S: Store>(
        &mut self,
        partition: Partition,
        states: &[(Bytes, Bytes)],
        in_place: impl Fn(&[u8]) -> bool,
        store: &mut Tracked<'_, S>,
    ) -> Option<usize> {
        let mut bytes = 0;
        for (key, encoded) in states {
            if !self.key_is_valid(key)
                || self.partitioner.partition_of(key) != partition
                || !in_place(key)
            {
                self.metrics.malformed_messages += 1;
                continue;
            }
            let Some(state) = self.decode_received(encoded) else {
                continue;
            };
            bytes += key.len() + encoded.len();
            if self
                .apply_data(partition, key, &state, Durability::Buffered, store)
                .is_err()
            {
                self.metrics.store_failures += 1;
                return None;
            }
        }
        self.metrics.move_keys_received += states.len() as u64;
        Some(bytes)
    }

    /// A range of a pull: whole states are merged; digests are compared
    /// with this node's states and the differing keys asked for.
    pub(super) fn receive_pull_reply<S: Store>(
        &mut self,
        now: Instant,
        (source, partition, version): (NodeId, u32, u64),
        (range_from, until): (Bytes, Option<Bytes>),
        (states, digests): (Vec<(Bytes, Bytes)>, bool),
        store: &mut Tracked<'_, S>,
    ) {
        let Some(partition) = self.ae_partition(partition) else {
            return;
        };
        if version != self.pulls_version.0 {
            return;
        }
        let Some(pull) = self.pulls.get(&(partition, source)) else {
            return;
        };
        // A late or duplicated answer for a range already taken.
        if pull.done || pull.cursor != range_from || pull.asked_keys.is_some() {
            return;
        }
        if pull.digests != digests {
            self.metrics.malformed_messages += 1;
            return;
        }
        let in_range = |key: &[u8]| anti_entropy::in_range(key, &range_from, until.as_deref());
        let received = states_bytes(&states);
        self.spend_pulled(received);
        let next = until
            .clone()
            .filter(|next| anti_entropy::is_after(next, &range_from));
        if !digests {
            if self
                .merge_pulled(partition, &states, in_range, store)
                .is_none()
            {
                self.forget_ask(partition, source);
                return;
            }
            self.advance_pull(now, (partition, source), next);
            return;
        }
        // Digests: ask for the keys whose state here differs. The states
        // read to compare are charged too (see `serve_pull`).
        let mut differing = Vec::new();
        let mut read = 0;
        for (key, digest) in &states {
            if !self.key_is_valid(key)
                || self.partitioner.partition_of(key) != partition
                || !in_range(key)
                || digest.len() != DIGEST_BYTES
            {
                self.metrics.malformed_messages += 1;
                continue;
            }
            let (inner, _) = store.parts();
            let ours = match inner.read(&replica::data_key(partition, key)) {
                Ok(ours) => ours,
                Err(_) => {
                    self.metrics.store_failures += 1;
                    self.forget_ask(partition, source);
                    return;
                }
            };
            read += key.len() + ours.as_ref().map_or(0, Vec::len);
            let same = ours.is_some_and(|ours| {
                anti_entropy::digest(key, &ours).to_be_bytes()[..] == digest[..]
            });
            if !same {
                differing.push(key.clone());
            }
        }
        self.spend_background(BackgroundWork::MoveCompare, read);
        if differing.is_empty() {
            self.advance_pull(now, (partition, source), next);
            return;
        }
        if let Some(pull) = self.pulls.get_mut(&(partition, source)) {
            pull.asked_keys = Some((differing, next));
            pull.asked_at = None;
        }
        self.pull_tick(now);
    }

    /// The states of the keys whose digests differed: merged, and the pull
    /// goes on after the range they came from.
    pub(super) fn receive_pull_keys_reply<S: Store>(
        &mut self,
        now: Instant,
        (source, partition, version): (NodeId, u32, u64),
        states: Vec<(Bytes, Bytes)>,
        store: &mut Tracked<'_, S>,
    ) {
        let Some(partition) = self.ae_partition(partition) else {
            return;
        };
        if version != self.pulls_version.0 {
            return;
        }
        let Some((asked, next)) = self
            .pulls
            .get(&(partition, source))
            .and_then(|pull| pull.asked_keys.clone())
        else {
            return;
        };
        let received = states_bytes(&states);
        self.spend_pulled(received);
        let was_asked = |key: &[u8]| asked.iter().any(|asked| asked[..] == *key);
        if self
            .merge_pulled(partition, &states, was_asked, store)
            .is_none()
        {
            self.forget_ask(partition, source);
            return;
        }
        if let Some(pull) = self.pulls.get_mut(&(partition, source)) {
            pull.asked_keys = None;
        }
        self.advance_pull(now, (partition, source), next);
    }

    fn spend_pulled(&mut self, bytes: usize) {
        self.metrics.move_bytes_received += bytes as u64;
        self.spend_background(BackgroundWork::MoveMerge, bytes);
    }

    /// The step was not taken (a store failure): it is asked again.
    fn forget_ask(&mut self, partition: Partition, source: NodeId) {
        if let Some(pull) = self.pulls.get_mut(&(partition, source)) {
            pull.asked_at = None;
        }
    }

    /// A pull's range is taken: it goes on from `next`, or, at the
    /// partition's end, is done. When every source of the partition is
    /// done, the move waits to be recorded in the ring with the others
    /// done meanwhile ([`Node::record_moves`]).
    fn advance_pull(
        &mut self,
        now: Instant,
        (partition, source): (Partition, NodeId),
        next: Option<Bytes>,
    ) {
        let partition_done = next.is_none()
            && self
                .pulls
                .iter()
                .filter(|((moving, from), _)| *moving == partition && *from != source)
                .all(|(_, pull)| pull.done);
        if let Some(pull) = self.pulls.get_mut(&(partition, source)) {
            pull.asked_at = None;
            match next {
                Some(next) => pull.cursor = next,
                None => pull.done = true,
            }
        }
        self.metrics.moves_pulling = self.pulls.values().filter(|pull| !pull.done).count() as u64;
        if partition_done {
            self.moves_unrecorded.push(partition);
            // The last pull does not wait for others.
            let wait = if self.pulls.values().all(|pull| pull.done) {
                Duration::ZERO
            } else {
                MOVES_RECORD_WAIT
            };
            let when = now + wait;
            self.next_moves_record = Some(self.next_moves_record.map_or(when, |at| at.min(when)));
        }
        self.pull_tick(now);
    }

    /// Records the moves pulled in full since the last record: one durable
    /// write makes everything pulled durable, then one ring change records
    /// them all. If the write fails, it is tried again a second later.
    pub(super) fn record_moves<S: Store>(&mut self, now: Instant, store: &mut Tracked<'_, S>) {
        self.next_moves_record = None;
        if self.moves_unrecorded.is_empty() {
            return;
        }
        let (inner, _) = store.parts();
        if inner
            .write(
                &replica::moves_key(),
                Some(&self.pulls_version.0.to_be_bytes()),
                Durability::Durable,
            )
            .is_err()
        {
            self.metrics.store_failures += 1;
            self.next_moves_record = Some(now + MOVES_RECORD_WAIT);
            return;
        }
        let mut completed = false;
        for partition in std::mem::take(&mut self.moves_unrecorded) {
            if self
                .ring
                .complete_move(self.pulls_version, partition.0, self.id)
            {
                self.metrics.moves_completed += 1;
                completed = true;
            }
        }
        if completed {
            self.metrics.move_records += 1;
            self.outputs.push_back(Output::Ring(self.ring.clone()));
            self.ring_changed(now);
        }
    }
}
