//! The turns of `shoal-bench run --alternate-background`, one by one.
//!
//! Pooling every running turn's latencies against every paused turn's
//! compares two tails that a few bad minutes can each dominate: on this
//! kind of shared machine, where the host takes 0–40 % of the CPU in bursts
//! of tens of seconds, the pooled ratio of a run with *nothing* to do in the
//! background came out at 0.89 and 2.20 (docs/bench.md, session 15). Here
//! each running turn's read p99 is set against the mean of the paused turns
//! just before and after it, which cancels a drift slower than a turn, and
//! the run reports the median of those ratios with its quartiles, over all
//! such triples and over those whose turns the host left alone (its steal,
//! read from `/proc/stat`, under a bound).

use hdrhistogram::Histogram;

/// Most turns kept one by one (at 10 s a turn, eleven hours); later turns
/// count in the pooled histograms only.
pub const TURNS_KEPT_MAX: usize = 4096;

/// Fewest reads for a turn's p99 to count.
pub const TURN_READS_MIN: u64 = 500;

/// A triple counts as left alone when each of its turns had host steal
/// under this.
pub const STEAL_QUIET_PERCENT: f64 = 5.0;

/// One counted turn.
#[derive(Debug, Clone)]
pub struct Turn {
    pub paused: bool,
    pub reads: Histogram<u64>,
    /// The host's steal over the turn, in percent of CPU time; `None` when
    /// `/proc/stat` could not be read or the turn did not end.
    pub steal_percent: Option<f64>,
}

/// The turns kept, in order.
#[derive(Debug, Default)]
pub struct TurnLog {
    turns: Vec<Turn>,
}

impl TurnLog {
    /// A new turn begins; its index, or `None` past [`TURNS_KEPT_MAX`].
    pub fn begin(&mut self, paused: bool) -> Option<usize> {
        if self.turns.len() >= TURNS_KEPT_MAX {
            return None;
        }
        let reads = Histogram::new_with_bounds(1, 60_000_000, 2).ok()?;
        self.turns.push(Turn {
            paused,
            reads,
            steal_percent: None,
        });
        Some(self.turns.len() - 1)
    }

    /// A read of turn `index` took `micros`.
    pub fn record_read(&mut self, index: usize, micros: u64) {
        if let Some(turn) = self.turns.get_mut(index) {
            turn.reads.saturating_record(micros);
        }
    }

    /// Turn `index` ended with the host's steal at `steal_percent`.
    pub fn end(&mut self, index: usize, steal_percent: Option<f64>) {
        if let Some(turn) = self.turns.get_mut(index) {
            turn.steal_percent = steal_percent;
        }
    }

    pub fn turns(&self) -> &[Turn] {
        &self.turns
    }
}

/// The CPU time counters of the whole machine, from `/proc/stat`'s first
/// line: (steal, total), in clock ticks. `None` where there is none.
pub fn host_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]:
    // guest time is already counted in user time.
    let counted = fields.get(..8)?;
    Some((counted[7], counted.iter().sum()))
}

/// The steal between two [`host_cpu`] readings, in percent.
pub fn steal_between(start: (u64, u64), end: (u64, u64)) -> Option<f64> {
    let total = end.1.checked_sub(start.1)?;
    let steal = end.0.checked_sub(start.0)?;
    (total > 0).then(|| steal as f64 * 100.0 / total as f64)
}

/// A turn's read p99 with whether it was paused and its steal, or `None`
/// when it had too few reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnP99 {
    pub paused: bool,
    pub p99_micros: Option<u64>,
    pub steal_percent: Option<f64>,
}

/// For each running turn between two paused ones (all with a p99): its p99
/// over the mean of theirs, and whether all three had steal under
/// `steal_max` percent.
pub fn neighbour_ratios(turns: &[TurnP99], steal_max: f64) -> Vec<(f64, bool)> {
    let quiet = |turn: &TurnP99| turn.steal_percent.is_some_and(|steal| steal < steal_max);
    turns
        .windows(3)
        .filter_map(|triple| {
            let [before, running, after] = triple else {
                return None;
            };
            if running.paused || !before.paused || !after.paused {
                return None;
            }
            let (Some(b), Some(r), Some(a)) =
                (before.p99_micros, running.p99_micros, after.p99_micros)
            else {
                return None;
            };
            let paused = (b + a) as f64 / 2.0;
            (paused > 0.0).then(|| {
                let alone = quiet(before) && quiet(running) && quiet(after);
                (r as f64 / paused, alone)
            })
        })
        .collect()
}

/// The first quartile, median and third quartile of `values` (linear
/// between ranks); `None` when empty.
pub fn quartiles(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = q * (sorted.len() - 1) as f64;
        let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
        sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
    };
    Some((at(0.25), at(0.5), at(0.75)))
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn ratio_row(ratios: &[f64]) -> serde_json::Value {
    match quartiles(ratios) {
        Some((q1, median, q3)) => serde_json::json!({
            "triples": ratios.len(),
            "median": round2(median),
            "q1": round2(q1),
            "q3": round2(q3),
        }),
        None => serde_json::json!({ "triples": 0 }),
    }
}

/// The summary's per-turn part: each turn (paused, reads, read p99, steal)
/// and the neighbour ratios over all triples and over those left alone.
pub fn summary(log: &TurnLog) -> serde_json::Value {
    let p99s: Vec<TurnP99> = log
        .turns()
        .iter()
        .map(|turn| TurnP99 {
            paused: turn.paused,
            p99_micros: (turn.reads.len() >= TURN_READS_MIN)
                .then(|| turn.reads.value_at_quantile(0.99)),
            steal_percent: turn.steal_percent,
        })
        .collect();
    let ratios = neighbour_ratios(&p99s, STEAL_QUIET_PERCENT);
    let all: Vec<f64> = ratios.iter().map(|(ratio, _)| *ratio).collect();
    let alone: Vec<f64> = ratios
        .iter()
        .filter(|(_, alone)| *alone)
        .map(|(ratio, _)| *ratio)
        .collect();
    let list: Vec<serde_json::Value> = log
        .turns()
        .iter()
        .zip(&p99s)
        .map(|(turn, p99)| {
            serde_json::json!([
                if turn.paused { "paused" } else { "running" },
                turn.reads.len(),
                p99.p99_micros,
                turn.steal_percent
                    .map(|steal| (steal * 10.0).round() / 10.0),
            ])
        })
        .collect();
    serde_json::json!({
        "read_p99_ratio": ratio_row(&all),
        "read_p99_ratio_steal_under_5": ratio_row(&alone),
        "turns": list,
    })
}

/// What a worker loads when an operation starts: the turn's kind (low two
/// bits, `TURN_*` of the run) and its index in the log.
pub fn encode(kind: u8, index: Option<usize>) -> u64 {
    let index = index.map_or(u64::MAX >> 2, |index| index as u64);
    (index << 2) | u64::from(kind & 3)
}

/// The kind and index [`encode`] packed.
pub fn decode(turn: u64) -> (u8, Option<usize>) {
    let index = turn >> 2;
    let index = (index != u64::MAX >> 2).then_some(index as usize);
    ((turn & 3) as u8, index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns(p99s: &[u64], running_factor: f64, steal: &[f64]) -> Vec<TurnP99> {
        p99s.iter()
            .enumerate()
            .map(|(index, p99)| {
                let paused = index % 2 == 1;
                let p99 = if paused {
                    *p99
                } else {
                    (*p99 as f64 * running_factor).round() as u64
                };
                TurnP99 {
                    paused,
                    p99_micros: Some(p99),
                    steal_percent: steal.get(index).copied(),
                }
            })
            .collect()
    }

    #[test]
    fn a_steady_drift_cancels_and_an_effect_shows() {
        // The machine slows by 100 µs a turn; background work does nothing.
        let drift: Vec<u64> = (0..21).map(|turn| 4000 + 100 * turn).collect();
        let none = neighbour_ratios(&turns(&drift, 1.0, &[]), 5.0);
        assert_eq!(
            none.len(),
            9,
            "running turns 2, 4, .., 18 have two paused neighbours"
        );
        assert!(
            none.iter().all(|(ratio, _)| (ratio - 1.0).abs() < 1e-9),
            "{none:?}"
        );
        // Pooled, the same turns would read as harm or benefit by where
        // they fell; the neighbours' ratio sees a 20 % effect as 1.2.
        let harm = neighbour_ratios(&turns(&drift, 1.2, &[]), 5.0);
        let (_, median, _) = quartiles(&harm.iter().map(|(r, _)| *r).collect::<Vec<_>>()).unwrap();
        assert!((median - 1.2).abs() < 0.01, "{median}");
    }

    #[test]
    fn a_turn_the_host_took_is_set_apart() {
        let flat = vec![4000; 7];
        let steal = [0.0, 0.0, 0.0, 30.0, 0.0, 0.0, 0.0];
        let ratios = neighbour_ratios(&turns(&flat, 1.0, &steal), 5.0);
        // Running turns 2 and 4 border turn 3, which the host took.
        assert_eq!(ratios.len(), 2);
        assert!(ratios.iter().all(|(_, alone)| !alone));
        let steal = [0.0; 7];
        let ratios = neighbour_ratios(&turns(&flat, 1.0, &steal), 5.0);
        assert!(ratios.iter().all(|(_, alone)| *alone));
        // Without a reading, a turn is not known to be left alone.
        let ratios = neighbour_ratios(&turns(&flat, 1.0, &[]), 5.0);
        assert!(ratios.iter().all(|(_, alone)| !alone));
    }

    #[test]
    fn quartiles_interpolate_between_ranks() {
        assert_eq!(quartiles(&[]), None);
        assert_eq!(quartiles(&[2.0]), Some((2.0, 2.0, 2.0)));
        assert_eq!(quartiles(&[4.0, 1.0, 3.0, 2.0, 5.0]), Some((2.0, 3.0, 4.0)));
        assert_eq!(quartiles(&[1.0, 2.0]), Some((1.25, 1.5, 1.75)));
    }

    #[test]
    fn a_packed_turn_unpacks() {
        for (kind, index) in [(0, None), (1, Some(0)), (2, Some(4095)), (1, None)] {
            assert_eq!(decode(encode(kind, index)), (kind, index));
        }
    }

    #[test]
    fn the_log_is_bounded_and_steal_is_a_share_of_the_time() {
        let mut log = TurnLog::default();
        for turn in 0..TURNS_KEPT_MAX {
            assert_eq!(log.begin(turn % 2 == 1), Some(turn));
        }
        assert_eq!(log.begin(false), None);
        log.record_read(TURNS_KEPT_MAX, 5);
        assert_eq!(steal_between((10, 1000), (30, 1200)), Some(10.0));
        assert_eq!(steal_between((10, 1000), (10, 1000)), None);
        assert_eq!(steal_between((10, 1000), (5, 1200)), None);
    }
}
