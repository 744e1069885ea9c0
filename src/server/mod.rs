//! The one event loop: a mio Poll with every listener, the signal pipe, and a
//! slab of connections. Single-threaded: the backend needs no locks, and every
//! connection sees every acknowledged write.
//!
//! The loop itself only dispatches: accepting is `accept`, handshake and
//! stall deadlines (a request half-sent, replies unread) `deadlines` and
//! `timeouts`, signals and `--run` `signals`, the busy-poll window `spin`,
//! memory `crate::budget`, a new client at the connection limit `evict`,
//! what dropped connections leave in the kernel `ghosts`, and when to stop
//! is the lifecycle's (`crate::lifecycle`). Each connection handles its own events
//! (`Conn::handle`), which reach it through one door, `route`: addressed by an
//! `Origin`, checked once there, and dropped there (what they carried given
//! back) if their connection has gone.

mod accept;
mod deadlines;
mod evict;
mod ghosts;
mod signals;
mod spin;
mod timeouts;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Child;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::aio::Done;
use crate::backend::Backend;
use crate::budget::Budget;
use crate::buf::Pool;
use crate::conn::{Conn, Event, Socket, Step};
use crate::export::Export;
use crate::filter::Stack;
use crate::lifecycle::{Lifecycle, Verdict};
use crate::listen::{Listener, Peer};
use crate::notify::Notifier;
use crate::origin::Origin;
use crate::shared::Shared;
use crate::storage::{Flight, Storage};
use crate::sys;

use accept::Acceptor;
use deadlines::Deadlines;
use signals::{Signal, Signals};
use spin::Spin;

/// Tokens from the top of the range; connections use their slab keys from 0,
/// listeners count down from `accept::LISTENER_TOP`.
const SIGNAL: Token = Token(usize::MAX);
/// The I/O engine's completions (the backend's, if it has one).
const ENGINE: Token = Token(usize::MAX - 1);
/// The I/O engine's own sockets (the `curl` backend's web server connections):
/// `ENGINE_SOURCES_TOP - i` for `i < aio::MAX_SOURCES`, far below the listeners.
const ENGINE_SOURCES_TOP: usize = usize::MAX - (1 << 20);

/// Which of the I/O engine's sockets `token` names, if it is one of theirs.
fn engine_source(token: Token) -> Option<usize> {
    let i = ENGINE_SOURCES_TOP.checked_sub(token.0)?;
    (i < crate::aio::MAX_SOURCES).then_some(i)
}

/// Pooled buffers are freed, and the storage of connections gone given back,
/// once the server has had no event for this long.
const POOL_LINGER: Duration = Duration::from_secs(1);

/// What `Server::new` needs besides the backend.
pub struct Setup {
    pub export: Export,
    /// `--filter`s, first nearest the client, prepared (`Stack::prepare`:
    /// `export` is as they shaped it).
    pub filters: Stack,
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
    /// Clients that leave a request half-sent, or their replies unread, for
    /// this long are dropped (`--request-timeout`).
    pub request_timeout: Option<Duration>,
    /// Bytes connections may hold in buffers, all together (`--memory-budget`).
    pub memory_budget: usize,
    /// The most connections at once (None: what RLIMIT_NOFILE and the
    /// memory budget allow); a client beyond waits at the door for a place
    /// (`evict`).
    pub max_connections: Option<usize>,
    /// What STARTTLS begins sessions with (`--tls=on|require`).
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

pub struct Server {
    poll: Poll,
    /// What connections share: storage, buffers, budget, clock, lifecycle.
    shared: Shared,
    conns: Slab<Conn>,
    acceptor: Acceptor,
    deadlines: Deadlines,
    /// Stalled connections' deadlines: a request half-sent, replies unread
    /// (`--request-timeout`).
    stalls: Deadlines,
    signals: Signals,
    spin: Spin,
    /// Connections whose turn ended with work left: resumed without an event.
    ready: Vec<Origin>,
    /// Connections holding a request the I/O engine had no room for, in the
    /// order they asked: resumed in that order as room frees, so none starves.
    room_queue: VecDeque<Origin>,
    /// Connections a filter holds, with when to wake them (`Step::Sleep`).
    sleepers: BinaryHeap<Reverse<(Instant, Origin)>>,
    /// Clients accepted in the current batch (kept to reuse its storage).
    accepted: Vec<(OwnedFd, Peer)>,
    /// Completions reaped from the I/O engine, with their requests, and the
    /// connections they went to (all kept to reuse their storage).
    done: Vec<Done>,
    completed: Vec<(Flight, Done)>,
    touched: Vec<Origin>,
    oldstyle: bool,
    /// The last connection's serial number: how many there have been.
    serial: u64,
    /// When the server began to serve (SIGUSR1's summary).
    started: Instant,
    /// Connections have gone since the server was last quiet: their storage
    /// is given back to the system then (`give_back`).
    departed: bool,
    /// Clients beyond the connection limit waiting for a place, and those
    /// dropped to make room for them.
    door: evict::Door,
    /// Sockets of connections gone whose replies still wait in the kernel
    /// for their clients, counted in the memory budget until they are read.
    ghosts: ghosts::Ghosts,
}

impl Server {
    pub fn new(setup: Setup, backend: Box<dyn Backend>) -> io::Result<Server> {
        let poll = Poll::new()?;
        let registry = poll.registry();
        let signals = Signals::new(setup.signals, registry, SIGNAL)?;
        let open_fds = sys::lowest_free_fd(registry.as_fd());
        let mut budget = Budget::new(setup.memory_budget);
        let tcp = setup
            .listeners
            .iter()
            .any(|l| matches!(l, Listener::Tcp(_)));
        #[cfg(feature = "tls")]
        let fixed = crate::conn::fixed_cost(setup.tls.is_some(), tcp);
        #[cfg(not(feature = "tls"))]
        let fixed = crate::conn::fixed_cost(false, tcp);
        let acceptor = Acceptor::new(
            setup.listeners,
            registry,
            setup.max_connections,
            open_fds,
            budget.connection_limit(fixed),
            setup.accept_once,
        )?;
        budget.set_connections(acceptor.max_connections(), fixed);
        let single = !setup.connections.is_empty() && !acceptor.is_listening();
        let lifecycle = Lifecycle::new(
            setup.idle_timeout,
            single || setup.accept_once,
            setup.notifier,
        );
        let mut export = setup.export;
        fit_to_budget(&budget, acceptor.max_connections(), fixed, &mut export);
        let storage = Storage::new(backend, export, setup.filters);
        let mut shared = Shared::new(storage, lifecycle);
        shared.budget = budget;
        #[cfg(feature = "tls")]
        {
            shared.tls = setup.tls;
        }
        let mut server = Server {
            poll,
            shared,
            conns: Slab::new(),
            acceptor,
            deadlines: Deadlines::new(setup.handshake_timeout),
            stalls: Deadlines::new(setup.request_timeout),
            signals,
            spin: Spin::new(setup.busy_poll),
            ready: Vec::new(),
            room_queue: VecDeque::new(),
            sleepers: BinaryHeap::new(),
            accepted: Vec::new(),
            done: Vec::new(),
            completed: Vec::new(),
            touched: Vec::new(),
            oldstyle: setup.oldstyle,
            serial: 0,
            started: Instant::now(),
            departed: false,
            door: evict::Door::default(),
            ghosts: ghosts::Ghosts::default(),
        };
        server.attach_engine()?;
        for (rfd, wfd) in setup.connections {
            server.add(rfd, wfd, &Peer::Inherited)?;
        }
        Ok(server)
    }

    /// The I/O engine's completions (its eventfd) and its own sources
    /// (a remote's sockets and timers) arrive on the one Poll.
    fn attach_engine(&mut self) -> io::Result<()> {
        let Some(engine) = self.shared.storage.engine() else {
            return Ok(());
        };
        if let Some(fd) = engine.fd() {
            let fd = fd.as_raw_fd();
            let registry = self.poll.registry();
            registry.register(&mut SourceFd(&fd), ENGINE, Interest::READABLE)?;
        }
        engine.attach(self.poll.registry(), ENGINE_SOURCES_TOP)
    }

    /// The `--run` command: its exit ends the server, with its status.
    pub fn set_run_child(&mut self, child: Child) {
        self.signals.set_run_child(child);
        self.shared.lifecycle.run_started();
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
                self.shared.storage.filters.report(Instant::now());
                return code;
            }
            let timeout = self.timeout();
            let start = Instant::now();
            let spun = timeout != Some(Duration::ZERO)
                && busy
                && self.spin.spin(&mut self.poll, &mut events);
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
            self.shared.now = Instant::now();
            if !busy && (!self.shared.pool.is_empty() || self.departed) {
                self.give_back();
            }
            for ev in events.iter() {
                match ev.token() {
                    SIGNAL => self.on_signals(),
                    ENGINE => {} // reaped below, every turn
                    t if engine_source(t).is_some() => self.engine_event(t),
                    t => match (accept::listener_of(t), Origin::of_token(t)) {
                        (Some(i), _) => self.accept(i),
                        (None, Some(to)) => self.route(to, Event::Ready(ev.into())),
                        (None, None) => {} // no token of ours: cannot happen
                    },
                }
            }
            for to in std::mem::take(&mut self.ready) {
                self.route(to, Event::Resume);
            }
            for i in self.acceptor.take_pending() {
                self.accept(i);
            }
            if self.shared.lifecycle.shutting_down() && events.is_empty() {
                // A shutdown tick: connections that have gone quiet may now close.
                self.route_all(|| Event::Resume);
            }
            self.complete_io();
            self.resume_memory();
            // Deadlines are enforced as of the moment this poll began: every
            // byte that had come by then has now been read (unless the batch
            // of events was full: then at the next turn). The clock of the
            // wake-up would not do: a process stopped (SIGSTOP) just after
            // epoll_wait returned resumes with events gathered before the
            // stop, while those that came during it wait for the next poll.
            if events.iter().count() < events.capacity() {
                self.expire_handshakes(start);
                self.expire_stalls(start);
                if self.door.busy() {
                    self.open_the_door();
                }
                self.ghosts.sweep(self.shared.now, &mut self.shared.budget);
                // What the expired connections held goes to those waiting now,
                // not at the next wake-up.
                self.resume_memory();
            }
        }
    }

    /// Hands every completion of the I/O engine to the connection that asked,
    /// resumes connections that were waiting for room, then sends the engine
    /// everything this turn queued (io_uring: in one system call).
    fn complete_io(&mut self) {
        let mut completed = std::mem::take(&mut self.completed);
        self.shared.storage.reap(&mut self.done, &mut completed);
        let mut touched = std::mem::take(&mut self.touched);
        for (flight, done) in completed.drain(..) {
            touched.push(flight.origin);
            self.route(flight.origin, Event::Completed { flight, done });
        }
        self.completed = completed;
        // Requests filters held that are due (all of them, at shutdown: they
        // are refused), and connections they held. A due request stays held
        // while the I/O engine is full (it would be refused there): a
        // completion makes room, and wakes the loop.
        let (now, all) = (self.shared.now, self.shared.lifecycle.shutting_down());
        self.shared.storage.filters.wake(now);
        while (all || self.shared.storage.has_room())
            && let Some(held) = self.shared.storage.filters.release(now, all)
        {
            touched.push(held.origin);
            self.route(held.origin, Event::Released(held));
        }
        while let Some(&Reverse((at, to))) = self.sleepers.peek()
            && at <= now
        {
            self.sleepers.pop();
            touched.push(to);
        }
        // Every connection that got replies sends them now, in one turn each.
        touched.sort_unstable();
        touched.dedup();
        for to in touched.drain(..) {
            self.route(to, Event::Resume);
        }
        self.touched = touched;
        self.resume_waiting();
        self.shared.storage.run();
    }

    /// An event on one of the I/O engine's own sockets: its completions are
    /// reaped below, with the others.
    fn engine_event(&mut self, token: Token) {
        if let (Some(engine), Some(i)) = (self.shared.storage.engine(), engine_source(token)) {
            engine.ready(i);
        }
    }

    /// Connections holding a request the engine had no room for, resumed in
    /// the order they asked while there is room; each is looked at once per
    /// turn (one whose own share is used up just queues again).
    fn resume_waiting(&mut self) {
        for _ in 0..self.room_queue.len() {
            if !self.shared.storage.has_room() {
                return;
            }
            let Some(to) = self.room_queue.pop_front() else {
                return;
            };
            self.route(to, Event::Room);
        }
    }

    /// Connections waiting for memory, resumed in turn while what they asked
    /// for fits; each is looked at once per turn.
    fn resume_memory(&mut self) {
        for _ in 0..self.shared.budget.waiting() {
            let Some(to) = self.shared.budget.ready() else {
                return;
            };
            self.route(to, Event::Memory);
            self.shared.budget.resumed();
        }
    }

    /// The one door to a connection: hands `ev` to the connection `to` names,
    /// if it is still there, and acts on its answer. An event for a
    /// connection gone (its slot empty, or taken by a successor) is dropped
    /// here, once, and what it carried given back.
    fn route(&mut self, to: Origin, ev: Event) {
        let Some(conn) = self.conns.get_mut(to.key).filter(|c| c.origin() == to) else {
            return self.orphan(ev);
        };
        match conn.handle(ev, &mut self.shared, self.poll.registry()) {
            Step::Wait => {}
            Step::WaitForRoom => self.room_queue.push_back(to),
            Step::Sleep(at) => self.sleepers.push(Reverse((at, to))),
            Step::Yield => self.ready.push(to),
            Step::Close => return self.close(to.key),
        }
        self.arm_stall(to);
    }

    /// An event whose connection has gone: a completion's buffer is still
    /// counted against the memory budget, and goes back (the only place a
    /// gone connection's memory is refunded: `Charge::close` left it).
    fn orphan(&mut self, ev: Event) {
        match ev {
            Event::Completed { flight, done } => {
                self.shared.budget.give(flight.owed().lent);
                self.shared.pool.give(done.buf);
            }
            Event::Released(held) => self.shared.budget.give(held.owed().lent),
            _ => {}
        }
    }

    fn route_all(&mut self, ev: impl Fn() -> Event) {
        let all: Vec<Origin> = self.conns.iter().map(|(_, c)| c.origin()).collect();
        for to in all {
            self.route(to, ev());
        }
    }

    /// Registers a new client, which sends its greeting. `peer` says who it
    /// is, for the log.
    fn add(&mut self, rfd: OwnedFd, wfd: Option<OwnedFd>, peer: &Peer) -> io::Result<()> {
        if !self.shared.storage.filters.connect(self.shared.now) {
            // Closed before its greeting (as nbdkit's preconnect): EOF.
            log::debug!("a client from {peer}: turned away by a filter");
            return Ok(());
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        self.serial += 1;
        let socket = Socket::new(rfd, wfd);
        socket.bound_buffers();
        let mut conn = Conn::new(key, self.serial, socket, self.oldstyle, &mut self.shared);
        let to = conn.origin();
        let registered = self
            .poll
            .registry()
            .register(&mut conn, to.token(), Interest::READABLE);
        if let Err(e) = registered {
            // What it opened and counted (an oldstyle client opens as it
            // connects) is given back, as at any close.
            conn.close(&mut self.shared);
            return Err(e);
        }
        entry.insert(conn);
        if !self.oldstyle {
            let conns = &self.conns;
            let live = |o, _| negotiating(conns, o);
            let now = self.shared.now;
            self.deadlines.push(to, now, conns.len(), live);
        }
        log::debug!(
            "conn {}: connected from {peer} ({} open)",
            self.serial,
            self.conns.len()
        );
        self.route(to, Event::Resume);
        Ok(())
    }

    /// Quiet for a while: the buffers of the last burst, and what departed
    /// connections left (slab slots, the allocator's free memory), go back to
    /// the system, so that a crowd that came and went costs nothing after.
    fn give_back(&mut self) {
        self.shared.pool = Pool::default();
        if self.departed {
            self.conns.shrink_to_fit();
            self.accepted.shrink_to_fit();
            sys::trim_heap();
            self.departed = false;
        }
    }

    fn close(&mut self, key: usize) {
        let mut conn = self.conns.remove(key);
        conn.close(&mut self.shared);
        let _ = self.poll.registry().deregister(&mut conn);
        if let Some((fd, unsent)) = conn.into_leftover() {
            // Ghosts and connections together within the connection limit
            // (which may be the descriptors'), their queues within half the
            // budget's shared part.
            let room = ghosts::Room {
                count: self
                    .acceptor
                    .max_connections()
                    .saturating_sub(self.conns.len()),
                bytes: self.shared.budget.shared() / 2,
            };
            self.ghosts.add(fd, unsent, room, &mut self.shared.budget);
        }
        self.departed = true;
        if self.conns.is_empty() {
            self.shared.lifecycle.all_closed(Instant::now());
            // Nobody left to lend storage to: give it back to the allocator.
            self.shared.pool = Pool::default();
        }
        // A descriptor freed: accepting may work again after EMFILE.
        if self.acceptor.slot_freed() {
            self.accept_everywhere();
        }
    }

    /// Accepts a batch of clients from listener `i`.
    fn accept(&mut self, i: usize) {
        let mut batch = std::mem::take(&mut self.accepted);
        let open = self.conns.len();
        if !self
            .acceptor
            .accept(i, open, self.poll.registry(), &mut batch)
        {
            self.shared.lifecycle.failed(); // -s never got its client
        }
        for (fd, peer) in batch.drain(..) {
            self.admit(fd, &peer);
        }
        self.accepted = batch;
        for (fd, peer) in self.acceptor.take_over() {
            let open = self.conns.len();
            self.at_the_limit(fd, peer, open);
        }
    }

    /// Serves a client just accepted.
    fn admit(&mut self, fd: OwnedFd, peer: &Peer) {
        if let Err(e) = self.add(fd, None, peer) {
            log::warn!("cannot register a new connection: {e}");
            if self.acceptor.once() {
                self.shared.lifecycle.failed(); // -s could not serve its client
            }
        }
    }

    fn accept_everywhere(&mut self) {
        for i in self.acceptor.all() {
            self.accept(i);
        }
    }

    fn on_signals(&mut self) {
        for sig in self.signals.take() {
            let begun = match sig {
                Signal::Stop(s) => self.shared.lifecycle.on_stop_signal(s),
                Signal::RunExited(code) => self.shared.lifecycle.run_exited(code),
                Signal::Report => {
                    self.report();
                    false
                }
            };
            if begun {
                self.begin_shutdown();
            }
        }
    }

    /// SIGUSR1: one summary line in the log, and each filter's report (the
    /// stats filter's); the server goes on.
    fn report(&mut self) {
        let now = Instant::now();
        let up = now.saturating_duration_since(self.started);
        let tally = &self.shared.storage.tally;
        crate::logging::notice(&tally.summary(self.serial, self.conns.len(), up));
        self.shared.storage.filters.report(now);
    }

    /// Stops accepting; lets connections finish what is in flight (new options get
    /// ERR_SHUTDOWN, new requests ESHUTDOWN) until the grace period ends.
    fn begin_shutdown(&mut self) {
        self.acceptor.close_all(self.poll.registry());
        self.route_all(|| Event::Shutdown);
    }

    /// How long poll may sleep.
    fn timeout(&mut self) -> Option<Duration> {
        let io_busy = self.shared.storage.busy();
        let io_deadline = self.shared.storage.engine().and_then(|e| e.deadline());
        if !self.ready.is_empty() || self.acceptor.has_pending() || io_busy {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        // Pooled buffers are freed after a quiet second (see `run`).
        let trim = (!self.shared.pool.is_empty() || self.departed).then(|| now + POOL_LINGER);
        let door = self.door.busy().then(|| now + evict::DOOR_TICK);
        [
            self.shared.lifecycle.wake_at(self.conns.len(), now),
            self.acceptor.resume_at(),
            trim,
            door,
            self.ghosts.next(),
            self.deadlines.next(),
            self.stalls.next(),
            self.filters_wake(),
            self.sleepers.peek().map(|Reverse((at, _))| *at),
            io_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|at| at.saturating_duration_since(now))
    }

    /// When the filters need the loop next; not while held requests wait
    /// for room in a full I/O engine, whose completions wake it anyway.
    fn filters_wake(&mut self) -> Option<Instant> {
        let room = self.shared.storage.has_room();
        let filters = &self.shared.storage.filters;
        match room {
            true => filters.next_wake(),
            false => filters.own_wake(),
        }
    }

    fn should_exit(&mut self) -> Option<i32> {
        let now = Instant::now();
        if !self.shared.lifecycle.shutting_down()
            && let Some(by) = self.shared.storage.filters.wanting_exit()
        {
            // As a signal would: no new clients, the grace period for the rest.
            log::info!("the {by} filter asks the server to exit: shutting down");
            self.shared.lifecycle.shut_down(0);
            self.begin_shutdown();
        }
        if self.acceptor.resume_if_due(now) {
            self.accept_everywhere();
        }
        let open = self.conns.len();
        match self
            .shared
            .lifecycle
            .verdict(open, self.acceptor.is_listening(), now)
        {
            Verdict::Continue => None,
            Verdict::Exit(code) => Some(code),
            Verdict::AwaitRun { end_it } => {
                self.route_all(|| Event::Close);
                if end_it {
                    self.signals.end_run_child();
                    self.shared.lifecycle.run_ending();
                }
                None
            }
            Verdict::IdleExpired => {
                // A client may be queued without its edge seen yet: take it if so.
                self.accept_everywhere();
                if !self.conns.is_empty() {
                    return None;
                }
                let code = self.shared.lifecycle.idle_exit();
                if code.is_none() {
                    self.begin_shutdown(); // and wait for --run
                }
                code
            }
        }
    }
}

/// Whether `to` is still there, negotiating: the question a queued handshake
/// deadline asks.
fn negotiating(conns: &Slab<Conn>, to: Origin) -> bool {
    conns
        .get(to.key)
        .is_some_and(|c| c.origin() == to && c.negotiating())
}

/// Says at debug level what the memory budget allows, and lowers the largest
/// request to what a small budget can admit at all.
fn fit_to_budget(budget: &Budget, max_connections: usize, fixed: usize, export: &mut Export) {
    let largest = budget.largest_request() as u64;
    log::debug!(
        "memory budget: up to {} connections, {} KiB set aside for each (its socket \
         buffers, TLS, state, and {} KiB of buffers it never waits for); {} MiB shared \
         beyond that; largest request {} MiB",
        max_connections,
        (fixed + crate::budget::FLOOR) >> 10,
        crate::budget::FLOOR >> 10,
        budget.shared() >> 20,
        largest.min(export.max_request) >> 20,
    );
    if largest < export.max_request {
        log::debug!(
            "largest request: {} KiB (a small memory budget)",
            largest >> 10
        );
        export.max_request = largest;
    }
}
