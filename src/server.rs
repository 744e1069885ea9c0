//! The one event loop: a mio Poll with every listener, the signal pipe, and a
//! slab of connections. Single-threaded: the backend needs no locks, and every
//! connection sees every acknowledged write.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Child;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::backend::{Backend, Extent};
use crate::buf::Pool;
use crate::conn::{Conn, Ctx, Step};
use crate::export::Export;
use crate::listen::{Listener, Peer};
use crate::notify::Notifier;
use crate::sys;

/// Tokens from the top of the range; connections use their slab keys from 0.
const SIGNAL: Token = Token(usize::MAX);
const LISTENER_TOP: usize = usize::MAX - 1;
const MAX_LISTENERS: usize = 4096;

/// How long connections get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pooled buffers are freed once the server has had no event for this long.
const POOL_LINGER: Duration = Duration::from_secs(1);
/// During shutdown, how often quiet connections are looked at again.
const SHUTDOWN_TICK: Duration = Duration::from_millis(50);
/// Clients accepted from one listener before the loop serves others.
const ACCEPT_BATCH: usize = 64;
/// How long to stop accepting after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Descriptors kept free beyond those open at start-up when the connection
/// limit is derived from RLIMIT_NOFILE: for accepting a client only to refuse
/// it, `--run`, notifications, and the odd file the libraries open.
const FD_HEADROOM: usize = 16;
/// At most one "connection limit reached" message per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// How long to busy-poll before sleeping, adapted to the traffic (as qemu's
/// AioContext polling is).
///
/// A client that sends its next request a few microseconds after our reply finds
/// us awake: putting a thread to sleep and waking it again (an IPI, a VM exit
/// under virtualisation) costs more than such a spin, in latency and often in CPU
/// too. The window follows how long the loop had to wait for its next event after
/// work (the wake-up latency included): waits of a few windows keep it, or grow it
/// back to the maximum; long waits (sparse traffic) halve it, down to no spinning
/// at all. An idle server never spins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spin {
    max: Duration,
    window: Duration,
}

impl Spin {
    /// Below this, a window is not worth spinning: none at all.
    const FLOOR: Duration = Duration::from_micros(2);

    fn new(max: Duration) -> Spin {
        Spin { max, window: max }
    }

    /// The loop waited `wait` for an event after work, spinning first or not.
    fn waited(&mut self, wait: Duration) {
        if wait <= self.window {
            return; // the spin caught it
        }
        if wait < 2 * self.max {
            self.window = (self.window * 2).max(Self::FLOOR).min(self.max);
        } else if wait > 4 * self.max {
            self.window /= 2;
            if self.window < Self::FLOOR {
                self.window = Duration::ZERO;
            }
        }
    }
}

/// What `Server::new` needs besides the backend.
pub struct Setup {
    pub export: Export,
    pub listeners: Vec<Listener>,
    /// Clients that are already connected: `-s`, or systemd `Accept=yes` sockets.
    /// Each is (read fd, separate write fd).
    pub connections: Vec<(OwnedFd, Option<OwnedFd>)>,
    pub signals: OwnedFd,
    /// `-s` on an inherited listening socket: serve the first client only.
    pub accept_once: bool,
    pub oldstyle: bool,
    pub idle_timeout: Option<Duration>,
    /// How long to busy-poll after work before sleeping (zero: never).
    pub busy_poll: Duration,
    pub notifier: Notifier,
    /// Clients that have not finished the handshake by then are dropped.
    pub handshake_timeout: Option<Duration>,
    /// Clients beyond this many are accepted and closed at once (None: what
    /// RLIMIT_NOFILE allows).
    pub max_connections: Option<usize>,
}

/// A connection's handshake deadline, queued in order: every connection gets the
/// same timeout, so deadlines come out sorted by accept time and one queue (no
/// timer per connection) serves them all. Entries of connections that finished
/// the handshake or left are dropped when they reach the front.
#[derive(Debug, Clone, Copy)]
struct HandshakeDeadline {
    at: Instant,
    key: usize,
    serial: u64,
}

/// Clients refused for the connection limit, logged at most once per interval.
#[derive(Debug, Default)]
struct Refusals {
    /// Refused since the last message.
    unlogged: u64,
    last_logged: Option<Instant>,
}

pub struct Server {
    poll: Poll,
    signals: OwnedFd,
    listeners: Vec<Option<Listener>>,
    conns: Slab<Conn>,
    backend: Box<dyn Backend>,
    export: Export,
    pool: Pool,
    extents: Vec<Extent>,
    /// Connections whose turn ended with work left: driven again without an event.
    ready: Vec<usize>,
    /// Listeners with clients still queued after a batch: accepted from again
    /// without an event (their edge has been consumed).
    listeners_ready: Vec<usize>,
    oldstyle: bool,
    idle_timeout: Option<Duration>,
    spin: Spin,
    /// When the last connection closed (or the server started).
    idle_since: Instant,
    /// Exit when the last connection closes and no listener is left (`-s`, `Accept=yes`).
    single: bool,
    /// Stop listening after the first client (then `single` applies).
    accept_once: bool,
    /// Set by a shutdown: the moment remaining connections are cut.
    deadline: Option<Instant>,
    accept_paused_until: Option<Instant>,
    /// accept() ran out of descriptors (logged once until one succeeds again).
    out_of_fds: bool,
    /// Read once per wake-up, for the connections' timekeeping.
    now: Instant,
    exit_code: i32,
    exit_now: bool,
    run_child: Option<Child>,
    notifier: Notifier,
    handshake_timeout: Option<Duration>,
    /// Oldest first; see `HandshakeDeadline`.
    handshakes: VecDeque<HandshakeDeadline>,
    /// The next connection's serial number.
    serial: u64,
    max_connections: usize,
    refusals: Refusals,
}

impl Server {
    pub fn new(setup: Setup, backend: Box<dyn Backend>) -> io::Result<Server> {
        let poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&setup.signals.as_raw_fd()),
            SIGNAL,
            Interest::READABLE,
        )?;
        let mut listeners = Vec::new();
        for (i, mut l) in setup.listeners.into_iter().enumerate().take(MAX_LISTENERS) {
            poll.registry()
                .register(l.source(), Token(LISTENER_TOP - i), Interest::READABLE)?;
            log::debug!("listening on {}", l.describe());
            listeners.push(Some(l));
        }
        let single = !setup.connections.is_empty() && listeners.is_empty();
        let max_connections = connection_limit(setup.max_connections, &poll);
        let mut server = Server {
            poll,
            signals: setup.signals,
            listeners,
            conns: Slab::new(),
            backend,
            export: setup.export,
            pool: Pool::default(),
            extents: Vec::new(),
            ready: Vec::new(),
            listeners_ready: Vec::new(),
            oldstyle: setup.oldstyle,
            idle_timeout: setup.idle_timeout,
            spin: Spin::new(setup.busy_poll),
            idle_since: Instant::now(),
            single: single || setup.accept_once,
            accept_once: setup.accept_once,
            deadline: None,
            accept_paused_until: None,
            out_of_fds: false,
            now: Instant::now(),
            exit_code: 0,
            exit_now: false,
            run_child: None,
            notifier: setup.notifier,
            handshake_timeout: setup.handshake_timeout,
            handshakes: VecDeque::new(),
            serial: 0,
            max_connections,
            refusals: Refusals::default(),
        };
        for (rfd, wfd) in setup.connections {
            server.add(rfd, wfd, &Peer::Inherited)?;
        }
        Ok(server)
    }

    /// The `--run` command: its exit ends the server, with its status.
    pub fn set_run_child(&mut self, child: Child) {
        self.run_child = Some(child);
    }

    /// Serves until a signal, the `--run` command, idleness or the last single
    /// connection ends it. Returns the exit code.
    pub fn run(&mut self) -> i32 {
        let mut events = Events::with_capacity(1024);
        let mut busy = false;
        loop {
            // First: the work of the previous turn (or of start-up, where a
            // single client may already be gone) may have ended the server.
            if let Some(code) = self.should_exit() {
                return code;
            }
            self.expire_handshakes();
            let timeout = self.timeout();
            let start = Instant::now();
            let spun = timeout != Some(Duration::ZERO) && busy && self.spin(&mut events);
            if !spun && let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("poll: {e}");
                return 1;
            }
            if busy && !events.is_empty() && timeout != Some(Duration::ZERO) {
                self.spin.waited(start.elapsed());
            }
            busy = !events.is_empty();
            self.now = Instant::now();
            if !busy && !self.pool.is_empty() {
                // Quiet for a while: give the buffers of the last burst back.
                self.pool = Pool::default();
            }
            for ev in events.iter() {
                match ev.token() {
                    SIGNAL => self.on_signals(),
                    Token(t) if t > LISTENER_TOP - MAX_LISTENERS => {
                        self.accept_all(LISTENER_TOP - t)
                    }
                    Token(key) => {
                        if let Some(c) = self.conns.get_mut(key) {
                            c.readable |= ev.is_readable() || ev.is_read_closed() || ev.is_error();
                            c.read_closed |= ev.is_read_closed() || ev.is_error();
                            c.writable |= ev.is_writable() || ev.is_write_closed() || ev.is_error();
                            self.drive(key);
                        }
                    }
                }
            }
            for key in std::mem::take(&mut self.ready) {
                if self.conns.contains(key) {
                    self.drive(key);
                }
            }
            for i in std::mem::take(&mut self.listeners_ready) {
                self.accept_all(i);
            }
            if self.deadline.is_some() && events.is_empty() {
                // A shutdown tick: connections that have gone quiet may now close.
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    self.drive(key);
                }
            }
        }
    }

    /// Busy-polls for up to the spin window before the loop goes to sleep, and
    /// only right after it found work. See `Spin`.
    fn spin(&mut self, events: &mut Events) -> bool {
        let window = self.spin.window;
        if window.is_zero() {
            return false;
        }
        let start = Instant::now();
        loop {
            if self.poll.poll(events, Some(Duration::ZERO)).is_ok() && !events.is_empty() {
                return true;
            }
            if start.elapsed() >= window {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Runs one connection's turn and acts on the result.
    fn drive(&mut self, key: usize) {
        let mut ctx = Ctx {
            backend: &mut *self.backend,
            export: &self.export,
            extents: &mut self.extents,
            pool: &mut self.pool,
            shutting_down: self.deadline.is_some(),
            now: self.now,
        };
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let step = conn.drive(&mut ctx);
        if step == Step::Close {
            return self.close(key);
        }
        if step == Step::Yield {
            self.ready.push(key);
        }
        // Ask for writability only while output waits for room (see wants_write_events).
        let want = conn.wants_write_events();
        if want != conn.write_registered && conn.write_fd().is_none() {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let fd = conn.read_fd();
            match self
                .poll
                .registry()
                .reregister(&mut SourceFd(&fd), Token(key), interest)
            {
                Ok(()) => conn.write_registered = want,
                Err(e) => {
                    log::warn!("conn {}: epoll: {e}", conn.serial());
                    self.close(key);
                }
            }
        }
    }

    /// Registers a connected client and sends it the greeting.
    /// Registers a new client. `peer` says who it is, for the log.
    fn add(&mut self, rfd: OwnedFd, wfd: Option<OwnedFd>, peer: &Peer) -> io::Result<()> {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let token = Token(key);
        let registry = self.poll.registry();
        match &wfd {
            None => {
                registry.register(&mut SourceFd(&rfd.as_raw_fd()), token, Interest::READABLE)?
            }
            Some(w) => {
                registry.register(&mut SourceFd(&rfd.as_raw_fd()), token, Interest::READABLE)?;
                registry.register(&mut SourceFd(&w.as_raw_fd()), token, Interest::WRITABLE)?;
            }
        }
        let mut ctx = Ctx {
            backend: &mut *self.backend,
            export: &self.export,
            extents: &mut self.extents,
            pool: &mut self.pool,
            shutting_down: false,
            now: self.now,
        };
        self.serial += 1;
        let conn = entry.insert(Conn::new(self.serial, rfd, wfd, self.oldstyle, &mut ctx));
        if let Some(t) = self.handshake_timeout
            && conn.in_handshake()
        {
            self.handshakes.push_back(HandshakeDeadline {
                at: self.now + t,
                key,
                serial: self.serial,
            });
            self.compact_handshakes();
        }
        log::debug!(
            "conn {}: connected from {peer} ({} open)",
            self.serial,
            self.conns.len()
        );
        self.drive(key);
        Ok(())
    }

    fn close(&mut self, key: usize) {
        let conn = self.conns.remove(key);
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut SourceFd(&conn.read_fd()));
        if let Some(w) = conn.write_fd() {
            let _ = registry.deregister(&mut SourceFd(&w));
        }
        drop(conn);
        if self.conns.is_empty() {
            self.idle_since = Instant::now();
            // Nobody left to lend storage to: give it back to the allocator.
            self.pool = Pool::default();
        }
        // A slot freed: accepting may work again after EMFILE.
        if self.accept_paused_until.take().is_some() {
            self.accept_everywhere();
        }
    }

    /// Accepts the clients pending on listener `i`, a batch at a time: a flood
    /// of connections must not keep the loop from serving the ones it has.
    fn accept_all(&mut self, i: usize) {
        if self.deadline.is_some() || self.accept_paused_until.is_some() {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            let Some(Some(l)) = self.listeners.get(i) else {
                return;
            };
            match l.accept() {
                Ok((fd, _)) if self.conns.len() >= self.max_connections => {
                    self.out_of_fds = false;
                    drop(fd); // closed at once: the client sees EOF
                    self.refuse();
                }
                Ok((fd, peer)) => {
                    self.out_of_fds = false;
                    if let Err(e) = self.add(fd, None, &peer) {
                        log::warn!("cannot register a new connection: {e}");
                        if self.accept_once {
                            self.exit_code = 1; // -s could not serve its client
                        }
                    }
                    if self.accept_once {
                        for j in 0..self.listeners.len() {
                            self.drop_listener(j);
                        }
                        return;
                    }
                }
                Err(e) => match e.raw_os_error() {
                    _ if e.kind() == io::ErrorKind::WouldBlock => return,
                    Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO) => continue,
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        if !self.out_of_fds {
                            log::warn!("accept: {e}: pausing new connections");
                            self.out_of_fds = true;
                        }
                        self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                        return;
                    }
                    _ => {
                        // Not a listening socket after all, or broken: never spin on it.
                        log::error!("accept on {}: {e}: no longer listening there", l.describe());
                        self.drop_listener(i);
                        if self.accept_once {
                            self.exit_code = 1; // -s never got its client
                        }
                        return;
                    }
                },
            }
        }
        self.listeners_ready.push(i); // more may be queued: after the others' turn
    }

    /// A client was refused for the connection limit: say so, but at most once
    /// per interval, so that a flood of connections is not a flood of messages.
    fn refuse(&mut self) {
        self.refusals.unlogged += 1;
        let now = Instant::now();
        if self
            .refusals
            .last_logged
            .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        let n = std::mem::take(&mut self.refusals.unlogged);
        self.refusals.last_logged = Some(now);
        log::warn!(
            "{} connections open, the limit (--max-connections {}): refused {n} new client(s){}",
            self.conns.len(),
            self.max_connections,
            if n > 1 { " since the last message" } else { "" }
        );
    }

    /// Forgets deadlines of connections that finished the handshake or left,
    /// once they are most of the queue: one client stalled at the front would
    /// otherwise keep every later entry, one per connection, until it expires.
    /// Amortized O(1) per connection.
    fn compact_handshakes(&mut self) {
        if self.handshakes.len() <= 2 * self.conns.len() + 64 {
            return;
        }
        let conns = &self.conns;
        self.handshakes.retain(|d| {
            conns
                .get(d.key)
                .is_some_and(|c| c.serial() == d.serial && c.in_handshake())
        });
        self.handshakes.shrink_to(2 * self.handshakes.len() + 64);
    }

    /// Drops clients whose handshake deadline has passed, and forgets deadlines
    /// of connections that finished the handshake or left, so that the poll
    /// timeout only ever wakes the loop for a client still negotiating.
    fn expire_handshakes(&mut self) {
        // The wake-up's clock reading: no extra clock read per loop turn.
        let now = self.now;
        while let Some(d) = self.handshakes.front().copied() {
            let live = self
                .conns
                .get(d.key)
                .is_some_and(|c| c.serial() == d.serial && c.in_handshake());
            if live && d.at > now {
                return;
            }
            self.handshakes.pop_front();
            if live {
                let t = self.handshake_timeout.unwrap_or_default();
                log::warn!(
                    "conn {}: handshake not finished within {}s: disconnecting",
                    d.serial,
                    t.as_secs_f64()
                );
                self.close(d.key);
            }
        }
    }

    fn accept_everywhere(&mut self) {
        for i in 0..self.listeners.len() {
            self.accept_all(i);
        }
    }

    fn drop_listener(&mut self, i: usize) {
        if let Some(mut l) = self.listeners.get_mut(i).and_then(Option::take) {
            let _ = self.poll.registry().deregister(l.source());
        }
    }

    fn has_listeners(&self) -> bool {
        self.listeners.iter().any(Option::is_some)
    }

    fn on_signals(&mut self) {
        let mut buf = [0u8; 64];
        loop {
            match sys::read(self.signals.as_raw_fd(), &mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    for &sig in &buf[..n] {
                        self.on_signal(libc::c_int::from(sig));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return, // EAGAIN: drained
            }
        }
    }

    fn on_signal(&mut self, sig: libc::c_int) {
        match sig {
            libc::SIGCHLD => self.reap_run_child(),
            _ if self.deadline.is_some() => {
                log::info!("second signal: exiting now");
                self.exit_now = true;
            }
            _ => {
                log::info!("signal {sig}: shutting down");
                self.shutdown(0);
            }
        }
    }

    fn reap_run_child(&mut self) {
        let Some(child) = &mut self.run_child else {
            return;
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt;
                let code = status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(1);
                log::debug!("--run command exited: {status}");
                self.run_child = None;
                self.shutdown(code);
            }
            Ok(None) => {}
            Err(e) => log::warn!("waitpid: {e}"),
        }
    }

    /// Stops accepting; lets connections finish what is in flight (new options get
    /// ERR_SHUTDOWN, new requests ESHUTDOWN) until the grace period ends.
    fn shutdown(&mut self, code: i32) {
        if self.deadline.is_some() {
            return;
        }
        self.exit_code = code;
        self.deadline = Some(Instant::now() + SHUTDOWN_GRACE);
        self.notifier.stopping();
        for i in 0..self.listeners.len() {
            self.drop_listener(i);
        }
        for (key, conn) in self.conns.iter_mut() {
            conn.begin_shutdown();
            self.ready.push(key);
        }
    }

    /// How long poll may sleep.
    fn timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() || !self.listeners_ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let idle = match self.idle_timeout {
            Some(t) if self.conns.is_empty() && self.deadline.is_none() => {
                Some(self.idle_since + t)
            }
            _ => None,
        };
        let tick = self.deadline.map(|_| now + SHUTDOWN_TICK);
        // Pooled buffers are freed after a quiet second (see `run`).
        let trim = (!self.pool.is_empty()).then(|| now + POOL_LINGER);
        // The oldest handshake deadline (`expire_handshakes` pruned stale ones).
        let handshake = self.handshakes.front().map(|d| d.at);
        [
            self.deadline,
            tick,
            self.accept_paused_until,
            idle,
            trim,
            handshake,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|at| at.saturating_duration_since(now))
    }

    fn should_exit(&mut self) -> Option<i32> {
        let now = Instant::now();
        if self.exit_now {
            return Some(self.exit_code);
        }
        if let Some(deadline) = self.deadline {
            if self.conns.is_empty() {
                return Some(self.exit_code);
            }
            if now >= deadline {
                log::warn!(
                    "{} connection(s) still open after the grace period: closing",
                    self.conns.len()
                );
                return Some(self.exit_code);
            }
            return None;
        }
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
            self.accept_everywhere();
        }
        if self.conns.is_empty() && self.single && !self.has_listeners() {
            log::debug!("the last connection closed");
            return Some(self.exit_code);
        }
        if let Some(t) = self.idle_timeout
            && self.conns.is_empty()
            && now.duration_since(self.idle_since) >= t
        {
            // A client may be queued without its edge seen yet: take it if so.
            self.accept_everywhere();
            if self.conns.is_empty() {
                log::info!("idle for {t:?}: exiting");
                self.notifier.stopping();
                return Some(0);
            }
        }
        None
    }
}

/// The connection limit: as given, or as many as the descriptor limit leaves
/// room for beyond the descriptors already open (listeners, the backend, the
/// Poll, the standard streams) and a little headroom.
fn connection_limit(given: Option<usize>, poll: &Poll) -> usize {
    let limit = sys::nofile_limit().map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let open = sys::lowest_free_fd(poll.as_raw_fd()).unwrap_or(FD_HEADROOM);
    let room = limit.map(|l| l.saturating_sub(open + FD_HEADROOM).max(1));
    match (given, room) {
        (Some(n), Ok(room)) if n > room => {
            log::warn!(
                "--max-connections {n}: the descriptor limit leaves room for about {room}; \
                 clients beyond that wait until others leave"
            );
            n
        }
        (Some(n), _) => n,
        (None, Ok(room)) => room,
        (None, Err(e)) => {
            log::warn!("RLIMIT_NOFILE: {e}: no connection limit");
            usize::MAX
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_window_adapts() {
        let max = Duration::from_micros(50);
        let us = Duration::from_micros;
        let mut s = Spin::new(max);
        s.waited(us(20)); // caught by the spin
        assert_eq!(s.window, max);
        s.waited(us(90)); // missed, but the traffic is still dense
        assert_eq!(s.window, max);
        for _ in 0..6 {
            s.waited(us(600)); // sparse traffic
        }
        assert_eq!(s.window, Duration::ZERO, "no spinning for sparse traffic");
        s.waited(us(150)); // neither dense nor sparse: no change
        assert_eq!(s.window, Duration::ZERO);
        s.waited(us(60)); // dense again (wake-up latency included)
        assert_eq!(s.window, Spin::FLOOR);
        for _ in 0..10 {
            s.waited(us(60));
        }
        assert_eq!(s.window, max);
        let mut off = Spin::new(Duration::ZERO);
        off.waited(us(1));
        assert_eq!(off.window, Duration::ZERO, "--busy-poll 0 never spins");
    }
}
