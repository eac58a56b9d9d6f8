//! `shoal-cluster`: placement, versioning, quorum coordination, hinted handoff,
//! read repair, SWIM membership, peer transport and the deterministic simulator.
//!
//! Everything here except `transport` is sans-IO: plain state machines driven
//! by `handle_*` inputs at a given instant, producing `poll_*` outputs.

pub mod context;
pub mod id;
pub mod membership;
pub mod partitioner;
pub mod placement;
pub mod ring;
pub mod siblings;
pub mod sim;
pub mod store;
pub mod version_vector;
