//! `shoal-bench check`: a Jepsen-style checker on real processes (design
//! §10, tier 3).
//!
//! It drives a cluster started by `scripts/cluster.sh` through the client
//! library while a nemesis injects faults on a seeded schedule — SIGKILL and
//! restart, SIGSTOP/SIGCONT, rolling restarts of every node, and (for
//! clusters started with `--netns`) network partitions — then heals
//! everything and checks:
//!
//! - **set workload**: workers add unique elements to a few keys by
//!   read-modify-write with contexts, merging siblings by union. Every
//!   acknowledged element must be present at the end (`lost` = 0).
//! - **registers**: blind writes and reads (at `--register-w`, `--register-r`;
//!   default `quorum` and `one`); a read that returns nothing as new as the
//!   last write acknowledged before the read began is stale (reported, not a
//!   failure: `r + w <= N` allows it, and so do sloppy quorums).
//! - after healing, hints drain and every key's primaries hold identical
//!   states within a deadline (`converged`, `converge_ms`);
//! - no node is down that the nemesis did not leave down (a decommissioned
//!   node is down by design);
//! - membership changes (`--topology add,decommission:1`) run while the
//!   workload and faults go on; nothing acknowledged may be lost to them;
//! - every failed request failed with one of the client's documented errors;
//! - no node ever held more hints than its per-target bound times the other
//!   nodes (sampled every second during the run).
//!
//! Output: a history file (one JSON line per operation) and, as the last
//! line of stdout, a JSON summary. Exit status 0 only if every check holds.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use shoal_client::{Client, ClientConfig, Context, Error, ReadOptions, WriteOptions};
use shoal_cluster::message::Quorum;
use shoal_cluster::partitioner::Partitioner;

/// What the checker needs.
#[derive(Debug, Clone)]
pub struct CheckParameters {
    /// The cluster's directory (as given to `scripts/cluster.sh --dir`).
    pub dir: PathBuf,
    /// `scripts/cluster.sh`.
    pub script: PathBuf,
    /// How long faults and load run.
    pub duration: Duration,
    /// Set keys.
    pub set_keys: usize,
    /// Register keys.
    pub register_keys: usize,
    /// Concurrent workers on the sets.
    pub set_workers: usize,
    /// Concurrent workers on the registers.
    pub register_workers: usize,
    /// Faults to draw from: kill, pause, partition.
    pub faults: Vec<String>,
    /// Membership changes spread over the run: `add`, `decommission:I`.
    pub topology: Vec<String>,
    /// Seconds between fault starts; each fault lasts about as long.
    pub fault_interval: Duration,
    /// How long convergence may take after healing.
    pub converge_deadline: Duration,
    /// The history file.
    pub history: PathBuf,
    /// Seed of the schedule.
    pub seed: u64,
    /// The nodes' `hint_bytes_per_target_max` (hint storage is checked against it).
    pub hint_bytes_per_target_max: u64,
    /// `r` of the register reads (stale reads are reported per `r`/`w`).
    pub register_r: Quorum,
    /// `w` of the register writes.
    pub register_w: Quorum,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The elements encoded in one sibling: one element per line.
fn elements(value: &[u8]) -> BTreeSet<String> {
    String::from_utf8_lossy(value)
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect()
}

fn encode(set: &BTreeSet<String>) -> Bytes {
    let mut text = String::new();
    for element in set {
        text.push_str(element);
        text.push('\n');
    }
    Bytes::from(text)
}

/// Whether an error is one the client documents for a failed request.
fn documented(error: &Error) -> bool {
    !matches!(error, Error::Protocol(_) | Error::Config(_))
}

struct History {
    file: Mutex<std::io::BufWriter<std::fs::File>>,
    started: Instant,
}

impl History {
    fn record(&self, entry: serde_json::Value) {
        let mut entry = entry;
        entry["ms"] = serde_json::json!(self.started.elapsed().as_millis() as u64);
        let mut file = lock(&self.file);
        let _ = writeln!(file, "{entry}");
    }
}

struct Tally {
    acked: Mutex<BTreeMap<String, BTreeSet<String>>>,
    failed: AtomicU64,
    undocumented: Mutex<Vec<String>>,
    register_reads: AtomicU64,
    stale_reads: AtomicU64,
    /// For each register key, the highest value whose write was acknowledged.
    register_acked: Mutex<BTreeMap<String, u64>>,
}

fn script(parameters: &CheckParameters, arguments: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(&parameters.script)
        .args(arguments)
        .arg("--dir")
        .arg(&parameters.dir)
        .output()
        .with_context(|| format!("running {}", parameters.script.display()))?;
    if !output.status.success() {
        bail!(
            "cluster.sh {}: {}",
            arguments.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn node_count(parameters: &CheckParameters) -> anyhow::Result<usize> {
    Ok(script(parameters, &["status"])?
        .lines()
        .filter(|line| line.starts_with("node "))
        .count())
}

async fn set_worker(
    client: Arc<Client>,
    worker: usize,
    keys: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    history: Arc<History>,
    seed: u64,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (worker as u64) << 20);
    let options = WriteOptions {
        w: Some(Quorum::Quorum),
        ..WriteOptions::default()
    };
    let mut counter = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("set-{}", rng.random_range(0..keys));
        counter += 1;
        let element = format!("w{worker}-{counter}");
        let added = element.clone();
        let result = client
            .update(key.as_bytes(), &options, move |siblings| {
                let mut union = BTreeSet::new();
                for sibling in siblings {
                    union.extend(elements(sibling));
                }
                union.insert(added);
                Some(encode(&union))
            })
            .await;
        match result {
            Ok(_) => {
                lock(&tally.acked)
                    .entry(key.clone())
                    .or_default()
                    .insert(element.clone());
                history.record(
                    serde_json::json!({"op": "add", "key": key, "element": element, "ok": true}),
                );
            }
            Err(error) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                if !documented(&error) {
                    lock(&tally.undocumented).push(error.to_string());
                }
                history.record(serde_json::json!({"op": "add", "key": key, "element": element, "ok": false, "error": error.to_string()}));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn register_worker(
    client: Arc<Client>,
    worker: usize,
    keys: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    history: Arc<History>,
    clock: Arc<AtomicU64>,
    seed: u64,
    (register_r, register_w): (Quorum, Quorum),
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xabcd ^ (worker as u64) << 24);
    let one = ReadOptions {
        r: Some(register_r),
        ..ReadOptions::default()
    };
    let write = WriteOptions {
        w: Some(register_w),
        ..WriteOptions::default()
    };
    while !stop.load(Ordering::Relaxed) {
        let key = format!("register-{}", rng.random_range(0..keys));
        if rng.random_bool(0.5) {
            let value = clock.fetch_add(1, Ordering::Relaxed) + 1;
            // A blind write: it becomes a sibling beside older values.
            match client
                .put(
                    key.as_bytes(),
                    value.to_string().as_bytes(),
                    &Context::default(),
                    &write,
                )
                .await
            {
                Ok(_) => {
                    let mut acked = lock(&tally.register_acked);
                    let entry = acked.entry(key.clone()).or_default();
                    *entry = (*entry).max(value);
                    history.record(
                        serde_json::json!({"op": "write", "key": key, "value": value, "ok": true}),
                    );
                }
                Err(error) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    if !documented(&error) {
                        lock(&tally.undocumented).push(error.to_string());
                    }
                    history.record(serde_json::json!({"op": "write", "key": key, "value": value, "ok": false, "error": error.to_string()}));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        } else {
            let floor = lock(&tally.register_acked).get(&key).copied().unwrap_or(0);
            match client.get(key.as_bytes(), &one).await {
                Ok(value) => {
                    let newest = value
                        .siblings
                        .iter()
                        .filter_map(|sibling| String::from_utf8_lossy(sibling).parse::<u64>().ok())
                        .max()
                        .unwrap_or(0);
                    tally.register_reads.fetch_add(1, Ordering::Relaxed);
                    let stale = newest < floor;
                    if stale {
                        tally.stale_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    history.record(serde_json::json!({"op": "read", "key": key, "newest": newest, "floor": floor, "stale": stale}));
                    // Keep the register small: supersede what was read.
                    if value.siblings.len() > 8 {
                        let _ = client
                            .put(
                                key.as_bytes(),
                                newest.to_string().as_bytes(),
                                &value.context,
                                &write,
                            )
                            .await;
                    }
                }
                Err(error) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    if !documented(&error) {
                        lock(&tally.undocumented).push(error.to_string());
                    }
                    history.record(serde_json::json!({"op": "read", "key": key, "ok": false, "error": error.to_string()}));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// Faults currently applied, so that healing undoes exactly them.
#[derive(Debug, Default)]
struct Faults {
    killed: BTreeSet<usize>,
    paused: BTreeSet<usize>,
    partitioned: bool,
}

fn heal(
    parameters: &CheckParameters,
    faults: &mut Faults,
    history: &History,
) -> anyhow::Result<()> {
    for node in std::mem::take(&mut faults.paused) {
        script(parameters, &["resume", &node.to_string()])?;
        history.record(serde_json::json!({"nemesis": "resume", "node": node}));
    }
    for node in std::mem::take(&mut faults.killed) {
        script(parameters, &["restart", &node.to_string()])?;
        history.record(serde_json::json!({"nemesis": "restart", "node": node}));
    }
    if std::mem::take(&mut faults.partitioned) {
        script(parameters, &["heal"])?;
        history.record(serde_json::json!({"nemesis": "heal"}));
    }
    Ok(())
}

/// The membership changes of `--topology`, spread evenly over the run;
/// returns the nodes decommissioned.
async fn topology(
    parameters: CheckParameters,
    history: Arc<History>,
) -> anyhow::Result<Vec<usize>> {
    let steps = parameters.topology.clone();
    let gap = parameters.duration.div_f64(steps.len() as f64 + 1.0);
    let mut decommissioned = Vec::new();
    for step in steps {
        tokio::time::sleep(gap).await;
        let arguments: Vec<String> = match step.split_once(':') {
            None if step == "add" => vec!["add".into()],
            Some(("decommission", node)) if node.parse::<usize>().is_ok() => {
                vec!["decommission".into(), node.into()]
            }
            _ => bail!("unknown topology step {step:?} (add or decommission:I)"),
        };
        history.record(serde_json::json!({"topology": step, "phase": "start"}));
        let started = Instant::now();
        let for_script = parameters.clone();
        let output = tokio::task::spawn_blocking(move || {
            let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
            script(&for_script, &arguments)
        })
        .await
        .context("a topology step panicked")??;
        if let Some(node) = step.strip_prefix("decommission:") {
            decommissioned.push(node.parse::<usize>()?);
        }
        history.record(serde_json::json!({
            "topology": step,
            "phase": "done",
            "step_ms": started.elapsed().as_millis() as u64,
            "output": output.trim(),
        }));
        eprintln!(
            "topology: {step} done in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(decommissioned)
}

async fn nemesis(
    parameters: CheckParameters,
    nodes: usize,
    stop: Arc<AtomicBool>,
    history: Arc<History>,
) -> anyhow::Result<u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(parameters.seed);
    let mut faults = Faults::default();
    let mut injected = 0u64;
    // A minority may be faulty at once, so quorums stay possible.
    let minority = (nodes - 1) / 2;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(parameters.fault_interval).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        heal(&parameters, &mut faults, &history)?;
        if parameters.faults.is_empty() || minority == 0 {
            continue;
        }
        let fault = &parameters.faults[rng.random_range(0..parameters.faults.len())];
        let count = rng.random_range(1..=minority);
        // Nodes that will be decommissioned are left alone: a removed node
        // cannot be restarted.
        let leaving: Vec<usize> = parameters
            .topology
            .iter()
            .filter_map(|step| step.strip_prefix("decommission:")?.parse().ok())
            .collect();
        let mut chosen: Vec<usize> = (1..=nodes).filter(|node| !leaving.contains(node)).collect();
        for index in (1..chosen.len()).rev() {
            chosen.swap(index, rng.random_range(0..=index));
        }
        chosen.truncate(count);
        match fault.as_str() {
            "kill" => {
                for node in &chosen {
                    script(&parameters, &["kill", &node.to_string()])?;
                    faults.killed.insert(*node);
                }
            }
            "pause" => {
                for node in &chosen {
                    script(&parameters, &["pause", &node.to_string()])?;
                    faults.paused.insert(*node);
                }
            }
            "rolling" => {
                // A rolling restart: every node in turn is killed and
                // restarted, one at a time.
                for node in 1..=nodes {
                    script(&parameters, &["kill", &node.to_string()])?;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    script(&parameters, &["restart", &node.to_string()])?;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                chosen = (1..=nodes).collect();
            }
            "partition" => {
                let minority_side: Vec<String> = chosen.iter().map(usize::to_string).collect();
                let majority_side: Vec<String> = (1..=nodes)
                    .filter(|node| !chosen.contains(node))
                    .map(|node| node.to_string())
                    .collect();
                let spec = format!("{}/{}", minority_side.join(","), majority_side.join(","));
                script(&parameters, &["partition", &spec])?;
                faults.partitioned = true;
            }
            other => bail!("unknown fault {other:?} (kill, pause, partition or rolling)"),
        }
        injected += 1;
        history.record(serde_json::json!({"nemesis": fault, "nodes": chosen}));
    }
    heal(&parameters, &mut faults, &history)?;
    Ok(injected)
}

/// Runs the check; returns whether every check held.
pub async fn check(parameters: CheckParameters) -> anyhow::Result<bool> {
    let nodes = node_count(&parameters)?;
    if nodes == 0 {
        bail!("no cluster in {}", parameters.dir.display());
    }
    let config = ClientConfig::load(&parameters.dir.join("client.toml"))
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let client = Arc::new(
        Client::connect(config)
            .await
            .map_err(|error| anyhow::anyhow!("connecting: {error}"))?,
    );
    let history = Arc::new(History {
        file: Mutex::new(std::io::BufWriter::new(
            std::fs::File::create(&parameters.history)
                .with_context(|| format!("creating {}", parameters.history.display()))?,
        )),
        started: Instant::now(),
    });
    let tally = Arc::new(Tally {
        acked: Mutex::new(BTreeMap::new()),
        failed: AtomicU64::new(0),
        undocumented: Mutex::new(Vec::new()),
        register_reads: AtomicU64::new(0),
        stale_reads: AtomicU64::new(0),
        register_acked: Mutex::new(BTreeMap::new()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let clock = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..parameters.set_workers {
        workers.push(tokio::spawn(set_worker(
            client.clone(),
            worker,
            parameters.set_keys.max(1),
            stop.clone(),
            tally.clone(),
            history.clone(),
            parameters.seed,
        )));
    }
    for worker in 0..parameters.register_workers {
        workers.push(tokio::spawn(register_worker(
            client.clone(),
            worker,
            parameters.register_keys.max(1),
            stop.clone(),
            tally.clone(),
            history.clone(),
            clock.clone(),
            parameters.seed,
            (parameters.register_r, parameters.register_w),
        )));
    }
    let topology_task = tokio::spawn(topology(parameters.clone(), history.clone()));
    let nemesis_task = tokio::spawn(nemesis(
        parameters.clone(),
        nodes,
        stop.clone(),
        history.clone(),
    ));
    // Hint storage is sampled on every node throughout the run: each node
    // bounds it per target, so no node may ever hold more than that bound
    // times the other nodes.
    let hint_sampler = {
        let client = client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut peak = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (_, address) in client.member_addresses() {
                    let status = tokio::time::timeout(
                        Duration::from_millis(500),
                        client.status(Some(address)),
                    )
                    .await;
                    if let Ok(Ok(status)) = status {
                        peak = peak.max(status.hint_bytes);
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            peak
        })
    };
    tokio::time::sleep(parameters.duration).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.context("a worker panicked")?;
    }
    let faults = nemesis_task.await.context("the nemesis panicked")??;
    // Membership changes finish (a decommission waits for its hand-off).
    let decommissioned = topology_task
        .await
        .context("the topology changes panicked")??;
    let hint_bytes_peak = hint_sampler.await.context("the hint sampler panicked")?;
    let hint_bound = parameters
        .hint_bytes_per_target_max
        .saturating_mul(nodes.saturating_sub(1) as u64);
    let healed = Instant::now();
    eprintln!("healed; waiting for hints to drain and replicas to agree");

    // Every node must be up again: the nemesis restarted all it killed.
    let status = script(&parameters, &["status"])?;
    let down: Vec<String> = status
        .lines()
        .filter(|line| line.starts_with("node ") && !line.contains("running"))
        .filter(|line| {
            !decommissioned
                .iter()
                .any(|node| line.starts_with(&format!("node {node} ")))
        })
        .map(str::to_string)
        .collect();

    // Hints drain, then every primary of every key holds the same state.
    let deadline = healed + parameters.converge_deadline;
    let acked = lock(&tally.acked).clone();
    let mut keys: Vec<String> = (0..parameters.set_keys)
        .map(|i| format!("set-{i}"))
        .collect();
    keys.extend((0..parameters.register_keys).map(|i| format!("register-{i}")));
    let mut converged = false;
    let mut hint_bytes_max = 0u64;
    let everyone = ReadOptions {
        r: Some(Quorum::All),
        ..ReadOptions::default()
    };
    while Instant::now() < deadline {
        // Learn the ring afresh: members change (joined, removed).
        let _ = client.ring().await;
        let mut hints = 0;
        let mut reachable = true;
        for (_, address) in client.member_addresses() {
            match client.status(Some(address)).await {
                Ok(status) => hints += status.hint_bytes,
                Err(_) => reachable = false,
            }
        }
        hint_bytes_max = hint_bytes_max.max(hints);
        if reachable && hints == 0 {
            // Reads at r = all repair every replica that answered with less.
            for key in &keys {
                let _ = client.get(key.as_bytes(), &everyone).await;
            }
            if primaries_agree(&client, &keys).await? {
                converged = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let converge_ms = healed.elapsed().as_millis() as u64;

    // Nothing acknowledged is lost.
    let mut lost = 0usize;
    let mut lost_samples = Vec::new();
    for (key, elements_acked) in &acked {
        let present: BTreeSet<String> = match client.get(key.as_bytes(), &everyone).await {
            Ok(value) => value.siblings.iter().flat_map(|s| elements(s)).collect(),
            Err(error) => bail!("final read of {key} failed: {error}"),
        };
        for element in elements_acked.difference(&present) {
            lost += 1;
            if lost_samples.len() < 10 {
                lost_samples.push(format!("{key}:{element}"));
            }
        }
    }
    let acked_count: usize = acked.values().map(BTreeSet::len).sum();
    let undocumented = lock(&tally.undocumented).clone();
    let ok =
        lost == 0 && converged && down.is_empty() && undocumented.is_empty() && acked_count > 0;
    let summary = serde_json::json!({
        "ok": ok,
        "acked": acked_count,
        "lost": lost,
        "lost_samples": lost_samples,
        "converged": converged,
        "converge_ms": converge_ms,
        "faults": faults,
        "failed_requests": tally.failed.load(Ordering::Relaxed),
        "undocumented_errors": undocumented.len(),
        "undocumented_samples": undocumented.iter().take(5).collect::<Vec<_>>(),
        "register_reads": tally.register_reads.load(Ordering::Relaxed),
        "stale_reads": tally.stale_reads.load(Ordering::Relaxed),
        "register_r": parameters.register_r.to_string(),
        "register_w": parameters.register_w.to_string(),
        "nodes_down_after_heal": down,
        "topology": parameters.topology,
        "decommissioned": decommissioned,
        "hint_bytes_max_after_heal": hint_bytes_max,
        "hint_bytes_peak_per_node": hint_bytes_peak,
        "hint_bytes_bound_per_node": hint_bound,
        "nodes": nodes,
        "seconds": parameters.duration.as_secs_f64(),
        "seed": parameters.seed,
    });
    history.record(summary.clone());
    lock(&history.file).flush()?;
    println!("{summary}");
    Ok(ok)
}

/// Whether every primary of every key holds the same state.
async fn primaries_agree(client: &Client, keys: &[String]) -> anyhow::Result<bool> {
    let ring = client
        .ring()
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let partitioner =
        Partitioner::new(ring.partition_count).map_err(|error| anyhow::anyhow!("{error}"))?;
    let addresses: BTreeMap<_, SocketAddr> = ring
        .members
        .iter()
        .filter_map(|(node, entry)| entry.address.parse().ok().map(|address| (*node, address)))
        .collect();
    for key in keys {
        let partition = partitioner.partition_of(key.as_bytes());
        let Some(primaries) = ring.primaries.get(partition.0 as usize) else {
            return Ok(false);
        };
        let mut first = None;
        for primary in primaries {
            let Some(address) = addresses.get(primary) else {
                return Ok(false);
            };
            let Ok(inspection) = client.inspect(*address, key.as_bytes()).await else {
                return Ok(false);
            };
            match &first {
                None => first = Some(inspection.state),
                Some(state) if *state == inspection.state => {}
                Some(_) => return Ok(false),
            }
        }
    }
    Ok(true)
}
