//! The system log, through its socket (`/dev/log`) rather than syslog(3):
//! glibc's syslog writes to a blocking socket, and a log daemon that stops
//! reading (stalled, or busy with a flood) would stop the one thread with it.
//! Ours never waits: a message the log does not take at once is dropped, and
//! counted. The format is syslog(3)'s: `<PRI>TIMESTAMP nbdlite[PID]: message`,
//! facility daemon.

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// The socket the system's log daemon (journald, rsyslog) reads.
pub const DEV_LOG: &str = "/dev/log";
/// Longer messages are cut (the log's own limits are of this order).
const MAX_MESSAGE: usize = 8 * 1024;
/// LOG_DAEMON, as a PRI value.
const FACILITY: u8 = 3 << 3;

pub struct Syslog {
    path: PathBuf,
    sock: Option<UnixDatagram>,
}

impl Syslog {
    /// Connects to the log at `path` now (as LOG_NDELAY: before privileges
    /// are dropped, and without a file opened on the serving path later).
    pub fn open(path: &Path) -> Syslog {
        Syslog {
            path: path.to_path_buf(),
            sock: connect(path),
        }
    }

    /// Sends one message; false if the log did not take it at once.
    pub fn send(&mut self, level: log::Level, msg: &str) -> bool {
        let severity = match level {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            log::Level::Info => 6,
            log::Level::Debug | log::Level::Trace => 7,
        };
        let mut line = format!(
            "<{}>{} nbdlite[{}]: {msg}",
            FACILITY | severity,
            crate::sys::syslog_time(),
            std::process::id()
        );
        if line.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        // Once more after reconnecting: the daemon may have restarted.
        for _ in 0..2 {
            let Some(sock) = &self.sock else {
                self.sock = connect(&self.path);
                continue;
            };
            match sock.send(line.as_bytes()) {
                Ok(_) => return true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return false,
                Err(_) => self.sock = connect(&self.path),
            }
        }
        false
    }
}

fn connect(path: &Path) -> Option<UnixDatagram> {
    let sock = UnixDatagram::unbound().ok()?;
    sock.connect(path).ok()?;
    sock.set_nonblocking(true).ok()?;
    Some(sock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_log_that_does_not_read_costs_messages_not_time() {
        let dir = std::env::temp_dir().join(format!("nbdlite-syslog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let daemon = UnixDatagram::bind(&path).unwrap();
        let mut log = Syslog::open(&path);
        assert!(log.send(log::Level::Warn, "conn 3: hello"));
        let mut buf = [0u8; 256];
        let n = daemon.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        let want = format!(" nbdlite[{}]: conn 3: hello", std::process::id());
        assert!(got.starts_with("<28>") && got.ends_with(&want), "{got}");
        // The daemon stops reading: sending goes on, without waiting.
        let start = Instant::now();
        let taken = (0..10_000)
            .filter(|_| log.send(log::Level::Warn, &"x".repeat(1000)))
            .count();
        assert!(taken < 10_000, "a queue that never fills?");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        // Gone (a restart): messages are lost, not the server.
        drop(daemon);
        assert!(!log.send(log::Level::Warn, "nobody there"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
