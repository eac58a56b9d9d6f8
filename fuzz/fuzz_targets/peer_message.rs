//! Any frame payload as a peer message: no panic; a message that decodes is
//! handed to a node, which must count or handle it, never panic.
#![no_main]
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use shoal_cluster::config::Config;
use shoal_cluster::id::NodeId;
use shoal_cluster::node::Node;
use shoal_cluster::protocol;
use shoal_cluster::ring::Ring;
use shoal_cluster::store::MemStore;
use shoal_cluster::transport::frame::Frame;

fuzz_target!(|data: &[u8]| {
    let frame = Frame::new(protocol::FRAME_PEER_MESSAGE, 0, data.to_vec());
    let Ok(message) = protocol::decode_peer_message(&frame) else {
        return;
    };
    let mut node = Node::new(Config::default(), NodeId(1), 7).expect("the default config is valid");
    let mut ring = Ring::new();
    for id in 1..=4 {
        ring.add_member(NodeId(id), format!("127.0.0.1:{}", 7000 + id));
    }
    let now = Instant::now();
    node.handle_ring(now, ring);
    let mut store = MemStore::new();
    node.handle_message(now, NodeId(2), message, &mut store);
    while node.poll_output().is_some() {}
});
