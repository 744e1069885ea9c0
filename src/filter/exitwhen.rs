//! `--filter=exitwhen`: the server exits gracefully once an event has
//! happened (a file created or deleted, a pipe closed, a process gone, a
//! script's exit status 88) and the last client has gone, as nbdkit's.
//!
//! The events are looked at as clients connect (once one has happened, new
//! clients are turned away) and as they go, and every `exit-when-poll=`
//! seconds while none is connected (at once on start-up: an event that has
//! already happened ends the server at once). Nothing here waits: files and
//! pipes are looked at without blocking, and a script runs as a child whose
//! exit is looked for on a short timer; a client that connects while it runs
//! is judged by what is known so far.

use std::fs;
use std::os::fd::{AsFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::params::Param;
use super::params::{Params, duration};
use super::{Conn, Filter};
use crate::sys::{self, PipeEnd};

pub const PARAMS: &[Param] = &[
    Param::new("exit-when-file-created", "FILE", "exit once FILE exists"),
    Param::new("exit-when-file-deleted", "FILE", "exit once FILE is gone"),
    Param::new(
        "exit-when-pipe-closed",
        "FD",
        "exit once the pipe whose read end is FD is closed",
    ),
    Param::new("exit-when-fd-closed", "FD", "as exit-when-pipe-closed"),
    Param::new(
        "exit-when-process-exits",
        "PID",
        "exit once process PID exits",
    ),
    Param::new("exit-when-pid-exits", "PID", "as exit-when-process-exits"),
    Param::new(
        "exit-when-script",
        "SCRIPT",
        "exit once SCRIPT (run by sh) exits with status 88",
    ),
    Param::new(
        "exit-when-poll",
        "SECS",
        "how often to look while no client is connected (60)",
    ),
];

/// How often a running script is looked at to see whether it has finished.
const SCRIPT_POLL: Duration = Duration::from_millis(50);
/// The exit status by which a script says its event has happened.
const SCRIPT_EVENT: i32 = 88;

#[derive(Debug)]
enum Event {
    Created(PathBuf),
    Deleted(PathBuf),
    PipeClosed(RawFd),
    /// `/proc/PID/stat`, opened at start: reading it fails with ESRCH once
    /// that very process has gone (a new one with its pid has another file).
    ProcessExits(fs::File),
    Script {
        cmd: String,
        run: Option<Child>,
    },
}

#[derive(Debug)]
struct ExitWhen {
    events: Vec<Event>,
    poll: Duration,
    /// Clients that opened the export and have not gone.
    open: usize,
    /// An event has happened.
    happened: bool,
    next_poll: Instant,
    /// While a script runs: when to look whether it has finished.
    script_check: Option<Instant>,
}

pub fn build(params: &Params) -> Result<Box<dyn Filter>, String> {
    let mut f = ExitWhen {
        events: Vec::new(),
        poll: Duration::from_secs(60),
        open: 0,
        happened: false,
        next_poll: Instant::now(),
        script_check: None,
    };
    for (key, value) in &params.0 {
        let event = match key.as_str() {
            "exit-when-poll" => {
                let d = duration(value).map_err(|e| format!("{key}: {e}"))?;
                f.poll = d.max(Duration::from_millis(10));
                continue;
            }
            "exit-when-file-created" => Event::Created(absolute(value)?),
            "exit-when-file-deleted" => Event::Deleted(absolute(value)?),
            "exit-when-pipe-closed" | "exit-when-fd-closed" => pipe(key, value)?,
            "exit-when-process-exits" | "exit-when-pid-exits" => process(key, value)?,
            "exit-when-script" if value.trim().is_empty() => {
                return Err(format!("{key}: the script is empty"));
            }
            "exit-when-script" => Event::Script {
                cmd: value.clone(),
                run: None,
            },
            _ => return Err(format!("unknown parameter '{key}'")),
        };
        f.events.push(event);
    }
    Ok(Box::new(f))
}

/// A file name made absolute now: the server changes directory to / when it
/// goes into the background.
fn absolute(name: &str) -> Result<PathBuf, String> {
    std::path::absolute(name).map_err(|e| format!("{name}: {}", crate::error::plain(&e)))
}

fn pipe(key: &str, value: &str) -> Result<Event, String> {
    let fd: RawFd = value
        .parse()
        .ok()
        .filter(|&fd| fd >= 0)
        .ok_or_else(|| format!("{key}: could not parse '{value}' as a file descriptor"))?;
    // Not passed on to children (--run, scripts): only we watch it.
    sys::set_cloexec(fd).map_err(|_| format!("{key}: {fd} is not an open file descriptor"))?;
    Ok(Event::PipeClosed(fd))
}

fn process(key: &str, value: &str) -> Result<Event, String> {
    let pid: u32 = value
        .parse()
        .map_err(|_| format!("{key}: could not parse '{value}' as a process id"))?;
    let stat = format!("/proc/{pid}/stat");
    let file =
        fs::File::open(&stat).map_err(|e| format!("{key}: {stat}: {}", crate::error::plain(&e)))?;
    Ok(Event::ProcessExits(file))
}

impl Event {
    /// Whether it has happened, as far as can be told without waiting. A
    /// script's last run is looked at, and (if `start`) a new one started
    /// when none runs.
    fn happened(&mut self, start: bool) -> bool {
        match self {
            Event::Created(path) => path.exists(),
            Event::Deleted(path) => match fs::metadata(&*path) {
                Ok(_) => false,
                Err(e) if gone(&e) => true,
                Err(e) => {
                    log::error!("exit-when-file-deleted: {}: {e}", path.display());
                    false
                }
            },
            Event::PipeClosed(fd) => match sys::pipe_end(*fd) {
                Ok(PipeEnd::Open) => false,
                Ok(PipeEnd::HungUp) => true,
                Ok(PipeEnd::Invalid) => {
                    log::error!("exit-when-pipe-closed: {fd} is not an open file descriptor");
                    true
                }
                Err(e) => {
                    log::error!("exit-when-pipe-closed: poll: {e}");
                    false
                }
            },
            Event::ProcessExits(stat) => match stat.read_at(&mut [0u8], 0) {
                Ok(_) => false,
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => true,
                Err(e) => {
                    log::error!("exit-when-process-exits: {e}");
                    false
                }
            },
            Event::Script { cmd, run } => script(cmd, run, start),
        }
    }

    fn script_running(&self) -> bool {
        matches!(self, Event::Script { run: Some(_), .. })
    }
}

fn gone(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

/// A script's verdict: its last run's exit status, if it has finished (88:
/// the event has happened); then, if `start` and none runs, a new run.
fn script(cmd: &str, run: &mut Option<Child>, start: bool) -> bool {
    let mut happened = false;
    if let Some(child) = run {
        match child.try_wait() {
            Ok(None) => return false, // still running
            Ok(Some(status)) => {
                happened = status.code() == Some(SCRIPT_EVENT);
                if !happened && !status.success() {
                    log::error!("exit-when-script: {cmd}: {status}");
                }
            }
            Err(e) => log::error!("exit-when-script: {cmd}: wait: {e}"),
        }
        *run = None;
    }
    if start && !happened {
        *run = spawn(cmd)
            .inspect_err(|e| log::error!("exit-when-script: {cmd}: {e}"))
            .ok();
    }
    happened
}

/// `sh -c SCRIPT`, its input empty and its output to our stderr (stdout may
/// be a client's socket, with -s).
fn spawn(cmd: &str) -> std::io::Result<Child> {
    let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
    Command::new("/bin/sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .spawn()
}

impl ExitWhen {
    /// Looks at every event (starting scripts anew if `start`).
    fn look(&mut self, now: Instant, start: bool) {
        for e in &mut self.events {
            if !self.happened && e.happened(start) {
                log::info!("exitwhen: {}: the event has happened", e.about());
                self.happened = true;
            }
        }
        let running = self.events.iter().any(Event::script_running);
        self.script_check = running.then(|| now + SCRIPT_POLL);
    }
}

impl Event {
    fn about(&self) -> String {
        match self {
            Event::Created(p) => format!("{} created", p.display()),
            Event::Deleted(p) => format!("{} deleted", p.display()),
            Event::PipeClosed(fd) => format!("pipe {fd} closed"),
            Event::ProcessExits(_) => "the process exited".into(),
            Event::Script { cmd, .. } => format!("script '{cmd}' exited with {SCRIPT_EVENT}"),
        }
    }
}

impl Filter for ExitWhen {
    fn name(&self) -> &'static str {
        "exitwhen"
    }

    fn connect(&mut self, now: Instant) -> bool {
        self.look(now, true);
        if self.happened {
            log::warn!("exitwhen: the server is exiting: rejecting a new connection");
        }
        !self.happened
    }

    fn open(&mut self, _: Conn, _: Instant) -> Option<Instant> {
        self.open += 1;
        None
    }

    fn closed(&mut self, _: Conn, now: Instant) {
        self.look(now, true);
        self.open = self.open.saturating_sub(1);
    }

    fn wake_at(&self) -> Option<Instant> {
        let poll = (self.open == 0 && !self.happened).then_some(self.next_poll);
        [poll, self.script_check].into_iter().flatten().min()
    }

    fn wake(&mut self, now: Instant) {
        let due = self.open == 0 && now >= self.next_poll;
        // Between polls (or with clients connected), only a script's result
        // is collected.
        self.look(now, due);
        if due {
            self.next_poll = now + self.poll;
        }
    }

    fn wants_exit(&self) -> bool {
        self.happened && self.open == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exitwhen(kv: &[(&str, &str)]) -> Result<Box<dyn Filter>, String> {
        build(&Params(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ))
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("nbdlite-exitwhen-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_file_event_turns_clients_away_then_exits_when_the_last_goes() {
        let now = Instant::now();
        let flag = dir().join("created");
        let _ = fs::remove_file(&flag);
        let name = flag.to_str().unwrap();
        let mut f = exitwhen(&[("exit-when-file-created", name)]).unwrap();
        assert!(f.wake_at().is_some(), "it polls from the start");
        f.wake(now);
        assert!(!f.wants_exit());
        assert!(f.connect(now));
        f.open(Conn { id: 1 }, now);
        assert_eq!(f.wake_at(), None, "no polling while a client is connected");
        fs::write(&flag, b"").unwrap();
        assert!(!f.connect(now), "a new client is turned away");
        assert!(!f.wants_exit(), "the connected one is served on");
        f.closed(Conn { id: 1 }, now);
        assert!(f.wants_exit());
        fs::remove_file(&flag).unwrap();
    }

    #[test]
    fn a_script_runs_without_blocking_and_88_is_the_event() {
        let now = Instant::now();
        let mut f = exitwhen(&[("exit-when-script", "exit 88"), ("exit-when-poll", "1")]).unwrap();
        f.wake(now);
        assert!(!f.wants_exit(), "its result is not known yet");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f.wants_exit() {
            assert!(Instant::now() < deadline, "the script's exit was not seen");
            let at = f.wake_at().expect("a running script is looked at");
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            f.wake(Instant::now());
        }
        let mut quiet = exitwhen(&[("exit-when-script", "exit 0")]).unwrap();
        quiet.wake(now);
        std::thread::sleep(Duration::from_millis(200));
        quiet.wake(Instant::now());
        assert!(!quiet.wants_exit());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(exitwhen(&[("exit-when-pipe-closed", "x")]).is_err());
        assert!(exitwhen(&[("exit-when-pipe-closed", "987654")]).is_err());
        assert!(exitwhen(&[("exit-when-process-exits", "-3")]).is_err());
        assert!(exitwhen(&[("exit-when-process-exits", "4000000000")]).is_err());
        assert!(exitwhen(&[("exit-when-poll", "soon")]).is_err());
        assert!(exitwhen(&[("exit-when-script", " ")]).is_err());
        let me = std::process::id().to_string();
        let mut alive = exitwhen(&[("exit-when-process-exits", &me)]).unwrap();
        alive.wake(Instant::now());
        assert!(!alive.wants_exit());
    }
}
