//! Ownership changes: how a join, leave or remove moves partitions safely
//! (design.md §4; Dynamo §4.9; the pending ranges of Cassandra and the
//! layout versions of Garage).
//!
//! The ring's assignment holds the *committed* table of primaries and the
//! owners the next table is claimed for (`target_owners`). The *target*
//! table is the minimal-movement claim over those owners starting from the
//! committed one, so both are pure functions of the ring. Where a
//! partition's primaries differ between the two, each new owner pulls the
//! partition from every committed primary still in the ring, and notes in
//! the ring when it has all of it. Meanwhile:
//! - writes go to the committed *and* the target primaries, and are
//!   acknowledged only once `w` of each group stored them;
//! - reads use the committed primaries until every new owner of the
//!   partition has finished, then the target ones.
//!
//! Two barriers make this safe against nodes that have not heard of the
//! change yet; each member records its progress in the ring
//! ([`crate::ring::Ring::seen`]):
//! - a pull starts only once every member of the partition's two groups
//!   knows the assignment (so every write coordinated after the pull's start
//!   reaches the new owner too);
//! - the target table becomes the committed one (joining members become
//!   active, leaving ones removed) only once every member knows that every
//!   move finished (so nobody still reads from the old table).
//!
//! Who records what ([`ring_step`], run by every node on every ring it
//! learns): any node that sees the members' states differ from the recorded
//! `target_owners` records a new assignment version; every node raises its
//! own progress mark; any node that sees both barriers passed commits. Every
//! such step is a deterministic function of the merged ring, so nodes doing
//! it concurrently write the same thing.

use std::collections::BTreeSet;

use crate::id::{NodeId, Partition};
use crate::placement::Placement;
use crate::ring::{MemberState, Ring};

/// One partition's new owner and where it pulls from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The partition.
    pub partition: Partition,
    /// The new owner.
    pub to: NodeId,
    /// The committed primaries it pulls from (members still in the ring).
    pub sources: Vec<NodeId>,
    /// Whether the new owner has recorded that it has everything.
    pub done: bool,
    /// Whether every member of both groups knows the assignment.
    pub ready: bool,
}

/// The committed, target and effective placements of a ring.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The assignment's version and digest.
    id: (u64, u64),
    current: Placement,
    target: Placement,
    effective: Placement,
    moves: Vec<Move>,
    /// Partitions whose primaries change.
    moving: BTreeSet<Partition>,
}

fn is_removed(ring: &Ring, node: NodeId) -> bool {
    ring.get(node)
        .is_none_or(|entry| entry.state == MemberState::Removed)
}

/// Members that will own data once the moves under way are done.
pub fn desired_owners(ring: &Ring) -> Vec<NodeId> {
    ring.members()
        .filter(|(_, entry)| matches!(entry.state, MemberState::Active | MemberState::Joining))
        .map(|(node, _)| node)
        .collect()
}

impl Layout {
    /// The layout of `ring` for `partition_count` partitions and
    /// `replication_factor` replicas.
    pub fn new(ring: &Ring, partition_count: u32, replication_factor: usize) -> Layout {
        let assignment = ring.assignment().filter(|assignment| {
            assignment.partition_count == partition_count
                && assignment.replication_factor as usize == replication_factor
                && assignment.primaries.len() == partition_count as usize
        });
        let owners: Vec<NodeId> = ring.owners().collect();
        let Some(assignment) = assignment else {
            // Founding members only: the claim over them, nothing moving.
            let placement = Placement::claimed(None, &owners, partition_count, replication_factor);
            return Layout {
                id: ring.assignment_id(),
                current: placement.clone(),
                target: placement.clone(),
                effective: placement,
                moves: Vec::new(),
                moving: BTreeSet::new(),
            };
        };
        let version = assignment.version;
        let id = ring.assignment_id();
        let committed: Vec<Vec<NodeId>> = assignment
            .primaries
            .iter()
            .map(|list| {
                list.iter()
                    .copied()
                    .filter(|node| !is_removed(ring, *node))
                    .collect()
            })
            .collect();
        let target_owners: Vec<NodeId> = assignment
            .target_owners
            .iter()
            .copied()
            .filter(|node| !is_removed(ring, *node))
            .collect();
        let mut everyone = owners.clone();
        everyone.extend(target_owners.iter().copied());
        everyone.sort();
        everyone.dedup();
        let current = Placement::from_table(
            committed.clone(),
            &owners,
            partition_count,
            replication_factor,
        );
        let target = Placement::claimed(
            Some(&committed),
            &target_owners,
            partition_count,
            replication_factor,
        );
        let mut moves = Vec::new();
        let mut moving = BTreeSet::new();
        let mut effective_table = Vec::with_capacity(partition_count as usize);
        for index in 0..partition_count {
            let partition = Partition(index);
            let old = current.primaries(partition);
            let new = target.primaries(partition);
            let same = old.len() == new.len() && old.iter().all(|node| new.contains(node));
            if same {
                effective_table.push(old.to_vec());
                continue;
            }
            moving.insert(partition);
            let ready = old
                .iter()
                .chain(new)
                .all(|node| ring.seen(*node) >= 2 * version);
            for to in new.iter().copied().filter(|node| !old.contains(node)) {
                let done = ring.move_completed(id, index, to);
                moves.push(Move {
                    partition,
                    to,
                    sources: old.to_vec(),
                    done,
                    ready,
                });
            }
            effective_table.push(old.to_vec());
        }
        // Reads switch to the target table all at once, when every move is
        // done; until the commit, writes still reach both tables.
        if moves.iter().all(|item| item.done) {
            effective_table = target.primary_table();
        }
        let effective = Placement::from_table(
            effective_table,
            &everyone,
            partition_count,
            replication_factor,
        );
        Layout {
            id,
            current,
            target,
            effective,
            moves,
            moving,
        }
    }

    /// The assignment version the moves belong to.
    pub fn version(&self) -> u64 {
        self.id.0
    }

    /// The assignment (version and digest) finished moves are recorded under.
    pub fn id(&self) -> (u64, u64) {
        self.id
    }

    /// The placement reads use, and the first group of every write.
    pub fn effective(&self) -> &Placement {
        &self.effective
    }

    /// The committed placement.
    pub fn current(&self) -> &Placement {
        &self.current
    }

    /// The placement every move leads to.
    pub fn target(&self) -> &Placement {
        &self.target
    }

    /// Every move of the assignment, done or not.
    pub fn moves(&self) -> &[Move] {
        &self.moves
    }

    /// Whether every move is done.
    pub fn all_done(&self) -> bool {
        self.moves.iter().all(|item| item.done)
    }

    /// The two groups a write to `partition` must reach `w` of, while the
    /// partition moves: the committed primaries and the target ones.
    pub fn write_groups(&self, partition: Partition) -> Option<(&[NodeId], &[NodeId])> {
        self.moving.contains(&partition).then(|| {
            (
                self.current.primaries(partition),
                self.target.primaries(partition),
            )
        })
    }
}

/// The next change this node should make to `ring`, if any (see the module
/// documentation); apply until it returns `None`.
pub fn ring_step(
    ring: &Ring,
    me: NodeId,
    partition_count: u32,
    replication_factor: usize,
) -> Option<Ring> {
    let desired = desired_owners(ring);
    let transitional = ring.members().any(|(_, entry)| {
        matches!(
            entry.state,
            MemberState::Joining | MemberState::Leaving | MemberState::Removed
        )
    });
    let matching = ring.assignment().filter(|assignment| {
        assignment.partition_count == partition_count
            && assignment.replication_factor as usize == replication_factor
            && assignment.primaries.len() == partition_count as usize
    });
    // 1. The members' states changed: record a new assignment version. Only
    //    an active member does, so that a node still learning the ring (a
    //    joining one) never records a table from a partial view.
    let active = ring
        .get(me)
        .is_some_and(|entry| entry.state == MemberState::Active);
    // This ring's layout, computed once for every step below.
    let layout = Layout::new(ring, partition_count, replication_factor);
    // A change waiting for its commit (every move done) is committed before
    // the next is recorded: nodes that know every move is done read from
    // the target table, which the next change's writes might not cover. A
    // removal (a dead member) does not wait, or a dead member could block
    // the commit forever.
    let commit_pending = matching.is_some_and(|assignment| {
        let removal = assignment
            .target_owners
            .iter()
            .any(|node| is_removed(ring, *node));
        !removal && !layout.moves().is_empty() && layout.all_done()
    });
    match matching {
        _ if !active || commit_pending => {}
        None if transitional => {
            // The founders' table, removed members included (their
            // partitions are pulled from the others, not silently reassigned).
            let holders: Vec<NodeId> = ring
                .members()
                .filter(|(_, entry)| entry.state != MemberState::Joining)
                .map(|(node, _)| node)
                .collect();
            let table = Placement::claimed(None, &holders, partition_count, replication_factor)
                .primary_table();
            let mut next = ring.clone();
            next.record_assignment(partition_count, replication_factor, table, desired);
            return Some(next);
        }
        None => return None,
        Some(assignment) if assignment.target_owners != desired => {
            let table = assignment.primaries.clone();
            let mut next = ring.clone();
            next.record_assignment(partition_count, replication_factor, table, desired);
            // A finished move stays finished where its new owner is still a
            // target of the partition: it has received every write since its
            // pull began (it never left the partition's write groups).
            let after = Layout::new(&next, partition_count, replication_factor);
            for item in layout.moves().iter().filter(|item| item.done) {
                if after.target().primaries(item.partition).contains(&item.to) {
                    next.complete_move(after.id(), item.partition.0, item.to);
                }
            }
            return Some(next);
        }
        Some(_) => {}
    }
    // Founders only (or a node that has not learnt the cluster yet):
    // nothing moves, nothing to commit.
    let assignment = matching?;
    let version = layout.version();
    // 2. This node's progress mark.
    let mark = 2 * version + u64::from(layout.all_done());
    if ring.seen(me) < mark {
        let mut next = ring.clone();
        next.set_seen(me, mark);
        return Some(next);
    }
    // 3. Commit once every member knows every move finished. Only what the
    //    assignment reflects is committed: a joining member it targets
    //    becomes active, a leaving member it no longer targets is removed
    //    (a change not yet recorded waits for the next version).
    let targeted: Vec<NodeId> = assignment
        .target_owners
        .iter()
        .copied()
        .filter(|node| !is_removed(ring, *node))
        .collect();
    let members: Vec<(NodeId, MemberState)> = ring
        .members()
        .map(|(node, entry)| (node, entry.state))
        .collect();
    let settles = |(node, state): &(NodeId, MemberState)| match state {
        MemberState::Joining => targeted.contains(node),
        MemberState::Leaving => !targeted.contains(node),
        MemberState::Active | MemberState::Removed => false,
    };
    let pending = !layout.moves().is_empty() || members.iter().any(settles);
    let everyone_knows = ring
        .members()
        .filter(|(_, entry)| entry.state != MemberState::Removed)
        .all(|(node, _)| ring.seen(node) > 2 * version);
    if pending && layout.all_done() && everyone_knows {
        let mut next = ring.clone();
        for (node, state) in members.iter().filter(|member| settles(member)) {
            let settled = if *state == MemberState::Joining {
                MemberState::Active
            } else {
                MemberState::Removed
            };
            next.set_state(*node, settled);
        }
        let owners = targeted;
        next.record_assignment(
            partition_count,
            replication_factor,
            layout.target().primary_table(),
            owners,
        );
        return Some(next);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARTITIONS: u32 = 16;
    const REPLICAS: usize = 3;

    fn founders(count: u64) -> Ring {
        let mut ring = Ring::new();
        for node in 1..=count {
            ring.add_member(NodeId(node), format!("n{node}"));
        }
        ring
    }

    /// Applies every node's steps until none has anything to change, as if
    /// gossip delivered every ring to every node; returns the steps taken.
    fn settle(ring: &mut Ring) -> usize {
        let mut steps = 0;
        loop {
            let nodes: Vec<NodeId> = ring
                .members()
                .filter(|(_, entry)| entry.state != MemberState::Removed)
                .map(|(node, _)| node)
                .collect();
            let mut changed = false;
            for node in nodes {
                while let Some(next) = ring_step(ring, node, PARTITIONS, REPLICAS) {
                    ring.merge(&next);
                    changed = true;
                    steps += 1;
                    assert!(steps < 1000, "ring steps do not settle");
                }
            }
            if !changed {
                return steps;
            }
        }
    }

    /// Marks every move of the current layout done, as the new owners would.
    fn finish_moves(ring: &mut Ring) -> usize {
        let layout = Layout::new(ring, PARTITIONS, REPLICAS);
        let mut count = 0;
        for item in layout.moves() {
            assert!(item.ready, "a move is not ready: {item:?}");
            count += usize::from(ring.complete_move(layout.id(), item.partition.0, item.to));
        }
        count
    }

    #[test]
    fn a_joining_node_alone_records_nothing() {
        let mut ring = Ring::new();
        ring.join_member(NodeId(9), "n9".into());
        while let Some(next) = ring_step(&ring, NodeId(9), PARTITIONS, REPLICAS) {
            ring.merge(&next);
        }
        assert!(ring.assignment().is_none());
    }

    #[test]
    fn founders_need_no_assignment_and_move_nothing() {
        let mut ring = founders(3);
        assert_eq!(settle(&mut ring), 0);
        assert!(ring.assignment().is_none());
        assert!(Layout::new(&ring, PARTITIONS, REPLICAS).moves().is_empty());
    }

    #[test]
    fn a_join_moves_partitions_only_after_their_moves_complete_then_commits() {
        let mut ring = founders(3);
        let before = Layout::new(&ring, PARTITIONS, REPLICAS).effective().clone();
        ring.join_member(NodeId(4), "n4".into());
        settle(&mut ring);
        let layout = Layout::new(&ring, PARTITIONS, REPLICAS);
        assert!(!layout.moves().is_empty());
        assert!(layout.moves().iter().all(|item| item.to == NodeId(4)));
        // Nothing has moved yet: reads use the old table, writes reach both.
        assert_eq!(layout.effective().primary_table(), before.primary_table());
        let moving = layout.moves()[0].partition;
        let (old, new) = layout.write_groups(moving).expect("a moving partition");
        assert!(!old.contains(&NodeId(4)) && new.contains(&NodeId(4)));
        // Joining until every move is done and known.
        assert_eq!(
            ring.get(NodeId(4)).map(|entry| entry.state),
            Some(MemberState::Joining)
        );
        assert!(finish_moves(&mut ring) > 0);
        settle(&mut ring);
        assert_eq!(
            ring.get(NodeId(4)).map(|entry| entry.state),
            Some(MemberState::Active)
        );
        let after = Layout::new(&ring, PARTITIONS, REPLICAS);
        assert!(after.moves().is_empty());
        assert_eq!(
            after.effective().primary_table(),
            layout.target().primary_table()
        );
        let load = after.effective().primary_load();
        assert_eq!(load.len(), 4);
        assert!(load.values().all(|count| (11..=13).contains(count)));
    }

    #[test]
    fn reads_switch_to_the_target_only_when_every_move_is_done() {
        let mut ring = founders(3);
        let before = Layout::new(&ring, PARTITIONS, REPLICAS).effective().clone();
        ring.join_member(NodeId(4), "n4".into());
        settle(&mut ring);
        let layout = Layout::new(&ring, PARTITIONS, REPLICAS);
        let first = layout.moves()[0].clone();
        ring.complete_move(layout.id(), first.partition.0, first.to);
        let next = Layout::new(&ring, PARTITIONS, REPLICAS);
        assert!(next.moves()[0].done);
        assert_eq!(next.effective().primary_table(), before.primary_table());
        // Not committed while moves are left.
        settle(&mut ring);
        assert_eq!(ring.assignment_version(), layout.version());
        finish_moves(&mut ring);
        let done = Layout::new(&ring, PARTITIONS, REPLICAS);
        assert_eq!(
            done.effective().primary_table(),
            layout.target().primary_table()
        );
    }

    #[test]
    fn a_change_waits_for_the_commit_of_a_finished_one() {
        let mut ring = founders(3);
        ring.join_member(NodeId(4), "n4".into());
        settle(&mut ring);
        finish_moves(&mut ring);
        let version = ring.assignment_version();
        ring.join_member(NodeId(5), "n5".into());
        // Node 1 alone cannot commit (the others have not seen the moves
        // done) and must not record the join before that commit.
        while let Some(next) = ring_step(&ring, NodeId(1), PARTITIONS, REPLICAS) {
            ring.merge(&next);
        }
        assert_eq!(ring.assignment_version(), version);
        settle(&mut ring);
        assert_eq!(
            ring.get(NodeId(4)).map(|entry| entry.state),
            Some(MemberState::Active)
        );
        let layout = Layout::new(&ring, PARTITIONS, REPLICAS);
        assert!(layout.version() >= version + 2);
        assert!(layout.moves().iter().any(|item| item.to == NodeId(5)));
        assert!(layout.moves().iter().all(|item| !item.done));
    }

    #[test]
    fn a_move_is_not_ready_until_every_member_of_both_groups_knows() {
        let mut ring = founders(3);
        ring.join_member(NodeId(4), "n4".into());
        // Only node 1 has taken its steps.
        while let Some(next) = ring_step(&ring, NodeId(1), PARTITIONS, REPLICAS) {
            ring.merge(&next);
        }
        let layout = Layout::new(&ring, PARTITIONS, REPLICAS);
        assert!(!layout.moves().is_empty());
        assert!(layout.moves().iter().all(|item| !item.ready));
        settle(&mut ring);
        let layout = Layout::new(&ring, PARTITIONS, REPLICAS);
        assert!(layout.moves().iter().all(|item| item.ready));
    }

    #[test]
    fn a_leaving_member_hands_everything_off_and_is_removed() {
        let mut ring = founders(4);
        ring.set_state(NodeId(2), MemberState::Leaving);
        settle(&mut ring);
        let layout = Layout::new(&ring, PARTITIONS, REPLICAS);
        assert!(!layout.moves().is_empty());
        assert!(
            layout
                .moves()
                .iter()
                .all(|item| item.sources.contains(&NodeId(2)) && item.to != NodeId(2))
        );
        finish_moves(&mut ring);
        settle(&mut ring);
        assert_eq!(
            ring.get(NodeId(2)).map(|entry| entry.state),
            Some(MemberState::Removed)
        );
        let after = Layout::new(&ring, PARTITIONS, REPLICAS);
        assert!(!after.effective().primary_load().contains_key(&NodeId(2)));
        assert!(after.moves().is_empty());
    }

    #[test]
    fn finished_moves_carry_over_to_the_next_version_where_still_targeted() {
        let mut ring = founders(3);
        ring.join_member(NodeId(4), "n4".into());
        settle(&mut ring);
        let first = Layout::new(&ring, PARTITIONS, REPLICAS);
        // Half of the moves finish.
        for item in first.moves().iter().step_by(2) {
            ring.complete_move(first.id(), item.partition.0, item.to);
        }
        let first = Layout::new(&ring, PARTITIONS, REPLICAS);
        // Node 5 joins before the first change commits.
        ring.join_member(NodeId(5), "n5".into());
        // Only node 1 steps, so the first version is not committed first.
        while let Some(next) = ring_step(&ring, NodeId(1), PARTITIONS, REPLICAS) {
            ring.merge(&next);
        }
        let layout = Layout::new(&ring, PARTITIONS, REPLICAS);
        assert!(layout.version() > first.version());
        let mut carried = 0;
        for item in layout.moves().iter().filter(|item| item.to == NodeId(4)) {
            // A move to node 4 that the first version had is finished; one
            // the new claim added is not.
            let had = first
                .moves()
                .iter()
                .any(|old| old.partition == item.partition && old.to == item.to && old.done);
            assert_eq!(item.done, had, "{item:?}");
            carried += usize::from(had);
        }
        assert!(carried > 0);
        assert!(
            layout
                .moves()
                .iter()
                .any(|item| item.to == NodeId(5) && !item.done)
        );
    }

    #[test]
    fn a_removed_member_is_not_a_source_and_its_partitions_still_move() {
        let mut ring = founders(4);
        ring.set_state(NodeId(3), MemberState::Removed);
        settle(&mut ring);
        let layout = Layout::new(&ring, PARTITIONS, REPLICAS);
        assert!(!layout.moves().is_empty());
        for item in layout.moves() {
            assert!(!item.sources.contains(&NodeId(3)));
            assert_eq!(item.sources.len(), REPLICAS - 1);
        }
        finish_moves(&mut ring);
        settle(&mut ring);
        let after = Layout::new(&ring, PARTITIONS, REPLICAS);
        assert!(after.moves().is_empty());
        for partition in 0..PARTITIONS {
            assert_eq!(after.effective().primaries(Partition(partition)).len(), 3);
        }
    }

    #[test]
    fn a_second_change_during_a_move_starts_a_new_version() {
        let mut ring = founders(3);
        ring.join_member(NodeId(4), "n4".into());
        settle(&mut ring);
        let first = Layout::new(&ring, PARTITIONS, REPLICAS).version();
        ring.join_member(NodeId(5), "n5".into());
        settle(&mut ring);
        let second = Layout::new(&ring, PARTITIONS, REPLICAS);
        assert!(second.version() > first);
        // Nothing finished yet, so nothing carried over.
        assert!(second.moves().iter().all(|item| !item.done));
        assert!(second.moves().iter().any(|item| item.to == NodeId(5)));
        finish_moves(&mut ring);
        settle(&mut ring);
        for node in [4, 5] {
            assert_eq!(
                ring.get(NodeId(node)).map(|entry| entry.state),
                Some(MemberState::Active)
            );
        }
        assert_eq!(
            Layout::new(&ring, PARTITIONS, REPLICAS)
                .effective()
                .primary_load()
                .len(),
            5
        );
    }
}
