//! Admission control for background work (Dynamo §6.5: background tasks get
//! the slices that foreground latency leaves them).
//!
//! The node's background work — anti-entropy exchanges and the pulls of
//! moving partitions — spends a byte budget refilled at a rate. This
//! controller sets that rate from the latency of the foreground requests the
//! node serves, measured by its shell: each interval it takes the 99th
//! percentile of the interval's requests; intervals without background work
//! teach it the *baseline* p99; an interval with background work whose p99
//! exceeds the baseline by more than the margin halves the rate (down to a
//! floor, so background work always progresses), and any other interval
//! raises it by a tenth of the ceiling (additive increase, multiplicative
//! decrease). Pure: fed latencies, bytes and instants.

use std::time::{Duration, Instant};

/// How long one measurement interval lasts.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Fewest requests in an interval for its p99 to count.
pub const SAMPLES_MIN: u32 = 200;

/// How far above the baseline p99 counts as harm.
pub const MARGIN: f64 = 0.10;

/// The floor, as a fraction of the ceiling.
pub const FLOOR_FRACTION: f64 = 1.0 / 64.0;

/// Histogram buckets: four per power of two of microseconds.
const BUCKETS: usize = 4 * 40;

fn bucket_of(micros: u64) -> usize {
    if micros < 4 {
        return micros as usize;
    }
    let log = 63 - micros.leading_zeros() as usize;
    let quarter = ((micros >> (log - 2)) & 3) as usize;
    (log * 4 + quarter).min(BUCKETS - 1)
}

/// The upper bound, in microseconds, of a bucket.
fn bucket_ceiling(bucket: usize) -> u64 {
    if bucket < 4 {
        return bucket as u64;
    }
    let (log, quarter) = (bucket / 4, (bucket % 4) as u64);
    (1u64 << log) + ((quarter + 1) << (log - 2)) - 1
}

/// The controller; see the module documentation.
#[derive(Debug, Clone)]
pub struct Admission {
    ceiling: f64,
    rate: f64,
    histogram: Vec<u32>,
    samples: u32,
    background_bytes: f64,
    baseline_micros: Option<f64>,
    interval_ends: Option<Instant>,
    throttles: u64,
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
            baseline_micros: None,
            interval_ends: None,
            throttles: 0,
        }
    }

    /// The background rate now, in bytes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The baseline p99 learnt from quiet intervals, in microseconds.
    pub fn baseline_micros(&self) -> Option<f64> {
        self.baseline_micros
    }

    /// How often the rate was halved.
    pub fn throttles(&self) -> u64 {
        self.throttles
    }

    /// Background work spent `bytes`.
    pub fn spent(&mut self, bytes: f64) {
        self.background_bytes += bytes;
    }

    /// A foreground request took `latency`; closes the interval when due.
    pub fn observe(&mut self, now: Instant, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram[bucket_of(micros)] += 1;
        self.samples = self.samples.saturating_add(1);
        self.tick(now);
    }

    /// Closes the interval if it is over: adjusts the rate.
    pub fn tick(&mut self, now: Instant) {
        let ends = *self.interval_ends.get_or_insert(now + INTERVAL);
        if now < ends {
            return;
        }
        if self.samples >= SAMPLES_MIN {
            let p99 = self.percentile(0.99) as f64;
            let busy = self.background_bytes > 0.0;
            match (busy, self.baseline_micros) {
                (false, baseline) => {
                    // Quiet: learn the baseline (slowly, so one interval
                    // does not move it far).
                    self.baseline_micros = Some(baseline.map_or(p99, |b| 0.8 * b + 0.2 * p99));
                    self.raise();
                }
                (true, Some(baseline)) if p99 > baseline * (1.0 + MARGIN) => {
                    self.rate = (self.rate / 2.0).max(self.ceiling * FLOOR_FRACTION);
                    self.throttles += 1;
                }
                (true, _) => self.raise(),
            }
        }
        self.histogram.iter_mut().for_each(|count| *count = 0);
        self.samples = 0;
        self.background_bytes = 0.0;
        self.interval_ends = Some(now + INTERVAL);
    }

    fn raise(&mut self) {
        self.rate = (self.rate + self.ceiling / 10.0).min(self.ceiling);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(admission: &mut Admission, at: &mut Instant, micros: u64, background: bool) {
        if background {
            admission.spent(1000.0);
        }
        for _ in 0..1000 {
            admission.observe(*at, Duration::from_micros(micros));
        }
        *at += INTERVAL;
        admission.tick(*at);
    }

    #[test]
    fn buckets_bound_their_values_within_a_quarter() {
        for micros in [0u64, 1, 3, 4, 5, 7, 8, 100, 1000, 4095, 123_456, 10_000_000] {
            let ceiling = bucket_ceiling(bucket_of(micros));
            assert!(ceiling >= micros, "{micros} → {ceiling}");
            assert!(
                ceiling as f64 <= micros as f64 * 1.25 + 1.0,
                "{micros} → {ceiling}"
            );
        }
    }

    #[test]
    fn harm_halves_the_rate_down_to_a_floor_and_quiet_restores_it() {
        let start = Instant::now();
        let mut at = start;
        let mut admission = Admission::new(8 << 20);
        admission.tick(at);
        // Quiet intervals at 1 ms teach the baseline.
        for _ in 0..3 {
            interval(&mut admission, &mut at, 1000, false);
        }
        let baseline = admission.baseline_micros().unwrap();
        assert!((1000.0..=1250.0).contains(&baseline), "{baseline}");
        // Background work with p99 at 3 ms: halved each interval, to the floor.
        for _ in 0..10 {
            interval(&mut admission, &mut at, 3000, true);
        }
        assert_eq!(admission.rate(), f64::from(8 << 20) * FLOOR_FRACTION);
        assert_eq!(admission.throttles(), 10);
        // Background work that does not hurt: the rate climbs back.
        for _ in 0..12 {
            interval(&mut admission, &mut at, 1000, true);
        }
        assert_eq!(admission.rate(), f64::from(8 << 20));
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
