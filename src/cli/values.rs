//! Option values: taking an option under any of its spellings, and turning
//! each value into what `Config` holds, with a message that says what to fix.

use std::ffi::{OsStr, OsString};
use std::time::Duration;

use crate::error::Error;
use crate::logging::Sink;

/// See `Server::spin`: long enough to catch a client's next request at queue
/// depth 1 on a local socket, short enough to cost little when none comes.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);
/// How long a client may take over the handshake before it is dropped.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may leave a request half-sent, sending nothing more.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn bad(e: pico_args::Error) -> Error {
    Error::usage(e.to_string())
}

/// The value of an option that nbdkit spells several ways (`-e`,
/// `--exportname`, `--export-name`, `--export`), as `-e NAME` or
/// `--export=NAME`; `names[0]` names it in messages. Given twice, under any
/// spellings, is an error.
pub fn value(
    p: &mut pico_args::Arguments,
    names: &[&'static str],
) -> Result<Option<String>, Error> {
    value_with(
        p,
        names,
        |s| s.to_str().map(str::to_string).ok_or("not UTF-8"),
        |s| Ok(s.to_string()),
    )
}

/// Like `value`, for values that need not be UTF-8 (paths), unless given
/// after `=`.
pub fn os_value(
    p: &mut pico_args::Arguments,
    names: &[&'static str],
) -> Result<Option<OsString>, Error> {
    value_with(
        p,
        names,
        |s| Ok(s.to_os_string()),
        |s| Ok(OsString::from(s)),
    )
}

fn value_with<T>(
    p: &mut pico_args::Arguments,
    names: &[&'static str],
    spaced: fn(&OsStr) -> Result<T, &'static str>,
    joined: fn(&str) -> Result<T, &'static str>,
) -> Result<Option<T>, Error> {
    let mut found = None;
    for &name in names {
        loop {
            let v = match p.opt_value_from_os_str(name, spaced).map_err(bad)? {
                Some(v) => v,
                None => match p.opt_value_from_fn(name, joined).map_err(bad)? {
                    Some(v) => v,
                    None => break,
                },
            };
            if found.replace(v).is_some() {
                return Err(Error::usage(format!("{} given more than once", names[0])));
            }
        }
    }
    Ok(found)
}

/// Whether a flag is given under any of its spellings (`-r`, `--readonly`,
/// `--read-only`); a short one may be combined (`-fr`).
pub fn flag(p: &mut pico_args::Arguments, names: &[&'static str]) -> bool {
    let mut given = false;
    for &name in names {
        while p.contains(name) {
            given = true;
        }
    }
    given
}

pub fn port(s: &str) -> Result<u16, Error> {
    s.parse::<u16>()
        .map_err(|_| Error::usage(format!("-p: '{s}' is not a port number")))
}

pub fn idle_timeout(s: &str) -> Result<Duration, Error> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1e9 => Ok(Duration::from_secs_f64(v)),
        _ => Err(Error::usage(format!(
            "--idle-timeout: '{s}' is not a positive number of seconds"
        ))),
    }
}

pub fn busy_poll(s: Option<&str>) -> Result<Duration, Error> {
    let Some(s) = s else {
        return Ok(DEFAULT_BUSY_POLL);
    };
    match s.parse::<u64>() {
        Ok(us) if us <= 1_000_000 => Ok(Duration::from_micros(us)),
        _ => Err(Error::usage(format!(
            "--busy-poll: '{s}' is not a number of microseconds (0 to 1000000)"
        ))),
    }
}

/// `--handshake-timeout SECS`: `None` (0) means never.
pub fn handshake_timeout(s: Option<&str>) -> Result<Option<Duration>, Error> {
    timeout("--handshake-timeout", s, DEFAULT_HANDSHAKE_TIMEOUT)
}

/// `--request-timeout SECS`: `None` (0) means never.
pub fn request_timeout(s: Option<&str>) -> Result<Option<Duration>, Error> {
    timeout("--request-timeout", s, DEFAULT_REQUEST_TIMEOUT)
}

fn timeout(flag: &str, s: Option<&str>, default: Duration) -> Result<Option<Duration>, Error> {
    let Some(s) = s else {
        return Ok(Some(default));
    };
    match s.parse::<f64>() {
        Ok(0.0) => Ok(None),
        // Under a millisecond would drop every client before it could speak.
        Ok(v) if (0.001..=1e9).contains(&v) => Ok(Some(Duration::from_secs_f64(v))),
        _ => Err(Error::usage(format!(
            "{flag}: '{s}' is not a number of seconds (0 for none, else at least 0.001)"
        ))),
    }
}

/// `--memory-budget SIZE`: a size as the backends take, at least `MIN_BUDGET`.
pub fn memory_budget(s: &str) -> Result<u64, Error> {
    let min = crate::budget::MIN_BUDGET as u64;
    match super::parse_size(s) {
        Ok(n) if n >= min => Ok(n),
        Ok(_) => Err(Error::usage(format!(
            "--memory-budget: '{s}' is too small (at least 4M)"
        ))),
        Err(e) => Err(Error::usage(format!("--memory-budget: {e}"))),
    }
}

/// `--mask-handshake MASK`: an unsigned number as nbdkit reads one (decimal,
/// `0x` hexadecimal, or octal with a leading 0).
pub fn mask_handshake(s: &str) -> Result<u32, Error> {
    let parsed = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8)
    } else {
        s.parse::<u32>()
    };
    // from_str_radix takes a sign; nbdkit does not.
    parsed
        .ok()
        .filter(|_| !s.contains(['+', '-']))
        .ok_or_else(|| {
            Error::usage(format!(
                "--mask-handshake: '{s}' is not a number (bit 0: fixed newstyle, bit 1: no zeroes)"
            ))
        })
}

pub fn max_connections(s: &str) -> Result<usize, Error> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(Error::usage(format!(
            "--max-connections: '{s}' is not a positive number"
        ))),
    }
}

pub fn log(s: &str) -> Result<Sink, Error> {
    Sink::parse(s).ok_or_else(|| {
        Error::usage(format!(
            "--log: expecting stderr, syslog or null, not '{s}'"
        ))
    })
}

/// `-t N`: a number, as nbdkit insists, though it has no effect here.
pub fn threads(s: &str) -> Result<(), Error> {
    match s.parse::<u32>() {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::usage(format!("-t: not a number: '{s}'"))),
    }
}

/// `-D NAME.FLAG=N`, in the form nbdkit insists on, though nbdlite has no
/// debug flags to set.
pub fn debug_flag(s: &str) -> Result<(), Error> {
    let ok = s.split_once('=').is_some_and(|(name, n)| {
        name.split_once('.')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
            && n.parse::<i64>().is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "-D: expecting NAME.FLAG=N (a debug flag), not '{s}'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> pico_args::Arguments {
        pico_args::Arguments::from_vec(s.split_whitespace().map(Into::into).collect())
    }

    const E: &[&str] = &["-e", "--exportname", "--export-name", "--export"];

    #[test]
    fn every_spelling_and_only_once() {
        for s in ["-e x", "--exportname x", "--export-name=x", "--export x"] {
            assert_eq!(value(&mut args(s), E).unwrap().as_deref(), Some("x"), "{s}");
        }
        assert_eq!(value(&mut args("-f"), E).unwrap(), None);
        for s in ["-e x -e y", "--export x --export-name y"] {
            let e = value(&mut args(s), E).unwrap_err().to_string();
            assert_eq!(e, "-e given more than once", "{s}");
        }
        let mut p = args("-fr --read-only");
        assert!(flag(&mut p, &["-r", "--readonly", "--read-only"]));
        assert!(flag(&mut p, &["-f"]));
        assert!(p.finish().is_empty());
    }

    #[test]
    fn values() {
        assert_eq!(busy_poll(None).unwrap(), DEFAULT_BUSY_POLL);
        assert_eq!(busy_poll(Some("0")).unwrap(), Duration::ZERO);
        assert!(busy_poll(Some("-1")).is_err());
        assert_eq!(handshake_timeout(Some("0")).unwrap(), None);
        assert_eq!(
            handshake_timeout(Some("1.5")).unwrap(),
            Some(Duration::from_millis(1500))
        );
        for bad in ["-1", "x", "0.0001"] {
            assert!(handshake_timeout(Some(bad)).is_err(), "{bad}");
        }
        assert!(max_connections("0").is_err() && max_connections("lots").is_err());
        assert_eq!(
            request_timeout(None).unwrap(),
            Some(DEFAULT_REQUEST_TIMEOUT)
        );
        assert_eq!(request_timeout(Some("0")).unwrap(), None);
        let e = request_timeout(Some("x")).unwrap_err().to_string();
        assert!(e.starts_with("--request-timeout: 'x'"), "{e}");
        assert_eq!(memory_budget("64M").unwrap(), 64 << 20);
        assert!(
            memory_budget("1M")
                .unwrap_err()
                .to_string()
                .contains("at least 4M")
        );
        assert!(
            memory_budget("lots")
                .unwrap_err()
                .to_string()
                .contains("parse")
        );
        assert!(idle_timeout("0").is_err());
        assert!(threads("x").is_err() && threads("16").is_ok());
        for (s, mask) in [("0", 0), ("3", 3), ("0x2", 2), ("0X1", 1), ("010", 8)] {
            assert_eq!(mask_handshake(s).unwrap(), mask, "{s}");
        }
        for bad in ["", "-1", "+1", "0x", "09", "three", "4294967296"] {
            assert!(mask_handshake(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_flags_in_nbdkit_form() {
        for good in ["nbdkit.backend.datapath=0", "memory.x=1", "a.b=-3"] {
            assert!(debug_flag(good).is_ok(), "{good}");
        }
        for bad in ["foo", "foo=1", ".x=1", "a.=1", "a.b=", "a.b=x"] {
            let e = debug_flag(bad).unwrap_err().to_string();
            assert!(e.starts_with("-D: expecting NAME.FLAG=N"), "{bad}: {e}");
        }
    }
}
