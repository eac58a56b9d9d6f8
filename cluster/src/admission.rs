//! Admission control for background work (Dynamo §6.5: background tasks get
//! the slices that foreground latency leaves them).
//!
//! The node's background work — anti-entropy exchanges and tree builds,
//! the pulls of moving partitions and the answers to them, the sweeps of
//! stale copies and of tombstones — spends a byte budget refilled at a
//! rate, each step charged for the states it read or merged (not for the
//! bytes it sent: a digest costs the state read to make it). This
//! controller sets that rate from the latency of the foreground requests the
//! node serves, measured by its shell: each interval it takes the 99th
//! percentile of the interval's requests. The *baseline* is the median p99
//! of the last `QUIET_KEPT` intervals without background work; the *judged*
//! p99 the median of the last `BUSY_KEPT` intervals with it. Medians, because
//! one interval's p99 is noisy (a few hundred requests, and a flush or a
//! compaction lands in one interval or the next): judged one interval at a
//! time, noise alone read as harm so often that the rate sank to the floor
//! (docs/bench.md, session 12).
//!
//! - When the judged p99 exceeds the baseline by more than the margin, the
//!   rate halves (down to a floor, so background work always progresses)
//!   and the busy intervals are forgotten, so the next judgement is of the
//!   new rate. Otherwise each busy interval raises the rate by an eighth of
//!   itself (multiplicative increase, multiplicative decrease): a rate found
//!   harmful is approached again over about six intervals wherever it lies,
//!   where an additive step of a tenth of the ceiling crossed a low harmful
//!   rate within one or two.
//! - The baseline must be learnt while background work runs for minutes (a
//!   join) or from the moment a node starts (a joining node has nothing
//!   else to learn from). So one interval in `PROBE_EVERY` is a *probe*,
//!   while the node has requests to measure: background work holds still
//!   for that interval, and its p99 goes to the baseline. Probes are the
//!   intervals whose number (whole seconds of the clock the node is given)
//!   is a multiple of `PROBE_EVERY`, so that members whose clocks agree
//!   probe together: a coordinator's latency includes its
//!   replicas', whose background work a lone probe would still see.
//!
//! Pure: fed latencies, bytes and instants.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long one measurement interval lasts.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Fewest requests in an interval for its p99 to count.
pub const SAMPLES_MIN: u32 = 200;

/// How far above the baseline p99 counts as harm.
pub const MARGIN: f64 = 0.10;

/// The floor, as a fraction of the ceiling.
pub const FLOOR_FRACTION: f64 = 1.0 / 64.0;

/// A harmless interval of background work raises the rate by this fraction
/// of itself.
pub const RAISE_FRACTION: f64 = 1.0 / 8.0;

/// One interval in this many is a probe: background work holds still.
pub const PROBE_EVERY: u64 = 10;

/// Quiet (or probe) intervals whose median p99 is the baseline.
pub const QUIET_KEPT: usize = 5;

/// Busy intervals whose median p99 is judged against the baseline.
pub const BUSY_KEPT: usize = 3;

/// Histogram buckets per power of two of microseconds, as a power of two:
/// sixteen, so a bucket spans at most 1/16 of its values — finer than the
/// margin it judges. With four a bucket spanned 14–25 %, so any move of
/// the median p99 across a bucket boundary read as more than the 10 %
/// margin, and noise at a boundary halved the rate.
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

/// The controller; see the module documentation.
#[derive(Debug, Clone)]
pub struct Admission {
    ceiling: f64,
    rate: f64,
    histogram: Vec<u32>,
    samples: u32,
    background_bytes: f64,
    /// The p99s of the last quiet intervals, newest last.
    quiet_p99s: VecDeque<u64>,
    /// Their median, kept because the node reads it after every request.
    baseline_micros: Option<u64>,
    /// The p99s of the busy intervals since the last halving, newest last.
    busy_p99s: VecDeque<u64>,
    last_p99_micros: Option<u64>,
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
            quiet_p99s: VecDeque::with_capacity(QUIET_KEPT + 1),
            baseline_micros: None,
            busy_p99s: VecDeque::with_capacity(BUSY_KEPT + 1),
            last_p99_micros: None,
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
            let p99 = self.percentile(0.99);
            self.last_p99_micros = Some(p99);
            if probe || self.background_bytes == 0.0 {
                // A probe, or quiet: the baseline.
                keep(&mut self.quiet_p99s, p99, QUIET_KEPT);
                self.baseline_micros = median(&self.quiet_p99s);
                self.probes += u64::from(probe);
            } else if let Some(baseline) = self.baseline_micros() {
                keep(&mut self.busy_p99s, p99, BUSY_KEPT);
                if let Some(judged) =
                    median(&self.busy_p99s).filter(|_| self.busy_p99s.len() == BUSY_KEPT)
                {
                    if judged as f64 > baseline as f64 * (1.0 + MARGIN) {
                        self.rate = (self.rate / 2.0).max(self.ceiling * FLOOR_FRACTION);
                        self.throttles += 1;
                        self.busy_p99s.clear();
                    } else {
                        self.rate = (self.rate * (1.0 + RAISE_FRACTION)).min(self.ceiling);
                    }
                }
            }
            // Without a baseline yet, busy intervals wait for a probe.
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

    /// The `quantile` of the interval's latencies (a bucket's upper bound).
    fn percentile(&self, quantile: f64) -> u64 {
        let wanted = (f64::from(self.samples) * quantile).ceil() as u64;
        let mut seen = 0u64;
        for (bucket, count) in self.histogram.iter().enumerate() {
            seen += u64::from(*count);
            if seen >= wanted {
                return bucket_ceiling(bucket);
            }
        }
        bucket_ceiling(BUCKETS - 1)
    }
}

/// Appends `value`, keeping the last `kept`.
fn keep(values: &mut VecDeque<u64>, value: u64, kept: usize) {
    values.push_back(value);
    while values.len() > kept {
        values.pop_front();
    }
}

/// The median (the upper one of an even count).
fn median(values: &VecDeque<u64>) -> Option<u64> {
    let mut sorted: Vec<u64> = values.iter().copied().collect();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One interval of 1,000 requests at `micros`, with background work
    /// spending bytes unless `background` is false or the interval is a
    /// probe (the node holds its background work then).
    fn interval(admission: &mut Admission, at: &mut Instant, micros: u64, background: bool) {
        if background && !admission.probing() {
            admission.spent(1000.0);
        }
        for _ in 0..1000 {
            admission.observe(*at, Duration::from_micros(micros));
        }
        *at += INTERVAL;
        admission.tick(*at);
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
    fn harm_halves_the_rate_down_to_a_floor_and_harmless_work_restores_it() {
        let mut at = Instant::now();
        let ceiling = f64::from(8 << 20);
        let floor = ceiling * FLOOR_FRACTION;
        let mut admission = Admission::new(8 << 20);
        admission.tick(at);
        // Quiet intervals at 1 ms teach the baseline and leave the rate.
        for _ in 0..3 {
            interval(&mut admission, &mut at, 1000, false);
        }
        assert_eq!(admission.baseline_micros(), Some(1023));
        assert_eq!(admission.rate(), ceiling);
        // Background work with p99 at 3 ms: judged on three intervals at a
        // time, halved after each three, down to the floor.
        let mut intervals = 0;
        while admission.rate() > floor {
            interval(&mut admission, &mut at, 3000, true);
            intervals += 1;
            assert!(intervals < 40, "{admission:?}");
        }
        assert_eq!(admission.throttles(), 6);
        // 18 busy intervals and the two probes among them, which measured
        // 3 ms but did not move the median of five.
        assert_eq!(intervals, 20);
        assert_eq!(admission.probes(), 2);
        assert_eq!(admission.baseline_micros(), Some(1023));
        // A slow interval among harmless ones is not harm.
        for micros in [1000, 1000, 10_000, 1000, 1000, 10_000, 1000] {
            interval(&mut admission, &mut at, micros, true);
        }
        assert_eq!(admission.throttles(), 6);
        assert!(admission.rate() > floor * 1.5, "{admission:?}");
        // Quiet intervals teach but do not raise the rate.
        let rate = admission.rate();
        for _ in 0..20 {
            interval(&mut admission, &mut at, 1000, false);
        }
        assert_eq!(admission.rate(), rate);
        // Harmless background work: the rate climbs back to the ceiling by
        // an eighth per interval.
        let mut intervals = 0;
        while admission.rate() < ceiling {
            interval(&mut admission, &mut at, 1000, true);
            intervals += 1;
            assert!(intervals < 60, "{admission:?}");
        }
        assert!(intervals > 25, "{intervals}");
        assert_eq!(admission.throttles(), 6);
    }

    /// The mean rate, as a fraction of the ceiling, over `seconds` of
    /// background work whose p99 is `harm` times the probes' p99, both
    /// with the same noise: log-normal, sigma 0.3 (a node's per-second p99
    /// is the eighth slowest of ~750 requests).
    fn mean_rate_under_noise(harm: f64, seconds: usize, seed: u64) -> f64 {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut at = Instant::now();
        let ceiling = 8 << 20;
        let mut admission = Admission::new(ceiling);
        admission.tick(at);
        let mut sum = 0.0;
        for _ in 0..seconds {
            // Box-Muller: a standard normal from two uniforms.
            let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
            let normal = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            let factor = if admission.probing() { 1.0 } else { harm };
            let micros = (2000.0 * factor * (0.3 * normal).exp()) as u64;
            interval(&mut admission, &mut at, micros, true);
            sum += admission.rate() / ceiling as f64;
        }
        sum / seconds as f64
    }

    #[test]
    fn harm_through_noise_is_held_near_the_floor() {
        // The price, not asserted: noise alone is judged harm often enough
        // (halving on each, while an eighth a second takes six seconds to
        // recover) that harmless work runs at 11-19 % of the ceiling on
        // average here. A rule that also asked harm to exceed every quiet
        // second kept ran harmless work at 77-85 %, but let a real join
        // move client p99 by 1.51 x (docs/bench.md, session 13).
        for seed in 0..3 {
            let harmful = mean_rate_under_noise(1.5, 3000, seed);
            let slight = mean_rate_under_noise(1.1, 3000, seed);
            let harmless = mean_rate_under_noise(1.0, 3000, seed);
            assert!(harmful < 0.05, "seed {seed}: harmful work at {harmful:.3}");
            assert!(
                harmful < slight && slight < harmless,
                "seed {seed}: the rate falls as harm grows: {harmful:.3} {slight:.3} {harmless:.3}"
            );
        }
    }

    #[test]
    fn probes_teach_the_baseline_while_background_work_never_stops() {
        let mut at = Instant::now();
        let mut admission = Admission::new(1 << 20);
        admission.tick(at);
        // A node busy from its start: no judgement without a baseline.
        while !admission.probing() {
            interval(&mut admission, &mut at, 5000, true);
        }
        assert_eq!(admission.baseline_micros(), None);
        assert_eq!(admission.rate(), f64::from(1 << 20));
        // The probe holds background work and measures 1 ms.
        interval(&mut admission, &mut at, 1000, true);
        assert_eq!(admission.probes(), 1);
        assert_eq!(admission.baseline_micros(), Some(1023));
        // Then three intervals at 5 ms with background work are harm.
        for _ in 0..3 {
            interval(&mut admission, &mut at, 5000, true);
        }
        assert_eq!(admission.rate(), f64::from(1 << 19));
        assert_eq!(admission.last_p99_micros(), Some(5119));
        // One probe in ten.
        for _ in 0..100 {
            interval(&mut admission, &mut at, 1000, true);
        }
        assert_eq!(admission.probes(), 11);
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
