//! A minimal latency recorder for the benchmarks: every sample is kept, sorted once, and
//! percentiles are read by nearest rank. Benchmarks here record at most a few hundred thousand
//! samples, so exact percentiles cost nothing worth a histogram.

use std::time::Duration;

/// Collected latency samples.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    samples: Vec<Duration>,
}

/// The statistics a benchmark reports for one set of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latencies {
    /// An empty recorder with room for `capacity` samples.
    pub fn with_capacity(capacity: usize) -> Self {
        Latencies {
            samples: Vec::with_capacity(capacity),
        }
    }

    /// Adds one sample.
    pub fn record(&mut self, sample: Duration) {
        self.samples.push(sample);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    /// How many samples were recorded.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Sorts the samples and summarizes them; `None` when there are none.
    pub fn summary(&mut self) -> Option<Summary> {
        self.samples.sort_unstable();
        let sorted = &self.samples;
        Some(Summary {
            count: sorted.len(),
            p50: percentile(sorted, 50.0)?,
            p99: percentile(sorted, 99.0)?,
            max: *sorted.last()?,
        })
    }
}

/// The `p`-th percentile (0 < p <= 100) of ascending `sorted` samples by the nearest-rank
/// method: the smallest sample that at least `p` percent of the samples are not above.
/// `None` for no samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    // Nearest rank, 1-based: ceil(p/100 * n), at least 1. Sample counts are far below 2^52,
    // so the float round trip is exact.
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    let index = rank.clamp(1, n) - 1;
    sorted.get(index).copied()
}

/// A duration in milliseconds, for the report.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn percentile_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&sorted, 50.0), Some(ms(50)));
        assert_eq!(percentile(&sorted, 99.0), Some(ms(99)));
        assert_eq!(percentile(&sorted, 100.0), Some(ms(100)));
        assert_eq!(percentile(&sorted, 0.0), Some(ms(1)));
        assert_eq!(percentile(&sorted, 0.5), Some(ms(1)));

        let ten: Vec<Duration> = (1..=10).map(ms).collect();
        // 99% of 10 samples is rank 9.9 -> 10: the p99 of a small set is its maximum.
        assert_eq!(percentile(&ten, 99.0), Some(ms(10)));
        assert_eq!(percentile(&ten, 50.0), Some(ms(5)));

        assert_eq!(percentile(&[ms(7)], 50.0), Some(ms(7)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_sorts_and_merges() {
        let mut a = Latencies::with_capacity(4);
        for v in [30, 10, 20] {
            a.record(ms(v));
        }
        let mut b = Latencies::default();
        b.record(ms(40));
        a.merge(b);
        assert_eq!(a.len(), 4);
        let s = a.summary().expect("samples were recorded");
        assert_eq!(s.count, 4);
        assert_eq!(s.p50, ms(20));
        assert_eq!(s.p99, ms(40));
        assert_eq!(s.max, ms(40));
        assert!(Latencies::default().summary().is_none());
        assert!((millis(ms(3)) - 3.0).abs() < 1e-9);
    }
}
