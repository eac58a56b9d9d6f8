//! The piggyback queue of infection-style dissemination (SWIM §4.1).
//!
//! Each pending update is piggybacked on outgoing messages until it has been
//! sent `limit = λ·⌈log10(n+1)⌉` times; the updates sent fewest times go first,
//! and among those the newest. The queue holds at most one update per member:
//! a newer update about a member supersedes the queued one (and restarts its
//! count). Invariants: `order` and `entries` index the same set; the queue never
//! holds more than `capacity` entries (when full, the most-sent entry is dropped
//! and counted).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use super::wire::{MemberState, Update};

#[derive(Debug)]
struct Entry {
    update: Update,
    transmits: u32,
    sequence: u64,
}

/// Verdicts (alive, dead, left) go before suspicions at equal transmits: under a
/// burst of failures the suspicions and their confirmations are many, and must
/// not starve the final word.
fn class(update: &Update) -> u8 {
    match update.state {
        MemberState::Suspect => 1,
        MemberState::Alive | MemberState::Dead | MemberState::Left => 0,
    }
}

/// Pending updates, ordered by (transmits ascending, verdicts before suspicions,
/// newest first).
#[derive(Debug)]
pub struct BroadcastQueue {
    order: BTreeMap<(u32, u8, Reverse<u64>), u64>,
    entries: HashMap<u64, Entry>,
    next_sequence: u64,
    capacity: usize,
    dropped: u64,
}

impl BroadcastQueue {
    /// An empty queue holding at most `capacity` updates.
    pub fn new(capacity: usize) -> BroadcastQueue {
        BroadcastQueue {
            order: BTreeMap::new(),
            entries: HashMap::new(),
            next_sequence: 0,
            capacity: capacity.max(1),
            dropped: 0,
        }
    }

    /// Queues `update`, replacing any queued update about the same member.
    pub fn push(&mut self, update: Update) {
        let node = update.node;
        if let Some(old) = self.entries.remove(&node) {
            self.order
                .remove(&(old.transmits, class(&old.update), Reverse(old.sequence)));
        } else if self.entries.len() >= self.capacity {
            // Drop the update that has already been sent the most.
            if let Some((&key, &victim)) = self.order.iter().next_back() {
                self.order.remove(&key);
                self.entries.remove(&victim);
                self.dropped += 1;
            }
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.order
            .insert((0, class(&update), Reverse(sequence)), node);
        self.entries.insert(
            node,
            Entry {
                update,
                transmits: 0,
                sequence,
            },
        );
    }

    /// Offers queued updates in priority order to `accept` (which returns false
    /// once the datagram is full), skipping `skip`; counts a transmit for each
    /// accepted one and retires those sent `limit` times.
    pub fn take(&mut self, limit: u32, skip: Option<u64>, mut accept: impl FnMut(&Update) -> bool) {
        let mut sent: Vec<(u32, u8, Reverse<u64>)> = Vec::new();
        for (key, node) in self.order.iter() {
            if Some(*node) == skip {
                continue;
            }
            let Some(entry) = self.entries.get(node) else {
                continue;
            };
            if !accept(&entry.update) {
                break;
            }
            sent.push(*key);
        }
        for key in sent {
            let Some(node) = self.order.remove(&key) else {
                continue;
            };
            let Some(entry) = self.entries.get_mut(&node) else {
                continue;
            };
            entry.transmits += 1;
            if entry.transmits >= limit {
                self.entries.remove(&node);
            } else {
                self.order.insert(
                    (
                        entry.transmits,
                        class(&entry.update),
                        Reverse(entry.sequence),
                    ),
                    node,
                );
            }
        }
    }

    /// The queued update about `node`, if any.
    pub fn get(&self, node: u64) -> Option<&Update> {
        self.entries.get(&node).map(|entry| &entry.update)
    }

    /// Pending updates.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Updates dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::wire::MemberState;

    fn update(node: u64, incarnation: u64) -> Update {
        Update {
            node,
            generation: 1,
            incarnation,
            state: MemberState::Alive,
            address: "10.0.0.1:7000".parse().expect("literal address"),
            from: node,
        }
    }

    fn drain_once(queue: &mut BroadcastQueue, limit: u32, room: usize) -> Vec<u64> {
        let mut taken = Vec::new();
        queue.take(limit, None, |u| {
            if taken.len() == room {
                return false;
            }
            taken.push(u.node);
            true
        });
        taken
    }

    #[test]
    fn fewest_transmits_go_first_then_newest() {
        let mut queue = BroadcastQueue::new(16);
        queue.push(update(1, 0));
        queue.push(update(2, 0));
        assert_eq!(drain_once(&mut queue, 10, 1), vec![2]);
        assert_eq!(drain_once(&mut queue, 10, 1), vec![1]);
        queue.push(update(3, 0));
        assert_eq!(drain_once(&mut queue, 10, 3), vec![3, 2, 1]);
    }

    #[test]
    fn update_retires_after_limit_transmits() {
        let mut queue = BroadcastQueue::new(16);
        queue.push(update(7, 0));
        for _ in 0..3 {
            assert_eq!(drain_once(&mut queue, 3, 8), vec![7]);
        }
        assert!(queue.is_empty());
        assert!(drain_once(&mut queue, 3, 8).is_empty());
    }

    #[test]
    fn newer_update_supersedes_queued_one_and_resets_its_count() {
        let mut queue = BroadcastQueue::new(16);
        queue.push(update(7, 0));
        drain_once(&mut queue, 3, 8);
        drain_once(&mut queue, 3, 8);
        queue.push(update(7, 1));
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.get(7).map(|u| u.incarnation), Some(1));
        for _ in 0..3 {
            assert_eq!(drain_once(&mut queue, 3, 8), vec![7]);
        }
        assert!(queue.is_empty());
    }

    #[test]
    fn full_queue_drops_the_most_sent_update() {
        let mut queue = BroadcastQueue::new(2);
        queue.push(update(1, 0));
        drain_once(&mut queue, 10, 1);
        queue.push(update(2, 0));
        queue.push(update(3, 0));
        assert_eq!(queue.len(), 2);
        assert!(queue.get(1).is_none());
        assert_eq!(queue.dropped(), 1);
    }
}
