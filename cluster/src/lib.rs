//! `shoal-cluster`: placement, versioning, quorum coordination, hinted handoff,
//! read repair, SWIM membership, peer transport and the deterministic simulator.
//!
//! Everything here except `transport` is sans-IO: plain state machines driven
//! by `handle_*` inputs at a given instant, producing `poll_*` outputs.

pub mod admission;
pub mod anti_entropy;
pub mod config;
pub mod context;
pub mod coordinator;
pub mod hinted_handoff;
pub mod id;
pub mod membership;
pub mod message;
pub mod node;
pub mod partitioner;
pub mod placement;
pub mod protocol;
pub mod quorum;
pub mod read_repair;
pub mod replica;
pub mod ring;
pub mod siblings;
pub mod sim;
pub mod store;
pub mod transition;
pub mod transport;
pub mod version_vector;
