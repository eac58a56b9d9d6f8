//! Version vectors and dots: the causal bookkeeping of dotted version vectors
//! (Preguiça et al., "Dotted Version Vectors", 2010; as used by Riak 2.x).
//!
//! A [`Dot`] names one write: the actor that coordinated it and that actor's
//! counter at the time. A [`VersionVector`] maps each actor to the highest
//! counter seen from it, and stands for the set of dots `{(a, 1..=c)}`: every
//! dot it *covers*. Because an actor issues its counters in order and only
//! ever from its own state, "covered" means "seen, and either kept or
//! superseded".
//!
//! Laws: `join` is commutative, associative and idempotent (a join-semilattice);
//! `descends` is the partial order it induces.

use crate::id::Actor;
use std::collections::BTreeMap;

/// One write's identity: `(actor, counter)`. Never issued twice.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Dot {
    /// The node and epoch that coordinated the write.
    pub actor: Actor,
    /// The actor's counter for this write, starting at 1.
    pub counter: u64,
}

/// A map from actor to the highest counter seen from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct VersionVector(BTreeMap<Actor, u64>);

impl VersionVector {
    /// The empty vector (covers nothing).
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// The highest counter seen from `actor` (0 if none).
    pub fn get(&self, actor: &Actor) -> u64 {
        self.0.get(actor).copied().unwrap_or(0)
    }

    /// True when the write named by `dot` is in this vector's causal past.
    pub fn covers(&self, dot: &Dot) -> bool {
        dot.counter != 0 && self.get(&dot.actor) >= dot.counter
    }

    /// True when every dot covered by `other` is covered by `self`.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other
            .0
            .iter()
            .all(|(actor, counter)| self.get(actor) >= *counter)
    }

    /// Joins `other` into `self` (pointwise maximum).
    pub fn join(&mut self, other: &VersionVector) {
        for (actor, counter) in &other.0 {
            self.witness(Dot {
                actor: *actor,
                counter: *counter,
            });
        }
    }

    /// Records `dot` as seen: raises the actor's entry to at least its counter.
    pub fn witness(&mut self, dot: Dot) {
        if dot.counter == 0 {
            return;
        }
        let entry = self.0.entry(dot.actor).or_insert(0);
        *entry = (*entry).max(dot.counter);
    }

    /// Issues the next dot of `actor` and records it.
    pub fn increment(&mut self, actor: Actor) -> Dot {
        let entry = self.0.entry(actor).or_insert(0);
        *entry += 1;
        Dot {
            actor,
            counter: *entry,
        }
    }

    /// The entries in actor order.
    pub fn iter(&self) -> impl Iterator<Item = (&Actor, &u64)> {
        self.0.iter()
    }

    /// Number of actors with an entry.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the vector covers nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::id::NodeId;
    use proptest::prelude::*;

    pub(crate) fn actor(node: u64) -> Actor {
        Actor {
            node: NodeId(node),
            epoch: 0,
        }
    }

    pub(crate) fn arbitrary_vector() -> impl Strategy<Value = VersionVector> {
        proptest::collection::btree_map((0u64..4, 0u32..2), 1u64..6, 0..4).prop_map(|entries| {
            VersionVector(
                entries
                    .into_iter()
                    .map(|((node, epoch), counter)| {
                        (
                            Actor {
                                node: NodeId(node),
                                epoch,
                            },
                            counter,
                        )
                    })
                    .collect(),
            )
        })
    }

    #[test]
    fn increment_issues_consecutive_dots_that_are_then_covered() {
        let mut vector = VersionVector::new();
        let first = vector.increment(actor(1));
        let second = vector.increment(actor(1));
        assert_eq!(first.counter, 1);
        assert_eq!(second.counter, 2);
        assert!(vector.covers(&first) && vector.covers(&second));
        assert!(!vector.covers(&Dot {
            actor: actor(1),
            counter: 3
        }));
        assert!(!vector.covers(&Dot {
            actor: actor(2),
            counter: 1
        }));
    }

    #[test]
    fn a_new_epoch_is_a_different_actor() {
        let mut vector = VersionVector::new();
        vector.increment(actor(1));
        let reborn = Actor {
            node: NodeId(1),
            epoch: 1,
        };
        assert!(!vector.covers(&Dot {
            actor: reborn,
            counter: 1
        }));
    }

    proptest! {
        #[test]
        fn join_is_commutative_associative_and_idempotent(a in arbitrary_vector(), b in arbitrary_vector(), c in arbitrary_vector()) {
            let mut ab = a.clone();
            ab.join(&b);
            let mut ba = b.clone();
            ba.join(&a);
            prop_assert_eq!(&ab, &ba);

            let mut ab_c = ab.clone();
            ab_c.join(&c);
            let mut bc = b.clone();
            bc.join(&c);
            let mut a_bc = a.clone();
            a_bc.join(&bc);
            prop_assert_eq!(&ab_c, &a_bc);

            let mut aa = a.clone();
            aa.join(&a);
            prop_assert_eq!(&aa, &a);
        }

        #[test]
        fn join_is_the_least_upper_bound(a in arbitrary_vector(), b in arbitrary_vector()) {
            let mut joined = a.clone();
            joined.join(&b);
            prop_assert!(joined.descends(&a));
            prop_assert!(joined.descends(&b));
            prop_assert_eq!(a.descends(&b), { let mut x = a.clone(); x.join(&b); x == a });
        }
    }
}
