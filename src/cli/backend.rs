//! `BACKEND [KEY=VALUE ...]`: which backend, and its one parameter.

use std::path::PathBuf;

use super::curl::{self, CurlSpec};
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    Memory(u64),
    File(PathBuf),
    Null(u64),
    Pattern(u64),
    /// An HTTP or HTTPS URL (`curl`, or its alias `http`).
    Curl(Box<CurlSpec>),
}

/// The backends, each with its "magic" key (the one a bare value sets) and
/// its default when the key is not given (`None`: the key is required).
/// nbdkit's null and pattern plugins serve a 0-byte export without a size.
const BACKENDS: [(&str, &str, Option<&str>); 6] = [
    ("memory", "size", None),
    ("file", "file", None),
    ("null", "size", Some("0")),
    ("pattern", "size", Some("0")),
    ("curl", "url", None),
    ("http", "url", None),
];

/// Whether backend `name` takes parameter `key`.
pub fn takes(name: &str, key: &str) -> bool {
    match lookup(name) {
        Ok(("url", _)) => curl::takes(key),
        Ok((magic, _)) => magic == key,
        Err(_) => false,
    }
}

/// Checks a backend name, for `BACKEND --version`, which must fail for a
/// backend that does not exist (as `nbdkit nosuch --version` does).
pub fn known(name: &str) -> Result<(), Error> {
    lookup(name).map(|_| ())
}

fn lookup(name: &str) -> Result<(&'static str, Option<&'static str>), Error> {
    BACKENDS
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|&(_, magic, default)| (magic, default))
        .ok_or_else(|| {
            Error::usage(format!(
                "unknown backend '{name}': expecting memory, file, null, pattern or curl"
            ))
        })
}

/// `BACKEND [KEY=VALUE ...]`: the first bare word is the backend's main parameter.
pub fn parse(name: &str, params: &[String]) -> Result<BackendSpec, Error> {
    let (magic, default) = lookup(name)?;
    if magic == "url" {
        // Many keys, some repeatable: its own parser.
        return Ok(BackendSpec::Curl(Box::new(curl::parse(name, params)?)));
    }
    let mut value: Option<&str> = None;
    for param in params {
        let (key, v) = match param.split_once('=') {
            Some((k, v)) => (k, v),
            None => (magic, param.as_str()),
        };
        if key != magic {
            return Err(Error::usage(format!("{name}: unknown parameter '{key}'")));
        }
        if value.replace(v).is_some() {
            return Err(Error::usage(format!(
                "{name}: {magic} given more than once"
            )));
        }
    }
    let Some(value) = value.or(default) else {
        return Err(Error::usage(format!(
            "{name}: the {magic} parameter is required"
        )));
    };
    let size = || parse_size(value).map_err(|e| Error::usage(format!("{name}: {e}")));
    Ok(match name {
        "memory" => BackendSpec::Memory(size()?),
        "null" => BackendSpec::Null(size()?),
        "pattern" => BackendSpec::Pattern(size()?),
        _ => {
            if value.is_empty() {
                return Err(Error::usage("file: the file parameter is empty"));
            }
            BackendSpec::File(PathBuf::from(value))
        }
    })
}

/// Parses sizes like `512`, `64K`, `1M`, `10G`, `2s` (sectors). At most 2^63-1 bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, suffix) = s.split_at(digits);
    let shift = match suffix {
        "" | "b" | "B" => 0,
        "s" | "S" => 9,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        "p" | "P" => 50,
        "e" | "E" => 60,
        _ => return Err(format!("could not parse size '{s}'")),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("could not parse size '{s}'"))?;
    n.checked_mul(1u64 << shift)
        .filter(|&v| v <= i64::MAX as u64)
        .ok_or_else(|| format!("size '{s}' is too large (the limit is 2^63-1 bytes)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Result<BackendSpec, String> {
        let words: Vec<String> = s.split_whitespace().map(String::from).collect();
        parse(&words[0], &words[1..]).map_err(|e| e.to_string())
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("3s"), Ok(1536));
        assert_eq!(parse_size("7E"), Ok(7 << 60));
        assert_eq!(parse_size("9223372036854775807"), Ok(i64::MAX as u64));
        for bad in [
            "",
            "G",
            "1X",
            "8E",
            "-1",
            "1.5G",
            "9223372036854775808",
            "99999999999999999999",
            " 1",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backends_and_magic_parameters() {
        assert_eq!(spec("memory 1G"), Ok(BackendSpec::Memory(1 << 30)));
        assert_eq!(spec("memory size=1M"), Ok(BackendSpec::Memory(1 << 20)));
        assert_eq!(spec("null 0"), Ok(BackendSpec::Null(0)));
        assert_eq!(spec("pattern size=1s"), Ok(BackendSpec::Pattern(512)));
        assert_eq!(
            spec("file disk.img"),
            Ok(BackendSpec::File("disk.img".into()))
        );
        assert_eq!(spec("file file=/a=b"), Ok(BackendSpec::File("/a=b".into())));
        assert!(
            spec("memory")
                .unwrap_err()
                .contains("size parameter is required")
        );
        assert!(
            spec("file")
                .unwrap_err()
                .contains("file parameter is required")
        );
        assert!(spec("file file=").unwrap_err().contains("empty"));
        assert!(spec("memory 1G 2G").unwrap_err().contains("more than once"));
        assert!(
            spec("memory colour=red")
                .unwrap_err()
                .contains("unknown parameter")
        );
        assert!(
            spec("memory lots")
                .unwrap_err()
                .contains("could not parse size")
        );
        assert!(spec("disk 1G").unwrap_err().contains("unknown backend"));
    }

    #[test]
    fn null_and_pattern_default_to_empty() {
        assert_eq!(spec("null"), Ok(BackendSpec::Null(0)));
        assert_eq!(spec("pattern"), Ok(BackendSpec::Pattern(0)));
        assert!(known("pattern").is_ok());
        assert!(
            known("nosuch")
                .unwrap_err()
                .to_string()
                .contains("unknown backend")
        );
    }
}
