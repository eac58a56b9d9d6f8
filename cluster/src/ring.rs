//! The ring: the cluster's members, their ownership state, and the recorded
//! assignment of partitions to members — a small state-based CRDT carried in
//! gossip (design.md §4).
//!
//! Members map to a [`MemberEntry`] whose `version` grows with every change
//! made to it; merging keeps, for each member, the entry with the highest
//! `(version, state, address)`, so merge is commutative, associative and
//! idempotent (property-tested below). [`MemberState::Removed`] is a
//! tombstone: a removed id never owns data again.
//!
//! The recorded assignment is a last-writer-wins register ordered by its
//! version and then its content. It is only the *starting point* of
//! placement: [`crate::placement::Placement`] derives the actual table from it
//! and the current owners with a deterministic, minimal-movement claim, so
//! placement stays a pure function of the ring even while concurrent changes
//! are merged. Whoever changes membership records the new table
//! ([`Ring::record_assignment`]) so the next change moves only what it must.
//!
//! Liveness (alive, suspect, dead) is never part of the ring: a node that is
//! down keeps its partitions; sloppy quorums and hinted handoff cover it.

use crate::id::NodeId;
use std::collections::BTreeMap;

/// A member's ownership state. Ordered so merges can break ties.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum MemberState {
    /// Known, receiving data moves, not yet owning partitions.
    Joining,
    /// Owns partitions.
    Active,
    /// Still owns partitions while it hands them off.
    Leaving,
    /// Gone for good; the id never owns data again.
    Removed,
}

impl MemberState {
    /// True when a member in this state owns partitions.
    pub fn owns_data(self) -> bool {
        matches!(self, MemberState::Active | MemberState::Leaving)
    }
}

/// What the ring records about one member.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MemberEntry {
    /// Where the member listens (`host:port`).
    pub address: String,
    /// Its ownership state.
    pub state: MemberState,
    /// Grows by one with every change to this entry.
    pub version: u64,
}

impl MemberEntry {
    fn merge_key(&self) -> (u64, MemberState, &str) {
        (self.version, self.state, &self.address)
    }
}

/// A recorded table of primaries per partition, the base of the next claim.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Assignment {
    /// Grows by one with every recorded table.
    pub version: u64,
    /// The partition count the table was made for.
    pub partition_count: u32,
    /// The replication factor the table was made for.
    pub replication_factor: u32,
    /// For each partition, its primaries in order: the committed table,
    /// which reads and writes use until a move of the partition completes.
    pub primaries: Vec<Vec<NodeId>>,
    /// The owners the next table is claimed for (active and joining
    /// members when this assignment was recorded). When the claim over them
    /// differs from `primaries`, data is moving (see [`crate::transition`]).
    pub target_owners: Vec<NodeId>,
}

/// Why ring bytes could not be decoded. Nothing was built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingDecodeError {
    /// Longer than the limit.
    #[error("ring of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Not a well-formed ring.
    #[error("malformed ring: {0}")]
    Malformed(String),
}

/// Largest encoded ring accepted from a peer.
pub const RING_ENCODED_SIZE_MAX_BYTES: usize = 1 << 20;

/// The members and their states; see the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Ring {
    members: BTreeMap<NodeId, MemberEntry>,
    assignment: Option<Assignment>,
    /// Moves finished under an assignment: `(version, assignment digest,
    /// partition, new owner)` — the digest tells apart two assignments
    /// recorded concurrently with one version. A grow-only set, pruned below
    /// the assignment's version.
    completed: std::collections::BTreeSet<(u64, u64, u32, NodeId)>,
    /// How far each member has followed the moves: `2·version` once it knows
    /// of the assignment `version`, `2·version + 1` once it also knows every
    /// move of it completed. Merged by maximum.
    seen: BTreeMap<NodeId, u64>,
    /// The highest assignment version under which each member, with nothing
    /// moving, held no data of partitions it was not a primary of (its
    /// copies of partitions that moved away were deleted). Tombstones are
    /// reaped only once every member has cleared the current version, so no
    /// stale copy can bring a reaped key back. Merged by maximum.
    cleared: BTreeMap<NodeId, u64>,
}

/// Raises `node`'s entry of a map merged by maximum; true if it grew.
fn raise(marks: &mut BTreeMap<NodeId, u64>, node: NodeId, value: u64) -> bool {
    let entry = marks.entry(node).or_insert(0);
    if *entry >= value {
        return false;
    }
    *entry = value;
    true
}

/// The ring as encoded before `cleared` existed: still read, so that a
/// ring persisted or gossiped by an earlier build is not lost.
#[derive(serde::Deserialize)]
struct RingWithoutCleared {
    members: BTreeMap<NodeId, MemberEntry>,
    assignment: Option<Assignment>,
    completed: std::collections::BTreeSet<(u64, u64, u32, NodeId)>,
    seen: BTreeMap<NodeId, u64>,
}

impl Ring {
    /// An empty ring.
    pub fn new() -> Ring {
        Ring::default()
    }

    /// Adds (or re-activates) a member that owns data at once — a founding member.
    /// Returns false if the id was removed (it can never come back).
    pub fn add_member(&mut self, node: NodeId, address: String) -> bool {
        self.change(node, address, MemberState::Active)
    }

    /// Adds a member in the joining state (it owns nothing until made active).
    pub fn join_member(&mut self, node: NodeId, address: String) -> bool {
        self.change(node, address, MemberState::Joining)
    }

    /// Moves a known member to `state`. Returns false for unknown or removed
    /// members, and when the member is already in that state.
    pub fn set_state(&mut self, node: NodeId, state: MemberState) -> bool {
        let Some(entry) = self.members.get(&node) else {
            return false;
        };
        if entry.state == state {
            return false;
        }
        let address = entry.address.clone();
        self.change(node, address, state)
    }

    fn change(&mut self, node: NodeId, address: String, state: MemberState) -> bool {
        let version = match self.members.get(&node) {
            Some(entry) if entry.state == MemberState::Removed => return false,
            Some(entry) => entry.version + 1,
            None => 1,
        };
        self.members.insert(
            node,
            MemberEntry {
                address,
                state,
                version,
            },
        );
        true
    }

    /// The entry of one member.
    pub fn get(&self, node: NodeId) -> Option<&MemberEntry> {
        self.members.get(&node)
    }

    /// Every member ever known (removed ones included), in id order.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, &MemberEntry)> {
        self.members.iter().map(|(node, entry)| (*node, entry))
    }

    /// The members that own data (active or leaving), in id order.
    pub fn owners(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, entry)| entry.state.owns_data())
            .map(|(node, _)| *node)
    }

    /// The recorded assignment, if any.
    pub fn assignment(&self) -> Option<&Assignment> {
        self.assignment.as_ref()
    }

    /// The recorded assignment's version (0 without one).
    pub fn assignment_version(&self) -> u64 {
        self.assignment
            .as_ref()
            .map_or(0, |assignment| assignment.version)
    }

    /// Records `primaries` as the committed table, to be claimed anew over
    /// `target_owners`, under the next assignment version.
    pub fn record_assignment(
        &mut self,
        partition_count: u32,
        replication_factor: usize,
        primaries: Vec<Vec<NodeId>>,
        target_owners: Vec<NodeId>,
    ) {
        let version = self.assignment_version() + 1;
        self.assignment = Some(Assignment {
            version,
            partition_count,
            replication_factor: replication_factor as u32,
            primaries,
            target_owners,
        });
        self.prune_completed();
    }

    /// The recorded assignment's version and digest (zeros without one):
    /// what a finished move is recorded under.
    pub fn assignment_id(&self) -> (u64, u64) {
        self.assignment.as_ref().map_or((0, 0), |assignment| {
            let bytes = postcard::to_allocvec(assignment)
                .expect("serializing plain data into a Vec cannot fail");
            (assignment.version, xxhash_rust::xxh3::xxh3_64(&bytes))
        })
    }

    /// Notes that `node` has taken over `partition` under the assignment `id`.
    pub fn complete_move(&mut self, id: (u64, u64), partition: u32, node: NodeId) -> bool {
        id.0 >= self.assignment_version() && self.completed.insert((id.0, id.1, partition, node))
    }

    /// Whether `node` has taken over `partition` under the assignment `id`.
    pub fn move_completed(&self, id: (u64, u64), partition: u32, node: NodeId) -> bool {
        self.completed.contains(&(id.0, id.1, partition, node))
    }

    /// How far `node` has followed the moves (see the field).
    pub fn seen(&self, node: NodeId) -> u64 {
        self.seen.get(&node).copied().unwrap_or(0)
    }

    /// Raises `node`'s progress mark; returns true if it grew.
    pub fn set_seen(&mut self, node: NodeId, mark: u64) -> bool {
        raise(&mut self.seen, node, mark)
    }

    /// The highest assignment version `node` has cleared (see the field).
    pub fn cleared(&self, node: NodeId) -> u64 {
        self.cleared.get(&node).copied().unwrap_or(0)
    }

    /// Raises `node`'s cleared version; returns true if it grew.
    pub fn set_cleared(&mut self, node: NodeId, version: u64) -> bool {
        raise(&mut self.cleared, node, version)
    }

    /// Whether every member not removed has cleared the current assignment
    /// version: no member holds a copy of a partition it does not own.
    pub fn everyone_cleared(&self) -> bool {
        let version = self.assignment_version();
        self.members
            .iter()
            .filter(|(_, entry)| entry.state != MemberState::Removed)
            .all(|(node, _)| self.cleared(*node) >= version)
    }

    fn prune_completed(&mut self) {
        let version = self.assignment_version();
        self.completed.retain(|(at, _, _, _)| *at >= version);
    }

    /// Merges another ring into this one; returns true if this ring changed.
    pub fn merge(&mut self, other: &Ring) -> bool {
        let mut changed = false;
        for (node, theirs) in &other.members {
            match self.members.get(node) {
                Some(ours) if ours.merge_key() >= theirs.merge_key() => {}
                _ => {
                    self.members.insert(*node, theirs.clone());
                    changed = true;
                }
            }
        }
        if other.assignment > self.assignment {
            self.assignment = other.assignment.clone();
            changed = true;
        }
        let version = self.assignment_version();
        for completed in &other.completed {
            if completed.0 >= version && self.completed.insert(*completed) {
                changed = true;
            }
        }
        self.prune_completed();
        for (node, mark) in &other.seen {
            changed |= self.set_seen(*node, *mark);
        }
        for (node, version) in &other.cleared {
            changed |= self.set_cleared(*node, *version);
        }
        changed
    }

    /// A number that grows with every change made anywhere (the sum of entry
    /// versions and the assignment version). Equal versions with different
    /// content are possible after concurrent changes; compare [`Ring::digest`].
    pub fn version(&self) -> u64 {
        self.members
            .values()
            .map(|entry| entry.version)
            .sum::<u64>()
            + self
                .assignment
                .as_ref()
                .map_or(0, |assignment| assignment.version)
    }

    /// A hash of the whole content: equal digests mean (with overwhelming
    /// probability) equal rings.
    pub fn digest(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.encode())
    }

    /// The gossip encoding (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("serializing plain data into a Vec cannot fail")
    }

    /// Decodes a ring received from a peer, never panicking.
    pub fn decode(bytes: &[u8]) -> Result<Ring, RingDecodeError> {
        if bytes.len() > RING_ENCODED_SIZE_MAX_BYTES {
            return Err(RingDecodeError::TooLarge(bytes.len()));
        }
        match postcard::from_bytes(bytes) {
            Ok(ring) => Ok(ring),
            Err(error) => match postcard::from_bytes::<RingWithoutCleared>(bytes) {
                Ok(earlier) => Ok(Ring {
                    members: earlier.members,
                    assignment: earlier.assignment,
                    completed: earlier.completed,
                    seen: earlier.seen,
                    cleared: BTreeMap::new(),
                }),
                Err(_) => Err(RingDecodeError::Malformed(error.to_string())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Change {
        Add(u64),
        Join(u64),
        State(u64, MemberState),
        Seen(u64, u64),
        Cleared(u64, u64),
        Complete(u64, u32, u64),
    }

    fn change() -> impl Strategy<Value = Change> {
        let state = prop_oneof![
            Just(MemberState::Joining),
            Just(MemberState::Active),
            Just(MemberState::Leaving),
            Just(MemberState::Removed),
        ];
        prop_oneof![
            (0u64..5).prop_map(Change::Add),
            (0u64..5).prop_map(Change::Join),
            ((0u64..5), state).prop_map(|(node, state)| Change::State(node, state)),
            ((0u64..5), (0u64..6)).prop_map(|(node, mark)| Change::Seen(node, mark)),
            ((0u64..5), (0u64..4)).prop_map(|(node, version)| Change::Cleared(node, version)),
            ((0u64..3), (0u32..4), (0u64..5))
                .prop_map(|(version, partition, node)| Change::Complete(version, partition, node)),
        ]
    }

    fn apply(ring: &mut Ring, change: &Change, replica: usize) {
        match change {
            Change::Add(node) => ring.add_member(NodeId(*node), format!("r{replica}")),
            Change::Join(node) => ring.join_member(NodeId(*node), format!("r{replica}")),
            Change::State(node, state) => ring.set_state(NodeId(*node), *state),
            Change::Seen(node, mark) => ring.set_seen(NodeId(*node), *mark),
            Change::Cleared(node, version) => ring.set_cleared(NodeId(*node), *version),
            Change::Complete(version, partition, node) => {
                ring.complete_move((*version, *version % 2), *partition, NodeId(*node))
            }
        };
    }

    /// Three replicas of the ring each apply their own changes, with merges between.
    fn replicas(changes: &[(usize, Change, Option<usize>)]) -> Vec<Ring> {
        let mut rings = vec![Ring::new(); 3];
        for (replica, change, merge_from) in changes {
            apply(&mut rings[*replica], change, *replica);
            if let Some(from) = merge_from {
                let source = rings[*from].clone();
                rings[*replica].merge(&source);
            }
        }
        rings
    }

    fn history() -> impl Strategy<Value = Vec<(usize, Change, Option<usize>)>> {
        proptest::collection::vec(
            (0..3usize, change(), proptest::option::of(0..3usize)),
            0..25,
        )
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_and_idempotent(changes in history()) {
            let rings = replicas(&changes);
            let (a, b, c) = (&rings[0], &rings[1], &rings[2]);
            let mut ab = a.clone();
            ab.merge(b);
            let mut ba = b.clone();
            ba.merge(a);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone();
            ab_c.merge(c);
            let mut bc = b.clone();
            bc.merge(c);
            let mut a_bc = a.clone();
            a_bc.merge(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            let mut aa = a.clone();
            prop_assert!(!aa.merge(a));
            prop_assert_eq!(&aa, a);
        }

        #[test]
        fn encoding_round_trips_and_garbage_is_an_error(changes in history(), garbage in proptest::collection::vec(any::<u8>(), 0..64)) {
            let rings = replicas(&changes);
            prop_assert_eq!(&Ring::decode(&rings[0].encode()).unwrap(), &rings[0]);
            let _ = Ring::decode(&garbage);
        }
    }

    #[test]
    fn a_ring_encoded_before_cleared_marks_existed_is_still_read() {
        #[derive(serde::Serialize)]
        struct Earlier<'a> {
            members: &'a BTreeMap<NodeId, MemberEntry>,
            assignment: &'a Option<Assignment>,
            completed: &'a std::collections::BTreeSet<(u64, u64, u32, NodeId)>,
            seen: &'a BTreeMap<NodeId, u64>,
        }
        let mut ring = Ring::new();
        ring.add_member(NodeId(1), "a".into());
        ring.join_member(NodeId(2), "b".into());
        ring.record_assignment(4, 1, vec![vec![NodeId(1)]; 4], vec![NodeId(1), NodeId(2)]);
        ring.set_seen(NodeId(1), 3);
        let earlier = postcard::to_allocvec(&Earlier {
            members: &ring.members,
            assignment: &ring.assignment,
            completed: &ring.completed,
            seen: &ring.seen,
        })
        .unwrap();
        assert_eq!(Ring::decode(&earlier).unwrap(), ring);
        // And the current encoding keeps the marks.
        ring.set_cleared(NodeId(2), 1);
        assert_eq!(Ring::decode(&ring.encode()).unwrap().cleared(NodeId(2)), 1);
    }

    #[test]
    fn reaping_waits_for_every_member_not_removed_to_clear_the_current_version() {
        let mut ring = Ring::new();
        ring.add_member(NodeId(1), "a".into());
        ring.add_member(NodeId(2), "b".into());
        // No assignment: nothing ever moved, nothing to clear.
        assert!(ring.everyone_cleared());
        ring.record_assignment(4, 1, vec![vec![NodeId(1)]; 4], vec![NodeId(1), NodeId(2)]);
        assert!(!ring.everyone_cleared());
        ring.set_cleared(NodeId(1), 1);
        assert!(!ring.everyone_cleared());
        let mut other = Ring::new();
        other.set_cleared(NodeId(2), 1);
        assert!(ring.merge(&other));
        assert!(ring.everyone_cleared());
        // A newer version needs a newer mark, except from removed members.
        ring.record_assignment(4, 1, vec![vec![NodeId(1)]; 4], vec![NodeId(1)]);
        ring.set_cleared(NodeId(1), 2);
        assert!(!ring.everyone_cleared());
        ring.set_state(NodeId(2), MemberState::Removed);
        assert!(ring.everyone_cleared());
        // Marks only grow.
        assert!(!ring.set_cleared(NodeId(1), 1));
        assert_eq!(ring.cleared(NodeId(1)), 2);
    }

    #[test]
    fn a_removed_member_never_comes_back() {
        let mut ring = Ring::new();
        ring.add_member(NodeId(1), "a".into());
        assert!(ring.set_state(NodeId(1), MemberState::Removed));
        assert!(!ring.add_member(NodeId(1), "a".into()));
        assert_eq!(ring.owners().count(), 0);
    }

    #[test]
    fn only_active_and_leaving_members_own_data() {
        let mut ring = Ring::new();
        ring.add_member(NodeId(1), "a".into());
        ring.join_member(NodeId(2), "b".into());
        ring.add_member(NodeId(3), "c".into());
        ring.set_state(NodeId(3), MemberState::Leaving);
        assert_eq!(
            ring.owners().collect::<Vec<_>>(),
            vec![NodeId(1), NodeId(3)]
        );
    }

    #[test]
    fn version_grows_with_every_change() {
        let mut ring = Ring::new();
        let before = ring.version();
        ring.add_member(NodeId(1), "a".into());
        let after_add = ring.version();
        ring.set_state(NodeId(1), MemberState::Leaving);
        assert!(before < after_add && after_add < ring.version());
    }

    #[test]
    fn oversized_ring_bytes_are_refused() {
        let bytes = vec![0u8; RING_ENCODED_SIZE_MAX_BYTES + 1];
        assert!(matches!(
            Ring::decode(&bytes),
            Err(RingDecodeError::TooLarge(_))
        ));
    }
}
