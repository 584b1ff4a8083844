//! Histograms with fixed `le` buckets, kept as counters in a shard's cells: one counter
//! per bucket (not cumulative: an observation adds to one) and one for the sum.

/// Upper bounds (`le`) of a histogram, in its base unit, ascending; `+Inf` is implied.
#[derive(Debug, Clone, Copy)]
pub struct Buckets {
    /// The bounds as written (`le` labels), in the metric's base unit.
    pub bounds: &'static [f64],
    /// The same bounds in the integer unit observations are counted in.
    pub ticks: &'static [u64],
    /// Integer units per base unit (1e9 for nanoseconds per second).
    pub per_unit: f64,
}

impl Buckets {
    /// Counters the histogram takes: one per bound, one for `+Inf`, one for the sum.
    pub const fn cells(&self) -> usize {
        self.ticks.len() + 2
    }

    /// The bucket of an observation of `v` integer units (the first bound at or above it).
    #[inline]
    pub fn bucket(&self, v: u64) -> usize {
        self.ticks.partition_point(|&b| b < v)
    }
}

/// HTTP request durations, in seconds (counted in nanoseconds): 0.5 ms to 10 s. The
/// API latency alert reads the 2 s bound.
pub const REQUEST_SECONDS: Buckets = Buckets {
    bounds: &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0],
    ticks: &[
        500_000,
        1_000_000,
        2_500_000,
        5_000_000,
        10_000_000,
        25_000_000,
        50_000_000,
        100_000_000,
        250_000_000,
        500_000_000,
        1_000_000_000,
        2_000_000_000,
        5_000_000_000,
        10_000_000_000,
    ],
    per_unit: 1e9,
};

/// Ingest requests per Redis transaction (`redis.ingest_group_max` at most, 1000 at most).
pub const TRANSACTION_REQUESTS: Buckets = Buckets {
    bounds: &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1000.0],
    ticks: &[1, 2, 4, 8, 16, 32, 64, 128, 256, 1000],
    per_unit: 1.0,
};

/// ClickHouse insert durations, in seconds (counted in nanoseconds): 5 ms to 30 s.
pub const INSERT_SECONDS: Buckets = Buckets {
    bounds: &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
    ticks: &[
        5_000_000,
        10_000_000,
        25_000_000,
        50_000_000,
        100_000_000,
        250_000_000,
        500_000_000,
        1_000_000_000,
        2_500_000_000,
        5_000_000_000,
        10_000_000_000,
        30_000_000_000,
    ],
    per_unit: 1e9,
};

/// Accepted-to-inserted delay of events, in seconds (counted in milliseconds, the
/// resolution of the acceptance time): 50 ms to 30 min. The worker delay alert reads
/// the 30 s bound.
pub const DELAY_SECONDS: Buckets = Buckets {
    bounds: &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0],
    ticks: &[50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_800_000],
    per_unit: 1e3,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_match_bounds() {
        for b in [REQUEST_SECONDS, INSERT_SECONDS, DELAY_SECONDS] {
            assert_eq!(b.bounds.len(), b.ticks.len());
            for (f, t) in b.bounds.iter().zip(b.ticks) {
                assert_eq!((f * b.per_unit).round() as u64, *t);
            }
            assert!(b.ticks.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn an_observation_on_a_bound_is_in_that_bucket() {
        let b = REQUEST_SECONDS;
        assert_eq!(b.bucket(0), 0);
        assert_eq!(b.bucket(500_000), 0, "le is inclusive");
        assert_eq!(b.bucket(500_001), 1);
        assert_eq!(b.bucket(2_000_000_000), 11);
        assert_eq!(b.bucket(u64::MAX), b.ticks.len(), "+Inf");
    }
}
