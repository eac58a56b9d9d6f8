//! The transport: the only module of `shoal-cluster` that does IO.
//!
//! Design §7: one QUIC endpoint per node serves peers (`shoal-peer/1`) and
//! clients (`shoal-client/1`); requests travel as frames on streams, SWIM on
//! datagrams. This session provides the frame layer ([`frame`]), which is pure
//! and carries opaque payload bytes; the quinn endpoint, the TLS configs and
//! the peer pool are not built yet.

pub mod frame;
