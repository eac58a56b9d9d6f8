//! `shoal-server`: the Shoal node, `shoald` (design §9).
//!
//! The wiring of one node: the configuration ([`config`]), the storage engine
//! behind the cluster's `Store` trait ([`store`]), the QUIC endpoint from
//! `shoal_cluster::transport`, and the one event loop that drives the cluster
//! core and SWIM ([`event_loop`]); plus development certificates
//! ([`certificates`]) and Prometheus metrics ([`metrics`]).
//!
//! Threads: one thread runs a current-thread tokio runtime with the endpoint
//! (QUIC, TLS, streams), the metrics listener and the event loop, so a
//! request crosses no thread boundary between its stream and the core; the
//! storage engine's flush, compaction and log-sync threads do the rest. On
//! two cores this served 1.9× the no-op requests of a separate loop thread
//! (182k vs 95k per second at 64 in flight, `docs/bench.md`). The cost: a
//! store call blocks the thread while it runs — a write asked to be durable
//! waits for its fsync with everything else waiting too.

pub mod certificates;
pub mod config;
pub mod event_loop;
pub mod metrics;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use shoal_cluster::id::NodeId;
use shoal_cluster::transport::endpoint::{Endpoint, EndpointConfig};
use tokio::sync::mpsc;

use crate::config::NodeConfig;
use crate::event_loop::{Control, EventLoop, Parts};
use crate::metrics::MetricsBoard;
use crate::store::DbStore;

/// How to start beyond the configuration file.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Enter the ring as joining (owning nothing) instead of active.
    pub join_as_joining: bool,
}

/// Runs a node until SIGTERM or SIGINT, then drains and exits.
pub fn run(config: NodeConfig, options: RunOptions) -> anyhow::Result<()> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let storage_options = shoal_storage::Options {
        sync_mode: config.sync_mode()?,
        memtable_size_bytes: config.storage.memtable_size_bytes,
        key_size_max_bytes: config.limits.key_size_max_bytes + 64,
        value_size_max_bytes: config.limits.key_state_size_max_bytes + (64 << 10),
        ..shoal_storage::Options::default()
    };
    let db_path = config.data_dir.join("db");
    let db = shoal_storage::Db::open(&db_path, storage_options)
        .with_context(|| format!("opening the store at {}", db_path.display()))?;
    let mut store = DbStore::new(db);
    shoal_cluster::replica::check_layout(&mut store)
        .and_then(|()| store.flush().map_err(Into::into))
        .with_context(|| format!("checking the store at {}", db_path.display()))?;

    // One thread drives all QUIC IO and the event loop: on few cores a
    // current-thread runtime serves about twice the requests of a
    // work-stealing one (../shared/peers.md, "QUIC floor").
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let generation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |elapsed| elapsed.as_micros() as u64);
    let metrics = Arc::new(MetricsBoard::default());
    let (inbound_sender, inbound) = mpsc::channel(config.limits.inbound_queue_max);
    let (control_sender, control) = mpsc::channel(4);
    let endpoint = runtime.block_on(async {
        let endpoint = Endpoint::bind(
            EndpointConfig {
                node: NodeId(config.node_id),
                generation,
                address: config.listen,
                tls: config.tls_files(),
                require_client_certificates: config.tls.require_client_certificates,
                server_name: config.tls.server_name.clone(),
                limits: config.transport_limits(),
                frame_size_max_bytes: config.limits.frame_size_max_bytes,
                peer_queue_max: config.limits.peer_queue_max,
                peers_max: 1024,
                connections_max: config.limits.connections_max,
                request_read_timeout: Duration::from_secs(10),
                response_timeout: Duration::from_secs(120),
            },
            inbound_sender,
        )?;
        if let Some(address) = config.metrics_listen {
            metrics::serve(address, metrics.clone())
                .await
                .with_context(|| format!("serving metrics on {address}"))?;
        }
        let signals = control_sender.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = signals.send(Control::Shutdown).await;
        });
        anyhow::Ok(endpoint)
    })?;

    let event_loop = EventLoop::new(Parts {
        config: config.clone(),
        store,
        endpoint: endpoint.clone(),
        inbound,
        control,
        generation,
        metrics,
        join_as_joining: options.join_as_joining,
    })?;
    // The line scripts wait for.
    println!(
        "shoald: node {} listening on {} (data in {})",
        config.node_id,
        endpoint.local_address(),
        config.data_dir.display()
    );
    // The event loop runs on the same thread as the endpoint: a request
    // crosses no thread boundary between its stream and the core.
    let store = runtime.block_on(event_loop.run())?;
    drop(control_sender);
    // Connections close first: a request sent on one after the loop ended
    // would otherwise wait, unanswered, for as long as the store takes to
    // close (a memtable flush).
    runtime.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.close()).await;
    });
    store.close().context("closing the store")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
