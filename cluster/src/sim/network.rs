//! The simulated network: every message between nodes passes through here and
//! may be dropped, delayed, duplicated, reordered or blocked by a partition,
//! all decided by a seeded PRNG (FoundationDB's and TigerBeetle's simulators).
//!
//! Invariants: with a given seed and the same sequence of calls, the same
//! fates are drawn; without the `reorder` fault, messages on one link arrive
//! in the order they were sent (a stream transport such as QUIC keeps it);
//! a partition blocks a direction of a link, so a one-way partition is one
//! blocked direction and a symmetric one both.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::id::NodeId;

/// The message faults of one run, drawn once per seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetworkFaults {
    /// Probability that a message is lost.
    pub drop_probability: f64,
    /// Probability that a message is delivered twice.
    pub duplicate_probability: f64,
    /// Longest extra delay of a message, in microseconds (0: none).
    pub delay_extra_max_micros: u64,
    /// Whether messages on one link may overtake each other.
    pub reorder: bool,
}

impl NetworkFaults {
    /// A reliable network: no loss, no duplicates, in-order links.
    pub fn none() -> NetworkFaults {
        NetworkFaults {
            drop_probability: 0.0,
            duplicate_probability: 0.0,
            delay_extra_max_micros: 0,
            reorder: false,
        }
    }
}

/// The fate of one sent message: when each copy arrives (empty: lost).
pub type Deliveries = Vec<u64>;

/// The network between the simulated nodes.
#[derive(Debug)]
pub struct Network {
    faults: NetworkFaults,
    /// Base one-way latency in microseconds.
    latency_micros: u64,
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Per link, when its last in-order message arrives (for FIFO links).
    link_last_arrival: BTreeMap<(NodeId, NodeId), u64>,
}

impl Network {
    /// A network with the given faults and base latency.
    pub fn new(faults: NetworkFaults, latency_micros: u64) -> Network {
        Network {
            faults,
            latency_micros,
            blocked: BTreeSet::new(),
            link_last_arrival: BTreeMap::new(),
        }
    }

    /// Replaces the message faults (for instance, none once faults stop).
    pub fn set_faults(&mut self, faults: NetworkFaults) {
        self.faults = faults;
    }

    /// Blocks messages from `from` to `to`.
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Whether any partition is in place.
    pub fn is_partitioned(&self) -> bool {
        !self.blocked.is_empty()
    }

    fn one_delay(&self, rng: &mut ChaCha8Rng) -> u64 {
        let jitter = rng.random_range(0..=self.latency_micros / 2);
        let extra = if self.faults.delay_extra_max_micros > 0 && rng.random_bool(0.2) {
            // A heavy tail: most delayed messages are a little late, a few very.
            let fraction: f64 = rng.random::<f64>().powi(3);
            (fraction * self.faults.delay_extra_max_micros as f64) as u64
        } else {
            0
        };
        self.latency_micros + jitter + extra
    }

    /// Decides the fate of a message sent at `now` from `from` to `to`.
    pub fn send(&mut self, rng: &mut ChaCha8Rng, now: u64, from: NodeId, to: NodeId) -> Deliveries {
        if self.blocked.contains(&(from, to)) {
            return Vec::new();
        }
        if self.faults.drop_probability > 0.0 && rng.random_bool(self.faults.drop_probability) {
            return Vec::new();
        }
        let copies = if self.faults.duplicate_probability > 0.0
            && rng.random_bool(self.faults.duplicate_probability)
        {
            2
        } else {
            1
        };
        let mut arrivals = Vec::with_capacity(copies);
        for _ in 0..copies {
            let mut arrival = now + self.one_delay(rng);
            if !self.faults.reorder {
                let last = self.link_last_arrival.entry((from, to)).or_insert(0);
                arrival = arrival.max(*last);
                *last = arrival;
            }
            arrivals.push(arrival);
        }
        arrivals
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn links_without_reordering_deliver_in_send_order() {
        let faults = NetworkFaults {
            delay_extra_max_micros: 50_000,
            ..NetworkFaults::none()
        };
        let mut network = Network::new(faults, 500);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut last = 0;
        for now in 0..1000 {
            let arrivals = network.send(&mut rng, now, NodeId(1), NodeId(2));
            assert_eq!(arrivals.len(), 1);
            assert!(arrivals[0] >= last);
            last = arrivals[0];
        }
    }

    #[test]
    fn reordering_lets_messages_overtake() {
        let faults = NetworkFaults {
            delay_extra_max_micros: 50_000,
            reorder: true,
            ..NetworkFaults::none()
        };
        let mut network = Network::new(faults, 500);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let arrivals: Vec<u64> = (0..1000)
            .map(|now| network.send(&mut rng, now, NodeId(1), NodeId(2))[0])
            .collect();
        assert!(arrivals.windows(2).any(|pair| pair[1] < pair[0]));
    }

    #[test]
    fn one_way_partition_blocks_one_direction_only() {
        let mut network = Network::new(NetworkFaults::none(), 500);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        network.block(NodeId(1), NodeId(2));
        assert!(network.send(&mut rng, 0, NodeId(1), NodeId(2)).is_empty());
        assert_eq!(network.send(&mut rng, 0, NodeId(2), NodeId(1)).len(), 1);
        network.heal();
        assert_eq!(network.send(&mut rng, 0, NodeId(1), NodeId(2)).len(), 1);
    }

    #[test]
    fn drops_and_duplicates_happen_at_about_their_rates() {
        let faults = NetworkFaults {
            drop_probability: 0.1,
            duplicate_probability: 0.1,
            ..NetworkFaults::none()
        };
        let mut network = Network::new(faults, 500);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let fates: Vec<usize> = (0..10_000)
            .map(|now| network.send(&mut rng, now, NodeId(1), NodeId(2)).len())
            .collect();
        let lost = fates.iter().filter(|copies| **copies == 0).count();
        let doubled = fates.iter().filter(|copies| **copies == 2).count();
        assert!((800..1200).contains(&lost), "lost {lost}");
        assert!((700..1100).contains(&doubled), "doubled {doubled}");
    }
}
