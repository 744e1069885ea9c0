//! The filters nbdlite has: each one's name, the parameters it takes (for
//! `--help`, the man page and the command line's sorting of `key=value`s),
//! and how it is built from them.

use super::Filter;
use super::params::{Param, Params};

/// A filter as the command line knows it.
pub struct Entry {
    pub name: &'static str,
    pub about: &'static str,
    pub params: &'static [Param],
    /// Builds it from its parameters; Err says which value was wrong.
    pub build: fn(&Params) -> Result<Box<dyn Filter>, String>,
}

impl Entry {
    /// Whether `key` is one of its parameters.
    pub fn takes(&self, key: &str) -> bool {
        self.params.iter().any(|p| p.key == key)
    }
}

/// Every filter, in the order `--help` lists them.
pub static FILTERS: &[Entry] = &[
    Entry {
        name: "delay",
        about: "delay requests, opening and closing, as a slow or remote disk would",
        params: super::delay::PARAMS,
        build: super::delay::build,
    },
    Entry {
        name: "error",
        about: "inject errors into replies, at random or while a file exists",
        params: super::error::PARAMS,
        build: super::error::build,
    },
    Entry {
        name: "partition",
        about: "serve one partition of a disk image (MBR or GPT)",
        params: super::partition::PARAMS,
        build: super::partition::build,
    },
    Entry {
        name: "offset",
        about: "serve a byte range of what is below",
        params: super::offset::PARAMS,
        build: super::offset::build,
    },
    Entry {
        name: "truncate",
        about: "change the size: cut, extend with zeroes, round up or down",
        params: super::truncate::PARAMS,
        build: super::truncate::build,
    },
    Entry {
        name: "exitlast",
        about: "exit once the last client has gone",
        params: super::exitlast::PARAMS,
        build: super::exitlast::build,
    },
    Entry {
        name: "exitwhen",
        about: "exit gracefully once an event has happened (a file, a pipe, a process, a script)",
        params: super::exitwhen::PARAMS,
        build: super::exitwhen::build,
    },
    Entry {
        name: "limit",
        about: "limit how many clients may be connected at once",
        params: super::limit::PARAMS,
        build: super::limit::build,
    },
    Entry {
        name: "rate",
        about: "limit the bandwidth of the server and of each connection",
        params: super::rate::PARAMS,
        build: super::rate::build,
    },
    Entry {
        name: "nozero",
        about: "take WRITE_ZEROES away, or make zeroing naive",
        params: super::nozero::PARAMS,
        build: super::nozero::build,
    },
    Entry {
        name: "noextents",
        about: "report the whole export as allocated data",
        params: super::noextents::PARAMS,
        build: super::noextents::build,
    },
    Entry {
        name: "blocksize-policy",
        about: "advertise block sizes, and refuse requests that ignore them",
        params: super::blocksize_policy::PARAMS,
        build: super::blocksize_policy::build,
    },
    Entry {
        name: "cow",
        about: "writes go to a temporary overlay; the backend is opened read-only",
        params: super::cow::PARAMS,
        build: super::cow::build,
    },
    Entry {
        name: "stats",
        about: "statistics of requests (counts, bytes, rates, latencies) at exit and on SIGUSR1",
        params: super::stats::PARAMS,
        build: super::stats::build,
    },
    Entry {
        name: "log",
        about: "a line per connection event, request and reply, to a file or a script",
        params: super::log::PARAMS,
        build: super::log::build,
    },
];

/// The filter named `name`.
pub fn lookup(name: &str) -> Option<&'static Entry> {
    FILTERS.iter().find(|e| e.name == name)
}

/// One `--filter=NAME` with the parameters that are its.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub name: &'static str,
    pub params: Params,
}

/// Builds the filters of `specs`, first nearest the client.
pub fn build(specs: &[Spec]) -> Result<Vec<Box<dyn Filter>>, String> {
    specs
        .iter()
        .map(|s| {
            let entry = lookup(s.name).ok_or_else(|| format!("unknown filter '{}'", s.name))?;
            (entry.build)(&s.params).map_err(|e| format!("{} filter: {e}", s.name))
        })
        .collect()
}

/// `--help`'s list: each filter, then its parameters.
pub fn describe() -> String {
    let mut s = String::new();
    for e in FILTERS {
        s += &format!("  {:<18} {}\n", e.name, e.about);
        for p in e.params {
            let kv = format!("{}={}", p.key, p.value);
            s += &format!("      {kv:<28} {}\n", p.about);
        }
    }
    s
}
