//! `--filter=delay`: requests of each kind, opening and closing held for a
//! while, as a slow or remote disk would. A delayed request waits on a timer
//! of the loop (`Verdict::Hold`): it holds up neither other clients nor the
//! same client's other requests.

use std::time::{Duration, Instant};

use super::params::Param;
use super::params::{Params, boolean, duration};
use super::{Call, Conn, Filter, Verdict};
use crate::proto::*;

pub const PARAMS: &[Param] = &[
    Param::new("rdelay", "SECS|NNms", "delay reads (as delay-read)"),
    Param::new("delay-read", "SECS|NNms", "delay reads"),
    Param::new("wdelay", "SECS|NNms", "delay writes, zeroes and trims"),
    Param::new("delay-write", "SECS|NNms", "delay writes"),
    Param::new("delay-zero", "SECS|NNms", "delay zeroing"),
    Param::new("delay-trim", "SECS|NNms", "delay trims"),
    Param::new("delay-extents", "SECS|NNms", "delay block status"),
    Param::new("delay-cache", "SECS|NNms", "delay cache requests"),
    Param::new(
        "delay-fast-zero",
        "BOOL",
        "false: fail fast zero requests at once",
    ),
    Param::new("delay-open", "SECS|NNms", "delay the answer to GO"),
    Param::new(
        "delay-close",
        "SECS|NNms",
        "keep the socket open after DISC",
    ),
];

#[derive(Debug, Default)]
struct Delay {
    read: Duration,
    write: Duration,
    zero: Duration,
    trim: Duration,
    extents: Duration,
    cache: Duration,
    /// Fast zero requests wait too (true, the default), or fail at once.
    fast_zero: bool,
    open: Duration,
    close: Duration,
}

pub fn build(params: &Params) -> Result<Box<dyn Filter>, String> {
    let mut d = Delay {
        fast_zero: true,
        ..Delay::default()
    };
    // In the order given: `wdelay` then `delay-write` differ from the reverse.
    for (key, value) in &params.0 {
        let secs = || duration(value).map_err(|e| format!("{key}: {e}"));
        match key.as_str() {
            "rdelay" | "delay-read" => d.read = secs()?,
            "wdelay" => (d.write, d.zero, d.trim) = (secs()?, secs()?, secs()?),
            "delay-write" => d.write = secs()?,
            "delay-zero" => d.zero = secs()?,
            "delay-trim" => d.trim = secs()?,
            "delay-extents" => d.extents = secs()?,
            "delay-cache" => d.cache = secs()?,
            "delay-open" => d.open = secs()?,
            "delay-close" => d.close = secs()?,
            "delay-fast-zero" => d.fast_zero = boolean(value).map_err(|e| format!("{key}: {e}"))?,
            _ => return Err(format!("unknown parameter '{key}'")),
        }
    }
    Ok(Box::new(d))
}

/// A delay of zero is no delay at all.
fn after(now: Instant, d: Duration) -> Option<Instant> {
    (!d.is_zero()).then(|| now + d)
}

impl Filter for Delay {
    fn name(&self) -> &'static str {
        "delay"
    }

    fn open(&mut self, _: Conn, now: Instant) -> Option<Instant> {
        after(now, self.open)
    }

    fn close_delay(&mut self, _: Conn, now: Instant) -> Option<Instant> {
        after(now, self.close)
    }

    fn request(&mut self, call: &mut Call, now: Instant) -> Verdict {
        let d = match call.kind {
            CMD_READ => self.read,
            CMD_WRITE => self.write,
            CMD_WRITE_ZEROES if call.flags & CMD_FLAG_FAST_ZERO != 0 && !self.fast_zero => {
                return Verdict::Fail(ENOTSUP);
            }
            CMD_WRITE_ZEROES => self.zero,
            CMD_TRIM => self.trim,
            CMD_BLOCK_STATUS => self.extents,
            CMD_CACHE => self.cache,
            _ => Duration::ZERO,
        };
        after(now, d).map_or(Verdict::Pass, Verdict::Hold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(kind: u16, flags: u16) -> Call {
        Call {
            conn: 1,
            kind,
            flags,
            offset: 0,
            len: 512,
            started: Instant::now(),
        }
    }

    fn delay(kv: &[(&str, &str)]) -> Box<dyn Filter> {
        let p = Params(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        build(&p).expect("valid")
    }

    #[test]
    fn each_kind_waits_its_own_delay() {
        let now = Instant::now();
        let mut d = delay(&[("rdelay", "1"), ("wdelay", "100ms"), ("delay-write", "2")]);
        let s = Duration::from_secs;
        assert_eq!(
            d.request(&mut call(CMD_READ, 0), now),
            Verdict::Hold(now + s(1))
        );
        assert_eq!(
            d.request(&mut call(CMD_WRITE, 0), now),
            Verdict::Hold(now + s(2))
        );
        let zero = Verdict::Hold(now + Duration::from_millis(100));
        assert_eq!(d.request(&mut call(CMD_WRITE_ZEROES, 0), now), zero);
        assert_eq!(d.request(&mut call(CMD_FLUSH, 0), now), Verdict::Pass);
        assert_eq!(d.request(&mut call(CMD_CACHE, 0), now), Verdict::Pass);
        assert_eq!(d.open(Conn { id: 1 }, now), None);
    }

    #[test]
    fn fast_zero_may_fail_at_once() {
        let now = Instant::now();
        let mut d = delay(&[("delay-zero", "1"), ("delay-fast-zero", "false")]);
        let fast = &mut call(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO);
        assert_eq!(d.request(fast, now), Verdict::Fail(ENOTSUP));
        let p = Params(vec![("rdelay".into(), "soon".into())]);
        assert!(build(&p).err().is_some_and(|e| e.starts_with("rdelay: ")));
    }
}
