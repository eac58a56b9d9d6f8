//! The node's one event loop: the thin shell around the sans-IO cores
//! (style.md, "Pure cores, thin shells").
//!
//! It owns the cluster [`Node`], the SWIM machine, the ring and the store,
//! and does only this: take one input from the endpoint's bounded queue (or
//! a timer firing), hand it to the core with the current instant, and carry
//! out what the cores ask — send messages and datagrams, answer clients,
//! translate membership events into liveness and ring changes. It runs as a
//! task on the endpoint's own thread (see the crate docs for why and what it
//! costs).
//!
//! Invariants: every client request is answered exactly once (the core
//! guarantees it for key-value requests; admin requests are answered in
//! place); liveness never changes the ring, only admin requests and ring
//! gossip do; a ring is recorded durably in the store before anything the
//! node writes or sends under it leaves (see [`record_ring`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shoal_cluster::id::NodeId;
use shoal_cluster::membership::{self, Event, MemberState as SwimState, Swim};
use shoal_cluster::message::{Output, Request, RequestError, RequestId, Response};
use shoal_cluster::node::{Liveness, Node};
use shoal_cluster::protocol::{
    ClientRequest, ClientResponse, Inspection, MemberStatus, NodeStatus, RingView,
};
use shoal_cluster::replica;
use shoal_cluster::ring::{MemberState, Ring};
use shoal_cluster::store::{Durability, Store, StoreError};
use shoal_cluster::transport::endpoint::{Endpoint, Inbound};
use tokio::sync::{mpsc, oneshot};

use crate::config::NodeConfig;
use crate::metrics::{LoopStats, MetricsBoard, Operation};
use crate::store::DbStore;

/// How long a removed node waits for its hints to be delivered before it stops.
const RETIRE_HINTS_WAIT: Duration = Duration::from_secs(60);

/// How long a stopping node goes on answering "shutting down" (which clients
/// retry elsewhere, and route away from) before its loop may end. A request
/// that reaches the node after the loop ended is never answered, and a
/// write's outcome is then unknown to its client: a decommission under load
/// showed it ("connection lost"), the node gone 0.3 s after its removal.
const DRAIN_LINGER: Duration = Duration::from_secs(1);

/// The longest a stopping node drains before it stops anyway.
const DRAIN_MAX: Duration = Duration::from_secs(5);

/// Merges two encoded rings (SWIM's metadata merge). Undecodable input
/// counts as the empty ring, so a bad blob can never poison a good one.
fn merge_rings(ours: &[u8], theirs: &[u8]) -> Vec<u8> {
    let mut ring = Ring::decode(ours).unwrap_or_default();
    if let Ok(other) = Ring::decode(theirs) {
        ring.merge(&other);
    }
    ring.encode()
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// Where rings were kept before they moved into the store.
fn legacy_ring_path(data_dir: &Path) -> PathBuf {
    data_dir.join("ring")
}

/// Reads the ring this node last recorded: from the store, or, for a data
/// directory written by an older version, from the file it used.
pub fn load_ring(store: &mut DbStore, data_dir: &Path) -> anyhow::Result<Option<Ring>> {
    let stored = store
        .read(&replica::ring_key())
        .map_err(|error| anyhow::anyhow!("reading the ring from the store: {error}"))?;
    if let Some(bytes) = stored {
        return Ring::decode(&bytes)
            .map(Some)
            .map_err(|error| anyhow::anyhow!("the ring in the store: {error}"));
    }
    let path = legacy_ring_path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => Ring::decode(&bytes)
            .map(Some)
            .map_err(|error| anyhow::anyhow!("{}: {error}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(anyhow::anyhow!("reading {}: {error}", path.display())),
    }
}

/// Records the ring in the store's log, durably, before anything the node
/// writes or sends under it leaves (the loop flushes the store before it
/// yields). Durable, because a node must never go back to a ring older than
/// one it acted under: others commit a move once every member's mark says
/// it knows the move is done, and a node that came back from a machine
/// crash with an older ring would read from the old owners (the simulator
/// showed it with unsynced rings: a strict read missed an acknowledged
/// strict write, `shoal-sim cluster --seed 103 --topology`). In the log it
/// costs one `fdatasync` of an allocated file, shared with the turn's other
/// writes; a file of its own cost two fsyncs that each committed the file
/// system's journal, on the loop, for every ring change of every node
/// (one per completed move while partitions move).
fn record_ring(store: &mut DbStore, ring: &Ring) -> Result<(), StoreError> {
    store.write(
        &replica::ring_key(),
        Some(&ring.encode()),
        Durability::Durable,
    )
}

/// How the loop is told to stop.
#[derive(Debug)]
pub enum Control {
    /// Stop accepting, drain, flush, announce leave, exit.
    Shutdown,
}

/// Everything the loop owns.
pub struct EventLoop {
    config: NodeConfig,
    id: NodeId,
    node: Node,
    swim: Swim,
    ring: Ring,
    store: DbStore,
    endpoint: Endpoint,
    inbound: mpsc::Receiver<Inbound>,
    control: mpsc::Receiver<Control>,
    addresses: HashMap<NodeId, SocketAddr>,
    /// Client requests the core is working on, by request id.
    pending: HashMap<u64, (oneshot::Sender<ClientResponse>, Operation, Instant)>,
    next_request: u64,
    draining: bool,
    /// Since when this node knows it was removed from the ring.
    retire_from: Option<Instant>,
    metrics: Arc<MetricsBoard>,
    unroutable_messages: u64,
    turns: TurnStats,
}

/// How long a turn keeps taking queued inputs before it writes their
/// effects and sends their outputs.
const TURN_INPUTS_TIME: Duration = Duration::from_millis(2);

/// A turn of the loop longer than this is logged with where its time went:
/// every request waiting in the queue waited that long.
const SLOW_TURN: Duration = Duration::from_millis(50);

/// How long the loop's turns take: a turn blocks every request behind it.
#[derive(Debug, Default)]
struct TurnStats {
    /// Turns longer than [`SLOW_TURN`].
    slow: u64,
    /// The longest turn since the metrics were last published.
    longest: Duration,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EventLoop")
            .field("id", &self.id)
            .finish()
    }
}

/// The pieces [`EventLoop::new`] needs.
pub struct Parts {
    /// The validated configuration.
    pub config: NodeConfig,
    /// The open store.
    pub store: DbStore,
    /// The running endpoint.
    pub endpoint: Endpoint,
    /// Its inbound queue.
    pub inbound: mpsc::Receiver<Inbound>,
    /// Shutdown requests.
    pub control: mpsc::Receiver<Control>,
    /// This start's membership generation.
    pub generation: u64,
    /// Where metrics are published.
    pub metrics: Arc<MetricsBoard>,
    /// Start in the ring as joining (owning nothing) rather than active.
    pub join_as_joining: bool,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Parts").finish()
    }
}

impl EventLoop {
    /// Builds the cores and restores the ring.
    pub fn new(parts: Parts) -> anyhow::Result<EventLoop> {
        let Parts {
            config,
            mut store,
            endpoint,
            inbound,
            control,
            generation,
            metrics,
            join_as_joining,
        } = parts;
        let id = NodeId(config.node_id);
        let now = Instant::now();
        let mut node = Node::new(config.cluster_config()?, id, rand::random())?;
        node.set_wall_clock(now, unix_micros());
        let swim_config = membership::Config {
            protocol_period: Duration::from_millis(config.cluster.protocol_period_ms),
            probe_timeout: Duration::from_millis(config.cluster.protocol_period_ms / 2),
            metadata_merge: Some(merge_rings),
            // QUIC datagrams carry a little less than a UDP packet.
            datagram_size_max_bytes: 1150,
            ..membership::Config::default()
        };
        let mut swim = Swim::new(
            swim_config,
            id,
            generation,
            config.listen,
            rand::random(),
            now,
        );
        let mut ring = load_ring(&mut store, &config.data_dir)?.unwrap_or_default();
        let address = config.listen.to_string();
        match ring.get(id).map(|entry| entry.state) {
            Some(MemberState::Removed) => anyhow::bail!(
                "node {id} was removed from the ring; a removed id never rejoins (wipe its data and give it a new id)"
            ),
            Some(_) if ring.get(id).is_some_and(|entry| entry.address == address) => {}
            Some(state) => {
                anyhow::bail!(
                    "node {id} is in the ring as {state:?} at {}, not {address}; start it at its recorded address",
                    ring.get(id).map_or("?", |entry| entry.address.as_str())
                );
            }
            None if join_as_joining => {
                ring.join_member(id, address);
            }
            None => {
                ring.add_member(id, address);
            }
        }
        record_ring(&mut store, &ring)?;
        store.flush()?;
        swim.set_metadata(1, ring.encode())?;
        // Seeds other than itself: it belongs to a cluster whose ring it
        // must learn before it coordinates key requests.
        node.set_expects_peers(config.seeds.iter().any(|seed| *seed != config.listen));
        node.handle_ring(now, ring.clone());
        if !config.seeds.is_empty() {
            swim.join(now, &config.seeds);
        }
        let mut event_loop = EventLoop {
            config,
            id,
            node,
            swim,
            ring,
            store,
            endpoint,
            inbound,
            control,
            addresses: HashMap::new(),
            pending: HashMap::new(),
            next_request: 1,
            draining: false,
            retire_from: None,
            metrics,
            unroutable_messages: 0,
            turns: TurnStats::default(),
        };
        event_loop.refresh_addresses();
        Ok(event_loop)
    }

    /// Runs until shut down; returns the store so the caller can close it.
    pub async fn run(mut self) -> anyhow::Result<DbStore> {
        let mut next_publish = Instant::now();
        // While stopping: the earliest and the latest the loop may end.
        let mut stopping: Option<(Instant, Instant)> = None;
        loop {
            let now = Instant::now();
            if now >= next_publish {
                self.publish_metrics();
                next_publish = now + Duration::from_secs(1);
            }
            // Removed from the ring: stop once the hints held for others are
            // delivered (or after a bound), as a leave commits.
            if let Some(since) = self.retire_from
                && !self.draining
                && (self.node.hint_bytes_total() == 0 || now >= since + RETIRE_HINTS_WAIT)
            {
                tracing::info!(node = %self.id, "removed from the ring: stopping");
                stopping = Some(self.begin_stopping(now));
            }
            if let Some((earliest, deadline)) = stopping {
                let drained = self.node.operations_in_flight() == 0 && self.pending.is_empty();
                if (drained && self.swim.has_left() && now >= earliest) || now >= deadline {
                    self.publish_metrics();
                    return Ok(self.store);
                }
            }
            let mut wake = next_publish;
            for due in [
                self.node.poll_timeout(),
                self.swim.poll_timeout(),
                stopping
                    .map(|(earliest, _)| earliest)
                    .filter(|at| *at > now),
                stopping.map(|(_, deadline)| deadline),
            ]
            .into_iter()
            .flatten()
            {
                wake = wake.min(due);
            }
            let mut inputs = 0usize;
            let mut timeout = Duration::ZERO;
            let started;
            tokio::select! {
                input = self.inbound.recv() => match input {
                    Some(input) => {
                        started = Instant::now();
                        inputs += 1;
                        self.handle_input(input);
                    }
                    None => return Ok(self.store),
                },
                control = self.control.recv() => {
                    started = Instant::now();
                    if matches!(control, Some(Control::Shutdown) | None) && !self.draining {
                        tracing::info!(node = %self.id, "shutting down: draining and announcing leave");
                        stopping = Some(self.begin_stopping(Instant::now()));
                    }
                }
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    started = Instant::now();
                    self.node.handle_timeout(started, &mut self.store);
                    self.swim.handle_timeout(started);
                    timeout = started.elapsed();
                }
            }
            // Take whatever else is already queued before acting on outputs,
            // so that bursts are handled in one pass (and one store batch),
            // for a bounded time: replies wait for the end of the turn.
            for _ in 0..256 {
                if started.elapsed() >= TURN_INPUTS_TIME {
                    break;
                }
                match self.inbound.try_recv() {
                    Ok(input) => {
                        inputs += 1;
                        self.handle_input(input);
                    }
                    Err(_) => break,
                }
            }
            let handled = started.elapsed();
            // Nothing of this turn leaves the node before its writes are in
            // the store; a failed store write stops the node (fail-stop).
            if let Err(error) = self.store.flush() {
                tracing::error!(%error, node = %self.id, "store write failed: stopping the node");
                anyhow::bail!("store write failed: {error}");
            }
            let flushed = started.elapsed();
            self.drain_outputs();
            // Rings recorded while draining (gossip, the node's own steps)
            // are on disk before anything of this turn leaves the node: it
            // leaves when the loop yields.
            if let Err(error) = self.store.flush() {
                tracing::error!(%error, node = %self.id, "store write failed: stopping the node");
                anyhow::bail!("store write failed: {error}");
            }
            self.turn_done(started, inputs, timeout, handled, flushed);
        }
    }

    /// Starts draining and announces the leave; returns the earliest and the
    /// latest instants the loop may end.
    fn begin_stopping(&mut self, now: Instant) -> (Instant, Instant) {
        self.draining = true;
        self.swim.leave(now);
        (now + DRAIN_LINGER, now + DRAIN_MAX)
    }

    /// Counts a turn and logs it if it was slow, split into its phases.
    fn turn_done(
        &mut self,
        started: Instant,
        inputs: usize,
        timeout: Duration,
        handled: Duration,
        flushed: Duration,
    ) {
        let took = started.elapsed();
        self.turns.longest = self.turns.longest.max(took);
        if took > SLOW_TURN {
            self.turns.slow += 1;
            tracing::warn!(
                node = %self.id,
                took_ms = took.as_millis() as u64,
                timers_ms = timeout.as_millis() as u64,
                inputs,
                inputs_ms = (handled - timeout).as_millis() as u64,
                store_flush_ms = (flushed - handled).as_millis() as u64,
                outputs_ms = (took - flushed).as_millis() as u64,
                "slow event-loop turn: requests queued behind it waited as long"
            );
        }
    }

    fn handle_input(&mut self, input: Inbound) {
        let now = Instant::now();
        match input {
            Inbound::Message { from, message } => {
                self.node
                    .handle_message(now, from, message, &mut self.store);
            }
            Inbound::Datagram { from, bytes } => self.swim.handle_datagram(now, from, &bytes),
            Inbound::Client { request, reply } => self.handle_client(now, request, reply),
        }
    }

    fn handle_client(
        &mut self,
        now: Instant,
        request: ClientRequest,
        reply: oneshot::Sender<ClientResponse>,
    ) {
        let response = match request {
            ClientRequest::KvReporting {
                request,
                previous_micros,
            } => {
                let previous = Duration::from_micros(u64::from(previous_micros));
                self.node.handle_client_latency(now, previous);
                return self.handle_client(now, ClientRequest::Kv(request), reply);
            }
            ClientRequest::Kv(request) => {
                if self.draining {
                    ClientResponse::Failed(RequestError::Unavailable(
                        "the node is shutting down".into(),
                    ))
                } else {
                    let operation = match &request {
                        Request::Get { .. } => Operation::Get,
                        Request::Put { .. } => Operation::Put,
                        Request::Delete { .. } => Operation::Delete,
                    };
                    let id = self.next_request;
                    self.next_request += 1;
                    self.pending.insert(id, (reply, operation, now));
                    self.node
                        .handle_request(now, RequestId(id), request, &mut self.store);
                    return;
                }
            }
            ClientRequest::Ping => ClientResponse::Pong,
            ClientRequest::Status => ClientResponse::Status(self.status()),
            ClientRequest::Ring => ClientResponse::Ring(self.ring_view()),
            ClientRequest::Join { seed } => match seed.parse::<SocketAddr>() {
                Ok(seed) => {
                    self.swim.join(now, &[seed]);
                    ClientResponse::Done(format!("node {} is joining through {seed}", self.id))
                }
                Err(error) => ClientResponse::Failed(RequestError::InvalidArgument(format!(
                    "seed {seed:?}: {error}"
                ))),
            },
            ClientRequest::Leave { node } => {
                let node = node.unwrap_or(self.id);
                self.change_ring(now, node, MemberState::Leaving)
            }
            ClientRequest::Remove { node } => self.change_ring(now, node, MemberState::Removed),
            ClientRequest::Inspect { key } => self.inspect(key),
            ClientRequest::Background { paused } => {
                self.node.set_background_paused(paused);
                let state = if paused { "paused" } else { "running" };
                ClientResponse::Done(format!("node {}: background work {state}", self.id))
            }
        };
        // The client may have gone; nothing to do then.
        let _ = reply.send(response);
    }

    /// `shoal leave` and `shoal remove`: the member's new state goes into
    /// the ring; the nodes then move its partitions (`cluster::transition`).
    fn change_ring(&mut self, now: Instant, node: NodeId, state: MemberState) -> ClientResponse {
        let Some(entry) = self.ring.get(node) else {
            return ClientResponse::Failed(RequestError::InvalidArgument(format!(
                "node {node} is not in the ring"
            )));
        };
        if entry.state == MemberState::Removed {
            return ClientResponse::Done(format!("node {node} is already removed"));
        }
        if state == MemberState::Leaving {
            // A leave hands data to the others: refuse one that would leave
            // fewer owners than replicas (remove, for a dead node, is allowed).
            let remaining = shoal_cluster::transition::desired_owners(&self.ring)
                .into_iter()
                .filter(|member| *member != node)
                .count();
            let replicas = self.config.cluster.replication_factor;
            if remaining < replicas {
                return ClientResponse::Failed(RequestError::InvalidArgument(format!(
                    "node {node} cannot leave: {remaining} owners would be left for {replicas} replicas (add a node first, or remove it if it is dead)"
                )));
            }
        }
        if !self.ring.set_state(node, state) {
            return ClientResponse::Done(format!("node {node} is already {state:?}"));
        }
        if let Err(error) = self.install_ring(now) {
            return ClientResponse::Failed(RequestError::StoreFailed(format!(
                "persisting the ring: {error}"
            )));
        }
        let what = match state {
            MemberState::Leaving => "leaving: its partitions move to the others, then it stops",
            MemberState::Removed => "removed: its partitions are rebuilt from the other replicas",
            _ => "changed",
        };
        ClientResponse::Done(format!("node {node} is {what}"))
    }

    /// Records the ring in the store, hands it to the core and gossips it.
    fn install_ring(&mut self, now: Instant) -> Result<(), StoreError> {
        record_ring(&mut self.store, &self.ring)?;
        self.node.handle_ring(now, self.ring.clone());
        let version = self.swim.metadata().0 + 1;
        if let Err(error) = self.swim.set_metadata(version, self.ring.encode()) {
            tracing::error!(%error, "ring too large to gossip");
        }
        self.refresh_addresses();
        if !self.draining
            && self.retire_from.is_none()
            && self
                .ring
                .get(self.id)
                .is_some_and(|entry| entry.state == MemberState::Removed)
        {
            tracing::info!(node = %self.id, "removed from the ring: replaying hints, then stopping");
            self.retire_from = Some(now);
        }
        Ok(())
    }

    /// The ring grew by a merge (gossip or the node's own step).
    fn ring_merged(&mut self, now: Instant) {
        if let Err(error) = self.install_ring(now) {
            // The store is failed: the loop's next flush stops the node.
            tracing::error!(%error, "recording the ring failed");
        }
    }

    fn inspect(&mut self, key: Bytes) -> ClientResponse {
        let partition = self.node.partition_of(&key);
        let primary = self
            .node
            .placement()
            .is_some_and(|placement| placement.primaries(partition).contains(&self.id));
        match replica::read_state(&mut self.store, partition, &key) {
            Ok(state) => ClientResponse::Inspect(Inspection {
                node: self.id,
                partition: partition.0,
                primary,
                state,
            }),
            Err(error) => ClientResponse::Failed(RequestError::StoreFailed(format!("{error:?}"))),
        }
    }

    fn drain_outputs(&mut self) {
        let now = Instant::now();
        let mut loops = 0;
        loop {
            loops += 1;
            let mut progressed = false;
            while let Some(output) = self.node.poll_output() {
                progressed = true;
                match output {
                    Output::Send { to, message } if to == self.id => {
                        self.node.handle_message(now, to, message, &mut self.store);
                        if self.store.flush().is_err() {
                            // The turn's flush failed: nothing more may leave.
                            return;
                        }
                    }
                    Output::Send { to, message } => match self.addresses.get(&to) {
                        Some(address) => self.endpoint.send_message(*address, &message),
                        None => self.unroutable_messages += 1,
                    },
                    Output::Ring(ring) => {
                        if self.ring.merge(&ring) {
                            self.ring_merged(now);
                        }
                    }
                    Output::Respond { id, response } => {
                        if let Some((reply, operation, started)) = self.pending.remove(&id.0) {
                            let ok = !matches!(response, Response::Failed(_));
                            let latency = started.elapsed();
                            self.metrics.record(operation, ok, latency);
                            self.node.handle_foreground_latency(now, latency);
                            let _ = reply.send(ClientResponse::Kv(response));
                        }
                    }
                }
            }
            while let Some(transmit) = self.swim.poll_transmit() {
                progressed = true;
                self.endpoint
                    .send_datagram(transmit.address, transmit.bytes);
            }
            while let Some(event) = self.swim.poll_event() {
                progressed = true;
                self.handle_membership_event(now, event);
            }
            if !progressed || loops > 64 {
                break;
            }
        }
    }

    fn handle_membership_event(&mut self, now: Instant, event: Event) {
        match event {
            Event::Joined => tracing::info!(node = %self.id, "joined the cluster"),
            Event::MemberUp { node, address, .. } => {
                self.addresses.insert(node, address);
                self.node.handle_liveness(now, node, Liveness::Alive);
            }
            Event::MemberAlive { node, .. } => {
                self.node.handle_liveness(now, node, Liveness::Alive)
            }
            Event::MemberSuspect { node, .. } => {
                self.node.handle_liveness(now, node, Liveness::Suspect)
            }
            Event::MemberDown { node, .. } | Event::MemberLeft { node, .. } => {
                self.node.handle_liveness(now, node, Liveness::Dead)
            }
            Event::MetadataChanged { .. } => {
                let (_, bytes) = self.swim.metadata();
                match Ring::decode(bytes) {
                    Ok(theirs) => {
                        if self.ring.merge(&theirs) {
                            self.ring_merged(now);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "undecodable ring in gossip"),
                }
            }
        }
    }

    fn refresh_addresses(&mut self) {
        for (node, entry) in self.ring.members() {
            if let Ok(address) = entry.address.parse::<SocketAddr>() {
                self.addresses.entry(node).or_insert(address);
            }
        }
        for member in self.swim.members() {
            self.addresses.insert(member.node, member.address);
        }
    }

    fn liveness_name(&self, node: NodeId) -> String {
        if node == self.id {
            return if self.draining { "leaving" } else { "alive" }.into();
        }
        match self.swim.member(node).map(|member| member.state) {
            Some(SwimState::Alive) => "alive",
            Some(SwimState::Suspect) => "suspect",
            Some(SwimState::Dead) => "dead",
            Some(SwimState::Left) => "left",
            None => "unknown",
        }
        .into()
    }

    fn status(&self) -> NodeStatus {
        let load = self
            .node
            .placement()
            .map(|placement| placement.primary_load())
            .unwrap_or_default();
        let mut members: Vec<MemberStatus> = self
            .ring
            .members()
            .map(|(node, entry)| MemberStatus {
                node,
                address: entry.address.clone(),
                ring_state: Some(entry.state),
                liveness: self.liveness_name(node),
                primary_partitions: load.get(&node).copied().unwrap_or(0),
            })
            .collect();
        for member in self.swim.members() {
            if self.ring.get(member.node).is_none() {
                members.push(MemberStatus {
                    node: member.node,
                    address: member.address.to_string(),
                    ring_state: None,
                    liveness: self.liveness_name(member.node),
                    primary_partitions: 0,
                });
            }
        }
        NodeStatus {
            node: self.id,
            address: self.config.listen.to_string(),
            epoch: self.node.epoch(),
            ring_version: self.ring.version(),
            members,
            requests_in_flight: self.node.operations_in_flight(),
            hint_bytes: self.node.hint_bytes_total(),
            moves: self.node.moves_status(),
            background_paused: self.node.background_paused(),
        }
    }

    fn ring_view(&self) -> RingView {
        RingView {
            version: self.ring.version(),
            partition_count: self.config.cluster.partition_count,
            replication_factor: self.config.cluster.replication_factor as u32,
            members: self
                .ring
                .members()
                .map(|(node, entry)| (node, entry.clone()))
                .collect(),
            primaries: self
                .node
                .placement()
                .map(|placement| placement.primary_table())
                .unwrap_or_default(),
            down: self
                .ring
                .members()
                .map(|(node, _)| node)
                .filter(|node| self.node.liveness_of(*node) != Liveness::Alive)
                .collect(),
        }
    }

    fn publish_metrics(&mut self) {
        let swim = self.swim.stats();
        let live = self.swim.live_member_count();
        let suspects = self
            .swim
            .members()
            .filter(|member| member.state == SwimState::Suspect)
            .count();
        self.metrics.publish_cores(
            self.node.metrics(),
            &swim,
            live,
            suspects,
            self.node.hint_bytes_total(),
            self.node.operations_in_flight(),
            &LoopStats {
                unroutable_messages: self.unroutable_messages,
                slow_turns: self.turns.slow,
                longest_turn_micros: self.turns.longest.as_micros() as u64,
            },
            &self.store.db().stats(),
            self.endpoint.stats(),
        );
        self.turns.longest = Duration::ZERO;
    }
}

/// A handle to ask a running loop to stop.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(pub mpsc::Sender<Control>);

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> DbStore {
        DbStore::new(
            shoal_storage::Db::open(dir.join("db"), shoal_storage::Options::default()).unwrap(),
        )
    }

    #[test]
    fn the_ring_is_kept_in_the_store_and_an_older_file_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut ring = Ring::default();
        ring.add_member(NodeId(1), "127.0.0.1:7001".into());
        // An older version's data directory: the ring in its own file.
        std::fs::write(legacy_ring_path(dir.path()), ring.encode()).unwrap();
        let mut store = open(dir.path());
        assert_eq!(
            load_ring(&mut store, dir.path()).unwrap(),
            Some(ring.clone())
        );
        // Recorded in the store, it wins over the file after a restart.
        ring.join_member(NodeId(2), "127.0.0.1:7002".into());
        record_ring(&mut store, &ring).unwrap();
        store.flush().unwrap();
        drop(store);
        let mut store = open(dir.path());
        assert_eq!(load_ring(&mut store, dir.path()).unwrap(), Some(ring));
        // Garbage where the ring should be is an error, not an empty ring.
        store
            .write(
                &replica::ring_key(),
                Some(b"not a ring"),
                Durability::Durable,
            )
            .unwrap();
        store.flush().unwrap();
        let error = load_ring(&mut store, dir.path()).unwrap_err().to_string();
        assert!(error.contains("the ring in the store"), "{error}");
    }

    #[test]
    fn a_node_without_a_ring_starts_from_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        assert_eq!(load_ring(&mut store, dir.path()).unwrap(), None);
    }
}
