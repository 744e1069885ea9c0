//! A log-linear latency histogram (HdrHistogram-lite): fixed memory whatever the
//! run length, and a bounded relative error for every percentile.
//!
//! Values below `2 * SUB` nanoseconds get a bucket each; above that, every power
//! of two is split into `SUB` equal buckets, so a bucket is never wider than
//! 1/`SUB` of its values (under 0.8 %). Recording is a shift and an add.

/// Linear sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
/// Buckets needed to cover every u64: shifts 0..=56, `SUB` buckets each, plus
/// the `SUB` below the first split.
const BUCKETS: usize = (64 - SUB_BITS as usize) * SUB + SUB;

pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum: 0,
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

/// The middle of bucket `i`: the value a percentile that lands in it reports.
fn midpoint(i: usize) -> u64 {
    let shift = (i / SUB).saturating_sub(1) as u32;
    let top = (i - shift as usize * SUB) as u64;
    let low = top << shift;
    low + ((1u64 << shift) >> 1)
}

impl Histogram {
    pub fn record(&mut self, nanos: u64) {
        self.counts[index(nanos)] += 1;
        self.count += 1;
        self.sum += u128::from(nanos);
        self.min = self.min.min(nanos);
        self.max = self.max.max(nanos);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> u64 {
        if self.count == 0 {
            return 0;
        }
        (self.sum / u128::from(self.count)) as u64
    }

    /// The value at percentile `p` (0..=100): the smallest bucket holding at
    /// least `p` % of the samples, clamped to the exact min and max seen.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        if rank >= self.count {
            // The last sample is the exact maximum, not a bucket's middle.
            return self.max;
        }
        let mut seen = 0u64;
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
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..1_000_000u64).chain([u64::MAX / 3, u64::MAX]) {
            let i = index(v);
            assert!(i >= last && i < BUCKETS, "{v}");
            last = i;
            let m = midpoint(i);
            let err = m.abs_diff(v) as f64 / (v.max(1)) as f64;
            assert!(v < 2 * SUB as u64 && m == v || err < 0.008, "{v} -> {m}");
        }
    }

    #[test]
    fn percentiles() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(50.0), 0);
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let near = |got: u64, want: u64| got.abs_diff(want) as f64 / want as f64 <= 0.008;
        assert!(
            near(h.percentile(50.0), 5_000_000),
            "{}",
            h.percentile(50.0)
        );
        assert!(near(h.percentile(99.0), 9_900_000));
        assert!(near(h.percentile(99.9), 9_990_000));
        assert_eq!(h.percentile(100.0), 10_000_000);
        assert_eq!(h.max(), 10_000_000);
        assert_eq!(h.mean(), 5_000_500);
        let mut g = Histogram::default();
        g.record(7);
        g.merge(&h);
        assert_eq!(g.count(), 10_001);
        assert_eq!(g.percentile(0.0), 7);
    }
}
