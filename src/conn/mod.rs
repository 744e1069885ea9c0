//! One client: its socket, its output queue, its protocol driver, and the
//! readiness the kernel reported.
//!
//! The server hands each event to `Conn::handle`; the connection remembers
//! readiness (edge-triggered events do not repeat), reads, runs and writes until
//! it would block, runs out of its turn, or is done, and keeps its own
//! registration with the Poll up to date. It never sees the Poll itself, only
//! the registry.
//!
//! It keeps the memory budget told of what it holds (`settle`), and stops
//! reading while the budget has no room for its next message. It notes when it
//! waits for the rest of a half-sent request (`half_sent_since`), for the
//! server's `--request-timeout`.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use mio::{Registry, Token};

use crate::buf::OutQueue;
use crate::ctx::Ctx;
use crate::driver::{Driver, Phase, Progress, Received};
use crate::handshake::Handshake;
use crate::lifecycle::Activity;
use crate::logging;
use crate::origin::Origin;
use crate::proto::option::{greeting_newstyle, greeting_oldstyle};
use crate::proto::reply::Style;
use crate::session::Session;
use crate::transmission;

mod event;
mod half_sent;
mod registration;
mod transport;

pub use event::{Event, Readiness, Step};
use transport::Transport;

/// Requests (or options) handled per turn, so one busy client cannot starve the rest.
const TURN: usize = 64;
/// Bytes read per turn: a client streaming large WRITEs yields after this
/// much, rather than keep the loop copying its payloads while others wait.
const TURN_BYTES: usize = 2 << 20;
/// Stop reading requests while this much output is unsent; resume once it drains.
const OUT_LIMIT: usize = 64 << 20;
/// Blocks handed to one writev(2).
const IOV_MAX: usize = 256;

pub struct Conn {
    /// The server's number for this connection: unique for the life of the
    /// process (slab keys are reused), so it names the connection in log lines.
    id: u64,
    rfd: OwnedFd,
    /// A separate fd for writing (`-s` with distinct stdin and stdout).
    wfd: Option<OwnedFd>,
    out: OutQueue,
    /// The protocol and its unprocessed input.
    driver: Driver,
    /// Readiness last reported and not yet used up (cleared on EAGAIN).
    readable: bool,
    /// The peer has shut down its side (EPOLLRDHUP): the data before the FIN may
    /// have come with the same edge, so a short read no longer means "drained",
    /// and reading goes on until it returns 0.
    read_closed: bool,
    writable: bool,
    /// Our token, and whether the Poll reports writability for us now.
    token: Token,
    write_registered: bool,
    /// Descriptors the Poll refuses (EPERM: a regular file or /dev/null given
    /// to `-s`): they never block, so they are read and written as if always
    /// ready.
    unpolled_read: bool,
    unpolled_write: bool,
    /// The client will send nothing more.
    eof: bool,
    /// Holding a request the I/O engine has no room for (see `Progress::Blocked`).
    blocked: bool,
    /// Plaintext, or TLS after STARTTLS.
    transport: Transport,
    /// STARTTLS was accepted: TLS starts once its ACK is out.
    starting_tls: bool,
    /// In the server's queue of connections waiting for room.
    waiting_for_room: bool,
    /// Why we are closing once the output drains.
    closing: Option<&'static str>,
    /// When a message was last handled.
    last_active: Instant,
    /// What the memory budget was last told this connection holds.
    charged: usize,
    /// Bytes arrived in this turn, and how many.
    got_input: bool,
    turn_bytes: usize,
    /// The turn ended waiting for the client's bytes (not held back by us).
    awaiting_input: bool,
    /// Since when a request has been half-sent with nothing more arriving
    /// (only while we wait for it: not while we hold the client back).
    stalled_since: Option<Instant>,
    /// The `--request-timeout` deadline the server has queued for it.
    stall_deadline: Option<Instant>,
    /// How many of its warnings the log still takes (`logging::Quota`).
    log_quota: logging::Quota,
}

impl Conn {
    /// A connection that starts by sending the greeting.
    pub fn new(id: u64, rfd: OwnedFd, wfd: Option<OwnedFd>, oldstyle: bool, ctx: &mut Ctx) -> Conn {
        let mut out = OutQueue::default();
        let mut w = out.writer(&mut ctx.pool);
        let phase = if oldstyle {
            let session = Session {
                style: Style::Simple,
                flags: ctx.export.flags(Style::Simple, false),
                meta: false,
            };
            w.put(&greeting_oldstyle(ctx.export.size, session.flags));
            Phase::Transmission(session)
        } else {
            w.put(&greeting_newstyle(ctx.export.handshake_flags));
            Phase::Handshake(Handshake::default())
        };
        Conn {
            id,
            rfd,
            wfd,
            out,
            driver: Driver::new(phase),
            readable: true,
            read_closed: false,
            writable: true,
            token: Token(usize::MAX),
            write_registered: false,
            unpolled_read: false,
            unpolled_write: false,
            eof: false,
            blocked: false,
            transport: Transport::Plain,
            starting_tls: false,
            waiting_for_room: false,
            closing: None,
            last_active: ctx.now,
            charged: 0,
            got_input: false,
            turn_bytes: 0,
            awaiting_input: false,
            stalled_since: None,
            stall_deadline: None,
            log_quota: logging::Quota::default(),
        }
    }

    /// Its serial number (see `Origin`).
    pub fn serial(&self) -> u64 {
        self.id
    }

    /// The connection goes: what it holds goes back to the budget (buffers
    /// still in the I/O engine as they are reaped), and it leaves any queue
    /// for memory.
    pub fn leave(&mut self, ctx: &mut Ctx) {
        let in_engine = self.driver.lent_to_engine().min(self.charged);
        ctx.budget.give(self.charged - in_engine);
        self.charged = 0;
        let me = Origin {
            key: self.token.0,
            serial: self.id,
        };
        ctx.budget.leave(me, self.driver.queued());
    }

    /// Whether this is connection `serial`, still negotiating: the question a
    /// queued handshake deadline asks.
    pub fn negotiating(&self, serial: u64) -> bool {
        self.id == serial && self.driver.in_handshake()
    }

    /// The one entry point: acts on `ev`, does as much work as readiness and
    /// the turn allow, and keeps its registration with the Poll current.
    pub fn handle(&mut self, ev: Event, ctx: &mut Ctx, registry: &Registry) -> Step {
        let scope = logging::conn_scope(self.id, self.log_quota);
        ctx.serving = Origin {
            key: self.token.0,
            serial: self.id,
        };
        let step = self.act(ev, ctx, registry);
        self.settle(ctx);
        self.log_quota = scope.end();
        step
    }

    fn act(&mut self, ev: Event, ctx: &mut Ctx, registry: &Registry) -> Step {
        match ev {
            Event::Ready(r) => {
                self.readable |= r.readable;
                self.read_closed |= r.read_closed;
                self.writable |= r.writable;
            }
            Event::Resume => {}
            Event::Shutdown => self.readable = true,
            Event::Close => {
                log::debug!("closed: the server is exiting");
                return Step::Close;
            }
            Event::Completed { flight, done } => {
                if flight.origin.serial != self.id {
                    // A predecessor's, in the same slab slot.
                    ctx.budget
                        .give(transmission::engine_bytes(&flight.req, flight.effect));
                    ctx.pool.give(done.buf);
                    return Step::Wait;
                }
                self.driver.complete(ctx, &flight, done, &mut self.out);
                self.blocked = false; // a share of the engine came back
                return Step::Wait; // the server's Resume sends it, with the others
            }
            Event::Room { serial } => {
                if serial != self.id {
                    return Step::Wait; // a predecessor's place in the queue
                }
                self.waiting_for_room = false;
                self.blocked = false;
            }
            Event::Memory { serial } => {
                if serial == self.id {
                    self.driver.memory_granted();
                }
            }
            Event::Stalled { serial, after } => {
                if serial != self.id || self.stalled_since.is_none() {
                    return Step::Wait;
                }
                let secs = after.as_secs_f64();
                log::warn!("request half-sent, then nothing for {secs}s: disconnecting");
                return Step::Close;
            }
            Event::Deadline { serial, after } => {
                if !self.negotiating(serial) {
                    return Step::Wait;
                }
                let secs = after.as_secs_f64();
                log::warn!("handshake not finished within {secs}s: disconnecting");
                return Step::Close;
            }
        }
        self.got_input = false;
        self.awaiting_input = false;
        let mut step = self.turn(ctx);
        // Storage with nothing pending goes back to the pool between bursts;
        // a connection about to wait keeps only what it needs.
        match step {
            Step::Wait => self.driver.shrink(&mut ctx.pool),
            _ => self.driver.release(&mut ctx.pool),
        }
        if self.out.is_empty() {
            self.out.release(&mut ctx.pool);
        }
        self.note_stall(ctx.now);
        if step != Step::Close
            && let Err(e) = self.update_interest(registry)
        {
            log::warn!("epoll: {e}");
            step = Step::Close;
        }
        if step == Step::Close {
            log::debug!("closed: {}", self.closing.unwrap_or("error"));
        }
        step
    }

    fn turn(&mut self, ctx: &mut Ctx) -> Step {
        let mut budget = TURN;
        self.turn_bytes = 0;
        loop {
            let progress = if self.closing.is_some() || self.starting_tls {
                Progress::NeedInput
            } else {
                self.process(ctx, &mut budget)
            };
            match progress {
                Progress::Close(why) => self.closing = Some(why),
                Progress::StartTls => self.starting_tls = true,
                _ => {}
            }
            if self.writable && self.has_output() {
                if let Err(e) = self.flush(ctx) {
                    log::debug!("write: {e}");
                    return Step::Close;
                }
                self.settle(ctx);
            }
            if self.closing.is_some() {
                // flush() either emptied the queue or met EAGAIN; requests still
                // in the I/O engine get their replies first.
                if self.has_output() || self.driver.awaiting_io() {
                    return Step::Wait;
                }
                let fd = self.wfd.as_ref().unwrap_or(&self.rfd).as_fd();
                self.transport.finish(fd);
                return Step::Close;
            }
            if self.starting_tls {
                if self.has_output() {
                    return Step::Wait; // STARTTLS's ACK goes out in plaintext first
                }
                if let Err(e) = self.start_tls(ctx) {
                    log::debug!("{e}");
                    return Step::Close;
                }
                continue;
            }
            if self.blocked || progress == Progress::NeedMemory {
                return Step::Wait; // a completion, freed room or memory resumes us
            }
            if self.backlog() >= OUT_LIMIT {
                return Step::Wait; // resumes on the next writable edge or completion
            }
            if let Progress::Some = progress {
                self.last_active = ctx.now;
            }
            match progress {
                Progress::Some if budget == 0 => return Step::Yield,
                Progress::Some => continue,
                _ => {}
            }
            // The front message is incomplete: read more.
            if self.eof {
                if self.driver.mid_message() {
                    log::warn!("client disconnected in the middle of a message");
                }
                self.closing = Some("client closed the connection");
                continue;
            }
            if !self.readable {
                if ctx.lifecycle.may_let_go(&self.activity(), ctx.now) {
                    self.closing = Some("server shutting down");
                    continue;
                }
                self.awaiting_input = true;
                return Step::Wait;
            }
            if self.turn_bytes >= TURN_BYTES {
                return Step::Yield; // the rest after the others' turn
            }
            if !self.driver.admit_read(ctx, self.out.held()) {
                return Step::Wait; // resumed once the budget has room
            }
            if let Err(e) = self.fill(ctx) {
                log::debug!("read: {e}");
                return Step::Close;
            }
            self.settle(ctx);
        }
    }

    /// Tells the memory budget what this connection holds now: its input
    /// buffer (or what its front request was admitted with), the buffers it
    /// lent the I/O engine, and its output queue's blocks.
    fn settle(&mut self, ctx: &mut Ctx) {
        let held = self.driver.held() + self.out.held();
        if held > self.charged {
            ctx.budget.take(held - self.charged);
        } else {
            ctx.budget.give(self.charged - held);
        }
        self.charged = held;
    }

    /// Bytes waiting for the socket: replies, or TLS records already sealed.
    fn has_output(&self) -> bool {
        !self.out.is_empty() || self.transport.wants_write()
    }

    /// STARTTLS's ACK is out: from here on the socket carries TLS, beginning
    /// with what the client already sent behind STARTTLS.
    #[cfg(feature = "tls")]
    fn start_tls(&mut self, ctx: &mut Ctx) -> io::Result<()> {
        self.starting_tls = false;
        self.transport = Transport::start_tls(ctx.tls.as_ref(), self.driver.unread())?;
        self.driver.forget_unread();
        log::debug!("STARTTLS: TLS handshake begins");
        Ok(())
    }

    /// Without TLS built in, STARTTLS is refused (ERR_POLICY): never reached.
    #[cfg(not(feature = "tls"))]
    fn start_tls(&mut self, _: &mut Ctx) -> io::Result<()> {
        Err(io::Error::other("STARTTLS accepted without TLS built in"))
    }

    /// Output the client has yet to read: queued, and still to come from the
    /// I/O engine.
    fn backlog(&self) -> usize {
        self.out.len() + self.driver.awaited_data()
    }

    /// What the lifecycle needs to know to let this connection go at shutdown.
    fn activity(&self) -> Activity {
        Activity {
            negotiating: self.driver.in_handshake(),
            quiet: self.driver.quiet(),
            last_active: self.last_active,
        }
    }

    /// Handles buffered messages until one is incomplete, the turn ends, or the
    /// output passes its limit.
    fn process(&mut self, ctx: &mut Ctx, budget: &mut usize) -> Progress {
        let mut progress = Progress::NeedInput;
        while *budget > 0 && self.backlog() < OUT_LIMIT {
            let step = self.driver.step(ctx, &mut self.out);
            self.settle(ctx);
            match step {
                Progress::Some => {
                    *budget -= 1;
                    progress = Progress::Some;
                }
                Progress::NeedInput => break,
                Progress::NeedMemory => return Progress::NeedMemory,
                Progress::StartTls => return Progress::StartTls,
                Progress::Blocked => {
                    self.blocked = true;
                    if !self.waiting_for_room {
                        self.waiting_for_room = true;
                        ctx.waiting.push_back(ctx.serving);
                    }
                    break;
                }
                close => return close,
            }
        }
        progress
    }

    /// One read(2) into the driver's input. EAGAIN and EINTR are not errors.
    fn fill(&mut self, ctx: &mut Ctx) -> io::Result<()> {
        let fd = self.rfd.as_fd();
        let wfd = self.wfd.as_ref().map(AsFd::as_fd);
        let transport = &mut self.transport;
        match self
            .driver
            .receive(&mut ctx.pool, |buf| transport.read(fd, wfd, buf))
        {
            Ok(Received::Eof) => self.eof = true,
            // A short read drained the socket: anything arriving later raises a
            // new edge, so skip the read that would only say EAGAIN.
            Ok(Received::Bytes { n, drained }) => {
                self.got_input = true;
                self.turn_bytes += n;
                let keep = self.read_closed || self.unpolled_read;
                self.readable &= !drained || keep || !self.transport.short_read_drains();
                if let Some(about) = self.transport.first_plaintext() {
                    log::debug!("TLS: {about}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Writes queued output until it is gone or the socket is full: many replies
    /// per writev(2), straight from the blocks they were built in (or, under
    /// TLS, sealed straight from them).
    fn flush(&mut self, ctx: &mut Ctx) -> io::Result<()> {
        let fd = self.wfd.as_ref().unwrap_or(&self.rfd).as_fd();
        let mut sent = Ok(());
        while sent.is_ok() && !self.out.is_empty() {
            sent = {
                let mut iov = [IoSlice::new(&[]); IOV_MAX];
                let n = self.out.slices(&mut iov);
                self.transport.write(fd, &iov[..n])
            }
            .map(|n| self.out.consume(n, &mut ctx.pool));
            if sent
                .as_ref()
                .is_err_and(|e| e.kind() == io::ErrorKind::Interrupted)
            {
                sent = Ok(());
            }
        }
        if sent.is_ok() {
            sent = self.transport.flush(fd);
        }
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.writable = false;
                Ok(())
            }
            r => r,
        }
    }
}
