//! The request path's floor (issue 5's benchmark): a no-op request through
//! the client library and a node (`shoal-bench ping`), against the same
//! framed request on a raw quinn connection to a server that only answers
//! (`shoal-bench quic-floor`). Both use the client protocol's framing, one
//! bidirectional stream per request, TLS 1.3 and the same transport limits,
//! so the difference is what the node adds: the endpoint's hand-off to the
//! event loop, the loop, and the answer's way back.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use bytes::BytesMut;
use hdrhistogram::Histogram;
use shoal_client::{Client, ClientConfig};
use shoal_cluster::protocol::{
    self, ALPN_CLIENT, ClientRequest, ClientResponse, FRAME_CLIENT_REQUEST, FRAME_CLIENT_RESPONSE,
};
use shoal_cluster::transport::call;
use shoal_cluster::transport::channel::Channel;
use shoal_cluster::transport::frame;
use shoal_cluster::transport::tls::{self, TlsFiles, TransportLimits};

const FRAME_MAX: u32 = 1 << 20;

async fn drive<F, Fut>(concurrency: usize, ops: u64, label: &str, call: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let call = call.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            while next.fetch_add(1, Ordering::Relaxed) < ops {
                let begun = Instant::now();
                call().await?;
                histogram.saturating_record((begun.elapsed().as_micros() as u64).max(1));
            }
            anyhow::Ok(histogram)
        }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for worker in workers {
        histogram.add(worker.await.context("a worker panicked")??)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let ops_per_sec = histogram.len() as f64 / seconds.max(1e-9);
    println!(
        "{label}: {} requests at {concurrency} in flight in {seconds:.2} s = {ops_per_sec:.0} req/s, p50 {} µs, p99 {} µs",
        histogram.len(),
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99)
    );
    println!(
        "{}",
        serde_json::json!({
            "workload": label,
            "ops": histogram.len(),
            "ops_per_sec": ops_per_sec.round(),
            "concurrency": concurrency,
            "p50_us": histogram.value_at_quantile(0.5),
            "p99_us": histogram.value_at_quantile(0.99),
            "max_us": histogram.max(),
        })
    );
    Ok(())
}

/// No-op requests through the client library and the node at `node`.
pub async fn ping(
    config: &Path,
    node: Option<SocketAddr>,
    concurrency: usize,
    ops: u64,
) -> anyhow::Result<()> {
    let config = ClientConfig::load(config).map_err(|error| anyhow::anyhow!("{error}"))?;
    let node = node
        .or_else(|| config.nodes.first().copied())
        .context("no node")?;
    let client = Arc::new(
        Client::connect(config)
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?,
    );
    drive(concurrency, ops, "ping", move || {
        let client = client.clone();
        async move {
            client
                .ping(node)
                .await
                .map_err(|error| anyhow::anyhow!("{error}"))
        }
    })
    .await
}

fn write_certificates(dir: &Path) -> anyhow::Result<TlsFiles> {
    std::fs::create_dir_all(dir)?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca = ca_params.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["shoal".to_string()])?;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let certificate = params.signed_by(&key, &ca, &ca_key)?;
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        certificate: Some(dir.join("server.pem")),
        key: Some(dir.join("server.key")),
    };
    std::fs::write(&files.ca, ca.pem())?;
    std::fs::write(dir.join("server.pem"), certificate.pem())?;
    std::fs::write(dir.join("server.key"), key.serialize_pem())?;
    Ok(files)
}

/// Answers every request frame on a stream with a `Pong` frame, writing
/// the answers to each chunk read in one write.
async fn answer(mut send: quinn::SendStream, mut receive: quinn::RecvStream) -> anyhow::Result<()> {
    let mut buffer = BytesMut::new();
    let mut out = BytesMut::new();
    while let Some(chunk) = receive.read_chunk(64 << 10, true).await? {
        buffer.extend_from_slice(&chunk.bytes);
        while let Some(request) = frame::decode(&mut buffer, FRAME_MAX)? {
            let _: ClientRequest = protocol::decode_frame(&request, FRAME_CLIENT_REQUEST)?;
            protocol::encode_frame(
                FRAME_CLIENT_RESPONSE,
                request.request_id,
                &ClientResponse::Pong,
                FRAME_MAX,
                &mut out,
            )?;
        }
        if !out.is_empty() {
            send.write_all(&out).await?;
            out.clear();
        }
    }
    send.finish()?;
    Ok(())
}

/// The same framed requests against an in-process quinn server that only
/// answers: one stream per request, or (`framed`) all requests multiplexed
/// on one long-lived stream, as the client library sends them.
pub async fn quic_floor(concurrency: usize, ops: u64, framed: bool) -> anyhow::Result<()> {
    let dir: PathBuf = std::env::temp_dir().join(format!("shoal-floor-{}", std::process::id()));
    let files = write_certificates(&dir)?;
    let limits = TransportLimits::default();
    let server_config = tls::server_config(&files, false, &limits)?;
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;
    let address = server.local_addr()?;
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((send, receive)) = connection.accept_bi().await {
                    tokio::spawn(answer(send, receive));
                }
            });
        }
    });
    let client_files = TlsFiles {
        ca: files.ca.clone(),
        certificate: None,
        key: None,
    };
    let client_config = tls::client_config(&client_files, ALPN_CLIENT, &limits)?;
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let connection = endpoint
        .connect_with(client_config, address, "shoal")?
        .await?;
    let _ = std::fs::remove_dir_all(&dir);
    if framed {
        let channel = Channel::open(&connection, 1024, FRAME_MAX).await?;
        return drive(concurrency, ops, "quic-floor-framed", move || {
            let channel = channel.clone();
            async move {
                match channel.call(&ClientRequest::Ping).await? {
                    ClientResponse::Pong => Ok(()),
                    other => anyhow::bail!("unexpected {other:?}"),
                }
            }
        })
        .await;
    }
    let next_id = Arc::new(AtomicU64::new(1));
    drive(
        concurrency,
        ops,
        "quic-floor-stream-per-request",
        move || {
            let connection = connection.clone();
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            async move {
                match call::call(&connection, id, &ClientRequest::Ping, FRAME_MAX).await? {
                    ClientResponse::Pong => Ok(()),
                    other => anyhow::bail!("unexpected {other:?}"),
                }
            }
        },
    )
    .await
}
