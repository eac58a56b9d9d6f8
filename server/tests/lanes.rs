//! The peer transport's two lanes on real QUIC endpoints: a client request's
//! message is not held behind background work streamed to the same peer.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use shoal_cluster::id::NodeId;
use shoal_cluster::message::Message;
use shoal_cluster::transport::endpoint::{Endpoint, EndpointConfig, Inbound};
use shoal_cluster::transport::tls::{TlsFiles, TransportLimits};
use shoal_server::certificates::{Kind, make_ca, make_leaf};
use tokio::sync::mpsc;

fn config(dir: &std::path::Path, node: u64) -> EndpointConfig {
    let name = format!("node-{node}");
    make_leaf(dir, &name, Kind::Node, &[]).expect("a node certificate");
    EndpointConfig {
        node: NodeId(node),
        generation: 1,
        address: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls: TlsFiles {
            ca: dir.join("ca.pem"),
            certificate: Some(dir.join(format!("{name}.pem"))),
            key: Some(dir.join(format!("{name}.key"))),
        },
        require_client_certificates: true,
        server_name: "shoal".into(),
        limits: TransportLimits::default(),
        frame_size_max_bytes: 64 << 20,
        peer_queue_max: 1024,
        peers_max: 16,
        connections_max: 16,
        request_read_timeout: Duration::from_secs(10),
        response_timeout: Duration::from_secs(10),
    }
}

/// Node 1 queues 24 MB of a partition's states for node 2, then a replica
/// read. On one stream per pair (the design before this test) the read
/// arrived after the last of the 24 MB; on its own lane it arrives first.
#[test]
fn a_read_is_not_held_behind_a_partition_being_streamed() {
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (to_first, _first_inbound) = mpsc::channel(64);
        let first = Endpoint::bind(config(dir.path(), 1), to_first).unwrap();
        let (to_second, mut second_inbound) = mpsc::channel(64);
        let second = Endpoint::bind(config(dir.path(), 2), to_second).unwrap();

        let states: Vec<(Bytes, Bytes)> = (0..24u32)
            .map(|index| {
                (
                    Bytes::from(format!("key-{index:04}")),
                    Bytes::from(vec![index as u8; 1 << 20]),
                )
            })
            .collect();
        let bulk = Message::PullReply {
            partition: 7,
            version: 3,
            from: Bytes::new(),
            until: None,
            states,
            digests: false,
        };
        let read = Message::Read {
            operation: 42,
            key: Bytes::from_static(b"k"),
            hint_for: None,
        };
        assert!(bulk.is_background() && !read.is_background());
        first.send_message(second.local_address(), &bulk);
        first.send_message(second.local_address(), &read);

        let mut arrivals = Vec::new();
        while arrivals.len() < 2 {
            let inbound = tokio::time::timeout(Duration::from_secs(30), second_inbound.recv())
                .await
                .expect("both messages arrive within 30 s")
                .expect("the endpoint is open");
            if let Inbound::Message { from, message } = inbound {
                assert_eq!(from, NodeId(1));
                arrivals.push(message);
            }
        }
        assert!(
            matches!(arrivals[0], Message::Read { operation: 42, .. }),
            "the read came second: {:?}",
            arrivals
                .iter()
                .map(Message::is_background)
                .collect::<Vec<_>>()
        );
        match &arrivals[1] {
            Message::PullReply { states, .. } => {
                assert_eq!(states.len(), 24);
                assert!(states.iter().all(|(_, value)| value.len() == 1 << 20));
            }
            other => panic!("expected the partition's states, got {other:?}"),
        }
        first.close().await;
        second.close().await;
    });
}
