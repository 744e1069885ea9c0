//! Where log messages go (`--log=stderr|syslog|null`), and which connection
//! they concern.
//!
//! The protocol code logs without knowing which client it is serving; the
//! connection sets a scope around each of its turns, and every message logged
//! inside names that connection. One thread serves everything, so a
//! thread-local is exactly "the connection being served now".

use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::sys;

/// Where messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Stderr = 0,
    Syslog = 1,
    Null = 2,
}

impl Sink {
    pub fn parse(s: &str) -> Option<Sink> {
        match s {
            "stderr" => Some(Sink::Stderr),
            "syslog" => Some(Sink::Syslog),
            "null" => Some(Sink::Null),
            _ => None,
        }
    }
}

/// The current sink: it changes once, when the server forks into the
/// background without an explicit `--log` (stderr becomes syslog, as nbdkit).
static SINK: AtomicU8 = AtomicU8::new(Sink::Stderr as u8);

thread_local! {
    static CONN: Cell<Option<u64>> = const { Cell::new(None) };
}

struct Logger;

static LOGGER: Logger = Logger;

/// Installs the logger: debug messages with `-v`, else warnings and errors.
pub fn init(sink: Sink, verbose: bool) {
    set_sink(sink);
    let level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    };
    // Only fails if a logger is already set, which nothing else does.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

pub fn set_sink(sink: Sink) {
    if sink == Sink::Syslog {
        sys::open_syslog();
    }
    SINK.store(sink as u8, Ordering::Relaxed);
}

/// Messages logged while the guard lives name connection `id`.
pub fn conn_scope(id: u64) -> ConnScope {
    ConnScope(CONN.with(|c| c.replace(Some(id))))
}

pub struct ConnScope(Option<u64>);

impl Drop for ConnScope {
    fn drop(&mut self) {
        CONN.with(|c| c.set(self.0));
    }
}

/// "conn 3: " inside a connection's scope, else "".
fn context() -> String {
    CONN.with(Cell::get)
        .map(|id| format!("conn {id}: "))
        .unwrap_or_default()
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = record.level();
        // Debug lines (-v) always go to stderr, never to the system log (as
        // nbdkit): one datagram per request would flood the journal.
        let sink = match SINK.load(Ordering::Relaxed) {
            _ if level >= log::Level::Debug => Sink::Stderr as u8,
            s => s,
        };
        match sink {
            s if s == Sink::Stderr as u8 => {
                let word = match level {
                    log::Level::Error => "error",
                    log::Level::Warn => "warning",
                    log::Level::Info => "info",
                    log::Level::Debug | log::Level::Trace => "debug",
                };
                // One write per line, so lines from a forked child don't
                // interleave; a failed write (a full disk, a closed pipe) costs
                // the line, never the server.
                let line = format!("nbdlite: {word}: {}{}\n", context(), record.args());
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
            s if s == Sink::Syslog as u8 => {
                sys::syslog(level, &format!("{}{}", context(), record.args()));
            }
            _ => {}
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest() {
        assert_eq!(context(), "");
        {
            let _a = conn_scope(3);
            assert_eq!(context(), "conn 3: ");
            {
                let _b = conn_scope(4);
                assert_eq!(context(), "conn 4: ");
            }
            assert_eq!(context(), "conn 3: ");
        }
        assert_eq!(context(), "");
    }

    #[test]
    fn sinks() {
        assert_eq!(Sink::parse("syslog"), Some(Sink::Syslog));
        assert_eq!(Sink::parse("null"), Some(Sink::Null));
        assert_eq!(Sink::parse("stderr"), Some(Sink::Stderr));
        assert_eq!(Sink::parse("journal"), None);
    }
}
