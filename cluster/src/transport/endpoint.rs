//! The node's QUIC endpoint: one UDP port for peers and clients (design §7).
//!
//! - Peers: one long-lived connection per pair. Whoever needs to send first
//!   dials; the other side adopts the inbound connection for its own sends,
//!   so a pair normally shares one connection (two only if both dial at the
//!   same instant, which is harmless). Messages travel as frames on two
//!   long-lived unidirectional streams per direction, each opened by a
//!   [`PeerHello`]: one for the messages of client requests, one at lower
//!   QUIC priority for background work ([`Message::is_background`]), so a
//!   read never waits behind a partition's states in a stream or in the
//!   connection's send window. Each stream has its own queue and writer,
//!   which drains its queue and sends everything queued in one write,
//!   batching small messages under load. SWIM travels as QUIC datagrams on
//!   the same connection.
//! - Clients: one bidirectional stream per request; the request frame is read
//!   whole (bounded by the frame limit and a deadline), handed to the node's
//!   event loop, and the response written back.
//!
//! Invariants: every queue is bounded — a full peer queue drops the message
//! (counted; the protocols tolerate loss), a full inbound queue answers
//! clients `busy` and pushes back on peer streams through QUIC flow control;
//! a malformed frame is counted and ends only the stream that carried it;
//! nothing read from the network is unwrapped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use crate::id::NodeId;
use crate::message::{Message, RequestError};
use crate::protocol::{
    self, ALPN_CLIENT, ALPN_PEER, ClientRequest, ClientResponse, FRAME_CLIENT_REQUEST,
    FRAME_CLIENT_RESPONSE, FRAME_PEER_HELLO, FRAME_PEER_MESSAGE, PeerHello,
};
use crate::transport::frame;
use crate::transport::tls::{self, TlsError, TlsFiles, TransportLimits};

/// What the endpoint hands to the node's event loop.
#[derive(Debug)]
pub enum Inbound {
    /// A peer message.
    Message {
        /// The sending node, as its stream's hello named it.
        from: NodeId,
        /// The message.
        message: Message,
    },
    /// A SWIM datagram.
    Datagram {
        /// The sender's address (its endpoint's address).
        from: SocketAddr,
        /// The datagram.
        bytes: Bytes,
    },
    /// A client request; answer through `reply` (dropping it answers
    /// "unavailable").
    Client {
        /// The request.
        request: ClientRequest,
        /// Where the answer goes.
        reply: oneshot::Sender<ClientResponse>,
    },
}

/// How the endpoint is set up.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// This node.
    pub node: NodeId,
    /// Its membership generation, sent in every hello.
    pub generation: u64,
    /// The UDP address to bind (a specific address: peers know us by it).
    pub address: SocketAddr,
    /// CA, certificate and key.
    pub tls: TlsFiles,
    /// Refuse clients without a certificate from the CA.
    pub require_client_certificates: bool,
    /// The name node certificates carry and dialers verify.
    pub server_name: String,
    /// Per-connection QUIC bounds.
    pub limits: TransportLimits,
    /// Largest frame payload accepted or sent.
    pub frame_size_max_bytes: u32,
    /// Messages and datagrams queued per peer before new ones are dropped.
    pub peer_queue_max: usize,
    /// Peers (addresses) the pool keeps state for.
    pub peers_max: usize,
    /// Connections (peers and clients) accepted at once.
    pub connections_max: usize,
    /// How long a client may take to send its whole request.
    pub request_read_timeout: Duration,
    /// Longest a client stream waits for the node's answer.
    pub response_timeout: Duration,
}

/// Counters for metrics; only ever incremented.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Peer messages sent (queued to a writer).
    pub messages_sent: AtomicU64,
    /// Peer messages dropped because a peer queue was full or unreachable.
    pub messages_dropped: AtomicU64,
    /// Datagrams dropped (queue full, too large, connection lost).
    pub datagrams_dropped: AtomicU64,
    /// Peer messages received.
    pub messages_received: AtomicU64,
    /// Frames or streams rejected as malformed.
    pub malformed_frames: AtomicU64,
    /// Connections refused (limit, wrong ALPN, peer without a certificate).
    pub connections_refused: AtomicU64,
    /// Client requests answered `busy` because the event loop's queue was full.
    pub client_busy: AtomicU64,
    /// Successful dials to peers.
    pub dials: AtomicU64,
    /// Failed dials to peers.
    pub dial_failures: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicUsize,
}

enum Outgoing {
    Frame(Bytes),
    Datagram(Bytes),
}

/// Which of a peer's two streams a message travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Client requests' messages and SWIM datagrams.
    Foreground,
    /// Anti-entropy, moves, hinted handoff and reaping.
    Background,
}

impl Lane {
    /// The lane's QUIC stream priority: higher is sent first.
    fn priority(self) -> i32 {
        match self {
            Lane::Foreground => 1,
            Lane::Background => 0,
        }
    }
}

struct PeerSlot {
    foreground: mpsc::Sender<Outgoing>,
    background: mpsc::Sender<Outgoing>,
    link: Arc<PeerLink>,
}

impl PeerSlot {
    fn queue(&self, lane: Lane) -> &mpsc::Sender<Outgoing> {
        match lane {
            Lane::Foreground => &self.foreground,
            Lane::Background => &self.background,
        }
    }
}

/// The connection a peer's two writers share.
struct PeerLink {
    connection: Mutex<Option<quinn::Connection>>,
    /// Held while dialing, so that the two writers dial once between them.
    dialing: tokio::sync::Mutex<()>,
}

impl PeerLink {
    /// The connection, if one is open.
    fn open(&self) -> Option<quinn::Connection> {
        lock(&self.connection)
            .clone()
            .filter(|connection| connection.close_reason().is_none())
    }
}

struct Shared {
    config: EndpointConfig,
    /// The runtime that runs the endpoint's tasks; `send_*` may be called
    /// from any thread or runtime.
    runtime: tokio::runtime::Handle,
    endpoint: quinn::Endpoint,
    peer_client_config: quinn::ClientConfig,
    inbound: mpsc::Sender<Inbound>,
    peers: Mutex<HashMap<SocketAddr, PeerSlot>>,
    stats: EndpointStats,
}

/// The running endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Endpoint {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Endpoint")
            .field("address", &self.shared.config.address)
            .finish()
    }
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// TLS material or settings.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP port could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the maps inconsistent
    // (every critical section is a single insert, get or take).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Bytes the node's UDP socket may buffer each way. The kernel's default
/// (about 200 KiB) can overflow when a partition move's stream and client
/// traffic arrive together, and every datagram dropped there waits for
/// QUIC's loss recovery. The kernel caps the size at `net.core.rmem_max` /
/// `wmem_max`.
const UDP_BUFFER_BYTES: usize = 4 << 20;

/// Binds the node's UDP socket with [`UDP_BUFFER_BYTES`] of buffers.
fn bind_udp(address: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if address.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // Best effort: a smaller buffer still works, only with more drops.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    if let Ok(size) = socket.recv_buffer_size()
        && size < UDP_BUFFER_BYTES
    {
        tracing::info!(
            bytes = size,
            wanted = UDP_BUFFER_BYTES,
            "UDP receive buffer capped by the kernel (net.core.rmem_max)"
        );
    }
    socket.bind(&address.into())?;
    Ok(socket.into())
}

impl Endpoint {
    /// Binds the port and starts accepting; inbound traffic goes to `inbound`.
    /// Must be called inside the tokio runtime that is to run the endpoint.
    pub fn bind(
        config: EndpointConfig,
        inbound: mpsc::Sender<Inbound>,
    ) -> Result<Endpoint, EndpointError> {
        let server_config = tls::server_config(
            &config.tls,
            config.require_client_certificates,
            &config.limits,
        )?;
        let peer_client_config = tls::client_config(&config.tls, ALPN_PEER, &config.limits)?;
        let bind_error = |source| EndpointError::Bind {
            address: config.address,
            source,
        };
        let socket = bind_udp(config.address).map_err(bind_error)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_error)?;
        let shared = Arc::new(Shared {
            runtime: tokio::runtime::Handle::current(),
            config,
            endpoint,
            peer_client_config,
            inbound,
            peers: Mutex::new(HashMap::new()),
            stats: EndpointStats::default(),
        });
        shared.runtime.spawn(accept_loop(shared.clone()));
        Ok(Endpoint { shared })
    }

    /// The bound address.
    pub fn local_address(&self) -> SocketAddr {
        self.shared
            .endpoint
            .local_addr()
            .unwrap_or(self.shared.config.address)
    }

    /// The counters.
    pub fn stats(&self) -> &EndpointStats {
        &self.shared.stats
    }

    /// Queues `message` for the peer at `to`; never waits. A full queue drops it.
    pub fn send_message(&self, to: SocketAddr, message: &Message) {
        let mut out = BytesMut::new();
        if let Err(error) = protocol::encode_frame(
            FRAME_PEER_MESSAGE,
            0,
            message,
            self.shared.config.frame_size_max_bytes,
            &mut out,
        ) {
            tracing::warn!(%to, %error, "message not sent");
            self.shared
                .stats
                .messages_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let lane = if message.is_background() {
            Lane::Background
        } else {
            Lane::Foreground
        };
        if enqueue(&self.shared, to, lane, Outgoing::Frame(out.freeze())) {
            self.shared
                .stats
                .messages_sent
                .fetch_add(1, Ordering::Relaxed);
        } else {
            self.shared
                .stats
                .messages_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a SWIM datagram for `to`; never waits. A full queue drops it.
    pub fn send_datagram(&self, to: SocketAddr, bytes: Vec<u8>) {
        if !enqueue(
            &self.shared,
            to,
            Lane::Foreground,
            Outgoing::Datagram(Bytes::from(bytes)),
        ) {
            self.shared
                .stats
                .datagrams_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Closes every connection and stops accepting.
    pub async fn close(&self) {
        self.shared.endpoint.close(0u32.into(), b"shutting down");
        self.shared.endpoint.wait_idle().await;
    }
}

/// Queues one item for `to` on `lane`, creating the peer's writers on first use.
fn enqueue(shared: &Arc<Shared>, to: SocketAddr, lane: Lane, item: Outgoing) -> bool {
    let mut peers = lock(&shared.peers);
    if let Some(slot) = peers.get(&to) {
        return slot.queue(lane).try_send(item).is_ok();
    }
    if peers.len() >= shared.config.peers_max {
        return false;
    }
    let slot = new_slot(shared, to, None);
    let queued = slot.queue(lane).try_send(item).is_ok();
    peers.insert(to, slot);
    queued
}

/// A peer's state: its connection and one queue and writer per lane, each
/// queue bounded by `peer_queue_max`.
fn new_slot(shared: &Arc<Shared>, to: SocketAddr, adopted: Option<quinn::Connection>) -> PeerSlot {
    let link = Arc::new(PeerLink {
        connection: Mutex::new(adopted),
        dialing: tokio::sync::Mutex::new(()),
    });
    let queue = |lane| {
        let (queue, receiver) = mpsc::channel(shared.config.peer_queue_max.max(1));
        shared.runtime.spawn(peer_writer(
            shared.clone(),
            to,
            lane,
            receiver,
            link.clone(),
        ));
        queue
    };
    PeerSlot {
        foreground: queue(Lane::Foreground),
        background: queue(Lane::Background),
        link,
    }
}

/// Makes the writer for `address` send on a new inbound connection. The
/// newest connection wins: a peer that dials us has just (re)started or lost
/// its previous connection, which may not have timed out on our side yet.
/// The old connection is not closed (the peer may still be sending on it);
/// it ends by itself when idle.
fn adopt(shared: &Arc<Shared>, address: SocketAddr, connection: &quinn::Connection) {
    let mut peers = lock(&shared.peers);
    match peers.get(&address) {
        Some(slot) => *lock(&slot.link.connection) = Some(connection.clone()),
        None if peers.len() < shared.config.peers_max => {
            let slot = new_slot(shared, address, Some(connection.clone()));
            peers.insert(address, slot);
        }
        None => {}
    }
}

const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(50);
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Bytes gathered into one stream write.
const WRITE_BATCH_MAX_BYTES: usize = 256 << 10;

/// Owns one lane of the sending half towards one peer: connects (or uses an
/// adopted connection, or the one the other lane's writer dialed),
/// reconnects with backoff, and writes queued items in batches.
async fn peer_writer(
    shared: Arc<Shared>,
    to: SocketAddr,
    lane: Lane,
    mut queue: mpsc::Receiver<Outgoing>,
    link: Arc<PeerLink>,
) {
    let mut backoff = DIAL_BACKOFF_MIN;
    let mut carried: Option<Outgoing> = None;
    loop {
        let connection = match link.open() {
            Some(connection) => connection,
            None => {
                let dialing = link.dialing.lock().await;
                // The other lane's writer may have dialed while this one waited.
                let dialed = match link.open() {
                    Some(connection) => Ok(connection),
                    None => dial(&shared, to).await.inspect(|connection| {
                        *lock(&link.connection) = Some(connection.clone());
                        tokio::spawn(serve_peer_connection(shared.clone(), connection.clone()));
                    }),
                };
                drop(dialing);
                match dialed {
                    Ok(connection) => connection,
                    Err(DialError::Stopping) => return,
                    Err(DialError::Failed(reason)) => {
                        tracing::debug!(%to, %reason, "dial failed");
                        shared.stats.dial_failures.fetch_add(1, Ordering::Relaxed);
                        // What was queued for an unreachable peer is stale; drop it.
                        while queue.try_recv().is_ok() {
                            shared
                                .stats
                                .messages_dropped
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(DIAL_BACKOFF_MAX);
                        continue;
                    }
                }
            }
        };
        backoff = DIAL_BACKOFF_MIN;
        match pump(
            &shared,
            &connection,
            lane,
            &link,
            &mut queue,
            carried.take(),
        )
        .await
        {
            Pump::QueueClosed => return,
            Pump::Replaced(item) => carried = Some(item),
            Pump::ConnectionLost(reason) => {
                tracing::debug!(%to, %reason, "peer connection lost");
                let mut current = lock(&link.connection);
                if current
                    .as_ref()
                    .is_some_and(|existing| existing.stable_id() == connection.stable_id())
                {
                    *current = None;
                }
            }
        }
    }
}

enum DialError {
    Stopping,
    Failed(String),
}

async fn dial(shared: &Arc<Shared>, to: SocketAddr) -> Result<quinn::Connection, DialError> {
    let connecting = shared
        .endpoint
        .connect_with(
            shared.peer_client_config.clone(),
            to,
            &shared.config.server_name,
        )
        .map_err(|error| match error {
            quinn::ConnectError::EndpointStopping => DialError::Stopping,
            other => DialError::Failed(other.to_string()),
        })?;
    let connection = connecting
        .await
        .map_err(|error| DialError::Failed(error.to_string()))?;
    shared.stats.dials.fetch_add(1, Ordering::Relaxed);
    Ok(connection)
}

enum Pump {
    QueueClosed,
    ConnectionLost(String),
    /// An inbound connection replaced this one; the item is still to send.
    Replaced(Outgoing),
}

async fn pump(
    shared: &Arc<Shared>,
    connection: &quinn::Connection,
    lane: Lane,
    link: &PeerLink,
    queue: &mut mpsc::Receiver<Outgoing>,
    mut carried: Option<Outgoing>,
) -> Pump {
    let mut stream = match connection.open_uni().await {
        Ok(stream) => stream,
        Err(error) => return Pump::ConnectionLost(error.to_string()),
    };
    if let Err(error) = stream.set_priority(lane.priority()) {
        return Pump::ConnectionLost(error.to_string());
    }
    let mut batch = BytesMut::new();
    let hello = PeerHello {
        node: shared.config.node,
        generation: shared.config.generation,
    };
    if let Err(error) = protocol::encode_frame(
        FRAME_PEER_HELLO,
        0,
        &hello,
        shared.config.frame_size_max_bytes,
        &mut batch,
    ) {
        return Pump::ConnectionLost(error.to_string());
    }
    loop {
        if !batch.is_empty() {
            if let Err(error) = stream.write_all(&batch).await {
                return Pump::ConnectionLost(error.to_string());
            }
            batch.clear();
        }
        let first = match carried.take() {
            Some(item) => item,
            None => tokio::select! {
                item = queue.recv() => match item {
                    Some(item) => item,
                    None => return Pump::QueueClosed,
                },
                reason = connection.closed() => return Pump::ConnectionLost(reason.to_string()),
            },
        };
        let replaced = lock(&link.connection)
            .as_ref()
            .is_some_and(|current| current.stable_id() != connection.stable_id());
        if replaced {
            // Send this item and the rest on the newer connection.
            return Pump::Replaced(first);
        }
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Outgoing::Frame(bytes) => batch.extend_from_slice(&bytes),
                Outgoing::Datagram(bytes) => match connection.send_datagram(bytes) {
                    Ok(()) => {}
                    Err(quinn::SendDatagramError::ConnectionLost(error)) => {
                        return Pump::ConnectionLost(error.to_string());
                    }
                    Err(_) => {
                        shared
                            .stats
                            .datagrams_dropped
                            .fetch_add(1, Ordering::Relaxed);
                    }
                },
            }
            if batch.len() < WRITE_BATCH_MAX_BYTES {
                next = queue.try_recv().ok();
            }
        }
    }
}

async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        if shared.stats.connections_open.load(Ordering::Relaxed) >= shared.config.connections_max {
            shared
                .stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            incoming.refuse();
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::debug!(%error, "handshake failed");
                    shared
                        .stats
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            match tls::negotiated_alpn(&connection).as_deref() {
                Some(ALPN_PEER) if tls::presented_certificate(&connection) => {
                    adopt(&shared, connection.remote_address(), &connection);
                    serve_peer_connection(shared, connection).await;
                }
                Some(ALPN_CLIENT) => serve_client_connection(shared, connection).await,
                _ => {
                    shared
                        .stats
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    connection.close(1u32.into(), b"peer certificate required");
                }
            }
        });
    }
}

/// Counts a connection open for as long as it lives.
struct OpenConnection<'a>(&'a EndpointStats);

impl<'a> OpenConnection<'a> {
    fn new(stats: &'a EndpointStats) -> OpenConnection<'a> {
        stats.connections_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(stats)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads everything a peer sends on `connection`: datagrams and streams.
async fn serve_peer_connection(shared: Arc<Shared>, connection: quinn::Connection) {
    let _open = OpenConnection::new(&shared.stats);
    let from = connection.remote_address();
    let datagrams = {
        let shared = shared.clone();
        let connection = connection.clone();
        tokio::spawn(async move {
            while let Ok(bytes) = connection.read_datagram().await {
                let datagram = Inbound::Datagram { from, bytes };
                if shared.inbound.try_send(datagram).is_err() {
                    shared
                        .stats
                        .datagrams_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    while let Ok(stream) = connection.accept_uni().await {
        tokio::spawn(read_peer_stream(shared.clone(), stream));
    }
    datagrams.abort();
}

async fn read_peer_stream(shared: Arc<Shared>, mut stream: quinn::RecvStream) {
    let maximum = shared.config.frame_size_max_bytes;
    let mut buffer = BytesMut::new();
    let mut sender: Option<NodeId> = None;
    loop {
        loop {
            match frame::decode(&mut buffer, maximum) {
                Ok(Some(frame)) => match sender {
                    None => match protocol::decode_frame::<PeerHello>(&frame, FRAME_PEER_HELLO) {
                        Ok(hello) => sender = Some(hello.node),
                        Err(error) => return malformed(&shared, &error.to_string()),
                    },
                    Some(from) => match protocol::decode_peer_message(&frame) {
                        Ok(message) => {
                            shared
                                .stats
                                .messages_received
                                .fetch_add(1, Ordering::Relaxed);
                            // Waiting here pushes back on the peer through flow control.
                            if shared
                                .inbound
                                .send(Inbound::Message { from, message })
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        // One bad message is skipped; the framing is intact.
                        Err(error) => malformed(&shared, &error.to_string()),
                    },
                },
                Ok(None) => break,
                Err(error) => return malformed(&shared, &error.to_string()),
            }
        }
        match stream.read_chunk(64 << 10, true).await {
            Ok(Some(chunk)) => buffer.extend_from_slice(&chunk.bytes),
            Ok(None) | Err(_) => return,
        }
    }
}

fn malformed(shared: &Shared, reason: &str) {
    tracing::warn!(%reason, "malformed peer frame");
    shared
        .stats
        .malformed_frames
        .fetch_add(1, Ordering::Relaxed);
}

async fn serve_client_connection(shared: Arc<Shared>, connection: quinn::Connection) {
    let _open = OpenConnection::new(&shared.stats);
    while let Ok((send, receive)) = connection.accept_bi().await {
        tokio::spawn(serve_client_stream(shared.clone(), send, receive));
    }
}

/// Requests one client stream may have in flight; beyond it the stream is
/// not read, which pushes back on the client through flow control.
const STREAM_REQUESTS_IN_FLIGHT_MAX: usize = 1024;

/// Serves one client stream: any number of request frames, answered in
/// whatever order they complete, each with its request id. A client that
/// sends one request and finishes its side gets one response and the end of
/// the stream.
async fn serve_client_stream(
    shared: Arc<Shared>,
    send: quinn::SendStream,
    mut receive: quinn::RecvStream,
) {
    let maximum = shared.config.frame_size_max_bytes;
    let (responses, outgoing) = mpsc::channel::<Bytes>(STREAM_REQUESTS_IN_FLIGHT_MAX);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(STREAM_REQUESTS_IN_FLIGHT_MAX));
    let writer = tokio::spawn(write_responses(send, outgoing));
    let mut buffer = BytesMut::new();
    'reading: loop {
        loop {
            match frame::decode(&mut buffer, maximum) {
                Ok(Some(frame)) => {
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        break 'reading;
                    };
                    let request_id = frame.request_id;
                    match protocol::decode_frame::<ClientRequest>(&frame, FRAME_CLIENT_REQUEST) {
                        Ok(request) => {
                            let shared = shared.clone();
                            let responses = responses.clone();
                            tokio::spawn(async move {
                                let response = submit(&shared, request).await;
                                respond(&shared, &responses, request_id, response).await;
                                drop(permit);
                            });
                        }
                        Err(error) => {
                            count_malformed(&shared);
                            let response = ClientResponse::Failed(RequestError::InvalidArgument(
                                error.to_string(),
                            ));
                            respond(&shared, &responses, request_id, response).await;
                        }
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    // The framing is lost: answer and stop reading this stream.
                    count_malformed(&shared);
                    let response =
                        ClientResponse::Failed(RequestError::InvalidArgument(error.to_string()));
                    respond(&shared, &responses, 0, response).await;
                    break 'reading;
                }
            }
        }
        // A stalled partial frame may hold its buffer only so long.
        let read = receive.read_chunk(64 << 10, true);
        let chunk = if buffer.is_empty() {
            read.await
        } else {
            match tokio::time::timeout(shared.config.request_read_timeout, read).await {
                Ok(chunk) => chunk,
                Err(_) => {
                    count_malformed(&shared);
                    let response = ClientResponse::Failed(RequestError::InvalidArgument(
                        "request not received in time".into(),
                    ));
                    respond(&shared, &responses, 0, response).await;
                    break 'reading;
                }
            }
        };
        match chunk {
            Ok(Some(chunk)) => buffer.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                if !buffer.is_empty() {
                    count_malformed(&shared);
                    let response = ClientResponse::Failed(RequestError::InvalidArgument(
                        "the stream ended in the middle of a frame".into(),
                    ));
                    respond(&shared, &responses, 0, response).await;
                }
                break 'reading;
            }
            Err(_) => break 'reading,
        }
    }
    // The writer ends once every request of this stream has been answered.
    drop(responses);
    let _ = writer.await;
}

fn count_malformed(shared: &Shared) {
    shared
        .stats
        .malformed_frames
        .fetch_add(1, Ordering::Relaxed);
}

/// Hands a request to the event loop and waits for its answer.
async fn submit(shared: &Shared, request: ClientRequest) -> ClientResponse {
    let (reply, answer) = oneshot::channel();
    match shared.inbound.try_send(Inbound::Client { request, reply }) {
        Err(mpsc::error::TrySendError::Full(_)) => {
            shared.stats.client_busy.fetch_add(1, Ordering::Relaxed);
            ClientResponse::Failed(RequestError::Busy)
        }
        Err(mpsc::error::TrySendError::Closed(_)) => ClientResponse::Failed(
            RequestError::Unavailable("the node is shutting down".into()),
        ),
        Ok(()) => match tokio::time::timeout(shared.config.response_timeout, answer).await {
            Ok(Ok(response)) => response,
            Ok(Err(_)) => ClientResponse::Failed(RequestError::Unavailable(
                "the node is shutting down".into(),
            )),
            Err(_) => ClientResponse::Failed(RequestError::Unavailable(
                "the node did not answer in time".into(),
            )),
        },
    }
}

async fn respond(
    shared: &Shared,
    responses: &mpsc::Sender<Bytes>,
    request_id: u64,
    response: ClientResponse,
) {
    let maximum = shared.config.frame_size_max_bytes;
    let mut out = BytesMut::new();
    if let Err(error) = protocol::encode_frame(
        FRAME_CLIENT_RESPONSE,
        request_id,
        &response,
        maximum,
        &mut out,
    ) {
        tracing::warn!(%error, "response not encodable");
        out.clear();
        let failed = ClientResponse::Failed(RequestError::Unavailable(format!(
            "response not sendable: {error}"
        )));
        if protocol::encode_frame(
            FRAME_CLIENT_RESPONSE,
            request_id,
            &failed,
            maximum,
            &mut out,
        )
        .is_err()
        {
            return;
        }
    }
    let _ = responses.send(out.freeze()).await;
}

/// Writes response frames as they complete, batching what is queued.
async fn write_responses(mut send: quinn::SendStream, mut outgoing: mpsc::Receiver<Bytes>) {
    let mut batch = BytesMut::new();
    while let Some(first) = outgoing.recv().await {
        batch.extend_from_slice(&first);
        while batch.len() < WRITE_BATCH_MAX_BYTES {
            match outgoing.try_recv() {
                Ok(next) => batch.extend_from_slice(&next),
                Err(_) => break,
            }
        }
        if send.write_all(&batch).await.is_err() {
            return;
        }
        batch.clear();
    }
    let _ = send.finish();
}
