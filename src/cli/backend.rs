//! `BACKEND [KEY=VALUE ...]`: which backend, and its parameters, checked
//! against each backend's table, which `BACKEND --help` and `--dump-plugin`
//! show too.

use std::path::PathBuf;

use super::curl::{self, CurlSpec};
use crate::backend::{CacheMode, Fadvise, FileOptions};
use crate::error::Error;
use crate::size::unit_letter;
pub use crate::size::{SIZE_FORMS, parse_size, show_size};

/// How `memory` holds the disk (nbdkit's `allocator=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// Pages taken as data is written, given back when zeroed (the default).
    Sparse,
    /// The whole disk taken at start; with `mlock`, locked in RAM.
    Malloc { mlock: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    Memory {
        size: u64,
        allocator: Allocator,
    },
    /// A regular file or block device.
    File(PathBuf, FileOptions),
    /// `file dir=`: an export for each regular file and block device in a
    /// directory.
    Dir(PathBuf, FileOptions),
    Null(u64),
    Pattern(u64),
    /// An HTTP or HTTPS URL (`curl`, or its alias `http`).
    Curl(Box<CurlSpec>),
}

/// One parameter a backend takes: `key=VALUE`, and what it does.
#[derive(Debug)]
pub struct Param {
    pub key: &'static str,
    pub value: &'static str,
    pub help: &'static str,
}

/// A backend: its parameters, the first of which is the one a bare value
/// sets (nbdkit's "magic" key), and that one's default (`None`: required).
/// `thread_model` and `features` are what `--dump-plugin` says of it.
#[derive(Debug)]
pub struct Kind {
    pub name: &'static str,
    pub params: &'static [Param],
    pub default: Option<&'static str>,
    /// nbdkit's word for what a client can see of requests in flight
    /// together: `parallel` when the backend carries several out at once
    /// (so replies may come back in another order), `serialize_all_requests`
    /// when each is done whole, in turn, across all connections.
    pub thread_model: &'static str,
    /// Backend-specific `key=yes|no` lines, as nbdkit's plugins print them.
    pub features: &'static [(&'static str, &'static str)],
}

impl Kind {
    /// `curl` or its alias `http`, whose parameters have a parser of their own.
    pub fn is_curl(&self) -> bool {
        std::ptr::eq(self.params, CURL)
    }

    /// The key a bare value sets.
    pub fn magic(&self) -> &'static str {
        self.params[0].key
    }
}

const SIZE: Param = Param {
    key: "size",
    value: "SIZE",
    help: "the export's size (default 0)",
};

/// curl's (and http's) parameters: nbdkit-curl-plugin's that apply (those
/// it has and nbdlite does not are refused by name: `curl::UNSUPPORTED`).
const CURL: &[Param] = &[
    Param {
        key: "url",
        value: "URL",
        help: "(required) the http:// or https:// URL of the image",
    },
    Param {
        key: "header",
        value: "NAME: VALUE",
        help: "an HTTP header to send (repeatable)",
    },
    Param {
        key: "user",
        value: "USER",
        help: "user name for HTTP authentication",
    },
    Param {
        key: "password",
        value: "PASSWORD|-|+FILE|-FD",
        help: "its password: given, from the terminal, a file or a descriptor",
    },
    Param {
        key: "cookie",
        value: "COOKIE|+FILE|-FD",
        help: "cookies to send",
    },
    Param {
        key: "user-agent",
        value: "STRING",
        help: "the User-Agent header",
    },
    Param {
        key: "cainfo",
        value: "FILE",
        help: "CA certificates (PEM) to check the server's with",
    },
    Param {
        key: "capath",
        value: "DIR",
        help: "a directory of CA certificates",
    },
    Param {
        key: "sslverify",
        value: "BOOL",
        help: "false: accept any server certificate",
    },
    Param {
        key: "timeout",
        value: "SECS",
        help: "how long a request may take",
    },
    Param {
        key: "followlocation",
        value: "BOOL",
        help: "follow redirects at start-up (default true)",
    },
    Param {
        key: "connections",
        value: "N",
        help: "connections to the web server (default 16)",
    },
    Param {
        key: "unix-socket-path",
        value: "PATH",
        help: "reach the web server through this Unix socket",
    },
    Param {
        key: "protocols",
        value: "http,https",
        help: "the schemes the URL and redirects may use",
    },
    Param {
        key: "tcp-nodelay",
        value: "BOOL",
        help: "TCP_NODELAY on the web server connections (default true)",
    },
];

/// The backends. nbdkit's null and pattern plugins serve a 0-byte export
/// without a size.
pub const BACKENDS: [Kind; 6] = [
    Kind {
        name: "memory",
        params: &[
            Param {
                key: "size",
                value: "SIZE",
                help: "(required) the RAM disk's size",
            },
            Param {
                key: "allocator",
                value: "sparse|malloc[,mlock=true]",
                help: "sparse (the default): memory only for what is written; \
                       malloc: all of it at start (mlock=true: locked in RAM)",
            },
        ],
        default: None,
        thread_model: "serialize_all_requests",
        features: &[("mlock", "yes"), ("zstd", "no")],
    },
    Kind {
        name: "file",
        params: &[
            Param {
                key: "file",
                value: "PATH",
                help: "the regular file or block device to serve (this or dir= is required)",
            },
            Param {
                key: "dir",
                value: "DIR",
                help: "serve each regular file and block device in DIR, as an export named \
                       by its file name",
            },
            Param {
                key: "directory",
                value: "DIR",
                help: "the same as dir=",
            },
            Param {
                key: "cache",
                value: "default|none",
                help: "none: drop what was read or written from the page cache after",
            },
            Param {
                key: "fadvise",
                value: "normal|random|sequential",
                help: "how the file will be read, for the kernel's readahead",
            },
        ],
        default: None,
        thread_model: "parallel",
        features: &[
            ("file_blksszget", "yes"),
            ("file_falloc_fl_punch_hole", "yes"),
            ("file_falloc_fl_zero_range", "yes"),
        ],
    },
    Kind {
        name: "null",
        params: &[SIZE],
        default: Some("0"),
        thread_model: "serialize_all_requests",
        features: &[],
    },
    Kind {
        name: "pattern",
        params: &[SIZE],
        default: Some("0"),
        thread_model: "serialize_all_requests",
        features: &[],
    },
    Kind {
        name: "curl",
        params: CURL,
        default: None,
        thread_model: "parallel",
        features: &[],
    },
    Kind {
        name: "http",
        params: CURL,
        default: None,
        thread_model: "parallel",
        features: &[],
    },
];

/// Whether backend `name` takes parameter `key` (or knows it well enough to
/// refuse it by name).
pub fn takes(name: &str, key: &str) -> bool {
    lookup(name).is_ok_and(|k| {
        k.params.iter().any(|p| p.key == key) || (k.is_curl() && curl::UNSUPPORTED.contains(&key))
    })
}

/// A backend by name; an unknown one is an error (`nosuch --version` fails,
/// as `nbdkit nosuch --version` does).
pub fn lookup(name: &str) -> Result<&'static Kind, Error> {
    BACKENDS.iter().find(|k| k.name == name).ok_or_else(|| {
        Error::usage(format!(
            "unknown backend '{name}': expecting memory, file, null, pattern or curl"
        ))
    })
}

/// The parameters given, each under a key the backend has and given once
/// (what nbdkit checks as it hands each to the plugin): neither their values
/// nor whether a required one is missing are checked yet. `--dump-plugin`
/// stops here.
pub fn given<'a>(kind: &Kind, params: &'a [String]) -> Result<Vec<(&'static str, &'a str)>, Error> {
    let name = kind.name;
    let mut given: Vec<(&'static str, &'a str)> = Vec::new();
    for param in params {
        let (key, v) = match param.split_once('=') {
            Some((k, v)) => (k, v),
            None => (kind.magic(), param.as_str()),
        };
        let Some(p) = kind.params.iter().find(|p| p.key == key) else {
            return Err(unknown_parameter(name, key));
        };
        let repeatable = p.key == "header";
        if let Some(&(_, first)) = given.iter().find(|(k, _)| *k == p.key && !repeatable) {
            return Err(twice(kind, p.key, first, v));
        }
        given.push((p.key, v));
    }
    Ok(given)
}

fn unknown_parameter(name: &str, key: &str) -> Error {
    Error::usage(format!("{name}: unknown parameter '{key}'"))
}

/// A parameter given twice: often one value with a space in it
/// (`memory 1 GiB`), which is said so.
fn twice(kind: &Kind, key: &str, first: &str, second: &str) -> Error {
    let name = kind.name;
    if key == "size"
        && let Some(joined) = size_with_space(first, second)
    {
        return Error::usage(format!(
            "{name}: '{first} {second}' is one size with a space in it: write {joined} \
             ({SIZE_FORMS})"
        ));
    }
    if key == "file" {
        return Error::usage(format!(
            "file: two files given, '{first}' and '{second}' (a path with a space \
             in it must be quoted)"
        ));
    }
    Error::usage(format!(
        "{name}: {key} given more than once ('{first}' and '{second}')"
    ))
}

/// `1 GiB`, `64 M`, `2 sectors`: the size the two words mean, in our form.
fn size_with_space(number: &str, unit: &str) -> Option<String> {
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let suffix = match unit.to_ascii_lowercase().as_str() {
        "b" | "byte" | "bytes" => "",
        "s" | "sector" | "sectors" => "s",
        u => unit_letter(u)?,
    };
    Some(format!("{number}{suffix}"))
}

/// `BACKEND [KEY=VALUE ...]`: the first bare word is the backend's main parameter.
pub fn parse(name: &str, params: &[String]) -> Result<BackendSpec, Error> {
    let kind = lookup(name)?;
    if kind.is_curl() {
        // Many keys, some repeatable, some refused by name: its own parser.
        return Ok(BackendSpec::Curl(Box::new(curl::parse(name, params)?)));
    }
    let given = given(kind, params)?;
    if name == "file" {
        return file(&given);
    }
    let value = |key: &str| given.iter().find(|(k, _)| *k == key).map(|&(_, v)| v);
    let magic = kind.magic();
    let Some(main) = value(magic).or(kind.default) else {
        return Err(Error::usage(format!(
            "{name}: the {magic} parameter is required"
        )));
    };
    let size = || parse_size(main).map_err(|e| Error::usage(format!("{name}: {e}")));
    Ok(match name {
        "memory" => BackendSpec::Memory {
            size: size()?,
            allocator: value("allocator").map_or(Ok(Allocator::Sparse), allocator)?,
        },
        "null" => BackendSpec::Null(size()?),
        _ => BackendSpec::Pattern(size()?),
    })
}

/// `file [file=]PATH` or `file dir=DIR`, with `cache=` and `fadvise=`.
fn file(given: &[(&str, &str)]) -> Result<BackendSpec, Error> {
    let value = |key: &str| given.iter().find(|(k, _)| *k == key).map(|&(_, v)| v);
    let dir = match (value("dir"), value("directory")) {
        (Some(a), Some(b)) => {
            return Err(Error::usage(format!(
                "file: dir= given twice ('{a}', and '{b}' as directory=)"
            )));
        }
        (a, b) => a.or(b),
    };
    let options = FileOptions {
        fadvise: value("fadvise").map_or(Ok(Fadvise::Normal), fadvise)?,
        cache: value("cache").map_or(Ok(CacheMode::Default), cache)?,
    };
    let (path, spec): (_, fn(PathBuf, FileOptions) -> BackendSpec) = match (value("file"), dir) {
        (Some(_), Some(_)) => {
            return Err(Error::usage(
                "file: file= and dir= cannot be used together: one file, or a directory of them",
            ));
        }
        (Some(f), None) => (f, BackendSpec::File),
        (None, Some(d)) => (d, BackendSpec::Dir),
        (None, None) => {
            return Err(Error::usage(
                "file: the file parameter is required (or dir=DIR, to serve each file in a directory)",
            ));
        }
    };
    if path.is_empty() {
        let key = if dir.is_some() { "dir" } else { "file" };
        return Err(Error::usage(format!("file: the {key} parameter is empty")));
    }
    Ok(spec(PathBuf::from(path), options))
}

/// `fadvise=normal|random|sequential`, as nbdkit's file plugin spells it.
fn fadvise(v: &str) -> Result<Fadvise, Error> {
    match v {
        "normal" => Ok(Fadvise::Normal),
        "random" => Ok(Fadvise::Random),
        "sequential" => Ok(Fadvise::Sequential),
        _ => Err(Error::usage(format!(
            "file: unknown fadvise mode '{v}': expecting normal, random or sequential"
        ))),
    }
}

/// `cache=default|none`, as nbdkit's file plugin spells it.
fn cache(v: &str) -> Result<CacheMode, Error> {
    match v {
        "default" => Ok(CacheMode::Default),
        "none" => Ok(CacheMode::None),
        _ => Err(Error::usage(format!(
            "file: unknown cache mode '{v}': expecting default or none"
        ))),
    }
}

/// `allocator=sparse|malloc[,mlock=BOOL]|zstd`, as nbdkit's memory plugin
/// spells it; zstd (compressed pages) is refused by name.
fn allocator(v: &str) -> Result<Allocator, Error> {
    let mut parts = v.split(',');
    let kind = parts.next().unwrap_or_default();
    let extra: Vec<&str> = parts.collect();
    match kind {
        "sparse" if extra.is_empty() => Ok(Allocator::Sparse),
        "sparse" => Err(Error::usage(format!(
            "memory: allocator=sparse takes nothing more ('{}'): mlock=true goes with allocator=malloc",
            extra.join(",")
        ))),
        "malloc" => {
            let mut mlock = false;
            for e in extra {
                match e.split_once('=') {
                    Some(("mlock", b)) => {
                        mlock = boolean(b).ok_or_else(|| {
                            Error::usage(format!(
                                "memory: allocator=malloc: mlock={b}: expecting true or false"
                            ))
                        })?
                    }
                    _ => {
                        let key = e.split_once('=').map_or(e, |(k, _)| k);
                        return Err(Error::usage(format!(
                            "memory: allocator=malloc: unknown parameter '{key}' (it takes mlock=true)"
                        )));
                    }
                }
            }
            Ok(Allocator::Malloc { mlock })
        }
        "zstd" => Err(Error::usage(
            "memory: allocator=zstd is not supported (nbdlite has no zstd \
             compression): use allocator=sparse, the default, or allocator=malloc",
        )),
        _ => Err(Error::usage(format!(
            "memory: unknown allocator '{kind}': expecting sparse, malloc or malloc,mlock=true"
        ))),
    }
}

/// A boolean as nbdkit reads one (`nbdkit_parse_bool`).
fn boolean(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Some(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

/// `BACKEND --help`: the backend's parameters, one a line, in nbdkit's form
/// (`key=VALUE  what it does`, which nbdkit's bash completion reads), what
/// they do wrapped beside them.
pub fn help(kind: &Kind) -> String {
    const INDENT: usize = 26;
    const WIDTH: usize = 80;
    let mut s = format!("backend: {}\n", kind.name);
    for p in kind.params {
        let left = format!("{}={}", p.key, p.value);
        let mut line = if left.len() + 2 <= INDENT {
            format!("{left:<INDENT$}")
        } else {
            s.push_str(&format!("{left}\n"));
            " ".repeat(INDENT)
        };
        let mut empty = true;
        for word in p.help.split_whitespace() {
            if !empty && line.len() + 1 + word.len() > WIDTH {
                s.push_str(line.trim_end());
                s.push('\n');
                line = " ".repeat(INDENT);
                empty = true;
            }
            if !empty {
                line.push(' ');
            }
            line.push_str(word);
            empty = false;
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Result<BackendSpec, String> {
        let words: Vec<String> = s.split_whitespace().map(String::from).collect();
        parse(&words[0], &words[1..]).map_err(|e| e.to_string())
    }

    fn memory(size: u64) -> BackendSpec {
        BackendSpec::Memory {
            size,
            allocator: Allocator::Sparse,
        }
    }

    #[test]
    fn a_size_with_a_space_is_named() {
        for (words, joined) in [
            ("1 GiB", "1G"),
            ("1 GB", "1G"),
            ("64 M", "64M"),
            ("8 sectors", "8s"),
            ("512 bytes", "512"),
        ] {
            let e = spec(&format!("memory {words}")).unwrap_err();
            assert!(
                e.starts_with(&format!(
                    "memory: '{words}' is one size with a space in it: write {joined} ("
                )),
                "{words}: {e}"
            );
        }
        assert!(spec("null 1 GiB").unwrap_err().contains("write 1G"));
        // Two sizes are two sizes.
        assert_eq!(
            spec("memory 1G 2G").unwrap_err(),
            "memory: size given more than once ('1G' and '2G')"
        );
        assert!(
            spec("file my disk.img")
                .unwrap_err()
                .contains("a path with a space in it must be quoted")
        );
    }

    #[test]
    fn backends_and_magic_parameters() {
        assert_eq!(spec("memory 1G"), Ok(memory(1 << 30)));
        assert_eq!(spec("memory size=1M"), Ok(memory(1 << 20)));
        assert_eq!(spec("null 0"), Ok(BackendSpec::Null(0)));
        assert_eq!(spec("pattern size=1s"), Ok(BackendSpec::Pattern(512)));
        let plain = FileOptions::default();
        assert_eq!(
            spec("file disk.img"),
            Ok(BackendSpec::File("disk.img".into(), plain))
        );
        assert_eq!(
            spec("file file=/a=b"),
            Ok(BackendSpec::File("/a=b".into(), plain))
        );
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
        assert!(
            spec("memory colour=red")
                .unwrap_err()
                .contains("unknown parameter 'colour'")
        );
        assert!(
            spec("memory lots")
                .unwrap_err()
                .contains("could not parse size")
        );
        assert!(spec("disk 1G").unwrap_err().contains("unknown backend"));
    }

    #[test]
    fn file_serves_a_file_or_a_directory_as_nbdkit_spells_them() {
        let plain = FileOptions::default();
        assert_eq!(
            spec("file dir=/srv"),
            Ok(BackendSpec::Dir("/srv".into(), plain))
        );
        assert_eq!(
            spec("file directory=/srv"),
            Ok(BackendSpec::Dir("/srv".into(), plain))
        );
        let tuned = FileOptions {
            fadvise: Fadvise::Sequential,
            cache: CacheMode::None,
        };
        assert_eq!(
            spec("file dir=/srv cache=none fadvise=sequential"),
            Ok(BackendSpec::Dir("/srv".into(), tuned))
        );
        assert_eq!(
            spec("file disk.img fadvise=sequential cache=none"),
            Ok(BackendSpec::File("disk.img".into(), tuned))
        );
        for (words, msg) in [
            (
                "file a.img dir=/srv",
                "file= and dir= cannot be used together",
            ),
            ("file dir=/a directory=/b", "dir= given twice"),
            ("file dir=", "the dir parameter is empty"),
            ("file cache=none", "the file parameter is required (or dir="),
            ("file dir=/srv cache=off", "unknown cache mode 'off'"),
            ("file dir=/srv fadvise=fast", "unknown fadvise mode 'fast'"),
            ("file dri=/srv", "unknown parameter 'dri'"),
        ] {
            let e = spec(words).unwrap_err();
            assert!(e.starts_with("file: ") && e.contains(msg), "{words}: {e}");
        }
    }

    #[test]
    fn memory_allocators_as_nbdkit_spells_them() {
        let with = |a: &str| spec(&format!("memory 1M allocator={a}"));
        let alloc = |allocator| {
            Ok(BackendSpec::Memory {
                size: 1 << 20,
                allocator,
            })
        };
        assert_eq!(with("sparse"), alloc(Allocator::Sparse));
        assert_eq!(with("malloc"), alloc(Allocator::Malloc { mlock: false }));
        for yes in ["true", "yes", "on", "1", "TRUE"] {
            let a = Allocator::Malloc { mlock: true };
            assert_eq!(with(&format!("malloc,mlock={yes}")), alloc(a), "{yes}");
        }
        let a = Allocator::Malloc { mlock: false };
        assert_eq!(with("malloc,mlock=false"), alloc(a));
        assert_eq!(
            spec("memory allocator=malloc size=2M"),
            Ok(BackendSpec::Memory {
                size: 2 << 20,
                allocator: a
            })
        );
        for (bad, msg) in [
            ("zstd", "allocator=zstd is not supported"),
            ("sparse,mlock=true", "allocator=sparse takes nothing more"),
            ("malloc,mlock=maybe", "mlock=maybe: expecting true or false"),
            ("malloc,foo=1", "unknown parameter 'foo'"),
            ("slab", "unknown allocator 'slab'"),
        ] {
            let e = with(bad).unwrap_err();
            assert!(e.starts_with("memory: ") && e.contains(msg), "{bad}: {e}");
        }
    }

    #[test]
    fn null_and_pattern_default_to_empty() {
        assert_eq!(spec("null"), Ok(BackendSpec::Null(0)));
        assert_eq!(spec("pattern"), Ok(BackendSpec::Pattern(0)));
        assert!(lookup("pattern").is_ok());
        assert!(
            lookup("nosuch")
                .unwrap_err()
                .to_string()
                .contains("unknown backend")
        );
    }

    #[test]
    fn given_checks_keys_but_not_values() {
        let memory = lookup("memory").unwrap();
        let params = ["allocator=zstd".to_string()];
        assert_eq!(given(memory, &params).unwrap(), [("allocator", "zstd")]);
        assert!(given(memory, &[]).unwrap().is_empty());
        assert!(given(memory, &["x=1".to_string()]).is_err());
    }

    #[test]
    fn backend_help_lines_start_with_their_key() {
        let h = help(lookup("memory").unwrap());
        let keys: Vec<&str> = h
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .filter(|k| k.bytes().all(|b| b.is_ascii_lowercase()))
            .collect();
        assert_eq!(keys, ["size", "allocator"], "{h}");
        assert!(h.lines().all(|l| l.len() <= 80), "{h}");
    }
}
