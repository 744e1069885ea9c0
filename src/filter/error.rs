//! `--filter=error`: errors injected into replies, at a rate, optionally only
//! while a file exists (looked at per request, so a test can switch them on
//! and off at an exact moment). Per-operation keys (`error-pread-rate=` …)
//! take the place of the general ones for their operation. Nothing below sees
//! a request that gets an injected error: a failed write writes nothing.

use std::path::PathBuf;
use std::time::Instant;

use super::params::{Params, nbd_error, probability};
use super::registry::Param;
use super::{Call, Filter, Verdict};
use crate::proto::*;

pub const PARAMS: &[Param] = &[
    Param::new(
        "error",
        "EIO|EPERM|ENOMEM|EINVAL|ENOSPC|ESHUTDOWN",
        "the error injected (EIO)",
    ),
    Param::new("error-rate", "N%|0..1", "how often, per request (0%)"),
    Param::new("error-file", "FILE", "only while FILE exists"),
    Param::new("error-pread", "ERROR", "as error=, for reads only"),
    Param::new("error-pread-rate", "N%|0..1", ""),
    Param::new("error-pread-file", "FILE", ""),
    Param::new("error-pwrite", "ERROR", "as error=, for writes only"),
    Param::new("error-pwrite-rate", "N%|0..1", ""),
    Param::new("error-pwrite-file", "FILE", ""),
    Param::new("error-trim", "ERROR", "as error=, for trims only"),
    Param::new("error-trim-rate", "N%|0..1", ""),
    Param::new("error-trim-file", "FILE", ""),
    Param::new("error-zero", "ERROR", "as error=, for zeroing only"),
    Param::new("error-zero-rate", "N%|0..1", ""),
    Param::new("error-zero-file", "FILE", ""),
    Param::new("error-extents", "ERROR", "as error=, for block status only"),
    Param::new("error-extents-rate", "N%|0..1", ""),
    Param::new("error-extents-file", "FILE", ""),
    Param::new("error-cache", "ERROR", "as error=, for cache requests only"),
    Param::new("error-cache-rate", "N%|0..1", ""),
    Param::new("error-cache-file", "FILE", ""),
];

/// The operations with settings of their own, as nbdkit names them.
const OPS: [(&str, u16); 6] = [
    ("pread", CMD_READ),
    ("pwrite", CMD_WRITE),
    ("trim", CMD_TRIM),
    ("zero", CMD_WRITE_ZEROES),
    ("extents", CMD_BLOCK_STATUS),
    ("cache", CMD_CACHE),
];

/// One operation's settings.
#[derive(Debug, Clone)]
struct Rule {
    error: u32,
    rate: f64,
    file: Option<PathBuf>,
}

#[derive(Debug)]
struct Inject {
    /// One per entry of `OPS`.
    rules: [Rule; 6],
    rng: Rng,
}

pub fn build(params: &Params) -> Result<Box<dyn Filter>, String> {
    let general = rule(
        params,
        "error",
        &Rule {
            error: EIO,
            rate: 0.0,
            file: None,
        },
    )?;
    let mut rules = Vec::with_capacity(OPS.len());
    for (op, _) in OPS {
        rules.push(rule(params, &format!("error-{op}"), &general)?);
    }
    let rules = rules.try_into().map_err(|_| "rules".to_string())?; // OPS.len() of them
    Ok(Box::new(Inject {
        rules,
        rng: Rng::seeded(),
    }))
}

/// The settings under `prefix` (`error`, `error-pread` …), each falling back
/// to `base`'s.
fn rule(params: &Params, prefix: &str, base: &Rule) -> Result<Rule, String> {
    Ok(Rule {
        error: params.parsed(prefix, nbd_error)?.unwrap_or(base.error),
        rate: params
            .parsed(&format!("{prefix}-rate"), probability)?
            .unwrap_or(base.rate),
        file: params
            .get(&format!("{prefix}-file"))
            // Absolute: filters are built before the server goes into the
            // background, which changes directory to /.
            .map(|f| std::path::absolute(f).unwrap_or_else(|_| PathBuf::from(f)))
            .or_else(|| base.file.clone()),
    })
}

impl Filter for Inject {
    fn name(&self) -> &'static str {
        "error"
    }

    fn request(&mut self, call: &mut Call, _: Instant) -> Verdict {
        let Some(i) = OPS.iter().position(|&(_, kind)| kind == call.kind) else {
            return Verdict::Pass; // FLUSH: never
        };
        let r = &self.rules[i];
        if r.rate <= 0.0 || (r.rate < 1.0 && self.rng.unit() >= r.rate) {
            return Verdict::Pass;
        }
        if r.file.as_ref().is_some_and(|f| !f.exists()) {
            return Verdict::Pass;
        }
        log::warn!("injecting {} error into {}", errno_name(r.error), OPS[i].0);
        Verdict::Fail(r.error)
    }
}

/// The name nbdkit's error filter uses for an NBD error.
fn errno_name(e: u32) -> &'static str {
    match e {
        EPERM => "EPERM",
        EIO => "EIO",
        ENOMEM => "ENOMEM",
        EINVAL => "EINVAL",
        ENOSPC => "ENOSPC",
        ESHUTDOWN => "ESHUTDOWN",
        EOVERFLOW => "EOVERFLOW",
        _ => "ENOTSUP",
    }
}

/// xorshift64*, seeded from the clock and the pid: each server run injects
/// its own pattern, as nbdkit's does.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng((t ^ u64::from(std::process::id()).rotate_left(32)) | 1)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inject(kv: &[(&str, &str)]) -> Box<dyn Filter> {
        let p = Params(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        build(&p).expect("valid")
    }

    fn call(kind: u16) -> Call {
        Call {
            conn: 1,
            kind,
            flags: 0,
            offset: 0,
            len: 1,
            started: Instant::now(),
        }
    }

    #[test]
    fn per_operation_settings_take_precedence() {
        let now = Instant::now();
        let mut f = inject(&[("error", "ENOSPC"), ("error-pwrite-rate", "100%")]);
        assert_eq!(f.request(&mut call(CMD_WRITE), now), Verdict::Fail(ENOSPC));
        assert_eq!(f.request(&mut call(CMD_READ), now), Verdict::Pass);
        let mut all = inject(&[("error-rate", "1"), ("error-cache", "EPERM")]);
        assert_eq!(all.request(&mut call(CMD_READ), now), Verdict::Fail(EIO));
        assert_eq!(all.request(&mut call(CMD_CACHE), now), Verdict::Fail(EPERM));
        assert_eq!(all.request(&mut call(CMD_FLUSH), now), Verdict::Pass);
    }

    #[test]
    fn a_rate_is_a_rate_and_a_file_a_switch() {
        let now = Instant::now();
        let mut f = inject(&[("error-rate", "10%")]);
        let n = (0..10_000)
            .filter(|_| f.request(&mut call(CMD_READ), now) != Verdict::Pass)
            .count();
        assert!((700..1300).contains(&n), "{n} of 10000");
        let mut off = inject(&[("error-rate", "1"), ("error-file", "/nonexistent/x")]);
        assert_eq!(off.request(&mut call(CMD_READ), now), Verdict::Pass);
        let p = Params(vec![("error".into(), "EAGAIN".into())]);
        assert!(build(&p).is_err());
    }
}
