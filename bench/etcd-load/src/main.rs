//! `etcd-load ENDPOINTS CLIENTS OPS`: CLIENTS concurrent clients each put
//! 100-byte values under distinct keys until OPS puts are done; prints the
//! rate and latency percentiles, the last line as JSON like shoal-bench's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arguments: Vec<String> = std::env::args().collect();
    if arguments.len() != 4 {
        eprintln!("usage: etcd-load ENDPOINT[,ENDPOINT...] CLIENTS OPS");
        std::process::exit(2);
    }
    let endpoints: Vec<String> = arguments[1].split(',').map(str::to_string).collect();
    let clients: usize = arguments[2].parse()?;
    let ops: u64 = arguments[3].parse()?;
    let value = vec![b'x'; 100];
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..clients {
        // One connection per client, spread over the members.
        let endpoint = endpoints[worker % endpoints.len()].clone();
        let mut client = etcd_client::Client::connect([endpoint], None).await?;
        let next = next.clone();
        let value = value.clone();
        workers.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= ops {
                    return histogram;
                }
                let begun = Instant::now();
                client
                    .put(format!("key{index:012}"), value.clone(), None)
                    .await
                    .expect("put");
                histogram.saturating_record((begun.elapsed().as_micros() as u64).max(1));
            }
        }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for worker in workers {
        histogram.add(worker.await?)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let rate = histogram.len() as f64 / seconds;
    println!(
        "etcd put: {} ops, {clients} clients, {rate:.0} ops/s, p50 {} µs, p99 {} µs",
        histogram.len(),
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99)
    );
    println!(
        "{}",
        serde_json::json!({"workload": "etcd-put", "ops": histogram.len(), "ops_per_sec": rate.round(),
            "concurrency": clients, "p50_us": histogram.value_at_quantile(0.5),
            "p99_us": histogram.value_at_quantile(0.99), "p999_us": histogram.value_at_quantile(0.999)})
    );
    Ok(())
}
