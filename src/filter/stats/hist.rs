//! A log-linear latency histogram: fixed memory (15 KiB) whatever the run's
//! length, a shift and an add per sample, and percentiles within 1/32 (3 %)
//! of the truth. Values below `2 * SUB` nanoseconds get a bucket each; above,
//! every power of two is split into `SUB` equal buckets.

/// Linear sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Buckets for every u64: shifts 0..=58, `SUB` each, plus the `SUB` below.
const BUCKETS: usize = (64 - SUB_BITS as usize) * SUB + SUB;

pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

/// The bucket of `v`: `shift * SUB + (v >> shift)`, where `shift` keeps the
/// top of `v` within `[SUB, 2 * SUB)`.
fn index(v: u64) -> usize {
    let msb = 63 - (v | 1).leading_zeros();
    let shift = msb.saturating_sub(SUB_BITS);
    shift as usize * SUB + (v >> shift) as usize
}

/// The middle of bucket `i`: what a percentile that lands in it reports.
fn midpoint(i: usize) -> u64 {
    let shift = (i / SUB).saturating_sub(1) as u32;
    let top = (i - shift as usize * SUB) as u64;
    (top << shift) + ((1u64 << shift) >> 1)
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at percentile `p` (0..=100): the middle of the first bucket
    /// that holds `p` % of the samples, within the exact min and max seen.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        if rank >= self.count {
            return self.max;
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return midpoint(i).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut last = 0;
        for v in (0..200_000u64).chain([1 << 40, u64::MAX / 3, u64::MAX]) {
            let i = index(v);
            assert!(i >= last && i < BUCKETS, "{v}");
            last = i;
            let err = midpoint(i).abs_diff(v) as f64 / v.max(1) as f64;
            assert!(err <= 1.0 / SUB as f64, "{v} -> {}", midpoint(i));
        }
    }

    #[test]
    fn percentiles() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(50.0), 0);
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let near = |got: u64, want: u64| got.abs_diff(want) as f64 / want as f64 <= 0.04;
        assert!(near(h.percentile(50.0), 500_000), "{}", h.percentile(50.0));
        assert!(near(h.percentile(99.0), 990_000), "{}", h.percentile(99.0));
        assert_eq!(h.percentile(100.0), 1_000_000);
        assert_eq!((h.count, h.max()), (1000, 1_000_000));
    }
}
