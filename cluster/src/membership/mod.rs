//! SWIM membership with the Lifeguard refinements, as a sans-IO state machine.
//!
//! [`Swim`] implements SWIM (Das, Gupta, Motivala, DSN 2002): every protocol
//! period it probes one member in randomized round-robin order (§4.3), asks `k`
//! other members for indirect probes when the direct ack is late (§3.1), marks a
//! member that failed both *suspect* and, unless it refutes by raising its
//! incarnation within the suspicion timeout, *dead* (§4.2). Membership updates
//! are piggybacked on every message, each about `λ·log n` times (§4.1), backed
//! by a periodic digest-first push-pull so no update is missed for good.
//! Lifeguard (Dadgar, Phillips, Currey 2018) adds the local health multiplier
//! (§IV-A: failed probes, missed nacks and self-refutations slow the node's own
//! probing and judgements), dynamic suspicion (§IV-B: the timeout starts at
//! `Max` and shrinks toward `Min` as independent accusers confirm), and the
//! buddy rule (§IV-C: a ping to a suspect carries the suspicion).
//!
//! Members are identified by node id plus *generation* (the boot epoch); a
//! newer generation replaces an older one. Dead and left members stay as
//! tombstones for `dead_retention`, so a stale `Alive` never resurrects a dead
//! generation (see [`precedence`]). The node also disseminates one opaque,
//! versioned metadata blob (the ring): its version travels in every header and
//! the blob itself is pulled in chunks; liveness never changes it.
//!
//! The machine never reads a clock, touches a socket or spawns a thread: time
//! comes in through `now`, randomness from a PRNG seeded at construction, and
//! outputs leave through [`Swim::poll_transmit`] and [`Swim::poll_event`]
//! (quinn-proto's vocabulary). Invariants: every datagram it emits is at most
//! `datagram_size_max_bytes` long; every queue and table is bounded by a `*_max`
//! in [`Config`]; a malformed datagram is counted and dropped, never a panic.

pub mod dissemination;
pub mod precedence;
pub mod simulation;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::id::NodeId;
use dissemination::BroadcastQueue;
use precedence::{Claim, Verdict, judge};
pub use wire::MemberState;
use wire::{Body, Header, MessageWriter, PROTOCOL_VERSION, SYNC_BUCKETS, Update};

/// Merges two metadata blobs into one (for a state-based CRDT such as the
/// ring). Must be deterministic, commutative, associative and idempotent, and
/// produce a canonical encoding, or nodes never agree on the blob.
pub type MetadataMerge = fn(&[u8], &[u8]) -> Vec<u8>;

/// Tunables. Defaults are the LAN profile of the research note (memberlist's).
#[derive(Debug, Clone)]
pub struct Config {
    /// `T'`: one probe per period (scaled by the local health multiplier).
    pub protocol_period: Duration,
    /// How long to wait for a direct ack before asking relays (scaled likewise).
    pub probe_timeout: Duration,
    /// `k`: relays asked for an indirect probe.
    pub indirect_probes: usize,
    /// A relay nacks after this percentage of its probe timeout (Lifeguard: 80).
    pub nack_timeout_percent: u32,
    /// `λ`: each update is piggybacked `λ·⌈log10(n+1)⌉` times.
    pub retransmit_multiplier: u32,
    /// `α`: suspicion `Min = α·max(1, log10 n)·T'`; confirmations needed `K = α − 2`.
    pub suspicion_multiplier: u32,
    /// `β`: suspicion `Max = β·Min` (Lifeguard only).
    pub suspicion_max_multiplier: u32,
    /// When a suspicion times out, probe the suspect once more (directly and through
    /// `k` relays, carrying the suspicion) and declare it dead only if that fails
    /// too. Costs one period of detection; makes a missed refutation harmless.
    pub suspicion_verify: bool,
    /// How many independent probe sets the last-chance probe sends at once
    /// (each a direct ping plus `k` relays), all within the same period. Under
    /// uniform loss `p` one set fails for a live member with probability about
    /// `(2p)·(4p)^k`; each further set multiplies that again, at no cost in
    /// detection time. This is what keeps a healthy member alive through the
    /// rare suspicion it could not refute in time (1,000 nodes, 10 % loss).
    pub suspicion_verify_attempts: u32,
    /// Lifeguard on: local health, nacks, dynamic suspicion, buddy rule. Off: plain SWIM
    /// with the fixed suspicion timeout `Min`.
    pub lifeguard: bool,
    /// The local health multiplier ranges over `1..=local_health_max`.
    pub local_health_max: u32,
    /// How often pending updates are gossiped beyond pings and acks.
    pub gossip_interval: Duration,
    /// How many members each gossip round goes to.
    pub gossip_fanout: usize,
    /// Push-pull period for up to 32 members; scaled by `⌈log2 n − 5⌉ + 1` above.
    pub push_pull_interval: Duration,
    /// Extra push-pulls after joining, at 1, 2, 4, … periods.
    pub bootstrap_syncs: u32,
    /// How often to push-pull with a random dead member (heals partitions).
    pub reconnect_interval: Duration,
    /// How long dead and left members are kept as tombstones.
    pub dead_retention: Duration,
    /// How often to retry the seeds until someone answers.
    pub join_retry_interval: Duration,
    /// Longest time spent announcing a graceful leave.
    pub leave_timeout: Duration,
    /// The datagram budget: nothing larger is sent or accepted.
    pub datagram_size_max_bytes: usize,
    /// Most members (including tombstones) held.
    pub members_max: usize,
    /// Most pending piggyback updates.
    pub broadcasts_max: usize,
    /// Most indirect probes relayed for others at once.
    pub relays_max: usize,
    /// Most datagrams waiting in [`Swim::poll_transmit`].
    pub transmits_max: usize,
    /// Most events waiting in [`Swim::poll_event`].
    pub events_max: usize,
    /// Most datagrams of entries one push-pull answer may send.
    pub sync_datagrams_max: usize,
    /// Largest metadata blob.
    pub metadata_size_max_bytes: usize,
    /// Metadata bytes per chunk datagram.
    pub metadata_chunk_bytes: usize,
    /// How long a metadata fetch may take before another source is tried.
    pub metadata_fetch_timeout: Duration,
    /// `None`: the newest version wins (ties by digest). `Some`: blobs are merged.
    pub metadata_merge: Option<MetadataMerge>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            protocol_period: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_probes: 3,
            nack_timeout_percent: 80,
            retransmit_multiplier: 4,
            suspicion_multiplier: 4,
            suspicion_max_multiplier: 6,
            suspicion_verify: true,
            suspicion_verify_attempts: 2,
            lifeguard: true,
            local_health_max: 8,
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            push_pull_interval: Duration::from_secs(30),
            bootstrap_syncs: 5,
            reconnect_interval: Duration::from_secs(5),
            dead_retention: Duration::from_secs(300),
            join_retry_interval: Duration::from_secs(2),
            leave_timeout: Duration::from_secs(3),
            datagram_size_max_bytes: 1200,
            members_max: 65_536,
            broadcasts_max: 8_192,
            relays_max: 256,
            transmits_max: 4_096,
            events_max: 65_536,
            sync_datagrams_max: 96,
            metadata_size_max_bytes: 1 << 20,
            metadata_chunk_bytes: 1024,
            metadata_fetch_timeout: Duration::from_secs(2),
            metadata_merge: None,
        }
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The member it is for, when known (a seed's id is not).
    pub to: Option<NodeId>,
    /// Where to send it.
    pub address: SocketAddr,
    /// The datagram, at most `datagram_size_max_bytes`.
    pub bytes: Vec<u8>,
}

/// What the application learns about the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Some member answered after [`Swim::join`]: this node is in the group.
    Joined,
    /// A member appeared, came back from dead, or restarted in a new generation.
    MemberUp {
        /// The member.
        node: NodeId,
        /// Its generation.
        generation: u64,
        /// Where it listens.
        address: SocketAddr,
    },
    /// A member is suspected; it still counts as alive.
    MemberSuspect {
        /// The member.
        node: NodeId,
        /// Its generation.
        generation: u64,
        /// The incarnation suspected.
        incarnation: u64,
    },
    /// A suspected member refuted the suspicion.
    MemberAlive {
        /// The member.
        node: NodeId,
        /// Its generation.
        generation: u64,
        /// Its new incarnation.
        incarnation: u64,
    },
    /// A member was declared dead (a tombstone is kept).
    MemberDown {
        /// The member.
        node: NodeId,
        /// Its generation.
        generation: u64,
        /// The incarnation declared dead.
        incarnation: u64,
    },
    /// A member left gracefully.
    MemberLeft {
        /// The member.
        node: NodeId,
        /// Its generation.
        generation: u64,
    },
    /// The disseminated metadata blob changed (read it with [`Swim::metadata`]).
    MetadataChanged {
        /// Its new version.
        version: u64,
    },
}

/// One member as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member.
    pub node: NodeId,
    /// Its generation.
    pub generation: u64,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its state.
    pub state: MemberState,
    /// Where it listens.
    pub address: SocketAddr,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams handed to [`Swim::poll_transmit`].
    pub datagrams_sent: u64,
    /// Bytes in them.
    pub bytes_sent: u64,
    /// Datagrams accepted.
    pub datagrams_received: u64,
    /// Datagrams rejected as malformed, oversized or of another version.
    pub malformed_datagrams: u64,
    /// Probes started.
    pub probes: u64,
    /// Probes that got no ack, direct or indirect.
    pub probe_failures: u64,
    /// Suspicions of others raised by this node's own probes.
    pub suspicions_raised: u64,
    /// Times this node refuted a suspicion or death of itself.
    pub refutations: u64,
    /// Probes run with a local health multiplier above one (memberlist's
    /// `degraded.timeout`).
    pub degraded_timeouts: u64,
    /// Outputs dropped because a bounded queue was full.
    pub dropped_outputs: u64,
    /// Members not added because `members_max` was reached.
    pub members_over_limit: u64,
}

/// Why metadata was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// Larger than `metadata_size_max_bytes`.
    #[error("metadata of {length} bytes exceeds the {maximum}-byte limit")]
    TooLarge {
        /// Its length.
        length: usize,
        /// The limit.
        maximum: usize,
    },
}

#[derive(Debug)]
struct Suspicion {
    started: Instant,
    deadline: Instant,
    accusers: Vec<u64>,
    /// The sequence of the last-chance probe, once sent.
    verification: Option<u32>,
}

#[derive(Debug)]
struct Member {
    id: NodeId,
    generation: u64,
    incarnation: u64,
    state: MemberState,
    address: SocketAddr,
    /// The last accuser (for Suspect and Dead).
    from: u64,
    /// Boxed: rare, and the record stays small for cache locality at large `n`.
    suspicion: Option<Box<Suspicion>>,
}

impl Member {
    fn claim(&self) -> Claim {
        Claim {
            generation: self.generation,
            incarnation: self.incarnation,
            state: self.state,
        }
    }

    fn update(&self) -> Update {
        Update {
            node: self.id.0,
            generation: self.generation,
            incarnation: self.incarnation,
            state: self.state,
            address: self.address,
            from: self.from,
        }
    }
}

#[derive(Debug)]
struct Probe {
    target: NodeId,
    generation: u64,
    sequence: u32,
    timeout_at: Instant,
    acked: bool,
    indirect_sent: bool,
    expected_nacks: u32,
    nacks: u32,
}

#[derive(Debug)]
struct Relay {
    sequence: u32,
    requester: NodeId,
    requester_address: SocketAddr,
    requester_sequence: u32,
    nack_at: Option<Instant>,
    expires_at: Instant,
}

#[derive(Debug)]
struct Metadata {
    version: u64,
    digest: u32,
    bytes: Vec<u8>,
}

#[derive(Debug)]
struct Fetch {
    version: u64,
    digest: u32,
    total_length: Option<usize>,
    buffer: Vec<u8>,
    offsets: HashSet<u32>,
    received_bytes: usize,
    deadline: Instant,
}

/// Where an update came from: decides whether it is gossiped on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// This node's own verdict.
    Local,
    /// The implicit `Alive` of a datagram's sender; `replied` if we answer it directly.
    Header { replied: bool },
    /// A piggybacked rumour.
    Gossip,
    /// A push-pull entry.
    Sync,
}

fn metadata_digest(bytes: &[u8]) -> u32 {
    xxhash_rust::xxh3::xxh3_64(bytes) as u32
}

/// The SWIM + Lifeguard state machine of one node.
#[derive(Debug)]
pub struct Swim {
    config: Config,
    id: NodeId,
    generation: u64,
    incarnation: u64,
    address: SocketAddr,
    rng: ChaCha8Rng,

    members: Vec<Member>,
    index: HashMap<NodeId, usize>,
    live_count: usize,
    dead_count: usize,

    probe_order: Vec<NodeId>,
    probe_position: usize,
    probe: Option<Probe>,
    next_probe_at: Instant,
    sequence: u32,
    relays: VecDeque<Relay>,
    verifications: HashMap<u32, NodeId>,
    local_health: u32,

    broadcasts: BroadcastQueue,
    suspicion_deadlines: BTreeSet<(Instant, NodeId)>,
    tombstones: VecDeque<(Instant, NodeId, u64, u64)>,

    next_gossip_at: Instant,
    next_push_pull_at: Instant,
    bootstrap_syncs_done: u32,
    next_reconnect_at: Instant,

    seeds: Vec<SocketAddr>,
    next_join_at: Option<Instant>,
    joined: bool,
    leave_deadline: Option<Instant>,
    left: bool,

    metadata: Metadata,
    fetch: Option<Fetch>,

    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Swim {
    /// A node that knows no one yet. `generation` must grow across restarts of
    /// the same `id` (for example the boot epoch); `seed` drives all its choices.
    pub fn new(
        config: Config,
        id: NodeId,
        generation: u64,
        address: SocketAddr,
        seed: u64,
        now: Instant,
    ) -> Swim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Spread first probes over a period so that nodes do not probe in lockstep.
        let period_micros = config.protocol_period.as_micros().max(1) as u64;
        let next_probe_at = now + Duration::from_micros(rng.random_range(0..period_micros));
        let push_pull_micros = config.push_pull_interval.as_micros().max(1) as u64;
        let next_push_pull_at = now + Duration::from_micros(rng.random_range(0..push_pull_micros));
        let broadcasts = BroadcastQueue::new(config.broadcasts_max);
        let metadata = Metadata {
            version: 0,
            digest: metadata_digest(&[]),
            bytes: Vec::new(),
        };
        Swim {
            next_reconnect_at: now + config.reconnect_interval,
            next_gossip_at: now + config.gossip_interval,
            config,
            id,
            generation,
            incarnation: 0,
            address,
            rng,
            members: Vec::new(),
            index: HashMap::new(),
            live_count: 0,
            dead_count: 0,
            probe_order: Vec::new(),
            probe_position: 0,
            probe: None,
            next_probe_at,
            sequence: 0,
            relays: VecDeque::new(),
            verifications: HashMap::new(),
            local_health: 0,
            broadcasts,
            suspicion_deadlines: BTreeSet::new(),
            tombstones: VecDeque::new(),
            next_push_pull_at,
            bootstrap_syncs_done: u32::MAX,
            seeds: Vec::new(),
            next_join_at: None,
            joined: false,
            leave_deadline: None,
            left: false,
            metadata,
            fetch: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    // ----------------------------------------------------------------------------
    // Public API
    // ----------------------------------------------------------------------------

    /// Joins the group through `seeds`: announces itself and asks each seed for
    /// its view, retrying until some member answers.
    pub fn join(&mut self, now: Instant, seeds: &[SocketAddr]) {
        self.seeds = seeds
            .iter()
            .copied()
            .filter(|s| *s != self.address)
            .collect();
        self.broadcasts.push(self.self_update(MemberState::Alive));
        self.next_join_at = Some(now);
        self.send_join(now);
    }

    /// Adds a member known out of band (a static bootstrap list): no gossip is
    /// sent about it. Ignored if the member is already known.
    pub fn add_member(&mut self, node: NodeId, generation: u64, address: SocketAddr) {
        if node == self.id || self.index.contains_key(&node) {
            return;
        }
        let update = Update {
            node: node.0,
            generation,
            incarnation: 0,
            state: MemberState::Alive,
            address,
            from: node.0,
        };
        // Sync origin: a new member learned this way is not gossiped on.
        self.insert(&update, Origin::Sync, None);
        self.joined = true;
    }

    /// Starts a graceful leave: the node announces `Left`, stops probing, keeps
    /// answering until the announcement has spread (or `leave_timeout`), then
    /// falls silent ([`Swim::has_left`]).
    pub fn leave(&mut self, now: Instant) {
        if self.leave_deadline.is_some() || self.left {
            return;
        }
        self.leave_deadline = Some(now + self.config.leave_timeout);
        self.probe = None;
        self.broadcasts.push(self.self_update(MemberState::Left));
        self.gossip(now);
    }

    /// Whether a graceful leave has completed; the node then ignores all input.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Replaces the disseminated metadata blob (for example a new ring).
    /// `version` should exceed the current one, or peers keep theirs.
    pub fn set_metadata(&mut self, version: u64, bytes: Vec<u8>) -> Result<(), MetadataError> {
        if bytes.len() > self.config.metadata_size_max_bytes {
            return Err(MetadataError::TooLarge {
                length: bytes.len(),
                maximum: self.config.metadata_size_max_bytes,
            });
        }
        self.metadata = Metadata {
            version,
            digest: metadata_digest(&bytes),
            bytes,
        };
        Ok(())
    }

    /// The current metadata blob and its version.
    pub fn metadata(&self) -> (u64, &[u8]) {
        (self.metadata.version, &self.metadata.bytes)
    }

    /// Handles one datagram from `from`. Malformed input is counted and dropped.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if self.left {
            return;
        }
        let datagram = match wire::decode(bytes, self.config.datagram_size_max_bytes) {
            Ok(datagram) => datagram,
            Err(_) => {
                self.stats.malformed_datagrams += 1;
                return;
            }
        };
        let header = datagram.header;
        if header.source == self.id.0 {
            self.stats.malformed_datagrams += 1;
            return;
        }
        self.stats.datagrams_received += 1;
        if !self.joined {
            self.joined = true;
            self.next_join_at = None;
            self.bootstrap_syncs_done = 0;
            self.next_push_pull_at = now + self.config.protocol_period;
            self.push_event(Event::Joined);
        }
        let source = NodeId(header.source);
        let implicit = Update {
            node: header.source,
            generation: header.generation,
            incarnation: header.incarnation,
            state: MemberState::Alive,
            address: from,
            from: header.source,
        };
        self.apply(
            now,
            &implicit,
            Origin::Header {
                replied: datagram.body.expects_reply(),
            },
        );
        let origin = if datagram.body == Body::SyncEntries {
            Origin::Sync
        } else {
            Origin::Gossip
        };
        for update in &datagram.updates {
            self.apply(now, update, origin);
        }
        self.consider_metadata(now, &header, source, from);
        match datagram.body {
            Body::Ping { sequence, target } => {
                if target == self.id.0 {
                    self.send(now, Some(source), from, Body::Ack { sequence }, true);
                }
            }
            Body::Ack { sequence } => self.handle_ack(now, sequence),
            Body::PingRequest {
                sequence,
                target,
                target_address,
                nack,
            } => {
                self.handle_ping_request(now, source, from, sequence, target, target_address, nack)
            }
            Body::Nack { sequence } => {
                if let Some(probe) = &mut self.probe
                    && probe.sequence == sequence
                {
                    probe.nacks += 1;
                    // Every relay reached us and none reached the target: the
                    // evidence is in, so conclude now rather than at period end.
                    if !probe.acked && probe.nacks >= probe.expected_nacks {
                        self.finish_probe(now);
                    }
                }
            }
            Body::Gossip | Body::SyncEntries => {}
            Body::SyncDigest {
                reply,
                join,
                buckets,
            } => self.handle_sync_digest(now, source, from, reply, join, &buckets),
            Body::MetadataRequest { .. } => self.send_metadata(now, source, from),
            Body::MetadataChunk {
                version,
                digest,
                total_length,
                offset,
                bytes,
            } => self.handle_metadata_chunk(now, version, digest, total_length, offset, &bytes),
        }
    }

    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.left {
            return;
        }
        self.run_relays(now);
        if let Some(probe) = &self.probe
            && !probe.acked
            && !probe.indirect_sent
            && now >= probe.timeout_at
        {
            self.send_indirect_probes(now);
        }
        if now >= self.next_probe_at {
            self.finish_probe(now);
            if self.leave_deadline.is_none() {
                self.start_probe(now);
            } else {
                self.next_probe_at = now + self.config.protocol_period;
            }
        }
        while let Some(&(deadline, node)) = self.suspicion_deadlines.first() {
            if deadline > now {
                break;
            }
            self.suspicion_deadlines.pop_first();
            self.suspicion_expired(now, node);
        }
        while let Some(&(expiry, node, generation, incarnation)) = self.tombstones.front() {
            if expiry > now {
                break;
            }
            self.tombstones.pop_front();
            self.collect_tombstone(node, generation, incarnation);
        }
        if now >= self.next_gossip_at
            && (!self.broadcasts.is_empty() || self.leave_deadline.is_some())
        {
            self.gossip(now);
        }
        if now >= self.next_push_pull_at {
            self.push_pull(now);
        }
        if now >= self.next_reconnect_at {
            self.next_reconnect_at = now + self.config.reconnect_interval;
            self.reconnect(now);
        }
        if let Some(at) = self.next_join_at
            && now >= at
            && !self.joined
        {
            self.send_join(now);
        }
        if let Some(fetch) = &self.fetch
            && now >= fetch.deadline
        {
            self.fetch = None;
        }
        if let Some(deadline) = self.leave_deadline {
            let announced = self
                .broadcasts
                .get(self.id.0)
                .is_none_or(|update| update.state != MemberState::Left);
            if now >= deadline || announced {
                self.left = true;
            }
        }
    }

    /// When [`Swim::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.left {
            return None;
        }
        let mut next = self.next_probe_at.min(self.next_push_pull_at);
        let mut consider = |at: Instant| next = next.min(at);
        if let Some(probe) = &self.probe
            && !probe.acked
            && !probe.indirect_sent
        {
            consider(probe.timeout_at);
        }
        if let Some(&(deadline, _)) = self.suspicion_deadlines.first() {
            consider(deadline);
        }
        if let Some(&(expiry, ..)) = self.tombstones.front() {
            consider(expiry);
        }
        for relay in &self.relays {
            consider(relay.nack_at.unwrap_or(relay.expires_at));
        }
        if !self.broadcasts.is_empty() {
            consider(self.next_gossip_at);
        }
        if self.dead_count > 0 {
            consider(self.next_reconnect_at);
        }
        if let Some(at) = self.next_join_at
            && !self.joined
        {
            consider(at);
        }
        if let Some(fetch) = &self.fetch {
            consider(fetch.deadline);
        }
        if let Some(deadline) = self.leave_deadline {
            // Checked each gossip round; the deadline bounds it.
            consider(deadline.min(self.next_gossip_at));
        }
        Some(next)
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The local health score (0 = healthy); the multiplier is score + 1.
    pub fn local_health(&self) -> u32 {
        self.local_health
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Other members currently alive or suspect.
    pub fn live_member_count(&self) -> usize {
        self.live_count
    }

    /// How this node sees `node`.
    pub fn member(&self, node: NodeId) -> Option<MemberInfo> {
        let member = &self.members[*self.index.get(&node)?];
        Some(MemberInfo {
            node: member.id,
            generation: member.generation,
            incarnation: member.incarnation,
            state: member.state,
            address: member.address,
        })
    }

    /// Every member held, including tombstones (not this node).
    pub fn members(&self) -> impl Iterator<Item = MemberInfo> + '_ {
        self.members.iter().map(|member| MemberInfo {
            node: member.id,
            generation: member.generation,
            incarnation: member.incarnation,
            state: member.state,
            address: member.address,
        })
    }

    /// Distinct accusers of a suspected member (Lifeguard's confirmations + 1).
    pub fn suspicion_accusers(&self, node: NodeId) -> usize {
        self.index
            .get(&node)
            .and_then(|&i| self.members[i].suspicion.as_ref())
            .map_or(0, |suspicion| suspicion.accusers.len())
    }

    /// Updates waiting to be piggybacked.
    pub fn pending_broadcasts(&self) -> usize {
        self.broadcasts.len()
    }

    // ----------------------------------------------------------------------------
    // Derived parameters
    // ----------------------------------------------------------------------------

    /// `n`: live members including this node.
    fn group_size(&self) -> usize {
        self.live_count + 1
    }

    fn retransmit_limit(&self) -> u32 {
        let n = self.group_size() as f64;
        let log = (n + 1.0).log10().ceil().max(1.0) as u32;
        self.config.retransmit_multiplier * log
    }

    fn suspicion_min(&self) -> Duration {
        let n = self.group_size() as f64;
        let scale = n.log10().max(1.0);
        self.config
            .protocol_period
            .mul_f64(f64::from(self.config.suspicion_multiplier) * scale)
    }

    fn confirmations_wanted(&self) -> u32 {
        let wanted = self.config.suspicion_multiplier.saturating_sub(2);
        if (self.group_size() as u32).saturating_sub(2) < wanted {
            0
        } else {
            wanted
        }
    }

    /// Lifeguard §IV-B: `max(Min, Max − (Max − Min)·ln(C+1)/ln(K+1))`.
    fn suspicion_timeout(&self, confirmations: usize) -> Duration {
        let min = self.suspicion_min();
        if !self.config.lifeguard {
            return min;
        }
        let wanted = self.confirmations_wanted();
        if wanted == 0 {
            return min;
        }
        let max = min * self.config.suspicion_max_multiplier;
        let fraction = ((confirmations as f64) + 1.0).ln() / (f64::from(wanted) + 1.0).ln();
        let timeout = max.as_secs_f64() - (max - min).as_secs_f64() * fraction;
        Duration::from_secs_f64(timeout.max(min.as_secs_f64()))
    }

    fn health_multiplier(&self) -> u32 {
        self.local_health + 1
    }

    fn adjust_health(&mut self, delta: i64) {
        if !self.config.lifeguard {
            return;
        }
        let maximum = i64::from(self.config.local_health_max.max(1) - 1);
        let score = (i64::from(self.local_health) + delta).clamp(0, maximum);
        self.local_health = score as u32;
    }

    fn push_pull_scale(&self) -> u32 {
        let n = self.group_size() as f64;
        if n <= 32.0 {
            1
        } else {
            (n.log2() - 32f64.log2()).ceil() as u32 + 1
        }
    }

    // ----------------------------------------------------------------------------
    // Outputs
    // ----------------------------------------------------------------------------

    fn push_event(&mut self, event: Event) {
        if self.events.len() >= self.config.events_max {
            self.events.pop_front();
            self.stats.dropped_outputs += 1;
        }
        self.events.push_back(event);
    }

    fn push_transmit(&mut self, transmit: Transmit) {
        if self.transmits.len() >= self.config.transmits_max {
            self.stats.dropped_outputs += 1;
            return;
        }
        debug_assert!(transmit.bytes.len() <= self.config.datagram_size_max_bytes);
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += transmit.bytes.len() as u64;
        self.transmits.push_back(transmit);
    }

    fn header(&self) -> Header {
        Header {
            version: PROTOCOL_VERSION,
            source: self.id.0,
            generation: self.generation,
            incarnation: self.incarnation,
            metadata_version: self.metadata.version,
            metadata_digest: self.metadata.digest,
        }
    }

    fn self_update(&self, state: MemberState) -> Update {
        Update {
            node: self.id.0,
            generation: self.generation,
            incarnation: self.incarnation,
            state,
            address: self.address,
            from: self.id.0,
        }
    }

    /// Sends `body` to `address`, piggybacking pending updates if `piggyback`.
    /// An update about the recipient that it must hear goes first: the buddy
    /// rule for a suspect (Lifeguard), or the accusation behind a tombstone.
    fn send(
        &mut self,
        now: Instant,
        to: Option<NodeId>,
        address: SocketAddr,
        body: Body,
        piggyback: bool,
    ) {
        self.send_directed(now, to, address, body, piggyback, false);
    }

    /// [`Swim::send`], carrying the recipient's suspicion even without Lifeguard
    /// when `tell_suspect`.
    fn send_directed(
        &mut self,
        _now: Instant,
        to: Option<NodeId>,
        address: SocketAddr,
        body: Body,
        piggyback: bool,
        tell_suspect: bool,
    ) {
        let header = self.header();
        let Some(mut writer) =
            MessageWriter::new(&header, &body, self.config.datagram_size_max_bytes)
        else {
            self.stats.dropped_outputs += 1;
            return;
        };
        if self.leave_deadline.is_some() {
            writer.try_push(&self.self_update(MemberState::Left));
        }
        let mut directed = None;
        if let Some(to) = to
            && let Some(&i) = self.index.get(&to)
        {
            let member = &self.members[i];
            let buddy =
                member.state == MemberState::Suspect && (self.config.lifeguard || tell_suspect);
            if buddy || member.state == MemberState::Dead {
                writer.try_push(&member.update());
                directed = Some(to.0);
            }
        }
        // Rumours ride only on datagrams to members held alive (or not known,
        // such as seeds): a transmit spent on a suspect or dead member is most
        // likely lost, and a rumour has only `λ·log n` of them.
        let recipient_alive = to
            .and_then(|to| self.index.get(&to))
            .is_none_or(|&i| self.members[i].state == MemberState::Alive);
        if piggyback && recipient_alive {
            let limit = self.retransmit_limit();
            self.broadcasts
                .take(limit, directed, |update| writer.try_push(update));
        }
        if body == Body::Gossip && writer.count() == 0 {
            return;
        }
        self.push_transmit(Transmit {
            to,
            address,
            bytes: writer.finish(),
        });
    }

    // ----------------------------------------------------------------------------
    // Member table
    // ----------------------------------------------------------------------------

    fn apply(&mut self, now: Instant, update: &Update, origin: Origin) {
        if update.node == self.id.0 {
            self.apply_about_self(update);
            return;
        }
        let index = self.index.get(&NodeId(update.node)).copied();
        let held = index.map(|i| self.members[i].claim());
        let incoming = Claim {
            generation: update.generation,
            incarnation: update.incarnation,
            state: update.state,
        };
        match judge(held, incoming) {
            Verdict::Ignore => {}
            Verdict::Stale => {
                let resend = match origin {
                    Origin::Gossip => true,
                    Origin::Header { replied } => !replied,
                    Origin::Local | Origin::Sync => false,
                };
                if resend && let Some(i) = index {
                    self.broadcasts.push(self.members[i].update());
                }
            }
            Verdict::Confirm => {
                if let Some(i) = index {
                    self.confirm(i, update, origin);
                }
            }
            Verdict::Replace => match index {
                None => self.insert(update, origin, Some(now)),
                Some(i) => self.replace(now, i, update),
            },
        }
    }

    /// Somebody asserts something about this node.
    fn apply_about_self(&mut self, update: &Update) {
        if update.generation != self.generation || self.leave_deadline.is_some() {
            return;
        }
        let refute = match update.state {
            MemberState::Alive => update.incarnation > self.incarnation,
            MemberState::Suspect | MemberState::Dead | MemberState::Left => {
                update.incarnation >= self.incarnation
            }
        };
        if !refute {
            return;
        }
        self.incarnation = update.incarnation + 1;
        self.broadcasts.push(self.self_update(MemberState::Alive));
        if update.state != MemberState::Alive {
            self.stats.refutations += 1;
            self.adjust_health(1);
        }
    }

    /// Adds an unknown member (Alive or Suspect).
    fn insert(&mut self, update: &Update, origin: Origin, now: Option<Instant>) {
        if self.members.len() >= self.config.members_max {
            self.stats.members_over_limit += 1;
            return;
        }
        let id = NodeId(update.node);
        let i = self.members.len();
        self.members.push(Member {
            id,
            generation: update.generation,
            incarnation: update.incarnation,
            state: MemberState::Alive,
            address: update.address,
            from: update.node,
            suspicion: None,
        });
        self.index.insert(id, i);
        self.live_count += 1;
        self.add_to_probe_order(id);
        self.push_event(Event::MemberUp {
            node: id,
            generation: update.generation,
            address: update.address,
        });
        if update.state == MemberState::Suspect
            && let Some(now) = now
        {
            self.members[i].state = MemberState::Suspect;
            self.members[i].from = update.from;
            self.start_suspicion(now, i, update.from);
        }
        if origin != Origin::Sync {
            self.broadcasts.push(self.members[i].update());
        }
    }

    /// Moves a known member to the claim of `update`, which won precedence.
    fn replace(&mut self, now: Instant, i: usize, update: &Update) {
        let old_state = self.members[i].state;
        let new_generation = update.generation != self.members[i].generation;
        self.clear_suspicion(i);
        {
            let member = &mut self.members[i];
            member.generation = update.generation;
            member.incarnation = update.incarnation;
            member.state = update.state;
            member.from = update.from;
            if update.state == MemberState::Alive || new_generation {
                member.address = update.address;
            }
        }
        let id = self.members[i].id;
        let generation = update.generation;
        let incarnation = update.incarnation;
        match (old_state.is_live(), update.state.is_live()) {
            (true, false) => self.live_count -= 1,
            (false, true) => {
                self.live_count += 1;
                self.add_to_probe_order(id);
            }
            _ => {}
        }
        if old_state == MemberState::Dead {
            self.dead_count -= 1;
        }
        if update.state == MemberState::Dead {
            self.dead_count += 1;
        }
        match update.state {
            MemberState::Alive => {
                if old_state == MemberState::Suspect && !new_generation {
                    self.push_event(Event::MemberAlive {
                        node: id,
                        generation,
                        incarnation,
                    });
                } else if !old_state.is_live() || new_generation {
                    self.push_event(Event::MemberUp {
                        node: id,
                        generation,
                        address: update.address,
                    });
                }
            }
            MemberState::Suspect => {
                if !old_state.is_live() || new_generation {
                    self.push_event(Event::MemberUp {
                        node: id,
                        generation,
                        address: update.address,
                    });
                }
                self.start_suspicion(now, i, update.from);
            }
            MemberState::Dead => {
                self.push_event(Event::MemberDown {
                    node: id,
                    generation,
                    incarnation,
                });
                self.tombstones.push_back((
                    now + self.config.dead_retention,
                    id,
                    generation,
                    incarnation,
                ));
            }
            MemberState::Left => {
                self.push_event(Event::MemberLeft {
                    node: id,
                    generation,
                });
                self.tombstones.push_back((
                    now + self.config.dead_retention,
                    id,
                    generation,
                    incarnation,
                ));
            }
        }
        self.broadcasts.push(self.members[i].update());
    }

    fn start_suspicion(&mut self, now: Instant, i: usize, accuser: u64) {
        let deadline = now + self.suspicion_timeout(0);
        let member = &mut self.members[i];
        member.suspicion = Some(Box::new(Suspicion {
            started: now,
            deadline,
            accusers: vec![accuser],
            verification: None,
        }));
        let (id, generation, incarnation) = (member.id, member.generation, member.incarnation);
        self.suspicion_deadlines.insert((deadline, id));
        self.push_event(Event::MemberSuspect {
            node: id,
            generation,
            incarnation,
        });
    }

    fn clear_suspicion(&mut self, i: usize) {
        let member = &mut self.members[i];
        if let Some(suspicion) = member.suspicion.take() {
            self.suspicion_deadlines
                .remove(&(suspicion.deadline, member.id));
            if let Some(sequence) = suspicion.verification {
                self.verifications.remove(&sequence);
            }
        }
    }

    /// The same suspicion again: a new accuser shortens the timeout (Lifeguard §IV-B).
    fn confirm(&mut self, i: usize, update: &Update, origin: Origin) {
        let wanted = self.confirmations_wanted() as usize;
        let Some(suspicion) = &self.members[i].suspicion else {
            return;
        };
        if suspicion.accusers.contains(&update.from) || suspicion.accusers.len() > wanted {
            return;
        }
        let confirmations = suspicion.accusers.len();
        let started = suspicion.started;
        let old_deadline = suspicion.deadline;
        let deadline = (started + self.suspicion_timeout(confirmations)).max(started);
        let id = self.members[i].id;
        if let Some(suspicion) = &mut self.members[i].suspicion {
            suspicion.accusers.push(update.from);
            if deadline < old_deadline {
                suspicion.deadline = deadline;
                self.suspicion_deadlines.remove(&(old_deadline, id));
                self.suspicion_deadlines.insert((deadline, id));
            }
        }
        if origin != Origin::Sync {
            // Pass the confirmation on, under its accuser's name.
            self.broadcasts.push(update.clone());
        }
    }

    fn suspicion_expired(&mut self, now: Instant, node: NodeId) {
        let Some(&i) = self.index.get(&node) else {
            return;
        };
        if self.members[i].state != MemberState::Suspect {
            return;
        }
        let unverified = self.members[i]
            .suspicion
            .as_ref()
            .is_some_and(|suspicion| suspicion.verification.is_none());
        if self.config.suspicion_verify && unverified {
            self.verify_suspect(now, i);
            return;
        }

        let mut update = self.members[i].update();
        update.state = MemberState::Dead;
        update.from = self.id.0;
        self.replace(now, i, &update);
    }

    /// The last-chance probe of a suspect whose suspicion timed out.
    fn verify_suspect(&mut self, now: Instant, i: usize) {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        // A degraded node waits longer for the answer (Lifeguard: its own
        // slowness must not become someone else's death).
        let deadline = now + self.config.protocol_period * self.health_multiplier();
        let (id, address) = (self.members[i].id, self.members[i].address);
        if let Some(suspicion) = &mut self.members[i].suspicion {
            suspicion.verification = Some(sequence);
            suspicion.deadline = deadline;
        }
        self.suspicion_deadlines.insert((deadline, id));
        self.verifications.insert(sequence, id);
        let attempts = self.config.suspicion_verify_attempts.max(1) as usize;
        for _ in 0..attempts {
            self.send_directed(
                now,
                Some(id),
                address,
                Body::Ping {
                    sequence,
                    target: id.0,
                },
                true,
                true,
            );
        }
        let mut exclude = vec![id];
        for _ in 0..self.config.indirect_probes * attempts {
            // Relays are Alive members only: a suspected relay is likely dead,
            // and its missing nack would read as our own ill health.
            let Some(r) = self.random_member(&exclude, true) else {
                break;
            };
            exclude.push(self.members[r].id);
        }
        for relay in exclude[1..].iter().copied() {
            let Some(&r) = self.index.get(&relay) else {
                continue;
            };
            let relay_address = self.members[r].address;
            self.send(
                now,
                Some(relay),
                relay_address,
                Body::PingRequest {
                    sequence,
                    target: id.0,
                    target_address: address,
                    nack: false,
                },
                true,
            );
        }
    }

    /// The suspect answered its last-chance probe: it is alive and has been told
    /// of the suspicion, so wait another `Min` for its refutation.
    fn suspect_answered(&mut self, now: Instant, node: NodeId) {
        let Some(&i) = self.index.get(&node) else {
            return;
        };
        let deadline = now + self.suspicion_min();
        if let Some(suspicion) = &mut self.members[i].suspicion {
            self.suspicion_deadlines.remove(&(suspicion.deadline, node));
            suspicion.verification = None;
            suspicion.deadline = deadline;
            self.suspicion_deadlines.insert((deadline, node));
        }
    }

    fn collect_tombstone(&mut self, node: NodeId, generation: u64, incarnation: u64) {
        let Some(&i) = self.index.get(&node) else {
            return;
        };
        let member = &self.members[i];
        if member.state.is_live()
            || member.generation != generation
            || member.incarnation != incarnation
        {
            return;
        }
        if member.state == MemberState::Dead {
            self.dead_count -= 1;
        }
        self.index.remove(&node);
        self.members.swap_remove(i);
        if let Some(moved) = self.members.get(i) {
            self.index.insert(moved.id, i);
        }
    }

    fn add_to_probe_order(&mut self, id: NodeId) {
        // SWIM §4.3: a new member goes to a random position of the rest of the pass.
        self.probe_order.push(id);
        let last = self.probe_order.len() - 1;
        let start = self.probe_position.min(last);
        let position = self.rng.random_range(start..=last);
        self.probe_order.swap(position, last);
    }

    /// A uniformly random live member other than `exclude` (only `Alive` ones if
    /// `alive_only`): rejection sampling, then a scan when candidates are rare.
    fn random_live_member(&mut self, exclude: &[NodeId]) -> Option<usize> {
        self.random_member(exclude, false)
    }

    fn random_member(&mut self, exclude: &[NodeId], alive_only: bool) -> Option<usize> {
        let eligible = |member: &Member| {
            let state_ok = if alive_only {
                member.state == MemberState::Alive
            } else {
                member.state.is_live()
            };
            state_ok && !exclude.contains(&member.id)
        };
        if self.members.is_empty() {
            return None;
        }
        if self.live_count > exclude.len() {
            for _ in 0..64 {
                let i = self.rng.random_range(0..self.members.len());
                if eligible(&self.members[i]) {
                    return Some(i);
                }
            }
        }
        let candidates: Vec<usize> = (0..self.members.len())
            .filter(|&i| eligible(&self.members[i]))
            .collect();
        candidates.choose_random(&mut self.rng)
    }

    // ----------------------------------------------------------------------------
    // Probe cycle
    // ----------------------------------------------------------------------------

    fn next_target(&mut self) -> Option<usize> {
        for _ in 0..2 {
            while self.probe_position < self.probe_order.len() {
                let id = self.probe_order[self.probe_position];
                self.probe_position += 1;
                if let Some(&i) = self.index.get(&id)
                    && self.members[i].state.is_live()
                {
                    return Some(i);
                }
            }
            // End of a pass: reshuffle the live members.
            let mut order: Vec<NodeId> = self
                .members
                .iter()
                .filter(|member| member.state.is_live())
                .map(|member| member.id)
                .collect();
            order.shuffle(&mut self.rng);
            self.probe_order = order;
            self.probe_position = 0;
        }
        None
    }

    fn start_probe(&mut self, now: Instant) {
        let multiplier = self.health_multiplier();
        self.next_probe_at = now + self.config.protocol_period * multiplier;
        let Some(i) = self.next_target() else {
            return;
        };
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let member = &self.members[i];
        let (target, generation, address) = (member.id, member.generation, member.address);
        self.probe = Some(Probe {
            target,
            generation,
            sequence,
            timeout_at: now + self.config.probe_timeout * multiplier,
            acked: false,
            indirect_sent: false,
            expected_nacks: 0,
            nacks: 0,
        });
        self.stats.probes += 1;
        if multiplier > 1 {
            self.stats.degraded_timeouts += 1;
        }
        self.send(
            now,
            Some(target),
            address,
            Body::Ping {
                sequence,
                target: target.0,
            },
            true,
        );
    }

    fn send_indirect_probes(&mut self, now: Instant) {
        let Some(probe) = &mut self.probe else {
            return;
        };
        probe.indirect_sent = true;
        let (target, sequence) = (probe.target, probe.sequence);
        let Some(&t) = self.index.get(&target) else {
            return;
        };
        let target_address = self.members[t].address;
        let mut exclude = vec![target];
        for _ in 0..self.config.indirect_probes {
            // Relays are Alive members only: a suspected relay is likely dead,
            // and its missing nack would read as our own ill health.
            let Some(r) = self.random_member(&exclude, true) else {
                break;
            };
            exclude.push(self.members[r].id);
        }
        let relays: Vec<(NodeId, SocketAddr)> = exclude[1..]
            .iter()
            .filter_map(|id| self.index.get(id).map(|&i| (*id, self.members[i].address)))
            .collect();
        let nack = self.config.lifeguard;
        if let Some(probe) = &mut self.probe {
            probe.expected_nacks = if nack { relays.len() as u32 } else { 0 };
        }
        for (relay, address) in relays {
            self.send(
                now,
                Some(relay),
                address,
                Body::PingRequest {
                    sequence,
                    target: target.0,
                    target_address,
                    nack,
                },
                true,
            );
        }
    }

    /// Ends the period's probe: success lowers local health; failure raises it
    /// by the nacks that did not come and suspects the target.
    fn finish_probe(&mut self, now: Instant) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        if probe.acked {
            self.adjust_health(-1);
            return;
        }
        self.stats.probe_failures += 1;
        let delta = if probe.expected_nacks > 0 {
            i64::from(probe.expected_nacks.saturating_sub(probe.nacks))
        } else {
            1
        };
        self.adjust_health(delta);
        let Some(&i) = self.index.get(&probe.target) else {
            return;
        };
        let member = &self.members[i];
        if member.generation != probe.generation || !member.state.is_live() {
            return;
        }
        let mut update = member.update();
        update.state = MemberState::Suspect;
        update.from = self.id.0;
        self.stats.suspicions_raised += 1;
        self.apply(now, &update, Origin::Local);
    }

    fn handle_ack(&mut self, now: Instant, sequence: u32) {
        if let Some(probe) = &mut self.probe
            && probe.sequence == sequence
        {
            probe.acked = true;
            return;
        }
        if let Some(node) = self.verifications.remove(&sequence) {
            self.suspect_answered(now, node);
            return;
        }
        if let Some(position) = self.relays.iter().position(|r| r.sequence == sequence) {
            let Some(relay) = self.relays.remove(position) else {
                return;
            };
            self.send(
                now,
                Some(relay.requester),
                relay.requester_address,
                Body::Ack {
                    sequence: relay.requester_sequence,
                },
                true,
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_ping_request(
        &mut self,
        now: Instant,
        requester: NodeId,
        requester_address: SocketAddr,
        requester_sequence: u32,
        target: u64,
        target_address: SocketAddr,
        nack: bool,
    ) {
        if self.relays.len() >= self.config.relays_max || self.leave_deadline.is_some() {
            self.stats.dropped_outputs += 1;
            return;
        }
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let nack_at = nack.then(|| {
            now + self
                .config
                .probe_timeout
                .mul_f64(f64::from(self.config.nack_timeout_percent) / 100.0)
        });
        self.relays.push_back(Relay {
            sequence,
            requester,
            requester_address,
            requester_sequence,
            nack_at,
            expires_at: now + self.config.protocol_period,
        });
        self.send(
            now,
            Some(NodeId(target)),
            target_address,
            Body::Ping { sequence, target },
            true,
        );
    }

    fn run_relays(&mut self, now: Instant) {
        let mut nacks = Vec::new();
        for relay in &mut self.relays {
            if let Some(at) = relay.nack_at
                && at <= now
            {
                relay.nack_at = None;
                nacks.push((
                    relay.requester,
                    relay.requester_address,
                    relay.requester_sequence,
                ));
            }
        }
        self.relays.retain(|relay| relay.expires_at > now);
        for (requester, address, sequence) in nacks {
            self.send(now, Some(requester), address, Body::Nack { sequence }, true);
        }
    }

    // ----------------------------------------------------------------------------
    // Dissemination, push-pull, join
    // ----------------------------------------------------------------------------

    fn gossip(&mut self, now: Instant) {
        self.next_gossip_at = now + self.config.gossip_interval;
        let mut chosen: Vec<NodeId> = Vec::new();
        for _ in 0..self.config.gossip_fanout {
            let Some(i) = self.random_live_member(&chosen) else {
                break;
            };
            chosen.push(self.members[i].id);
        }
        for id in chosen {
            if self.broadcasts.is_empty() && self.leave_deadline.is_none() {
                break;
            }
            let Some(&i) = self.index.get(&id) else {
                continue;
            };
            let address = self.members[i].address;
            self.send(now, Some(id), address, Body::Gossip, true);
        }
    }

    /// Per-bucket digests of the view (this node included).
    fn digest(&self) -> Vec<u32> {
        let mut buckets = vec![0u32; SYNC_BUCKETS];
        let mut add = |node: u64, generation: u64, incarnation: u64, state: MemberState| {
            let mut bytes = [0u8; 25];
            bytes[..8].copy_from_slice(&node.to_le_bytes());
            bytes[8..16].copy_from_slice(&generation.to_le_bytes());
            bytes[16..24].copy_from_slice(&incarnation.to_le_bytes());
            bytes[24] = state.rank();
            let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
            buckets[Self::bucket(node)] ^= hash as u32;
        };
        add(
            self.id.0,
            self.generation,
            self.incarnation,
            MemberState::Alive,
        );
        for member in &self.members {
            add(
                member.id.0,
                member.generation,
                member.incarnation,
                member.state,
            );
        }
        buckets
    }

    fn bucket(node: u64) -> usize {
        (xxhash_rust::xxh3::xxh3_64(&node.to_le_bytes()) % SYNC_BUCKETS as u64) as usize
    }

    fn push_pull(&mut self, now: Instant) {
        let period = self.config.protocol_period;
        self.next_push_pull_at = if self.bootstrap_syncs_done < self.config.bootstrap_syncs {
            self.bootstrap_syncs_done += 1;
            now + period * (1u32 << self.bootstrap_syncs_done.min(16))
        } else {
            now + self.config.push_pull_interval * self.push_pull_scale()
        };
        let Some(i) = self.random_live_member(&[]) else {
            return;
        };
        let (id, address) = (self.members[i].id, self.members[i].address);
        let buckets = self.digest();
        self.send(
            now,
            Some(id),
            address,
            Body::SyncDigest {
                reply: true,
                join: false,
                buckets,
            },
            true,
        );
    }

    /// Push-pulls with a random dead member: if it is in fact alive (a healed
    /// partition), the exchange lets both sides refute.
    fn reconnect(&mut self, now: Instant) {
        if self.dead_count == 0 || self.members.is_empty() {
            return;
        }
        let mut chosen = None;
        for _ in 0..64 {
            let i = self.rng.random_range(0..self.members.len());
            if self.members[i].state == MemberState::Dead {
                chosen = Some(i);
                break;
            }
        }
        if chosen.is_none() {
            // Dead members are rare: sampling missed them, so scan (this runs
            // once per `reconnect_interval`, and only while someone is dead).
            let dead: Vec<usize> = (0..self.members.len())
                .filter(|&i| self.members[i].state == MemberState::Dead)
                .collect();
            chosen = dead.choose_random(&mut self.rng);
        }
        let Some(i) = chosen else {
            return;
        };
        let (id, address) = (self.members[i].id, self.members[i].address);
        let buckets = self.digest();
        self.send(
            now,
            Some(id),
            address,
            Body::SyncDigest {
                reply: true,
                join: false,
                buckets,
            },
            false,
        );
    }

    fn send_join(&mut self, now: Instant) {
        self.next_join_at = Some(now + self.config.join_retry_interval);
        let buckets = self.digest();
        for seed in self.seeds.clone() {
            self.send(
                now,
                None,
                seed,
                Body::SyncDigest {
                    reply: false,
                    join: true,
                    buckets: buckets.clone(),
                },
                true,
            );
        }
    }

    fn handle_sync_digest(
        &mut self,
        now: Instant,
        source: NodeId,
        address: SocketAddr,
        reply: bool,
        join: bool,
        buckets: &[u32],
    ) {
        let mine = self.digest();
        let differing: Vec<bool> = mine.iter().zip(buckets).map(|(a, b)| a != b).collect();
        let any = differing.iter().any(|&d| d);
        if any || join {
            let mut entries: Vec<Update> = Vec::new();
            if differing[Self::bucket(self.id.0)] || join {
                entries.push(self.self_update(MemberState::Alive));
            }
            // Live members first: if the answer is cut at `sync_datagrams_max`,
            // tombstones are what is left out.
            for live in [true, false] {
                for member in &self.members {
                    if member.state.is_live() == live && differing[Self::bucket(member.id.0)] {
                        entries.push(member.update());
                    }
                }
            }
            self.send_entries(now, source, address, &entries);
        }
        if reply && any {
            self.send(
                now,
                Some(source),
                address,
                Body::SyncDigest {
                    reply: false,
                    join: false,
                    buckets: mine,
                },
                true,
            );
        }
    }

    fn send_entries(&mut self, _now: Instant, to: NodeId, address: SocketAddr, entries: &[Update]) {
        let header = self.header();
        let mut rest = entries;
        let mut datagrams = 0;
        while !rest.is_empty() && datagrams < self.config.sync_datagrams_max {
            let Some(mut writer) = MessageWriter::new(
                &header,
                &Body::SyncEntries,
                self.config.datagram_size_max_bytes,
            ) else {
                return;
            };
            let mut taken = 0;
            while taken < rest.len() && writer.try_push(&rest[taken]) {
                taken += 1;
            }
            if taken == 0 {
                return;
            }
            rest = &rest[taken..];
            datagrams += 1;
            self.push_transmit(Transmit {
                to: Some(to),
                address,
                bytes: writer.finish(),
            });
        }
    }

    // ----------------------------------------------------------------------------
    // Metadata
    // ----------------------------------------------------------------------------

    fn wants_metadata(&self, version: u64, digest: u32) -> bool {
        if self.config.metadata_merge.is_some() {
            (version, digest) != (self.metadata.version, self.metadata.digest)
        } else {
            (version, digest) > (self.metadata.version, self.metadata.digest)
        }
    }

    fn consider_metadata(
        &mut self,
        now: Instant,
        header: &Header,
        source: NodeId,
        from: SocketAddr,
    ) {
        if !self.wants_metadata(header.metadata_version, header.metadata_digest) {
            return;
        }
        if self
            .fetch
            .as_ref()
            .is_some_and(|fetch| now < fetch.deadline)
        {
            return;
        }
        self.fetch = Some(Fetch {
            version: header.metadata_version,
            digest: header.metadata_digest,
            total_length: None,
            buffer: Vec::new(),
            offsets: HashSet::new(),
            received_bytes: 0,
            deadline: now + self.config.metadata_fetch_timeout,
        });
        self.send(
            now,
            Some(source),
            from,
            Body::MetadataRequest {
                version: header.metadata_version,
                digest: header.metadata_digest,
            },
            false,
        );
    }

    fn send_metadata(&mut self, now: Instant, to: NodeId, address: SocketAddr) {
        let chunk = self.config.metadata_chunk_bytes.max(1);
        let total_length = self.metadata.bytes.len();
        let mut offset = 0;
        loop {
            let end = (offset + chunk).min(total_length);
            let body = Body::MetadataChunk {
                version: self.metadata.version,
                digest: self.metadata.digest,
                total_length: total_length as u32,
                offset: offset as u32,
                bytes: self.metadata.bytes[offset..end].to_vec(),
            };
            self.send(now, Some(to), address, body, false);
            offset = end;
            if offset >= total_length {
                break;
            }
        }
    }

    fn handle_metadata_chunk(
        &mut self,
        _now: Instant,
        version: u64,
        digest: u32,
        total_length: u32,
        offset: u32,
        bytes: &[u8],
    ) {
        let Some(fetch) = &mut self.fetch else {
            return;
        };
        if (fetch.version, fetch.digest) != (version, digest) {
            return;
        }
        let total = total_length as usize;
        let start = offset as usize;
        if total > self.config.metadata_size_max_bytes
            || start + bytes.len() > total
            || fetch.total_length.is_some_and(|known| known != total)
        {
            self.stats.malformed_datagrams += 1;
            self.fetch = None;
            return;
        }
        if fetch.total_length.is_none() {
            fetch.total_length = Some(total);
            fetch.buffer = vec![0; total];
        }
        if !fetch.offsets.insert(offset) {
            return;
        }
        fetch.buffer[start..start + bytes.len()].copy_from_slice(bytes);
        fetch.received_bytes += bytes.len();
        if fetch.received_bytes < total {
            return;
        }
        let Some(fetch) = self.fetch.take() else {
            return;
        };
        if metadata_digest(&fetch.buffer) != digest {
            self.stats.malformed_datagrams += 1;
            return;
        }
        self.install_metadata(version, fetch.buffer);
    }

    fn install_metadata(&mut self, version: u64, bytes: Vec<u8>) {
        let (version, bytes) = match self.config.metadata_merge {
            None => {
                if !self.wants_metadata(version, metadata_digest(&bytes)) {
                    return;
                }
                (version, bytes)
            }
            Some(merge) => {
                let merged = merge(&self.metadata.bytes, &bytes);
                if merged == bytes {
                    (version.max(self.metadata.version), bytes)
                } else if merged == self.metadata.bytes {
                    // Ours already holds theirs: make ours the newer so they pull it.
                    if version < self.metadata.version {
                        return;
                    }
                    (version + 1, merged)
                } else {
                    (version.max(self.metadata.version) + 1, merged)
                }
            }
        };
        if bytes.len() > self.config.metadata_size_max_bytes {
            return;
        }
        let changed = bytes != self.metadata.bytes;
        self.metadata = Metadata {
            version,
            digest: metadata_digest(&bytes),
            bytes,
        };
        if changed {
            self.push_event(Event::MetadataChanged { version });
        }
    }
}

/// A random element of a slice.
trait ChooseRandom<T> {
    fn choose_random(&self, rng: &mut ChaCha8Rng) -> Option<T>;
}

impl<T: Copy> ChooseRandom<T> for Vec<T> {
    fn choose_random(&self, rng: &mut ChaCha8Rng) -> Option<T> {
        if self.is_empty() {
            None
        } else {
            Some(self[rng.random_range(0..self.len())])
        }
    }
}
