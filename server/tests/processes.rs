//! End-to-end tests on real `shoald` processes on 127.0.0.1 (design §10,
//! tier 3): quorums at every `r`/`w`, a killed node, hinted handoff across a
//! restart, mutual TLS refusing a stranger, malformed input, SIGTERM.
//!
//! No sleeps for correctness: every wait polls a condition with a deadline.

#![allow(clippy::unwrap_used, clippy::too_many_arguments)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use shoal_client::{Client, ClientConfig, Context, Error, ReadOptions, WriteOptions};
use shoal_cluster::message::Quorum;
use shoal_cluster::protocol::{self, ALPN_CLIENT, ClientResponse};
use shoal_cluster::transport::frame::{self, Frame};
use shoal_cluster::transport::tls::{self, TlsFiles, TransportLimits};
use shoal_server::certificates::{self, Kind};

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .map(|address| address.port())
        .expect("a free UDP port")
}

struct Node {
    id: u64,
    address: SocketAddr,
    data_dir: PathBuf,
    config: PathBuf,
    process: Option<Child>,
}

impl Node {
    fn start(&mut self) {
        assert!(self.process.is_none(), "node {} already runs", self.id);
        let log = std::fs::File::create(self.data_dir.with_extension("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_shoald"))
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("shoald starts");
        self.process = Some(child);
    }

    fn kill(&mut self) {
        let mut child = self.process.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.process.take().expect("running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {} ignored SIGTERM",
                self.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    certs: PathBuf,
    nodes: Vec<Node>,
}

fn write_config(
    path: &Path,
    id: u64,
    address: SocketAddr,
    data_dir: &Path,
    seeds: &[SocketAddr],
    certs: &Path,
    name: &str,
    replication_factor: u64,
) {
    let seeds: Vec<String> = seeds.iter().map(|seed| format!("\"{seed}\"")).collect();
    std::fs::write(
        path,
        format!(
            "node_id = {id}\nlisten = \"{address}\"\ndata_dir = \"{}\"\nseeds = [{}]\n\
             [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
             [cluster]\nreplication_factor = {replication_factor}\nprotocol_period_ms = 200\nrequest_timeout_ms = 1000\n\
             [limits]\nvalue_size_max_bytes = 65536\n",
            data_dir.display(),
            seeds.join(", "),
            certs.join("ca.pem").display(),
            certs.join(format!("{name}.pem")).display(),
            certs.join(format!("{name}.key")).display(),
        ),
    )
    .unwrap();
}

impl Cluster {
    fn start(count: u64) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        certificates::make_ca(&certs).unwrap();
        let addresses: Vec<SocketAddr> = (0..count)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        let mut nodes = Vec::new();
        for id in 1..=count {
            let name = format!("node-{id}");
            certificates::make_leaf(&certs, &name, Kind::Node, &[]).unwrap();
            let data_dir = dir.path().join(&name);
            let config = dir.path().join(format!("{name}.toml"));
            let address = addresses[id as usize - 1];
            write_config(
                &config,
                id,
                address,
                &data_dir,
                &addresses[..1],
                &certs,
                &name,
                count.min(3),
            );
            let mut node = Node {
                id,
                address,
                data_dir,
                config,
                process: None,
            };
            node.start();
            nodes.push(node);
        }
        Cluster {
            _dir: dir,
            certs,
            nodes,
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(
            self.nodes.iter().map(|node| node.address).collect(),
            self.certs.join("ca.pem"),
        );
        config.timeout = Duration::from_secs(2);
        config
    }

    async fn client(&self) -> Client {
        connect(self.client_config()).await
    }

    /// Waits until node `index` sees `count` members alive (itself included).
    async fn wait_alive(&self, client: &Client, index: usize, count: usize) {
        let address = self.nodes[index].address;
        wait_for(
            &format!("node {} to see {count} alive and in its ring", index + 1),
            || async {
                client.status(Some(address)).await.is_ok_and(|status| {
                    let alive = |member: &&shoal_cluster::protocol::MemberStatus| {
                        member.liveness == "alive"
                    };
                    // Alive (SWIM) and known to the ring (its gossip can lag
                    // liveness): only then does placement count the member.
                    let in_ring = |member: &&shoal_cluster::protocol::MemberStatus| {
                        member.ring_state == Some(shoal_cluster::ring::MemberState::Active)
                    };
                    status.members.iter().filter(alive).count() == count
                        && status.members.iter().filter(alive).filter(in_ring).count() == count
                })
            },
        )
        .await;
    }
}

/// A client of `config`, once one of its nodes answers (within 20 s).
async fn connect(config: ClientConfig) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Client::connect(config.clone()).await {
            Ok(client) => return client,
            Err(error) => {
                assert!(Instant::now() < deadline, "cluster unreachable: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn wait_for<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn write(w: Quorum) -> WriteOptions {
    WriteOptions {
        w: Some(w),
        ..WriteOptions::default()
    }
}

fn read(r: Quorum) -> ReadOptions {
    ReadOptions {
        r: Some(r),
        ..ReadOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_every_quorum_survive_a_kill_and_replay_hints() {
    let mut cluster = Cluster::start(3);
    let client = cluster.client().await;
    for index in 0..3 {
        cluster.wait_alive(&client, index, 3).await;
    }
    // Every r and w, on its own key.
    for (number, quorum) in [Quorum::One, Quorum::Quorum, Quorum::All, Quorum::Count(2)]
        .into_iter()
        .enumerate()
    {
        let key = format!("quorum-{number}");
        client
            .put(
                key.as_bytes(),
                b"value",
                &Context::default(),
                &write(quorum),
            )
            .await
            .unwrap_or_else(|error| panic!("put at w={quorum}: {error}"));
        // A read at r=all sees even a w=one write once it reached every replica.
        wait_for("the write to reach every replica", || async {
            let value = client.get(key.as_bytes(), &read(Quorum::All)).await;
            value.is_ok_and(|value| value.siblings == vec![bytes::Bytes::from_static(b"value")])
        })
        .await;
        let value = client.get(key.as_bytes(), &read(quorum)).await.unwrap();
        assert_eq!(value.siblings, vec![bytes::Bytes::from_static(b"value")]);
    }
    // Read-modify-write supersedes; a blind write makes a sibling.
    let first = client
        .get(b"quorum-1", &read(Quorum::Quorum))
        .await
        .unwrap();
    client
        .put(b"quorum-1", b"second", &first.context, &write(Quorum::All))
        .await
        .unwrap();
    client
        .put(
            b"quorum-1",
            b"blind",
            &Context::default(),
            &write(Quorum::All),
        )
        .await
        .unwrap();
    let mut siblings = client
        .get(b"quorum-1", &read(Quorum::All))
        .await
        .unwrap()
        .siblings;
    siblings.sort();
    assert_eq!(siblings, vec!["blind", "second"]);

    // Kill node 3: quorum writes still succeed and leave hints for it.
    cluster.nodes[2].kill();
    cluster.wait_alive(&client, 0, 2).await;
    cluster.wait_alive(&client, 1, 2).await;
    // The client routes around the node the cluster reports down.
    let ring = client.ring().await.unwrap();
    assert!(ring.down.iter().any(|node| node.0 == 3), "{ring:?}");
    let keys: Vec<String> = (0..20).map(|i| format!("while-down-{i}")).collect();
    for key in &keys {
        client
            .put(
                key.as_bytes(),
                b"kept",
                &Context::default(),
                &write(Quorum::Quorum),
            )
            .await
            .unwrap_or_else(|error| panic!("quorum put of {key} with a node down: {error:?}"));
    }
    let all = client
        .put(b"needs-all", b"x", &Context::default(), &write(Quorum::All))
        .await;
    assert!(
        matches!(
            all,
            Err(Error::Unavailable {
                acks: 2,
                required: 3,
                ..
            })
        ),
        "w=all with a node down must fail and say how many answered: {all:?}"
    );
    let mut held = 0;
    for node in &cluster.nodes[..2] {
        held += client.status(Some(node.address)).await.unwrap().hint_bytes;
    }
    assert!(held > 0, "hints must be held for the dead node");

    // Restart it: the hints replay and its own store holds the data.
    cluster.nodes[2].start();
    let node_three = cluster.nodes[2].address;
    for key in &keys {
        wait_for("a hinted write to reach the restarted node", || async {
            client
                .inspect(node_three, key.as_bytes())
                .await
                .is_ok_and(|inspection| {
                    inspection.primary
                        && inspection
                            .state
                            .values()
                            .any(|value| value.as_ref() == b"kept")
                })
        })
        .await;
    }
    let addresses: Vec<SocketAddr> = cluster.nodes[..2].iter().map(|n| n.address).collect();
    wait_for("the hints to be deleted once acknowledged", || async {
        let mut total = 0;
        for address in &addresses {
            total += client
                .status(Some(*address))
                .await
                .map_or(1, |s| s.hint_bytes);
        }
        total == 0
    })
    .await;

    // SIGTERM: a clean exit, and the others see the node leave. Eight
    // writers go on meanwhile and every write succeeds: the stopping node
    // answers "shutting down" for a second (the client retries elsewhere and
    // routes away), then closes its connections before it closes its store.
    // Without that, 2–6 of ~12,000 writes failed with "connection lost":
    // sent while the node flushed its memtable with its loop ended. So first
    // some 30 MB in the memtable.
    let large = vec![b'x'; 60_000];
    for n in 0..500 {
        client
            .put(
                format!("large-{n}").as_bytes(),
                &large,
                &Context::default(),
                &write(Quorum::All),
            )
            .await
            .unwrap_or_else(|error| panic!("large put {n}: {error}"));
    }
    let writer_client = Arc::new(cluster.client().await);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let (client, stop) = (writer_client.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut written, mut failed) = (0usize, Vec::new());
                let value = vec![b'v'; 1000];
                for n in 0u32.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("while-stopping-{writer}-{n}");
                    let options = write(Quorum::Quorum);
                    match client
                        .put(key.as_bytes(), &value, &Context::default(), &options)
                        .await
                    {
                        Ok(_) => written += 1,
                        Err(error) => failed.push(error.to_string()),
                    }
                }
                (written, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = cluster.nodes[1].terminate();
    assert!(status.success(), "SIGTERM must exit 0, got {status}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut written, mut failed) = (0, Vec::new());
    for writer in writers {
        let (each_written, each_failed) = writer.await.unwrap();
        written += each_written;
        failed.extend(each_failed);
    }
    assert!(
        failed.is_empty(),
        "{} of {} writes failed while a node stopped, e.g. {:?}",
        failed.len(),
        written + failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(
        written > 100,
        "only {written} writes while the node stopped"
    );
    let node_one = cluster.nodes[0].address;
    wait_for("node 1 to see node 2 as left", || async {
        client.status(Some(node_one)).await.is_ok_and(|status| {
            status
                .members
                .iter()
                .any(|member| member.node.0 == 2 && member.liveness == "left")
        })
    })
    .await;
}

/// Sends raw bytes on a client stream and returns the decoded response.
async fn raw_call(connection: &quinn::Connection, bytes: &[u8]) -> ClientResponse {
    let (mut send, mut receive) = connection.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    send.finish().unwrap();
    let answer = receive.read_to_end(1 << 20).await.unwrap();
    let frame = frame::decode_complete(&answer, 1 << 20).unwrap();
    protocol::decode_frame(&frame, protocol::FRAME_CLIENT_RESPONSE).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_error_and_strangers_are_refused() {
    let mut cluster = Cluster::start(1);
    let client = cluster.client().await;

    // An oversized value: a clear error, nothing stored.
    let big = vec![7u8; 65_537];
    let refused = client
        .put(b"big", &big, &Context::default(), &WriteOptions::default())
        .await;
    assert!(
        matches!(&refused, Err(Error::InvalidArgument(reason)) if reason.contains("value")),
        "{refused:?}"
    );
    assert!(
        !client
            .get(b"big", &ReadOptions::default())
            .await
            .unwrap()
            .found()
    );

    // Malformed frames and an unknown message type, on a raw connection.
    let files = TlsFiles {
        ca: cluster.certs.join("ca.pem"),
        certificate: None,
        key: None,
    };
    let config = tls::client_config(&files, ALPN_CLIENT, &TransportLimits::default()).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connection = endpoint
        .connect_with(config, cluster.nodes[0].address, "shoal")
        .unwrap()
        .await
        .unwrap();
    let garbage = raw_call(&connection, b"this is not a frame at all").await;
    assert!(matches!(garbage, ClientResponse::Failed(_)), "{garbage:?}");
    let mut unknown = BytesMut::new();
    Frame::new(99, 5, &b"payload"[..])
        .encode(1 << 20, &mut unknown)
        .unwrap();
    let answer = raw_call(&connection, &unknown).await;
    assert!(
        matches!(&answer, ClientResponse::Failed(error) if error.to_string().contains("unexpected frame type 99")),
        "{answer:?}"
    );
    let mut oversized = BytesMut::new();
    oversized.extend_from_slice(&[frame::FRAME_VERSION, 16, 0, 0]);
    oversized.extend_from_slice(&1u64.to_be_bytes());
    oversized.extend_from_slice(&u32::MAX.to_be_bytes());
    let answer = raw_call(&connection, &oversized).await;
    assert!(matches!(answer, ClientResponse::Failed(_)), "{answer:?}");

    // The node keeps serving.
    client
        .put(
            b"after",
            b"fine",
            &Context::default(),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    assert!(
        client
            .get(b"after", &ReadOptions::default())
            .await
            .unwrap()
            .found()
    );

    // A node whose certificate comes from another CA cannot join.
    let other_ca = cluster._dir.path().join("other-ca");
    certificates::make_ca(&other_ca).unwrap();
    certificates::make_leaf(&other_ca, "node-9", Kind::Node, &[]).unwrap();
    let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let data_dir = cluster._dir.path().join("node-9");
    let config = cluster._dir.path().join("node-9.toml");
    write_config(
        &config,
        9,
        address,
        &data_dir,
        &[cluster.nodes[0].address],
        &other_ca,
        "node-9",
        1,
    );
    let mut stranger = Node {
        id: 9,
        address,
        data_dir,
        config,
        process: None,
    };
    stranger.start();
    // Give it many protocol periods to try; it must never appear.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let status = client.status(Some(cluster.nodes[0].address)).await.unwrap();
        assert!(
            status.members.iter().all(|member| member.node.0 != 9),
            "a node from another CA joined: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And a client trusting another CA cannot talk to the cluster.
    let mut wrong = cluster.client_config();
    wrong.ca = other_ca.join("ca.pem");
    let connected = Client::connect(wrong).await;
    assert!(
        matches!(connected, Err(Error::Connection(_))),
        "{connected:?}"
    );
    stranger.kill();
    cluster.nodes[0].kill();
}

/// A node whose disk is wiped comes back empty and converges through
/// anti-entropy alone: no client reads it (no read repair) and it missed no
/// writes while down (no hints).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_converges_through_anti_entropy_alone() {
    let mut cluster = Cluster::start(3);
    let client = cluster.client().await;
    for index in 0..3 {
        cluster.wait_alive(&client, index, 3).await;
    }
    let keys: Vec<String> = (0..300).map(|i| format!("wiped-{i}")).collect();
    for key in &keys {
        client
            .put(
                key.as_bytes(),
                key.as_bytes(),
                &Context::default(),
                &write(Quorum::All),
            )
            .await
            .unwrap_or_else(|error| panic!("w=all put of {key}: {error:?}"));
    }
    // The operator's brake first: with the two holders' background work
    // paused, the wiped node gets nothing back.
    for index in 0..2 {
        let address = cluster.nodes[index].address;
        client.set_background(Some(address), true).await.unwrap();
        let status = client.status(Some(address)).await.unwrap();
        assert!(status.background_paused, "node {index} did not pause");
    }
    cluster.nodes[2].kill();
    std::fs::remove_dir_all(&cluster.nodes[2].data_dir).unwrap();
    cluster.nodes[2].start();
    cluster.wait_alive(&client, 2, 3).await;
    let node_three = cluster.nodes[2].address;
    let held = async |keys: &[String]| {
        let mut held = 0;
        for key in keys {
            if client
                .inspect(node_three, key.as_bytes())
                .await
                .is_ok_and(|inspection| !inspection.state.siblings.is_empty())
            {
                held += 1;
            }
        }
        held
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        held(&keys).await,
        0,
        "the wiped node was refilled while its peers' background work was paused"
    );
    for index in 0..2 {
        let address = cluster.nodes[index].address;
        client.set_background(Some(address), false).await.unwrap();
    }
    let started = Instant::now();
    // Its directory is gone, so it starts empty; nothing but anti-entropy
    // can refill it: every write reached all three nodes before the kill (no
    // hints) and nobody reads (no read repair). Within a second of its start
    // it held 288 of the 300 keys again in one run, so emptiness is not
    // observable from here.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut missing: Vec<&String> = keys.iter().collect();
    while !missing.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} of {} keys still missing on the wiped node after 90 s",
            missing.len(),
            keys.len()
        );
        let mut still = Vec::new();
        for key in missing {
            let held = client
                .inspect(node_three, key.as_bytes())
                .await
                .is_ok_and(|inspection| {
                    inspection
                        .state
                        .values()
                        .any(|value| value.as_ref() == key.as_bytes())
                });
            if !held {
                still.push(key);
            }
        }
        missing = still;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "the wiped node held all {} keys again {:.1} s after its restart",
        keys.len(),
        started.elapsed().as_secs_f64()
    );
}

/// A data directory written in another stored layout (here layout 1, data
/// keys without their bucket) is refused at start with an error that says
/// so, and left as it was: the node does not read it as its own.
#[test]
fn a_store_in_an_older_layout_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    certificates::make_ca(&certs).unwrap();
    certificates::make_leaf(&certs, "node-1", Kind::Node, &[]).unwrap();
    let data_dir = dir.path().join("node-1");
    let db_path = data_dir.join("db");
    // Layout 1: 0x00 ‖ partition ‖ user key, and no layout record.
    let old_key = [0x00, 0, 0, 0, 5, b'k', b'e', b'y'];
    {
        let db = shoal_storage::Db::open(&db_path, shoal_storage::Options::default()).unwrap();
        db.put(
            &old_key,
            b"a state",
            &shoal_storage::WriteOptions::default(),
        )
        .unwrap();
        db.close().unwrap();
    }
    let config = dir.path().join("node-1.toml");
    let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
    write_config(
        &config,
        1,
        address,
        &data_dir,
        &[address],
        &certs,
        "node-1",
        1,
    );
    let mut node = Node {
        id: 1,
        address,
        data_dir: data_dir.clone(),
        config,
        process: None,
    };
    node.start();
    let mut child = node.process.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "shoald ran on a store it cannot read"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(data_dir.with_extension("log")).unwrap();
    assert!(log.contains("stored layout 1"), "{log}");
    // The data is still there, untouched.
    let db = shoal_storage::Db::open(&db_path, shoal_storage::Options::default()).unwrap();
    assert_eq!(db.get(&old_key).unwrap().as_deref(), Some(&b"a state"[..]));
}

/// The value of the counter or gauge `name` in a node's `/metrics`.
fn metric(address: SocketAddr, name: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

/// The client library tells a node, with each key-value request, how long
/// it waited for its previous answer from that node: what admission
/// control judges (`cluster/src/admission.rs`). One node and 300 puts one
/// after another give exactly 299 reports: the first has none to give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_reports_its_waits_to_the_node() {
    let mut cluster = Cluster::start(1);
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap();
    // Started again, with its metrics served.
    cluster.nodes[0].kill();
    let config = std::fs::read_to_string(&cluster.nodes[0].config).unwrap();
    std::fs::write(
        &cluster.nodes[0].config,
        format!("metrics_listen = \"{metrics}\"\n{config}"),
    )
    .unwrap();
    cluster.nodes[0].start();
    let client = cluster.client().await;
    cluster.wait_alive(&client, 0, 1).await;
    for i in 0..300 {
        let key = format!("reported-{i}");
        client
            .put(
                key.as_bytes(),
                b"v",
                &Context::default(),
                &WriteOptions::default(),
            )
            .await
            .unwrap_or_else(|error| panic!("put of {key}: {error:?}"));
    }
    let name = "shoal_admission_client_reports_total";
    wait_for("the node's count of client reports", || async {
        metric(metrics, name) == Some(299)
    })
    .await;
}

/// A node started without its data holds a ring of itself alone until it
/// hears from its seeds; under that ring it would coordinate every key as
/// its only primary. Here node 3 is wiped and started with a seed nobody
/// answers: it refuses key requests as a node still joining (the client
/// would go to another node), and once started with its real seed it
/// learns the cluster's ring and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_serves_no_key_before_it_learns_the_clusters_ring() {
    let mut cluster = Cluster::start(3);
    let client = cluster.client().await;
    for index in 0..3 {
        cluster.wait_alive(&client, index, 3).await;
    }
    client
        .put(b"joined", b"v", &Context::default(), &write(Quorum::All))
        .await
        .unwrap();
    cluster.nodes[2].kill();
    std::fs::remove_dir_all(&cluster.nodes[2].data_dir).unwrap();
    let config = std::fs::read_to_string(&cluster.nodes[2].config).unwrap();
    let seed = cluster.nodes[0].address.to_string();
    let nobody = SocketAddr::from(([127, 0, 0, 1], free_port())).to_string();
    std::fs::write(&cluster.nodes[2].config, config.replace(&seed, &nobody)).unwrap();
    cluster.nodes[2].start();
    // A client that knows node 3 alone.
    let mut config = cluster.client_config();
    config.nodes = vec![cluster.nodes[2].address];
    let alone = connect(config.clone()).await;
    for quorum in [Quorum::One, Quorum::Quorum] {
        match alone.get(b"joined", &read(quorum)).await {
            Err(Error::NodeUnavailable(reason)) => assert!(reason.contains("joining"), "{reason}"),
            other => panic!("a node without its cluster's ring answered {other:?}"),
        }
    }
    match alone
        .put(b"alone", b"v", &Context::default(), &write(Quorum::One))
        .await
    {
        Err(Error::NodeUnavailable(reason)) => assert!(reason.contains("joining"), "{reason}"),
        other => panic!("a node without its cluster's ring answered {other:?}"),
    }
    // Started again with its seed, it joins and serves.
    cluster.nodes[2].kill();
    let config_text = std::fs::read_to_string(&cluster.nodes[2].config).unwrap();
    std::fs::write(
        &cluster.nodes[2].config,
        config_text.replace(&nobody, &seed),
    )
    .unwrap();
    cluster.nodes[2].start();
    cluster.wait_alive(&client, 2, 3).await;
    let alone = connect(config).await;
    wait_for("node 3 to serve a quorum read", || async {
        alone
            .get(b"joined", &read(Quorum::Quorum))
            .await
            .is_ok_and(|value| value.siblings == vec![bytes::Bytes::from_static(b"v")])
    })
    .await;
}
