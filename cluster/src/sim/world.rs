//! One simulated cluster run: `Node`s on virtual time, a seeded faulty
//! network, process and machine crashes, SWIM membership (each node's
//! liveness comes from its own `Swim` on the same network), clients running
//! the set and register workloads, and the end-of-run invariant checks.
//!
//! A run has four phases: *workload* (clients and faults), *drain* (faults
//! stop, every node restarts, partitions heal, hints replay until none are
//! left), *repair* (an `r = all`, strict read of every key repairs the
//! primaries) and *check*. Every event folds into a trace hash; one seed
//! reproduces one run exactly because all chance comes from seeded ChaCha8
//! streams (network, faults, workload — split so that changing one fault's
//! draws leaves the workload's alone) and the nodes never read a clock.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::Config;
use crate::hinted_handoff;
use crate::id::{NodeId, Partition};
use crate::membership::{self, Event as SwimEvent, MemberState as SwimMemberState, Swim};
use crate::message::{
    Message, Output, Quorum, ReadOptions, Request, RequestError, RequestId, Response, WriteOptions,
    WriteResult,
};
use crate::node::{Liveness, Metrics, Node};
use crate::partitioner::Partitioner;
use crate::placement::Placement;
use crate::replica;
use crate::ring::Ring;
use crate::siblings::{ConflictPolicy, KeyState};
use crate::sim::checker::{self, AckedAdd, History, StrictRead, StrictWrite};
use crate::sim::network::{Network, NetworkFaults};
use crate::store::{Durability, MemStore, Store};
use crate::version_vector::VersionVector;

/// Which faults a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    /// Messages lost.
    pub drop: bool,
    /// Messages delayed (heavy tail).
    pub delay: bool,
    /// Messages delivered twice.
    pub duplicate: bool,
    /// Messages overtaking each other on a link.
    pub reorder: bool,
    /// Symmetric and one-way partitions.
    pub partition: bool,
    /// Process crashes: what was handed to the store survives.
    pub crash: bool,
    /// Machine crashes: what was not synced is lost.
    pub powerloss: bool,
}

impl Faults {
    /// Every fault.
    pub fn all() -> Faults {
        Faults {
            drop: true,
            delay: true,
            duplicate: true,
            reorder: true,
            partition: true,
            crash: true,
            powerloss: true,
        }
    }

    /// Parses `drop,delay,dup,reorder,partition,crash,powerloss` (any subset,
    /// `all`, or `none`).
    pub fn parse(text: &str) -> Result<Faults, String> {
        let mut faults = Faults::default();
        for name in text
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            match name {
                "all" => faults = Faults::all(),
                "none" => {}
                "drop" => faults.drop = true,
                "delay" => faults.delay = true,
                "dup" | "duplicate" => faults.duplicate = true,
                "reorder" => faults.reorder = true,
                "partition" => faults.partition = true,
                "crash" => faults.crash = true,
                "powerloss" => faults.powerloss = true,
                other => {
                    return Err(format!(
                        "unknown fault {other:?} (expected drop, delay, dup, reorder, partition, crash, powerloss, all or none)"
                    ));
                }
            }
        }
        Ok(faults)
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulationOptions {
    /// The seed: one seed, one run.
    pub seed: u64,
    /// Cluster members.
    pub nodes: usize,
    /// Client operations in the workload phase.
    pub ops: usize,
    /// Faults to inject.
    pub faults: Faults,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys of the set workload.
    pub set_keys: usize,
    /// Keys of the register workload.
    pub register_keys: usize,
    /// How replicas resolve concurrent writes. Under last-writer-wins the
    /// set workload loses concurrent adds by design, so the set check is
    /// skipped; every other invariant holds as under siblings.
    pub conflict_policy: ConflictPolicy,
    /// The end of the run relies on anti-entropy alone: no repair reads; the
    /// run waits until every replica of every key holds the same state.
    pub anti_entropy_only: bool,
    /// When the workload ends, node 0 loses its whole store (a new disk) and
    /// restarts empty. Acknowledged adds that no other node held at that
    /// moment may be lost; every other one must come back to it.
    pub wipe_at_drain: bool,
    /// Membership changes under the workload: two nodes join (`nodes` → `nodes
    /// + 2`), then one founder leaves; data moves while faults go on.
    pub topology: bool,
    /// With `topology`: the second join and the leave are asked at the same
    /// instant, at different nodes, a moment after the first join — changes
    /// that overlap, merged by the ring's CRDT while data moves.
    pub concurrent_changes: bool,
    /// With `topology`: once the drain's deletes are reaped and the ring has
    /// settled, the first joiner leaves again, so that partitions move back
    /// to nodes that owned them before the join and deleted their copies
    /// since. A copy kept across the first move would bring a reaped key
    /// back; the end checks that no deleted key came back.
    pub move_back: bool,
}

impl SimulationOptions {
    /// Defaults for a seed: 5 nodes, 5,000 operations, every fault.
    pub fn new(seed: u64) -> SimulationOptions {
        SimulationOptions {
            seed,
            nodes: 5,
            ops: 5000,
            faults: Faults::all(),
            clients: 6,
            set_keys: 4,
            register_keys: 4,
            conflict_policy: ConflictPolicy::Siblings,
            anti_entropy_only: false,
            wipe_at_drain: false,
            topology: false,
            concurrent_changes: false,
            move_back: false,
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Writes (adds and register writes) the cluster acknowledged.
    pub acked_writes: u64,
    /// Acknowledged adds that should have survived and were missing.
    pub lost_writes: u64,
    /// Whether all primaries of every key held identical state at the end.
    pub converged: bool,
    /// Every invariant that failed, in words.
    pub violations: Vec<String>,
    /// Acknowledged adds written without `durable` that a machine crash lost
    /// (allowed; shows that machine crashes really lose unsynced writes).
    pub unsynced_writes_lost: u64,
    /// Client operations completed (answered or timed out).
    pub ops_completed: u64,
    /// Client requests answered with an error.
    pub failed_requests: u64,
    /// Strict reads checked against earlier strict writes.
    pub strict_reads_checked: u64,
    /// Hash of every event of the run, in order.
    pub trace_hash: u64,
    /// Virtual time the run took, in milliseconds.
    pub simulated_millis: u64,
    /// Events processed.
    pub events: u64,
    /// Messages the nodes sent.
    pub messages_sent: u64,
    /// Messages the network lost (drops and partitions).
    pub messages_lost: u64,
    /// Process crashes injected.
    pub process_crashes: u64,
    /// Machine crashes injected.
    pub machine_crashes: u64,
    /// Partitions injected.
    pub partitions: u64,
    /// Store write failures injected.
    pub store_failures_injected: u64,
    /// Nodes that joined, and that left, during the run.
    pub joins: u64,
    /// Nodes that left.
    pub leaves: u64,
    /// With `move_back`: when the joiner was asked to leave, how many of the
    /// deleted register keys no member held any state of (tombstones
    /// reaped everywhere).
    pub reaped_before_move_back: Option<u64>,
    /// With `move_back`: (partition, node) pairs where the node was a
    /// primary at the start, not just before the move back, and is again at
    /// the end — copies that really moved back to a former owner.
    pub replicas_returned: u64,
    /// The nodes' counters, summed.
    pub metrics: Metrics,
}

impl Report {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The simulator's node configuration: short timeouts in virtual time and
/// small limits, so that limits are reached within a run.
pub fn simulation_config(rng: &mut ChaCha8Rng) -> Config {
    let mut config = Config {
        request_timeout: Duration::from_millis(1000),
        replica_answer_timeout: Duration::from_millis(150),
        sibling_count_max: rng.random_range(3..16),
        hint_bytes_per_target_max: rng.random_range(300..100_000),
        hint_age_max: Duration::from_millis(rng.random_range(2_000..60_000)),
        hint_replay_interval: Duration::from_millis(300),
        hint_replay_batch_max: 8,
        partition_count: 64,
        // Small enough that anti-entropy walks a partition in several ranges.
        anti_entropy_bytes_max: rng.random_range(64..4096),
        anti_entropy_build_keys_max: rng.random_range(1..8),
        // Small enough that range steps wait for budget.
        anti_entropy_bytes_per_second: rng.random_range(2_000..50_000),
        ..Config::default()
    };
    // Just past the hint age, so that runs reap tombstones (drawn last, so
    // that the draws before keep their order).
    config.tombstone_grace =
        config.hint_age_max + Duration::from_millis(rng.random_range(500..5_000));
    config
}

const LATENCY_MICROS: u64 = 400;
const CLIENT_LATENCY_MICROS: u64 = 100;
const THINK_TIME_MAX_MICROS: u64 = 5_000;
const PHASE_CHECK_MICROS: u64 = 250_000;
const DRAIN_MAX_MICROS: u64 = 300_000_000;
const FAULT_GAP_MEAN_MICROS: f64 = 1_200_000.0;
const RING_TICK_MICROS: u64 = 500_000;

/// SWIM as the simulated nodes run it: a 300 ms period (the LAN profile's
/// 1 s scaled to the simulated workload's pace), everything else default.
fn swim_config() -> membership::Config {
    membership::Config {
        protocol_period: Duration::from_millis(300),
        probe_timeout: Duration::from_millis(150),
        gossip_interval: Duration::from_millis(100),
        push_pull_interval: Duration::from_secs(5),
        reconnect_interval: Duration::from_secs(2),
        join_retry_interval: Duration::from_millis(500),
        ..membership::Config::default()
    }
}

/// The simulated address of node `index`.
fn sim_address(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (index >> 8) as u8, index as u8], 7000))
}

/// The node index of a simulated address.
fn sim_index(address: SocketAddr) -> Option<usize> {
    match address {
        SocketAddr::V4(v4) if v4.port() == 7000 => {
            let octets = v4.ip().octets();
            Some(usize::from(octets[2]) << 8 | usize::from(octets[3]))
        }
        _ => None,
    }
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: NodeId,
        to: usize,
        message: Message,
    },
    Timer {
        node: usize,
        generation: u64,
    },
    ClientNext {
        client: usize,
    },
    ClientResponse {
        client: usize,
        request: RequestId,
        response: Response,
    },
    ClientTimeout {
        client: usize,
        request: RequestId,
    },
    Crash {
        node: usize,
        machine: bool,
    },
    Restart {
        node: usize,
    },
    FaultTick,
    Heal,
    /// A SWIM datagram between two simulated nodes.
    Datagram {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
    },
    PhaseCheck,
    /// A node's ring reaches another (gossip; lost or delayed as messages are).
    RingGossip {
        to: usize,
        ring: Box<Ring>,
    },
    /// Every member pushes its ring to one other (as SWIM's push-pull does).
    RingTick,
    /// The drain phase's delete of a register key (again after a failure).
    FinalDelete {
        key: usize,
    },
    /// A new node starts and joins the ring.
    Join {
        node: usize,
    },
    /// A member is told to leave (as `shoal leave` does, at a random member).
    Leave {
        node: usize,
    },
}

impl Event {
    fn code(&self) -> u64 {
        match self {
            Event::Deliver { message, .. } => 100 + message_code(message),
            Event::Timer { .. } => 1,
            Event::ClientNext { .. } => 2,
            Event::ClientResponse { .. } => 3,
            Event::ClientTimeout { .. } => 4,
            Event::Crash { .. } => 5,
            Event::Restart { .. } => 6,
            Event::FaultTick => 7,
            Event::Heal => 8,
            Event::Datagram { .. } => 9,
            Event::PhaseCheck => 10,
            Event::RingGossip { .. } => 11,
            Event::RingTick => 12,
            Event::Join { .. } => 13,
            Event::Leave { .. } => 14,
            Event::FinalDelete { .. } => 15,
        }
    }
}

fn message_code(message: &Message) -> u64 {
    match message {
        Message::Forward { .. } => 0,
        Message::ForwardReply { .. } => 1,
        Message::Replicate { .. } => 2,
        Message::ReplicateAck { .. } => 3,
        Message::Read { .. } => 4,
        Message::ReadReply { .. } => 5,
        Message::Repair { .. } => 6,
        Message::HintReplay { .. } => 7,
        Message::HintAck { .. } => 8,
        Message::AeRoot { .. } => 9,
        Message::AeLeaves { .. } => 10,
        Message::AeStates { .. } => 11,
        Message::PullStates { .. } => 12,
        Message::PullReply { .. } => 13,
        Message::PullKeys { .. } => 14,
        Message::PullKeysReply { .. } => 15,
        Message::ReapQuery { .. } => 16,
        Message::ReapAnswer { .. } => 17,
        Message::Reap { .. } => 18,
        Message::AeDigests { .. } => 19,
    }
}

#[derive(Debug)]
struct Host {
    node: Option<Node>,
    /// The node's membership: SWIM feeds its liveness (no oracle). Lost
    /// with the process; a restart joins again in a new generation.
    swim: Option<Swim>,
    store: MemStore,
    timer_generation: u64,
    timer_at: Option<u64>,
    /// Bumped at every crash, so a client can tell a crash from a hang.
    crashes: u64,
    /// The node's ring, persisted (it survives crashes, as the server's
    /// durable record of it in its store does).
    ring: Ring,
    /// In the cluster: a founder, or a node that has joined.
    member: bool,
    /// Removed from the ring and stopped for good.
    gone: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Workload,
    Drain,
    Repair,
    Done,
}

#[derive(Debug, Clone)]
enum Step {
    SetRead {
        key: usize,
        element: u64,
        durable: bool,
        w: Quorum,
    },
    SetWrite {
        key: usize,
        element: u64,
        durable: bool,
    },
    RegisterRead {
        key: usize,
        strict: Option<(Quorum, Quorum)>,
        then_write: bool,
    },
    RegisterWrite {
        key: usize,
        strict: bool,
    },
    RepairRead {
        key: Bytes,
    },
    /// The drain phase deletes every register key (read, then delete with
    /// the read's context) so that runs end with tombstones to reap.
    FinalDeleteRead {
        key: usize,
    },
    FinalDelete {
        key: usize,
    },
}

#[derive(Debug)]
struct InFlight {
    request: RequestId,
    node: usize,
    crashes_at_send: u64,
    machine_crashes_at_send: u64,
    sent_at: u64,
    step: Step,
}

#[derive(Debug, Default)]
struct Client {
    in_flight: Option<InFlight>,
    next_element: u64,
}

/// A whole simulated cluster.
struct Simulation {
    options: SimulationOptions,
    /// `SHOAL_SIM_DEBUG` set: print crashes, restarts, liveness reports and
    /// client operations to stderr.
    debug: bool,
    config: Config,
    now: u64,
    base: Instant,
    queue: BTreeMap<(u64, u64), Event>,
    sequence: u64,
    network: Network,
    network_rng: ChaCha8Rng,
    fault_rng: ChaCha8Rng,
    workload_rng: ChaCha8Rng,
    hosts: Vec<Host>,
    ring: Ring,
    partitioner: Partitioner,
    placement: Placement,
    clients: Vec<Client>,
    history: History,
    phase: Phase,
    phase_started: u64,
    ops_issued: usize,
    next_request: u64,
    trace: u64,
    report: Report,
    repairs_pending: BTreeSet<usize>,
    repair_attempts: BTreeMap<usize, u32>,
    final_reads: BTreeMap<usize, Vec<Bytes>>,
    /// With `wipe_at_drain`: per set key, the elements some node other than
    /// the wiped one held when it was wiped.
    survived_wipe: Option<BTreeMap<usize, BTreeSet<u64>>>,
    /// The counters of node lives that ended (crashes, wipes, removals).
    stopped_metrics: Metrics,
    /// The drain phase's deletes of the register keys: when each finished.
    final_deletes: BTreeMap<usize, Option<u64>>,
    /// With `move_back`: the placement just before the joiner was asked to
    /// leave.
    placement_before_move_back: Option<Placement>,
}

/// Adds one node's counters to a total.
fn add_metrics(total: &mut Metrics, each: &Metrics) {
    total.requests += each.requests;
    total.forwarded += each.forwarded;
    total.gets_coordinated += each.gets_coordinated;
    total.writes_coordinated += each.writes_coordinated;
    total.quorum_failures += each.quorum_failures;
    total.sibling_limit_rejections += each.sibling_limit_rejections;
    total.read_siblings += each.read_siblings;
    total.reads_with_siblings += each.reads_with_siblings;
    total.busy_rejections += each.busy_rejections;
    total.invalid_requests += each.invalid_requests;
    total.read_repairs += each.read_repairs;
    total.hints_stored += each.hints_stored;
    total.hints_replayed += each.hints_replayed;
    total.hints_dropped_full += each.hints_dropped_full;
    total.hints_dropped_expired += each.hints_dropped_expired;
    total.hints_dropped_corrupt += each.hints_dropped_corrupt;
    total.store_failures += each.store_failures;
    total.malformed_messages += each.malformed_messages;
    total.duplicate_forwards += each.duplicate_forwards;
    total.outputs_shed += each.outputs_shed;
    total.anti_entropy_rounds += each.anti_entropy_rounds;
    total.anti_entropy_trees_differed += each.anti_entropy_trees_differed;
    total.anti_entropy_keys_sent += each.anti_entropy_keys_sent;
    total.anti_entropy_steps_dropped += each.anti_entropy_steps_dropped;
    total.moves_completed += each.moves_completed;
    total.move_records += each.move_records;
    total.move_keys_received += each.move_keys_received;
    total.move_bytes_received += each.move_bytes_received;
    total.move_keys_sent += each.move_keys_sent;
    for (total, each) in total
        .background_bytes_by_work
        .iter_mut()
        .zip(each.background_bytes_by_work)
    {
        *total += each;
    }
    total.tombstones_reaped += each.tombstones_reaped;
    total.stale_keys_deleted += each.stale_keys_deleted;
}

fn node_id(index: usize) -> NodeId {
    NodeId(index as u64 + 1)
}

fn node_index(id: NodeId) -> Option<usize> {
    usize::try_from(id.0).ok()?.checked_sub(1)
}

fn set_key(index: usize) -> Bytes {
    Bytes::from(format!("set-{index}"))
}

fn register_key(index: usize) -> Bytes {
    Bytes::from(format!("register-{index}"))
}

/// Builds the ring of `nodes` members, all active.
pub fn build_ring(nodes: usize) -> Ring {
    let mut ring = Ring::new();
    for index in 0..nodes {
        ring.add_member(node_id(index), format!("sim-{index}"));
    }
    ring
}

impl Simulation {
    fn new(options: SimulationOptions) -> Result<Simulation, String> {
        if options.nodes < 1 || options.nodes > 64 {
            return Err(format!("--nodes must be 1..=64, got {}", options.nodes));
        }
        let mut fault_rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x6661_756c_7473);
        let network_rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x006e_6574_776f_726b);
        let workload_rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x776f_726b_6c6f_6164);
        let mut config = simulation_config(&mut fault_rng);
        config.conflict_policy = options.conflict_policy;
        config.replication_factor = config.replication_factor.min(options.nodes);
        let faults = options.faults;
        let network_faults = NetworkFaults {
            drop_probability: if faults.drop {
                fault_rng.random_range(0.005..0.08)
            } else {
                0.0
            },
            duplicate_probability: if faults.duplicate {
                fault_rng.random_range(0.005..0.05)
            } else {
                0.0
            },
            delay_extra_max_micros: if faults.delay {
                fault_rng.random_range(5_000..150_000)
            } else {
                0
            },
            reorder: faults.reorder,
        };
        let ring = build_ring(options.nodes);
        let partitioner =
            Partitioner::new(config.partition_count).map_err(|error| format!("{error:?}"))?;
        let placement = Placement::new(&ring, config.partition_count, config.replication_factor);
        let base = Instant::now();
        let mut simulation = Simulation {
            debug: std::env::var_os("SHOAL_SIM_DEBUG").is_some(),
            config,
            now: 0,
            base,
            queue: BTreeMap::new(),
            sequence: 0,
            network: Network::new(network_faults, LATENCY_MICROS),
            network_rng,
            fault_rng,
            workload_rng,
            hosts: Vec::new(),
            ring,
            partitioner,
            placement,
            clients: (0..options.clients).map(|_| Client::default()).collect(),
            history: History::default(),
            phase: Phase::Workload,
            phase_started: 0,
            ops_issued: 0,
            next_request: 1,
            trace: 0xcbf2_9ce4_8422_2325,
            report: Report {
                seed: options.seed,
                ..Report::default()
            },
            repairs_pending: BTreeSet::new(),
            repair_attempts: BTreeMap::new(),
            final_reads: BTreeMap::new(),
            survived_wipe: None,
            stopped_metrics: Metrics::default(),
            final_deletes: BTreeMap::new(),
            placement_before_move_back: None,
            options,
        };
        let founders = simulation.options.nodes;
        let joiners = if simulation.options.topology { 2 } else { 0 };
        for index in 0..founders + joiners {
            simulation.hosts.push(Host {
                node: None,
                swim: None,
                store: MemStore::new(),
                timer_generation: 0,
                timer_at: None,
                crashes: 0,
                ring: if index < founders {
                    simulation.ring.clone()
                } else {
                    Ring::new()
                },
                member: index < founders,
                gone: false,
            });
        }
        for index in 0..founders {
            simulation.start_node(index, true)?;
        }
        if simulation.options.topology {
            // Two joins, then a founder leaves, while the workload runs.
            let first = simulation.fault_rng.random_range(200_000..800_000);
            let (second, leave) = if simulation.options.concurrent_changes {
                let second = first + simulation.fault_rng.random_range(0..400_000);
                (second, second)
            } else {
                let second = first + simulation.fault_rng.random_range(300_000..1_200_000);
                (
                    second,
                    second + simulation.fault_rng.random_range(200_000..1_500_000),
                )
            };
            let leaving = simulation.fault_rng.random_range(0..founders);
            simulation.schedule(first, Event::Join { node: founders });
            simulation.schedule(second, Event::Join { node: founders + 1 });
            simulation.schedule(leave, Event::Leave { node: leaving });
            simulation.schedule(RING_TICK_MICROS, Event::RingTick);
        }
        for client in 0..simulation.options.clients {
            let delay = simulation
                .workload_rng
                .random_range(0..THINK_TIME_MAX_MICROS);
            simulation.schedule(delay, Event::ClientNext { client });
        }
        if faults.crash || faults.powerloss || faults.partition {
            simulation.schedule_fault_tick();
        }
        simulation.schedule(PHASE_CHECK_MICROS, Event::PhaseCheck);
        Ok(simulation)
    }

    fn instant(&self, micros: u64) -> Instant {
        self.base + Duration::from_micros(micros)
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.sequence += 1;
        self.queue.insert((self.now + delay, self.sequence), event);
    }

    fn mix(&mut self, value: u64) {
        self.trace = (self.trace ^ value).wrapping_mul(0x0000_0100_0000_01b3);
        self.trace ^= self.trace >> 29;
    }

    fn violation(&mut self, text: String) {
        if self.report.violations.len() < 50 {
            self.report.violations.push(text);
        }
    }

    /// Starts (or restarts) a node with its SWIM membership. At the
    /// cluster's first start every member knows every other (all alive);
    /// a restarted node joins through the others' addresses and learns who
    /// is alive from the protocol, as a real node does.
    fn start_node(&mut self, index: usize, first_start: bool) -> Result<(), String> {
        let seed = self.options.seed ^ ((index as u64 + 1) << 40) ^ self.hosts[index].crashes;
        let mut node = Node::new(self.config.clone(), node_id(index), seed)
            .map_err(|error| error.to_string())?;
        let now = self.instant(self.now);
        node.set_wall_clock(now, self.now);
        // As `shoald` started with seeds: until its ring holds another
        // member (a wiped node's holds itself alone), it coordinates no key.
        node.set_expects_peers(true);
        node.handle_ring(now, self.hosts[index].ring.clone());
        let generation = self.hosts[index].crashes + 1;
        let mut swim = Swim::new(
            swim_config(),
            node_id(index),
            generation,
            sim_address(index),
            seed ^ 0x7377_696d,
            now,
        );
        let others: Vec<usize> = (0..self.hosts.len())
            .filter(|other| {
                *other != index && self.hosts[*other].member && !self.hosts[*other].gone
            })
            .collect();
        if first_start {
            for other in &others {
                swim.add_member(node_id(*other), 1, sim_address(*other));
            }
        } else {
            let seeds: Vec<SocketAddr> = others.iter().map(|other| sim_address(*other)).collect();
            swim.join(now, &seeds);
        }
        let host = &mut self.hosts[index];
        node.handle_timeout(now, &mut host.store);
        host.node = Some(node);
        host.swim = Some(swim);
        host.timer_at = None;
        self.drain(index);
        // A node that lost its ring with its store (wiped) learns the
        // cluster's from the members it joins through, as `shoald` does
        // from their SWIM metadata; until then it serves no key.
        let alone = !self.hosts[index]
            .ring
            .members()
            .any(|(node, _)| node != node_id(index));
        if alone {
            for other in others {
                let theirs = self.hosts[other].ring.clone();
                self.gossip_ring(other, index, &theirs);
            }
        }
        Ok(())
    }

    /// Carries out a node's outputs and re-arms its timer.
    fn drain(&mut self, index: usize) {
        loop {
            let output = match self.hosts[index].node.as_mut() {
                Some(node) => node.poll_output(),
                None => return,
            };
            let Some(output) = output else { break };
            match output {
                Output::Send { to, message } => {
                    self.report.messages_sent += 1;
                    let Some(target) = node_index(to).filter(|target| *target < self.hosts.len())
                    else {
                        self.violation(format!("node {index} sent to unknown node {to}"));
                        continue;
                    };
                    let arrivals =
                        self.network
                            .send(&mut self.network_rng, self.now, node_id(index), to);
                    if arrivals.is_empty() {
                        self.report.messages_lost += 1;
                    }
                    for arrival in arrivals {
                        let message = message.clone();
                        self.schedule(
                            arrival - self.now,
                            Event::Deliver {
                                from: node_id(index),
                                to: target,
                                message,
                            },
                        );
                    }
                }
                Output::Ring(ring) => {
                    self.hosts[index].ring.merge(&ring);
                    if self.debug {
                        let ring = &self.hosts[index].ring;
                        let members: Vec<String> = ring
                            .members()
                            .map(|(node, entry)| {
                                format!("{node}:{:?}:{}", entry.state, ring.seen(node))
                            })
                            .collect();
                        eprintln!(
                            "{} ring at {index}: v{} {members:?}",
                            self.now,
                            ring.assignment_version()
                        );
                    }
                    let ring = self.hosts[index].ring.clone();
                    let others: Vec<usize> = (0..self.hosts.len())
                        .filter(|other| *other != index && self.hosts[*other].member)
                        .collect();
                    for other in others {
                        self.gossip_ring(index, other, &ring);
                    }
                }
                Output::Respond { id, response } => {
                    let client = self.clients.iter().position(|client| {
                        client
                            .in_flight
                            .as_ref()
                            .is_some_and(|flight| flight.request == id)
                    });
                    if let Some(client) = client {
                        self.schedule(
                            CLIENT_LATENCY_MICROS,
                            Event::ClientResponse {
                                client,
                                request: id,
                                response,
                            },
                        );
                    }
                }
            }
        }
        self.drain_membership(index);
        if self.retire_if_removed(index) {
            return;
        }
        let host = &self.hosts[index];
        let node_due = host.node.as_ref().and_then(Node::poll_timeout);
        let swim_due = host.swim.as_ref().and_then(Swim::poll_timeout);
        let due = match (node_due, swim_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Rounded up to the simulator's microsecond: rounding down would
        // wake the machines just before their deadline, forever.
        let deadline = due.map(|when| {
            let nanos = when.saturating_duration_since(self.base).as_nanos();
            u64::try_from(nanos.div_ceil(1000)).unwrap_or(u64::MAX)
        });
        let host = &mut self.hosts[index];
        if deadline != host.timer_at {
            host.timer_at = deadline;
            host.timer_generation += 1;
            let generation = host.timer_generation;
            if let Some(deadline) = deadline {
                let delay = deadline.saturating_sub(self.now);
                self.schedule(
                    delay,
                    Event::Timer {
                        node: index,
                        generation,
                    },
                );
            }
        }
        self.check_hint_bounds(index);
    }

    /// Sends `ring` from node `from` to node `to` over the simulated network.
    fn gossip_ring(&mut self, from: usize, to: usize, ring: &Ring) {
        let arrivals =
            self.network
                .send(&mut self.network_rng, self.now, node_id(from), node_id(to));
        for arrival in arrivals {
            self.schedule(
                arrival - self.now,
                Event::RingGossip {
                    to,
                    ring: Box::new(ring.clone()),
                },
            );
        }
    }

    /// A node its ring says is removed stops for good once it holds no
    /// hints and no operations (as `shoald` does after a leave commits).
    fn retire_if_removed(&mut self, index: usize) -> bool {
        let host = &self.hosts[index];
        let removed = host
            .ring
            .get(node_id(index))
            .is_some_and(|entry| entry.state == crate::ring::MemberState::Removed);
        // Started (its hints loaded), none left, nothing in flight.
        let idle = host.node.as_ref().is_some_and(|node| {
            node.epoch().is_some()
                && node.hint_bytes_total() == 0
                && node.operations_in_flight() == 0
        });
        if !removed || !idle {
            return false;
        }
        if self.debug {
            eprintln!("{} node {index} removed: stops", self.now);
        }
        self.mix(0x9011e ^ index as u64);
        if let Some(node) = self.hosts[index].node.as_ref() {
            add_metrics(&mut self.stopped_metrics, node.metrics());
        }
        let host = &mut self.hosts[index];
        host.node = None;
        host.swim = None;
        host.gone = true;
        host.timer_at = None;
        host.timer_generation += 1;
        self.abandon_requests_to(index);
        true
    }

    /// Clients waiting on node `index`, which stopped, learn nothing: their
    /// operation's outcome is unknown.
    fn abandon_requests_to(&mut self, index: usize) {
        for client in 0..self.clients.len() {
            if self.clients[client]
                .in_flight
                .as_ref()
                .is_some_and(|flight| flight.node == index)
                && let Some(flight) = self.clients[client].in_flight.take()
            {
                self.outcome_unknown(client, flight);
            }
        }
    }

    /// Members that are in the cluster and not removed.
    fn live_members(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|index| self.hosts[*index].member && !self.hosts[*index].gone)
            .collect()
    }

    /// Whether every live member's ring is the same and nothing moves.
    fn topology_settled(&self) -> bool {
        let members = self.live_members();
        let Some(first) = members.first().map(|index| &self.hosts[*index].ring) else {
            return true;
        };
        let same = members
            .iter()
            .all(|index| self.hosts[*index].ring == *first);
        let still = first.members().all(|(_, entry)| {
            matches!(
                entry.state,
                crate::ring::MemberState::Active | crate::ring::MemberState::Removed
            )
        });
        let layout = crate::transition::Layout::new(
            first,
            self.config.partition_count,
            self.config.replication_factor,
        );
        let joined = self.hosts.iter().all(|host| host.member);
        // And every member deleted its copies of partitions that moved away.
        same && still && layout.moves().is_empty() && joined && first.everyone_cleared()
    }

    /// Sends the node's SWIM datagrams over the simulated network and turns
    /// its membership events into the core's liveness.
    fn drain_membership(&mut self, index: usize) {
        while let Some(transmit) = self.hosts[index]
            .swim
            .as_mut()
            .and_then(Swim::poll_transmit)
        {
            let Some(target) = sim_index(transmit.address).filter(|t| *t < self.hosts.len()) else {
                continue;
            };
            let arrivals = self.network.send(
                &mut self.network_rng,
                self.now,
                node_id(index),
                node_id(target),
            );
            for arrival in arrivals {
                self.schedule(
                    arrival - self.now,
                    Event::Datagram {
                        from: index,
                        to: target,
                        bytes: transmit.bytes.clone(),
                    },
                );
            }
        }
        let now = self.instant(self.now);
        while let Some(event) = self.hosts[index].swim.as_mut().and_then(Swim::poll_event) {
            let (member, liveness) = match event {
                SwimEvent::MemberUp { node, .. } | SwimEvent::MemberAlive { node, .. } => {
                    (node, Liveness::Alive)
                }
                SwimEvent::MemberSuspect { node, .. } => (node, Liveness::Suspect),
                SwimEvent::MemberDown { node, .. } | SwimEvent::MemberLeft { node, .. } => {
                    (node, Liveness::Dead)
                }
                SwimEvent::Joined | SwimEvent::MetadataChanged { .. } => continue,
            };
            if self.debug {
                eprintln!("{} liveness {index} learns {member} {liveness:?}", self.now);
            }
            self.mix(member.0 ^ ((index as u64) << 32) ^ (liveness as u64) << 48);
            if let Some(node) = self.hosts[index].node.as_mut() {
                node.handle_liveness(now, member, liveness);
            }
        }
    }

    /// Whether every node's membership sees every other node alive.
    fn beliefs_settled(&self) -> bool {
        let members = self.live_members();
        members.iter().all(|index| {
            let index = *index;
            let Some(swim) = self.hosts[index].swim.as_ref() else {
                return false;
            };
            members
                .iter()
                .copied()
                .filter(|other| *other != index)
                .all(|other| {
                    swim.member(node_id(other)).is_some_and(|member| {
                        member.state == SwimMemberState::Alive
                            && member.generation == self.hosts[other].crashes + 1
                    })
                })
        })
    }

    fn check_hint_bounds(&mut self, index: usize) {
        let Some(node) = self.hosts[index].node.as_ref() else {
            return;
        };
        let bound = self.config.hint_bytes_per_target_max;
        let over: Vec<(usize, u64)> = (0..self.hosts.len())
            .map(|target| (target, node.hint_bytes(node_id(target))))
            .filter(|(_, bytes)| *bytes > bound)
            .collect();
        for (target, bytes) in over {
            self.violation(format!(
                "node {index} holds {bytes} bytes of hints for node {target}, over the bound of {bound}"
            ));
        }
    }

    fn run(mut self) -> Report {
        while self.phase != Phase::Done {
            let Some(((time, _), event)) = self.queue.pop_first() else {
                self.violation("event queue ran dry before the run finished".into());
                break;
            };
            self.now = time;
            self.report.events += 1;
            let code = event.code();
            self.mix(time);
            self.mix(code);
            self.handle(event);
        }
        self.finish()
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, message } => {
                self.mix(from.0 ^ ((to as u64) << 32));
                let now = self.instant(self.now);
                let host = &mut self.hosts[to];
                if let Some(node) = host.node.as_mut() {
                    node.handle_message(now, from, message, &mut host.store);
                    self.drain(to);
                }
            }
            Event::Timer { node, generation } => {
                let now = self.instant(self.now);
                let host = &mut self.hosts[node];
                if host.timer_generation != generation {
                    return;
                }
                host.timer_at = None;
                if let Some(swim) = host.swim.as_mut() {
                    swim.handle_timeout(now);
                }
                if let Some(state) = host.node.as_mut() {
                    state.handle_timeout(now, &mut host.store);
                    self.drain(node);
                }
            }
            Event::ClientNext { client } => self.client_next(client),
            Event::ClientResponse {
                client,
                request,
                response,
            } => self.client_response(client, request, response),
            Event::ClientTimeout { client, request } => self.client_timeout(client, request),
            Event::Crash { node, machine } => self.crash(node, machine),
            Event::Restart { node } => {
                if self.hosts[node].node.is_none() && !self.hosts[node].gone {
                    if self.debug {
                        eprintln!("{} restart {node}", self.now);
                    }
                    self.mix(node as u64);
                    if let Err(error) = self.start_node(node, false) {
                        self.violation(format!("node {node} failed to restart: {error}"));
                    }
                }
            }
            Event::FaultTick => self.fault_tick(),
            Event::Heal => {
                if self.network.is_partitioned() {
                    self.network.heal();
                }
            }
            Event::Datagram { from, to, bytes } => {
                self.mix((from as u64) ^ ((to as u64) << 32) ^ 0xda7a);
                let now = self.instant(self.now);
                if let Some(swim) = self.hosts[to].swim.as_mut() {
                    swim.handle_datagram(now, sim_address(from), &bytes);
                    self.drain(to);
                }
            }
            Event::RingGossip { to, ring } => {
                let now = self.instant(self.now);
                let host = &mut self.hosts[to];
                if let Some(node) = host.node.as_mut()
                    && host.ring.merge(&ring)
                {
                    node.handle_ring(now, host.ring.clone());
                    self.drain(to);
                }
            }
            Event::RingTick => {
                let up: Vec<usize> = self
                    .live_members()
                    .into_iter()
                    .filter(|index| self.hosts[*index].node.is_some())
                    .collect();
                if up.len() > 1 {
                    for from in up.iter().copied() {
                        let others: Vec<usize> =
                            up.iter().copied().filter(|other| *other != from).collect();
                        let to = others[self.fault_rng.random_range(0..others.len())];
                        let ring = self.hosts[from].ring.clone();
                        self.gossip_ring(from, to, &ring);
                    }
                }
                if self.phase != Phase::Done {
                    self.schedule(RING_TICK_MICROS, Event::RingTick);
                }
            }
            Event::Join { node } => {
                self.report.joins += 1;
                if self.debug {
                    eprintln!("{} join {node}", self.now);
                }
                let host = &mut self.hosts[node];
                host.member = true;
                host.ring.join_member(node_id(node), format!("sim-{node}"));
                if let Err(error) = self.start_node(node, false) {
                    self.violation(format!("node {node} failed to start: {error}"));
                }
                // Its ring reaches the members it joins through, theirs it.
                let ring = self.hosts[node].ring.clone();
                for other in self.live_members() {
                    if other != node {
                        self.gossip_ring(node, other, &ring);
                        let theirs = self.hosts[other].ring.clone();
                        self.gossip_ring(other, node, &theirs);
                    }
                }
            }
            Event::Leave { node } => {
                let up: Vec<usize> = self
                    .live_members()
                    .into_iter()
                    .filter(|index| self.hosts[*index].node.is_some())
                    .collect();
                if up.is_empty() {
                    // Asked again later, as an operator would.
                    self.schedule(RING_TICK_MICROS, Event::Leave { node });
                    return;
                }
                self.report.leaves += 1;
                let admin = up[self.fault_rng.random_range(0..up.len())];
                if self.debug {
                    eprintln!("{} leave {node} (asked at {admin})", self.now);
                }
                let now = self.instant(self.now);
                let host = &mut self.hosts[admin];
                if host
                    .ring
                    .set_state(node_id(node), crate::ring::MemberState::Leaving)
                    && let Some(state) = host.node.as_mut()
                {
                    state.handle_ring(now, host.ring.clone());
                    let ring = host.ring.clone();
                    for other in self.live_members() {
                        if other != admin {
                            self.gossip_ring(admin, other, &ring);
                        }
                    }
                    self.drain(admin);
                }
            }
            Event::FinalDelete { key } => self.final_delete_read(key),
            Event::PhaseCheck => {
                self.phase_check();
                if self.phase != Phase::Done {
                    self.schedule(PHASE_CHECK_MICROS, Event::PhaseCheck);
                }
            }
        }
    }

    // ---- faults ------------------------------------------------------------

    fn schedule_fault_tick(&mut self) {
        let gap: f64 = -FAULT_GAP_MEAN_MICROS * (1.0 - self.fault_rng.random::<f64>()).ln();
        self.schedule(gap as u64 + 1, Event::FaultTick);
    }

    fn fault_tick(&mut self) {
        if self.phase != Phase::Workload {
            return;
        }
        let faults = self.options.faults;
        let mut choices = Vec::new();
        if faults.crash {
            choices.push(0);
        }
        if faults.powerloss {
            choices.push(1);
        }
        if faults.partition {
            choices.push(2);
        }
        if faults.crash {
            // A failing disk write (EIO) on one node, alongside crashes.
            choices.push(3);
        }
        if !choices.is_empty() {
            let choice = choices[self.fault_rng.random_range(0..choices.len())];
            match choice {
                0 | 1 => {
                    let down = self
                        .live_members()
                        .iter()
                        .filter(|index| self.hosts[**index].node.is_none())
                        .count();
                    let up: Vec<usize> = (0..self.hosts.len())
                        .filter(|index| self.hosts[*index].node.is_some())
                        .collect();
                    if down < 2 && up.len() > 1 {
                        let node = up[self.fault_rng.random_range(0..up.len())];
                        self.schedule(
                            0,
                            Event::Crash {
                                node,
                                machine: choice == 1,
                            },
                        );
                        let downtime = self.fault_rng.random_range(200_000..4_000_000);
                        self.schedule(downtime, Event::Restart { node });
                    }
                }
                3 => {
                    let node = self.fault_rng.random_range(0..self.hosts.len());
                    self.report.store_failures_injected += 1;
                    self.hosts[node].store.fail_next_write();
                }
                _ => {
                    if !self.network.is_partitioned() && self.hosts.len() > 1 {
                        self.report.partitions += 1;
                        let one_way = self.fault_rng.random_bool(0.4);
                        let mut side: Vec<bool> = (0..self.hosts.len())
                            .map(|_| self.fault_rng.random_bool(0.5))
                            .collect();
                        if side.iter().all(|left| *left) || side.iter().all(|left| !*left) {
                            side[0] = !side[0];
                        }
                        for from in 0..self.hosts.len() {
                            for to in 0..self.hosts.len() {
                                if side[from] && !side[to] || (!one_way && !side[from] && side[to])
                                {
                                    self.network.block(node_id(from), node_id(to));
                                }
                            }
                        }
                        let duration = self.fault_rng.random_range(300_000..4_000_000);
                        self.schedule(duration, Event::Heal);
                    }
                }
            }
        }
        self.schedule_fault_tick();
    }

    fn crash(&mut self, index: usize, machine: bool) {
        if self.phase != Phase::Workload || self.hosts[index].node.is_none() {
            return;
        }
        if self.debug {
            eprintln!("{} crash {index}", self.now);
        }
        self.mix(index as u64 ^ u64::from(machine) << 16);
        if let Some(node) = self.hosts[index].node.as_ref() {
            add_metrics(&mut self.stopped_metrics, node.metrics());
        }
        let host = &mut self.hosts[index];
        host.node = None;
        host.swim = None;
        host.crashes += 1;
        host.timer_at = None;
        host.timer_generation += 1;
        if machine {
            self.report.machine_crashes += 1;
            host.store.crash_machine();
        } else {
            self.report.process_crashes += 1;
            host.store.crash_process();
        }
        self.abandon_requests_to(index);
    }

    // ---- phases ------------------------------------------------------------

    fn phase_check(&mut self) {
        match self.phase {
            Phase::Workload => {
                let idle = self.clients.iter().all(|client| client.in_flight.is_none());
                if self.ops_issued >= self.options.ops && idle {
                    self.start_drain();
                }
            }
            Phase::Drain => {
                let members = self.live_members();
                let all_up = members
                    .iter()
                    .all(|index| self.hosts[*index].node.is_some());
                let drained = members.iter().all(|index| {
                    self.hosts[*index].node.as_ref().is_some_and(|node| {
                        node.epoch().is_some()
                            && node.hint_bytes_total() == 0
                            && node.operations_in_flight() == 0
                    })
                });
                // Membership must have settled: a node that still believes a
                // peer down would skip it in the repair pass.
                let beliefs_settled = self.beliefs_settled();
                // The final deletes are done and old enough to be reaped.
                let grace = u64::try_from(self.config.tombstone_grace.as_micros()).unwrap_or(0);
                let deletes_aged = self
                    .final_deletes
                    .values()
                    .all(|done| done.is_some_and(|at| self.now >= at + grace + 3_000_000));
                let settled =
                    all_up && drained && beliefs_settled && self.topology_settled() && deletes_aged;
                if settled
                    && self.options.move_back
                    && self.report.reaped_before_move_back.is_none()
                {
                    // Every member must have reaped first, or nothing
                    // reaped could come back.
                    let reaped = self.register_keys_reaped();
                    if reaped == self.options.register_keys as u64 {
                        self.start_move_back(reaped);
                    } else if self.now - self.phase_started > DRAIN_MAX_MICROS {
                        self.violation(format!(
                            "only {reaped} of {} deleted keys were reaped everywhere within {} s",
                            self.options.register_keys,
                            DRAIN_MAX_MICROS / 1_000_000
                        ));
                        self.start_move_back(reaped);
                    }
                } else if settled {
                    self.start_repair();
                } else if self.now - self.phase_started > DRAIN_MAX_MICROS {
                    if self.debug {
                        for index in self.live_members() {
                            if let Some(node) = self.hosts[index].node.as_ref() {
                                eprintln!(
                                    "{} node {index}: {:?} {} {:?}",
                                    self.now,
                                    node.moves_status(),
                                    node.pulls_summary(),
                                    node.metrics()
                                );
                            }
                        }
                    }
                    let held: u64 = self
                        .hosts
                        .iter()
                        .filter_map(|host| host.node.as_ref())
                        .map(Node::hint_bytes_total)
                        .sum();
                    self.violation(format!(
                        "hints did not drain within {} s: {held} bytes left",
                        DRAIN_MAX_MICROS / 1_000_000
                    ));
                    self.start_repair();
                }
            }
            Phase::Repair => {
                let quiet = self.live_members().iter().all(|index| {
                    self.hosts[*index]
                        .node
                        .as_ref()
                        .is_some_and(|node| node.operations_in_flight() == 0)
                });
                // Anti-entropy's exchanges never stop; they are background.
                let pending_messages = self.queue.values().any(|event| {
                    matches!(event, Event::Deliver { message, .. } if !matches!(
                        message,
                        Message::AeRoot { .. }
                            | Message::AeLeaves { .. }
                            | Message::AeDigests { .. }
                            | Message::AeStates { .. }
                    ))
                });
                let repaired = if self.options.anti_entropy_only {
                    self.all_converged()
                } else {
                    self.repairs_pending.is_empty()
                };
                if repaired && quiet && !pending_messages {
                    self.phase = Phase::Done;
                } else if self.now - self.phase_started > DRAIN_MAX_MICROS {
                    self.violation("the repair pass did not finish".into());
                    self.phase = Phase::Done;
                }
            }
            Phase::Done => {}
        }
    }

    /// Register keys (all deleted by the drain) of which no member holds
    /// any state: their tombstones were reaped everywhere.
    fn register_keys_reaped(&mut self) -> u64 {
        let members = self.live_members();
        let mut reaped = 0;
        for key_index in 0..self.options.register_keys {
            let key = register_key(key_index);
            let partition = self.partitioner.partition_of(&key);
            let stored = replica::data_key(partition, &key);
            let held = members.iter().any(|index| {
                // An unreadable store counts as holding the key.
                self.hosts[*index]
                    .store
                    .read(&stored)
                    .map_or(true, |state| state.is_some())
            });
            if !held {
                reaped += 1;
            }
        }
        reaped
    }

    /// The first joiner leaves: the partitions it took move back.
    fn start_move_back(&mut self, reaped: u64) {
        self.report.reaped_before_move_back = Some(reaped);
        if let Some(first) = self.live_members().first() {
            self.placement_before_move_back = Some(Placement::new(
                &self.hosts[*first].ring,
                self.config.partition_count,
                self.config.replication_factor,
            ));
        }
        self.phase_started = self.now;
        let joiner = self.options.nodes;
        if self.debug {
            eprintln!(
                "{} move back: node {joiner} leaves ({reaped} keys reaped)",
                self.now
            );
        }
        self.schedule(0, Event::Leave { node: joiner });
    }

    /// The hint bound is checked on each node's own accounting after every
    /// event; this checks that accounting against what its store holds.
    fn check_hint_accounting(&mut self) {
        for index in 0..self.hosts.len() {
            let Some(node) = self.hosts[index].node.as_ref() else {
                continue;
            };
            let accounted: Vec<(usize, u64)> = (0..self.hosts.len())
                .map(|target| (target, node.hint_bytes(node_id(target))))
                .collect();
            // A node whose start failed (a store failure on its epoch write)
            // has not loaded its hints yet; it will at its next start attempt.
            if node.epoch().is_none() {
                continue;
            }
            let entries = self.hosts[index]
                .store
                .scan(
                    &[replica::HINT_PREFIX],
                    &[replica::HINT_PREFIX + 1],
                    usize::MAX,
                )
                .unwrap_or_default();
            let mut held = vec![0u64; self.hosts.len()];
            for (key, value) in &entries {
                if let Some((target, _, _)) = hinted_handoff::parse_hint_key(key)
                    && let Some(slot) = node_index(target).and_then(|target| held.get_mut(target))
                {
                    *slot += (key.len() + value.len()) as u64;
                }
            }
            for (target, bytes) in accounted {
                if held[target] != bytes {
                    self.violation(format!(
                        "node {index} accounts {bytes} bytes of hints for node {target} but stores {}",
                        held[target]
                    ));
                }
            }
        }
    }

    fn start_drain(&mut self) {
        self.check_hint_accounting();
        self.phase = Phase::Drain;
        self.phase_started = self.now;
        self.network.set_faults(NetworkFaults::none());
        self.network.heal();
        // A store failure injected during the workload may still be armed:
        // spend it on a write of nothing, so that faults really stop here.
        for host in &mut self.hosts {
            let _ = host.store.write(b"\xffsim", None, Durability::Buffered);
        }
        if self.options.wipe_at_drain {
            self.wipe(0);
        }
        for index in self.live_members() {
            if self.hosts[index].node.is_none() {
                self.schedule(0, Event::Restart { node: index });
            }
        }
        for key in 0..self.options.register_keys {
            self.final_deletes.insert(key, None);
            self.schedule(100_000, Event::FinalDelete { key });
        }
    }

    /// Node `index` loses its process and its whole store. What the other
    /// nodes hold of each set at that moment is recorded.
    fn wipe(&mut self, index: usize) {
        let mut survived: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
        for key_index in 0..self.options.set_keys {
            let key = set_key(key_index);
            let partition = self.partitioner.partition_of(&key);
            let elements = survived.entry(key_index).or_default();
            for (other, host) in self.hosts.iter_mut().enumerate() {
                if other == index {
                    continue;
                }
                if let Ok(state) = replica::read_state(&mut host.store, partition, &key)
                    && let Some(set) = checker::union_of(state.values())
                {
                    elements.extend(set);
                }
            }
        }
        self.survived_wipe = Some(survived);
        if let Some(node) = self.hosts[index].node.as_ref() {
            add_metrics(&mut self.stopped_metrics, node.metrics());
        }
        let host = &mut self.hosts[index];
        host.node = None;
        host.swim = None;
        host.crashes += 1;
        host.timer_at = None;
        host.timer_generation += 1;
        host.store = MemStore::new();
        // Its ring was in its store: it starts again with the ring a node
        // makes at its first start, of itself alone, and learns the
        // cluster's by gossip.
        host.ring = Ring::new();
        host.ring.add_member(node_id(index), format!("sim-{index}"));
        self.report.machine_crashes += 1;
        self.mix(0x3199_u64 ^ index as u64);
    }

    /// Whether all primaries of every key hold identical state.
    fn all_converged(&mut self) -> bool {
        for key in self.all_keys() {
            let partition = self.partitioner.partition_of(&key);
            let primaries: Vec<usize> = self
                .placement
                .primaries(partition)
                .iter()
                .filter_map(|id| node_index(*id))
                .collect();
            let states: Vec<KeyState> = primaries
                .into_iter()
                .filter_map(|primary| {
                    replica::read_state(&mut self.hosts[primary].store, partition, &key).ok()
                })
                .collect();
            if !checker::all_identical(&states) {
                return false;
            }
        }
        true
    }

    fn all_keys(&self) -> Vec<Bytes> {
        (0..self.options.set_keys)
            .map(set_key)
            .chain((0..self.options.register_keys).map(register_key))
            .collect()
    }

    /// The client slot of the drain phase's delete of register `key`.
    fn final_delete_client(&mut self, key: usize) -> usize {
        let client = self.options.clients + self.all_keys().len() + key;
        while self.clients.len() <= client {
            self.clients.push(Client::default());
        }
        client
    }

    fn final_delete_read(&mut self, key: usize) {
        let client = self.final_delete_client(key);
        let Some(node) = self
            .live_members()
            .into_iter()
            .find(|index| self.hosts[*index].node.is_some())
        else {
            self.schedule(200_000, Event::FinalDelete { key });
            return;
        };
        let request = Request::Get {
            key: register_key(key),
            options: ReadOptions {
                r: Some(Quorum::All),
                sloppy: Some(false),
                timeout: Some(Duration::from_secs(2)),
            },
        };
        self.send_request(client, node, request, Step::FinalDeleteRead { key });
    }

    /// A final delete's step failed or its outcome is unknown: start over.
    fn retry_final_delete(&mut self, key: usize) {
        self.schedule(200_000, Event::FinalDelete { key });
    }

    fn start_repair(&mut self) {
        // The checks use the ring the members settled on.
        if let Some(first) = self.live_members().first() {
            self.ring = self.hosts[*first].ring.clone();
            let settled = Placement::new(
                &self.ring,
                self.config.partition_count,
                self.config.replication_factor,
            );
            if let Some(before) = &self.placement_before_move_back {
                // `self.placement` is still the founders' placement here.
                for partition in 0..self.config.partition_count {
                    let partition = Partition(partition);
                    self.report.replicas_returned += settled
                        .primaries(partition)
                        .iter()
                        .filter(|node| {
                            self.placement.primaries(partition).contains(node)
                                && !before.primaries(partition).contains(node)
                        })
                        .count() as u64;
                }
            }
            self.placement = settled;
        }
        self.phase = Phase::Repair;
        self.phase_started = self.now;
        if self.options.anti_entropy_only {
            return;
        }
        let keys = self.all_keys();
        for (index, key) in keys.into_iter().enumerate() {
            self.repairs_pending.insert(index);
            self.send_repair_read(index, key);
        }
    }

    fn send_repair_read(&mut self, key_index: usize, key: Bytes) {
        // Repair reads use client slots past the workload's.
        let client = self.options.clients + key_index;
        while self.clients.len() <= client {
            self.clients.push(Client::default());
        }
        let request = Request::Get {
            key: key.clone(),
            options: ReadOptions {
                r: Some(Quorum::All),
                sloppy: Some(false),
                timeout: Some(Duration::from_secs(2)),
            },
        };
        let partition = self.partitioner.partition_of(&key);
        let primary = self.placement.primaries(partition)[0];
        let node = node_index(primary).unwrap_or(0);
        self.send_request(client, node, request, Step::RepairRead { key });
    }

    // ---- clients -----------------------------------------------------------

    fn think(&mut self, client: usize) {
        let delay = self.workload_rng.random_range(0..THINK_TIME_MAX_MICROS);
        self.schedule(delay, Event::ClientNext { client });
    }

    fn random_quorum(&mut self) -> Quorum {
        match self.workload_rng.random_range(0..4) {
            0 => Quorum::One,
            1 => Quorum::All,
            _ => Quorum::Quorum,
        }
    }

    fn client_next(&mut self, client: usize) {
        if self.phase != Phase::Workload || self.clients[client].in_flight.is_some() {
            return;
        }
        if self.ops_issued >= self.options.ops {
            return;
        }
        self.ops_issued += 1;
        let durable = self.options.faults.powerloss && self.workload_rng.random_bool(0.5)
            || self.workload_rng.random_bool(0.1);
        if self.workload_rng.random_bool(0.6) && self.options.set_keys > 0 {
            let key = self.workload_rng.random_range(0..self.options.set_keys);
            let element = ((client as u64) << 32) | self.clients[client].next_element;
            self.clients[client].next_element += 1;
            let r = self.random_quorum();
            let w = self.random_quorum();
            let request = Request::Get {
                key: set_key(key),
                options: ReadOptions {
                    r: Some(r),
                    sloppy: None,
                    timeout: None,
                },
            };
            self.send_to_some_node(
                client,
                request,
                Step::SetRead {
                    key,
                    element,
                    durable,
                    w,
                },
            );
        } else if self.options.register_keys > 0 {
            let key = self
                .workload_rng
                .random_range(0..self.options.register_keys);
            // Strict operations on one key share one (r, w) with r + w > n,
            // so that every strict read overlaps every strict write.
            let strict = if self.workload_rng.random_bool(0.5) {
                Some(match key % 3 {
                    0 => (Quorum::Quorum, Quorum::Quorum),
                    1 => (Quorum::One, Quorum::All),
                    _ => (Quorum::All, Quorum::One),
                })
            } else {
                None
            };
            if self.workload_rng.random_bool(0.3) {
                let request = self.register_write(
                    client,
                    key,
                    strict.map(|(_, w)| w),
                    VersionVector::default(),
                );
                self.send_to_some_node(
                    client,
                    request,
                    Step::RegisterWrite {
                        key,
                        strict: strict.is_some(),
                    },
                );
            } else {
                let then_write = self.workload_rng.random_bool(0.6);
                let r = match strict {
                    Some((r, _)) => r,
                    None => self.random_quorum(),
                };
                let request = Request::Get {
                    key: register_key(key),
                    options: ReadOptions {
                        r: Some(r),
                        sloppy: Some(strict.is_none()),
                        timeout: None,
                    },
                };
                self.send_to_some_node(
                    client,
                    request,
                    Step::RegisterRead {
                        key,
                        strict,
                        then_write,
                    },
                );
            }
        } else {
            self.think(client);
        }
    }

    fn register_write(
        &mut self,
        client: usize,
        key: usize,
        strict_w: Option<Quorum>,
        context: VersionVector,
    ) -> Request {
        let value = ((client as u64) << 32) | self.clients[client].next_element;
        self.clients[client].next_element += 1;
        let w = match strict_w {
            Some(w) => w,
            None => self.random_quorum(),
        };
        Request::Put {
            key: register_key(key),
            value: Bytes::copy_from_slice(&value.to_be_bytes()),
            context,
            options: WriteOptions {
                w: Some(w),
                sloppy: Some(strict_w.is_none()),
                durable: Some(strict_w.is_some()),
                timeout: None,
            },
        }
    }

    /// Sends to a primary of the key half of the time, else to any node
    /// (which forwards); a node that is down refuses the connection, so the
    /// client tries the next one.
    fn send_to_some_node(&mut self, client: usize, request: Request, step: Step) {
        let partition = self.partitioner.partition_of(request.key());
        let primaries: Vec<usize> = self
            .placement
            .primaries(partition)
            .iter()
            .filter_map(|id| node_index(*id))
            .collect();
        let mut candidates: Vec<usize> =
            if self.workload_rng.random_bool(0.5) && !primaries.is_empty() {
                primaries
            } else {
                (0..self.hosts.len()).collect()
            };
        let start = self.workload_rng.random_range(0..candidates.len());
        candidates.rotate_left(start);
        let up = candidates
            .into_iter()
            .find(|index| self.hosts[*index].node.is_some());
        let up =
            up.or_else(|| (0..self.hosts.len()).find(|index| self.hosts[*index].node.is_some()));
        match up {
            Some(node) => self.send_request(client, node, request, step),
            None => {
                self.history.failed_requests += 1;
                self.report.ops_completed += 1;
                self.think(client);
            }
        }
    }

    fn send_request(&mut self, client: usize, node: usize, request: Request, step: Step) {
        let request_id = RequestId(self.next_request);
        self.next_request += 1;
        self.clients[client].in_flight = Some(InFlight {
            request: request_id,
            node,
            crashes_at_send: self.hosts[node].crashes,
            machine_crashes_at_send: self.report.machine_crashes,
            sent_at: self.now,
            step,
        });
        let timeout = 2 * u64::try_from(self.config.request_timeout.as_micros())
            .unwrap_or(u64::MAX)
            + 1_000_000;
        self.schedule(
            timeout,
            Event::ClientTimeout {
                client,
                request: request_id,
            },
        );
        let now = self.instant(self.now);
        let host = &mut self.hosts[node];
        if let Some(state) = host.node.as_mut() {
            state.handle_request(now, request_id, request, &mut host.store);
            self.drain(node);
        }
    }

    fn outcome_unknown(&mut self, client: usize, flight: InFlight) {
        self.history.failed_requests += 1;
        match flight.step {
            Step::SetWrite { .. } => self.history.indeterminate_adds += 1,
            Step::RepairRead { key } => {
                self.retry_repair(client, key);
                return;
            }
            Step::FinalDeleteRead { key } | Step::FinalDelete { key } => {
                self.retry_final_delete(key);
                return;
            }
            _ => {}
        }
        self.report.ops_completed += 1;
        self.think(client);
    }

    fn retry_repair(&mut self, client: usize, key: Bytes) {
        let key_index = client - self.options.clients;
        let attempts = self.repair_attempts.entry(key_index).or_insert(0);
        *attempts += 1;
        if *attempts > 5 {
            self.repairs_pending.remove(&key_index);
            self.violation(format!("the r=all repair read of {key:?} failed 5 times"));
        } else {
            self.send_repair_read(key_index, key);
        }
    }

    fn client_timeout(&mut self, client: usize, request: RequestId) {
        let matches = self.clients[client]
            .in_flight
            .as_ref()
            .is_some_and(|flight| flight.request == request);
        if !matches {
            return;
        }
        let Some(flight) = self.clients[client].in_flight.take() else {
            return;
        };
        let host = &self.hosts[flight.node];
        if host.node.is_some() && host.crashes == flight.crashes_at_send {
            self.violation(format!(
                "request {} to node {} sent at {} µs was never answered",
                request.0, flight.node, flight.sent_at
            ));
        }
        self.outcome_unknown(client, flight);
    }

    fn client_response(&mut self, client: usize, request: RequestId, response: Response) {
        let matches = self.clients[client]
            .in_flight
            .as_ref()
            .is_some_and(|flight| flight.request == request);
        if !matches {
            return;
        }
        let Some(flight) = self.clients[client].in_flight.take() else {
            return;
        };
        self.mix(request.0);
        if self.debug {
            eprintln!(
                "{} client {client} via node {} sent {} {:?} -> {:?}",
                self.now, flight.node, flight.sent_at, flight.step, response
            );
        }
        match &response {
            Response::Failed(error) => {
                self.history.failed_requests += 1;
                self.mix(match error {
                    RequestError::QuorumNotReached { acks, .. } => 1000 + *acks as u64,
                    RequestError::TooManySiblings { .. } => 2000,
                    _ => 3000,
                });
                if matches!(error, RequestError::InvalidArgument(_)) {
                    self.violation(format!(
                        "a well-formed request was refused as invalid: {error}"
                    ));
                }
            }
            _ => self.history.succeeded_requests += 1,
        }
        match (flight.step, response) {
            (
                Step::SetRead {
                    key,
                    element,
                    durable,
                    w,
                },
                Response::Value(result),
            ) => {
                let Some(mut elements) = checker::union_of(&result.siblings) else {
                    self.violation(format!("set {key} holds a value that is not a set"));
                    self.finish_op(client);
                    return;
                };
                if let Err(position) = elements.binary_search(&element) {
                    elements.insert(position, element);
                }
                let request = Request::Put {
                    key: set_key(key),
                    value: checker::encode_set(&elements),
                    context: result.context,
                    options: WriteOptions {
                        w: Some(w),
                        sloppy: None,
                        durable: Some(durable),
                        timeout: None,
                    },
                };
                self.send_to_some_node(
                    client,
                    request,
                    Step::SetWrite {
                        key,
                        element,
                        durable,
                    },
                );
            }
            (
                Step::SetWrite {
                    key,
                    element,
                    durable,
                },
                Response::Written(result),
            ) => {
                self.report.acked_writes += 1;
                self.check_acknowledged_write(
                    &set_key(key),
                    &result,
                    flight.machine_crashes_at_send,
                );
                self.mix(result.dot.counter);
                self.history.acked_adds.push(AckedAdd {
                    key,
                    element,
                    durable,
                });
                self.finish_op(client);
            }
            (Step::SetWrite { .. }, Response::Failed(error)) => {
                // Nothing stored for these; any other failure leaves the outcome unknown.
                if !matches!(
                    error,
                    RequestError::TooManySiblings { .. }
                        | RequestError::Busy
                        | RequestError::Unavailable(_)
                ) {
                    self.history.indeterminate_adds += 1;
                }
                self.finish_op(client);
            }
            (
                Step::RegisterRead {
                    key,
                    strict,
                    then_write,
                },
                Response::Value(result),
            ) => {
                if strict.is_some() {
                    self.history.strict_reads.push(StrictRead {
                        key,
                        started_at: flight.sent_at,
                        context: result.context.clone(),
                    });
                }
                if then_write {
                    let mut request =
                        self.register_write(client, key, strict.map(|(_, w)| w), result.context);
                    // Some read-modify-writes delete what they read instead:
                    // a tombstone with the read's context.
                    if self.workload_rng.random_bool(0.15)
                        && let Request::Put {
                            key,
                            context,
                            options,
                            ..
                        } = request
                    {
                        request = Request::Delete {
                            key,
                            context,
                            options,
                        };
                    }
                    self.send_to_some_node(
                        client,
                        request,
                        Step::RegisterWrite {
                            key,
                            strict: strict.is_some(),
                        },
                    );
                } else {
                    self.finish_op(client);
                }
            }
            (Step::RegisterWrite { key, strict }, Response::Written(result)) => {
                self.report.acked_writes += 1;
                self.check_acknowledged_write(
                    &register_key(key),
                    &result,
                    flight.machine_crashes_at_send,
                );
                if strict {
                    self.history.strict_writes.push(StrictWrite {
                        key,
                        dot: result.dot,
                        acked_at: self.now,
                    });
                }
                self.finish_op(client);
            }
            (Step::FinalDeleteRead { key }, Response::Value(result)) => {
                let request = Request::Delete {
                    key: register_key(key),
                    context: result.context,
                    options: WriteOptions {
                        w: Some(Quorum::All),
                        sloppy: Some(false),
                        durable: Some(true),
                        timeout: Some(Duration::from_secs(2)),
                    },
                };
                let target = self
                    .live_members()
                    .into_iter()
                    .find(|index| self.hosts[*index].node.is_some());
                match target {
                    Some(target) => {
                        self.send_request(client, target, request, Step::FinalDelete { key })
                    }
                    None => self.retry_final_delete(key),
                }
            }
            (Step::FinalDelete { key }, Response::Written(_)) => {
                self.final_deletes.insert(key, Some(self.now));
            }
            (Step::FinalDeleteRead { key } | Step::FinalDelete { key }, _) => {
                self.retry_final_delete(key);
            }
            (Step::RepairRead { .. }, Response::Value(result)) => {
                let key_index = client - self.options.clients;
                self.final_reads.insert(key_index, result.siblings);
                self.repairs_pending.remove(&key_index);
            }
            (Step::RepairRead { key }, other) => {
                if self.debug {
                    eprintln!("repair read of {key:?} failed at {}: {other:?}", self.now);
                    for (index, host) in self.hosts.iter().enumerate() {
                        if let Some(node) = host.node.as_ref() {
                            let beliefs: Vec<_> = (0..self.hosts.len())
                                .map(|other| node.liveness_of(node_id(other)))
                                .collect();
                            eprintln!(
                                "  node {index} believes {beliefs:?}; metrics {:?}",
                                node.metrics()
                            );
                        }
                    }
                }
                self.retry_repair(client, key)
            }
            (_, _) => self.finish_op(client),
        }
    }

    /// "Acknowledged" means stored: when the client hears that a write
    /// reached `acks` replicas, at least that many nodes hold it (as data or
    /// as a hint) — unless a machine crash since may have taken an unsynced copy.
    fn check_acknowledged_write(
        &mut self,
        key: &Bytes,
        result: &WriteResult,
        machine_crashes_at_send: u64,
    ) {
        if self.report.machine_crashes != machine_crashes_at_send {
            return;
        }
        let partition = self.partitioner.partition_of(key);
        // A hint may stand for any member (while data moves, new owners are
        // written too).
        let primaries: Vec<NodeId> = (0..self.hosts.len()).map(node_id).collect();
        let mut holders = 0;
        for index in 0..self.hosts.len() {
            let store = &mut self.hosts[index].store;
            let mut holds = replica::read_state(store, partition, key)
                .is_ok_and(|state| state.context().covers(&result.dot));
            for target in &primaries {
                if holds {
                    break;
                }
                holds = store
                    .read(&hinted_handoff::hint_key(*target, partition, key))
                    .ok()
                    .flatten()
                    .and_then(|value| hinted_handoff::decode_hint(&value).ok())
                    .is_some_and(|(_, state)| state.context().covers(&result.dot));
            }
            holders += usize::from(holds);
        }
        if holders < result.acks {
            self.violation(format!(
                "a write of {key:?} was acknowledged by {} replicas but only {holders} nodes hold {:?}",
                result.acks, result.dot
            ));
        }
    }

    fn finish_op(&mut self, client: usize) {
        self.report.ops_completed += 1;
        self.think(client);
    }

    // ---- the end -----------------------------------------------------------

    fn finish(mut self) -> Report {
        self.report.simulated_millis = self.now / 1000;
        self.report.failed_requests = self.history.failed_requests;
        let mut metrics = std::mem::take(&mut self.stopped_metrics);
        for host in &self.hosts {
            if let Some(node) = host.node.as_ref() {
                add_metrics(&mut metrics, node.metrics());
            }
        }
        self.report.metrics = metrics;
        if self.phase == Phase::Done {
            self.check_invariants();
        }
        let trace = self.trace;
        self.report.trace_hash = trace;
        self.report
    }

    fn check_invariants(&mut self) {
        let machine_crashes = self.report.machine_crashes > 0;
        // Convergence: all primaries of every key hold the same state.
        let mut converged = true;
        let mut final_sets = BTreeMap::new();
        for (index, key) in self.all_keys().into_iter().enumerate() {
            let partition = self.partitioner.partition_of(&key);
            let primaries: Vec<usize> = self
                .placement
                .primaries(partition)
                .iter()
                .filter_map(|id| node_index(*id))
                .collect();
            let mut states: Vec<KeyState> = Vec::new();
            for primary in primaries {
                match replica::read_state(&mut self.hosts[primary].store, partition, &key) {
                    Ok(state) => states.push(state),
                    Err(error) => {
                        self.violation(format!("node {primary} cannot read {key:?}: {error}"))
                    }
                }
            }
            if !checker::all_identical(&states) {
                converged = false;
                self.violation(format!(
                    "the primaries of {key:?} differ after the repair pass"
                ));
            }
            if index < self.options.set_keys {
                // The set each primary holds must hold every expected add; take
                // the smallest (intersection) so one lagging primary shows.
                let mut intersection: Option<BTreeSet<u64>> = None;
                for state in &states {
                    match checker::union_of(state.values()) {
                        Some(set) => {
                            let set: BTreeSet<u64> = set.into_iter().collect();
                            intersection = Some(match intersection {
                                None => set,
                                Some(previous) => previous.intersection(&set).copied().collect(),
                            })
                        }
                        None => self.violation(format!("{key:?} holds a value that is not a set")),
                    }
                }
                final_sets.insert(index, intersection.unwrap_or_default());
            }
        }
        self.report.converged = converged;
        self.check_hints_drained();
        self.check_no_stale_copies();
        self.check_deleted_keys_stay_deleted();
        self.check_strict_reads();
        if self.options.conflict_policy == ConflictPolicy::Lww {
            return;
        }
        let mut expected = checker::expected_adds(&self.history, machine_crashes);
        if let Some(survived) = &self.survived_wipe {
            expected.retain(|add| {
                survived
                    .get(&add.key)
                    .is_some_and(|elements| elements.contains(&add.element))
            });
        }
        let missing = checker::missing_adds(&expected, &final_sets);
        self.report.lost_writes = missing.len() as u64;
        let all_acked = checker::expected_adds(&self.history, false);
        let missing_any = checker::missing_adds(&all_acked, &final_sets).len() as u64;
        self.report.unsynced_writes_lost = missing_any.saturating_sub(self.report.lost_writes);
        if let Some(first) = missing.first() {
            self.violation(format!(
                "{} acknowledged adds are missing, for example element {:#x} of set {}",
                missing.len(),
                first.element,
                first.key
            ));
        }
        // The r=all read saw every expected add too.
        let mut unseen_texts = Vec::new();
        for (key, siblings) in &self.final_reads {
            if *key < self.options.set_keys {
                let seen = checker::union_of(siblings).unwrap_or_default();
                let unseen = expected
                    .iter()
                    .filter(|add| add.key == *key && seen.binary_search(&add.element).is_err())
                    .count();
                if unseen > 0 {
                    unseen_texts.push(format!(
                        "the r=all read of set {key} missed {unseen} acknowledged adds"
                    ));
                }
            }
        }
        for text in unseen_texts {
            self.violation(text);
        }
    }

    /// Strict reads see earlier acknowledged strict writes.
    fn check_strict_reads(&mut self) {
        self.report.strict_reads_checked = self.history.strict_reads.len() as u64;
        let stale = checker::stale_strict_reads(&self.history);
        if let Some((read, write)) = stale.first() {
            let read = &self.history.strict_reads[*read];
            let write = &self.history.strict_writes[*write];
            let text = format!(
                "{} strict reads missed an earlier acknowledged strict write, for example a read of register {} at {} µs missed {:?} acknowledged at {} µs",
                stale.len(),
                read.key,
                read.started_at,
                write.dot,
                write.acked_at
            );
            self.violation(text);
        }
    }

    /// No member holds data of a partition it is not a primary of: copies
    /// of partitions that moved away were deleted.
    fn check_no_stale_copies(&mut self) {
        for index in self.live_members() {
            let entries = self.hosts[index]
                .store
                .scan(
                    &[replica::DATA_PREFIX],
                    &[replica::DATA_PREFIX + 1],
                    usize::MAX,
                )
                .unwrap_or_default();
            let me = node_id(index);
            let stale: Vec<(Partition, &[u8])> = entries
                .iter()
                .filter_map(|(stored, _)| replica::parse_data_key(stored))
                .filter(|(partition, _)| !self.placement.primaries(*partition).contains(&me))
                .collect();
            if self.debug {
                for (partition, key) in &stale {
                    eprintln!(
                        "node {index} holds {key:?} of {partition:?}, primaries {:?}",
                        self.placement.primaries(*partition)
                    );
                }
            }
            let stale = stale.len();
            if stale > 0 {
                self.violation(format!(
                    "node {index} still holds {stale} keys of partitions it is not a primary of"
                ));
            }
        }
    }

    /// The drain deleted every register key with `w = all` after the
    /// workload ended: no member may hold a live value of one at the end.
    /// One would be a deleted value brought back, by a copy kept where a
    /// reaped tombstone no longer covers it.
    fn check_deleted_keys_stay_deleted(&mut self) {
        let mut revived = Vec::new();
        for key_index in 0..self.options.register_keys {
            if self
                .final_deletes
                .get(&key_index)
                .copied()
                .flatten()
                .is_none()
            {
                continue; // not deleted: reported as a drain failure already
            }
            let key = register_key(key_index);
            let partition = self.partitioner.partition_of(&key);
            for index in self.live_members() {
                if let Ok(state) =
                    replica::read_state(&mut self.hosts[index].store, partition, &key)
                    && !state.is_deleted()
                {
                    revived.push((key_index, index));
                }
            }
        }
        if let Some((key, index)) = revived.first() {
            self.violation(format!(
                "{} copies of deleted keys hold a live value, for example register {key} on node {index}",
                revived.len()
            ));
        }
    }

    /// Hint storage is drained, in the store and in the accounting.
    fn check_hints_drained(&mut self) {
        for index in 0..self.hosts.len() {
            let held = self.hosts[index]
                .store
                .scan(
                    &[replica::HINT_PREFIX],
                    &[replica::HINT_PREFIX + 1],
                    usize::MAX,
                )
                .map(|entries| entries.len())
                .unwrap_or(0);
            let accounted = self.hosts[index]
                .node
                .as_ref()
                .map_or(0, Node::hint_bytes_total);
            if held > 0 || accounted > 0 {
                self.violation(format!(
                    "node {index} still holds {held} hints ({accounted} bytes) after draining"
                ));
            }
        }
    }
}

/// Runs one simulation. Errors only for impossible options.
pub fn run(options: SimulationOptions) -> Result<Report, String> {
    Ok(Simulation::new(options)?.run())
}
