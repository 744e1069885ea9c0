//! One client: its socket, its buffers, and the phase it is in.
//!
//! The connection never sees the Poll. The server tells it what readiness the
//! kernel reported; it remembers that (edge-triggered events do not repeat) and
//! reads, parses, runs and writes until it would block, runs out of its turn, or
//! is done.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::backend::{Backend, Extent};
use crate::buf::{InBuf, OutQueue, Pool};
use crate::driver::{Driver, Phase, Progress};
use crate::export::Export;
use crate::handshake::Handshake;
use crate::logging;
use crate::proto::option::{greeting_newstyle, greeting_oldstyle};
use crate::proto::reply::Style;
use crate::sys;
use crate::transmission::{Env, Session};

/// Requests (or options) handled per turn, so one busy client cannot starve the rest.
const TURN: usize = 64;
/// Stop reading requests while this much output is unsent; resume once it drains.
const OUT_LIMIT: usize = 64 << 20;
/// Read at least this much per read(2).
const READ_CHUNK: usize = 64 * 1024;
/// Blocks handed to one writev(2).
const IOV_MAX: usize = 256;
/// At shutdown, a client quiet this long is idle and let go at once; a busier
/// one may have a request on the wire, so it gets ESHUTDOWN and time to leave.
const QUIET: Duration = Duration::from_millis(500);

/// What the server should do with a connection after driving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until the next readiness event.
    Wait,
    /// Its turn is over but it has more to do: drive it again soon.
    Yield,
    /// Finished: deregister and drop it.
    Close,
}

/// Everything a connection borrows from the server for one turn.
pub struct Ctx<'a> {
    pub backend: &'a mut dyn Backend,
    pub export: &'a Export,
    pub extents: &'a mut Vec<Extent>,
    pub pool: &'a mut Pool,
    pub shutting_down: bool,
    /// The loop's clock for this turn (read once per wake-up).
    pub now: Instant,
}

pub struct Conn {
    /// The server's number for this connection: unique for the life of the
    /// process (slab keys are reused), so it names the connection in log lines
    /// and tells a queued handshake deadline from a successor's.
    id: u64,
    rfd: OwnedFd,
    /// A separate fd for writing (`-s` with distinct stdin and stdout).
    wfd: Option<OwnedFd>,
    inb: InBuf,
    out: OutQueue,
    /// The protocol: what the input means and what to answer.
    driver: Driver,
    /// Readiness last reported and not yet used up (cleared on EAGAIN).
    pub readable: bool,
    /// The peer has shut down its side (EPOLLRDHUP): the data before the FIN may
    /// have come with the same edge, so a short read no longer means "drained",
    /// and reading goes on until it returns 0.
    pub read_closed: bool,
    pub writable: bool,
    /// Whether the Poll currently reports writability for this connection (the
    /// server's business: see `wants_write_events`).
    pub write_registered: bool,
    /// The client will send nothing more.
    eof: bool,
    /// Why we are closing once the output drains.
    closing: Option<&'static str>,
    /// When a message was last handled.
    last_active: Instant,
}

impl Conn {
    /// A connection that starts by sending the greeting.
    pub fn new(id: u64, rfd: OwnedFd, wfd: Option<OwnedFd>, oldstyle: bool, ctx: &mut Ctx) -> Conn {
        let mut out = OutQueue::default();
        let mut w = out.writer(ctx.pool);
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
            inb: InBuf::default(),
            out,
            driver: Driver::new(phase),
            readable: true,
            read_closed: false,
            writable: true,
            write_registered: false,
            eof: false,
            closing: None,
            last_active: ctx.now,
        }
    }

    pub fn read_fd(&self) -> RawFd {
        self.rfd.as_raw_fd()
    }

    pub fn write_fd(&self) -> Option<RawFd> {
        self.wfd.as_ref().map(|f| f.as_raw_fd())
    }

    /// Whether the connection is waiting for the socket to take more output.
    ///
    /// Interest in writability is registered only then: a socket is almost always
    /// writable, and every reply the client reads would otherwise wake the loop
    /// for nothing (and, on some kernels and VMs, cost a cross-CPU wakeup per request).
    pub fn wants_write_events(&self) -> bool {
        !self.writable && !self.out.is_empty()
    }

    /// The server is shutting down: look at the socket once more, so that
    /// requests already sent are answered (with ESHUTDOWN) before we hang up.
    pub fn begin_shutdown(&mut self) {
        self.readable = true;
    }

    pub fn serial(&self) -> u64 {
        self.id
    }

    pub fn in_handshake(&self) -> bool {
        self.driver.in_handshake()
    }

    /// Does as much work as readiness and the turn allow.
    pub fn drive(&mut self, ctx: &mut Ctx) -> Step {
        let _scope = logging::conn_scope(self.id);
        let step = self.turn(ctx);
        // Storage with nothing pending goes back to the pool between bursts.
        self.inb.release(ctx.pool);
        if self.out.is_empty() {
            self.out.release(ctx.pool);
        }
        if step == Step::Close {
            log::debug!("closed: {}", self.closing.unwrap_or("error"));
        }
        step
    }

    fn turn(&mut self, ctx: &mut Ctx) -> Step {
        let mut budget = TURN;
        loop {
            let progress = if self.closing.is_some() {
                Progress::NeedInput
            } else {
                self.process(ctx, &mut budget)
            };
            if let Progress::Close(why) = progress {
                self.closing = Some(why);
            }
            if self.writable
                && !self.out.is_empty()
                && let Err(e) = self.flush(ctx.pool)
            {
                log::debug!("write: {e}");
                return Step::Close;
            }
            if self.closing.is_some() {
                // flush() either emptied the queue or met EAGAIN.
                return if self.out.is_empty() {
                    Step::Close
                } else {
                    Step::Wait
                };
            }
            if self.out.len() >= OUT_LIMIT {
                return Step::Wait; // resumes on the next writable edge
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
                if !self.inb.is_empty() || self.driver.skip() > 0 {
                    log::warn!("client disconnected in the middle of a message");
                }
                self.closing = Some("client closed the connection");
                continue;
            }
            if !self.readable {
                // Shutting down: an idle client is let go at once; one that was
                // refused gets to disconnect itself.
                let idle = self.inb.is_empty()
                    && self.driver.skip() == 0
                    // A request arrived after shutdown began and was refused: the
                    // client now owes us a soft disconnect, which we wait for.
                    && !self.driver.refused_in_shutdown()
                    && ctx.now.duration_since(self.last_active) >= QUIET;
                if ctx.shutting_down && !self.in_handshake() && idle {
                    self.closing = Some("server shutting down");
                    continue;
                }
                return Step::Wait;
            }
            match self.fill(ctx.pool) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("read: {e}");
                    return Step::Close;
                }
            }
        }
    }

    /// Handles buffered messages until one is incomplete, the turn ends, or the
    /// output passes its limit.
    fn process(&mut self, ctx: &mut Ctx, budget: &mut usize) -> Progress {
        let mut progress = Progress::NeedInput;
        while *budget > 0 && self.out.len() < OUT_LIMIT {
            match self.one(ctx) {
                Progress::Some => {
                    *budget -= 1;
                    progress = Progress::Some;
                }
                Progress::NeedInput => break,
                close => return close,
            }
        }
        progress
    }

    /// Handles the message at the front of the input, if it is complete.
    fn one(&mut self, ctx: &mut Ctx) -> Progress {
        let mut env = Env {
            backend: &mut *ctx.backend,
            export: ctx.export,
            extents: &mut *ctx.extents,
            shutting_down: ctx.shutting_down,
        };
        let mut out = self.out.writer(&mut *ctx.pool);
        let (used, progress) = self.driver.one(self.inb.pending(), &mut env, &mut out);
        self.inb.consume(used);
        progress
    }

    /// One read(2) into the input buffer.
    fn fill(&mut self, pool: &mut Pool) -> io::Result<usize> {
        let want = READ_CHUNK.max(self.driver.need().saturating_sub(self.inb.len()));
        let n = sys::read(self.rfd.as_raw_fd(), self.inb.space(want, pool))?;
        self.inb.commit(n);
        if n > 0 && n < want && !self.read_closed {
            // A short read drained the socket: anything arriving later raises a new
            // edge, so skip the read that would only say EAGAIN.
            self.readable = false;
        }
        Ok(n)
    }

    /// Writes queued output until it is gone or the socket is full: many replies
    /// per writev(2), straight from the blocks they were built in.
    fn flush(&mut self, pool: &mut Pool) -> io::Result<()> {
        let fd = self.write_fd().unwrap_or(self.rfd.as_raw_fd());
        while !self.out.is_empty() {
            let written = {
                let mut iov = [IoSlice::new(&[]); IOV_MAX];
                let n = self.out.slices(&mut iov);
                sys::writev(fd, &iov[..n])
            };
            match written {
                Ok(n) => self.out.consume(n, pool),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
