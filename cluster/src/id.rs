//! Identities: nodes, the actors that issue dots, and partitions.
//!
//! A node's *actor* is its id plus an *epoch*. The epoch changes when the
//! node's data directory is created and whenever it restarts after a crash, so
//! that a dot `(actor, counter)` is never issued twice for different writes
//! (Riak's KV679 "key amnesia").

use std::fmt;

/// A cluster member's stable identity (chosen when its data directory is made).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{:x}", self.0)
    }
}

/// The issuer of dots: a node in one epoch of its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Actor {
    /// The node.
    pub node: NodeId,
    /// Bumped on every restart after a crash and when the data directory is created.
    pub epoch: u32,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.node, self.epoch)
    }
}

/// One of the cluster's `Q` fixed partitions of the key space.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Partition(pub u32);
