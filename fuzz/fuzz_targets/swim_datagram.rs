//! Any bytes as a SWIM datagram to a member of a small group: no panic, and
//! every datagram it sends in answer stays within the budget.
#![no_main]
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use shoal_cluster::id::NodeId;
use shoal_cluster::membership::{Config, Swim};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let address: SocketAddr = "127.0.0.1:7001".parse().expect("literal address");
    let config = Config::default();
    let budget = config.datagram_size_max_bytes;
    let mut swim = Swim::new(config, NodeId(1), 1, address, 3, now);
    for id in 2..5u64 {
        let peer: SocketAddr = format!("127.0.0.1:{}", 7000 + id).parse().expect("literal address");
        swim.add_member(NodeId(id), 1, peer);
    }
    let from: SocketAddr = "127.0.0.1:7002".parse().expect("literal address");
    for datagram in data.split(|byte| *byte == 0xfe).take(8) {
        swim.handle_datagram(now, from, datagram);
    }
    swim.handle_timeout(now + Duration::from_secs(1));
    while let Some(transmit) = swim.poll_transmit() {
        assert!(transmit.bytes.len() <= budget);
    }
    while swim.poll_event().is_some() {}
});
