//! `logscript=`: a shell script run for each log entry, its variables set
//! ahead of it (`act`, `type`, `connection`, `id`, and the entry's fields),
//! as nbdkit's log filter runs it. nbdkit runs it with system(3), waiting for
//! it in the request's thread; here the loop cannot wait, so:
//!
//! - the scripts run one at a time, in the order of the entries (so that a
//!   script that appends to a file sees ENTER before LEAVE, as with nbdkit);
//! - the loop starts the next when the last has exited, looking for its exit
//!   without waiting (less and less often while it runs: 1 ms to 16 ms);
//! - entries wait in a queue of `QUEUE`; beyond that they are dropped, and
//!   counted (the count is logged at SIGUSR1 and at exit);
//! - at exit, what is queued runs to the end, for at most `FINISH`.
//!
//! The script's stdin is /dev/null and its stdout goes to our stderr (with
//! `-s` our stdout is the client's socket).

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Entries waiting to run, at most.
pub const QUEUE: usize = 1024;
const LOOK_FIRST: Duration = Duration::from_millis(1);
const LOOK_MAX: Duration = Duration::from_millis(16);
/// How long the scripts still queued may run as the server exits.
pub const FINISH: Duration = Duration::from_secs(10);

pub struct Scripts {
    script: String,
    queue: VecDeque<Vec<u8>>,
    /// When the queue last went from empty to not.
    since: Instant,
    running: Option<Running>,
    /// Entries dropped (the queue was full, or a script could not start).
    lost: u64,
    /// Scripts that exited with a failure (said once).
    failed: u64,
}

struct Running {
    child: Child,
    look: Instant,
    pause: Duration,
}

impl Scripts {
    pub fn new(script: &str) -> Scripts {
        Scripts {
            script: script.to_string(),
            queue: VecDeque::new(),
            since: Instant::now(),
            running: None,
            lost: 0,
            failed: 0,
        }
    }

    pub fn script(&self) -> &str {
        &self.script
    }

    /// Queues a script's text (variables and script), or drops it if the
    /// queue is full.
    pub fn push(&mut self, text: Vec<u8>, now: Instant) {
        if self.queue.len() >= QUEUE {
            self.lost += 1;
            return;
        }
        if self.queue.is_empty() {
            self.since = now;
        }
        self.queue.push_back(text);
    }

    pub fn wake_at(&self) -> Option<Instant> {
        match &self.running {
            Some(r) => Some(r.look),
            None => (!self.queue.is_empty()).then_some(self.since),
        }
    }

    /// Reaps the script that ran, if it has exited, and starts the next.
    pub fn pump(&mut self, now: Instant) {
        loop {
            if let Some(r) = &mut self.running {
                match r.child.try_wait() {
                    Ok(Some(status)) => self.exited(status.success(), &status.to_string()),
                    Ok(None) => {
                        if now >= r.look {
                            r.look = now + r.pause;
                            r.pause = (r.pause * 2).min(LOOK_MAX);
                        }
                        return;
                    }
                    Err(e) => self.exited(false, &e.to_string()),
                }
                self.running = None;
            }
            let Some(text) = self.queue.pop_front() else {
                return;
            };
            self.start(&text, now);
        }
    }

    fn start(&mut self, text: &[u8], now: Instant) {
        let stdout = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map_or_else(|_| Stdio::null(), Stdio::from);
        let spawned = Command::new("/bin/sh")
            .arg("-c")
            .arg(std::ffi::OsStr::from_bytes(text))
            .stdin(Stdio::null())
            .stdout(stdout)
            .spawn();
        match spawned {
            Ok(child) => {
                self.running = Some(Running {
                    child,
                    look: now + LOOK_FIRST,
                    pause: LOOK_FIRST,
                })
            }
            Err(e) => {
                if self.lost == 0 {
                    log::warn!("logscript: cannot run /bin/sh: {e}");
                }
                self.lost += 1;
            }
        }
    }

    fn exited(&mut self, ok: bool, how: &str) {
        if !ok {
            if self.failed == 0 {
                log::warn!("logscript: {how} (later failures are counted, not logged)");
            }
            self.failed += 1;
        }
    }

    /// What to say of lost entries and failed scripts, if anything.
    pub fn troubles(&self) -> Option<String> {
        (self.lost > 0 || self.failed > 0).then(|| {
            format!(
                "logscript: {} entries dropped (at most {QUEUE} wait), {} scripts failed",
                self.lost, self.failed
            )
        })
    }

    /// At exit: runs what is queued, one after another, for at most `within`
    /// (a script still running then is left to finish alone).
    pub fn finish(&mut self, within: Duration) {
        let end = Instant::now() + within;
        loop {
            let now = Instant::now();
            self.pump(now);
            if self.running.is_none() && self.queue.is_empty() {
                return;
            }
            if now >= end {
                self.lost += self.queue.len() as u64;
                self.queue.clear();
                return;
            }
            std::thread::sleep(LOOK_FIRST);
        }
    }
}

impl Drop for Scripts {
    fn drop(&mut self) {
        self.finish(FINISH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_run_in_order_and_a_full_queue_drops() {
        let dir = std::env::temp_dir().join(format!("nbdlite-script-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let out = dir.join("out");
        let mut s = Scripts::new(&format!("echo $act $n >> {}", out.display()));
        let now = Instant::now();
        for n in 0..5 {
            let text = format!("act=Read\nn={n}\n{}", s.script());
            s.push(text.into_bytes(), now);
        }
        s.pump(now);
        assert!(s.running.is_some());
        s.finish(Duration::from_secs(20));
        let got = std::fs::read_to_string(&out).expect("read");
        assert_eq!(got, "Read 0\nRead 1\nRead 2\nRead 3\nRead 4\n");
        for _ in 0..QUEUE + 3 {
            s.push(b"true".to_vec(), now);
        }
        assert_eq!(s.lost, 3);
        s.queue.clear();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
