//! `shoal-bench engine`: db_bench-style micro-benchmarks of an embedded engine.
//!
//! The workloads are written against the small [`Engine`] trait so that the
//! same code drives Shoal's engine here and the peers (RocksDB, fjall) in the
//! separate `bench/peers` crate — same keys, values, threads and timing.
//!
//! Keys are 16 ASCII digits; values are `--value-size` bytes, half random and
//! half repeated (about 50 % compressible, as db_bench makes them).

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the workloads need of an engine.
pub trait Engine: Sync {
    /// Writes one key (durably when `sync`).
    fn put(&self, key: &[u8], value: &[u8], sync: bool) -> Result<(), String>;
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String>;
    /// Visits every key in order; returns the number visited.
    fn scan_all(&self) -> Result<u64, String>;
    /// Flushes memtables so a reopen reads from tables.
    fn flush(&self) -> Result<(), String>;
    /// Merges everything into the bottom level (a full manual compaction).
    fn compact_all(&self) -> Result<(), String>;
    /// Bytes of live data files.
    fn size_on_disk_bytes(&self) -> u64;
}

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Insert keys in order.
    Fillseq,
    /// Insert keys in random order.
    Fillrandom,
    /// Overwrite random existing keys.
    Overwrite,
    /// Read random existing keys.
    Readrandom,
    /// Read random keys that do not exist.
    Readmissing,
    /// Read every key in order.
    Readseq,
    /// One full manual compaction; the figure that matters is the size after.
    Compact,
}

impl Workload {
    /// The name used on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Fillseq => "fillseq",
            Workload::Fillrandom => "fillrandom",
            Workload::Overwrite => "overwrite",
            Workload::Readrandom => "readrandom",
            Workload::Readmissing => "readmissing",
            Workload::Readseq => "readseq",
            Workload::Compact => "compact",
        }
    }

    /// True for workloads that start from an empty database.
    pub fn fills(self) -> bool {
        matches!(self, Workload::Fillseq | Workload::Fillrandom)
    }
}

/// Parameters of a run.
#[derive(Debug, Clone)]
pub struct Parameters {
    /// The workload.
    pub workload: Workload,
    /// Number of entries (and of operations).
    pub num: u64,
    /// Value size in bytes.
    pub value_size: usize,
    /// Threads sharing the operations.
    pub threads: usize,
    /// Fsync every write.
    pub sync: bool,
}

/// The key of entry `index`: 16 ASCII digits.
pub fn key_of(index: u64) -> [u8; 16] {
    let mut key = [b'0'; 16];
    let mut rest = index;
    for position in (0..16).rev() {
        key[position] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    key
}

fn fill_value(rng: &mut SmallRng, value: &mut [u8]) {
    let half = value.len() / 2;
    rng.fill_bytes(&mut value[..half]);
    for byte in &mut value[half..] {
        *byte = b'x';
    }
}

/// What the calling thread has consumed so far: CPU time (which excludes
/// time the hypervisor stole and time spent off the CPU), page faults and
/// context switches. Taken around a slow operation, it tells work (CPU time
/// near the wall time), waiting (switches) and a stolen CPU (neither) apart.
#[derive(Debug, Clone, Copy, Default)]
struct ThreadUsage {
    /// CLOCK_MONOTONIC when taken, to find the moment in a trace
    /// (`perf record -k CLOCK_MONOTONIC`).
    monotonic_ns: u64,
    cpu_ns: u64,
    minor_faults: u64,
    major_faults: u64,
    voluntary_switches: u64,
    involuntary_switches: u64,
}

impl ThreadUsage {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn now() -> ThreadUsage {
        let clock = |id: libc::clockid_t| {
            let mut time = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime only writes into `time`, valid and
            // owned here.
            let result = unsafe { libc::clock_gettime(id, &mut time) };
            if result == 0 {
                time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64
            } else {
                0
            }
        };
        let monotonic_ns = clock(libc::CLOCK_MONOTONIC);
        let cpu_ns = clock(libc::CLOCK_THREAD_CPUTIME_ID);
        // SAFETY: getrusage only writes into `usage`, valid and owned here;
        // RUSAGE_THREAD concerns the calling thread alone.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            let result = libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
            (result == 0).then_some(usage)
        };
        let usage = usage.map_or(ThreadUsage::default(), |usage| ThreadUsage {
            minor_faults: usage.ru_minflt as u64,
            major_faults: usage.ru_majflt as u64,
            voluntary_switches: usage.ru_nvcsw as u64,
            involuntary_switches: usage.ru_nivcsw as u64,
            ..ThreadUsage::default()
        });
        ThreadUsage {
            monotonic_ns,
            cpu_ns,
            ..usage
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn now() -> ThreadUsage {
        ThreadUsage::default()
    }

    /// What the thread consumed from `before` to `self`; `monotonic_ns`
    /// stays `before`'s, the moment the operation started.
    fn since(&self, before: &ThreadUsage) -> ThreadUsage {
        ThreadUsage {
            monotonic_ns: before.monotonic_ns,
            cpu_ns: self.cpu_ns.saturating_sub(before.cpu_ns),
            minor_faults: self.minor_faults.saturating_sub(before.minor_faults),
            major_faults: self.major_faults.saturating_sub(before.major_faults),
            voluntary_switches: self
                .voluntary_switches
                .saturating_sub(before.voluntary_switches),
            involuntary_switches: self
                .involuntary_switches
                .saturating_sub(before.involuntary_switches),
        }
    }

    /// Why an operation that took `wall_us` and consumed this (a difference
    /// from [`ThreadUsage::since`]) was slow: `waited` (the thread blocked:
    /// a voluntary switch — a lock, a condvar, I/O), `worked` (on the CPU at
    /// least half the time): the code's doing; `preempted` (another task
    /// took the CPU: an involuntary switch only) or `lost` (it never left
    /// the CPU yet got under half of it: the hypervisor stole it, or
    /// interrupts took it): the machine's.
    fn class(&self, wall_us: u128) -> &'static str {
        if self.voluntary_switches > 0 {
            "waited"
        } else if u128::from(self.cpu_ns / 1000) * 2 >= wall_us {
            "worked"
        } else if self.involuntary_switches > 0 {
            "preempted"
        } else {
            "lost"
        }
    }
}

/// A difference from [`ThreadUsage::since`]: `cpu 12 us, 3 faults (0
/// major), 0+1 switches (voluntary+involuntary), monotonic 1234.567890 s`.
impl std::fmt::Display for ThreadUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cpu {} us, {} faults ({} major), {}+{} switches (voluntary+involuntary), monotonic {:.6} s",
            self.cpu_ns / 1000,
            self.minor_faults,
            self.major_faults,
            self.voluntary_switches,
            self.involuntary_switches,
            self.monotonic_ns as f64 / 1e9,
        )
    }
}

/// The figures of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Workload name.
    pub workload: String,
    /// Operations done.
    pub ops: u64,
    /// Operations per second over the whole run.
    pub ops_per_sec: f64,
    /// Median latency.
    pub p50_us: f64,
    /// 99th percentile latency.
    pub p99_us: f64,
    /// 99.9th percentile latency.
    pub p999_us: f64,
    /// Worst single operation (for writes: the longest stall).
    pub max_us: f64,
    /// Reads that found their key (read workloads).
    pub found: u64,
    /// Bytes of data files at the end.
    pub bytes_on_disk: u64,
    /// Threads used.
    pub threads: usize,
    /// Value size.
    pub value_size: usize,
    /// Whether writes were fsynced.
    pub sync: bool,
    /// Wall time.
    pub seconds: f64,
}

/// Runs one workload and returns its figures; progress goes to stderr.
pub fn run(engine: &dyn Engine, parameters: &Parameters) -> Result<Report, String> {
    let threads = parameters.threads.max(1);
    let per_thread = parameters.num / threads as u64;
    let done = AtomicU64::new(0);
    let found = AtomicU64::new(0);
    let started = Instant::now();
    let finished = std::sync::atomic::AtomicBool::new(false);
    let mut seconds = 0.0;
    let histograms: Vec<Result<Histogram<u64>, String>> = std::thread::scope(|scope| {
        let progress = scope.spawn(|| {
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let count = done.load(Ordering::Relaxed);
                let seconds = started.elapsed().as_secs_f64();
                eprint!(
                    "\r{}: {count} of {} ops, {:.0} ops/s   ",
                    parameters.workload.name(),
                    per_thread * threads as u64,
                    count as f64 / seconds.max(1e-9)
                );
            }
            eprintln!();
        });
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let (done, found) = (&done, &found);
                scope.spawn(move || -> Result<Histogram<u64>, String> {
                    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                        .map_err(|error| error.to_string())?;
                    let mut rng = SmallRng::seed_from_u64(0x5eed ^ thread as u64);
                    let mut value = vec![0u8; parameters.value_size];
                    let first = thread as u64 * per_thread;
                    // Diagnosis: `SHOAL_BENCH_LOG_SLOW_US=N` prints every
                    // operation slower than N µs, with when it started and
                    // what the thread did meanwhile (`ThreadUsage`).
                    let log_slow_us = std::env::var("SHOAL_BENCH_LOG_SLOW_US")
                        .ok()
                        .and_then(|value| value.parse::<u128>().ok());
                    if parameters.workload == Workload::Readseq {
                        let start = Instant::now();
                        let count = engine.scan_all()?;
                        let _ = histogram.record(start.elapsed().as_micros().max(1) as u64);
                        done.fetch_add(count, Ordering::Relaxed);
                        found.fetch_add(count, Ordering::Relaxed);
                        return Ok(histogram);
                    }
                    if parameters.workload == Workload::Compact {
                        if thread == 0 {
                            let start = Instant::now();
                            engine.compact_all()?;
                            let _ = histogram.record(start.elapsed().as_micros().max(1) as u64);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        return Ok(histogram);
                    }
                    for offset in 0..per_thread {
                        let index = match parameters.workload {
                            Workload::Fillseq => first + offset,
                            _ => rng.random_range(0..parameters.num),
                        };
                        let mut key = key_of(index);
                        let usage_before = log_slow_us.map(|_| ThreadUsage::now());
                        let start = Instant::now();
                        match parameters.workload {
                            Workload::Fillseq | Workload::Fillrandom | Workload::Overwrite => {
                                fill_value(&mut rng, &mut value);
                                engine.put(&key, &value, parameters.sync)?;
                            }
                            Workload::Readrandom | Workload::Readmissing => {
                                if parameters.workload == Workload::Readmissing {
                                    // A key that sorts among the present ones but is absent.
                                    key[15] = b'.';
                                }
                                if engine.get(&key)?.is_some() {
                                    found.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Workload::Readseq | Workload::Compact => {}
                        }
                        let micros = start.elapsed().as_nanos().div_ceil(1000).max(1);
                        let _ = histogram.record(micros as u64);
                        if let (Some(limit), Some(before)) = (log_slow_us, usage_before)
                            && micros > limit
                        {
                            let used = ThreadUsage::now().since(&before);
                            eprintln!(
                                "slow: thread {thread} op {offset} took {micros} us, started at {:.3} s; {used}; class {}",
                                start.duration_since(started).as_secs_f64(),
                                used.class(micros)
                            );
                        }
                        if offset % 1024 == 0 {
                            done.fetch_add(1024.min(per_thread - offset), Ordering::Relaxed);
                        }
                    }
                    Ok(histogram)
                })
            })
            .collect();
        let results = workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|_| Err("worker panicked".into()))
            })
            .collect();
        // Timed when the workers end: the progress thread may sleep up to
        // 200 ms more before it sees `finished` (that wait was counted
        // until session 7, rounding every phase's time up to 200 ms).
        seconds = started.elapsed().as_secs_f64();
        finished.store(true, Ordering::Relaxed);
        let _ = progress.join();
        results
    });
    let mut total =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|error| error.to_string())?;
    for histogram in histograms {
        total.add(histogram?).map_err(|error| error.to_string())?;
    }
    let ops = if parameters.workload == Workload::Readseq {
        found.load(Ordering::Relaxed)
    } else if parameters.workload == Workload::Compact {
        1
    } else {
        per_thread * threads as u64
    };
    if parameters.workload.fills() || parameters.workload == Workload::Overwrite {
        engine.flush()?;
    }
    Ok(Report {
        workload: parameters.workload.name().into(),
        ops,
        ops_per_sec: ops as f64 / seconds,
        p50_us: total.value_at_quantile(0.50) as f64,
        p99_us: total.value_at_quantile(0.99) as f64,
        p999_us: total.value_at_quantile(0.999) as f64,
        max_us: total.max() as f64,
        found: found.load(Ordering::Relaxed),
        bytes_on_disk: engine.size_on_disk_bytes(),
        threads,
        value_size: parameters.value_size,
        sync: parameters.sync,
        seconds,
    })
}

/// Prints the summary line for humans (stderr) and the JSON line (stdout, last).
pub fn print_report(engine_name: &str, report: &Report) {
    eprintln!(
        "{engine_name} {}: {} ops in {:.2} s = {:.0} ops/s; p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs; {} bytes on disk",
        report.workload,
        report.ops,
        report.seconds,
        report.ops_per_sec,
        report.p50_us,
        report.p99_us,
        report.p999_us,
        report.max_us,
        report.bytes_on_disk
    );
    let mut json = serde_json::to_value(report).unwrap_or_default();
    if let Some(object) = json.as_object_mut() {
        object.insert("engine".into(), engine_name.into());
    }
    println!("{json}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cpu_us: u64, voluntary: u64, involuntary: u64) -> ThreadUsage {
        ThreadUsage {
            cpu_ns: cpu_us * 1000,
            voluntary_switches: voluntary,
            involuntary_switches: involuntary,
            ..ThreadUsage::default()
        }
    }

    #[test]
    fn a_slow_operation_is_put_in_the_class_its_thread_usage_shows() {
        let before = usage(1_000, 5, 5);
        // Blocked, whatever else happened.
        assert_eq!(usage(3_000, 6, 7).since(&before).class(2_000), "waited");
        // On the CPU for at least half the time.
        assert_eq!(usage(2_000, 5, 6).since(&before).class(2_000), "worked");
        assert_eq!(usage(1_900, 5, 5).since(&before).class(1_800), "worked");
        // Off the CPU after an involuntary switch.
        assert_eq!(usage(1_040, 5, 6).since(&before).class(2_000), "preempted");
        // Never switched out, and still little CPU.
        assert_eq!(usage(1_040, 5, 5).since(&before).class(2_000), "lost");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn thread_usage_sees_sleeping_and_working() {
        let before = ThreadUsage::now();
        std::thread::sleep(Duration::from_millis(5));
        let slept = ThreadUsage::now();
        assert!(
            slept.voluntary_switches > before.voluntary_switches,
            "{before:?} {slept:?}"
        );
        assert!(slept.monotonic_ns >= before.monotonic_ns + 5_000_000);
        // Spin until the thread has had 2 ms of CPU; bounded in wall time,
        // since a stolen CPU slows it.
        let started = Instant::now();
        let mut spun = slept;
        while spun.cpu_ns < slept.cpu_ns + 2_000_000 {
            assert!(started.elapsed() < Duration::from_secs(30), "{spun:?}");
            std::hint::black_box((0..1000u64).sum::<u64>());
            spun = ThreadUsage::now();
        }
        assert!(spun.monotonic_ns - slept.monotonic_ns >= 2_000_000);
    }
}
