//! The values filters take, parsed as nbdkit parses them: durations (`SECS`
//! or `NNms`), booleans, rates (`10%` or `0.1`), NBD error names, sizes.
//! Each returns a message naming what was wrong, for a one-line usage error.

use std::time::Duration;

use crate::proto;

/// A parameter a filter takes, as `--help` and the man page show it: its
/// key, the form of its value, what it does.
pub struct Param {
    pub key: &'static str,
    pub value: &'static str,
    pub about: &'static str,
}

impl Param {
    pub const fn new(key: &'static str, value: &'static str, about: &'static str) -> Param {
        Param { key, value, about }
    }
}

/// A filter's `key=value` parameters, as the command line gave them, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// The last value given for `key` (as nbdkit: a later one wins).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `key` parsed with `parse`, or None if not given; errors name the key.
    pub fn parsed<T>(
        &self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        self.get(key)
            .map(|v| parse(v).map_err(|e| format!("{key}: {e}")))
            .transpose()
    }
}

/// `SECS` (a decimal number of seconds) or `NNms`.
pub fn duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("could not parse '{s}' as seconds or NNms");
    let (num, scale) = match s.strip_suffix("ms") {
        Some(ms) => (ms, 1e-3),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n < 0.0 || n * scale > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(n * scale))
}

/// nbdkit's booleans: 1/true/yes/on and 0/false/no/off, any case.
pub fn boolean(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Ok(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Ok(false),
        _ => Err(format!("could not parse '{s}' as a boolean")),
    }
}

/// A probability: `N%` (0 to 100) or a fraction from 0 to 1.
pub fn probability(s: &str) -> Result<f64, String> {
    let bad = || format!("could not parse '{s}' as a rate: use N% or 0..1");
    let p = match s.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().map_err(|_| bad())? / 100.0,
        None => s.trim().parse::<f64>().map_err(|_| bad())?,
    };
    if !(0.0..=1.0).contains(&p) {
        return Err(bad());
    }
    Ok(p)
}

/// An error a filter may inject: its name as nbdkit spells it, as the NBD
/// error the client gets.
pub fn nbd_error(s: &str) -> Result<u32, String> {
    Ok(match s {
        "EPERM" => proto::EPERM,
        "EIO" => proto::EIO,
        "ENOMEM" => proto::ENOMEM,
        "EINVAL" => proto::EINVAL,
        "ENOSPC" => proto::ENOSPC,
        "ESHUTDOWN" => proto::ESHUTDOWN,
        "EOVERFLOW" => proto::EOVERFLOW,
        "ENOTSUP" | "EOPNOTSUPP" => proto::ENOTSUP,
        _ => {
            return Err(format!(
                "unknown error '{s}': expecting EPERM, EIO, ENOMEM, EINVAL, ENOSPC or ESHUTDOWN"
            ));
        }
    })
}

/// A file's path, made absolute against the directory the server was
/// started in (as nbdkit's `nbdkit_absolute_path`): in the background the
/// server runs from `/`, and a relative path would name another file.
pub fn path(s: &str) -> Result<std::path::PathBuf, String> {
    if s.is_empty() {
        return Err("empty path".into());
    }
    std::path::absolute(s).map_err(|e| format!("{s}: {e}"))
}

/// A size with nbdkit's suffixes (see `crate::size`).
pub fn size(s: &str) -> Result<u64, String> {
    crate::size::parse_size(s)
}

/// A rate in bits a second, as nbdkit reads one: a number with a size's
/// suffixes (`1M` is 2^20 bits a second).
pub fn bits_per_sec(s: &str) -> Result<u64, String> {
    crate::size::parse_size(s.trim())
        .map_err(|_| format!("could not parse '{s}' as bits per second (N, NK, NM, NG…)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("1"), Ok(Duration::from_secs(1)));
        assert_eq!(duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2s"), Ok(Duration::from_secs(2)));
        for bad in ["", "ms", "-1", "1h", "nan", "1e300"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn booleans_rates_errors() {
        assert_eq!(boolean("Yes"), Ok(true));
        assert_eq!(boolean("off"), Ok(false));
        assert!(boolean("maybe").is_err());
        assert_eq!(probability("10%"), Ok(0.1));
        assert_eq!(probability("0.25"), Ok(0.25));
        assert_eq!(probability("100%"), Ok(1.0));
        assert!(probability("101%").is_err());
        assert!(probability("2").is_err());
        assert_eq!(nbd_error("ENOSPC"), Ok(proto::ENOSPC));
        assert!(path("x").is_ok_and(|p| p.is_absolute()));
        assert!(path("").is_err());
        assert!(nbd_error("EAGAIN").is_err());
        let p = Params(vec![("a".into(), "1".into()), ("a".into(), "2".into())]);
        assert_eq!(p.get("a"), Some("2"), "the last one wins");
        assert_eq!(p.parsed("b", duration), Ok(None));
        assert_eq!(p.parsed("a", duration), Ok(Some(Duration::from_secs(2))));
        let bad = Params(vec![("a".into(), "x".into())]);
        assert!(bad.parsed("a", duration).unwrap_err().starts_with("a: "));
    }
}
