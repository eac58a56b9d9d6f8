//! Read repair (Dynamo §5): after a read, the coordinator merges every
//! replica's answer and sends the merge to each replica that answered with
//! less.
//!
//! Invariants: the merge is the sync of all answers, so it is independent of
//! the order they arrived in (sync is commutative, associative and
//! idempotent); a replica is repaired if and only if its answer does not
//! already dominate or equal the merge, so a converged key costs no writes.

use crate::id::NodeId;
use crate::siblings::KeyState;

/// The sync of every answer (the empty state when there are none).
pub fn merge<'a>(answers: impl IntoIterator<Item = &'a KeyState>) -> KeyState {
    let mut merged = KeyState::default();
    for answer in answers {
        merged.sync(answer);
    }
    merged
}

/// The replicas whose answer lacks something the merge holds.
pub fn stale_replicas(replies: &[(NodeId, KeyState)], merged: &KeyState) -> Vec<NodeId> {
    replies
        .iter()
        .filter(|(_, state)| !state.dominates_or_equals(merged))
        .map(|(node, _)| *node)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Actor;
    use crate::siblings::SiblingValue;
    use crate::version_vector::VersionVector;
    use bytes::Bytes;

    fn written(node: u64, text: &'static str) -> KeyState {
        let mut state = KeyState::default();
        state.coordinate_write(
            Actor {
                node: NodeId(node),
                epoch: 1,
            },
            &VersionVector::default(),
            SiblingValue::Value(Bytes::from_static(text.as_bytes())),
            1,
        );
        state
    }

    #[test]
    fn every_replica_that_answered_with_less_is_repaired() {
        let full = merge([&written(1, "a"), &written(2, "b")]);
        let replies = vec![
            (NodeId(1), written(1, "a")),
            (NodeId(2), full.clone()),
            (NodeId(3), KeyState::default()),
        ];
        let merged = merge(replies.iter().map(|(_, state)| state));
        assert_eq!(merged.sibling_count(), 2);
        assert_eq!(
            stale_replicas(&replies, &merged),
            vec![NodeId(1), NodeId(3)]
        );
    }

    #[test]
    fn converged_replicas_need_no_repair() {
        let state = written(1, "a");
        let replies = vec![(NodeId(1), state.clone()), (NodeId(2), state.clone())];
        let merged = merge(replies.iter().map(|(_, state)| state));
        assert!(stale_replicas(&replies, &merged).is_empty());
    }

    #[test]
    fn merge_does_not_depend_on_answer_order() {
        let states = [written(1, "a"), written(2, "b"), written(3, "c")];
        let forward = merge(states.iter());
        let backward = merge(states.iter().rev());
        assert!(forward.dominates_or_equals(&backward));
        assert!(backward.dominates_or_equals(&forward));
    }
}
