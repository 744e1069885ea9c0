//! `--filter=nozero`: zeroing made naive, to compare clients and servers
//! with and without it. `zeromode=none` (the default) stops offering
//! WRITE_ZEROES: clients write their zeroes as data. `emulate` offers it
//! but zeroes as a write of zeroes would, never punching a hole (NO_HOLE),
//! and fails every fast zero. `notrim` passes zeroing on without leave to
//! punch holes; `plugin` passes it on unchanged. `fastzeromode=` then
//! decides what FAST_ZERO does: as the backend does (`default`), not
//! offered (`none`), failed at once with ENOTSUP (`slow`) or done slowly
//! as if the flag were absent (`ignore`, which the spec does not allow).

use std::time::Instant;

use super::params::Param;
use super::params::Params;
use super::{Call, Filter, Verdict};
use crate::export::Export;
use crate::proto::*;

pub const PARAMS: &[Param] = &[
    Param::new(
        "zeromode",
        "none|emulate|notrim|plugin",
        "how WRITE_ZEROES is offered and done (none)",
    ),
    Param::new(
        "fastzeromode",
        "default|none|slow|ignore",
        "how FAST_ZERO is offered and done (default)",
    ),
];

/// How WRITE_ZEROES is offered and done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZeroMode {
    /// Not offered.
    None,
    /// Offered; done without punching holes; fast zeroes fail.
    Emulate,
    /// Passed on without leave to punch holes.
    NoTrim,
    /// Passed on as the client sent it.
    Backend,
}

/// How FAST_ZERO is offered and done (when WRITE_ZEROES is offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FastMode {
    /// As the backend (with `emulate`: offered, and every one fails).
    Default,
    /// Not offered.
    None,
    /// Offered; every one fails with ENOTSUP.
    Slow,
    /// Offered; done as if the client had not asked for speed.
    Ignore,
}

#[derive(Debug)]
struct NoZero {
    zero: ZeroMode,
    fast: FastMode,
}

pub fn build(params: &Params) -> Result<Box<dyn Filter>, String> {
    let zero = params.parsed("zeromode", |v| match v {
        "none" => Ok(ZeroMode::None),
        "emulate" => Ok(ZeroMode::Emulate),
        "notrim" => Ok(ZeroMode::NoTrim),
        "plugin" => Ok(ZeroMode::Backend),
        _ => Err(format!(
            "unknown zeromode '{v}': expecting none, emulate, notrim or plugin"
        )),
    })?;
    let fast = params.parsed("fastzeromode", |v| match v {
        "default" => Ok(FastMode::Default),
        "none" => Ok(FastMode::None),
        "slow" => Ok(FastMode::Slow),
        "ignore" => Ok(FastMode::Ignore),
        _ => Err(format!(
            "unknown fastzeromode '{v}': expecting default, none, slow or ignore"
        )),
    })?;
    Ok(Box::new(NoZero {
        zero: zero.unwrap_or(ZeroMode::None),
        fast: fast.unwrap_or(FastMode::Default),
    }))
}

impl Filter for NoZero {
    fn name(&self) -> &'static str {
        "nozero"
    }

    /// What clients are offered. `notrim` and `plugin` over a backend that
    /// cannot zero offer nothing more than it does.
    fn shape(&mut self, export: &mut Export) {
        let caps = &mut export.caps;
        match (self.zero, self.fast) {
            (ZeroMode::None, _) => caps.zero = false,
            (ZeroMode::Emulate, fast) => {
                caps.zero = true;
                caps.fast_zero = fast != FastMode::None;
            }
            (_, FastMode::Default) => {}
            (_, fast) => caps.fast_zero = fast != FastMode::None,
        }
    }

    fn request(&mut self, call: &mut Call, _: Instant) -> Verdict {
        if call.kind != CMD_WRITE_ZEROES {
            return Verdict::Pass;
        }
        let fast = call.flags & CMD_FLAG_FAST_ZERO != 0;
        match (self.zero, self.fast) {
            // Writing zeroes is never fast.
            (ZeroMode::Emulate, _) | (_, FastMode::Slow) if fast => Verdict::Fail(ENOTSUP),
            (_, FastMode::Ignore) if fast => {
                call.flags &= !CMD_FLAG_FAST_ZERO;
                self.no_hole(call)
            }
            _ => self.no_hole(call),
        }
    }
}

impl NoZero {
    /// `emulate` and `notrim`: the range stays allocated.
    fn no_hole(&self, call: &mut Call) -> Verdict {
        if matches!(self.zero, ZeroMode::Emulate | ZeroMode::NoTrim) {
            call.flags |= CMD_FLAG_NO_HOLE;
        }
        Verdict::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_export;
    use crate::proto::reply::Style;

    fn nozero(kv: &[(&str, &str)]) -> Result<Box<dyn Filter>, String> {
        let p = Params(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        build(&p)
    }

    /// The transmission flags a structured client sees through the filter.
    fn offered(kv: &[(&str, &str)]) -> (bool, bool) {
        let mut ex = test_export(false, 1);
        nozero(kv).expect("valid").shape(&mut ex);
        let f = ex.flags(Style::Structured, false);
        (f & TF_SEND_WRITE_ZEROES != 0, f & TF_SEND_FAST_ZERO != 0)
    }

    fn zero(flags: u16) -> Call {
        Call {
            conn: 1,
            kind: CMD_WRITE_ZEROES,
            flags,
            offset: 0,
            len: 4096,
            started: Instant::now(),
        }
    }

    /// The verdict and the flags passed on.
    fn run(kv: &[(&str, &str)], flags: u16) -> (Verdict, u16) {
        let mut f = nozero(kv).expect("valid");
        let mut c = zero(flags);
        let v = f.request(&mut c, Instant::now());
        (v, c.flags)
    }

    #[test]
    fn what_each_mode_offers() {
        assert_eq!(offered(&[]), (false, false));
        assert_eq!(offered(&[("fastzeromode", "slow")]), (false, false));
        assert_eq!(offered(&[("zeromode", "emulate")]), (true, true));
        let none = [("zeromode", "emulate"), ("fastzeromode", "none")];
        assert_eq!(offered(&none), (true, false));
        assert_eq!(offered(&[("zeromode", "notrim")]), (true, true));
        let plugin = [("zeromode", "plugin"), ("fastzeromode", "none")];
        assert_eq!(offered(&plugin), (true, false));
        // The backend's own answer stands with `default`.
        let mut ex = test_export(false, 1);
        ex.caps.fast_zero = false;
        nozero(&[("zeromode", "plugin")]).unwrap().shape(&mut ex);
        assert!(!ex.caps.fast_zero);
        nozero(&[("zeromode", "plugin"), ("fastzeromode", "ignore")])
            .unwrap()
            .shape(&mut ex);
        assert!(ex.caps.fast_zero);
    }

    #[test]
    fn how_zeroing_is_done() {
        let (fast, nh) = (CMD_FLAG_FAST_ZERO, CMD_FLAG_NO_HOLE);
        let emulate = [("zeromode", "emulate")];
        assert_eq!(run(&emulate, 0), (Verdict::Pass, nh));
        assert_eq!(run(&emulate, fast).0, Verdict::Fail(ENOTSUP));
        let ignore = [("zeromode", "emulate"), ("fastzeromode", "ignore")];
        assert_eq!(run(&ignore, fast).0, Verdict::Fail(ENOTSUP));
        let notrim = [("zeromode", "notrim")];
        assert_eq!(run(&notrim, fast), (Verdict::Pass, fast | nh));
        let plugin = [("zeromode", "plugin")];
        assert_eq!(run(&plugin, fast), (Verdict::Pass, fast));
        let slow = [("zeromode", "plugin"), ("fastzeromode", "slow")];
        assert_eq!(run(&slow, fast).0, Verdict::Fail(ENOTSUP));
        assert_eq!(run(&slow, 0), (Verdict::Pass, 0));
        let ignore = [("zeromode", "notrim"), ("fastzeromode", "ignore")];
        assert_eq!(run(&ignore, fast), (Verdict::Pass, nh));
    }

    #[test]
    fn bad_values_are_named() {
        let e = nozero(&[("zeromode", "trim")]).err().unwrap();
        assert!(e.starts_with("zeromode: unknown zeromode 'trim'"), "{e}");
        assert!(nozero(&[("fastzeromode", "fast")]).is_err());
    }
}
