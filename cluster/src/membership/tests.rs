//! Unit tests of the SWIM state machine, one rule each, on a tiny lossless
//! network that delivers instantly and steps time by 10 ms.

use std::collections::HashSet;
use std::net::{Ipv6Addr, SocketAddr};

use super::wire::{self, Body, Header, MessageWriter, PROTOCOL_VERSION};
use super::*;

fn address(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, index as u8 + 1], 7000))
}

fn id(index: usize) -> NodeId {
    NodeId(1000 + index as u64)
}

struct Net {
    nodes: Vec<Swim>,
    now: Instant,
    down: HashSet<usize>,
    /// Every (from, to, decoded datagram) delivered, for assertions.
    log: Vec<(usize, usize, wire::Datagram)>,
    events: Vec<(usize, Event)>,
}

impl Net {
    /// `n` nodes that all know each other.
    fn full(n: usize, config: Config) -> Net {
        let now = Instant::now();
        let mut nodes: Vec<Swim> = (0..n)
            .map(|i| Swim::new(config.clone(), id(i), 1, address(i), i as u64 + 7, now))
            .collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            for j in 0..n {
                if i != j {
                    node.add_member(id(j), 1, address(j));
                }
            }
            while node.poll_event().is_some() {}
        }
        Net {
            nodes,
            now,
            down: HashSet::new(),
            log: Vec::new(),
            events: Vec::new(),
        }
    }

    fn index_of(address: SocketAddr) -> usize {
        match address.ip() {
            std::net::IpAddr::V4(ip) => usize::from(ip.octets()[3]) - 1,
            std::net::IpAddr::V6(_) => usize::MAX,
        }
    }

    /// Delivers every pending datagram (and what they cause) instantly.
    fn flush(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for from in 0..self.nodes.len() {
                while let Some(transmit) = self.nodes[from].poll_transmit() {
                    moved = true;
                    assert!(transmit.bytes.len() <= 1200);
                    let to = Net::index_of(transmit.address);
                    if self.down.contains(&from)
                        || self.down.contains(&to)
                        || to >= self.nodes.len()
                    {
                        continue;
                    }
                    let datagram = wire::decode(&transmit.bytes, 1200).expect("valid datagram");
                    self.log.push((from, to, datagram));
                    self.nodes[to].handle_datagram(self.now, address(from), &transmit.bytes);
                }
                while let Some(event) = self.nodes[from].poll_event() {
                    self.events.push((from, event));
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the network never went quiet");
    }

    /// Runs `duration` of virtual time in 10 ms steps.
    fn run(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.now += Duration::from_millis(10);
            for i in 0..self.nodes.len() {
                if self.down.contains(&i) {
                    continue;
                }
                if self.nodes[i]
                    .poll_timeout()
                    .is_some_and(|at| at <= self.now)
                {
                    self.nodes[i].handle_timeout(self.now);
                }
            }
            self.flush();
        }
    }

    fn state(&self, observer: usize, subject: usize) -> Option<MemberState> {
        self.nodes[observer].member(id(subject)).map(|m| m.state)
    }
}

fn quiet_config() -> Config {
    Config {
        // Keep push-pull and reconnects out of the way unless a test wants them.
        push_pull_interval: Duration::from_secs(3600),
        reconnect_interval: Duration::from_secs(3600),
        ..Config::default()
    }
}

fn header(source: u64) -> Header {
    Header {
        version: PROTOCOL_VERSION,
        source,
        generation: 1,
        incarnation: 0,
        metadata_version: 0,
        metadata_digest: metadata_digest(&[]),
    }
}

fn datagram(source: u64, body: Body, updates: &[Update]) -> Vec<u8> {
    let mut writer = MessageWriter::new(&header(source), &body, 1200).expect("fits");
    for update in updates {
        assert!(writer.try_push(update));
    }
    writer.finish()
}

fn update(node: usize, incarnation: u64, state: MemberState, from: usize) -> Update {
    Update {
        node: id(node).0,
        generation: 1,
        incarnation,
        state,
        address: address(node),
        from: id(from).0,
    }
}

#[test]
fn wire_round_trips_every_message_kind() {
    let bodies = [
        Body::Ping {
            sequence: 1,
            target: 2,
        },
        Body::Ack { sequence: 3 },
        Body::PingRequest {
            sequence: 4,
            target: 5,
            target_address: address(3),
            nack: true,
        },
        Body::Nack { sequence: 6 },
        Body::Gossip,
        Body::SyncDigest {
            reply: true,
            join: false,
            buckets: vec![9; wire::SYNC_BUCKETS],
        },
        Body::SyncEntries,
        Body::MetadataRequest {
            version: 7,
            digest: 8,
        },
        Body::MetadataChunk {
            version: 7,
            digest: 8,
            total_length: 3,
            offset: 0,
            bytes: vec![1, 2, 3],
        },
    ];
    for body in bodies {
        let updates = [update(1, 2, MemberState::Suspect, 3)];
        let bytes = datagram(42, body.clone(), &updates);
        let decoded = wire::decode(&bytes, 1200).expect("round trip");
        assert_eq!(decoded.header, header(42));
        assert_eq!(decoded.body, body);
        assert_eq!(decoded.updates, updates);
    }
}

#[test]
fn every_datagram_fits_the_budget_with_the_widest_updates() {
    let mut node = Swim::new(
        quiet_config(),
        NodeId(u64::MAX),
        u64::MAX,
        address(0),
        1,
        Instant::now(),
    );
    let now = Instant::now();
    // Thousands of members with the widest encodings, all pending gossip.
    for k in 0..3000u64 {
        let wide = Update {
            node: u64::MAX - 1 - k,
            generation: u64::MAX,
            incarnation: u64::MAX - 1,
            state: MemberState::Suspect,
            address: SocketAddr::new(Ipv6Addr::new(0xffff, 1, 2, 3, 4, 5, 6, 7).into(), 65535),
            from: u64::MAX,
        };
        node.apply(now, &wide, Origin::Gossip);
    }
    assert!(node.pending_broadcasts() > 1000);
    node.handle_timeout(now + Duration::from_secs(2));
    let joiner = datagram(
        5,
        Body::SyncDigest {
            reply: true,
            join: true,
            buckets: vec![0; wire::SYNC_BUCKETS],
        },
        &[],
    );
    node.handle_datagram(now, address(5), &joiner);
    let mut count = 0;
    let mut largest = 0;
    while let Some(transmit) = node.poll_transmit() {
        largest = largest.max(transmit.bytes.len());
        assert!(
            transmit.bytes.len() <= 1200,
            "{} bytes",
            transmit.bytes.len()
        );
        wire::decode(&transmit.bytes, 1200).expect("decodable");
        count += 1;
    }
    assert!(
        count > 10,
        "ping, gossip and a multi-datagram sync answer: {count}"
    );
    assert!(
        largest > 1000,
        "datagrams are packed close to the budget: {largest}"
    );
}

#[test]
fn malformed_datagrams_are_counted_and_dropped() {
    let mut net = Net::full(2, quiet_config());
    let now = net.now;
    let node = &mut net.nodes[0];
    node.handle_datagram(now, address(1), &[]);
    node.handle_datagram(now, address(1), &[0xff; 40]);
    node.handle_datagram(now, address(1), &[0u8; 1300]);
    let good = datagram(id(1).0, Body::Ack { sequence: 1 }, &[]);
    node.handle_datagram(now, address(1), &good[..good.len() - 1]);
    let mut trailing = good.clone();
    trailing.push(0);
    node.handle_datagram(now, address(1), &trailing);
    let mut wrong_version = good.clone();
    wrong_version[0] = PROTOCOL_VERSION + 1;
    node.handle_datagram(now, address(1), &wrong_version);
    assert_eq!(node.stats().malformed_datagrams, 6);
    assert_eq!(node.stats().datagrams_received, 0);
    node.handle_datagram(now, address(1), &good);
    assert_eq!(node.stats().datagrams_received, 1);
}

#[test]
fn round_robin_probes_every_member_once_per_pass() {
    let mut net = Net::full(6, quiet_config());
    net.run(Duration::from_secs(7));
    let mut targets: Vec<u64> = net
        .log
        .iter()
        .filter(|(from, _, _)| *from == 0)
        .filter_map(|(_, _, d)| match d.body {
            Body::Ping { target, .. } => Some(target),
            _ => None,
        })
        .take(5)
        .collect();
    assert_eq!(targets.len(), 5, "one probe per period");
    targets.sort_unstable();
    targets.dedup();
    assert_eq!(targets.len(), 5, "each member exactly once in a pass");
}

#[test]
fn silent_member_gets_k_ping_requests_then_suspicion_then_death() {
    let mut net = Net::full(6, quiet_config());
    net.down.insert(5);
    net.run(Duration::from_secs(6));
    let requests = net
        .log
        .iter()
        .filter(|(from, _, d)| {
            *from == 0 && matches!(d.body, Body::PingRequest { target, nack: true, .. } if target == id(5).0)
        })
        .count();
    assert_eq!(requests, 3, "k = 3 relays asked");
    assert!(
        net.log
            .iter()
            .any(|(_, to, d)| *to == 0 && matches!(d.body, Body::Nack { .. })),
        "relays nack when the target is silent"
    );
    assert!(
        net.events
            .iter()
            .any(|(o, e)| *o == 0
                && matches!(e, Event::MemberSuspect { node, .. } if *node == id(5)))
    );
    // Min = 4 s for n < 10, Max = 24 s; with K = 2 confirmations from the other
    // probers the timeout falls to Min, then one verification period.
    net.run(Duration::from_secs(30));
    for observer in 0..5 {
        assert_eq!(
            net.state(observer, 5),
            Some(MemberState::Dead),
            "observer {observer}"
        );
    }
    assert!(
        net.events
            .iter()
            .any(|(_, e)| matches!(e, Event::MemberDown { node, .. } if *node == id(5)))
    );
}

#[test]
fn suspected_member_refutes_with_a_higher_incarnation() {
    let mut net = Net::full(3, quiet_config());
    let now = net.now;
    let accusation = datagram(
        id(1).0,
        Body::Gossip,
        &[update(0, 0, MemberState::Suspect, 1)],
    );
    net.nodes[0].handle_datagram(now, address(1), &accusation);
    assert_eq!(net.nodes[0].incarnation(), 1);
    assert_eq!(net.nodes[0].stats().refutations, 1);
    assert_eq!(
        net.nodes[0].local_health(),
        1,
        "refuting raises local health"
    );
    net.run(Duration::from_secs(1));
    for observer in 1..3 {
        let member = net.nodes[observer].member(id(0)).expect("known");
        assert_eq!((member.incarnation, member.state), (1, MemberState::Alive));
    }
}

#[test]
fn buddy_rule_puts_the_suspicion_first_on_a_ping_to_the_suspect() {
    let mut net = Net::full(3, quiet_config());
    let now = net.now;
    let accusation = datagram(
        id(2).0,
        Body::Gossip,
        &[update(1, 0, MemberState::Suspect, 2)],
    );
    net.nodes[0].handle_datagram(now, address(2), &accusation);
    assert_eq!(net.state(0, 1), Some(MemberState::Suspect));
    net.nodes[0].send(
        now,
        Some(id(1)),
        address(1),
        Body::Ping {
            sequence: 9,
            target: id(1).0,
        },
        true,
    );
    let transmit = net.nodes[0].poll_transmit().expect("a ping");
    let ping = wire::decode(&transmit.bytes, 1200).expect("valid");
    assert_eq!(ping.updates[0], update(1, 0, MemberState::Suspect, 2));
    // Without Lifeguard the ping carries no such entry first.
    let mut plain = Net::full(
        3,
        Config {
            lifeguard: false,
            ..quiet_config()
        },
    );
    plain.nodes[0].handle_datagram(now, address(2), &accusation);
    while plain.nodes[0].poll_transmit().is_some() {}
    plain.nodes[0].send(
        now,
        Some(id(1)),
        address(1),
        Body::Ping {
            sequence: 9,
            target: id(1).0,
        },
        false,
    );
    let transmit = plain.nodes[0].poll_transmit().expect("a ping");
    assert!(
        wire::decode(&transmit.bytes, 1200)
            .expect("valid")
            .updates
            .is_empty()
    );
}

#[test]
fn stale_alive_never_resurrects_a_dead_member_and_is_answered() {
    let mut net = Net::full(3, quiet_config());
    let now = net.now;
    let death = datagram(id(2).0, Body::Gossip, &[update(1, 4, MemberState::Dead, 2)]);
    net.nodes[0].handle_datagram(now, address(2), &death);
    assert_eq!(net.state(0, 1), Some(MemberState::Dead));
    while net.nodes[0].poll_transmit().is_some() {}
    let stale = datagram(
        id(2).0,
        Body::Gossip,
        &[update(1, 4, MemberState::Alive, 1)],
    );
    net.nodes[0].handle_datagram(now, address(2), &stale);
    assert_eq!(net.state(0, 1), Some(MemberState::Dead));
    let requeued = net.nodes[0]
        .broadcasts
        .get(id(1).0)
        .expect("accusation requeued");
    assert_eq!(requeued.state, MemberState::Dead);
    let newer = datagram(
        id(2).0,
        Body::Gossip,
        &[update(1, 5, MemberState::Alive, 1)],
    );
    net.nodes[0].handle_datagram(now, address(2), &newer);
    assert_eq!(
        net.state(0, 1),
        Some(MemberState::Alive),
        "a refutation revives"
    );
}

#[test]
fn dead_member_that_talks_hears_of_its_death_and_refutes() {
    let mut net = Net::full(3, quiet_config());
    let now = net.now;
    let death = datagram(id(2).0, Body::Gossip, &[update(1, 0, MemberState::Dead, 2)]);
    net.nodes[0].handle_datagram(now, address(2), &death);
    net.flush();
    // Node 1 pings node 0, which answers with the accusation first.
    net.nodes[1].send(
        now,
        Some(id(0)),
        address(0),
        Body::Ping {
            sequence: 1,
            target: id(0).0,
        },
        false,
    );
    net.run(Duration::from_secs(2));
    assert!(net.nodes[1].incarnation() >= 1);
    assert_eq!(net.state(0, 1), Some(MemberState::Alive));
}

#[test]
fn suspicion_timeout_shrinks_from_max_to_min_with_confirmations() {
    let mut net = Net::full(20, quiet_config());
    let node = &mut net.nodes[0];
    let min = node.suspicion_min();
    assert_eq!(min, Duration::from_secs_f64(4.0 * 20f64.log10()));
    let max = min * 6;
    assert_eq!(node.suspicion_timeout(0), max);
    let one = node.suspicion_timeout(1);
    assert!(one < max && one > min, "{one:?}");
    assert_eq!(node.suspicion_timeout(2), min);
    assert_eq!(node.suspicion_timeout(5), min);
    node.config.lifeguard = false;
    assert_eq!(node.suspicion_timeout(0), min, "plain SWIM: fixed Min");
}

#[test]
fn independent_confirmations_bring_the_deadline_forward() {
    let mut net = Net::full(20, quiet_config());
    let now = net.now;
    let node = &mut net.nodes[0];
    node.handle_datagram(
        now,
        address(2),
        &datagram(
            id(2).0,
            Body::Gossip,
            &[update(9, 0, MemberState::Suspect, 2)],
        ),
    );
    let first = node.suspicion_deadlines.first().expect("timer").0;
    node.handle_datagram(
        now,
        address(3),
        &datagram(
            id(3).0,
            Body::Gossip,
            &[update(9, 0, MemberState::Suspect, 3)],
        ),
    );
    // The same accuser again is not a confirmation.
    node.handle_datagram(
        now,
        address(3),
        &datagram(
            id(3).0,
            Body::Gossip,
            &[update(9, 0, MemberState::Suspect, 3)],
        ),
    );
    assert_eq!(node.suspicion_accusers(id(9)), 2);
    let second = node.suspicion_deadlines.first().expect("timer").0;
    assert!(second < first);
    node.handle_datagram(
        now,
        address(4),
        &datagram(
            id(4).0,
            Body::Gossip,
            &[update(9, 0, MemberState::Suspect, 4)],
        ),
    );
    let third = node.suspicion_deadlines.first().expect("timer").0;
    assert_eq!(third, now + node.suspicion_min());
}

#[test]
fn local_health_rises_on_missed_nacks_and_scales_the_period() {
    let mut net = Net::full(6, quiet_config());
    // Node 0 hears nothing back: every other node is unreachable from it.
    for i in 1..6 {
        net.down.insert(i);
    }
    net.run(Duration::from_secs(3));
    let health = net.nodes[0].local_health();
    assert!(health >= 3, "three missed nacks per failed probe: {health}");
    let before = net.nodes[0].stats().probes;
    net.run(Duration::from_secs(8));
    let probes = net.nodes[0].stats().probes - before;
    assert!(
        probes <= 3,
        "a degraded node probes less often: {probes} probes in 8 s"
    );
    assert!(net.nodes[0].stats().degraded_timeouts > 0);
    // Healthy again: successes bring the score back down.
    net.down.clear();
    net.run(Duration::from_secs(60));
    assert_eq!(net.nodes[0].local_health(), 0);
}

#[test]
fn joiner_learns_the_view_through_a_seed_and_everyone_learns_the_joiner() {
    let mut net = Net::full(5, quiet_config());
    let joiner = Swim::new(quiet_config(), id(5), 1, address(5), 99, net.now);
    net.nodes.push(joiner);
    let now = net.now;
    net.nodes[5].join(now, &[address(0)]);
    net.flush();
    assert!(
        net.events
            .iter()
            .any(|(o, e)| *o == 5 && *e == Event::Joined)
    );
    assert_eq!(
        net.nodes[5].live_member_count(),
        5,
        "the seed's answer carries its view"
    );
    net.run(Duration::from_secs(3));
    for observer in 0..5 {
        assert_eq!(
            net.state(observer, 5),
            Some(MemberState::Alive),
            "observer {observer}"
        );
    }
}

#[test]
fn graceful_leave_is_announced_and_never_suspected() {
    let mut net = Net::full(8, quiet_config());
    net.run(Duration::from_secs(2));
    let now = net.now;
    net.nodes[3].leave(now);
    net.run(Duration::from_secs(5));
    assert!(net.nodes[3].has_left());
    for observer in (0..8).filter(|&o| o != 3) {
        assert_eq!(
            net.state(observer, 3),
            Some(MemberState::Left),
            "observer {observer}"
        );
    }
    assert!(
        !net.events
            .iter()
            .any(|(_, e)| matches!(e, Event::MemberSuspect { node, .. } if *node == id(3)))
    );
    let before = net.log.len();
    net.run(Duration::from_secs(2));
    assert!(
        net.log[before..].iter().all(|(from, _, _)| *from != 3),
        "silent after leaving"
    );
}

#[test]
fn push_pull_repairs_a_member_the_gossip_missed() {
    let config = Config {
        push_pull_interval: Duration::from_secs(2),
        ..quiet_config()
    };
    let mut net = Net::full(3, config);
    net.down.insert(2);
    let now = net.now;
    // Node 1 alone hears of node 7, as a sync entry (not re-gossiped).
    let entry = datagram(
        id(2).0,
        Body::SyncEntries,
        &[update(7, 3, MemberState::Alive, 7)],
    );
    net.nodes[1].handle_datagram(now, address(2), &entry);
    assert_eq!(net.nodes[1].pending_broadcasts(), 0);
    net.run(Duration::from_secs(5));
    let learned = net.nodes[0]
        .member(id(7))
        .expect("learned through push-pull");
    assert_eq!(learned.incarnation, 3);
    assert!(
        net.log
            .iter()
            .any(|(_, _, d)| matches!(d.body, Body::SyncDigest { .. }))
    );
}

#[test]
fn tombstones_are_collected_after_the_retention() {
    let config = Config {
        dead_retention: Duration::from_secs(10),
        ..quiet_config()
    };
    let mut net = Net::full(3, config);
    let now = net.now;
    net.nodes[0].handle_datagram(
        now,
        address(1),
        &datagram(id(1).0, Body::Gossip, &[update(2, 0, MemberState::Left, 2)]),
    );
    assert_eq!(net.state(0, 2), Some(MemberState::Left));
    net.down.insert(2);
    net.run(Duration::from_secs(11));
    assert_eq!(net.state(0, 2), None);
    // An expired tombstone is not resurrected by a late Left.
    let late = datagram(id(1).0, Body::Gossip, &[update(2, 0, MemberState::Left, 2)]);
    net.nodes[0].handle_datagram(net.now, address(1), &late);
    assert_eq!(net.state(0, 2), None);
}

#[test]
fn newer_metadata_version_spreads_in_chunks() {
    let mut net = Net::full(4, quiet_config());
    let blob: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    net.nodes[2]
        .set_metadata(3, blob.clone())
        .expect("within the limit");
    net.run(Duration::from_secs(8));
    for observer in 0..4 {
        assert_eq!(
            net.nodes[observer].metadata(),
            (3, blob.as_slice()),
            "observer {observer}"
        );
    }
    assert!(
        net.events
            .iter()
            .any(|(o, e)| *o == 0 && *e == Event::MetadataChanged { version: 3 })
    );
    let chunks = net
        .log
        .iter()
        .filter(|(_, _, d)| matches!(d.body, Body::MetadataChunk { .. }))
        .count();
    assert!(
        chunks >= 3 * 5,
        "5 chunks of 1 KiB to each of 3 nodes: {chunks}"
    );
    // An older version does not replace a newer one.
    net.nodes[1].set_metadata(2, vec![1]).expect("small");
    net.run(Duration::from_secs(4));
    assert_eq!(net.nodes[1].metadata(), (3, blob.as_slice()));
    assert!(net.nodes[0].set_metadata(9, vec![0; 2 << 20]).is_err());
}

fn union(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut all: Vec<u8> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

#[test]
fn metadata_merge_joins_concurrent_changes() {
    let config = Config {
        metadata_merge: Some(union),
        ..quiet_config()
    };
    let mut net = Net::full(4, config);
    net.nodes[0].set_metadata(1, vec![1, 5]).expect("small");
    net.nodes[3].set_metadata(1, vec![2, 7]).expect("small");
    net.run(Duration::from_secs(10));
    for observer in 0..4 {
        assert_eq!(
            net.nodes[observer].metadata().1,
            &[1, 2, 5, 7],
            "observer {observer}"
        );
    }
    let version = net.nodes[0].metadata().0;
    assert!(
        (1..4).all(|o| net.nodes[o].metadata().0 == version),
        "one version everywhere"
    );
}

#[test]
fn a_ping_for_another_node_is_ignored() {
    let mut net = Net::full(2, quiet_config());
    let now = net.now;
    let misrouted = datagram(
        id(1).0,
        Body::Ping {
            sequence: 1,
            target: 4242,
        },
        &[],
    );
    net.nodes[0].handle_datagram(now, address(1), &misrouted);
    assert!(net.nodes[0].poll_transmit().is_none());
}

#[test]
fn restarted_member_replaces_its_old_generation() {
    let mut net = Net::full(2, quiet_config());
    let now = net.now;
    let death = datagram(
        id(1).0,
        Body::Gossip,
        &[Update {
            generation: 1,
            ..update(5, 2, MemberState::Dead, 1)
        }],
    );
    net.nodes[0].handle_datagram(now, address(1), &death);
    net.nodes[0].handle_datagram(
        now,
        address(1),
        &datagram(
            id(1).0,
            Body::Gossip,
            &[update(5, 0, MemberState::Alive, 5)],
        ),
    );
    let reborn = Update {
        generation: 2,
        ..update(5, 0, MemberState::Alive, 5)
    };
    net.nodes[0].handle_datagram(now, address(1), &datagram(id(1).0, Body::Gossip, &[reborn]));
    let member = net.nodes[0].member(id(5)).expect("known");
    assert_eq!((member.generation, member.state), (2, MemberState::Alive));
}
