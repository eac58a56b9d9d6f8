//! Counting the answers of a quorum operation (Dynamo §4.5: `R + W > N` gives
//! quorum-like behaviour; §4.6: with a sloppy quorum, answers from fallbacks
//! standing in for a primary count too).
//!
//! What counts is a *slot*: each of the `N` primaries of a key is one slot,
//! answered by the primary itself or, under a sloppy quorum, by the fallback
//! standing in for it. Invariants: a slot counts at most once however many
//! nodes answer for it and however often an answer is duplicated (so `w =
//! all` means every primary's slot is covered, never "three answers of which
//! two for the same primary"); an answer that does not count (a fallback
//! under a strict quorum, a refusal) never moves the outcome to
//! [`QuorumOutcome::Reached`]; the required count is always in `1..=N`.

use std::collections::BTreeSet;

use crate::id::NodeId;
use crate::message::Quorum;

impl Quorum {
    /// How many of `replication_factor` replicas this quorum needs, or why it
    /// cannot be met.
    pub fn required(self, replication_factor: usize) -> Result<usize, String> {
        let required = match self {
            Quorum::One => 1,
            Quorum::Quorum => replication_factor / 2 + 1,
            Quorum::All => replication_factor,
            Quorum::Count(count) => usize::from(count),
        };
        if required == 0 || required > replication_factor {
            return Err(format!(
                "quorum of {required} is not within 1..={replication_factor}"
            ));
        }
        Ok(required)
    }
}

/// Where a quorum operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuorumOutcome {
    /// Not enough answers yet, and more may come.
    Pending,
    /// Enough answers counted.
    Reached,
    /// Enough answers can no longer arrive (every asked replica answered).
    Failed,
}

/// The answers an operation has gathered.
#[derive(Debug, Clone)]
pub struct QuorumTracker {
    required: usize,
    /// Primaries whose slot is covered.
    counted: BTreeSet<NodeId>,
    answered: BTreeSet<NodeId>,
    asked: BTreeSet<NodeId>,
    /// While a partition moves, the groups (committed and target
    /// primaries) that must each have `required` slots covered (or all of
    /// theirs, if fewer); empty otherwise.
    groups: Vec<Vec<NodeId>>,
}

impl QuorumTracker {
    /// A tracker needing `required` counted answers.
    pub fn new(required: usize) -> QuorumTracker {
        QuorumTracker {
            required,
            counted: BTreeSet::new(),
            answered: BTreeSet::new(),
            asked: BTreeSet::new(),
            groups: Vec::new(),
        }
    }

    /// A tracker needing `required` counted answers in each of `groups`.
    pub fn with_groups(required: usize, groups: Vec<Vec<NodeId>>) -> QuorumTracker {
        QuorumTracker {
            groups,
            ..QuorumTracker::new(required)
        }
    }

    fn reached(&self) -> bool {
        if self.groups.is_empty() {
            return self.counted.len() >= self.required;
        }
        self.groups.iter().all(|group| {
            let covered = group
                .iter()
                .filter(|node| self.counted.contains(node))
                .count();
            covered >= self.required.min(group.len())
        })
    }

    /// Notes that `node` was asked (so that its silence matters).
    pub fn asked(&mut self, node: NodeId) {
        self.asked.insert(node);
    }

    /// Records `node`'s answer; `slot` names the primary whose slot it
    /// covers, or is `None` when the answer does not count.
    pub fn record(&mut self, node: NodeId, slot: Option<NodeId>) -> QuorumOutcome {
        self.answered.insert(node);
        if let Some(primary) = slot {
            self.counted.insert(primary);
        }
        self.outcome()
    }

    /// Whether `node` has answered (counted or not).
    pub fn has_answered(&self, node: NodeId) -> bool {
        self.answered.contains(&node)
    }

    /// Whether every asked node has answered.
    pub fn all_answered(&self) -> bool {
        self.asked.iter().all(|node| self.answered.contains(node))
    }

    /// Slots covered so far.
    pub fn counted(&self) -> usize {
        self.counted.len()
    }

    /// Answers needed.
    pub fn required(&self) -> usize {
        self.required
    }

    /// Where the operation stands.
    pub fn outcome(&self) -> QuorumOutcome {
        if self.reached() {
            QuorumOutcome::Reached
        } else if self.all_answered() {
            QuorumOutcome::Failed
        } else {
            QuorumOutcome::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn while_moving_each_group_needs_its_own_quorum() {
        let (a, b, c, d) = (NodeId(1), NodeId(2), NodeId(3), NodeId(4));
        let mut tracker = QuorumTracker::with_groups(2, vec![vec![a, b, c], vec![a, b, d]]);
        for node in [a, b, c, d] {
            tracker.asked(node);
        }
        assert_eq!(tracker.record(a, Some(a)), QuorumOutcome::Pending);
        // Two of the committed group, one of the target group.
        assert_eq!(tracker.record(c, Some(c)), QuorumOutcome::Pending);
        assert_eq!(tracker.record(d, Some(d)), QuorumOutcome::Reached);
        let mut tracker = QuorumTracker::with_groups(2, vec![vec![a, b, c], vec![a, b, d]]);
        for node in [a, c, d] {
            tracker.asked(node);
            tracker.record(node, Some(node));
        }
        assert_eq!(tracker.outcome(), QuorumOutcome::Reached);
        let mut tracker = QuorumTracker::with_groups(2, vec![vec![a, b, c], vec![a, b, d]]);
        tracker.asked(c);
        tracker.asked(d);
        tracker.record(c, Some(c));
        assert_eq!(tracker.record(d, Some(d)), QuorumOutcome::Failed);
    }

    #[test]
    fn quorum_of_three_is_two() {
        assert_eq!(Quorum::Quorum.required(3), Ok(2));
        assert_eq!(Quorum::Quorum.required(5), Ok(3));
        assert_eq!(Quorum::All.required(3), Ok(3));
        assert_eq!(Quorum::One.required(3), Ok(1));
    }

    #[test]
    fn count_outside_one_to_n_is_refused() {
        assert!(Quorum::Count(0).required(3).is_err());
        assert!(Quorum::Count(4).required(3).is_err());
        assert_eq!(Quorum::Count(3).required(3), Ok(3));
    }

    #[test]
    fn duplicated_answers_count_once() {
        let mut tracker = QuorumTracker::new(2);
        tracker.asked(NodeId(1));
        tracker.asked(NodeId(2));
        assert_eq!(
            tracker.record(NodeId(1), Some(NodeId(1))),
            QuorumOutcome::Pending
        );
        assert_eq!(
            tracker.record(NodeId(1), Some(NodeId(1))),
            QuorumOutcome::Pending
        );
        assert_eq!(tracker.counted(), 1);
        assert_eq!(
            tracker.record(NodeId(2), Some(NodeId(2))),
            QuorumOutcome::Reached
        );
    }

    #[test]
    fn a_primary_and_its_fallback_cover_one_slot_only() {
        let mut tracker = QuorumTracker::new(2);
        for node in [1, 2, 4] {
            tracker.asked(NodeId(node));
        }
        tracker.record(NodeId(2), Some(NodeId(2)));
        // Fallback 4 stood in for primary 2, which answered as well.
        assert_eq!(
            tracker.record(NodeId(4), Some(NodeId(2))),
            QuorumOutcome::Pending
        );
        assert_eq!(tracker.counted(), 1);
        assert_eq!(
            tracker.record(NodeId(1), Some(NodeId(1))),
            QuorumOutcome::Reached
        );
    }

    #[test]
    fn answers_that_do_not_count_never_reach_the_quorum() {
        let mut tracker = QuorumTracker::new(2);
        tracker.asked(NodeId(1));
        tracker.asked(NodeId(2));
        tracker.record(NodeId(1), Some(NodeId(1)));
        assert_eq!(tracker.record(NodeId(2), None), QuorumOutcome::Failed);
        assert_eq!(tracker.counted(), 1);
    }
}
