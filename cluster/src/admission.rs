//! Admission control for background work (Dynamo §6.5: background tasks get
//! the slices that foreground latency leaves them).
//!
//! The node's background work — anti-entropy exchanges and tree builds,
//! the pulls of moving partitions and the answers to them, the sweeps of
//! stale copies and of tombstones — spends a byte budget refilled at a
//! rate, each step charged for the states it read or merged (not for the
//! bytes it sent: a digest costs the state read to make it). This
//! controller sets that rate from the latency of the foreground requests the
//! node serves, measured by its shell, one interval (a second) at a time.
//!
//! Intervals are *quiet* (no background work ran, or a probe held it) or
//! *busy*. The *baseline* is the p99 of the requests of the last
//! `QUIET_KEPT` quiet intervals pooled together; the *judged* p99 that of
//! the busy intervals since the last judgement, pooled. Pooled, because one
//! interval's p99 is the tenth slowest of a thousand requests, and a flush,
//! a compaction or the host taking the CPU lands in one interval or the
//! next: judged one interval at a time (session 12), or by the medians of
//! a few (sessions 13–17), noise alone read as harm so often that the rate
//! sat at its floor through whole refills (docs/bench.md, session 18).
//!
//! - **Slow judgement, small harm.** Every `JUDGED_BUSY` busy intervals the
//!   pooled p99 is judged: more than `TARGET` above the baseline, the rate
//!   steps down by `STEP_FRACTION` of itself (down to a floor, so
//!   background work always progresses); otherwise it steps up as much.
//!   Twenty seconds of requests hold twenty times the samples of one. And
//!   steps of one size up and down hold the rate where the judged p99
//!   exceeds the target as often as not, that is where the harm is the
//!   target, however noisy the judgement: noise only makes the rate
//!   wander about that point. Under the earlier rule (halve on harm, an
//!   eighth up otherwise) the rate held only where harm was judged in
//!   fewer than one judgement in seven, so noise that alone crossed the
//!   margin more often than that drove harmless work to the floor.
//! - **Fast judgement, large harm.** After every busy interval, once
//!   `FAST_BUSY` have been pooled, a p99 more than `FAST_MARGIN` above the
//!   baseline halves the rate at once: a rate far too high (a join starting
//!   at the ceiling) is not left running for twenty seconds.
//! - Every judgement that moves the rate forgets the busy intervals
//!   pooled, so the next judgement is of the new rate.
//! - The baseline must be learnt while background work runs for minutes (a
//!   join) or from the moment a node starts (a joining node has nothing
//!   else to learn from). So one interval in `PROBE_EVERY` is a *probe*,
//!   while the node has requests to measure: background work holds still
//!   for that interval, and it counts as quiet. Probes are the intervals
//!   whose number (whole seconds of the clock the node is given) is a
//!   multiple of `PROBE_EVERY`, so that members whose clocks agree probe
//!   together: a coordinator's latency includes its replicas', whose
//!   background work a lone probe would still see. No judgement is made
//!   before `QUIET_MIN` quiet intervals were seen.
//!
//! Pure: fed latencies, bytes and instants.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long one measurement interval lasts.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Fewest requests in an interval for it to count.
pub const SAMPLES_MIN: u32 = 200;

/// The bound on harm: how far above the baseline a p99 may move.
pub const MARGIN: f64 = 0.10;

/// Where the slow judgement holds the pooled p99: half the margin above
/// the baseline, so that the rate's wander about it stays within the
/// margin.
pub const TARGET: f64 = MARGIN / 2.0;

/// Busy intervals pooled for the slow judgement.
pub const JUDGED_BUSY: u32 = 20;

/// A slow judgement moves the rate up or down by this fraction of itself.
pub const STEP_FRACTION: f64 = 1.0 / 4.0;

/// How far above the baseline the pooled p99 of at least `FAST_BUSY` busy
/// intervals counts as harm at once: the rate halves.
pub const FAST_MARGIN: f64 = 0.50;

/// Fewest busy intervals pooled for the fast judgement.
pub const FAST_BUSY: u32 = 3;

/// The floor, as a fraction of the ceiling.
pub const FLOOR_FRACTION: f64 = 1.0 / 64.0;

/// One interval in this many is a probe: background work holds still.
pub const PROBE_EVERY: u64 = 10;

/// Quiet (or probe) intervals pooled for the baseline.
pub const QUIET_KEPT: usize = 30;

/// Fewest quiet intervals seen before any judgement.
pub const QUIET_MIN: usize = 3;

/// Histogram buckets per power of two of microseconds, as a power of two:
/// sixteen, so a bucket spans at most 1/16 of its values — finer than the
/// margin it judges. With four a bucket spanned 14–25 %, so any move of
/// the p99 across a bucket boundary read as more than the 10 % margin, and
/// noise at a boundary halved the rate.
const SUB_BITS: u32 = 4;
const SUBS: usize = 1 << SUB_BITS;

/// Histogram buckets: `SUBS` per power of two up to 2^40 µs.
const BUCKETS: usize = SUBS * 40;

fn bucket_of(micros: u64) -> usize {
    if micros < SUBS as u64 {
        return micros as usize;
    }
    let log = 63 - micros.leading_zeros();
    let sub = ((micros >> (log - SUB_BITS)) as usize) & (SUBS - 1);
    (log as usize * SUBS + sub).min(BUCKETS - 1)
}

/// The upper bound, in microseconds, of a bucket.
fn bucket_ceiling(bucket: usize) -> u64 {
    if bucket < SUBS {
        return bucket as u64;
    }
    let log = (bucket / SUBS) as u32;
    let sub = (bucket % SUBS) as u64;
    (1u64 << log) + ((sub + 1) << (log - SUB_BITS)) - 1
}

/// Latencies counted by bucket, several intervals' worth.
#[derive(Debug, Clone)]
struct Pool {
    counts: Vec<u64>,
    samples: u64,
}

impl Pool {
    fn new() -> Pool {
        Pool {
            counts: vec![0; BUCKETS],
            samples: 0,
        }
    }

    /// Adds (or, with `remove`, takes away) one interval's counts.
    fn add(&mut self, interval: &[(u16, u32)], remove: bool) {
        for &(bucket, count) in interval {
            let slot = &mut self.counts[usize::from(bucket)];
            if remove {
                *slot -= u64::from(count);
                self.samples -= u64::from(count);
            } else {
                *slot += u64::from(count);
                self.samples += u64::from(count);
            }
        }
    }

    fn clear(&mut self) {
        self.counts.iter_mut().for_each(|count| *count = 0);
        self.samples = 0;
    }

    /// The `quantile` of the pooled latencies (a bucket's upper bound).
    fn percentile(&self, quantile: f64) -> u64 {
        percentile(self.counts.iter().copied(), self.samples, quantile)
    }
}

/// The `quantile` of `samples` latencies counted by bucket.
fn percentile(counts: impl Iterator<Item = u64>, samples: u64, quantile: f64) -> u64 {
    let wanted = (samples as f64 * quantile).ceil() as u64;
    let mut seen = 0u64;
    for (bucket, count) in counts.enumerate() {
        seen += count;
        if seen >= wanted {
            return bucket_ceiling(bucket);
        }
    }
    bucket_ceiling(BUCKETS - 1)
}

/// The controller; see the module documentation.
#[derive(Debug, Clone)]
pub struct Admission {
    ceiling: f64,
    rate: f64,
    /// The interval under way: its latencies by bucket, and how many.
    histogram: Vec<u32>,
    samples: u32,
    background_bytes: f64,
    /// The last quiet intervals' latencies (non-empty buckets), newest last,
    /// and their pool.
    quiet: VecDeque<Vec<(u16, u32)>>,
    quiet_pool: Pool,
    /// The pool's p99, kept because the node reads it after every request.
    baseline_micros: Option<u64>,
    /// The busy intervals since the last judgement that changed the rate
    /// or ended a slow judgement.
    busy_pool: Pool,
    busy_intervals: u32,
    last_p99_micros: Option<u64>,
    judged_p99_micros: Option<u64>,
    interval_ends: Option<Instant>,
    /// The number of the interval under way: whole seconds of the wall
    /// clock once [`Admission::align`] was called, else counted from the
    /// first.
    interval: u64,
    /// Whether the last interval had enough requests to measure: a probe
    /// holds background work only then.
    measuring: bool,
    throttles: u64,
    probes: u64,
}

impl Admission {
    /// A controller whose rate never exceeds `ceiling` bytes per second.
    pub fn new(ceiling: u64) -> Admission {
        Admission {
            ceiling: ceiling as f64,
            rate: ceiling as f64,
            histogram: vec![0; BUCKETS],
            samples: 0,
            background_bytes: 0.0,
            quiet: VecDeque::with_capacity(QUIET_KEPT + 1),
            quiet_pool: Pool::new(),
            baseline_micros: None,
            busy_pool: Pool::new(),
            busy_intervals: 0,
            last_p99_micros: None,
            judged_p99_micros: None,
            interval_ends: None,
            interval: 1,
            measuring: false,
            throttles: 0,
            probes: 0,
        }
    }

    /// Aligns the intervals on the wall clock's whole seconds (`now` is
    /// `unix_time_micros`), so that members whose clocks agree probe in the
    /// same intervals. The interval under way ends at the next whole second.
    pub fn align(&mut self, now: Instant, unix_time_micros: u64) {
        let into = unix_time_micros % 1_000_000;
        self.interval = unix_time_micros / 1_000_000;
        self.interval_ends = Some(now + Duration::from_micros(1_000_000 - into));
    }

    /// The background rate now, in bytes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Whether background work holds still now: the interval under way is
    /// a probe, which measures the baseline. Only while foreground requests
    /// are there to measure (the last interval had enough): an idle node's
    /// background work never holds.
    pub fn probing(&self) -> bool {
        self.measuring && self.interval.is_multiple_of(PROBE_EVERY)
    }

    /// The baseline p99 learnt from quiet intervals, in microseconds.
    pub fn baseline_micros(&self) -> Option<u64> {
        self.baseline_micros
    }

    /// The p99 of the last interval with enough requests, in microseconds.
    pub fn last_p99_micros(&self) -> Option<u64> {
        self.last_p99_micros
    }

    /// The pooled p99 of the last judgement (fast or slow), in
    /// microseconds.
    pub fn judged_p99_micros(&self) -> Option<u64> {
        self.judged_p99_micros
    }

    /// How often the rate was halved.
    pub fn throttles(&self) -> u64 {
        self.throttles
    }

    /// Probe intervals that taught the baseline.
    pub fn probes(&self) -> u64 {
        self.probes
    }

    /// Background work spent `bytes`.
    pub fn spent(&mut self, bytes: f64) {
        self.background_bytes += bytes;
    }

    /// A foreground request took `latency`; closes the interval when due.
    pub fn observe(&mut self, now: Instant, latency: Duration) {
        self.tick(now);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram[bucket_of(micros)] += 1;
        self.samples = self.samples.saturating_add(1);
    }

    /// Closes the interval if it is over: adjusts the rate.
    pub fn tick(&mut self, now: Instant) {
        let ends = *self.interval_ends.get_or_insert(now + INTERVAL);
        if now < ends {
            return;
        }
        // Whether the closing interval was a probe, as the node saw it.
        let probe = self.probing();
        self.measuring = self.samples >= SAMPLES_MIN;
        if self.measuring {
            self.last_p99_micros = Some(percentile(
                self.histogram.iter().map(|&count| u64::from(count)),
                u64::from(self.samples),
                0.99,
            ));
            let counts: Vec<(u16, u32)> = (0u16..)
                .zip(&self.histogram)
                .filter(|(_, count)| **count > 0)
                .map(|(bucket, count)| (bucket, *count))
                .collect();
            if probe || self.background_bytes == 0.0 {
                self.learn_quiet(counts);
                self.probes += u64::from(probe);
            } else if self.quiet.len() >= QUIET_MIN {
                self.busy_pool.add(&counts, false);
                self.busy_intervals += 1;
                self.judge();
            }
            // Before enough quiet intervals, busy ones wait for probes.
        }
        self.histogram.iter_mut().for_each(|count| *count = 0);
        self.samples = 0;
        self.background_bytes = 0.0;
        // Whole intervals, so that an aligned controller stays aligned.
        let mut ends = ends + INTERVAL;
        self.interval += 1;
        while ends <= now {
            // A whole interval without a request.
            ends += INTERVAL;
            self.interval += 1;
            self.measuring = false;
        }
        self.interval_ends = Some(ends);
    }

    /// A quiet interval joins the baseline's pool; the oldest leaves it.
    fn learn_quiet(&mut self, counts: Vec<(u16, u32)>) {
        self.quiet_pool.add(&counts, false);
        self.quiet.push_back(counts);
        if self.quiet.len() > QUIET_KEPT
            && let Some(oldest) = self.quiet.pop_front()
        {
            self.quiet_pool.add(&oldest, true);
        }
        self.baseline_micros = Some(self.quiet_pool.percentile(0.99));
    }

    /// Judges the busy intervals pooled so far against the baseline.
    fn judge(&mut self) {
        let Some(baseline) = self.baseline_micros else {
            return;
        };
        let slow = self.busy_intervals >= JUDGED_BUSY;
        if !slow && self.busy_intervals < FAST_BUSY {
            return;
        }
        let judged = self.busy_pool.percentile(0.99);
        let ratio = judged as f64 / baseline.max(1) as f64;
        let floor = self.ceiling * FLOOR_FRACTION;
        if ratio > 1.0 + FAST_MARGIN {
            self.rate = (self.rate / 2.0).max(floor);
            self.throttles += 1;
        } else if !slow {
            return;
        } else if ratio > 1.0 + TARGET {
            self.rate = (self.rate / (1.0 + STEP_FRACTION)).max(floor);
            self.throttles += 1;
        } else {
            self.rate = (self.rate * (1.0 + STEP_FRACTION)).min(self.ceiling);
        }
        self.judged_p99_micros = Some(judged);
        self.busy_pool.clear();
        self.busy_intervals = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One interval of 1,000 requests: at `busy_micros` while background
    /// work runs (it spends bytes unless `background` is false or the
    /// interval is a probe, when the node holds it), else at `quiet_micros`.
    fn interval(
        admission: &mut Admission,
        at: &mut Instant,
        busy_micros: u64,
        quiet_micros: u64,
        background: bool,
    ) {
        let busy = background && !admission.probing();
        if busy {
            admission.spent(1000.0);
        }
        let micros = if busy { busy_micros } else { quiet_micros };
        for _ in 0..1000 {
            admission.observe(*at, Duration::from_micros(micros));
        }
        *at += INTERVAL;
        admission.tick(*at);
    }

    /// A controller with a ceiling of 8 MiB/s that learnt a baseline of
    /// 1 ms from three quiet intervals.
    fn taught() -> (Admission, Instant) {
        let mut at = Instant::now();
        let mut admission = Admission::new(8 << 20);
        admission.tick(at);
        for _ in 0..QUIET_MIN {
            interval(&mut admission, &mut at, 1000, 1000, false);
        }
        assert_eq!(admission.baseline_micros(), Some(1023));
        (admission, at)
    }

    #[test]
    fn buckets_are_finer_than_the_margin() {
        let mut previous = 0;
        for micros in (0u64..100_000).chain([123_456, 10_000_000, u64::MAX]) {
            let bucket = bucket_of(micros);
            assert!(bucket >= previous, "buckets follow their values");
            previous = bucket;
            let ceiling = bucket_ceiling(bucket);
            if micros < 1 << 39 {
                assert!(ceiling >= micros, "{micros} → {ceiling}");
                assert!(
                    ceiling as f64 <= micros as f64 * (1.0 + 1.0 / SUBS as f64),
                    "{micros} → {ceiling}"
                );
            }
        }
        // A p99 10 % above another lies at least one bucket higher, so the
        // margin is judged on distinct buckets, not on a boundary.
        for micros in [500u64, 1000, 2047, 2048, 5000, 7000, 40_000] {
            let above = micros + micros / 10;
            assert!(bucket_of(above) > bucket_of(micros), "{micros}");
        }
    }

    #[test]
    fn large_harm_halves_the_rate_every_few_intervals_down_to_a_floor() {
        let (mut admission, mut at) = taught();
        let ceiling = f64::from(8 << 20);
        let floor = ceiling * FLOOR_FRACTION;
        assert_eq!(admission.rate(), ceiling);
        // Background work triples the p99: judged fast, on three busy
        // intervals at a time, halved after each three, down to the floor.
        let mut busy = 0;
        while admission.rate() > floor {
            if !admission.probing() {
                busy += 1;
            }
            interval(&mut admission, &mut at, 3000, 1000, true);
            assert!(busy <= 18, "{admission:?}");
        }
        assert_eq!(busy, 18);
        assert_eq!(admission.throttles(), 6);
        assert_eq!(admission.judged_p99_micros(), Some(3071));
        // The probes measured 1 ms: the baseline stays.
        assert!(admission.probes() >= 1);
        assert_eq!(admission.baseline_micros(), Some(1023));
        // At the floor, harm halves nothing more.
        for _ in 0..10 {
            interval(&mut admission, &mut at, 3000, 1000, true);
        }
        assert_eq!(admission.rate(), floor);
    }

    #[test]
    fn small_harm_is_judged_on_twenty_busy_intervals_pooled() {
        let (mut admission, mut at) = taught();
        let ceiling = f64::from(8 << 20);
        // 1.2 ms against 1 ms: beyond the target, within the fast margin:
        // the rate steps down by a quarter after twenty busy intervals.
        let mut busy = 0;
        while busy < JUDGED_BUSY - 1 {
            if !admission.probing() {
                busy += 1;
            }
            interval(&mut admission, &mut at, 1200, 1000, true);
        }
        assert_eq!(admission.rate(), ceiling);
        assert_eq!(admission.judged_p99_micros(), None);
        while admission.probing() {
            interval(&mut admission, &mut at, 1200, 1000, true);
        }
        interval(&mut admission, &mut at, 1200, 1000, true);
        assert_eq!(admission.rate(), ceiling / 1.25);
        assert_eq!(admission.judged_p99_micros(), Some(1215));
        // A few slow requests in every busy interval, fewer than one in a
        // hundred, are no harm: the rate steps up again after twenty.
        let mut busy = 0;
        while busy < JUDGED_BUSY {
            let quiet = admission.probing();
            if !quiet {
                busy += 1;
                admission.spent(1000.0);
            }
            for slow in 0..1000 {
                let micros = if !quiet && slow < 9 { 50_000 } else { 1000 };
                admission.observe(at, Duration::from_micros(micros));
            }
            at += INTERVAL;
            admission.tick(at);
        }
        assert_eq!(admission.rate(), ceiling);
        assert_eq!(admission.judged_p99_micros(), Some(1023));
        assert_eq!(admission.throttles(), 1);
    }

    #[test]
    fn harmless_work_climbs_from_the_floor_to_the_ceiling_in_minutes() {
        let (mut admission, mut at) = taught();
        let ceiling = f64::from(8 << 20);
        while admission.rate() > ceiling * FLOOR_FRACTION {
            interval(&mut admission, &mut at, 5000, 1000, true);
        }
        // Quiet intervals teach but do not raise the rate.
        let floor = admission.rate();
        for _ in 0..50 {
            interval(&mut admission, &mut at, 1000, 1000, false);
        }
        assert_eq!(admission.rate(), floor);
        // Harmless background work: up by a quarter every twenty busy
        // intervals, 64 times in 19 judgements.
        let mut intervals = 0;
        while admission.rate() < ceiling {
            interval(&mut admission, &mut at, 1000, 1000, true);
            intervals += 1;
            assert!(intervals < 450, "{admission:?}");
        }
        assert!(intervals > 19 * 20, "{intervals}");
    }

    /// The mean rate, as a fraction of the ceiling, and the mean p99
    /// factor of busy intervals over `seconds` of background work whose
    /// requests are `harm(rate)` times slower than quiet ones. Noise: each
    /// interval's latencies are scaled by a log-normal factor (sigma 0.3),
    /// each request's by another (sigma 0.5), and one interval in twenty
    /// has 3 % of its requests five times slower (a flush or compaction).
    fn run_under_noise(harm: impl Fn(f64) -> f64, seconds: usize, seed: u64) -> (f64, f64) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut normal = move || {
            // Box-Muller: a standard normal from two uniforms.
            let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
            let stall = u < 0.05;
            (
                (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos(),
                stall,
            )
        };
        let mut at = Instant::now();
        let ceiling = 8 << 20;
        let mut admission = Admission::new(ceiling);
        admission.tick(at);
        let (mut rates, mut harms, mut busy) = (0.0, 0.0, 0.0);
        for _ in 0..seconds {
            let share = admission.rate() / ceiling as f64;
            let quiet = admission.probing();
            let factor = if quiet { 1.0 } else { harm(share) };
            if !quiet {
                admission.spent(1000.0);
                harms += factor;
                busy += 1.0;
            }
            let (second, stall) = normal();
            let scale = 1000.0 * factor * (0.3 * second).exp();
            for request in 0..500 {
                let slow = if stall && request < 15 { 5.0 } else { 1.0 };
                let micros = scale * slow * (0.5 * normal().0).exp();
                admission.observe(at, Duration::from_micros(micros as u64));
            }
            at += INTERVAL;
            admission.tick(at);
            rates += share;
        }
        (rates / seconds as f64, harms / busy)
    }

    #[test]
    fn noise_alone_does_not_hold_harmless_work_at_the_floor() {
        for seed in 0..3 {
            let (harmful, _) = run_under_noise(|_| 1.5, 2000, seed);
            let (slight, _) = run_under_noise(|_| 1.1, 2000, seed);
            let (harmless, _) = run_under_noise(|_| 1.0, 2000, seed);
            eprintln!("seed {seed}: {harmful:.3} {slight:.3} {harmless:.3}");
            assert!(harmful < 0.05, "seed {seed}: harmful work at {harmful:.3}");
            assert!(
                harmless > 0.3,
                "seed {seed}: harmless work at {harmless:.3}"
            );
            assert!(
                harmful < slight && slight < harmless,
                "seed {seed}: the rate falls as harm grows: {harmful:.3} {slight:.3} {harmless:.3}"
            );
        }
    }

    #[test]
    fn harm_that_grows_with_the_rate_settles_near_the_margin() {
        // Harm 1 + 0.8 × rate / ceiling: 10 % at an eighth of the ceiling.
        for seed in 0..3 {
            let (rate, harm) = run_under_noise(|share| 1.0 + 0.8 * share, 2000, seed);
            eprintln!("seed {seed}: rate {rate:.3}, harm {harm:.3}");
            assert!(harm < 1.15, "seed {seed}: harm {harm:.3} at rate {rate:.3}");
            assert!(rate > 0.04, "seed {seed}: rate {rate:.3}, harm {harm:.3}");
        }
    }

    #[test]
    fn probes_teach_the_baseline_while_background_work_never_stops() {
        let mut at = Instant::now();
        let mut admission = Admission::new(1 << 20);
        admission.tick(at);
        // A node busy from its start: no judgement before three quiet
        // intervals, which only probes give it.
        while admission.probes() < QUIET_MIN as u64 - 1 {
            interval(&mut admission, &mut at, 5000, 1000, true);
        }
        assert_eq!(admission.baseline_micros(), Some(1023));
        while !admission.probing() {
            interval(&mut admission, &mut at, 5000, 1000, true);
        }
        assert_eq!(admission.rate(), f64::from(1 << 20));
        assert_eq!(admission.throttles(), 0);
        // The third probe holds background work and measures 1 ms; then
        // three intervals at 5 ms with background work are harm.
        interval(&mut admission, &mut at, 5000, 1000, true);
        assert_eq!(admission.probes(), QUIET_MIN as u64);
        for _ in 0..FAST_BUSY {
            interval(&mut admission, &mut at, 5000, 1000, true);
        }
        assert_eq!(admission.rate(), f64::from(1 << 19));
        assert_eq!(admission.last_p99_micros(), Some(5119));
        // One probe in ten.
        let probes = admission.probes();
        for _ in 0..100 {
            interval(&mut admission, &mut at, 1000, 1000, true);
        }
        assert_eq!(admission.probes(), probes + 10);
    }

    #[test]
    fn aligned_controllers_probe_in_the_same_whole_seconds() {
        let now = Instant::now();
        let second = 1_700_000_000u64;
        // Two nodes whose clocks agree, started at different moments.
        let mut a = Admission::new(1000);
        a.align(now, second * 1_000_000 + 250_000);
        let mut b = Admission::new(1000);
        let b_start = now + Duration::from_millis(3_400);
        b.align(b_start, (second + 3) * 1_000_000 + 650_000);
        let mut probing_together = 0;
        for step in 0..4000u64 {
            // Three foreground requests every 10 ms: 300 an interval.
            let at = now + Duration::from_millis(3_500 + step * 10);
            for _ in 0..3 {
                a.observe(at, Duration::from_micros(100));
                b.observe(at, Duration::from_micros(100));
            }
            assert_eq!(a.probing(), b.probing(), "at step {step}");
            probing_together += u64::from(a.probing());
        }
        // 40 s: four probes of a second, a hundred looks each.
        assert_eq!(probing_together, 400);
        assert_eq!(a.probes(), 4);
        assert_eq!(b.probes(), 4);
        // A probe is the whole second whose number is a multiple of ten,
        // after an interval that measured.
        let mut c = Admission::new(1000);
        c.align(now, 1_699_999_998_900_000);
        for _ in 0..SAMPLES_MIN {
            c.observe(now, Duration::from_micros(100));
        }
        for _ in 0..SAMPLES_MIN {
            c.observe(
                now + Duration::from_millis(1_099),
                Duration::from_micros(100),
            );
        }
        assert!(!c.probing());
        c.tick(now + Duration::from_millis(1_100));
        assert!(c.probing());
        c.tick(now + Duration::from_millis(2_099));
        assert!(c.probing());
        c.tick(now + Duration::from_millis(2_100));
        assert!(!c.probing());
    }

    #[test]
    fn an_idle_node_never_holds_its_background_work() {
        let mut at = Instant::now();
        let mut admission = Admission::new(1000);
        admission.align(at, 1_700_000_000_000_000 - 1);
        for _ in 0..100 {
            // A few requests, too few to measure: 100 a second.
            for _ in 0..SAMPLES_MIN / 8 {
                admission.observe(at, Duration::from_millis(1));
            }
            at += Duration::from_millis(250);
            admission.tick(at);
            assert!(!admission.probing());
        }
        // Then a gap of 30 s: the intervals it spans measured nothing.
        for _ in 0..SAMPLES_MIN {
            admission.observe(at, Duration::from_millis(1));
        }
        at += Duration::from_secs(30);
        admission.tick(at);
        assert!(!admission.probing());
        assert_eq!(admission.probes(), 0);
    }

    #[test]
    fn too_few_requests_change_nothing() {
        let mut at = Instant::now();
        let mut admission = Admission::new(1000);
        admission.tick(at);
        admission.spent(10.0);
        admission.observe(at, Duration::from_secs(1));
        at += INTERVAL;
        admission.tick(at);
        assert_eq!(admission.rate(), 1000.0);
        assert_eq!(admission.baseline_micros(), None);
    }
}
