//! Prometheus metrics over HTTP on a local port (design §9).
//!
//! The event loop records each answered request (operation, outcome,
//! latency) and, once a second, publishes the cores' counters; the HTTP task
//! renders the text exposition format on `GET /metrics`. The HTTP side reads
//! at most 8 KiB of request head with a deadline, so a stalled scraper holds
//! nothing for long.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_cluster::membership;
use shoal_cluster::node::{BackgroundWork, Metrics as NodeMetrics};
use shoal_cluster::transport::endpoint::EndpointStats;
use shoal_storage::DbStats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client operation, for per-operation series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A get.
    Get,
    /// A put.
    Put,
    /// A delete.
    Delete,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::Put => "put",
            Operation::Delete => "delete",
        }
    }
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS_SECONDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Default, Clone)]
struct Series {
    ok: u64,
    failed: u64,
    buckets: [u64; BUCKETS_SECONDS.len()],
    sum_seconds: f64,
}

#[derive(Debug, Default)]
struct Board {
    requests: [Series; 3],
    cores: String,
}

/// The event loop's own counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoopStats {
    /// Messages to members whose address is unknown.
    pub unroutable_messages: u64,
    /// Turns longer than the slow-turn bound.
    pub slow_turns: u64,
    /// The longest turn since the last publication.
    pub longest_turn_micros: u64,
}

/// The metrics shared between the event loop and the HTTP endpoint.
#[derive(Debug, Default)]
pub struct MetricsBoard {
    board: Mutex<Board>,
}

fn lock(board: &Mutex<Board>) -> std::sync::MutexGuard<'_, Board> {
    // Every critical section leaves the board consistent.
    board
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MetricsBoard {
    /// Records one answered client request.
    pub fn record(&self, operation: Operation, ok: bool, latency: Duration) {
        let mut board = lock(&self.board);
        let series = &mut board.requests[operation as usize];
        if ok {
            series.ok += 1;
        } else {
            series.failed += 1;
        }
        let seconds = latency.as_secs_f64();
        series.sum_seconds += seconds;
        for (bucket, bound) in series.buckets.iter_mut().zip(BUCKETS_SECONDS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }

    /// Publishes the cores' counters (called once a second by the loop).
    #[allow(clippy::too_many_arguments)]
    pub fn publish_cores(
        &self,
        node: &NodeMetrics,
        swim: &membership::Stats,
        live_members: usize,
        suspect_members: usize,
        hint_bytes: u64,
        requests_in_flight: usize,
        event_loop: &LoopStats,
        storage: &DbStats,
        endpoint: &EndpointStats,
    ) {
        let mut text = String::new();
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(text, "# HELP shoal_{name} {help}");
            let _ = writeln!(text, "# TYPE shoal_{name} counter");
            let _ = writeln!(text, "shoal_{name} {value}");
        };
        counter(
            "forwarded_total",
            "Requests forwarded to a primary.",
            node.forwarded,
        );
        counter(
            "quorum_failures_total",
            "Requests that failed their quorum.",
            node.quorum_failures,
        );
        counter(
            "busy_rejections_total",
            "Requests refused as busy.",
            node.busy_rejections,
        );
        counter(
            "invalid_requests_total",
            "Requests refused as invalid.",
            node.invalid_requests,
        );
        counter(
            "gets_coordinated_total",
            "Gets coordinated here.",
            node.gets_coordinated,
        );
        counter(
            "writes_coordinated_total",
            "Puts and deletes coordinated here.",
            node.writes_coordinated,
        );
        counter(
            "read_siblings_total",
            "Siblings returned by successful gets coordinated here, summed.",
            node.read_siblings,
        );
        counter(
            "reads_with_siblings_total",
            "Successful gets coordinated here that returned more than one sibling.",
            node.reads_with_siblings,
        );
        counter(
            "read_repairs_total",
            "Read repairs sent.",
            node.read_repairs,
        );
        counter(
            "anti_entropy_rounds_total",
            "Anti-entropy exchanges started (a partition's root sent).",
            node.anti_entropy_rounds,
        );
        counter(
            "anti_entropy_trees_differed_total",
            "Anti-entropy exchanges whose trees differed.",
            node.anti_entropy_trees_differed,
        );
        counter(
            "anti_entropy_keys_sent_total",
            "Key states sent by anti-entropy.",
            node.anti_entropy_keys_sent,
        );
        counter(
            "anti_entropy_steps_dropped_total",
            "Anti-entropy steps dropped because too many waited for the byte budget.",
            node.anti_entropy_steps_dropped,
        );
        counter(
            "admission_throttles_total",
            "Times foreground latency lowered the background rate (a step down or a halving).",
            node.admission_throttles,
        );
        counter(
            "admission_probes_total",
            "Intervals in which background work held still so that foreground latency taught admission control its baseline.",
            node.admission_probes,
        );
        counter(
            "admission_client_reports_total",
            "Client requests that reported their client's wait for its previous answer from this node (what admission control judges).",
            node.admission_client_reports,
        );
        counter(
            "moves_completed_total",
            "Partition moves to this node finished and recorded in the ring.",
            node.moves_completed,
        );
        counter(
            "move_records_total",
            "Ring changes that recorded finished moves (several at once when close together).",
            node.move_records,
        );
        counter(
            "move_keys_received_total",
            "Key states received by pulls of moving partitions.",
            node.move_keys_received,
        );
        counter(
            "move_bytes_received_total",
            "Bytes of key states received by pulls of moving partitions.",
            node.move_bytes_received,
        );
        counter(
            "background_bytes_total",
            "Bytes of background work done (states read, sent or merged), as charged to its budget.",
            node.background_bytes_spent(),
        );
        counter(
            "move_asks_deferred_total",
            "Pull asks left unanswered because the background budget was spent or paused.",
            node.move_asks_deferred,
        );
        counter(
            "move_keys_sent_total",
            "Key states sent to new owners pulling a moving partition.",
            node.move_keys_sent,
        );
        counter(
            "tombstones_reaped_total",
            "Tombstones deleted once every primary held them past the grace period.",
            node.tombstones_reaped,
        );
        counter(
            "stale_keys_deleted_total",
            "Keys deleted from this node's copies of partitions that moved away.",
            node.stale_keys_deleted,
        );
        counter(
            "hints_stored_total",
            "Hints stored for other nodes.",
            node.hints_stored,
        );
        counter(
            "hints_replayed_total",
            "Hints delivered and deleted.",
            node.hints_replayed,
        );
        counter(
            "hints_dropped_total",
            "Hints dropped (full, expired or corrupt).",
            node.hints_dropped_full + node.hints_dropped_expired + node.hints_dropped_corrupt,
        );
        counter(
            "store_failures_total",
            "Store operations that failed.",
            node.store_failures,
        );
        counter(
            "malformed_messages_total",
            "Peer messages dropped as malformed.",
            node.malformed_messages + endpoint.malformed_frames.load(Ordering::Relaxed),
        );
        counter(
            "unroutable_messages_total",
            "Messages to members of unknown address.",
            event_loop.unroutable_messages,
        );
        counter(
            "event_loop_slow_turns_total",
            "Turns of the node's event loop longer than 50 ms (each logged with its phases).",
            event_loop.slow_turns,
        );
        counter(
            "peer_messages_sent_total",
            "Peer messages queued to writers.",
            endpoint.messages_sent.load(Ordering::Relaxed),
        );
        counter(
            "peer_messages_dropped_total",
            "Peer messages dropped (queue full, peer unreachable).",
            endpoint.messages_dropped.load(Ordering::Relaxed),
        );
        counter(
            "peer_messages_received_total",
            "Peer messages received.",
            endpoint.messages_received.load(Ordering::Relaxed),
        );
        counter(
            "datagrams_dropped_total",
            "SWIM datagrams dropped.",
            endpoint.datagrams_dropped.load(Ordering::Relaxed),
        );
        counter(
            "connections_refused_total",
            "Connections refused.",
            endpoint.connections_refused.load(Ordering::Relaxed),
        );
        counter(
            "client_busy_total",
            "Client requests refused because the loop's queue was full.",
            endpoint.client_busy.load(Ordering::Relaxed),
        );
        counter("swim_probes_total", "SWIM probes started.", swim.probes);
        counter(
            "swim_probe_failures_total",
            "SWIM probes without ack.",
            swim.probe_failures,
        );
        counter(
            "swim_suspicions_total",
            "Suspicions raised by this node.",
            swim.suspicions_raised,
        );
        counter(
            "swim_refutations_total",
            "Suspicions of this node refuted.",
            swim.refutations,
        );
        counter(
            "storage_flushes_total",
            "Memtables flushed.",
            storage.flushes,
        );
        counter(
            "storage_compactions_total",
            "Compactions run.",
            storage.compactions,
        );
        counter(
            "storage_compaction_bytes_written_total",
            "Bytes written by compactions.",
            storage.compaction_bytes_written,
        );
        counter(
            "storage_write_stalls_total",
            "Writes that waited for background work.",
            storage.write_stalls,
        );
        counter(
            "storage_write_stall_microseconds_total",
            "Time writers spent stalled.",
            storage.write_stall_micros,
        );
        counter(
            "storage_write_slowdowns_total",
            "Writes delayed a millisecond by a full level 0.",
            storage.write_slowdowns,
        );
        counter("storage_wal_syncs_total", "Log fsyncs.", storage.wal_syncs);
        let _ = writeln!(
            text,
            "# HELP shoal_background_work_bytes_total Bytes charged to the background budget, by kind of work."
        );
        let _ = writeln!(text, "# TYPE shoal_background_work_bytes_total counter");
        for work in BackgroundWork::ALL {
            let _ = writeln!(
                text,
                "shoal_background_work_bytes_total{{work=\"{}\"}} {}",
                work.name(),
                node.background_bytes_by_work[work as usize]
            );
        }
        let mut gauge = |name: &str, help: &str, value: u64| {
            let _ = writeln!(text, "# HELP shoal_{name} {help}");
            let _ = writeln!(text, "# TYPE shoal_{name} gauge");
            let _ = writeln!(text, "shoal_{name} {value}");
        };
        gauge(
            "swim_live_members",
            "Members believed alive (self excluded).",
            live_members as u64,
        );
        gauge(
            "swim_suspect_members",
            "Members suspected now.",
            suspect_members as u64,
        );
        gauge("hint_bytes", "Bytes of hints held.", hint_bytes);
        gauge(
            "event_loop_longest_turn_microseconds",
            "The longest turn of the node's event loop in the last second.",
            event_loop.longest_turn_micros,
        );
        gauge(
            "background_bytes_per_second",
            "Bytes per second background work may use now (admission control).",
            node.background_bytes_per_second,
        );
        gauge(
            "admission_baseline_p99_microseconds",
            "Admission control's baseline: foreground p99 without background work (0 until learnt), of the latencies judged.",
            node.admission_baseline_p99_micros,
        );
        gauge(
            "admission_last_p99_microseconds",
            "Foreground p99 of admission control's last interval with enough requests.",
            node.admission_last_p99_micros,
        );
        gauge(
            "admission_judged_by_clients",
            "1 when admission control judged the latencies clients reported, 0 when the node's own measure (too few reports).",
            u64::from(node.admission_judged_by_clients),
        );
        gauge(
            "background_paused",
            "1 while an operator has paused this node's background work (shoal background pause).",
            u64::from(node.background_paused),
        );
        gauge(
            "moves_pulling",
            "Pulls (partition, source) of partitions moving to this node still under way.",
            node.moves_pulling,
        );
        gauge(
            "requests_in_flight",
            "Requests coordinated or forwarded now.",
            requests_in_flight as u64,
        );
        gauge(
            "connections_open",
            "QUIC connections open.",
            endpoint.connections_open.load(Ordering::Relaxed) as u64,
        );
        gauge(
            "storage_memtable_bytes",
            "Bytes in the mutable memtable.",
            storage.memtable_bytes as u64,
        );
        for (level, (tables, bytes)) in storage
            .level_tables
            .iter()
            .zip(&storage.level_bytes)
            .enumerate()
        {
            let _ = writeln!(
                text,
                "shoal_storage_level_tables{{level=\"{level}\"}} {tables}"
            );
            let _ = writeln!(
                text,
                "shoal_storage_level_bytes{{level=\"{level}\"}} {bytes}"
            );
        }
        lock(&self.board).cores = text;
    }

    /// The text exposition of everything.
    pub fn render(&self) -> String {
        let board = lock(&self.board);
        let mut text = String::new();
        let _ = writeln!(
            text,
            "# HELP shoal_requests_total Client requests answered."
        );
        let _ = writeln!(text, "# TYPE shoal_requests_total counter");
        for operation in [Operation::Get, Operation::Put, Operation::Delete] {
            let series = &board.requests[operation as usize];
            let name = operation.name();
            let _ = writeln!(
                text,
                "shoal_requests_total{{op=\"{name}\",result=\"ok\"}} {}",
                series.ok
            );
            let _ = writeln!(
                text,
                "shoal_requests_total{{op=\"{name}\",result=\"failed\"}} {}",
                series.failed
            );
        }
        let _ = writeln!(
            text,
            "# HELP shoal_request_duration_seconds Latency of answered client requests."
        );
        let _ = writeln!(text, "# TYPE shoal_request_duration_seconds histogram");
        for operation in [Operation::Get, Operation::Put, Operation::Delete] {
            let series = &board.requests[operation as usize];
            let name = operation.name();
            for (bucket, bound) in series.buckets.iter().zip(BUCKETS_SECONDS) {
                let _ = writeln!(
                    text,
                    "shoal_request_duration_seconds_bucket{{op=\"{name}\",le=\"{bound}\"}} {bucket}"
                );
            }
            let count = series.ok + series.failed;
            let _ = writeln!(
                text,
                "shoal_request_duration_seconds_bucket{{op=\"{name}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                text,
                "shoal_request_duration_seconds_sum{{op=\"{name}\"}} {}",
                series.sum_seconds
            );
            let _ = writeln!(
                text,
                "shoal_request_duration_seconds_count{{op=\"{name}\"}} {count}"
            );
        }
        text.push_str(&board.cores);
        text
    }
}

/// Serves `GET /metrics` on `address` until the process ends.
pub async fn serve(address: SocketAddr, board: Arc<MetricsBoard>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let board = board.clone();
            tokio::spawn(async move {
                let mut head = Vec::with_capacity(1024);
                let mut chunk = [0u8; 1024];
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return false,
                            Ok(count) => head.extend_from_slice(&chunk[..count]),
                        }
                    }
                    true
                })
                .await;
                if !matches!(read, Ok(true)) {
                    return;
                }
                let (status, body) = if head.starts_with(b"GET /metrics ") {
                    ("200 OK", board.render())
                } else {
                    ("404 Not Found", "try GET /metrics\n".to_string())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cores_counters_are_published() {
        let board = MetricsBoard::default();
        let node = NodeMetrics {
            gets_coordinated: 10,
            read_siblings: 14,
            reads_with_siblings: 3,
            background_bytes_by_work: {
                let mut by_work = [0; BackgroundWork::ALL.len()];
                by_work[BackgroundWork::AeMerge as usize] = 4000;
                by_work[BackgroundWork::TreeBuild as usize] = 96;
                by_work
            },
            ..NodeMetrics::default()
        };
        board.publish_cores(
            &node,
            &Default::default(),
            3,
            0,
            0,
            0,
            &LoopStats::default(),
            &DbStats::default(),
            &Default::default(),
        );
        let text = board.render();
        for line in [
            "shoal_gets_coordinated_total 10",
            "shoal_read_siblings_total 14",
            "shoal_reads_with_siblings_total 3",
            "shoal_background_bytes_total 4096",
            "shoal_background_work_bytes_total{work=\"ae_merge\"} 4000",
            "shoal_background_work_bytes_total{work=\"tree_build\"} 96",
            "shoal_background_work_bytes_total{work=\"tombstone_sweep\"} 0",
        ] {
            assert!(text.lines().any(|found| found == line), "{line}: {text}");
        }
    }

    #[test]
    fn recorded_requests_appear_in_counters_and_cumulative_buckets() {
        let board = MetricsBoard::default();
        board.record(Operation::Put, true, Duration::from_micros(300));
        board.record(Operation::Put, false, Duration::from_millis(30));
        let text = board.render();
        assert!(
            text.contains("shoal_requests_total{op=\"put\",result=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("shoal_requests_total{op=\"put\",result=\"failed\"} 1"));
        assert!(text.contains("shoal_request_duration_seconds_bucket{op=\"put\",le=\"0.0005\"} 1"));
        assert!(text.contains("shoal_request_duration_seconds_bucket{op=\"put\",le=\"0.05\"} 2"));
        assert!(text.contains("shoal_request_duration_seconds_count{op=\"put\"} 2"));
    }
}
