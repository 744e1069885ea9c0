//! `--filter=truncate`: the export made smaller or larger than what is below
//! (`truncate=SIZE`), or its size rounded up or down to a power of two
//! (`round-up=N`, `round-down=N`), as nbdkit's. Past the end of what is
//! below the export reads as zeroes: requests wholly there are answered so
//! by the request path (`Verdict::Zeroes`), requests across the end are cut
//! there (`Call::len`): zeroes may be written there, anything else fails
//! with ENOSPC; trims, zeroing and cache requests there do nothing.

use std::time::Instant;

use super::params::Param;
use super::params::{Params, size};
use super::{Call, Filter, StartupRead, Verdict};
use crate::export::Export;
use crate::proto::*;

pub const PARAMS: &[Param] = &[
    Param::new(
        "truncate",
        "SIZE",
        "the export's size (past the end: zeroes)",
    ),
    Param::new(
        "round-up",
        "N",
        "round the size up to a multiple of N (a power of 2)",
    ),
    Param::new("round-down", "N", "round the size down to a multiple of N"),
];

#[derive(Debug)]
struct Truncate {
    size: Option<u64>,
    round_up: Option<u64>,
    round_down: Option<u64>,
    /// The size of what is below (found at start-up).
    real: u64,
    /// Whether what is below can zero fast: past its end zeroing is always
    /// fast, so the export offers FAST_ZERO, and refuses it below.
    below_fast_zero: bool,
}

pub fn build(params: &Params) -> Result<Box<dyn Filter>, String> {
    Ok(Box::new(Truncate {
        size: params.parsed("truncate", size)?,
        round_up: params.parsed("round-up", rounding)?,
        round_down: params.parsed("round-down", rounding)?,
        real: 0,
        below_fast_zero: false,
    }))
}

/// A rounding: a power of two from 1 to 2^32-1, with size suffixes (`4k`).
fn rounding(v: &str) -> Result<u64, String> {
    match size(v)? {
        0 => Err("must be > 0".into()),
        n if n > u64::from(u32::MAX) => Err("is too large".into()),
        n if !n.is_power_of_two() => Err(format!("{n} is not a power of 2")),
        n => Ok(n),
    }
}

impl Truncate {
    /// The export's size from the size of what is below: truncate, then
    /// round up, then round down (each if given, as nbdkit does them).
    fn new_size(&self, real: u64) -> Result<u64, String> {
        let mut n = self.size.unwrap_or(real);
        if let Some(up) = self.round_up {
            n = n
                .checked_next_multiple_of(up)
                .filter(|&m| m <= i64::MAX as u64)
                .ok_or_else(|| format!("cannot round the size {n} up to a multiple of {up}"))?;
        }
        if let Some(down) = self.round_down {
            n -= n % down;
        }
        Ok(n)
    }
}

impl Filter for Truncate {
    fn name(&self) -> &'static str {
        "truncate"
    }

    fn prepare(&mut self, _: &mut StartupRead, export: &Export) -> Result<(), String> {
        self.new_size(export.size)?;
        self.real = export.size;
        Ok(())
    }

    fn shape(&mut self, export: &mut Export) {
        // Checked by `prepare`.
        export.size = self.new_size(self.real).unwrap_or(self.real);
        self.below_fast_zero = export.caps.fast_zero;
        export.caps.fast_zero = export.caps.zero;
    }

    fn request(&mut self, call: &mut Call, _: Instant) -> Verdict {
        if call.kind == CMD_FLUSH {
            return Verdict::Pass;
        }
        if call.offset >= self.real {
            return Verdict::Zeroes;
        }
        // Across the end: cut there (what is past it reads as zeroes).
        call.len = call.len.min(self.real - call.offset);
        let fast_zero = call.kind == CMD_WRITE_ZEROES && call.flags & CMD_FLAG_FAST_ZERO != 0;
        if fast_zero && !self.below_fast_zero {
            return Verdict::Fail(ENOTSUP);
        }
        Verdict::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn truncate(kv: &[(&str, &str)], real: u64) -> Truncate {
        let p = Params(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        Truncate {
            size: p.parsed("truncate", size).unwrap(),
            round_up: p.parsed("round-up", rounding).unwrap(),
            round_down: p.parsed("round-down", rounding).unwrap(),
            real,
            below_fast_zero: true,
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(truncate(&[("truncate", "512")], 503).new_size(503), Ok(512));
        assert_eq!(truncate(&[("round-up", "512")], 503).new_size(503), Ok(512));
        assert_eq!(truncate(&[("round-up", "512")], 512).new_size(512), Ok(512));
        assert_eq!(truncate(&[("round-up", "1k")], 0).new_size(0), Ok(0));
        assert_eq!(
            truncate(&[("round-down", "512")], 1023).new_size(1023),
            Ok(512)
        );
        let both = truncate(&[("truncate", "1000"), ("round-up", "512")], 10);
        assert_eq!(both.new_size(10), Ok(1024));
        let huge = truncate(&[("round-up", "1M")], 0);
        assert!(huge.new_size(i64::MAX as u64 - 1).is_err());
        for bad in ["0", "3", "8G", "x"] {
            assert!(rounding(bad).is_err(), "{bad}");
        }
        assert_eq!(rounding("4k"), Ok(4096));
    }

    #[test]
    fn requests_past_the_end_are_zeroes_and_across_it_cut() {
        let mut t = truncate(&[("truncate", "4k")], 1000);
        let now = Instant::now();
        let call = |kind, offset, len| Call {
            conn: 1,
            kind,
            flags: 0,
            offset,
            len,
            started: now,
        };
        let mut past = call(CMD_READ, 1000, 24);
        assert_eq!(t.request(&mut past, now), Verdict::Zeroes);
        let mut across = call(CMD_WRITE, 512, 1024);
        assert_eq!(t.request(&mut across, now), Verdict::Pass);
        assert_eq!(across.len, 488);
        let mut inside = call(CMD_BLOCK_STATUS, 0, 1000);
        assert_eq!(t.request(&mut inside, now), Verdict::Pass);
        assert_eq!(inside.len, 1000);
        t.below_fast_zero = false;
        let mut fast = call(CMD_WRITE_ZEROES, 0, 4096);
        fast.flags = CMD_FLAG_FAST_ZERO;
        assert_eq!(t.request(&mut fast, now), Verdict::Fail(ENOTSUP));
        let mut fast_past = call(CMD_WRITE_ZEROES, 2048, 2048);
        fast_past.flags = CMD_FLAG_FAST_ZERO;
        assert_eq!(t.request(&mut fast_past, now), Verdict::Zeroes);
    }
}
