//! When the server ends, and what its connections may do meanwhile: the one
//! owner of the shutdown and exit policy.
//!
//! The server asks it whether to exit and how long it may sleep; a connection
//! asks it whether it may be let go; the protocol code asks whether new options
//! and requests must be refused (ERR_SHUTDOWN, ESHUTDOWN). Nothing else keeps
//! shutdown state.

use std::time::{Duration, Instant};

use crate::notify::Notifier;

/// How long connections get to finish after a shutdown signal.
const GRACE: Duration = Duration::from_secs(5);
/// During shutdown, how often quiet connections are looked at again.
const TICK: Duration = Duration::from_millis(50);
/// At shutdown, a client quiet this long is idle and let go at once; a busier
/// one may have a request on the wire, so it gets ESHUTDOWN and time to leave.
const QUIET: Duration = Duration::from_millis(500);

/// How the server is to end.
#[derive(Debug)]
pub struct Lifecycle {
    /// Set by a shutdown: the moment remaining connections are cut.
    deadline: Option<Instant>,
    exit_code: i32,
    /// A second signal: exit without waiting for anyone.
    exit_now: bool,
    /// `--idle-timeout`: exit once no client has been connected this long.
    idle_timeout: Option<Duration>,
    /// When the last connection closed (or the server started).
    idle_since: Instant,
    /// Exit when the last connection closes and no listener is left (`-s`,
    /// `Accept=yes`).
    single: bool,
    /// The `--run` command, whose status becomes ours.
    run: Run,
    notifier: Notifier,
}

/// Where the `--run` command is. While it runs the server does not exit, even
/// after a signal (as nbdkit, which waits for its command): exiting would leave
/// the command running on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    None,
    Running,
    /// A second signal asked for it to be ended; we wait for it to go.
    Ending,
}

/// What a connection tells about itself when it asks to be let go.
#[derive(Debug, Clone, Copy)]
pub struct Activity {
    /// Still negotiating: it gets ERR_SHUTDOWN for its options, and the grace
    /// period to leave by itself.
    pub negotiating: bool,
    /// Nothing half-received, and no refused request whose client owes us a
    /// soft disconnect.
    pub quiet: bool,
    /// When it last handled a message.
    pub last_active: Instant,
}

/// The server's answer to "should the loop end now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    Exit(i32),
    /// Idle for the timeout: exit unless a client turns up when the listeners
    /// are looked at once more.
    IdleExpired,
    /// The server is done but the `--run` command is not: close any connection
    /// left and wait for the command; `end_it` (a second signal) asks to
    /// terminate it first.
    AwaitRun {
        end_it: bool,
    },
}

impl Lifecycle {
    pub fn new(idle_timeout: Option<Duration>, single: bool, notifier: Notifier) -> Lifecycle {
        Lifecycle {
            deadline: None,
            exit_code: 0,
            exit_now: false,
            idle_timeout,
            idle_since: Instant::now(),
            single,
            run: Run::None,
            notifier,
        }
    }

    /// The `--run` command has started.
    pub fn run_started(&mut self) {
        self.run = Run::Running;
    }

    /// The `--run` command exited with `code`: the server ends, with that status
    /// (also when a signal had begun the shutdown: the command's status wins,
    /// as with nbdkit). False if a shutdown had begun already.
    pub fn run_exited(&mut self, code: i32) -> bool {
        self.run = Run::None;
        let begun = self.shut_down(code);
        self.exit_code = code;
        begun
    }

    /// The `--run` command is being ended (`Verdict::AwaitRun { end_it }`).
    pub fn run_ending(&mut self) {
        self.run = Run::Ending;
    }

    /// New options and requests are refused: the server is on its way out.
    pub fn shutting_down(&self) -> bool {
        self.deadline.is_some()
    }

    /// Begins a shutdown ending with `code`; false if one had begun already.
    pub fn shut_down(&mut self, code: i32) -> bool {
        if self.deadline.is_some() {
            return false;
        }
        self.exit_code = code;
        self.deadline = Some(Instant::now() + GRACE);
        self.notifier.stopping();
        true
    }

    /// A signal asked us to stop: the first one shuts down gracefully, a second
    /// one ends the server at once. False for the second.
    pub fn on_stop_signal(&mut self, sig: libc::c_int) -> bool {
        if self.shutting_down() {
            log::info!("second signal: exiting now");
            self.exit_now = true;
            return false;
        }
        log::info!("signal {sig}: shutting down");
        self.shut_down(0)
    }

    /// The server could not do what it was started for (`-s` never served its
    /// client): it ends with status 1, whenever it ends.
    pub fn failed(&mut self) {
        self.exit_code = 1;
    }

    /// The last connection has gone: the idle clock starts.
    pub fn all_closed(&mut self, now: Instant) {
        self.idle_since = now;
    }

    /// Whether a connection may be closed now, at shutdown, though it did not
    /// ask to be: one that is idle, out of the handshake and owes us nothing.
    pub fn may_let_go(&self, a: &Activity, now: Instant) -> bool {
        self.shutting_down()
            && !a.negotiating
            && a.quiet
            && now.duration_since(a.last_active) >= QUIET
    }

    /// Whether the loop should end, given `open` connections.
    pub fn verdict(&self, open: usize, has_listeners: bool, now: Instant) -> Verdict {
        match self.serving_verdict(open, has_listeners, now) {
            Verdict::Exit(_) if self.run != Run::None => Verdict::AwaitRun {
                end_it: self.exit_now && self.run == Run::Running,
            },
            v => v,
        }
    }

    /// The verdict as if there were no `--run` command.
    fn serving_verdict(&self, open: usize, has_listeners: bool, now: Instant) -> Verdict {
        if self.exit_now {
            return Verdict::Exit(self.exit_code);
        }
        if let Some(deadline) = self.deadline {
            if open == 0 {
                return Verdict::Exit(self.exit_code);
            }
            if now >= deadline {
                log::warn!("{open} connection(s) still open after the grace period: closing");
                return Verdict::Exit(self.exit_code);
            }
            return Verdict::Continue;
        }
        if open == 0 && self.single && !has_listeners {
            log::debug!("the last connection closed");
            return Verdict::Exit(self.exit_code);
        }
        match self.idle_timeout {
            Some(t) if open == 0 && now.duration_since(self.idle_since) >= t => {
                Verdict::IdleExpired
            }
            _ => Verdict::Continue,
        }
    }

    /// Idle for the timeout and nobody came: say so and go. With a `--run`
    /// command still running, a shutdown begins instead (None), and the server
    /// waits for the command.
    pub fn idle_exit(&mut self) -> Option<i32> {
        if let Some(t) = self.idle_timeout {
            log::info!("idle for {t:?}: exiting");
        }
        if self.run != Run::None {
            self.shut_down(0);
            return None;
        }
        self.notifier.stopping();
        Some(0)
    }

    /// The moment the loop must wake for the lifecycle's sake: the end of the
    /// grace period, the next shutdown tick, or the end of idleness.
    pub fn wake_at(&self, open: usize, now: Instant) -> Option<Instant> {
        match (self.deadline, self.idle_timeout) {
            // Only the command is left: its exit (SIGCHLD) wakes us.
            (Some(_), _) if open == 0 => None,
            (Some(deadline), _) => Some(deadline.min(now + TICK)),
            (None, Some(t)) if open == 0 => Some(self.idle_since + t),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifecycle(idle: Option<Duration>, single: bool) -> Lifecycle {
        Lifecycle::new(idle, single, Notifier::new(None))
    }

    #[test]
    fn shutdown_waits_for_connections_then_exits_with_its_code() {
        let mut l = lifecycle(None, false);
        let now = Instant::now();
        assert_eq!(l.verdict(1, true, now), Verdict::Continue);
        assert!(l.shut_down(3));
        assert!(!l.shut_down(4), "one shutdown only");
        assert!(l.shutting_down());
        assert_eq!(l.verdict(2, false, now), Verdict::Continue);
        assert_eq!(l.verdict(0, false, now), Verdict::Exit(3));
        assert_eq!(l.verdict(2, false, now + GRACE * 2), Verdict::Exit(3));
        assert!(l.wake_at(2, now).is_some_and(|t| t <= now + TICK));
    }

    #[test]
    fn second_signal_exits_now() {
        let mut l = lifecycle(None, false);
        assert!(l.on_stop_signal(libc::SIGTERM));
        assert!(!l.on_stop_signal(libc::SIGINT));
        assert_eq!(l.verdict(5, false, Instant::now()), Verdict::Exit(0));
    }

    #[test]
    fn idle_connections_are_let_go_only_when_quiet_and_served() {
        let mut l = lifecycle(None, false);
        let now = Instant::now();
        let a = Activity {
            negotiating: false,
            quiet: true,
            last_active: now,
        };
        assert!(!l.may_let_go(&a, now + QUIET), "not shutting down");
        l.shut_down(0);
        assert!(!l.may_let_go(&a, now), "active just now");
        assert!(l.may_let_go(&a, now + QUIET));
        let busy = Activity { quiet: false, ..a };
        assert!(!l.may_let_go(&busy, now + QUIET));
        let negotiating = Activity {
            negotiating: true,
            ..a
        };
        assert!(!l.may_let_go(&negotiating, now + QUIET));
    }

    #[test]
    fn a_run_command_is_waited_for_and_its_status_kept() {
        let mut l = lifecycle(None, false);
        let now = Instant::now();
        l.run_started();
        assert!(l.on_stop_signal(libc::SIGTERM));
        let wait = Verdict::AwaitRun { end_it: false };
        assert_eq!(l.verdict(0, false, now), wait, "the command still runs");
        assert_eq!(l.verdict(2, false, now + 2 * GRACE), wait, "grace over");
        assert!(!l.on_stop_signal(libc::SIGTERM));
        let end = Verdict::AwaitRun { end_it: true };
        assert_eq!(l.verdict(0, false, now), end, "a second signal ends it");
        l.run_ending();
        assert_eq!(l.verdict(0, false, now), wait, "asked once");
        assert!(!l.run_exited(143));
        assert_eq!(l.verdict(0, false, now), Verdict::Exit(143));
        // Without a signal: the command's exit ends the server with its status.
        let mut l = lifecycle(None, false);
        l.run_started();
        assert!(l.run_exited(3));
        assert_eq!(l.verdict(0, true, now), Verdict::Exit(3));
    }

    #[test]
    fn single_and_idle_exits() {
        let now = Instant::now();
        let mut single = lifecycle(None, true);
        assert_eq!(single.verdict(0, true, now), Verdict::Continue);
        assert_eq!(single.verdict(0, false, now), Verdict::Exit(0));
        single.failed();
        assert_eq!(single.verdict(0, false, now), Verdict::Exit(1));
        let t = Duration::from_secs(2);
        let mut idle = lifecycle(Some(t), false);
        idle.all_closed(now);
        assert_eq!(idle.verdict(0, true, now), Verdict::Continue);
        assert_eq!(idle.wake_at(0, now), Some(now + t));
        assert_eq!(idle.wake_at(1, now), None);
        assert_eq!(idle.verdict(1, true, now + t), Verdict::Continue);
        assert_eq!(idle.verdict(0, true, now + t), Verdict::IdleExpired);
    }
}
