//! `shoal-bench run`: a YCSB-style load generator over the client library.
//!
//! Workloads follow the YCSB core workloads (Cooper et al., SoCC 2010):
//! A 50/50 read/update, B 95/5, C read only, D read latest with 5 % inserts,
//! F read-modify-write; W is 100 % updates. A load phase writes `records`
//! keys first. Keys are chosen zipfian (θ = 0.99, scrambled so hot keys are
//! spread over partitions), uniform, or latest (zipfian over recency).
//!
//! Closed loop: `concurrency` workers each send one request at a time.
//! Open loop (`--rate`): operation `n` is due at `start + n / rate`, and its
//! latency is measured from that intended instant, so a stall that delays
//! later requests shows in their latencies instead of being hidden
//! (coordinated omission). Updates carry the context of what this run last
//! read or wrote for the key (contexts joined), so they supersede rather
//! than pile up siblings, as an application's read-modify-write would.
//!
//! With `--alternate-background T` the run pauses and resumes every
//! member's background work in turns of `T` seconds and keeps a second pair
//! of histograms, by the turn each operation started in: the cost of
//! background work against a control taken in the same minutes, on the
//! same members (a machine's speed drifts more than that cost within a
//! quarter of an hour on a shared VM; docs/bench.md). It also keeps each
//! turn's reads apart and reports each running turn's read p99 against
//! the paused turns beside it, median and quartiles (`crate::turns`):
//! pooled tails are at the mercy of a few minutes the host took.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use shoal_client::{Client, ClientConfig, Context, Error, ReadOptions, WriteOptions};
use shoal_cluster::message::Quorum;

use crate::turns::{self, TurnLog};

/// YCSB core workloads plus W (all updates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// 50 % reads, 50 % updates.
    A,
    /// 95 % reads, 5 % updates.
    B,
    /// 100 % reads.
    C,
    /// 95 % reads of recent keys, 5 % inserts.
    D,
    /// 50 % reads, 50 % read-modify-writes.
    F,
    /// 100 % updates.
    W,
}

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distribution {
    /// Zipfian, θ = 0.99, hot keys scattered.
    Zipfian,
    /// Every key equally likely.
    Uniform,
    /// Zipfian over recency: the newest keys are the hottest.
    Latest,
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct RunParameters {
    /// Client configuration file.
    pub config: PathBuf,
    /// The workload.
    pub workload: Workload,
    /// Keys loaded before the run.
    pub records: u64,
    /// Operations in the run (unless `duration`).
    pub ops: u64,
    /// Run for this long instead of `ops`.
    pub duration: Option<Duration>,
    /// End the run as soon as this file exists (checked every 100 ms).
    pub stop_file: Option<PathBuf>,
    /// Pause and resume every member's background work in turns this long.
    pub alternate_background: Option<Duration>,
    /// Workers.
    pub concurrency: usize,
    /// Value size.
    pub value_size: usize,
    /// Key choice (default: latest for D, zipfian otherwise).
    pub distribution: Option<Distribution>,
    /// Read quorum.
    pub r: Option<Quorum>,
    /// Write quorum.
    pub w: Option<Quorum>,
    /// Writes count only once fsynced on each replica.
    pub durable: bool,
    /// Open loop at this many operations per second.
    pub rate: Option<f64>,
    /// Skip the load phase (the keys are already there).
    pub skip_load: bool,
    /// Also write the JSON summary here.
    pub json: Option<PathBuf>,
    /// Write an HTML report here.
    pub html: Option<PathBuf>,
    /// Seed of the key choices.
    pub seed: u64,
}

/// A seed no earlier run is likely to have used: the clock's nanoseconds
/// and the process id, mixed.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    scramble(nanos ^ (u64::from(std::process::id()) << 32), u64::MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Read,
    Update,
    Insert,
    ReadModifyWrite,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::Read,
        Kind::Update,
        Kind::Insert,
        Kind::ReadModifyWrite,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Update => "update",
            Kind::Insert => "insert",
            Kind::ReadModifyWrite => "rmw",
        }
    }
}

fn key_name(index: u64) -> String {
    format!("user{index:012}")
}

/// Zipfian generator (Gray et al., "Quickly generating billion-record
/// synthetic databases", as YCSB uses it), over `0..items`.
#[derive(Debug, Clone)]
struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zeta: f64,
    eta: f64,
}

impl Zipfian {
    fn new(items: u64) -> Zipfian {
        let theta = 0.99;
        let items = items.max(1);
        let zeta_of = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zeta = zeta_of(items);
        let zeta2 = zeta_of(2.min(items));
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zeta);
        Zipfian {
            items,
            theta,
            alpha,
            zeta,
            eta,
        }
    }

    fn next(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zeta;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.items - 1);
        }
        let value = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        value.min(self.items - 1)
    }
}

/// FNV-1a, to scatter zipfian ranks over the key space (YCSB's scrambling).
fn scramble(rank: u64, items: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in rank.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash % items.max(1)
}

struct Shared {
    client: Client,
    parameters: RunParameters,
    zipfian: Zipfian,
    /// Keys that exist: `0..inserted`.
    inserted: AtomicU64,
    next_operation: AtomicU64,
    contexts: Mutex<HashMap<u64, Context>>,
    histograms: Mutex<HashMap<Kind, Histogram<u64>>>,
    errors: AtomicU64,
    error_samples: Mutex<Vec<String>>,
    done: AtomicU64,
    per_second: Mutex<Vec<u64>>,
    /// The slowest successful operation since the last progress line.
    slowest_micros: AtomicU64,
    value: Vec<u8>,
    /// Set when the stop file appears: no new operation starts.
    stopped: AtomicBool,
    /// The turn of `--alternate-background` now: `TURN_*` and its index in
    /// `turn_log`, packed by `turns::encode`.
    turn: AtomicU64,
    /// Latencies by the turn their operation started in: running, paused.
    turn_histograms: Mutex<[HashMap<Kind, Histogram<u64>>; 2]>,
    /// Reads' latencies turn by turn.
    turn_log: Mutex<TurnLog>,
    /// Turns begun, and pauses or resumes a member did not acknowledge.
    turns: AtomicU64,
    toggle_failures: AtomicU64,
}

/// No alternation, or the first second of a turn: counted in neither turn.
const TURN_NONE: u8 = 0;
/// Background work running everywhere.
const TURN_RUNNING: u8 = 1;
/// Background work paused everywhere.
const TURN_PAUSED: u8 = 2;
/// The start of a turn that counts in neither: work under way when the
/// switch came (a step being sent, a pull being merged) ends in it.
const TURN_SETTLE: Duration = Duration::from_secs(1);
/// How long a member may take to acknowledge a pause or resume.
const TOGGLE_TIMEOUT: Duration = Duration::from_secs(1);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn remember(&self, key: u64, context: &Context) {
        let mut contexts = lock(&self.contexts);
        let entry = contexts.entry(key).or_default();
        entry.0.join(&context.0);
    }

    fn context(&self, key: u64) -> Context {
        lock(&self.contexts).get(&key).cloned().unwrap_or_default()
    }

    fn pick(&self, rng: &mut impl Rng) -> u64 {
        let items = self.inserted.load(Ordering::Relaxed).max(1);
        let distribution = self
            .parameters
            .distribution
            .unwrap_or(match self.parameters.workload {
                Workload::D => Distribution::Latest,
                _ => Distribution::Zipfian,
            });
        match distribution {
            Distribution::Uniform => rng.random_range(0..items),
            Distribution::Zipfian => scramble(self.zipfian.next(rng), items),
            Distribution::Latest => {
                let back = self.zipfian.next(rng) % items;
                items - 1 - back
            }
        }
    }

    fn read_options(&self) -> ReadOptions {
        ReadOptions {
            r: self.parameters.r,
            ..ReadOptions::default()
        }
    }

    fn write_options(&self) -> WriteOptions {
        WriteOptions {
            w: self.parameters.w,
            durable: self.parameters.durable.then_some(true),
            ..WriteOptions::default()
        }
    }

    async fn operation(&self, kind: Kind, key: u64) -> Result<(), Error> {
        let name = key_name(key);
        match kind {
            Kind::Read => {
                let value = self
                    .client
                    .get(name.as_bytes(), &self.read_options())
                    .await?;
                self.remember(key, &value.context);
            }
            Kind::Update | Kind::Insert => {
                let context = self.context(key);
                let written = self
                    .client
                    .put(
                        name.as_bytes(),
                        &self.value,
                        &context,
                        &self.write_options(),
                    )
                    .await?;
                self.remember(key, &written);
            }
            Kind::ReadModifyWrite => {
                let value = self
                    .client
                    .get(name.as_bytes(), &self.read_options())
                    .await?;
                let mut context = value.context.clone();
                context.0.join(&self.context(key).0);
                let written = self
                    .client
                    .put(
                        name.as_bytes(),
                        &self.value,
                        &context,
                        &self.write_options(),
                    )
                    .await?;
                self.remember(key, &written);
            }
        }
        Ok(())
    }

    /// Records an operation of `kind` begun in `turn` (packed `TURN_*` and
    /// index).
    fn record(&self, kind: Kind, latency: Duration, result: Result<(), Error>, turn: u64) {
        let (turn, index) = turns::decode(turn);
        match result {
            Ok(()) => {
                let micros = (latency.as_micros() as u64).max(1);
                self.slowest_micros.fetch_max(micros, Ordering::Relaxed);
                let mut histograms = lock(&self.histograms);
                if let Some(histogram) = histograms.get_mut(&kind) {
                    histogram.saturating_record(micros);
                }
                drop(histograms);
                if turn == TURN_RUNNING || turn == TURN_PAUSED {
                    let mut turns = lock(&self.turn_histograms);
                    let index = usize::from(turn == TURN_PAUSED);
                    if let Some(histogram) = turns[index].get_mut(&kind) {
                        histogram.saturating_record(micros);
                    }
                }
                if let (Kind::Read, Some(index)) = (kind, index) {
                    lock(&self.turn_log).record_read(index, micros);
                }
            }
            Err(error) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let mut samples = lock(&self.error_samples);
                if samples.len() < 5 {
                    samples.push(error.to_string());
                }
            }
        }
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

fn choose(workload: Workload, rng: &mut impl Rng) -> Kind {
    let roll: f64 = rng.random();
    match workload {
        Workload::A if roll < 0.5 => Kind::Read,
        Workload::A => Kind::Update,
        Workload::B if roll < 0.95 => Kind::Read,
        Workload::B => Kind::Update,
        Workload::C => Kind::Read,
        Workload::D if roll < 0.95 => Kind::Read,
        Workload::D => Kind::Insert,
        Workload::F if roll < 0.5 => Kind::Read,
        Workload::F => Kind::ReadModifyWrite,
        Workload::W => Kind::Update,
    }
}

fn new_histograms() -> anyhow::Result<HashMap<Kind, Histogram<u64>>> {
    let mut histograms = HashMap::new();
    for kind in Kind::ALL {
        histograms.insert(kind, Histogram::new_with_bounds(1, 60_000_000, 3)?);
    }
    Ok(histograms)
}

async fn load(shared: &Arc<Shared>) -> anyhow::Result<(f64, u64)> {
    let records = shared.parameters.records;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..shared.parameters.concurrency.max(1) {
        let shared = shared.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut errors = 0u64;
            loop {
                let key = next.fetch_add(1, Ordering::Relaxed);
                if key >= records {
                    return errors;
                }
                if shared.operation(Kind::Insert, key).await.is_err() {
                    errors += 1;
                }
            }
        }));
    }
    let mut errors = 0;
    for worker in workers {
        errors += worker.await.context("a load worker panicked")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((records as f64 / seconds.max(1e-9), errors))
}

/// `concurrency` workers, each sending its next request when the last is answered.
async fn closed_loop(
    shared: &Arc<Shared>,
    total: u64,
    deadline: Option<Instant>,
) -> anyhow::Result<()> {
    let mut workers = Vec::new();
    for worker in 0..shared.parameters.concurrency.max(1) {
        let shared = shared.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                shared.parameters.seed.wrapping_add(worker as u64 * 7919),
            );
            loop {
                let sequence = shared.next_operation.fetch_add(1, Ordering::Relaxed);
                if sequence >= total
                    || deadline.is_some_and(|deadline| Instant::now() >= deadline)
                    || shared.stopped.load(Ordering::Relaxed)
                {
                    return;
                }
                let begun = Instant::now();
                let turn = shared.turn.load(Ordering::Relaxed);
                let kind = choose(shared.parameters.workload, &mut rng);
                let key = match kind {
                    Kind::Insert => shared.inserted.fetch_add(1, Ordering::Relaxed),
                    _ => shared.pick(&mut rng),
                };
                let result = shared.operation(kind, key).await;
                shared.record(kind, begun.elapsed(), result, turn);
            }
        }));
    }
    for worker in workers {
        worker.await.context("a worker panicked")?;
    }
    Ok(())
}

/// How early the pacer may release a request rather than sleep again.
const PACER_EARLY_RELEASE: Duration = Duration::from_micros(200);

/// Requests due at `start + n / rate`, each measured from that instant.
///
/// A pacer thread with `std::thread::sleep` (tens of microseconds of
/// precision, where tokio's timers have a millisecond) releases each
/// request at its due time; a dispatcher starts it as soon as one of
/// `concurrency` slots is free. A request that waits for a slot has that
/// wait in its latency, as a real client's queue would.
async fn open_loop(
    shared: &Arc<Shared>,
    rate: f64,
    started: Instant,
    total: u64,
    deadline: Option<Instant>,
) -> anyhow::Result<()> {
    let (due_sender, mut due) = tokio::sync::mpsc::channel::<Instant>(1 << 16);
    let pacing = shared.clone();
    let pacer = std::thread::spawn(move || {
        for sequence in 0..total {
            let when = started + Duration::from_secs_f64(sequence as f64 / rate);
            if deadline.is_some_and(|deadline| when >= deadline)
                || pacing.stopped.load(Ordering::Relaxed)
            {
                return;
            }
            // Sleep only for gaps worth a wakeup; a request released up to
            // PACER_EARLY_RELEASE early is still measured from its due time.
            let now = Instant::now();
            if when > now + PACER_EARLY_RELEASE {
                std::thread::sleep(when - now - PACER_EARLY_RELEASE);
            }
            if due_sender.blocking_send(when).is_err() {
                return;
            }
        }
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(
        shared.parameters.concurrency.max(1),
    ));
    let mut rng = rand::rngs::StdRng::seed_from_u64(shared.parameters.seed);
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(intended) = due.recv().await {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .context("the slots closed")?;
        let kind = choose(shared.parameters.workload, &mut rng);
        let key = match kind {
            Kind::Insert => shared.inserted.fetch_add(1, Ordering::Relaxed),
            _ => shared.pick(&mut rng),
        };
        let shared = shared.clone();
        let turn = shared.turn.load(Ordering::Relaxed);
        tasks.spawn(async move {
            let result = shared.operation(kind, key).await;
            shared.record(kind, intended.elapsed(), result, turn);
            drop(slot);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    if pacer.join().is_err() {
        anyhow::bail!("the pacer thread panicked");
    }
    Ok(())
}

/// Runs the benchmark and prints the report; the last stdout line is JSON.
pub async fn run(parameters: RunParameters) -> anyhow::Result<()> {
    let config =
        ClientConfig::load(&parameters.config).map_err(|error| anyhow::anyhow!("{error}"))?;
    let client = Client::connect(config)
        .await
        .map_err(|error| anyhow::anyhow!("connecting: {error}"))?;
    let records = parameters.records.max(1);
    let shared = Arc::new(Shared {
        client,
        zipfian: Zipfian::new(records),
        inserted: AtomicU64::new(records),
        next_operation: AtomicU64::new(0),
        contexts: Mutex::new(HashMap::new()),
        histograms: Mutex::new(new_histograms()?),
        errors: AtomicU64::new(0),
        error_samples: Mutex::new(Vec::new()),
        done: AtomicU64::new(0),
        slowest_micros: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
        turn: AtomicU64::new(turns::encode(TURN_NONE, None)),
        turn_histograms: Mutex::new([new_histograms()?, new_histograms()?]),
        turn_log: Mutex::new(TurnLog::default()),
        turns: AtomicU64::new(0),
        toggle_failures: AtomicU64::new(0),
        per_second: Mutex::new(Vec::new()),
        value: (0..parameters.value_size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect(),
        parameters: parameters.clone(),
    });
    let mut load_ops_per_sec = None;
    if !parameters.skip_load {
        eprintln!("loading {records} records...");
        let (rate, errors) = load(&shared).await?;
        eprintln!("loaded at {rate:.0} ops/s ({errors} errors)");
        load_ops_per_sec = Some(rate);
        if errors > 0 {
            anyhow::bail!(
                "{errors} load operations failed; the run would measure a partial data set"
            );
        }
    }

    if let Some(path) = parameters.stop_file.clone() {
        let shared = shared.clone();
        tokio::spawn(async move {
            while !path.exists() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            shared.stopped.store(true, Ordering::Relaxed);
        });
    }
    let started = Instant::now();
    let deadline = parameters.duration.map(|duration| started + duration);
    let total = if parameters.duration.is_some() {
        u64::MAX
    } else {
        parameters.ops
    };
    let progress = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let done = shared.done.load(Ordering::Relaxed);
                lock(&shared.per_second).push(done - last);
                last = done;
                let slowest = shared.slowest_micros.swap(0, Ordering::Relaxed);
                eprintln!(
                    "[{:>4.0}s] {done} ops, {:.0} ops/s, {} errors, slowest {:.1} ms",
                    started.elapsed().as_secs_f64(),
                    done as f64 / started.elapsed().as_secs_f64(),
                    shared.errors.load(Ordering::Relaxed),
                    slowest as f64 / 1000.0
                );
            }
        })
    };
    let alternation = parameters
        .alternate_background
        .map(|turn| tokio::spawn(alternate(shared.clone(), turn)));
    let outcome = match parameters.rate {
        None => closed_loop(&shared, total, deadline).await,
        Some(rate) => open_loop(&shared, rate, started, total, deadline).await,
    };
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(alternation) = alternation {
        alternation.abort();
        // Never leave the cluster paused, whatever became of the run.
        set_background_everywhere(&shared, false).await;
    }
    outcome?;
    progress.abort();
    let done = shared.done.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    let ops_per_sec = done as f64 / elapsed.max(1e-9);

    let histograms = lock(&shared.histograms).clone();
    let mut summary = serde_json::json!({
        "workload": format!("{:?}", parameters.workload).to_lowercase(),
        "ops": done,
        "errors": errors,
        "ops_per_sec": (ops_per_sec * 10.0).round() / 10.0,
        "seconds": (elapsed * 1000.0).round() / 1000.0,
        "concurrency": parameters.concurrency,
        "records": records,
        "value_size": parameters.value_size,
        "r": parameters.r.map(|q| q.to_string()),
        "w": parameters.w.map(|q| q.to_string()),
        "durable": parameters.durable,
        "rate": parameters.rate,
        "load_ops_per_sec": load_ops_per_sec.map(|rate| rate.round()),
        "seed": parameters.seed,
    });
    println!(
        "workload {:?}: {done} ops in {elapsed:.2} s = {ops_per_sec:.0} ops/s, {errors} errors",
        parameters.workload
    );
    println!(
        "{:<8} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "op", "count", "p50 µs", "p99 µs", "p999 µs", "max µs"
    );
    for kind in Kind::ALL {
        let Some(histogram) = histograms.get(&kind) else {
            continue;
        };
        if histogram.is_empty() {
            continue;
        }
        let row = latency_row(histogram);
        println!(
            "{:<8} {:>10} {:>9} {:>9} {:>9} {:>9}",
            kind.name(),
            histogram.len(),
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.99),
            histogram.value_at_quantile(0.999),
            histogram.max()
        );
        summary[kind.name()] = row;
    }
    if parameters.alternate_background.is_some() {
        let turns = lock(&shared.turn_histograms).clone();
        for (name, histograms) in ["background_running", "background_paused"]
            .iter()
            .zip(&turns)
        {
            let mut rows = serde_json::Map::new();
            for kind in Kind::ALL {
                if let Some(histogram) = histograms.get(&kind).filter(|h| !h.is_empty()) {
                    println!(
                        "{:<8} {:>10} {:>9} {:>9} {:>9} {:>9}   ({})",
                        kind.name(),
                        histogram.len(),
                        histogram.value_at_quantile(0.5),
                        histogram.value_at_quantile(0.99),
                        histogram.value_at_quantile(0.999),
                        histogram.max(),
                        name.replace('_', " ")
                    );
                    rows.insert(kind.name().into(), latency_row(histogram));
                }
            }
            summary[*name] = rows.into();
        }
        summary["background_turns"] = shared.turns.load(Ordering::Relaxed).into();
        let by_turn = turns::summary(&lock(&shared.turn_log));
        println!(
            "read p99, each running turn over the paused turns beside it: {} (all triples), {} (host steal under 5 %)",
            by_turn["read_p99_ratio"], by_turn["read_p99_ratio_steal_under_5"]
        );
        summary["background_by_turn"] = by_turn;
        summary["background_toggle_failures"] =
            shared.toggle_failures.load(Ordering::Relaxed).into();
    }
    for sample in lock(&shared.error_samples).iter() {
        eprintln!("error sample: {sample}");
    }
    let line = summary.to_string();
    if let Some(path) = &parameters.json {
        std::fs::write(path, format!("{line}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &parameters.html {
        let per_second = lock(&shared.per_second).clone();
        std::fs::write(path, html_report(&summary, &histograms, &per_second))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{line}");
    Ok(())
}

fn latency_row(histogram: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "count": histogram.len(),
        "p50_us": histogram.value_at_quantile(0.5),
        "p99_us": histogram.value_at_quantile(0.99),
        "p999_us": histogram.value_at_quantile(0.999),
        "max_us": histogram.max(),
        "mean_us": (histogram.mean() * 10.0).round() / 10.0,
    })
}

/// `--alternate-background`: turns of `turn`, running first, until aborted.
async fn alternate(shared: Arc<Shared>, turn: Duration) {
    let mut paused = false;
    loop {
        shared
            .turn
            .store(turns::encode(TURN_NONE, None), Ordering::Relaxed);
        set_background_everywhere(&shared, paused).await;
        shared.turns.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(TURN_SETTLE).await;
        let counted = if paused { TURN_PAUSED } else { TURN_RUNNING };
        let index = lock(&shared.turn_log).begin(paused);
        let cpu_before = turns::host_cpu();
        shared
            .turn
            .store(turns::encode(counted, index), Ordering::Relaxed);
        tokio::time::sleep(turn.saturating_sub(TURN_SETTLE)).await;
        if let Some(index) = index {
            let steal = cpu_before
                .zip(turns::host_cpu())
                .and_then(|(before, after)| turns::steal_between(before, after));
            lock(&shared.turn_log).end(index, steal);
        }
        paused = !paused;
    }
}

/// Pauses or resumes the background work of every member of the ring (as
/// learnt now: members join and leave during a run), all at once.
async fn set_background_everywhere(shared: &Arc<Shared>, paused: bool) {
    if let Err(error) = shared.client.ring().await {
        eprintln!("background switch: the ring: {error}");
    }
    let mut calls = tokio::task::JoinSet::new();
    for (_, address) in shared.client.member_addresses() {
        let shared = shared.clone();
        calls.spawn(async move {
            let call = shared.client.set_background(Some(address), paused);
            match tokio::time::timeout(TOGGLE_TIMEOUT, call).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    shared.toggle_failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("background switch: {address}: {error}");
                }
                Err(_) => {
                    shared.toggle_failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("background switch: {address}: no answer");
                }
            }
        });
    }
    while calls.join_next().await.is_some() {}
}

/// A self-contained HTML page: the summary, latency percentile curves and
/// throughput per second, drawn as inline SVG.
fn html_report(
    summary: &serde_json::Value,
    histograms: &HashMap<Kind, Histogram<u64>>,
    per_second: &[u64],
) -> String {
    let (width, height) = (720.0, 300.0);
    let mut percentiles = String::new();
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let quantiles: Vec<f64> = (0..=60)
        .map(|i| 1.0 - 10f64.powf(-(i as f64) / 12.0))
        .collect();
    let max_latency = histograms
        .values()
        .filter(|h| !h.is_empty())
        .map(|h| h.max())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    for (kind, color) in Kind::ALL.iter().zip(colors) {
        let Some(histogram) = histograms.get(kind).filter(|h| !h.is_empty()) else {
            continue;
        };
        let mut points = String::new();
        for (index, quantile) in quantiles.iter().enumerate() {
            let x = index as f64 / (quantiles.len() - 1) as f64 * width;
            let value = histogram.value_at_quantile(quantile.min(1.0)) as f64;
            let y = height - (value.ln_1p() / max_latency.ln_1p()) * height;
            let _ = write!(points, "{x:.1},{y:.1} ");
        }
        let _ = write!(
            percentiles,
            "<polyline fill='none' stroke='{color}' stroke-width='2' points='{points}'/><text x='10' y='{}' fill='{color}'>{}</text>",
            20 + 16 * Kind::ALL.iter().position(|k| k == kind).unwrap_or(0),
            kind.name()
        );
    }
    let max_rate = per_second.iter().copied().max().unwrap_or(1).max(1) as f64;
    let mut throughput = String::new();
    for (second, count) in per_second.iter().enumerate() {
        let x = second as f64 / per_second.len().max(1) as f64 * width;
        let bar = *count as f64 / max_rate * height;
        let _ = write!(
            throughput,
            "<rect x='{x:.1}' y='{:.1}' width='{:.1}' height='{bar:.1}' fill='#1f77b4'/>",
            height - bar,
            (width / per_second.len().max(1) as f64 - 1.0).max(1.0)
        );
    }
    format!(
        "<!doctype html><meta charset='utf-8'><title>shoal-bench</title>\
         <style>body{{font-family:sans-serif;margin:2em}}svg{{border:1px solid #ccc;background:#fff}}</style>\
         <h1>shoal-bench run</h1><pre>{}</pre>\
         <h2>Latency by percentile (log scale, 50 % … 99.999 %; top = {max_latency} µs)</h2>\
         <svg width='{width}' height='{height}'>{percentiles}</svg>\
         <h2>Throughput per second (top = {max_rate} ops/s)</h2>\
         <svg width='{width}' height='{height}'>{throughput}</svg>",
        serde_json::to_string_pretty(summary).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_seeds_differ_from_run_to_run() {
        let seeds: std::collections::HashSet<u64> = (0..100)
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_micros(10));
                fresh_seed()
            })
            .collect();
        assert_eq!(seeds.len(), 100);
    }

    #[test]
    fn zipfian_is_skewed_and_stays_in_range() {
        let zipfian = Zipfian::new(1000);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            let value = zipfian.next(&mut rng);
            assert!(value < 1000);
            counts[value as usize] += 1;
        }
        // The hottest item gets far more than a uniform share (100).
        assert!(counts[0] > 5_000, "{}", counts[0]);
        assert!(counts[999] < 200);
    }

    #[test]
    fn workload_mixes_follow_ycsb() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let reads = (0..10_000)
            .filter(|_| choose(Workload::B, &mut rng) == Kind::Read)
            .count();
        assert!((9_300..9_700).contains(&reads), "{reads}");
        assert!((0..1000).all(|_| choose(Workload::C, &mut rng) == Kind::Read));
        assert!((0..1000).all(|_| choose(Workload::W, &mut rng) == Kind::Update));
    }
}
