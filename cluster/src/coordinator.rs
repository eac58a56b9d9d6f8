//! The coordinator's view of one request in flight (Dynamo §4.5 and §5): which
//! replicas were asked, which answered, when to retry and when to give up.
//!
//! These are plain values; `node.rs` drives them (sends, timers, replies).
//! Invariants: a write is answered [`Response::Written`] only once `w`
//! counted replicas stored it at the requested durability, and a read is
//! answered only once `r` counted replicas answered; every operation is
//! answered exactly once (`responded`), at the latest at its deadline; an
//! operation stays in flight after its answer only to finish in the
//! background (remaining replicas, read repair), and never past its deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use bytes::Bytes;

use crate::id::{NodeId, Partition};
use crate::message::{ReadResult, RequestError, RequestId, Response, WriteResult};
use crate::quorum::{QuorumOutcome, QuorumTracker};
use crate::read_repair;
use crate::siblings::KeyState;
use crate::version_vector::Dot;

/// Who is waiting for an operation's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client of this node.
    Client(RequestId),
    /// A node that forwarded the request (one hop).
    Forwarded {
        /// The forwarding node.
        from: NodeId,
        /// Its id for the request.
        forward_id: u64,
    },
}

/// The first fallback in `preference_list` (a node not in `primaries`) that
/// is believed alive, is not `me` and is not in `used`.
pub fn next_fallback(
    preference_list: &[NodeId],
    primaries: &[NodeId],
    me: NodeId,
    used: &BTreeSet<NodeId>,
    alive: impl Fn(NodeId) -> bool,
) -> Option<NodeId> {
    preference_list.iter().copied().find(|node| {
        !primaries.contains(node) && *node != me && !used.contains(node) && alive(*node)
    })
}

/// A put or delete being replicated.
#[derive(Debug, Clone)]
pub struct WriteOperation {
    /// Who waits for the answer.
    pub origin: Origin,
    /// The user key.
    pub key: Bytes,
    /// Its partition.
    pub partition: Partition,
    /// The coordinator's state after the write; what every replica is sent.
    pub state: KeyState,
    /// The write's dot.
    pub dot: Dot,
    /// Replicas must sync before acknowledging.
    pub durable: bool,
    /// Fallbacks' acknowledgements count toward `w`.
    pub sloppy: bool,
    /// The key's primaries.
    pub primaries: Vec<NodeId>,
    /// Primary → the fallback holding a hint for it.
    pub handoffs: BTreeMap<NodeId, NodeId>,
    /// Primaries for which the coordinator keeps a hint itself, because no
    /// fallback was available. Such a hint never counts toward `w` (the
    /// coordinator already fills its own slot); it only carries the write
    /// to the primary when it returns.
    pub local_hints: BTreeSet<NodeId>,
    /// Replicas that stored the state (primaries as data, fallbacks as hints).
    pub stored: BTreeSet<NodeId>,
    /// Counted acknowledgements.
    pub tracker: QuorumTracker,
    /// Whether the origin has been answered.
    pub responded: bool,
    /// When the operation is given up.
    pub deadline: Instant,
}

impl WriteOperation {
    /// The primary slot an acknowledgement from `node` covers toward `w`:
    /// its own, or under a sloppy quorum the one it holds a hint for.
    pub fn slot_of(&self, node: NodeId) -> Option<NodeId> {
        if self.primaries.contains(&node) {
            return Some(node);
        }
        if !self.sloppy {
            return None;
        }
        self.handoffs
            .iter()
            .find(|(_, fallback)| **fallback == node)
            .map(|(primary, _)| *primary)
    }

    /// Whether `primary` holds the write, or a fallback holds a hint for it.
    pub fn covered(&self, primary: NodeId) -> bool {
        self.stored.contains(&primary)
            || self
                .handoffs
                .get(&primary)
                .is_some_and(|fallback| self.stored.contains(fallback))
    }

    /// Primaries not yet covered.
    pub fn uncovered(&self) -> Vec<NodeId> {
        self.primaries
            .iter()
            .copied()
            .filter(|primary| !self.covered(*primary))
            .collect()
    }

    /// Records a replica's answer and returns where the quorum stands.
    pub fn record(&mut self, node: NodeId, stored: bool) -> QuorumOutcome {
        if stored {
            self.stored.insert(node);
        }
        let slot = if stored { self.slot_of(node) } else { None };
        self.tracker.record(node, slot)
    }

    /// The answer for a reached quorum.
    pub fn success(&self) -> Response {
        Response::Written(WriteResult {
            dot: self.dot,
            context: self.state.context(),
            acks: self.tracker.counted(),
        })
    }

    /// The answer for a quorum that was not reached.
    pub fn failure(&self) -> Response {
        Response::Failed(RequestError::QuorumNotReached {
            acks: self.tracker.counted(),
            required: self.tracker.required(),
        })
    }
}

/// A get gathering answers.
#[derive(Debug, Clone)]
pub struct ReadOperation {
    /// Who waits for the answer.
    pub origin: Origin,
    /// The user key.
    pub key: Bytes,
    /// Its partition.
    pub partition: Partition,
    /// Fallbacks' answers count toward `r`.
    pub sloppy: bool,
    /// The key's primaries.
    pub primaries: Vec<NodeId>,
    /// Fallback → the primary it was asked in place of.
    pub substitutes: BTreeMap<NodeId, NodeId>,
    /// Primaries' answers (candidates for read repair).
    pub primary_replies: Vec<(NodeId, KeyState)>,
    /// Fallbacks' answers (their hints).
    pub fallback_replies: Vec<(NodeId, KeyState)>,
    /// Counted answers.
    pub tracker: QuorumTracker,
    /// Whether the origin has been answered.
    pub responded: bool,
    /// When the operation is given up.
    pub deadline: Instant,
}

impl ReadOperation {
    /// Records a replica's answer (`None`: it could not read) and returns where the quorum stands.
    pub fn record(&mut self, node: NodeId, state: Option<KeyState>) -> QuorumOutcome {
        if self.tracker.has_answered(node) {
            return self.tracker.outcome();
        }
        let Some(state) = state else {
            return self.tracker.record(node, None);
        };
        let is_primary = self.primaries.contains(&node);
        let slot = if is_primary {
            Some(node)
        } else if self.sloppy {
            self.substitutes.get(&node).copied()
        } else {
            None
        };
        if is_primary {
            self.primary_replies.push((node, state));
        } else {
            self.fallback_replies.push((node, state));
        }
        self.tracker.record(node, slot)
    }

    /// The sync of every answer so far.
    pub fn merged(&self) -> KeyState {
        read_repair::merge(
            self.primary_replies
                .iter()
                .chain(self.fallback_replies.iter())
                .map(|(_, state)| state),
        )
    }

    /// The answer for a reached quorum.
    pub fn success(&self) -> Response {
        let merged = self.merged();
        Response::Value(ReadResult {
            siblings: merged.values().cloned().collect(),
            context: merged.context(),
            answered: self.tracker.counted(),
        })
    }

    /// The answer for a quorum that was not reached.
    pub fn failure(&self) -> Response {
        Response::Failed(RequestError::QuorumNotReached {
            acks: self.tracker.counted(),
            required: self.tracker.required(),
        })
    }

    /// The merge and the primaries that answered with less than it.
    pub fn repairs(&self) -> (KeyState, Vec<NodeId>) {
        let merged = self.merged();
        let stale = read_repair::stale_replicas(&self.primary_replies, &merged);
        (merged, stale)
    }
}

/// A request passed to a primary, waiting for its answer.
#[derive(Debug, Clone)]
pub struct ForwardOperation {
    /// The client request waiting.
    pub request_id: RequestId,
    /// The primary it was forwarded to.
    pub to: NodeId,
    /// The quorum the request needed (for the failure reply).
    pub required: usize,
    /// When the forwarder gives up.
    pub deadline: Instant,
}

/// An operation in flight at a coordinator or forwarder.
#[derive(Debug, Clone)]
pub enum Operation {
    /// A put or delete.
    Write(WriteOperation),
    /// A get.
    Read(ReadOperation),
    /// A forwarded request.
    Forward(ForwardOperation),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Actor;
    use crate::siblings::SiblingValue;
    use crate::version_vector::VersionVector;

    fn write_operation(sloppy: bool, required: usize) -> WriteOperation {
        let mut state = KeyState::default();
        let dot = state.coordinate_write(
            Actor {
                node: NodeId(1),
                epoch: 1,
            },
            &VersionVector::default(),
            SiblingValue::Value(Bytes::from_static(b"v")),
            1,
        );
        WriteOperation {
            origin: Origin::Client(RequestId(1)),
            key: Bytes::from_static(b"k"),
            partition: Partition(0),
            state,
            dot,
            durable: false,
            sloppy,
            primaries: vec![NodeId(1), NodeId(2), NodeId(3)],
            handoffs: BTreeMap::from([(NodeId(3), NodeId(4))]),
            local_hints: BTreeSet::new(),
            stored: BTreeSet::new(),
            tracker: {
                let mut tracker = QuorumTracker::new(required);
                for node in [1, 2, 4] {
                    tracker.asked(NodeId(node));
                }
                tracker
            },
            responded: false,
            deadline: Instant::now(),
        }
    }

    #[test]
    fn fallback_acknowledgement_counts_only_under_a_sloppy_quorum() {
        let mut sloppy = write_operation(true, 2);
        sloppy.record(NodeId(1), true);
        assert_eq!(sloppy.record(NodeId(4), true), QuorumOutcome::Reached);
        let mut strict = write_operation(false, 2);
        strict.record(NodeId(1), true);
        assert_eq!(strict.record(NodeId(4), true), QuorumOutcome::Pending);
        assert!(strict.covered(NodeId(3)));
        assert_eq!(strict.uncovered(), vec![NodeId(2)]);
    }

    #[test]
    fn primary_and_its_fallback_together_cover_one_slot() {
        let mut operation = write_operation(true, 3);
        operation.record(NodeId(1), true);
        operation.record(NodeId(3), true);
        assert_eq!(operation.record(NodeId(4), true), QuorumOutcome::Pending);
        assert_eq!(operation.tracker.counted(), 2);
        assert_eq!(operation.uncovered(), vec![NodeId(2)]);
    }

    #[test]
    fn refusal_does_not_count_or_cover() {
        let mut operation = write_operation(true, 2);
        operation.record(NodeId(1), true);
        operation.record(NodeId(2), false);
        assert_eq!(operation.tracker.counted(), 1);
        assert!(!operation.covered(NodeId(2)));
        assert_eq!(
            operation.failure(),
            Response::Failed(RequestError::QuorumNotReached {
                acks: 1,
                required: 2
            })
        );
    }

    #[test]
    fn fallback_is_the_first_live_unused_node_after_the_primaries() {
        let list = [
            NodeId(1),
            NodeId(2),
            NodeId(3),
            NodeId(4),
            NodeId(5),
            NodeId(6),
        ];
        let used = BTreeSet::from([NodeId(4)]);
        let alive = |node: NodeId| node != NodeId(5);
        assert_eq!(
            next_fallback(&list, &list[..3], NodeId(1), &used, alive),
            Some(NodeId(6))
        );
        assert_eq!(
            next_fallback(&list, &list[..3], NodeId(6), &used, alive),
            None
        );
    }
}
