//! `--filter=blocksize-policy`: the block sizes clients are told
//! (NBD_INFO_BLOCK_SIZE: minimum, preferred, maximum), and what becomes of
//! requests that ignore them: passed on (`allow`, the default) or refused
//! with EINVAL here (`error`). Writes larger than `blocksize-write-disconnect`
//! end the connection, as qemu-nbd ends it for writes over 32M.
//!
//! What is advertised is only what clients are told (`Export::block_override`):
//! the server itself still refuses only what the backend cannot do
//! (`caps.min_block`), so `allow` lets through what the backend can serve.

use std::time::Instant;

use super::params::Param;
use super::params::{Params, size};
use super::{Call, Filter, Verdict};
use crate::export::Export;
use crate::proto::*;

pub const PARAMS: &[Param] = &[
    Param::new(
        "blocksize-error-policy",
        "allow|error",
        "requests that ignore the block sizes: passed on, or EINVAL",
    ),
    Param::new(
        "blocksize-minimum",
        "SIZE",
        "advertised minimum (power of 2, ≤ 64K)",
    ),
    Param::new(
        "blocksize-preferred",
        "SIZE",
        "advertised preferred size (power of 2, 512 to 32M)",
    ),
    Param::new("blocksize-maximum", "SIZE", "advertised maximum payload"),
    Param::new(
        "blocksize-write-disconnect",
        "SIZE",
        "disconnect a client that writes more at once",
    ),
];

/// What becomes of a request that ignores the advertised sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnError {
    /// Passed on: the backend serves it if it can.
    Allow,
    /// Refused here with EINVAL.
    Refuse,
}

#[derive(Debug)]
struct Policy {
    /// The sizes asked for on the command line (None: the backend's).
    min: Option<u32>,
    preferred: Option<u32>,
    max: Option<u32>,
    on_error: OnError,
    /// Writes longer than this end the connection.
    disconnect: Option<u64>,
    /// What clients are told, settled at start-up (`shape`).
    advertised: (u32, u32, u32),
}

pub fn build(params: &Params) -> Result<Box<dyn Filter>, String> {
    let on_error = params.parsed("blocksize-error-policy", |v| match v {
        "allow" => Ok(OnError::Allow),
        "error" => Ok(OnError::Refuse),
        _ => Err(format!("unknown policy '{v}': expecting allow or error")),
    })?;
    // As nbdkit: 0 is the same as not given.
    let given = |key| -> Result<Option<u32>, String> {
        Ok(params.parsed(key, size32)?.filter(|&n| n != 0))
    };
    let p = Policy {
        min: given("blocksize-minimum")?,
        preferred: given("blocksize-preferred")?,
        max: given("blocksize-maximum")?,
        on_error: on_error.unwrap_or(OnError::Allow),
        disconnect: given("blocksize-write-disconnect")?.map(u64::from),
        advertised: (1, 4096, u32::MAX),
    };
    p.validate()?;
    Ok(Box::new(p))
}

/// A size that fits NBD_INFO_BLOCK_SIZE's 32 bits.
fn size32(s: &str) -> Result<u32, String> {
    size(s)?
        .try_into()
        .map_err(|_| format!("'{s}' is larger than 4G-1"))
}

impl Policy {
    /// The checks nbdkit makes of the sizes given, each with its message.
    fn validate(&self) -> Result<(), String> {
        if let Some(min) = self.min
            && (!min.is_power_of_two() || min > 65536)
        {
            return Err("blocksize-minimum must be a power of 2, at most 64K".into());
        }
        if let Some(p) = self.preferred
            && (!p.is_power_of_two() || !(512..=32 << 20).contains(&p))
        {
            return Err("blocksize-preferred must be a power of 2 from 512 to 32M".into());
        }
        if let (Some(min), Some(max)) = (self.min, self.max)
            && max != u32::MAX
            && !max.is_multiple_of(min)
        {
            return Err(
                "blocksize-maximum must be 4294967295 or a multiple of blocksize-minimum".into(),
            );
        }
        let below = |a: Option<u32>, b: Option<u32>| a.zip(b).is_some_and(|(a, b)| a > b);
        if below(self.min, self.preferred) {
            return Err("blocksize-minimum must be at most blocksize-preferred".into());
        }
        if below(self.preferred, self.max) {
            return Err("blocksize-preferred must be at most blocksize-maximum".into());
        }
        if let (Some(min), Some(d)) = (self.min, self.disconnect)
            && d <= u64::from(min)
        {
            return Err("blocksize-write-disconnect must be larger than blocksize-minimum".into());
        }
        Ok(())
    }

    /// What clients are told: the sizes given, the others as `base` (what
    /// the backend and the filters below advertise) has them, then made
    /// consistent (minimum ≤ preferred ≤ maximum). The maximum never passes
    /// what the server serves (`largest`), nor a write that would end the
    /// connection.
    fn settle(&self, base: (u32, u32, u32), largest: u32) -> (u32, u32, u32) {
        let min = self.min.unwrap_or(base.0);
        let max = self.max.unwrap_or_else(|| match self.disconnect {
            Some(d) => base.2.min(round_down(d, min)),
            None => base.2,
        });
        let max = max.min(largest.max(min)).max(min);
        let preferred = match self.preferred {
            Some(p) => p,
            // The backend's, within the new bounds, and a power of 2.
            None if base.1 > max => prev_power_of_two(max),
            None => base.1,
        };
        let preferred = preferred.max(min);
        (min, preferred, max.max(preferred))
    }

    /// Why a request breaks the advertised sizes, if it does.
    fn breach(&self, call: &Call) -> Option<String> {
        let data = matches!(call.kind, CMD_READ | CMD_WRITE);
        let (min, _, max) = self.advertised;
        let (min, max) = (u64::from(min), u64::from(max));
        let (len, offset) = (call.len, call.offset);
        if len < min {
            Some(format!("length {len} is below the minimum size {min}"))
        } else if data && len > max {
            Some(format!("length {len} is above the maximum size {max}"))
        } else if !len.is_multiple_of(min) {
            Some(format!(
                "length {len} is not a multiple of the minimum size {min}"
            ))
        } else if !offset.is_multiple_of(min) {
            Some(format!(
                "offset {offset} is not aligned to the minimum size {min}"
            ))
        } else {
            None
        }
    }
}

fn round_down(n: u64, unit: u32) -> u32 {
    let unit = u64::from(unit.max(1));
    (n / unit * unit).min(u64::from(u32::MAX)) as u32 // just bounded
}

/// The largest power of 2 not above `n` (≥ 1).
fn prev_power_of_two(n: u32) -> u32 {
    1 << (31 - n.max(1).leading_zeros())
}

impl Filter for Policy {
    fn name(&self) -> &'static str {
        "blocksize-policy"
    }

    fn shape(&mut self, export: &mut Export) {
        let largest = export.max_request.min(u64::from(u32::MAX)) as u32; // just bounded
        let sizes = self.settle(export.block_sizes(), largest);
        let asked = (self.min, self.preferred, self.max);
        let moved = |a: Option<u32>, b: u32| a.is_some_and(|a| a != b);
        if moved(asked.0, sizes.0) || moved(asked.1, sizes.1) || moved(asked.2, sizes.2) {
            log::warn!(
                "blocksize-policy: advertising minimum {}, preferred {}, maximum {} \
                 (what the backend and the server allow)",
                sizes.0,
                sizes.1,
                sizes.2
            );
        }
        if sizes.0 < export.caps.min_block {
            log::warn!(
                "blocksize-policy: the backend needs requests aligned to {} bytes: \
                 those aligned only to the advertised minimum {} will fail",
                export.caps.min_block,
                sizes.0
            );
        }
        self.advertised = sizes;
        export.block_override = Some(sizes);
    }

    fn request(&mut self, call: &mut Call, _: Instant) -> Verdict {
        if call.kind == CMD_WRITE && self.disconnect.is_some_and(|d| call.len > d) {
            return Verdict::Disconnect("write request over blocksize-write-disconnect");
        }
        let checked = matches!(
            call.kind,
            CMD_READ | CMD_WRITE | CMD_WRITE_ZEROES | CMD_TRIM | CMD_CACHE
        );
        if self.on_error == OnError::Allow || !checked {
            return Verdict::Pass;
        }
        match self.breach(call) {
            None => Verdict::Pass,
            Some(why) => {
                log::warn!("{} request refused: {why}", command_name(call.kind));
                Verdict::Fail(EINVAL)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_export;

    fn policy(kv: &[(&str, &str)]) -> Result<Box<dyn Filter>, String> {
        let p = Params(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        build(&p)
    }

    /// What a client is told through the filter, over a backend with this
    /// minimum block size.
    fn told(kv: &[(&str, &str)], min_block: u32) -> (u32, u32, u32) {
        let mut ex = test_export(false, min_block);
        policy(kv).expect("valid").shape(&mut ex);
        ex.block_sizes()
    }

    fn call(kind: u16, offset: u64, len: u64) -> Call {
        Call {
            conn: 1,
            kind,
            flags: 0,
            offset,
            len,
            started: Instant::now(),
        }
    }

    #[test]
    fn what_clients_are_told() {
        let max = 32 << 20;
        assert_eq!(told(&[], 1), (1, 4096, max));
        assert_eq!(told(&[("blocksize-preferred", "32K")], 1), (1, 32768, max));
        assert_eq!(told(&[("blocksize-minimum", "4K")], 512), (4096, 4096, max));
        assert_eq!(told(&[("blocksize-maximum", "1M")], 1), (1, 4096, 1 << 20));
        let all = [
            ("blocksize-minimum", "512"),
            ("blocksize-preferred", "64K"),
            ("blocksize-maximum", "1M"),
        ];
        assert_eq!(told(&all, 1), (512, 65536, 1 << 20));
        // The maximum follows a write disconnect, and stays within what is served.
        let d = [("blocksize-write-disconnect", "1000000")];
        assert_eq!(told(&d, 512), (512, 4096, 999_936));
        assert_eq!(
            told(&[("blocksize-maximum", "4294967295")], 1),
            (1, 4096, 64 << 20)
        );
        // An unconfigured preferred size follows a small maximum.
        assert_eq!(told(&[("blocksize-maximum", "3000")], 1), (1, 2048, 3000));
        // The backend's own minimum wins over a preferred size below it.
        assert_eq!(
            told(&[("blocksize-preferred", "512")], 4096),
            (4096, 4096, max)
        );
    }

    #[test]
    fn inconsistent_sizes_are_refused() {
        for bad in [
            vec![("blocksize-minimum", "3")],
            vec![("blocksize-minimum", "128K")],
            vec![("blocksize-preferred", "256")],
            vec![("blocksize-preferred", "64M")],
            vec![("blocksize-minimum", "4K"), ("blocksize-maximum", "6K")],
            vec![("blocksize-minimum", "8K"), ("blocksize-preferred", "4K")],
            vec![("blocksize-preferred", "8K"), ("blocksize-maximum", "4K")],
            vec![
                ("blocksize-minimum", "4K"),
                ("blocksize-write-disconnect", "4K"),
            ],
            vec![("blocksize-maximum", "8G")],
            vec![("blocksize-minimum", "x")],
            vec![("blocksize-error-policy", "warn")],
        ] {
            assert!(policy(&bad).is_err(), "{bad:?}");
        }
        let e = policy(&[("blocksize-error-policy", "warn")]).err().unwrap();
        assert!(e.starts_with("blocksize-error-policy: "), "{e}");
    }

    #[test]
    fn error_policy_refuses_what_breaks_the_sizes() {
        let mut ex = test_export(false, 1);
        let kv = [
            ("blocksize-error-policy", "error"),
            ("blocksize-minimum", "512"),
            ("blocksize-maximum", "1M"),
        ];
        let mut f = policy(&kv).unwrap();
        f.shape(&mut ex);
        let now = Instant::now();
        let mut v = |kind, offset, len| f.request(&mut call(kind, offset, len), now);
        assert_eq!(v(CMD_READ, 512, 1024), Verdict::Pass);
        assert_eq!(v(CMD_READ, 0, 1 << 20), Verdict::Pass);
        assert_eq!(v(CMD_READ, 0, 768), Verdict::Fail(EINVAL));
        assert_eq!(v(CMD_READ, 768, 512), Verdict::Fail(EINVAL));
        assert_eq!(v(CMD_READ, 0, 256), Verdict::Fail(EINVAL));
        assert_eq!(v(CMD_WRITE, 0, 2 << 20), Verdict::Fail(EINVAL));
        // The maximum bounds data only; the minimum, everything but FLUSH
        // and BLOCK_STATUS.
        assert_eq!(v(CMD_WRITE_ZEROES, 0, 2 << 20), Verdict::Pass);
        assert_eq!(v(CMD_TRIM, 1, 512), Verdict::Fail(EINVAL));
        assert_eq!(v(CMD_BLOCK_STATUS, 1, 1), Verdict::Pass);
        assert_eq!(v(CMD_FLUSH, 0, 0), Verdict::Pass);
    }

    #[test]
    fn allow_passes_everything_but_an_oversize_write() {
        let mut ex = test_export(false, 1);
        let kv = [
            ("blocksize-minimum", "4K"),
            ("blocksize-write-disconnect", "1M"),
        ];
        let mut f = policy(&kv).unwrap();
        f.shape(&mut ex);
        let now = Instant::now();
        assert_eq!(f.request(&mut call(CMD_READ, 1, 1), now), Verdict::Pass);
        assert_eq!(
            f.request(&mut call(CMD_WRITE, 0, 1 << 20), now),
            Verdict::Pass
        );
        let big = f.request(&mut call(CMD_WRITE, 0, (1 << 20) + 1), now);
        assert!(matches!(big, Verdict::Disconnect(_)), "{big:?}");
        assert_eq!(
            ex.block_sizes().2,
            1 << 20,
            "no write over the maximum disconnects"
        );
    }
}
