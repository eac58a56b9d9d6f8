//! The transport: the only module of `shoal-cluster` that does IO.
//!
//! Design §7: one QUIC endpoint per node serves peers (`shoal-peer/1`) and
//! clients (`shoal-client/1`); requests travel as frames on streams, SWIM on
//! datagrams.
//! - [`frame`]: the pure, length-checked frame codec every stream carries.
//! - [`tls`]: rustls and quinn settings: mutual TLS for peers, explicit
//!   windows, stream counts and datagram buffers.
//! - [`endpoint`]: the node's endpoint: the peer pool (one long-lived
//!   connection per pair with a foreground and a background stream, batched
//!   writes, reconnect with backoff) and the
//!   client service, both feeding one bounded queue into the node's loop.
//! - [`call`]: the client's side of one request on its own stream;
//!   [`channel`]: many requests multiplexed on one long-lived stream.

pub mod call;
pub mod channel;
pub mod endpoint;
pub mod frame;
pub mod tls;
