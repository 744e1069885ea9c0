//! What the stats filter keeps for one kind of operation: how many succeeded,
//! their bytes and time, their latencies, and the sizes and alignments of
//! their requests (nbdkit's breakdown). Recording is a few adds and, for the
//! breakdown, two counters in fixed tables: no allocation per request.

use super::hist::Histogram;

/// Request sizes and alignments: `counts[size_bits][align_bits]`, where
/// `size_bits` is floor(log2(len)) and `align_bits` the offset's trailing
/// zero bits (64 for offset 0, aligned to everything).
pub struct Shapes {
    pub counts: Vec<[u64; 65]>,
    /// Bytes of the requests of each size class.
    pub bytes: [u64; 64],
}

impl Default for Shapes {
    fn default() -> Shapes {
        Shapes {
            counts: vec![[0; 65]; 64],
            bytes: [0; 64],
        }
    }
}

impl Shapes {
    fn record(&mut self, len: u64, offset: u64) {
        let size = 63 - len.leading_zeros() as usize; // len > 0
        let align = offset.trailing_zeros() as usize; // 64 for 0
        self.counts[size][align] += 1;
        self.bytes[size] += len;
    }
}

#[derive(Default)]
pub struct OpStats {
    /// Requests that succeeded, their bytes and the nanoseconds they took.
    pub ops: u64,
    pub bytes: u64,
    pub nanos: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Latencies of those that succeeded, in nanoseconds.
    pub latency: Histogram,
    /// Set up by the first request with a length, if the breakdown is kept.
    pub shapes: Option<Box<Shapes>>,
}

impl OpStats {
    /// A request that succeeded after `nanos`. `shapes`: keep the breakdown.
    pub fn record(&mut self, len: u64, offset: u64, nanos: u64, shapes: bool) {
        self.ops += 1;
        self.bytes += len;
        self.nanos += nanos;
        self.latency.record(nanos);
        if shapes && len > 0 {
            self.shapes.get_or_insert_default().record(len, offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_alignments_are_classed() {
        let mut s = OpStats::default();
        s.record(4096, 8192, 10, true);
        s.record(4095, 4096, 20, true);
        s.record(512, 0, 30, true);
        s.record(0, 3, 40, true);
        let sh = s.shapes.as_ref().expect("kept");
        assert_eq!(sh.counts[12][13], 1);
        assert_eq!(sh.counts[11][12], 1);
        assert_eq!(sh.counts[9][64], 1);
        assert_eq!(sh.bytes[12], 4096);
        assert_eq!((s.ops, s.bytes, s.nanos), (4, 8703, 100));
        let mut off = OpStats::default();
        off.record(4096, 0, 1, false);
        assert!(off.shapes.is_none());
    }
}
