//! `shoal-client`: the native Rust client of Shoal, and the `shoal` CLI.
//!
//! A [`Client`] connects to the nodes named in a [`ClientConfig`] over QUIC
//! (ALPN `shoal-client/1`, the node verified against the cluster CA), learns
//! the ring, and sends each key's request to a primary of that key, so the
//! request needs no forwarding hop. Reads return every live sibling and a
//! [`Context`]; writing back with that context supersedes exactly what was
//! read (dotted version vectors, design §3).
//!
//! ```no_run
//! # async fn example() -> Result<(), shoal_client::Error> {
//! use shoal_client::{Client, ClientConfig, Context, ReadOptions, WriteOptions};
//!
//! let config = ClientConfig::load("./.cluster/client.toml".as_ref())?;
//! let client = Client::connect(config).await?;
//! client
//!     .put(b"greeting", b"hello", &Context::default(), &WriteOptions::default())
//!     .await?;
//! let value = client.get(b"greeting", &ReadOptions::default()).await?;
//! assert_eq!(value.siblings, vec![bytes::Bytes::from_static(b"hello")]);
//! // Read-modify-write: merge the siblings into one value.
//! client
//!     .update(b"greeting", &WriteOptions::default(), |siblings| {
//!         let mut merged = Vec::new();
//!         for sibling in siblings {
//!             merged.extend_from_slice(sibling);
//!         }
//!         Some(merged.into())
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Errors say whether a retry is safe ([`Error::is_retryable`]). The client
//! retries by itself, with backoff and within the request's deadline, only
//! what cannot duplicate a write: reads, and writes the node refused before
//! storing anything (`busy`, `unavailable`) or that never left the client.

pub mod config;
pub mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_cluster::context;
use shoal_cluster::id::NodeId;
use shoal_cluster::message::{self, Quorum, Request, RequestError, Response, WriteResult};
use shoal_cluster::partitioner::Partitioner;
use shoal_cluster::protocol::{
    ALPN_CLIENT, ClientRequest, ClientResponse, Inspection, NodeStatus, RingView,
};
use shoal_cluster::transport::call::CallError;
use shoal_cluster::transport::channel::Channel;
use shoal_cluster::transport::tls::{self, TransportLimits};
use shoal_cluster::version_vector::VersionVector;

pub use crate::config::ClientConfig;
pub use crate::session::Session;
pub use shoal_cluster::protocol;

/// What went wrong, and whether to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Too few replicas answered in time. For a write, the replicas that did
    /// acknowledge keep it: the outcome is unknown. Retry reads; retry a
    /// write only with the context of a fresh read.
    #[error("quorum not reached: {acks} of {required} replicas answered within {timeout:?}")]
    Unavailable {
        /// Replicas that answered.
        acks: usize,
        /// Replicas that had to.
        required: usize,
        /// The request's deadline.
        timeout: Duration,
    },
    /// The deadline passed without an answer. Outcome unknown.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The node is overloaded; nothing was stored. Safe to retry later.
    #[error("busy: the node has too many requests in flight")]
    Busy,
    /// The node cannot serve (shutting down, no ring yet); nothing was stored.
    #[error("node unavailable: {0}")]
    NodeUnavailable(String),
    /// No connection could be made or it broke. If the request was sent,
    /// its outcome is unknown.
    #[error("connection: {0}")]
    Connection(String),
    /// The request is invalid or over a limit; nothing was stored. Do not retry.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The write would leave too many siblings; nothing was stored. Read,
    /// resolve, and write back with the context.
    #[error("too many siblings: {count} (max {max}); read, resolve and write back")]
    TooManySiblings {
        /// Siblings the write would have left.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A session read could not find a replica as recent as the session.
    #[error("no replica answered with a state as recent as this session's")]
    StaleSession,
    /// The node's store failed; nothing was acknowledged.
    #[error("store failure on the node: {0}")]
    StoreFailed(String),
    /// The node answered something unexpected.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether sending the same request again is safe and may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Busy | Error::NodeUnavailable(_) | Error::Unavailable { .. } | Error::Timeout(_)
        ) || matches!(self, Error::Connection(_))
    }

    fn from_request_error(error: RequestError, timeout: Duration) -> Error {
        match error {
            RequestError::QuorumNotReached { acks, required } => Error::Unavailable {
                acks,
                required,
                timeout,
            },
            RequestError::InvalidArgument(reason) => Error::InvalidArgument(reason),
            RequestError::TooManySiblings { count, max } => Error::TooManySiblings { count, max },
            RequestError::Busy => Error::Busy,
            RequestError::Unavailable(reason) => Error::NodeUnavailable(reason),
            RequestError::StoreFailed(reason) => Error::StoreFailed(reason),
        }
    }
}

/// The causal context of a read: write back with it to supersede what was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context(pub VersionVector);

impl Context {
    /// The opaque token form (base64url), empty for the empty context.
    pub fn to_token(&self) -> String {
        context::encode(&self.0)
    }

    /// Parses a token made by [`Context::to_token`].
    pub fn from_token(token: &str) -> Result<Context, Error> {
        context::decode(token, 64 << 10)
            .map(Context)
            .map_err(|error| Error::InvalidArgument(format!("context: {error}")))
    }
}

/// What a get returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// Live sibling values; empty when the key is absent or deleted.
    pub siblings: Vec<Bytes>,
    /// The context covering them.
    pub context: Context,
}

impl Value {
    /// Whether the key has at least one live value.
    pub fn found(&self) -> bool {
        !self.siblings.is_empty()
    }
}

/// Options of one read; `None` takes the node's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// How many replicas must answer.
    pub r: Option<Quorum>,
    /// Whether fallbacks holding hints may answer for a primary.
    pub sloppy: Option<bool>,
    /// Deadline (default: the client's).
    pub timeout: Option<Duration>,
}

/// Options of one write; `None` takes the node's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// How many replicas must acknowledge.
    pub w: Option<Quorum>,
    /// Whether fallbacks holding hints count toward `w`.
    pub sloppy: Option<bool>,
    /// Count a replica only once its write is fsynced.
    pub durable: Option<bool>,
    /// Deadline (default: the client's).
    pub timeout: Option<Duration>,
}

/// What the client knows of the ring, for routing.
#[derive(Debug, Clone)]
struct Routing {
    partitioner: Partitioner,
    primaries: Vec<Vec<NodeId>>,
    addresses: HashMap<NodeId, SocketAddr>,
    /// Members the cluster believes down.
    down: Vec<NodeId>,
    fetched: Instant,
}

/// How often the ring is refreshed even without a failure.
const RING_REFRESH_INTERVAL: Duration = Duration::from_secs(2);
/// Requests one connection's stream may have in flight; more wait.
const STREAM_IN_FLIGHT_MAX: usize = 1024;
/// How long a node that could not be reached is tried only after the others.
const UNREACHABLE_FOR: Duration = Duration::from_secs(2);
/// The longest a connection attempt may take before the next node is tried.
const CONNECT_TIMEOUT_MAX: Duration = Duration::from_millis(500);
/// How connection errors before a request was sent begin.
const NOT_SENT: &str = "connect to ";
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// A connection to a Shoal cluster. Share it (`Arc<Client>`); requests may
/// run concurrently.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    connections: tokio::sync::Mutex<HashMap<SocketAddr, (quinn::Connection, Channel)>>,
    routing: Mutex<Option<Routing>>,
    /// Nodes this client failed to reach, and until when to try others first.
    unreachable: Mutex<HashMap<SocketAddr, Instant>>,
    /// Per node, how long this client last waited for a key-value answer
    /// from it, in microseconds, until the next request reports it (the
    /// node's admission control judges background work by it).
    waited: Mutex<HashMap<SocketAddr, u32>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is a single read or replace.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Client {
    /// Connects to the cluster: at least one node must answer.
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        if config.nodes.is_empty() {
            return Err(Error::Config("no node addresses given".into()));
        }
        // A short idle timeout with keep-alives notices a dead node within
        // seconds, so its cached connection is dropped and others are tried.
        let limits = TransportLimits {
            idle_timeout: Duration::from_secs(3),
            keep_alive_interval: Duration::from_millis(750),
            ..TransportLimits::default()
        };
        let client_config = tls::client_config(&config.tls_files(), ALPN_CLIENT, &limits)
            .map_err(|error| Error::Config(error.to_string()))?;
        let bind: SocketAddr = if config.nodes.iter().all(SocketAddr::is_ipv4) {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let endpoint = quinn::Endpoint::client(bind)
            .map_err(|error| Error::Connection(format!("binding a UDP socket: {error}")))?;
        let client = Client {
            config,
            endpoint,
            client_config,
            connections: tokio::sync::Mutex::new(HashMap::new()),
            routing: Mutex::new(None),
            unreachable: Mutex::new(HashMap::new()),
            waited: Mutex::new(HashMap::new()),
        };
        // Learn the ring now; a cluster that cannot answer this is unreachable.
        client.refresh_ring().await?;
        Ok(client)
    }

    /// Connects with the configuration in a file.
    pub async fn connect_with_file(path: &Path) -> Result<Client, Error> {
        Client::connect(ClientConfig::load(path)?).await
    }

    /// A session: reads in it never go back behind what it wrote or read.
    pub fn session(&self) -> Session<'_> {
        Session::new(self)
    }

    /// Reads a key.
    pub async fn get(&self, key: &[u8], options: &ReadOptions) -> Result<Value, Error> {
        let timeout = options.timeout.unwrap_or(self.config.timeout);
        let request = Request::Get {
            key: Bytes::copy_from_slice(key),
            options: message::ReadOptions {
                r: options.r,
                sloppy: options.sloppy,
                timeout: Some(timeout),
            },
        };
        match self.key_request(key, request, timeout, true).await? {
            Response::Value(result) => Ok(Value {
                siblings: result.siblings,
                context: Context(result.context),
            }),
            other => Err(Error::Protocol(format!(
                "unexpected answer to a get: {other:?}"
            ))),
        }
    }

    /// Writes `value`, superseding what `context` covers (the empty context
    /// adds a sibling beside whatever is there). Returns the new context.
    pub async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        context: &Context,
        options: &WriteOptions,
    ) -> Result<Context, Error> {
        let timeout = options.timeout.unwrap_or(self.config.timeout);
        let request = Request::Put {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
            context: context.0.clone(),
            options: write_options(options, timeout),
        };
        self.write(key, request, timeout).await
    }

    /// Deletes what `context` covers. Returns the new context.
    pub async fn delete(
        &self,
        key: &[u8],
        context: &Context,
        options: &WriteOptions,
    ) -> Result<Context, Error> {
        let timeout = options.timeout.unwrap_or(self.config.timeout);
        let request = Request::Delete {
            key: Bytes::copy_from_slice(key),
            context: context.0.clone(),
            options: write_options(options, timeout),
        };
        self.write(key, request, timeout).await
    }

    /// Read-modify-write: reads the key, calls `merge` with its siblings
    /// (empty when absent), and writes the result back with the read's
    /// context, so it supersedes every sibling it saw. `None` writes nothing.
    /// Concurrent updates become siblings, never lost writes.
    pub async fn update(
        &self,
        key: &[u8],
        options: &WriteOptions,
        merge: impl FnOnce(&[Bytes]) -> Option<Bytes>,
    ) -> Result<Option<Context>, Error> {
        let read = self
            .get(
                key,
                &ReadOptions {
                    r: None,
                    sloppy: options.sloppy,
                    timeout: options.timeout,
                },
            )
            .await?;
        match merge(&read.siblings) {
            Some(value) => self
                .put(key, &value, &read.context, options)
                .await
                .map(Some),
            None => Ok(None),
        }
    }

    /// A request that passes through `node`'s event loop and does nothing.
    pub async fn ping(&self, node: SocketAddr) -> Result<(), Error> {
        match self.call(node, &ClientRequest::Ping).await? {
            ClientResponse::Pong => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The status as `node` (or any node) sees it.
    pub async fn status(&self, node: Option<SocketAddr>) -> Result<NodeStatus, Error> {
        match self.admin(node, ClientRequest::Status).await? {
            ClientResponse::Status(status) => Ok(status),
            other => Err(unexpected(other)),
        }
    }

    /// The ring and placement as some node sees them; routing is refreshed
    /// with it.
    pub async fn ring(&self) -> Result<RingView, Error> {
        self.refresh_ring().await
    }

    /// Makes `node` (or any node) join the cluster through `seed`.
    pub async fn join(&self, node: Option<SocketAddr>, seed: SocketAddr) -> Result<String, Error> {
        let request = ClientRequest::Join {
            seed: seed.to_string(),
        };
        self.done(self.admin(node, request).await?)
    }

    /// Marks `member` (the node asked, when `None`) as leaving.
    pub async fn leave(&self, member: Option<NodeId>) -> Result<String, Error> {
        let response = self
            .admin(None, ClientRequest::Leave { node: member })
            .await?;
        self.done(response)
    }

    /// Removes `member` from the ring for good.
    pub async fn remove(&self, member: NodeId) -> Result<String, Error> {
        let response = self
            .admin(None, ClientRequest::Remove { node: member })
            .await?;
        self.done(response)
    }

    /// Pauses (`paused`) or resumes the background work of `node` (or of
    /// any node): anti-entropy and the pulls of moving partitions. Not
    /// persisted: a node restarts with its background work running.
    pub async fn set_background(
        &self,
        node: Option<SocketAddr>,
        paused: bool,
    ) -> Result<String, Error> {
        self.done(
            self.admin(node, ClientRequest::Background { paused })
                .await?,
        )
    }

    /// The local state of `key` on the replica at `node`.
    pub async fn inspect(&self, node: SocketAddr, key: &[u8]) -> Result<Inspection, Error> {
        let request = ClientRequest::Inspect {
            key: Bytes::copy_from_slice(key),
        };
        match self.admin(Some(node), request).await? {
            ClientResponse::Inspect(inspection) => Ok(inspection),
            other => Err(unexpected(other)),
        }
    }

    /// The addresses of the ring's members, as last learnt.
    pub fn member_addresses(&self) -> Vec<(NodeId, SocketAddr)> {
        let routing = lock(&self.routing);
        let mut members: Vec<_> = routing
            .as_ref()
            .map(|routing| routing.addresses.iter().map(|(n, a)| (*n, *a)).collect())
            .unwrap_or_default();
        members.sort();
        members
    }

    fn done(&self, response: ClientResponse) -> Result<String, Error> {
        match response {
            ClientResponse::Done(what) => Ok(what),
            other => Err(unexpected(other)),
        }
    }

    async fn write(
        &self,
        key: &[u8],
        request: Request,
        timeout: Duration,
    ) -> Result<Context, Error> {
        match self.key_request(key, request, timeout, false).await? {
            Response::Written(WriteResult { context, .. }) => Ok(Context(context)),
            other => Err(Error::Protocol(format!(
                "unexpected answer to a write: {other:?}"
            ))),
        }
    }

    /// Sends a key request to the key's primaries in turn, retrying what is
    /// safe within the deadline.
    async fn key_request(
        &self,
        key: &[u8],
        request: Request,
        timeout: Duration,
        idempotent: bool,
    ) -> Result<Response, Error> {
        let deadline = Instant::now() + timeout;
        let mut backoff = BACKOFF_MIN;
        let mut attempt = 0usize;
        loop {
            let targets = self.targets(key).await;
            let target = targets[attempt % targets.len()];
            attempt += 1;
            let started = Instant::now();
            let remaining = deadline.saturating_duration_since(started);
            // Each wait is reported once, with the next request to its node.
            let message = match lock(&self.waited).remove(&target) {
                Some(previous_micros) => ClientRequest::KvReporting {
                    request: request.clone(),
                    previous_micros,
                },
                None => ClientRequest::Kv(request.clone()),
            };
            let outcome = tokio::time::timeout(
                remaining + Duration::from_millis(250),
                self.call(target, &message),
            )
            .await;
            if let Ok(Ok(ClientResponse::Kv(_))) = &outcome {
                let waited = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
                lock(&self.waited).insert(target, waited);
            }
            let error = match outcome {
                Err(_) => Error::Timeout(timeout),
                Ok(Ok(ClientResponse::Kv(Response::Failed(error)))) => {
                    Error::from_request_error(error, timeout)
                }
                Ok(Ok(ClientResponse::Kv(response))) => return Ok(response),
                Ok(Ok(ClientResponse::Failed(error))) => Error::from_request_error(error, timeout),
                Ok(Ok(other)) => return Err(unexpected(other)),
                Ok(Err(error)) => error,
            };
            let safe = match &error {
                // Refused before anything was stored.
                Error::Busy => true,
                Error::NodeUnavailable(_) => {
                    // Stopping, or not serving yet: others first for a while.
                    self.mark_down(target);
                    true
                }
                Error::Connection(reason) => {
                    // The ring may have changed under a node that went away.
                    *lock(&self.routing) = None;
                    // A request that never left the client cannot duplicate.
                    idempotent || reason.starts_with(NOT_SENT)
                }
                Error::Unavailable { .. } | Error::Timeout(_) => idempotent,
                _ => false,
            };
            if !safe || Instant::now() + backoff >= deadline {
                return Err(error);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// The key's primaries' addresses (in order), then every other node.
    async fn targets(&self, key: &[u8]) -> Vec<SocketAddr> {
        let stale = lock(&self.routing)
            .as_ref()
            .is_none_or(|routing| routing.fetched.elapsed() > RING_REFRESH_INTERVAL);
        if stale {
            // A failed refresh keeps the old table, or falls back to the seeds.
            let _ = self.refresh_ring().await;
        }
        let mut targets = Vec::new();
        let mut down = Vec::new();
        if let Some(routing) = lock(&self.routing).as_ref() {
            down = routing
                .down
                .iter()
                .filter_map(|node| routing.addresses.get(node).copied())
                .collect();
            let partition = routing.partitioner.partition_of(key);
            if let Some(primaries) = routing.primaries.get(partition.0 as usize) {
                for primary in primaries {
                    if let Some(address) = routing.addresses.get(primary) {
                        targets.push(*address);
                    }
                }
            }
        }
        for node in &self.config.nodes {
            if !targets.contains(node) {
                targets.push(*node);
            }
        }
        // Nodes believed down, by the cluster or by this client, go last
        // (stable: primaries keep their order among themselves).
        let now = Instant::now();
        let unreachable = lock(&self.unreachable);
        targets.sort_by_key(|address| {
            down.contains(address) || unreachable.get(address).is_some_and(|until| *until > now)
        });
        targets
    }

    /// Remembers that `node` could not be reached, so others are tried first.
    fn mark_down(&self, node: SocketAddr) {
        let mut unreachable = lock(&self.unreachable);
        let now = Instant::now();
        unreachable.retain(|_, until| *until > now);
        unreachable.insert(node, now + UNREACHABLE_FOR);
    }

    async fn refresh_ring(&self) -> Result<RingView, Error> {
        let mut last_error = Error::Config("no nodes".into());
        // The members the last ring named first (a configured node may have
        // left the cluster since), then the configured ones; among them,
        // those with an open connection first (they answer at once; a node
        // that stopped since would hold the refresh for the connect
        // timeout), unreachable ones last.
        let mut nodes: Vec<SocketAddr> = self
            .member_addresses()
            .into_iter()
            .map(|(_, address)| address)
            .collect();
        for node in &self.config.nodes {
            if !nodes.contains(node) {
                nodes.push(*node);
            }
        }
        {
            let open: Vec<SocketAddr> = self
                .connections
                .lock()
                .await
                .iter()
                .filter(|(_, (connection, _))| connection.close_reason().is_none())
                .map(|(node, _)| *node)
                .collect();
            let now = Instant::now();
            let unreachable = lock(&self.unreachable);
            nodes.sort_by_key(|node| {
                (
                    unreachable.get(node).is_some_and(|until| *until > now),
                    !open.contains(node),
                )
            });
        }
        for node in nodes {
            let answer = tokio::time::timeout(
                self.config.timeout / 2,
                self.call(node, &ClientRequest::Ring),
            )
            .await
            .unwrap_or_else(|_| {
                self.mark_down(node);
                Err(Error::Timeout(self.config.timeout / 2))
            });
            match answer {
                Ok(ClientResponse::Ring(ring)) => {
                    let partitioner = Partitioner::new(ring.partition_count)
                        .map_err(|error| Error::Protocol(format!("{error}")))?;
                    let addresses = ring
                        .members
                        .iter()
                        // A removed member has stopped for good.
                        .filter(|(_, entry)| {
                            entry.state != shoal_cluster::ring::MemberState::Removed
                        })
                        .filter_map(|(node, entry)| {
                            entry.address.parse().ok().map(|address| (*node, address))
                        })
                        .collect();
                    *lock(&self.routing) = Some(Routing {
                        partitioner,
                        primaries: ring.primaries.clone(),
                        addresses,
                        down: ring.down.clone(),
                        fetched: Instant::now(),
                    });
                    return Ok(ring);
                }
                Ok(other) => last_error = unexpected(other),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    async fn admin(
        &self,
        node: Option<SocketAddr>,
        request: ClientRequest,
    ) -> Result<ClientResponse, Error> {
        let targets = match node {
            Some(node) => vec![node],
            None => self.config.nodes.clone(),
        };
        let mut last_error = Error::Config("no nodes".into());
        for target in targets {
            match tokio::time::timeout(self.config.timeout, self.call(target, &request)).await {
                Ok(Ok(ClientResponse::Failed(error))) => {
                    return Err(Error::from_request_error(error, self.config.timeout));
                }
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(error)) => last_error = error,
                Err(_) => last_error = Error::Timeout(self.config.timeout),
            }
        }
        Err(last_error)
    }

    /// The channel (one long-lived multiplexed stream) to `node`,
    /// connecting if there is none or the old one failed.
    async fn channel(&self, node: SocketAddr) -> Result<Channel, Error> {
        {
            let mut connections = self.connections.lock().await;
            if let Some((connection, channel)) = connections.get(&node) {
                let closed = connection.close_reason();
                if closed.is_none() && !channel.is_failed() {
                    return Ok(channel.clone());
                }
                connections.remove(&node);
                // The node closed the connection (it is stopping) or stopped
                // answering: a new connection would most likely wait out the
                // whole connect timeout, since a closed UDP port does not
                // refuse. Try the other nodes first instead.
                if let Some(reason) = closed
                    && reason != quinn::ConnectionError::LocallyClosed
                {
                    self.mark_down(node);
                    return Err(Error::Connection(format!("{NOT_SENT}{node}: {reason}")));
                }
            }
        }
        // Connect without holding the lock: one unreachable node must not
        // delay requests to the others. Two concurrent connects to the same
        // node are harmless; the later one is kept.
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), node, &self.config.server_name)
            .map_err(|error| Error::Connection(format!("{NOT_SENT}{node}: {error}")))?;
        let connect_timeout = (self.config.timeout / 4).min(CONNECT_TIMEOUT_MAX);
        let connection = match tokio::time::timeout(connect_timeout, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => {
                self.mark_down(node);
                return Err(Error::Connection(format!("{NOT_SENT}{node}: {error}")));
            }
            Err(_) => {
                self.mark_down(node);
                return Err(Error::Connection(format!("{NOT_SENT}{node}: timed out")));
            }
        };
        let channel = Channel::open(
            &connection,
            STREAM_IN_FLIGHT_MAX,
            self.config.frame_size_max_bytes,
        )
        .await
        .map_err(|error| Error::Connection(format!("{NOT_SENT}{node}: {error}")))?;
        self.connections
            .lock()
            .await
            .insert(node, (connection, channel.clone()));
        Ok(channel)
    }

    async fn call(
        &self,
        node: SocketAddr,
        request: &ClientRequest,
    ) -> Result<ClientResponse, Error> {
        let channel = self.channel(node).await?;
        channel.call(request).await.map_err(|error| match error {
            CallError::NotSent(reason) => {
                self.mark_down(node);
                Error::Connection(format!("{NOT_SENT}{node}: {reason}"))
            }
            CallError::Connection(reason) => Error::Connection(format!("{node}: {reason}")),
            CallError::Protocol(reason) => Error::Protocol(format!("{node}: {reason}")),
        })
    }
}

fn write_options(options: &WriteOptions, timeout: Duration) -> message::WriteOptions {
    message::WriteOptions {
        w: options.w,
        sloppy: options.sloppy,
        durable: options.durable,
        timeout: Some(timeout),
    }
}

fn unexpected(response: ClientResponse) -> Error {
    match response {
        ClientResponse::Failed(error) => Error::Protocol(error.to_string()),
        other => Error::Protocol(format!("unexpected answer: {other:?}")),
    }
}
