//! Anti-entropy exchanges (Dynamo §4.7), the node's side: which partition
//! and peer to compare, and the steps that sync them.
//! ([`crate::anti_entropy`] keeps the trees and finds the states.)
//!
//! An exchange of a partition between an initiator I and a responder R:
//! 1. I sends `AeRoot`; R answers `AeLeaves` when the roots differ.
//! 2. I sends `AeDigests`: the digests of its states of the differing
//!    buckets over a range `[from, until)` (in the stored order, bucket
//!    then key: [`anti_entropy::position`]), cut after
//!    `anti_entropy_bytes_max` bytes of states.
//! 3. R answers `AeStates` (`answer: true`) over `[from, until')`, where
//!    `until' <= until` also stops at R's own size limit: R's states that I
//!    lacks or holds differently, and the keys `wanted` that I holds and R
//!    lacks or holds differently.
//! 4. I merges them (as read repair merges), sends `AeStates` with its own,
//!    now merged, states of the wanted keys, and goes on at 2 from `until'`.
//!
//! So a state crosses only where the replicas differ, whichever side
//! starts: a wiped replica is refilled with about one copy of its data
//! rather than its peers' copies plus its own echo.
//!
//! A node takes part in one exchange per partition at a time (an exchange
//! idle for [`EXCHANGE_IDLE`] is over), so two peers do not both send it
//! the same states. When two nodes start an exchange with each other at
//! once, the one with the lower id leads it.
//!
//! Every step that sends states or digests waits for the byte budget that
//! admission control sets; steps waiting are bounded ([`AE_DEFERRED_MAX`]).
//! A step is charged for the work it does, not for what crosses the wire:
//! the states it read (digests cost what was scanned to make them) and the
//! states it merged ([`Node::spend_background`]; pulls are charged alike).
//! A step dropped past the bound ends the exchange at this node (the peer's
//! side ends when idle), and a later exchange finds the difference again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;

use super::{BackgroundWork, Node, states_bytes};
use crate::anti_entropy::{self, BUCKETS, Tracked};
use crate::id::{NodeId, Partition};
use crate::message::Message;
use crate::replica;
use crate::siblings::KeyState;
use crate::store::{Durability, Store};

/// Most anti-entropy steps waiting for budget.
const AE_DEFERRED_MAX: usize = 64;

/// How often waiting steps look again while background work is paused.
const PAUSED_RECHECK: Duration = Duration::from_millis(250);

/// An exchange with no step for this long is over (a lost message, a peer
/// gone); its partition is free for another.
pub(super) const EXCHANGE_IDLE: Duration = Duration::from_secs(10);

/// How long an initiator's kept digests ([`Ahead`]) stay usable: long
/// enough for an answer at the budget's pace, short enough that few went
/// stale.
const AHEAD_FRESH: Duration = Duration::from_secs(10);

/// The exchange a partition is in at this node.
#[derive(Debug, Clone)]
pub(super) struct Exchange {
    /// The other side.
    pub(super) peer: NodeId,
    /// Whether this node leads it (sends the digests).
    pub(super) initiator: bool,
    /// The last step.
    pub(super) at: Instant,
    /// The initiator's last digests, kept for the part of their range the
    /// answer did not cover.
    pub(super) ahead: Option<Ahead>,
}

/// Keys and the digests of their states, in the stored order.
type Digests = Vec<(Bytes, u64)>;

/// Digests an initiator computed over `[from, until)` of `buckets`. The
/// responder answers only as far as its own size limit reaches, and where
/// the initiator's states are sparser than the responder's (a replica
/// being refilled) that is a small part of what the initiator scanned: the
/// next step reuses these digests instead of scanning the rest again.
/// (Rescanned, the refilling replica's digest scans read as much as it
/// merged.) A digest gone stale by a later local write only makes the
/// responder send a state or ask for one it did not need: merges are
/// joins, so nothing is lost.
#[derive(Debug, Clone)]
pub(super) struct Ahead {
    buckets: Vec<u16>,
    from: Bytes,
    until: Option<Bytes>,
    digests: Digests,
    at: Instant,
}

/// One step of an exchange, sent when the byte budget allows.
#[derive(Debug)]
pub(super) enum AeStep {
    /// Initiator: the digests of this node's states from `from` on.
    Digests {
        peer: NodeId,
        partition: Partition,
        buckets: Vec<u16>,
        from: Bytes,
    },
    /// Responder: this node's states that differ from the initiator's
    /// `digests` of `range`, and the keys wanted from it.
    Answer {
        peer: NodeId,
        partition: Partition,
        buckets: Vec<u16>,
        range: (Bytes, Option<Bytes>),
        digests: BTreeMap<Bytes, u64>,
    },
    /// Initiator: this node's states of the keys the responder wanted.
    Push {
        peer: NodeId,
        partition: Partition,
        buckets: Vec<u16>,
        range: (Bytes, Option<Bytes>),
        keys: Vec<Bytes>,
    },
}

impl AeStep {
    fn peer_and_partition(&self) -> (NodeId, Partition) {
        match self {
            AeStep::Digests {
                peer, partition, ..
            }
            | AeStep::Answer {
                peer, partition, ..
            }
            | AeStep::Push {
                peer, partition, ..
            } => (*peer, *partition),
        }
    }
}

impl Node {
    /// A key state received from a peer, decoded within the size limit; a
    /// malformed one is counted and `None`.
    pub(super) fn decode_received(&mut self, encoded: &[u8]) -> Option<KeyState> {
        match KeyState::decode_with_limit(encoded, self.config.key_state_size_max_bytes) {
            Ok(state) => Some(state),
            Err(_) => {
                self.metrics.malformed_messages += 1;
                None
            }
        }
    }

    /// Whether this node and `peer` are both primaries of `partition`.
    pub(super) fn shares_partition(&self, partition: Partition, peer: NodeId) -> bool {
        self.placement.as_ref().is_some_and(|placement| {
            let primaries = placement.primaries(partition);
            primaries.contains(&self.id) && primaries.contains(&peer)
        })
    }

    /// A partition number from a peer, when it names one.
    pub(super) fn ae_partition(&mut self, partition: u32) -> Option<Partition> {
        if partition >= self.config.partition_count {
            self.metrics.malformed_messages += 1;
            return None;
        }
        Some(Partition(partition))
    }

    /// The partition's tree when built; else, if the budget allows, its
    /// build a bounded step further (building is background work: it reads
    /// the partition, so it waits for the budget and is charged for what
    /// it read, whichever message asked for the tree).
    pub(super) fn ae_tree<S: Store>(
        &mut self,
        now: Instant,
        partition: Partition,
        store: &mut Tracked<'_, S>,
    ) -> Option<(u64, Vec<u64>)> {
        let (_, trees) = store.parts();
        if let Some(tree) = trees.built(partition) {
            return Some((tree.root(), tree.leaves().to_vec()));
        }
        if !self.ae_may_send(now) {
            return None;
        }
        let (keys_max, bytes_max) = (
            self.config.anti_entropy_build_keys_max,
            self.config.anti_entropy_bytes_max,
        );
        let (inner, trees) = store.parts();
        match trees.build_step(partition, inner, keys_max, bytes_max) {
            Ok(step) => {
                self.spend_background(BackgroundWork::TreeBuild, step.read);
                let (_, trees) = store.parts();
                trees
                    .built(partition)
                    .map(|tree| (tree.root(), tree.leaves().to_vec()))
            }
            Err(_) => {
                self.metrics.store_failures += 1;
                None
            }
        }
    }

    /// One round: the next `anti_entropy_partitions_per_round` (partition,
    /// peer) pairs in round-robin order whose trees are built get this
    /// node's roots. A tree still being built takes a step and ends the
    /// round, keeping its turn.
    pub(super) fn anti_entropy_round<S: Store>(
        &mut self,
        now: Instant,
        store: &mut Tracked<'_, S>,
    ) {
        // Jittered (±25 %), so that nodes' exchanges do not fall into step.
        let interval = self.config.anti_entropy_interval;
        let jitter = self.rng.random_range(0.75..1.25);
        self.next_anti_entropy = Some(now + interval.mul_f64(jitter));
        // Saturated: finish what is under way before starting more.
        if !self.ae_deferred.is_empty() || !self.ae_may_send(now) || self.ae_saturated(now) {
            return;
        }
        let count = u64::from(self.config.partition_count);
        let mut sent = 0;
        let mut looked = 0;
        while sent < self.config.anti_entropy_partitions_per_round && looked < count {
            let Some(placement) = self.placement.as_ref() else {
                return;
            };
            let cursor = self.anti_entropy_cursor;
            self.anti_entropy_cursor = self.anti_entropy_cursor.wrapping_add(1);
            looked += 1;
            let partition = Partition((cursor % count) as u32);
            let primaries = placement.primaries(partition);
            if !primaries.contains(&self.id) || self.ae_exchange_busy(partition, None, now) {
                continue;
            }
            let peers: Vec<NodeId> = primaries
                .iter()
                .copied()
                .filter(|peer| *peer != self.id && self.is_alive(*peer))
                .collect();
            if peers.is_empty() {
                continue;
            }
            // Successive cycles over the partitions take successive peers.
            let peer = peers[((cursor / count) % peers.len() as u64) as usize];
            match self.ae_tree(now, partition, store) {
                Some((root, _)) => {
                    sent += 1;
                    self.metrics.anti_entropy_rounds += 1;
                    self.send(
                        peer,
                        Message::AeRoot {
                            partition: partition.0,
                            root,
                        },
                    );
                }
                // Still building: this pair keeps its turn.
                None => {
                    self.anti_entropy_cursor = cursor;
                    return;
                }
            }
        }
    }

    pub(super) fn receive_ae_root<S: Store>(
        &mut self,
        now: Instant,
        from: NodeId,
        partition: u32,
        root: u64,
        store: &mut Tracked<'_, S>,
    ) {
        let Some(partition) = self.ae_partition(partition) else {
            return;
        };
        if !self.shares_partition(partition, from)
            || self.ae_exchange_busy(partition, Some(from), now)
            || self.ae_saturated(now)
        {
            return;
        }
        // An unbuilt tree cannot answer yet; the peer asks again later.
        let Some((ours, leaves)) = self.ae_tree(now, partition, store) else {
            return;
        };
        if ours != root {
            // Taken as responder unless this node already leads an
            // exchange of the partition with the same peer (both started
            // at once: `receive_ae_leaves` settles which one goes on).
            self.ae_exchanges
                .entry(partition)
                .and_modify(|exchange| exchange.at = now)
                .or_insert(Exchange {
                    peer: from,
                    initiator: false,
                    at: now,
                    ahead: None,
                });
            self.send(
                from,
                Message::AeLeaves {
                    partition: partition.0,
                    leaves,
                },
            );
        }
    }

    /// Refills the anti-entropy byte budget for the time passed.
    pub(super) fn ae_refill(&mut self, now: Instant) {
        let rate = self.admission.rate();
        let capacity = self.config.anti_entropy_bytes_max as f64 * 2.0;
        if let Some(last) = self.ae_budget_at {
            let earned = now.saturating_duration_since(last).as_secs_f64() * rate;
            self.ae_budget = (self.ae_budget + earned).min(capacity);
        } else {
            self.ae_budget = capacity;
        }
        self.ae_budget_at = Some(now);
    }

    /// Background work of `bytes` was done (read, sent or merged): spent
    /// from the budget and told to admission control.
    pub(super) fn spend_background(&mut self, work: BackgroundWork, bytes: usize) {
        self.metrics.background_bytes_by_work[work as usize] += bytes as u64;
        if self.config.anti_entropy_bytes_per_second > 0 {
            self.ae_budget -= bytes as f64;
        }
        self.admission.spent(bytes as f64);
    }

    /// Whether anti-entropy may send now (always, without a rate, unless
    /// background work holds still: paused, or admission control probing).
    pub(super) fn ae_may_send(&mut self, now: Instant) -> bool {
        if self.background_held() {
            return false;
        }
        if self.config.anti_entropy_bytes_per_second == 0 {
            return true;
        }
        self.ae_refill(now);
        self.ae_budget > 0.0
    }

    pub(super) fn schedule_ae_deferred(&mut self, now: Instant) {
        if self.ae_deferred.is_empty() {
            self.next_ae_deferred = None;
            return;
        }
        if self.background_held() {
            self.next_ae_deferred = Some(now + PAUSED_RECHECK);
            return;
        }
        // Until the budget is positive again, and at least a millisecond:
        // a wait of zero would run the timer again at the same instant.
        let rate = self.admission.rate().max(1.0);
        let wait = (1.0 - self.ae_budget).max(1.0) / rate;
        self.next_ae_deferred = Some(now + Duration::from_secs_f64(wait.clamp(0.001, 10.0)));
    }

    /// Sends the queued range steps the budget allows.
    pub(super) fn ae_drain_deferred(&mut self, now: Instant, store: &mut impl Store) {
        while !self.ae_deferred.is_empty() && self.ae_may_send(now) {
            if let Some(step) = self.ae_deferred.pop_front() {
                self.ae_send(now, step, store);
            }
        }
        self.schedule_ae_deferred(now);
    }

    /// Whether `partition` is in a live exchange with another node than
    /// `peer` (with `None`: with any node).
    pub(super) fn ae_exchange_busy(
        &self,
        partition: Partition,
        peer: Option<NodeId>,
        now: Instant,
    ) -> bool {
        self.ae_exchanges.get(&partition).is_some_and(|exchange| {
            now.saturating_duration_since(exchange.at) < EXCHANGE_IDLE
                && peer.is_none_or(|peer| peer != exchange.peer)
        })
    }

    /// Whether this node takes part in as many exchanges as it may: each
    /// has at most two steps waiting for budget at a time, so with at most
    /// half of [`AE_DEFERRED_MAX`] exchanges no step is ever dropped.
    fn ae_saturated(&self, now: Instant) -> bool {
        let live = self
            .ae_exchanges
            .values()
            .filter(|exchange| now.saturating_duration_since(exchange.at) < EXCHANGE_IDLE)
            .count();
        live >= AE_DEFERRED_MAX / 2 || self.ae_deferred.len() >= AE_DEFERRED_MAX / 2
    }

    /// The digests this node, leading the partition's exchange, kept from
    /// its last scan, from `from` on, with the end of their range: when
    /// they are fresh and cover `from` in the same buckets.
    fn ae_ahead(
        &self,
        now: Instant,
        partition: Partition,
        buckets: &[u16],
        from: &Bytes,
    ) -> Option<(Digests, Option<Bytes>)> {
        let ahead = self
            .ae_exchanges
            .get(&partition)
            .filter(|exchange| exchange.initiator)?
            .ahead
            .as_ref()?;
        let fresh = now.saturating_duration_since(ahead.at) < AHEAD_FRESH;
        if !fresh
            || ahead.buckets != buckets
            || !anti_entropy::in_range(from, &ahead.from, ahead.until.as_deref())
        {
            return None;
        }
        let digests = ahead
            .digests
            .iter()
            .filter(|(key, _)| !anti_entropy::is_after(from, key))
            .cloned()
            .collect();
        Some((digests, ahead.until.clone()))
    }

    /// Keeps the digests of a scan for the exchange this node leads of
    /// `partition`, after dropping those of exchanges gone idle: so at most
    /// the live exchanges' (half of [`AE_DEFERRED_MAX`]) are held.
    fn ae_keep_ahead(&mut self, now: Instant, partition: Partition, ahead: Ahead) {
        for exchange in self.ae_exchanges.values_mut() {
            if now.saturating_duration_since(exchange.at) >= EXCHANGE_IDLE {
                exchange.ahead = None;
            }
        }
        if let Some(exchange) = self.ae_exchanges.get_mut(&partition)
            && exchange.initiator
        {
            exchange.ahead = Some(ahead);
        }
    }

    /// The exchange of `partition` with `peer` took a step.
    fn ae_exchange_touch(&mut self, partition: Partition, peer: NodeId, now: Instant) {
        if let Some(exchange) = self.ae_exchanges.get_mut(&partition)
            && exchange.peer == peer
        {
            exchange.at = now;
        }
    }

    /// The exchange of `partition` with `peer` is over here.
    fn ae_exchange_end(&mut self, partition: Partition, peer: NodeId) {
        if self
            .ae_exchanges
            .get(&partition)
            .is_some_and(|exchange| exchange.peer == peer)
        {
            self.ae_exchanges.remove(&partition);
        }
    }

    /// The responder's leaves: the initiator walks the differing buckets.
    pub(super) fn receive_ae_leaves<S: Store>(
        &mut self,
        now: Instant,
        from: NodeId,
        partition: u32,
        leaves: Vec<u64>,
        store: &mut Tracked<'_, S>,
    ) {
        let Some(partition) = self.ae_partition(partition) else {
            return;
        };
        if leaves.len() != BUCKETS {
            self.metrics.malformed_messages += 1;
            return;
        }
        if !self.shares_partition(partition, from)
            || self.ae_exchange_busy(partition, Some(from), now)
            || self.ae_saturated(now)
        {
            return;
        }
        // Both started at once and each answered the other's root as
        // responder: the lower id leads, the other waits for its digests.
        let crossed = self
            .ae_exchanges
            .get(&partition)
            .is_some_and(|exchange| !exchange.initiator && exchange.peer == from);
        if crossed && self.ae_exchange_busy(partition, None, now) && self.id > from {
            return;
        }
        let Some((_, ours)) = self.ae_tree(now, partition, store) else {
            return;
        };
        let differing = anti_entropy::differing_buckets(&ours, &leaves);
        if differing.is_empty() {
            return;
        }
        self.metrics.anti_entropy_trees_differed += 1;
        self.ae_exchanges.insert(
            partition,
            Exchange {
                peer: from,
                initiator: true,
                at: now,
                ahead: None,
            },
        );
        let step = AeStep::Digests {
            peer: from,
            partition,
            buckets: differing,
            from: Bytes::new(),
        };
        self.ae_send_or_defer(now, step, store);
    }

    /// Checks a peer's exchange fields; the partition when they hold.
    fn ae_checked(
        &mut self,
        peer: NodeId,
        partition: u32,
        buckets: &[u16],
        range: (&Bytes, Option<&Bytes>),
    ) -> Option<Partition> {
        let partition = self.ae_partition(partition)?;
        let (from, until) = range;
        if buckets.is_empty()
            || buckets.iter().any(|bucket| *bucket as usize >= BUCKETS)
            || from.len() > self.config.key_size_max_bytes
            || until.is_some_and(|until| until.len() > self.config.key_size_max_bytes)
        {
            self.metrics.malformed_messages += 1;
            return None;
        }
        self.shares_partition(partition, peer).then_some(partition)
    }

    /// Whether a peer's key belongs where the exchange says; counts it
    /// malformed when not.
    fn ae_key_in_place(
        &mut self,
        partition: Partition,
        buckets: &[u16],
        (from, until): (&[u8], Option<&[u8]>),
        key: &[u8],
    ) -> bool {
        let in_place = self.key_is_valid(key)
            && self.partitioner.partition_of(key) == partition
            && buckets.contains(&anti_entropy::bucket_of(key))
            && anti_entropy::in_range(key, from, until);
        if !in_place {
            self.metrics.malformed_messages += 1;
        }
        in_place
    }

    /// The initiator's digests of a range: the responder answers.
    pub(super) fn receive_ae_digests<S: Store>(
        &mut self,
        now: Instant,
        (peer, partition, buckets): (NodeId, u32, Vec<u16>),
        (from, until): (Bytes, Option<Bytes>),
        digests: Vec<(Bytes, u64)>,
        store: &mut Tracked<'_, S>,
    ) {
        let Some(partition) = self.ae_checked(peer, partition, &buckets, (&from, until.as_ref()))
        else {
            return;
        };
        if self.ae_exchange_busy(partition, Some(peer), now) {
            return;
        }
        self.ae_exchanges.insert(
            partition,
            Exchange {
                peer,
                initiator: false,
                at: now,
                ahead: None,
            },
        );
        let mut checked = BTreeMap::new();
        for (key, digest) in digests {
            if self.ae_key_in_place(partition, &buckets, (&from, until.as_deref()), &key) {
                checked.insert(key, digest);
            }
        }
        let step = AeStep::Answer {
            peer,
            partition,
            buckets,
            range: (from, until),
            digests: checked,
        };
        self.ae_send_or_defer(now, step, store);
    }

    /// States of a range: merged here. An answer's wanted keys are pushed
    /// back and the initiator goes on with the rest of the partition.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn receive_ae_states<S: Store>(
        &mut self,
        now: Instant,
        (peer, partition, buckets): (NodeId, u32, Vec<u16>),
        (from, until): (Bytes, Option<Bytes>),
        states: Vec<(Bytes, Bytes)>,
        wanted: Vec<Bytes>,
        answer: bool,
        store: &mut Tracked<'_, S>,
    ) {
        let Some(partition) = self.ae_checked(peer, partition, &buckets, (&from, until.as_ref()))
        else {
            return;
        };
        let range = (&from[..], until.as_deref());
        for (key, encoded) in &states {
            if !self.ae_key_in_place(partition, &buckets, range, key) {
                continue;
            }
            let Some(state) = self.decode_received(encoded) else {
                continue;
            };
            if self
                .apply_data(partition, key, &state, Durability::Buffered, store)
                .is_err()
            {
                self.metrics.store_failures += 1;
            }
        }
        // Merging is work too (a read and a write per state), charged here
        // as pulls charge theirs: a refilling replica's budget slows the
        // exchanges it takes part in.
        self.spend_background(BackgroundWork::AeMerge, states_bytes(&states));
        if !answer {
            self.ae_exchange_touch(partition, peer, now);
            return;
        }
        // Only the exchange this node leads goes on; a stray answer's
        // states were merged and nothing more is done.
        let leading = self
            .ae_exchanges
            .get(&partition)
            .is_some_and(|exchange| exchange.initiator && exchange.peer == peer);
        if !leading {
            return;
        }
        self.ae_exchange_touch(partition, peer, now);
        let keys: Vec<Bytes> = wanted
            .into_iter()
            .filter(|key| self.ae_key_in_place(partition, &buckets, range, key))
            .collect();
        let next = until
            .clone()
            .filter(|next| anti_entropy::is_after(next, &from));
        if !keys.is_empty() {
            let push = AeStep::Push {
                peer,
                partition,
                buckets: buckets.clone(),
                range: (from, until),
                keys,
            };
            self.ae_send_or_defer(now, push, store);
        }
        match next {
            Some(next) => {
                let step = AeStep::Digests {
                    peer,
                    partition,
                    buckets,
                    from: next,
                };
                self.ae_send_or_defer(now, step, store);
            }
            None => self.ae_exchange_end(partition, peer),
        }
    }

    /// Takes a step now if the byte budget allows, else queues it (bounded:
    /// past the bound the step is dropped, and a later exchange finds the
    /// difference again).
    fn ae_send_or_defer(&mut self, now: Instant, step: AeStep, store: &mut impl Store) {
        if self.ae_deferred.is_empty() && self.ae_may_send(now) {
            self.ae_send(now, step, store);
            return;
        }
        if self.ae_deferred.len() < AE_DEFERRED_MAX {
            self.ae_deferred.push_back(step);
        } else {
            // Dropped: the exchange is over here, so that a later round
            // can start the partition again.
            let (peer, partition) = step.peer_and_partition();
            self.ae_exchange_end(partition, peer);
            self.metrics.anti_entropy_steps_dropped += 1;
        }
        self.schedule_ae_deferred(now);
    }

    /// The partition's states in a range of `buckets`, cut at the size
    /// limit; `None` when the store failed.
    fn ae_states_in_range(
        &mut self,
        partition: Partition,
        buckets: &[u16],
        (from, until): (&[u8], Option<&[u8]>),
        store: &mut impl Store,
    ) -> Option<anti_entropy::RangeStates> {
        match anti_entropy::states_in_range(
            store,
            partition,
            buckets,
            from,
            until,
            self.config.anti_entropy_bytes_max,
            self.config.anti_entropy_build_keys_max,
        ) {
            Ok(found) => Some(found),
            Err(_) => {
                self.metrics.store_failures += 1;
                None
            }
        }
    }

    /// This node's stored states of `keys` (those it holds) in `partition`;
    /// `None` when the store failed. Shared with the answers to pulls.
    pub(super) fn stored_states(
        &mut self,
        partition: Partition,
        keys: impl IntoIterator<Item = Bytes>,
        store: &mut impl Store,
    ) -> Option<Vec<(Bytes, Bytes)>> {
        let mut states = Vec::new();
        for key in keys {
            match store.read(&replica::data_key(partition, &key)) {
                Ok(Some(state)) => states.push((key, Bytes::from(state))),
                Ok(None) => {}
                Err(_) => {
                    self.metrics.store_failures += 1;
                    return None;
                }
            }
        }
        Some(states)
    }

    /// Takes one step of an exchange, charging what it sends to the budget.
    fn ae_send(&mut self, now: Instant, step: AeStep, store: &mut impl Store) {
        let (peer, partition) = step.peer_and_partition();
        if !self.shares_partition(partition, peer) {
            return;
        }
        self.ae_exchange_touch(partition, peer, now);
        let (work, spent) = match step {
            AeStep::Digests {
                peer,
                partition,
                buckets,
                from,
            } => {
                let (digests, until, spent) = match self.ae_ahead(now, partition, &buckets, &from) {
                    // Computed by the last step: no scan, only the digests.
                    Some((digests, until)) => {
                        let spent = digests.iter().map(|(key, _)| key.len() + 8).sum();
                        (digests, until, spent)
                    }
                    None => {
                        let Some(found) =
                            self.ae_states_in_range(partition, &buckets, (&from, None), store)
                        else {
                            return;
                        };
                        // Charged for the states read, not the digests
                        // sent: the scan is the work, and digests priced at
                        // their own size let exchanges walk ~30 times
                        // faster than the budget meant (foreground p99
                        // during membership changes went 10 -> 57 ms).
                        let digests: Digests = found
                            .states
                            .into_iter()
                            .map(|(key, state)| {
                                let digest = anti_entropy::digest(&key, &state);
                                (Bytes::from(key), digest)
                            })
                            .collect();
                        let until = found.until.map(Bytes::from);
                        self.ae_keep_ahead(
                            now,
                            partition,
                            Ahead {
                                buckets: buckets.clone(),
                                from: from.clone(),
                                until: until.clone(),
                                digests: digests.clone(),
                                at: now,
                            },
                        );
                        (digests, until, found.read)
                    }
                };
                self.send(
                    peer,
                    Message::AeDigests {
                        partition: partition.0,
                        buckets,
                        from,
                        until,
                        digests,
                    },
                );
                (BackgroundWork::AeDigests, spent)
            }
            AeStep::Answer {
                peer,
                partition,
                buckets,
                range: (from, until),
                digests,
            } => {
                let Some(found) =
                    self.ae_states_in_range(partition, &buckets, (&from, until.as_deref()), store)
                else {
                    return;
                };
                // Where this side's scan stopped bounds what the answer
                // covers; the initiator goes on from there.
                let end = found.until.map(Bytes::from);
                // Charged for the states read (see the digests step).
                let scanned = found.read;
                let mut ours = BTreeMap::new();
                let mut states = Vec::new();
                for (key, state) in found.states {
                    let key = Bytes::from(key);
                    let digest = anti_entropy::digest(&key, &state);
                    ours.insert(key.clone(), digest);
                    if digests.get(&key) != Some(&digest) {
                        states.push((key, Bytes::from(state)));
                    }
                }
                let wanted: Vec<Bytes> = digests
                    .into_iter()
                    .filter(|(key, digest)| {
                        end.as_ref()
                            .is_none_or(|end| anti_entropy::is_after(end, key))
                            && ours.get(key) != Some(digest)
                    })
                    .map(|(key, _)| key)
                    .collect();
                self.metrics.anti_entropy_keys_sent += states.len() as u64;
                let spent = scanned + wanted.iter().map(Bytes::len).sum::<usize>();
                if end.is_none() {
                    // The last range: what follows is the initiator's push.
                    self.ae_exchange_end(partition, peer);
                }
                self.send(
                    peer,
                    Message::AeStates {
                        partition: partition.0,
                        buckets,
                        from,
                        until: end,
                        states,
                        wanted,
                        answer: true,
                    },
                );
                (BackgroundWork::AeAnswer, spent)
            }
            AeStep::Push {
                peer,
                partition,
                buckets,
                range: (from, until),
                keys,
            } => {
                let Some(states) = self.stored_states(partition, keys, store) else {
                    return;
                };
                self.metrics.anti_entropy_keys_sent += states.len() as u64;
                let spent = states_bytes(&states);
                self.send(
                    peer,
                    Message::AeStates {
                        partition: partition.0,
                        buckets,
                        from,
                        until,
                        states,
                        wanted: Vec::new(),
                        answer: false,
                    },
                );
                (BackgroundWork::AePush, spent)
            }
        };
        self.spend_background(work, spent);
    }
}
