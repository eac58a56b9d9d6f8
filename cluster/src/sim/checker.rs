//! What the simulated clients saw, and the invariants checked against it at
//! the end of a run (design.md §10 tier 2; Jepsen's set checker).
//!
//! - Set workload: every acknowledged add (under machine crashes: every add
//!   written with `durable`) is present in the final state of every primary.
//! - Strict registers: with `sloppy = false`, `durable` and `r + w > n`, a read
//!   that started after a write was acknowledged returns a context covering
//!   the write's dot.
//! - Convergence: after faults stop, hints drain and an `r = all` repair pass,
//!   all primaries of every key hold identical state.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::siblings::KeyState;
use crate::version_vector::{Dot, VersionVector};

/// Encodes a set of elements (sorted, distinct) as a value: big-endian u64s.
pub fn encode_set(elements: &[u64]) -> Bytes {
    let mut value = Vec::with_capacity(elements.len() * 8);
    for element in elements {
        value.extend_from_slice(&element.to_be_bytes());
    }
    Bytes::from(value)
}

/// Appends the elements of a value written by [`encode_set`] to `into`;
/// `None` if it is not such a value.
fn decode_set_into(value: &[u8], into: &mut Vec<u64>) -> Option<()> {
    if !value.len().is_multiple_of(8) {
        return None;
    }
    for chunk in value.chunks_exact(8) {
        into.push(u64::from_be_bytes(chunk.try_into().ok()?));
    }
    Some(())
}

/// Decodes a value written by [`encode_set`]; `None` if it is not one.
pub fn decode_set(value: &[u8]) -> Option<Vec<u64>> {
    let mut elements = Vec::with_capacity(value.len() / 8);
    decode_set_into(value, &mut elements)?;
    Some(elements)
}

/// The union of every sibling's set (the set workload's resolution), sorted
/// and distinct. (A sorted vector: this runs on every simulated read, and a
/// tree of thousands of elements dominated the simulator's profile.)
pub fn union_of<'a>(siblings: impl IntoIterator<Item = &'a Bytes>) -> Option<Vec<u64>> {
    let mut union = Vec::new();
    for sibling in siblings {
        decode_set_into(sibling, &mut union)?;
    }
    union.sort_unstable();
    union.dedup();
    Some(union)
}

/// An add the cluster acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckedAdd {
    /// Index of the set key.
    pub key: usize,
    /// The element added.
    pub element: u64,
    /// Whether it was written with `durable`.
    pub durable: bool,
}

/// A strict write the cluster acknowledged.
#[derive(Debug, Clone, Copy)]
pub struct StrictWrite {
    /// Index of the register key.
    pub key: usize,
    /// The write's dot.
    pub dot: Dot,
    /// When the client received the acknowledgement (virtual µs).
    pub acked_at: u64,
}

/// A strict read that succeeded.
#[derive(Debug, Clone)]
pub struct StrictRead {
    /// Index of the register key.
    pub key: usize,
    /// When the client sent it (virtual µs).
    pub started_at: u64,
    /// The context it returned.
    pub context: VersionVector,
}

/// Everything the clients observed.
#[derive(Debug, Default)]
pub struct History {
    /// Acknowledged adds.
    pub acked_adds: Vec<AckedAdd>,
    /// Adds whose outcome the client does not know (failed or timed out writes).
    pub indeterminate_adds: u64,
    /// Acknowledged strict register writes.
    pub strict_writes: Vec<StrictWrite>,
    /// Successful strict register reads.
    pub strict_reads: Vec<StrictRead>,
    /// Requests answered with an error.
    pub failed_requests: u64,
    /// Requests answered with success.
    pub succeeded_requests: u64,
}

/// Adds that should be present: all acknowledged ones, or only the durable
/// ones when machines may lose what was not synced.
pub fn expected_adds(history: &History, machine_crashes: bool) -> Vec<AckedAdd> {
    history
        .acked_adds
        .iter()
        .copied()
        .filter(|add| add.durable || !machine_crashes)
        .collect()
}

/// The expected adds missing from `final_sets` (set key → elements present).
pub fn missing_adds(
    expected: &[AckedAdd],
    final_sets: &BTreeMap<usize, BTreeSet<u64>>,
) -> Vec<AckedAdd> {
    expected
        .iter()
        .copied()
        .filter(|add| {
            !final_sets
                .get(&add.key)
                .is_some_and(|set| set.contains(&add.element))
        })
        .collect()
}

/// Strict reads that missed a write acknowledged before they started:
/// (read index, write index) pairs.
pub fn stale_strict_reads(history: &History) -> Vec<(usize, usize)> {
    let mut violations = Vec::new();
    for (read_index, read) in history.strict_reads.iter().enumerate() {
        for (write_index, write) in history.strict_writes.iter().enumerate() {
            if write.key == read.key
                && write.acked_at < read.started_at
                && !read.context.covers(&write.dot)
            {
                violations.push((read_index, write_index));
            }
        }
    }
    violations
}

/// Whether every state equals every other (each dominates or equals the next).
pub fn all_identical(states: &[KeyState]) -> bool {
    // A reaped tombstone and a tombstone not reaped yet say the same: gone.
    if states.iter().all(KeyState::is_deleted) {
        return true;
    }
    states
        .windows(2)
        .all(|pair| pair[0].dominates_or_equals(&pair[1]) && pair[1].dominates_or_equals(&pair[0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{Actor, NodeId};

    #[test]
    fn set_encoding_round_trips_and_rejects_ragged_values() {
        let set = vec![1, 5, u64::MAX];
        assert_eq!(decode_set(&encode_set(&set)), Some(set.clone()));
        let other = encode_set(&[2, 5]);
        assert_eq!(
            union_of([&encode_set(&set), &other]),
            Some(vec![1, 2, 5, u64::MAX])
        );
        assert_eq!(decode_set(b"abc"), None);
    }

    #[test]
    fn missing_add_is_reported_and_non_durable_ones_are_excused_under_machine_crashes() {
        let mut history = History::default();
        history.acked_adds.push(AckedAdd {
            key: 0,
            element: 1,
            durable: true,
        });
        history.acked_adds.push(AckedAdd {
            key: 0,
            element: 2,
            durable: false,
        });
        let final_sets = BTreeMap::from([(0, BTreeSet::from([1]))]);
        assert_eq!(
            missing_adds(&expected_adds(&history, true), &final_sets),
            vec![]
        );
        assert_eq!(
            missing_adds(&expected_adds(&history, false), &final_sets),
            vec![AckedAdd {
                key: 0,
                element: 2,
                durable: false
            }]
        );
    }

    #[test]
    fn strict_read_that_misses_an_earlier_acknowledged_write_is_reported() {
        let actor = Actor {
            node: NodeId(1),
            epoch: 1,
        };
        let mut seen = VersionVector::default();
        let first = seen.increment(actor);
        let mut history = History::default();
        history.strict_writes.push(StrictWrite {
            key: 0,
            dot: first,
            acked_at: 10,
        });
        history.strict_writes.push(StrictWrite {
            key: 0,
            dot: Dot { actor, counter: 2 },
            acked_at: 30,
        });
        history.strict_reads.push(StrictRead {
            key: 0,
            started_at: 20,
            context: seen.clone(),
        });
        history.strict_reads.push(StrictRead {
            key: 0,
            started_at: 40,
            context: seen,
        });
        assert_eq!(stale_strict_reads(&history), vec![(1, 1)]);
    }
}
