//! Where log messages go (`--log=stderr|syslog|null`), and which connection
//! they concern.
//!
//! The protocol code logs without knowing which client it is serving; the
//! connection sets a scope around each of its turns, and every message logged
//! inside names that connection. One thread serves everything, so a
//! thread-local is exactly "the connection being served now".
//!
//! Logging cannot be driven by clients: warnings and errors logged in a
//! connection's scope are what a client can cause, and are rate-limited per
//! connection and in total (`limit`). And the log never stalls the loop: a
//! line stderr (a full pipe, a stopped terminal) or the system log (`syslog`)
//! does not take at once is dropped, and the count said later.

mod limit;
mod syslog;

use std::cell::Cell;
use std::io::IoSlice;
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Instant;

pub use limit::Quota;

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
    /// The connection being served, and its quota of warnings.
    static CONN: Cell<Option<(u64, Quota)>> = const { Cell::new(None) };
    /// The quota of all connections' warnings together.
    static TOTAL: Cell<Quota> = Cell::new(Quota::default());
}

/// The system log's socket, once the sink is syslog.
static SYSLOG: Mutex<Option<syslog::Syslog>> = Mutex::new(None);
/// Lines the sink did not take, not yet said.
static LOST: AtomicU64 = AtomicU64::new(0);
/// Longest line written to stderr: one write(2) of at most PIPE_BUF bytes is
/// atomic, and cannot block on a pipe with room.
const MAX_LINE: usize = 4096;

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
        let log = syslog::Syslog::open(std::path::Path::new(syslog::DEV_LOG));
        *SYSLOG.lock().unwrap_or_else(|e| e.into_inner()) = Some(log);
    }
    SINK.store(sink as u8, Ordering::Relaxed);
}

/// A line the user asked for (SIGUSR1's summary): logged as information,
/// whatever the verbosity.
pub fn notice(text: &str) {
    let sink = SINK.load(Ordering::Relaxed);
    if !emit(sink, log::Level::Info, text) {
        LOST.fetch_add(1, Ordering::Relaxed);
    }
}

/// Messages logged while the guard lives name connection `id`, and its
/// warnings count against `quota` (`ConnScope::end` hands it back).
pub fn conn_scope(id: u64, quota: Quota) -> ConnScope {
    ConnScope {
        outer: CONN.with(|c| c.replace(Some((id, quota)))),
    }
}

pub struct ConnScope {
    outer: Option<(u64, Quota)>,
}

impl ConnScope {
    /// Leaves the scope; returns the connection's quota, to keep.
    pub fn end(self) -> Quota {
        CONN.with(Cell::get).map(|(_, q)| q).unwrap_or_default()
    }
}

impl Drop for ConnScope {
    fn drop(&mut self) {
        CONN.with(|c| c.set(self.outer));
    }
}

/// "conn 3: " inside a connection's scope, else "".
fn context() -> String {
    CONN.with(Cell::get)
        .map(|(id, _)| format!("conn {id}: "))
        .unwrap_or_default()
}

/// Whether a warning in the current connection's scope may be logged now;
/// if so, what to add to it (and to log before it) about lines held back.
fn admit_client_warning() -> Option<(String, Option<String>)> {
    let (id, mut quota) = CONN.with(Cell::get)?;
    let now = Instant::now();
    let mine = quota.pass(now, limit::PER_CONN);
    CONN.with(|c| c.set(Some((id, quota))));
    let mine = mine?;
    let all = TOTAL.with(|t| {
        let mut q = t.get();
        let r = q.pass(now, limit::TOTAL);
        t.set(q);
        r
    })?;
    let note = match mine {
        0 => String::new(),
        n => format!(" ({n} more from this connection not logged)"),
    };
    let before = (all > 0).then(|| {
        format!(
            "{all} warnings about clients were not logged (at most {} every {}s)",
            limit::TOTAL,
            limit::WINDOW.as_secs()
        )
    });
    Some((note, before))
}

/// Writes one line to stderr if it can without waiting; false if not.
fn to_stderr(word: &str, text: &str) -> bool {
    let mut line = format!("nbdlite: {word}: {text}");
    if line.len() >= MAX_LINE {
        let mut cut = MAX_LINE - 4;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("...");
    }
    line.push('\n');
    let stderr = std::io::stderr();
    let fd = stderr.as_fd();
    // One write per line, so lines from a forked child don't interleave; a
    // failed write (a full disk, a closed pipe) costs the line, never the server.
    sys::poll_writable(fd) && sys::writev(fd, &[IoSlice::new(line.as_bytes())]).is_ok()
}

/// Sends one line to the current sink; false if it did not take it.
fn emit(sink: u8, level: log::Level, text: &str) -> bool {
    match sink {
        s if s == Sink::Stderr as u8 => {
            let word = match level {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug | log::Level::Trace => "debug",
            };
            to_stderr(word, text)
        }
        s if s == Sink::Syslog as u8 => {
            let mut log = SYSLOG.lock().unwrap_or_else(|e| e.into_inner());
            log.as_mut().is_some_and(|l| l.send(level, text))
        }
        _ => true,
    }
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
        let mut note = String::new();
        if level <= log::Level::Warn && CONN.with(Cell::get).is_some() {
            let Some((n, before)) = admit_client_warning() else {
                return;
            };
            note = n;
            if let Some(b) = before {
                self.send(sink, log::Level::Warn, &b);
            }
        }
        let lost = LOST.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let msg = format!("{lost} log lines lost: the log was not taking them");
            if !emit(sink, log::Level::Warn, &msg) {
                LOST.fetch_add(lost, Ordering::Relaxed);
            }
        }
        let text = format!("{}{}{note}", context(), record.args());
        self.send(sink, level, &text);
    }

    fn flush(&self) {}
}

impl Logger {
    fn send(&self, sink: u8, level: log::Level, text: &str) {
        if !emit(sink, level, text) {
            LOST.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest() {
        assert_eq!(context(), "");
        {
            let _a = conn_scope(3, Quota::default());
            assert_eq!(context(), "conn 3: ");
            {
                let _b = conn_scope(4, Quota::default());
                assert_eq!(context(), "conn 4: ");
            }
            assert_eq!(context(), "conn 3: ");
        }
        assert_eq!(context(), "");
    }

    #[test]
    fn a_connection_s_warnings_are_limited_and_its_quota_kept() {
        let scope = conn_scope(9, Quota::default());
        let passed = (0..20).filter(|_| admit_client_warning().is_some()).count();
        assert_eq!(passed, limit::PER_CONN as usize);
        let quota = scope.end();
        // Its next turn goes on with the same quota; another connection has its own.
        let scope = conn_scope(9, quota);
        assert!(admit_client_warning().is_none());
        drop(scope);
        let _other = conn_scope(10, Quota::default());
        assert!(admit_client_warning().is_some());
    }

    #[test]
    fn all_connections_together_are_limited() {
        let passed = (0..1000)
            .filter(|&id| {
                let _s = conn_scope(100 + id, Quota::default());
                admit_client_warning().is_some()
            })
            .count();
        assert!(passed <= limit::TOTAL as usize, "{passed}");
    }

    #[test]
    fn sinks() {
        assert_eq!(Sink::parse("syslog"), Some(Sink::Syslog));
        assert_eq!(Sink::parse("null"), Some(Sink::Null));
        assert_eq!(Sink::parse("stderr"), Some(Sink::Stderr));
        assert_eq!(Sink::parse("journal"), None);
    }
}
