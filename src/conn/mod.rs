//! One client: its socket, its output queue, its protocol driver, and the
//! readiness the kernel reported.
//!
//! The server hands each event to `Conn::handle`; the connection remembers
//! readiness (edge-triggered events do not repeat), reads, runs and writes until
//! it would block, runs out of its turn, or is done, and keeps its own
//! registration with the Poll up to date. It never sees the Poll itself, only
//! the registry.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::aio::Done;
use crate::buf::OutQueue;
use crate::ctx::{Ctx, Origin};
use crate::driver::{Driver, Phase, Progress, Received};
use crate::handshake::Handshake;
use crate::lifecycle::Activity;
use crate::logging;
use crate::proto::option::{greeting_newstyle, greeting_oldstyle};
use crate::proto::reply::Style;
use crate::transmission::{InFlight, Session};

mod transport;
use transport::Transport;

/// Requests (or options) handled per turn, so one busy client cannot starve the rest.
const TURN: usize = 64;
/// Stop reading requests while this much output is unsent; resume once it drains.
const OUT_LIMIT: usize = 64 << 20;
/// Blocks handed to one writev(2).
const IOV_MAX: usize = 256;

/// What the server tells a connection.
#[derive(Debug)]
pub enum Event {
    /// The kernel reported readiness on its socket.
    Ready(Readiness),
    /// Its turn again, without news from the kernel: it yielded, it was just
    /// accepted, or a shutdown is waiting for it to go quiet.
    Resume,
    /// The server is shutting down: look at the socket once more, so that
    /// requests already sent are answered (with ESHUTDOWN) before we hang up.
    Shutdown,
    /// The handshake deadline the server queued for connection `serial` (slab
    /// keys are reused: the serial tells whether it is still this one's), set
    /// `after` its start, has passed.
    Deadline { serial: u64, after: Duration },
    /// The server is done with it (the grace period after a shutdown is over).
    Close,
    /// One of its requests came back from the I/O engine (routed by slab key:
    /// the origin's serial says whether it is really this connection's).
    Completed { flight: InFlight, done: Done },
    /// The I/O engine has room again for the request it was holding.
    Room,
}

/// Readiness as mio reports it; errors and hang-ups count as both, so the next
/// read or write finds them.
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    pub read_closed: bool,
}

impl From<&mio::event::Event> for Readiness {
    fn from(ev: &mio::event::Event) -> Readiness {
        Readiness {
            readable: ev.is_readable() || ev.is_read_closed() || ev.is_error(),
            writable: ev.is_writable() || ev.is_write_closed() || ev.is_error(),
            read_closed: ev.is_read_closed() || ev.is_error(),
        }
    }
}

/// What the server should do with a connection after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until the next readiness event.
    Wait,
    /// Its turn is over but it has more to do: resume it soon.
    Yield,
    /// Finished: deregister and drop it.
    Close,
}

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
            w.put(&greeting_newstyle());
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
        }
    }

    /// Whether this is connection `serial`, still negotiating: the question a
    /// queued handshake deadline asks.
    pub fn negotiating(&self, serial: u64) -> bool {
        self.id == serial && self.driver.in_handshake()
    }

    /// The one entry point: acts on `ev`, does as much work as readiness and
    /// the turn allow, and keeps its registration with the Poll current.
    pub fn handle(&mut self, ev: Event, ctx: &mut Ctx, registry: &Registry) -> Step {
        let _scope = logging::conn_scope(self.id);
        ctx.serving = Origin {
            key: self.token.0,
            serial: self.id,
        };
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
                    ctx.pool.give(done.buf); // a predecessor's, in the same slab slot
                    return Step::Wait;
                }
                self.driver.complete(ctx, &flight, done, &mut self.out);
                self.blocked = false; // a share of the engine came back
            }
            Event::Room => {
                self.waiting_for_room = false;
                self.blocked = false;
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
        let mut step = self.turn(ctx);
        // Storage with nothing pending goes back to the pool between bursts.
        self.driver.release(&mut ctx.pool);
        if self.out.is_empty() {
            self.out.release(&mut ctx.pool);
        }
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
            if self.writable
                && self.has_output()
                && let Err(e) = self.flush(ctx)
            {
                log::debug!("write: {e}");
                return Step::Close;
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
            if self.blocked {
                return Step::Wait; // a completion or freed room resumes us
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
                return Step::Wait;
            }
            if let Err(e) = self.fill(ctx) {
                log::debug!("read: {e}");
                return Step::Close;
            }
        }
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
            match self.driver.step(ctx, &mut self.out) {
                Progress::Some => {
                    *budget -= 1;
                    progress = Progress::Some;
                }
                Progress::NeedInput => break,
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
            Ok(Received::Bytes { drained }) => {
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

    /// Asks the Poll for writability only while output waits for room: a socket
    /// is almost always writable, and every reply the client reads would
    /// otherwise wake the loop for nothing (and, on some kernels and VMs, cost a
    /// cross-CPU wakeup per request). A separate write fd stays registered for
    /// writability throughout.
    fn update_interest(&mut self, registry: &Registry) -> io::Result<()> {
        let want = !self.writable && self.has_output();
        if want == self.write_registered || self.wfd.is_some() || self.unpolled_write {
            return Ok(());
        }
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        SourceFd(&self.rfd.as_raw_fd()).reregister(registry, self.token, interest)?;
        self.write_registered = want;
        Ok(())
    }
}

/// A connection registers its own descriptors: one socket for both directions,
/// or (stdin/stdout pipes) a read fd and a write fd under the same token.
impl Source for Conn {
    fn register(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        self.token = token;
        self.unpolled_read = !register_fd(&self.rfd, registry, token, Interest::READABLE)?;
        self.unpolled_write = match &self.wfd {
            Some(w) => !register_fd(w, registry, token, Interest::WRITABLE)?,
            None => self.unpolled_read,
        };
        self.write_registered = self.wfd.is_some();
        Ok(())
    }

    fn reregister(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        self.token = token;
        let interest = match self.write_registered && self.wfd.is_none() {
            true => Interest::READABLE | Interest::WRITABLE,
            false => Interest::READABLE,
        };
        if !self.unpolled_read {
            SourceFd(&self.rfd.as_raw_fd()).reregister(registry, token, interest)?;
        }
        if let (Some(w), false) = (&self.wfd, self.unpolled_write) {
            SourceFd(&w.as_raw_fd()).reregister(registry, token, Interest::WRITABLE)?;
        }
        Ok(())
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        if !self.unpolled_read {
            SourceFd(&self.rfd.as_raw_fd()).deregister(registry)?;
        }
        if let (Some(w), false) = (&self.wfd, self.unpolled_write) {
            SourceFd(&w.as_raw_fd()).deregister(registry)?;
        }
        Ok(())
    }
}

/// Registers `fd`; false if the Poll cannot watch it (epoll refuses regular
/// files and some devices with EPERM), which is no error: such a descriptor
/// never blocks.
fn register_fd(fd: &OwnedFd, registry: &Registry, token: Token, i: Interest) -> io::Result<bool> {
    match SourceFd(&fd.as_raw_fd()).register(registry, token, i) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            log::debug!("fd {}: not pollable: used as always ready", fd.as_raw_fd());
            Ok(false)
        }
        Err(e) => Err(e),
    }
}
