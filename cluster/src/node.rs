//! A Shoal node as one sans-IO state machine: it coordinates client requests
//! (Dynamo §4.5), serves as a replica, keeps and replays hints (§4.6) and
//! repairs on reads (§5). Inputs arrive through `handle_*` at a given instant,
//! outputs leave through [`Node::poll_output`], and [`Node::poll_timeout`]
//! says when [`Node::handle_timeout`] is next due. It never reads a clock,
//! touches a socket or spawns a thread; chance comes from a seeded PRNG.
//!
//! All control flow between the concepts lives here; the leaves
//! (`replica`, `hinted_handoff`, `read_repair`, `quorum`, `coordinator`)
//! compute and return values.
//!
//! Invariants: a client request is answered exactly once, at the latest at
//! its deadline (plus one forwarding hop); no dot is issued before the node's
//! epoch for this start is durably stored; the maps that grow with input
//! (operations in flight, remembered forward ids, liveness, outputs) are
//! bounded by the configuration; a malformed or unexpected peer message is
//! counted and dropped, never a panic.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::admission::Admission;
use crate::anti_entropy::{Tracked, Trees};
use crate::config::{Config, ConfigError};
use crate::coordinator::{
    ForwardOperation, Operation, Origin, ReadOperation, WriteOperation, next_fallback,
};
use crate::hinted_handoff::{HintLimits, HintOutcome, Hints};
use crate::id::{Actor, NodeId, Partition};
use crate::message::{
    Message, Output, ReadOptions, ReplicaOutcome, Request, RequestError, RequestId, Response,
    WriteOptions,
};
use crate::partitioner::Partitioner;
use crate::placement::Placement;
use crate::quorum::{QuorumOutcome, QuorumTracker};
use crate::replica::{self, ReplicaError, ReplicaLimits};
use crate::ring::Ring;
use crate::siblings::{KeyState, SiblingValue};
use crate::store::{Durability, Store};
use crate::transition::Layout;
use crate::version_vector::VersionVector;

/// What membership believes about a member. Only [`Liveness::Alive`] members
/// are sent requests and hint replays; the others are stood in for by fallbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Answering.
    Alive,
    /// Suspected down, not yet confirmed.
    Suspect,
    /// Confirmed down.
    Dead,
}

/// The kinds of background work, each charged to the one byte budget
/// (`Metrics::background_bytes_by_work` says where the budget went).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackgroundWork {
    /// Reading a partition to build its anti-entropy tree.
    TreeBuild,
    /// An exchange's initiator scanning its states to send their digests.
    AeDigests,
    /// An exchange's responder scanning its states to answer digests.
    AeAnswer,
    /// An exchange's initiator reading the states the responder wanted.
    AePush,
    /// Merging the states an exchange received.
    AeMerge,
    /// A move's source reading the states or digests a new owner pulls.
    MoveServe,
    /// A move's new owner reading its own states to compare with digests.
    MoveCompare,
    /// A move's new owner merging the states it pulled.
    MoveMerge,
    /// The sweep deleting copies of partitions that moved away.
    StaleSweep,
    /// The sweep looking for tombstones to reap.
    TombstoneSweep,
}

impl BackgroundWork {
    /// Every kind, in the order of `Metrics::background_bytes_by_work`.
    pub const ALL: [BackgroundWork; 10] = [
        BackgroundWork::TreeBuild,
        BackgroundWork::AeDigests,
        BackgroundWork::AeAnswer,
        BackgroundWork::AePush,
        BackgroundWork::AeMerge,
        BackgroundWork::MoveServe,
        BackgroundWork::MoveCompare,
        BackgroundWork::MoveMerge,
        BackgroundWork::StaleSweep,
        BackgroundWork::TombstoneSweep,
    ];

    /// The kind's name, as the `work` label of the exported counter.
    pub fn name(self) -> &'static str {
        match self {
            BackgroundWork::TreeBuild => "tree_build",
            BackgroundWork::AeDigests => "ae_digests",
            BackgroundWork::AeAnswer => "ae_answer",
            BackgroundWork::AePush => "ae_push",
            BackgroundWork::AeMerge => "ae_merge",
            BackgroundWork::MoveServe => "move_serve",
            BackgroundWork::MoveCompare => "move_compare",
            BackgroundWork::MoveMerge => "move_merge",
            BackgroundWork::StaleSweep => "stale_sweep",
            BackgroundWork::TombstoneSweep => "tombstone_sweep",
        }
    }
}

/// Counters a shell exports (Prometheus) and the simulator checks. Plain
/// fields, only ever incremented.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Client requests received.
    pub requests: u64,
    /// Requests forwarded to a primary.
    pub forwarded: u64,
    /// Gets coordinated here.
    pub gets_coordinated: u64,
    /// Puts and deletes coordinated here.
    pub writes_coordinated: u64,
    /// Requests answered with a quorum failure.
    pub quorum_failures: u64,
    /// Writes refused because they would leave too many siblings.
    pub sibling_limit_rejections: u64,
    /// Siblings returned by the gets coordinated here that reached their
    /// quorum, summed: over `gets_coordinated`, the mean a read returns.
    /// Growing siblings (blind writes that nobody resolves) show here
    /// before they show in latency.
    pub read_siblings: u64,
    /// Gets that returned more than one sibling.
    pub reads_with_siblings: u64,
    /// Requests refused as busy.
    pub busy_rejections: u64,
    /// Requests refused as invalid.
    pub invalid_requests: u64,
    /// Read repairs sent (one per stale replica).
    pub read_repairs: u64,
    /// Hints stored (new or merged) for other nodes.
    pub hints_stored: u64,
    /// Hints the target acknowledged, deleted here.
    pub hints_replayed: u64,
    /// Hints dropped because the target's hint storage was full.
    pub hints_dropped_full: u64,
    /// Hints dropped because they were older than the age bound.
    pub hints_dropped_expired: u64,
    /// Hints dropped because they failed their checks.
    pub hints_dropped_corrupt: u64,
    /// Store operations that failed.
    pub store_failures: u64,
    /// Peer messages dropped as malformed or unexpected.
    pub malformed_messages: u64,
    /// Duplicate forwarded requests dropped.
    pub duplicate_forwards: u64,
    /// Outgoing messages shed because the output queue was full.
    pub outputs_shed: u64,
    /// Anti-entropy exchanges started (a root sent).
    pub anti_entropy_rounds: u64,
    /// Exchanges whose trees differed (leaves compared).
    pub anti_entropy_trees_differed: u64,
    /// Key states sent by anti-entropy.
    pub anti_entropy_keys_sent: u64,
    /// Anti-entropy steps dropped because too many waited for budget.
    pub anti_entropy_steps_dropped: u64,
    /// Ownership moves to this node still pulling (partition, source) pairs.
    pub moves_pulling: u64,
    /// Moves this node finished and recorded in the ring.
    pub moves_completed: u64,
    /// Ring changes that recorded them (several moves each, when they finish
    /// within `MOVES_RECORD_WAIT` of each other).
    pub move_records: u64,
    /// Key states received by pulls.
    pub move_keys_received: u64,
    /// Bytes of key states received by pulls.
    pub move_bytes_received: u64,
    /// Bytes of background work done (states read to scan or compare,
    /// sent, or merged), as charged to the budget, by kind of work
    /// (indexed as [`BackgroundWork::ALL`]; summed by
    /// [`Metrics::background_bytes_spent`]).
    pub background_bytes_by_work: [u64; BackgroundWork::ALL.len()],
    /// The background byte rate admission control allows now.
    pub background_bytes_per_second: u64,
    /// Times admission control lowered the background rate (a step down
    /// or a halving).
    pub admission_throttles: u64,
    /// Probe intervals (background work held still) that taught admission
    /// control its baseline.
    pub admission_probes: u64,
    /// Admission control's baseline: foreground p99 without background
    /// work, in microseconds (0 until learnt).
    pub admission_baseline_p99_micros: u64,
    /// Foreground p99 of admission control's last interval with enough
    /// requests, in microseconds (0 before the first).
    pub admission_last_p99_micros: u64,
    /// Whether admission control's last judgement was of the latencies
    /// clients reported (else of the node's own measure); the baseline and
    /// last p99 above are of the same.
    pub admission_judged_by_clients: bool,
    /// Client requests that reported how long their client waited for its
    /// previous answer from this node.
    pub admission_client_reports: u64,
    /// Whether an operator paused this node's background work.
    pub background_paused: bool,
    /// Key states sent to pulling new owners.
    pub move_keys_sent: u64,
    /// Pull asks left unanswered because this node's background budget was
    /// spent (the puller asks again).
    pub move_asks_deferred: u64,
    /// Tombstones deleted by reaping.
    pub tombstones_reaped: u64,
    /// Keys deleted from copies of partitions that moved away.
    pub stale_keys_deleted: u64,
}

impl Metrics {
    /// Bytes of background work done, of every kind, as charged to the
    /// budget.
    pub fn background_bytes_spent(&self) -> u64 {
        self.background_bytes_by_work.iter().sum()
    }
}

/// What exists only once the node has started on its store.
#[derive(Debug)]
struct Started {
    actor: Actor,
    hints: Hints,
}

/// One timer: an operation's retry or deadline.
type Timer = (Instant, u64);

/// A Shoal node: coordinator, replica and hint keeper. See the module docs.
#[derive(Debug)]
pub struct Node {
    config: Config,
    id: NodeId,
    rng: ChaCha8Rng,
    partitioner: Partitioner,
    started: Option<Started>,
    placement: Option<Placement>,
    liveness: BTreeMap<NodeId, Liveness>,
    operations: BTreeMap<u64, Operation>,
    timers: BTreeSet<Timer>,
    /// Operation ids carry the epoch in their top bits, so that an answer
    /// addressed to an operation of an earlier life of this node can never
    /// be taken for one of this life (ids restart at every start).
    next_operation: u64,
    forwards_seen: VecDeque<(NodeId, u64)>,
    forwards_seen_set: BTreeSet<(NodeId, u64)>,
    next_replay: Option<Instant>,
    /// When to try starting again after a store failure at start.
    start_retry: Option<Instant>,
    outputs: VecDeque<Output>,
    metrics: Metrics,
    timestamp_last: u64,
    wall_clock_origin: Option<(Instant, u64)>,
    /// Anti-entropy: the partitions' hash trees, kept on every data write.
    trees: Trees,
    /// When the next anti-entropy exchange starts.
    next_anti_entropy: Option<Instant>,
    /// Round-robin position over (partition, peer) pairs.
    anti_entropy_cursor: u64,
    /// Bytes anti-entropy may still send now (negative: owed), and when it
    /// was last refilled at `anti_entropy_bytes_per_second`.
    ae_budget: f64,
    ae_budget_at: Option<Instant>,
    /// Range steps waiting for budget, oldest first.
    ae_deferred: VecDeque<exchange::AeStep>,
    /// The exchange each partition is in at this node, if any: one at a
    /// time, so that two peers do not both refill this node with the same
    /// states.
    ae_exchanges: BTreeMap<Partition, exchange::Exchange>,
    /// When the waiting steps may go.
    next_ae_deferred: Option<Instant>,
    /// The ring as this node knows it, and what moves under it.
    ring: Ring,
    layout: Option<Layout>,
    /// The pulls of partitions moving to this node, by (partition, source),
    /// under assignment `pulls_version`.
    pulls: BTreeMap<(Partition, NodeId), moves::Pull>,
    pulls_version: (u64, u64),
    /// When pulls are next looked at.
    next_pull: Option<Instant>,
    /// Partitions pulled in full under `pulls_version` whose moves are not
    /// yet recorded in the ring, and when they will be
    /// (`moves::MOVES_RECORD_WAIT`).
    moves_unrecorded: Vec<Partition>,
    next_moves_record: Option<Instant>,
    /// Sets the background byte rate from foreground latency.
    admission: Admission,
    /// The node was started to be one of a cluster (it has seeds): until
    /// its ring holds another member, its ring is its own guess, not the
    /// cluster's, and it coordinates no key request.
    expects_peers: bool,
    /// An operator paused this node's background work (anti-entropy,
    /// pulls it asks and serves, clearing moved-away copies).
    background_paused: bool,
    /// Tombstone reaping: where the sweep goes on, the reaps waiting for
    /// answers, and when the next sweep step runs.
    reap_cursor: Vec<u8>,
    /// Data writes of this life that left a key deleted (only tombstones):
    /// the sweep idles while none is written after a pass found none.
    tombstones_written: u64,
    /// The sweep's pass under way: whether it saw a tombstone, and
    /// `tombstones_written` when it started.
    reap_pass_found: bool,
    reap_pass_written: u64,
    /// The sweep idles: its last whole pass found no tombstone and none
    /// was written during it (it wakes when `tombstones_written` moves
    /// past `reap_pass_written`).
    reap_idle: bool,
    reaps: BTreeMap<Bytes, reaping::PendingReap>,
    next_reap: Option<Instant>,
    /// Clearing copies of partitions that moved away: the sweep under way
    /// and when its next step runs.
    clear_sweep: Option<stale::ClearSweep>,
    next_clear: Option<Instant>,
    /// Data writes received for partitions this node is not an owner of,
    /// and how many of them the last finished sweep started after.
    unowned_writes: u64,
    unowned_swept: u64,
}

/// Bytes of keys and states (or digests) in a message's list.
fn states_bytes<K: AsRef<[u8]>, V: AsRef<[u8]>>(states: &[(K, V)]) -> usize {
    states
        .iter()
        .map(|(key, value)| key.as_ref().len() + value.as_ref().len())
        .sum()
}

/// The answer of a node that has not yet learnt its cluster's ring.
fn not_joined() -> RequestError {
    RequestError::Unavailable(
        "joining: this node has not yet learnt the cluster's ring from its seeds".into(),
    )
}

impl Node {
    /// A node with identity `id`, its chance seeded by `seed`. It starts on
    /// its store (taking a new epoch) at its first input that carries one.
    pub fn new(config: Config, id: NodeId, seed: u64) -> Result<Node, ConfigError> {
        config.validate()?;
        let admission = Admission::new(config.anti_entropy_bytes_per_second);
        let partitioner = Partitioner::new(config.partition_count)
            .map_err(|error| ConfigError::Invalid(format!("partition_count: {error:?}")))?;
        Ok(Node {
            config,
            id,
            rng: ChaCha8Rng::seed_from_u64(seed),
            partitioner,
            started: None,
            placement: None,
            liveness: BTreeMap::new(),
            operations: BTreeMap::new(),
            timers: BTreeSet::new(),
            next_operation: 1,
            forwards_seen: VecDeque::new(),
            forwards_seen_set: BTreeSet::new(),
            next_replay: None,
            start_retry: None,
            outputs: VecDeque::new(),
            metrics: Metrics::default(),
            timestamp_last: 0,
            wall_clock_origin: None,
            trees: Trees::new(),
            next_anti_entropy: None,
            anti_entropy_cursor: 0,
            ae_budget: 0.0,
            ae_budget_at: None,
            ae_deferred: VecDeque::new(),
            ae_exchanges: BTreeMap::new(),
            next_ae_deferred: None,
            ring: Ring::new(),
            layout: None,
            pulls: BTreeMap::new(),
            pulls_version: (0, 0),
            next_pull: None,
            moves_unrecorded: Vec::new(),
            next_moves_record: None,
            admission,
            expects_peers: false,
            background_paused: false,
            reap_cursor: Vec::new(),
            tombstones_written: 0,
            reap_pass_found: false,
            reap_pass_written: 0,
            reap_idle: false,
            reaps: BTreeMap::new(),
            next_reap: None,
            clear_sweep: None,
            next_clear: None,
            // A start counts as one such write: what an earlier life of
            // the node received and did not sweep is not known.
            unowned_writes: 1,
            unowned_swept: 0,
        })
    }

    /// This node's identity.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The epoch of this start, once started.
    pub fn epoch(&self) -> Option<u32> {
        self.started.as_ref().map(|started| started.actor.epoch)
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Operations in flight (coordinated or forwarded).
    pub fn operations_in_flight(&self) -> usize {
        self.operations.len()
    }

    /// Bytes of hints held for `target`.
    pub fn hint_bytes(&self, target: NodeId) -> u64 {
        self.started
            .as_ref()
            .map_or(0, |started| started.hints.bytes(target))
    }

    /// Bytes of hints held for all targets.
    pub fn hint_bytes_total(&self) -> u64 {
        self.started
            .as_ref()
            .map_or(0, |started| started.hints.bytes_total())
    }

    /// What this node believes about `node` (members never reported are alive).
    pub fn liveness_of(&self, node: NodeId) -> Liveness {
        if node == self.id {
            return Liveness::Alive;
        }
        self.liveness.get(&node).copied().unwrap_or(Liveness::Alive)
    }

    /// The placement in use, once a ring was given.
    pub fn placement(&self) -> Option<&Placement> {
        self.placement.as_ref()
    }

    /// The partition of a user key.
    pub fn partition_of(&self, key: &[u8]) -> Partition {
        self.partitioner.partition_of(key)
    }

    /// Ties the node's hybrid logical clock to wall time: `now` is
    /// `unix_time_micros`. Without it, the first instant seen is time zero.
    /// Admission control's intervals are aligned on its whole seconds.
    pub fn set_wall_clock(&mut self, now: Instant, unix_time_micros: u64) {
        self.wall_clock_origin = Some((now, unix_time_micros));
        self.admission.align(now, unix_time_micros);
    }

    /// Tells the node that it belongs to a cluster it has yet to hear from
    /// (it was started with seeds). Until its ring holds another member,
    /// key requests and forwards are answered `Unavailable` rather than
    /// coordinated: a node started without its data (wiped, or new) holds
    /// a ring of itself alone, under which it is every key's only primary;
    /// coordinating under it, it failed quorums it could not reach
    /// ("1 of 2 replicas answered") and would have acknowledged a `w = 1`
    /// write that only it held, for keys it does not own.
    pub fn set_expects_peers(&mut self, expects: bool) {
        self.expects_peers = expects;
    }

    /// Whether the node's ring is the cluster's as far as it can tell: it
    /// expects no peers, or its ring holds another member.
    pub(super) fn ring_learnt(&self) -> bool {
        !self.expects_peers || self.ring.members().any(|(node, _)| node != self.id)
    }

    /// A ring learnt (membership change, gossip): merged into this node's,
    /// which may change it further ([`Output::Ring`]); placement and the
    /// moves to pull are recomputed.
    pub fn handle_ring(&mut self, now: Instant, ring: Ring) {
        self.ring.merge(&ring);
        self.ring_changed(now);
        if self.next_reap.is_none() && !self.config.tombstone_grace.is_zero() {
            self.next_reap = Some(now + reaping::REAP_INTERVAL);
        }
        if self.next_anti_entropy.is_none() && !self.config.anti_entropy_interval.is_zero() {
            self.next_anti_entropy = Some(now + self.config.anti_entropy_interval);
        }
    }

    /// What membership now believes about `node`. A member reported alive
    /// gets its hints replayed at once.
    pub fn handle_liveness(&mut self, now: Instant, node: NodeId, liveness: Liveness) {
        if !self.liveness.contains_key(&node) && self.liveness.len() >= self.config.members_max {
            return;
        }
        self.liveness.insert(node, liveness);
        if liveness == Liveness::Alive && self.hint_bytes(node) > 0 {
            self.next_replay = Some(now);
        }
    }

    /// A foreground request this node's shell served took `latency`
    /// (admission control of background work learns from it).
    pub fn handle_foreground_latency(&mut self, now: Instant, latency: Duration) {
        if self.config.admission_control {
            self.admission.observe(now, latency);
            self.note_admission();
        }
    }

    /// A client reported waiting `latency` for its previous key-value
    /// answer from this node (admission control judges by what clients
    /// see, where they say).
    pub fn handle_client_latency(&mut self, now: Instant, latency: Duration) {
        self.metrics.admission_client_reports += 1;
        if self.config.admission_control {
            self.admission.observe_client(now, latency);
            self.note_admission();
        }
    }

    /// Pauses (or resumes) this node's background work: no anti-entropy
    /// step, no pull asked or served, no sweep of moved-away copies, until
    /// resumed. Foreground requests, hinted handoff and membership go on.
    /// Moves to or from a paused node wait, so a change of the ring takes
    /// longer. Not persisted: a restarted node runs its background work.
    pub fn set_background_paused(&mut self, paused: bool) {
        self.background_paused = paused;
        self.metrics.background_paused = paused;
    }

    /// Whether an operator paused this node's background work.
    pub fn background_paused(&self) -> bool {
        self.background_paused
    }

    /// Whether background work holds still now: paused by an operator, or
    /// during admission control's probe of the baseline.
    pub(crate) fn background_held(&self) -> bool {
        self.background_paused
            || (self.config.admission_control
                && self.config.anti_entropy_bytes_per_second > 0
                && self.admission.probing())
    }

    fn note_admission(&mut self) {
        self.metrics.background_bytes_per_second = self.admission.rate() as u64;
        self.metrics.admission_throttles = self.admission.throttles();
        self.metrics.admission_probes = self.admission.probes();
        self.metrics.admission_baseline_p99_micros = self.admission.baseline_micros().unwrap_or(0);
        self.metrics.admission_last_p99_micros = self.admission.last_p99_micros().unwrap_or(0);
        self.metrics.admission_judged_by_clients = self.admission.judged_by_clients();
    }

    /// Takes the next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Node::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.started.is_none() {
            return self.start_retry;
        }
        let timer = self.timers.first().map(|(when, _)| *when);
        [
            timer,
            self.next_replay,
            self.next_anti_entropy,
            self.next_ae_deferred,
            self.next_pull,
            self.next_moves_record,
            self.next_reap,
            self.next_clear,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Time passed: retries, deadlines, hint replay and anti-entropy that
    /// are due run now.
    pub fn handle_timeout(&mut self, now: Instant, store: &mut impl Store) {
        let mut trees = std::mem::take(&mut self.trees);
        let mut tracked = Tracked::new(store, &mut trees);
        self.timeout(now, &mut tracked);
        drop(tracked);
        self.trees = trees;
    }

    fn timeout<S: Store>(&mut self, now: Instant, store: &mut Tracked<'_, S>) {
        if !self.ensure_started(now, store) {
            return;
        }
        if self.next_ae_deferred.is_some_and(|when| when <= now) {
            self.ae_drain_deferred(now, store);
        }
        if self.next_anti_entropy.is_some_and(|when| when <= now) {
            self.anti_entropy_round(now, store);
        }
        while let Some(&(when, operation)) = self.timers.first() {
            if when > now {
                break;
            }
            self.timers.remove(&(when, operation));
            self.operation_timer(now, operation, store);
        }
        if self.next_replay.is_some_and(|when| when <= now) {
            self.replay_hints(now, store);
        }
        if self.next_pull.is_some_and(|when| when <= now) {
            self.pull_tick(now);
        }
        if self.next_moves_record.is_some_and(|when| when <= now) {
            self.record_moves(now, store);
        }
        if self.config.admission_control {
            self.admission.tick(now);
            self.note_admission();
        }
        if self.next_reap.is_some_and(|when| when <= now) {
            self.reap_round(now, store);
        }
        if self.next_clear.is_some_and(|when| when <= now) {
            self.clear_step(now, store);
        } else {
            self.schedule_clearing(now);
        }
    }

    /// A client request. It is answered through [`Output::Respond`].
    pub fn handle_request(
        &mut self,
        now: Instant,
        id: RequestId,
        request: Request,
        store: &mut impl Store,
    ) {
        let mut trees = std::mem::take(&mut self.trees);
        let mut tracked = Tracked::new(store, &mut trees);
        self.request(now, id, request, &mut tracked);
        drop(tracked);
        self.trees = trees;
    }

    fn request(&mut self, now: Instant, id: RequestId, request: Request, store: &mut impl Store) {
        self.metrics.requests += 1;
        let origin = Origin::Client(id);
        if let Err(error) = self.validate(&request) {
            self.metrics.invalid_requests += 1;
            self.respond(origin, Response::Failed(error));
            return;
        }
        if !self.ensure_started(now, store) {
            self.respond(
                origin,
                Response::Failed(RequestError::Unavailable("store failed at start".into())),
            );
            return;
        }
        if self.operations.len() >= self.config.requests_in_flight_max {
            self.metrics.busy_rejections += 1;
            self.respond(origin, Response::Failed(RequestError::Busy));
            return;
        }
        if !self.ring_learnt() {
            self.respond(origin, Response::Failed(not_joined()));
            return;
        }
        let partition = self.partitioner.partition_of(request.key());
        let primaries = match self.primaries(partition) {
            Ok(primaries) => primaries,
            Err(error) => {
                self.respond(origin, Response::Failed(error));
                return;
            }
        };
        if primaries.contains(&self.id) {
            self.coordinate(now, origin, request, partition, primaries, store);
        } else {
            self.forward(now, id, request, primaries);
        }
    }

    /// A message from a peer.
    pub fn handle_message(
        &mut self,
        now: Instant,
        from: NodeId,
        message: Message,
        store: &mut impl Store,
    ) {
        let mut trees = std::mem::take(&mut self.trees);
        let mut tracked = Tracked::new(store, &mut trees);
        self.message(now, from, message, &mut tracked);
        drop(tracked);
        self.trees = trees;
    }

    fn message<S: Store>(
        &mut self,
        now: Instant,
        from: NodeId,
        message: Message,
        store: &mut Tracked<'_, S>,
    ) {
        if !self.ensure_started(now, store) {
            return;
        }
        match message {
            Message::PullStates {
                partition,
                version,
                from: range_from,
                digests,
            } => self.serve_pull(now, from, (partition, version), range_from, digests, store),
            Message::PullReply {
                partition,
                version,
                from: range_from,
                until,
                states,
                digests,
            } => self.receive_pull_reply(
                now,
                (from, partition, version),
                (range_from, until),
                (states, digests),
                store,
            ),
            Message::PullKeys {
                partition,
                version,
                keys,
            } => self.serve_pull_keys(now, from, (partition, version), keys, store),
            Message::PullKeysReply {
                partition,
                version,
                states,
            } => self.receive_pull_keys_reply(now, (from, partition, version), states, store),
            Message::ReapQuery { key, digest } => {
                self.receive_reap_query(from, (key, digest), store)
            }
            Message::ReapAnswer { key, digest, same } => {
                self.receive_reap_answer(from, (key, digest, same), store)
            }
            Message::Reap { key, digest } => self.receive_reap(from, (key, digest), store),
            Message::AeRoot { partition, root } => {
                self.receive_ae_root(now, from, partition, root, store)
            }
            Message::AeLeaves { partition, leaves } => {
                self.receive_ae_leaves(now, from, partition, leaves, store)
            }
            Message::AeDigests {
                partition,
                buckets,
                from: range_from,
                until,
                digests,
            } => {
                let exchange = (from, partition, buckets);
                self.receive_ae_digests(now, exchange, (range_from, until), digests, store)
            }
            Message::AeStates {
                partition,
                buckets,
                from: range_from,
                until,
                states,
                wanted,
                answer,
            } => {
                let range = (range_from, until);
                let exchange = (from, partition, buckets);
                self.receive_ae_states(now, exchange, range, states, wanted, answer, store)
            }
            Message::Forward {
                forward_id,
                request,
            } => self.receive_forward(now, from, forward_id, request, store),
            Message::ForwardReply {
                forward_id,
                response,
            } => match self.operations.get(&forward_id) {
                Some(Operation::Forward(forward)) if forward.to == from => {
                    let request_id = forward.request_id;
                    self.operations.remove(&forward_id);
                    self.respond(Origin::Client(request_id), response);
                }
                // A late or duplicated reply: the request was already answered.
                _ => {}
            },
            Message::Replicate {
                operation,
                key,
                state,
                durable,
                hint_for,
            } => self.receive_replicate(now, from, operation, key, state, durable, hint_for, store),
            Message::ReplicateAck { operation, outcome } => {
                self.receive_replicate_ack(now, from, operation, outcome)
            }
            Message::Read {
                operation,
                key,
                hint_for,
            } => self.receive_read(from, operation, key, hint_for, store),
            Message::ReadReply { operation, state } => {
                self.receive_read_reply(now, from, operation, state, store)
            }
            Message::Repair { key, state } => {
                if self.key_is_valid(&key) {
                    let partition = self.partitioner.partition_of(&key);
                    if self
                        .apply_data(partition, &key, &state, Durability::Buffered, store)
                        .is_err()
                    {
                        self.metrics.store_failures += 1;
                    }
                }
            }
            Message::HintReplay {
                key,
                state,
                hint_digest,
            } => {
                if !self.key_is_valid(&key) {
                    return;
                }
                let partition = self.partitioner.partition_of(&key);
                // Replayed hints are synced: the fallback deletes its copy on the ack.
                match self.apply_data(partition, &key, &state, Durability::Durable, store) {
                    Ok(()) => self.send(from, Message::HintAck { key, hint_digest }),
                    Err(_) => self.metrics.store_failures += 1,
                }
            }
            Message::HintAck { key, hint_digest } => {
                if !self.key_is_valid(&key) {
                    return;
                }
                let partition = self.partitioner.partition_of(&key);
                let Some(started) = self.started.as_mut() else {
                    return;
                };
                match started
                    .hints
                    .acknowledge(store, from, partition, &key, hint_digest)
                {
                    Ok(true) => self.metrics.hints_replayed += 1,
                    Ok(false) => {}
                    Err(_) => self.metrics.store_failures += 1,
                }
            }
        }
    }

    // ---- starting ----------------------------------------------------------

    fn ensure_started(&mut self, now: Instant, store: &mut impl Store) -> bool {
        if self.started.is_some() {
            return true;
        }
        // A failed start is retried at the next input, or after a replay
        // interval at the latest (the store may have been briefly failing).
        let retry = Some(now + self.config.hint_replay_interval);
        // Seconds since 2026-01-01 by the wall clock (0 without one).
        const WALL_EPOCH_BASE_SECONDS: u64 = 1_767_225_600;
        let floor = (self.wall_micros(now) / 1_000_000).saturating_sub(WALL_EPOCH_BASE_SECONDS);
        let floor = u32::try_from(floor).unwrap_or(u32::MAX);
        let epoch = match replica::start_epoch(store, floor) {
            Ok(epoch) => epoch,
            Err(_) => {
                self.metrics.store_failures += 1;
                self.start_retry = retry;
                return false;
            }
        };
        let limits = HintLimits {
            bytes_per_target_max: self.config.hint_bytes_per_target_max,
            age_max_micros: u64::try_from(self.config.hint_age_max.as_micros()).unwrap_or(u64::MAX),
            replay_batch_max: self.config.hint_replay_batch_max,
        };
        let hints = match Hints::load(store, limits) {
            Ok(hints) => hints,
            Err(_) => {
                self.metrics.store_failures += 1;
                self.start_retry = retry;
                return false;
            }
        };
        // A store without data holds no tombstone: the sweep starts idle,
        // and only a tombstone written in this life wakes it.
        match store.scan(&[replica::DATA_PREFIX], &[replica::DATA_PREFIX + 1], 1) {
            Ok(data) if data.is_empty() => {
                self.reap_idle = true;
                self.reap_pass_written = self.tombstones_written;
            }
            Ok(_) => {}
            Err(_) => {
                self.metrics.store_failures += 1;
                self.start_retry = retry;
                return false;
            }
        }
        self.start_retry = None;
        if !hints.targets().is_empty() {
            self.next_replay = Some(now);
        }
        // The low 24 bits of the epoch are enough to tell this life's
        // operations from the last one's.
        self.next_operation = ((u64::from(epoch) & 0xff_ffff) << 40) + 1;
        self.started = Some(Started {
            actor: replica::actor(self.id, epoch),
            hints,
        });
        true
    }

    // ---- helpers -----------------------------------------------------------

    fn wall_micros(&mut self, now: Instant) -> u64 {
        let (origin, origin_micros) = *self.wall_clock_origin.get_or_insert((now, 0));
        let elapsed = now.saturating_duration_since(origin);
        origin_micros.saturating_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX))
    }

    /// The next hybrid-logical-clock timestamp: wall time, but strictly increasing.
    fn next_timestamp(&mut self, now: Instant) -> u64 {
        let wall = self.wall_micros(now);
        self.timestamp_last = wall.max(self.timestamp_last.saturating_add(1));
        self.timestamp_last
    }

    fn is_alive(&self, node: NodeId) -> bool {
        node == self.id || matches!(self.liveness.get(&node), None | Some(Liveness::Alive))
    }

    fn limits(&self) -> ReplicaLimits {
        ReplicaLimits {
            conflict_policy: self.config.conflict_policy,
            sibling_count_max: self.config.sibling_count_max,
            key_state_size_max_bytes: self.config.key_state_size_max_bytes,
        }
    }

    fn primaries(&self, partition: Partition) -> Result<Vec<NodeId>, RequestError> {
        let placement = self
            .placement
            .as_ref()
            .ok_or_else(|| RequestError::Unavailable("no ring yet".into()))?;
        let primaries = placement.primaries(partition).to_vec();
        if primaries.is_empty() {
            return Err(RequestError::Unavailable("the ring has no owners".into()));
        }
        Ok(primaries)
    }

    fn preference_list(&self, partition: Partition) -> Vec<NodeId> {
        self.placement
            .as_ref()
            .map(|placement| placement.preference_list(partition).to_vec())
            .unwrap_or_default()
    }

    fn key_is_valid(&mut self, key: &[u8]) -> bool {
        let valid = !key.is_empty() && key.len() <= self.config.key_size_max_bytes;
        if !valid {
            self.metrics.malformed_messages += 1;
        }
        valid
    }

    fn validate(&self, request: &Request) -> Result<(), RequestError> {
        let key = request.key();
        if key.is_empty() {
            return Err(RequestError::InvalidArgument("empty key".into()));
        }
        if key.len() > self.config.key_size_max_bytes {
            return Err(RequestError::InvalidArgument(format!(
                "key of {} bytes is over the limit of {}",
                key.len(),
                self.config.key_size_max_bytes
            )));
        }
        if let Request::Put { value, .. } = request
            && value.len() > self.config.value_size_max_bytes
        {
            return Err(RequestError::InvalidArgument(format!(
                "value of {} bytes is over the limit of {}",
                value.len(),
                self.config.value_size_max_bytes
            )));
        }
        let quorum = match request {
            Request::Get { options, .. } => options.r,
            Request::Put { options, .. } | Request::Delete { options, .. } => options.w,
        };
        if let Some(quorum) = quorum {
            quorum
                .required(self.config.replication_factor)
                .map_err(RequestError::InvalidArgument)?;
        }
        Ok(())
    }

    fn required(&self, request: &Request) -> usize {
        let quorum = match request {
            Request::Get { options, .. } => options.r.unwrap_or(self.config.read_quorum_default),
            Request::Put { options, .. } | Request::Delete { options, .. } => {
                options.w.unwrap_or(self.config.write_quorum_default)
            }
        };
        // Validated on receipt, and the defaults by `Config::validate`.
        quorum.required(self.config.replication_factor).unwrap_or(1)
    }

    fn timeout_of(&self, request: &Request) -> Duration {
        match request {
            Request::Get { options, .. } => options.timeout,
            Request::Put { options, .. } | Request::Delete { options, .. } => options.timeout,
        }
        .unwrap_or(self.config.request_timeout)
    }

    fn send(&mut self, to: NodeId, message: Message) {
        if self.outputs.len() >= self.config.output_queue_max {
            self.metrics.outputs_shed += 1;
            return;
        }
        self.outputs.push_back(Output::Send { to, message });
    }

    fn respond(&mut self, origin: Origin, response: Response) {
        if matches!(
            response,
            Response::Failed(RequestError::QuorumNotReached { .. })
        ) {
            self.metrics.quorum_failures += 1;
        }
        match origin {
            Origin::Client(id) => self.outputs.push_back(Output::Respond { id, response }),
            Origin::Forwarded { from, forward_id } => self.send(
                from,
                Message::ForwardReply {
                    forward_id,
                    response,
                },
            ),
        }
    }

    fn new_operation_id(&mut self) -> u64 {
        let id = self.next_operation;
        self.next_operation += 1;
        id
    }

    fn apply_data(
        &mut self,
        partition: Partition,
        key: &[u8],
        state: &KeyState,
        durability: Durability,
        store: &mut impl Store,
    ) -> Result<(), ReplicaError> {
        if !self.write_set(partition).contains(&self.id) {
            // Someone sees this node as an owner of the partition: views
            // differ, and clearing stale copies waits (`stale`).
            self.unowned_writes += 1;
        }
        let limits = self.limits();
        let merged = replica::apply_sync(store, partition, key, state, &limits, durability)?;
        if merged.is_deleted() {
            self.tombstones_written += 1;
        }
        Ok(())
    }

    // ---- forwarding --------------------------------------------------------

    fn forward(&mut self, now: Instant, id: RequestId, request: Request, primaries: Vec<NodeId>) {
        let alive: Vec<NodeId> = primaries
            .iter()
            .copied()
            .filter(|node| self.is_alive(*node))
            .collect();
        if alive.is_empty() {
            self.respond(
                Origin::Client(id),
                Response::Failed(RequestError::Unavailable(
                    "no primary of the key is believed alive".into(),
                )),
            );
            return;
        }
        let to = alive[self.rng.random_range(0..alive.len())];
        let operation = self.new_operation_id();
        // The coordinator answers by its own deadline; one more answer-timeout
        // covers the two hops.
        let deadline = now + self.timeout_of(&request) + self.config.replica_answer_timeout;
        let required = self.required(&request);
        self.metrics.forwarded += 1;
        self.operations.insert(
            operation,
            Operation::Forward(ForwardOperation {
                request_id: id,
                to,
                required,
                deadline,
            }),
        );
        self.timers.insert((deadline, operation));
        self.send(
            to,
            Message::Forward {
                forward_id: operation,
                request,
            },
        );
    }

    fn receive_forward(
        &mut self,
        now: Instant,
        from: NodeId,
        forward_id: u64,
        request: Request,
        store: &mut impl Store,
    ) {
        let origin = Origin::Forwarded { from, forward_id };
        if self.forwards_seen_set.contains(&(from, forward_id)) {
            self.metrics.duplicate_forwards += 1;
            return;
        }
        if self.forwards_seen.len() >= self.config.forwarded_ids_remembered_max
            && let Some(oldest) = self.forwards_seen.pop_front()
        {
            self.forwards_seen_set.remove(&oldest);
        }
        self.forwards_seen.push_back((from, forward_id));
        self.forwards_seen_set.insert((from, forward_id));
        if let Err(error) = self.validate(&request) {
            self.metrics.invalid_requests += 1;
            self.respond(origin, Response::Failed(error));
            return;
        }
        if self.operations.len() >= self.config.requests_in_flight_max {
            self.metrics.busy_rejections += 1;
            self.respond(origin, Response::Failed(RequestError::Busy));
            return;
        }
        if !self.ring_learnt() {
            self.respond(origin, Response::Failed(not_joined()));
            return;
        }
        let partition = self.partitioner.partition_of(request.key());
        match self.primaries(partition) {
            Ok(primaries) if primaries.contains(&self.id) => {
                self.coordinate(now, origin, request, partition, primaries, store)
            }
            // Forwarding is one hop only: a node that is not a primary (its
            // ring differs from the forwarder's) refuses rather than forwards.
            Ok(_) => self.respond(
                origin,
                Response::Failed(RequestError::Unavailable("not a primary of the key".into())),
            ),
            Err(error) => self.respond(origin, Response::Failed(error)),
        }
    }

    // ---- coordinating ------------------------------------------------------

    fn coordinate(
        &mut self,
        now: Instant,
        origin: Origin,
        request: Request,
        partition: Partition,
        primaries: Vec<NodeId>,
        store: &mut impl Store,
    ) {
        let required = self.required(&request);
        let timeout = self.timeout_of(&request);
        match request {
            Request::Get { key, options } => self.coordinate_read(
                now, origin, key, options, required, timeout, partition, primaries, store,
            ),
            Request::Put {
                key,
                value,
                context,
                options,
            } => self.coordinate_write(
                now,
                origin,
                key,
                SiblingValue::Value(value),
                context,
                options,
                required,
                timeout,
                partition,
                primaries,
                store,
            ),
            Request::Delete {
                key,
                context,
                options,
            } => self.coordinate_write(
                now,
                origin,
                key,
                SiblingValue::Tombstone,
                context,
                options,
                required,
                timeout,
                partition,
                primaries,
                store,
            ),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn coordinate_write(
        &mut self,
        now: Instant,
        origin: Origin,
        key: Bytes,
        value: SiblingValue,
        context: VersionVector,
        options: WriteOptions,
        required: usize,
        timeout: Duration,
        partition: Partition,
        primaries: Vec<NodeId>,
        store: &mut impl Store,
    ) {
        self.metrics.writes_coordinated += 1;
        let sloppy = options.sloppy.unwrap_or(self.config.sloppy_default);
        let durable = options.durable.unwrap_or(self.config.durable_default);
        let durability = if durable {
            Durability::Durable
        } else {
            Durability::Buffered
        };
        let Some(actor) = self.started.as_ref().map(|started| started.actor) else {
            return;
        };
        let timestamp = self.next_timestamp(now);
        let limits = self.limits();
        let (state, dot) = match replica::coordinate_write(
            store, partition, &key, actor, &context, value, timestamp, &limits, durability,
        ) {
            Ok((state, dot)) => {
                if state.is_deleted() {
                    self.tombstones_written += 1;
                }
                (state, dot)
            }
            Err(ReplicaError::TooManySiblings { count, max }) => {
                self.metrics.sibling_limit_rejections += 1;
                self.respond(
                    origin,
                    Response::Failed(RequestError::TooManySiblings { count, max }),
                );
                return;
            }
            Err(ReplicaError::TooLarge { size, max }) => {
                self.metrics.invalid_requests += 1;
                self.respond(
                    origin,
                    Response::Failed(RequestError::InvalidArgument(format!(
                        "key state of {size} bytes would exceed the limit of {max}"
                    ))),
                );
                return;
            }
            Err(error) => {
                self.metrics.store_failures += 1;
                self.respond(
                    origin,
                    Response::Failed(RequestError::StoreFailed(error.to_string())),
                );
                return;
            }
        };
        // While the partition moves, the write goes to both groups and
        // needs `w` of each.
        let tracker = match self
            .layout
            .as_ref()
            .and_then(|layout| layout.write_groups(partition))
        {
            Some((old, new)) => {
                QuorumTracker::with_groups(required, vec![old.to_vec(), new.to_vec()])
            }
            None => QuorumTracker::new(required),
        };
        let mut primaries = primaries;
        for node in self.write_set(partition) {
            if !primaries.contains(&node) {
                primaries.push(node);
            }
        }
        let mut operation = WriteOperation {
            origin,
            key,
            partition,
            state,
            dot,
            durable,
            sloppy,
            primaries: primaries.clone(),
            handoffs: BTreeMap::new(),
            local_hints: BTreeSet::new(),
            stored: BTreeSet::new(),
            tracker,
            responded: false,
            deadline: now + timeout,
        };
        operation.tracker.asked(self.id);
        operation.record(self.id, true);
        let id = self.new_operation_id();
        for primary in primaries {
            if primary == self.id {
                continue;
            }
            if self.is_alive(primary) {
                operation.tracker.asked(primary);
                self.send_replicate(id, &operation, primary, None);
            } else {
                self.hand_off(now, id, &mut operation, primary, store);
            }
        }
        self.settle_write(now, id, operation, true);
    }

    fn send_replicate(
        &mut self,
        id: u64,
        operation: &WriteOperation,
        to: NodeId,
        hint_for: Option<NodeId>,
    ) {
        self.send(
            to,
            Message::Replicate {
                operation: id,
                key: operation.key.clone(),
                state: operation.state.clone(),
                durable: operation.durable,
                hint_for,
            },
        );
    }

    /// Sends the write to the next fallback as a hint for `primary`. With no
    /// fallback available (a cluster of at most `N` members), the coordinator
    /// keeps the hint itself, as Cassandra's coordinators do, so the primary
    /// still receives the write when it returns; that hint does not count
    /// toward `w`.
    fn hand_off(
        &mut self,
        now: Instant,
        id: u64,
        operation: &mut WriteOperation,
        primary: NodeId,
        store: &mut impl Store,
    ) {
        let list = self.preference_list(operation.partition);
        let used: BTreeSet<NodeId> = operation
            .handoffs
            .values()
            .copied()
            .chain(operation.stored.iter().copied())
            .collect();
        let fallback = next_fallback(&list, &operation.primaries, self.id, &used, |node| {
            self.is_alive(node)
        });
        if let Some(fallback) = fallback {
            operation.handoffs.insert(primary, fallback);
            operation.tracker.asked(fallback);
            self.send_replicate(id, operation, fallback, Some(primary));
        } else if operation.local_hints.insert(primary) {
            let durability = if operation.durable {
                Durability::Durable
            } else {
                Durability::Buffered
            };
            let (partition, key, state) = (
                operation.partition,
                operation.key.clone(),
                operation.state.clone(),
            );
            self.keep_hint(now, primary, partition, &key, &state, durability, store);
        }
    }

    /// Stores a hint for `target`; true if it is stored.
    #[allow(clippy::too_many_arguments)]
    fn keep_hint(
        &mut self,
        now: Instant,
        target: NodeId,
        partition: Partition,
        key: &[u8],
        state: &KeyState,
        durability: Durability,
        store: &mut impl Store,
    ) -> bool {
        let now_micros = self.wall_micros(now);
        let Some(started) = self.started.as_mut() else {
            return false;
        };
        match started
            .hints
            .store(store, target, partition, key, state, now_micros, durability)
        {
            Ok(HintOutcome::Stored) => {
                self.metrics.hints_stored += 1;
                if self.next_replay.is_none() {
                    self.next_replay = Some(now + self.config.hint_replay_interval);
                }
                true
            }
            Ok(HintOutcome::Dropped) => {
                self.metrics.hints_dropped_full += 1;
                false
            }
            Err(_) => {
                self.metrics.store_failures += 1;
                false
            }
        }
    }

    /// Answers, finishes or keeps a write after any change.
    /// `is_new`: the operation has no timers yet.
    fn settle_write(&mut self, now: Instant, id: u64, mut operation: WriteOperation, is_new: bool) {
        if !operation.responded {
            match operation.tracker.outcome() {
                QuorumOutcome::Reached => {
                    operation.responded = true;
                    let response = operation.success();
                    self.respond(operation.origin, response);
                }
                QuorumOutcome::Failed if operation.uncovered().is_empty() => {
                    // Every primary is covered and still too few counted:
                    // nothing more can count (a strict quorum with hints).
                    operation.responded = true;
                    let response = operation.failure();
                    self.respond(operation.origin, response);
                }
                _ => {}
            }
        }
        if operation.uncovered().is_empty() && operation.responded {
            return;
        }
        if is_new {
            let retry = (now + self.config.replica_answer_timeout).min(operation.deadline);
            self.timers.insert((retry, id));
            self.timers.insert((operation.deadline, id));
        }
        self.operations.insert(id, Operation::Write(operation));
    }

    fn write_timer(
        &mut self,
        now: Instant,
        id: u64,
        mut operation: WriteOperation,
        store: &mut impl Store,
    ) {
        if now >= operation.deadline {
            if !operation.responded {
                operation.responded = true;
                let response = operation.failure();
                self.respond(operation.origin, response);
            }
            return;
        }
        // Retry: resend to silent primaries believed alive, and give every
        // uncovered primary a fallback holding a hint (sloppy quorum).
        for primary in operation.uncovered() {
            if primary == self.id {
                continue;
            }
            if self.is_alive(primary) {
                self.send_replicate(id, &operation, primary, None);
            }
            let fallback_answered = operation
                .handoffs
                .get(&primary)
                .is_some_and(|fallback| operation.tracker.has_answered(*fallback));
            if !operation.handoffs.contains_key(&primary) || fallback_answered {
                self.hand_off(now, id, &mut operation, primary, store);
            } else if let Some(&fallback) = operation.handoffs.get(&primary) {
                self.send_replicate(id, &operation, fallback, Some(primary));
            }
        }
        let retry = (now + self.config.replica_answer_timeout).min(operation.deadline);
        self.timers.insert((retry, id));
        self.operations.insert(id, Operation::Write(operation));
    }

    #[allow(clippy::too_many_arguments)]
    fn receive_replicate(
        &mut self,
        now: Instant,
        from: NodeId,
        operation: u64,
        key: Bytes,
        state: KeyState,
        durable: bool,
        hint_for: Option<NodeId>,
        store: &mut impl Store,
    ) {
        if !self.key_is_valid(&key) {
            return;
        }
        let partition = self.partitioner.partition_of(&key);
        let durability = if durable {
            Durability::Durable
        } else {
            Durability::Buffered
        };
        // Hints are kept only for a primary of the key: a hint naming any
        // other node would let a confused peer grow the per-target map.
        if let Some(target) = hint_for
            && target != self.id
            && !self.write_set(partition).contains(&target)
        {
            self.metrics.malformed_messages += 1;
            self.send(
                from,
                Message::ReplicateAck {
                    operation,
                    outcome: ReplicaOutcome::Refused,
                },
            );
            return;
        }
        let stored = match hint_for {
            Some(target) if target != self.id => {
                if self.started.is_none() {
                    return;
                }
                self.keep_hint(now, target, partition, &key, &state, durability, store)
            }
            _ => match self.apply_data(partition, &key, &state, durability, store) {
                Ok(()) => true,
                Err(_) => {
                    self.metrics.store_failures += 1;
                    false
                }
            },
        };
        let outcome = if stored {
            ReplicaOutcome::Stored
        } else {
            ReplicaOutcome::Refused
        };
        self.send(from, Message::ReplicateAck { operation, outcome });
    }

    fn receive_replicate_ack(
        &mut self,
        now: Instant,
        from: NodeId,
        id: u64,
        outcome: ReplicaOutcome,
    ) {
        if !matches!(self.operations.get(&id), Some(Operation::Write(_))) {
            // Late, duplicated or for a finished operation: nothing waits for
            // it. (An id naming another kind of operation is a confused peer;
            // that operation is left alone.)
            return;
        }
        let Some(Operation::Write(mut operation)) = self.operations.remove(&id) else {
            return;
        };
        operation.record(from, outcome == ReplicaOutcome::Stored);
        self.settle_write(now, id, operation, false);
    }

    #[allow(clippy::too_many_arguments)]
    fn coordinate_read(
        &mut self,
        now: Instant,
        origin: Origin,
        key: Bytes,
        options: ReadOptions,
        required: usize,
        timeout: Duration,
        partition: Partition,
        primaries: Vec<NodeId>,
        store: &mut impl Store,
    ) {
        self.metrics.gets_coordinated += 1;
        let sloppy = options.sloppy.unwrap_or(self.config.sloppy_default);
        let mut operation = ReadOperation {
            origin,
            key: key.clone(),
            partition,
            sloppy,
            primaries: primaries.clone(),
            substitutes: BTreeMap::new(),
            primary_replies: Vec::new(),
            fallback_replies: Vec::new(),
            tracker: QuorumTracker::new(required),
            responded: false,
            deadline: now + timeout,
        };
        operation.tracker.asked(self.id);
        match replica::read_state(store, partition, &key) {
            Ok(state) => {
                operation.record(self.id, Some(state));
            }
            Err(_) => {
                self.metrics.store_failures += 1;
                operation.record(self.id, None);
            }
        }
        let id = self.new_operation_id();
        for primary in primaries {
            if primary == self.id {
                continue;
            }
            if self.is_alive(primary) {
                operation.tracker.asked(primary);
                self.send(
                    primary,
                    Message::Read {
                        operation: id,
                        key: key.clone(),
                        hint_for: None,
                    },
                );
            } else if sloppy {
                self.substitute(id, &mut operation, primary);
            }
        }
        self.settle_read(now, id, operation, true, store);
    }

    /// Asks the next fallback for its hint for `primary`.
    fn substitute(&mut self, id: u64, operation: &mut ReadOperation, primary: NodeId) {
        let list = self.preference_list(operation.partition);
        let used: BTreeSet<NodeId> = operation.substitutes.keys().copied().collect();
        let write_set = self.write_set(operation.partition);
        let fallback = next_fallback(&list, &write_set, self.id, &used, |node| {
            self.is_alive(node)
        });
        if let Some(fallback) = fallback {
            operation.substitutes.insert(fallback, primary);
            operation.tracker.asked(fallback);
            self.send(
                fallback,
                Message::Read {
                    operation: id,
                    key: operation.key.clone(),
                    hint_for: Some(primary),
                },
            );
        }
    }

    /// Answers, repairs and finishes, or keeps a read after any change.
    /// `is_new`: the operation has no timers yet.
    fn settle_read(
        &mut self,
        now: Instant,
        id: u64,
        mut operation: ReadOperation,
        is_new: bool,
        store: &mut impl Store,
    ) {
        if !operation.responded {
            match operation.tracker.outcome() {
                QuorumOutcome::Reached => {
                    operation.responded = true;
                    let response = operation.success();
                    if let Response::Value(result) = &response {
                        let siblings = result.siblings.len() as u64;
                        self.metrics.read_siblings += siblings;
                        self.metrics.reads_with_siblings += u64::from(siblings > 1);
                    }
                    self.respond(operation.origin, response);
                }
                QuorumOutcome::Failed => {
                    operation.responded = true;
                    let response = operation.failure();
                    self.respond(operation.origin, response);
                }
                QuorumOutcome::Pending => {}
            }
        }
        if operation.tracker.all_answered() && operation.responded {
            self.repair(&operation, store);
            return;
        }
        if is_new {
            let retry = (now + self.config.replica_answer_timeout).min(operation.deadline);
            self.timers.insert((retry, id));
            self.timers.insert((operation.deadline, id));
        }
        self.operations.insert(id, Operation::Read(operation));
    }

    /// Read repair: every primary that answered with less gets the merge.
    fn repair(&mut self, operation: &ReadOperation, store: &mut impl Store) {
        let (merged, stale) = operation.repairs();
        for node in stale {
            self.metrics.read_repairs += 1;
            if node == self.id {
                if self
                    .apply_data(
                        operation.partition,
                        &operation.key,
                        &merged,
                        Durability::Buffered,
                        store,
                    )
                    .is_err()
                {
                    self.metrics.store_failures += 1;
                }
            } else {
                self.send(
                    node,
                    Message::Repair {
                        key: operation.key.clone(),
                        state: merged.clone(),
                    },
                );
            }
        }
    }

    fn read_timer(
        &mut self,
        now: Instant,
        id: u64,
        mut operation: ReadOperation,
        store: &mut impl Store,
    ) {
        if now >= operation.deadline {
            if !operation.responded {
                operation.responded = true;
                let response = operation.failure();
                self.respond(operation.origin, response);
            }
            self.repair(&operation, store);
            return;
        }
        // Retry: ask silent primaries again, and under a sloppy quorum ask a
        // fallback in place of each silent one.
        let silent: Vec<NodeId> = operation
            .primaries
            .iter()
            .copied()
            .filter(|node| *node != self.id && !operation.tracker.has_answered(*node))
            .collect();
        for primary in silent {
            if self.is_alive(primary) {
                operation.tracker.asked(primary);
                self.send(
                    primary,
                    Message::Read {
                        operation: id,
                        key: operation.key.clone(),
                        hint_for: None,
                    },
                );
            }
            let substituted = operation.substitutes.values().any(|node| *node == primary);
            if operation.sloppy && !substituted {
                self.substitute(id, &mut operation, primary);
            }
        }
        let retry = (now + self.config.replica_answer_timeout).min(operation.deadline);
        self.timers.insert((retry, id));
        self.operations.insert(id, Operation::Read(operation));
    }

    fn receive_read(
        &mut self,
        from: NodeId,
        operation: u64,
        key: Bytes,
        hint_for: Option<NodeId>,
        store: &mut impl Store,
    ) {
        if !self.key_is_valid(&key) {
            return;
        }
        let partition = self.partitioner.partition_of(&key);
        let state = match hint_for {
            Some(target) if target != self.id => {
                let Some(started) = self.started.as_ref() else {
                    return;
                };
                started.hints.read(store, target, partition, &key)
            }
            _ => replica::read_state(store, partition, &key),
        };
        let state = match state {
            Ok(state) => Some(state),
            Err(_) => {
                self.metrics.store_failures += 1;
                None
            }
        };
        self.send(from, Message::ReadReply { operation, state });
    }

    fn receive_read_reply(
        &mut self,
        now: Instant,
        from: NodeId,
        id: u64,
        state: Option<KeyState>,
        store: &mut impl Store,
    ) {
        if !matches!(self.operations.get(&id), Some(Operation::Read(_))) {
            return;
        }
        let Some(Operation::Read(mut operation)) = self.operations.remove(&id) else {
            return;
        };
        operation.record(from, state);
        self.settle_read(now, id, operation, false, store);
    }

    fn operation_timer(&mut self, now: Instant, id: u64, store: &mut impl Store) {
        match self.operations.remove(&id) {
            None => {}
            Some(Operation::Write(operation)) => self.write_timer(now, id, operation, store),
            Some(Operation::Read(operation)) => self.read_timer(now, id, operation, store),
            Some(Operation::Forward(forward)) => {
                if now >= forward.deadline {
                    self.respond(
                        Origin::Client(forward.request_id),
                        Response::Failed(RequestError::QuorumNotReached {
                            acks: 0,
                            required: forward.required,
                        }),
                    );
                } else {
                    self.operations.insert(id, Operation::Forward(forward));
                }
            }
        }
    }

    // ---- hinted handoff ----------------------------------------------------

    /// One replay round: hints go to live targets; every target's hints are
    /// checked for age on the way (so hints for dead targets expire too).
    fn replay_hints(&mut self, now: Instant, store: &mut impl Store) {
        let now_micros = self.wall_micros(now);
        let targets = self
            .started
            .as_ref()
            .map(|started| started.hints.targets())
            .unwrap_or_default();
        for target in targets {
            let alive = self.is_alive(target);
            let Some(started) = self.started.as_mut() else {
                return;
            };
            let batch = match started.hints.replay_batch(store, target, now_micros) {
                Ok(batch) => batch,
                Err(_) => {
                    self.metrics.store_failures += 1;
                    continue;
                }
            };
            self.metrics.hints_dropped_expired += batch.expired;
            self.metrics.hints_dropped_corrupt += batch.corrupt;
            if alive {
                for hint in batch.hints {
                    self.send(
                        target,
                        Message::HintReplay {
                            key: hint.key,
                            state: hint.state,
                            hint_digest: hint.digest,
                        },
                    );
                }
            }
        }
        self.next_replay = if self.hint_bytes_total() > 0 {
            Some(now + self.config.hint_replay_interval)
        } else {
            None
        };
    }
}

mod exchange;
mod moves;
mod reaping;
mod stale;
#[cfg(test)]
mod tests;
