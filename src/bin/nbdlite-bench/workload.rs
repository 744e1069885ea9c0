//! What each connection asks for next: the read/write mix and the offsets.
//!
//! Everything is derived from `--seed` and the connection's index, so two runs
//! with the same options send the same requests in the same order per connection.

use std::time::Duration;

/// The `--rw` patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Read,
    Write,
    RandRead,
    RandWrite,
    RandRw,
}

impl Pattern {
    pub fn parse(s: &str) -> Option<Pattern> {
        Some(match s {
            "read" => Pattern::Read,
            "write" => Pattern::Write,
            "randread" => Pattern::RandRead,
            "randwrite" => Pattern::RandWrite,
            "randrw" => Pattern::RandRw,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Pattern::Read => "read",
            Pattern::Write => "write",
            Pattern::RandRead => "randread",
            Pattern::RandWrite => "randwrite",
            Pattern::RandRw => "randrw",
        }
    }

    pub fn writes(self) -> bool {
        !matches!(self, Pattern::Read | Pattern::RandRead)
    }

    fn random(self) -> bool {
        !matches!(self, Pattern::Read | Pattern::Write)
    }
}

/// What every thread is told to do.
pub struct Plan<'a> {
    pub size: u64,
    pub warmup: Duration,
    pub run: Duration,
    /// The data every WRITE sends (empty for read-only patterns).
    pub payload: &'a [u8],
}

/// xorshift64*: fast, good enough to spread offsets, and reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeds through splitmix64, so that nearby seeds (0, 1, 2 … for the
    /// connections) give unrelated streams, and never the all-zero state.
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift rather than modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// One connection's request stream.
#[derive(Debug, Clone)]
pub struct Workload {
    pattern: Pattern,
    size: u64,
    /// Percent of reads in `randrw`.
    read_pct: u64,
    rng: Rng,
    /// First block of this connection's region, and how many blocks it has.
    /// Random patterns use the whole range; sequential ones a slice of it.
    first: u64,
    blocks: u64,
    /// Next block of a sequential walk, relative to `first`.
    cursor: u64,
}

/// A request to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Io {
    pub write: bool,
    pub offset: u64,
}

impl Workload {
    /// The stream of connection `index` of `count`, over `range` bytes in
    /// blocks of `size`. Fails if a sequential slice would be empty.
    pub fn new(
        pattern: Pattern,
        size: u64,
        range: u64,
        read_pct: u64,
        seed: u64,
        index: u64,
        count: u64,
    ) -> Result<Workload, String> {
        let all = range / size;
        let (first, blocks) = if pattern.random() {
            (0, all)
        } else {
            // Each connection walks its own contiguous slice, like fio's offset_increment.
            // In u128: `all * count` overflows u64 on exabyte exports.
            let share = |i: u64| (u128::from(all) * u128::from(i) / u128::from(count)) as u64;
            (share(index), share(index + 1) - share(index))
        };
        if blocks == 0 {
            return Err(format!(
                "the range ({range} bytes) holds too few {size}-byte blocks for {count} connection(s)"
            ));
        }
        Ok(Workload {
            pattern,
            size,
            read_pct,
            rng: Rng::new(seed ^ index.wrapping_mul(0x1000_0000_01b3)),
            first,
            blocks,
            cursor: 0,
        })
    }

    pub fn next(&mut self) -> Io {
        let write = match self.pattern {
            Pattern::Read | Pattern::RandRead => false,
            Pattern::Write | Pattern::RandWrite => true,
            Pattern::RandRw => self.rng.below(100) >= self.read_pct,
        };
        let block = if self.pattern.random() {
            self.rng.below(self.blocks)
        } else {
            let b = self.cursor;
            self.cursor = (self.cursor + 1) % self.blocks;
            b
        };
        Io {
            write,
            offset: (self.first + block) * self.size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_slices_do_not_overlap() {
        let mut seen = Vec::new();
        for i in 0..3 {
            let mut w = Workload::new(Pattern::Read, 4096, 10 * 4096 + 100, 50, 1, i, 3).unwrap();
            let first = w.next().offset;
            let mut n = 1;
            while w.next().offset != first {
                n += 1;
            }
            seen.push((first / 4096, n));
        }
        assert_eq!(seen, vec![(0, 3), (3, 3), (6, 4)]);
        assert!(Workload::new(Pattern::Write, 4096, 4096, 50, 1, 0, 2).is_err());
    }

    #[test]
    fn random_offsets_are_aligned_and_in_range() {
        let mut w = Workload::new(Pattern::RandRw, 512, 1 << 20, 70, 9, 0, 1).unwrap();
        let mut reads = 0;
        for _ in 0..10_000 {
            let io = w.next();
            assert_eq!(io.offset % 512, 0);
            assert!(io.offset + 512 <= 1 << 20);
            reads += u32::from(!io.write);
        }
        assert!((6500..7500).contains(&reads), "{reads}");
        let again = Workload::new(Pattern::RandRw, 512, 1 << 20, 70, 9, 0, 1).unwrap();
        let mut a = again.clone();
        let mut b = again;
        assert_eq!(a.next(), b.next());
    }
}
