//! The pure half of a connection: the bytes received so far, what the message
//! at their front means, and what goes back.
//!
//! No sockets and no clock. `Conn` hands `receive` a function that reads from
//! its socket; the fuzz targets and the randomized tests hand it one that copies
//! arbitrary bytes in arbitrary pieces. Both go through the same input buffer
//! and its growth policy, so the code they exercise is the code the server runs.
//!
//! It also says what it holds (`held`) and asks the memory budget before it
//! grows: before a request's payload is read or its reply built
//! (`Progress::NeedMemory` when it must wait), and before a read would need a
//! bigger input buffer (`admit_read`).

use std::io;

use crate::aio::Done;
use crate::budget::Class;
use crate::buf::{InBuf, OutQueue, Pool};
use crate::ctx::Ctx;
use crate::ctx::InFlight;
use crate::handshake::{Handshake, Outcome};
use crate::proto::request::Request;
use crate::proto::request::parse_request;
use crate::proto::{CMD_DISC, CMD_READ, Parse};
use crate::session::Session;
use crate::transmission::{self, Handled};

/// Read at least this much per read(2).
const READ_CHUNK: usize = 64 * 1024;
/// Beyond what has arrived, the input buffer grows by at most this much at a
/// time: a request header promising 64 MiB reserves this, not 64 MiB. Large
/// enough that a 1 MiB WRITE takes few reads.
const GROWTH_STEP: usize = 256 * 1024;
/// What any request asks the budget for, besides its payload and its reply's
/// data: room for its reply header. Every request asks, so a client piling up
/// small replies it never reads is held back too.
const REPLY: usize = 64;

/// Where a connection is in the protocol.
#[derive(Debug)]
pub enum Phase {
    Handshake(Handshake),
    Transmission(Session),
}

/// How far handling the buffered input got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Handled a message.
    Some,
    /// The message at the front is incomplete.
    NeedInput,
    /// End the connection (after sending what is queued).
    Close(&'static str),
    /// The request at the front must wait for room in the I/O engine (see
    /// `transmission::room_for`); a completion or freed room resumes it.
    Blocked,
    /// STARTTLS was accepted: once its ACK is sent, the connection switches to
    /// TLS, handing it the bytes not yet used (`unread`).
    StartTls,
    /// The memory budget has no room for the request at the front (its
    /// payload, its reply): the connection waits in the budget's queue, and
    /// reads nothing meanwhile, until it is resumed.
    NeedMemory,
}

/// What one `receive` got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// The client will send nothing more.
    Eof,
    /// `n` bytes; `drained` when the read was short, so the source had no
    /// more for now.
    Bytes { n: usize, drained: bool },
}

/// One connection's protocol state and its unprocessed input.
#[derive(Debug)]
pub struct Driver {
    input: InBuf,
    state: State,
}

/// The protocol state proper, apart from the bytes it reads.
#[derive(Debug)]
struct State {
    phase: Phase,
    /// Input bytes still to be thrown away (option data or a WRITE payload we refused).
    skip: u64,
    /// Total bytes the message at the front needs: how much to read next.
    need: usize,
    /// A request arrived while the server was shutting down (and was refused):
    /// the client owes us a soft disconnect.
    refused_in_shutdown: bool,
    /// Requests in the I/O engine, their replies still to come.
    in_flight: usize,
    /// Bytes of data those replies will carry (their READs' lengths).
    in_flight_data: usize,
    /// Bytes of the buffers those requests lent the engine (READs and WRITEs).
    in_flight_bufs: usize,
    /// The budget admitted the request at the front: its payload may be read.
    admitted: bool,
    /// What it was admitted with: its whole size and its reply's data,
    /// counted from the moment it was admitted, however little has arrived.
    reserved: usize,
    /// The budget queue this connection waits in, if any.
    queued: Option<Class>,
}

impl Driver {
    pub fn new(phase: Phase) -> Driver {
        Driver {
            input: InBuf::default(),
            state: State {
                phase,
                skip: 0,
                need: 0,
                refused_in_shutdown: false,
                in_flight: 0,
                in_flight_data: 0,
                in_flight_bufs: 0,
                admitted: false,
                reserved: 0,
                queued: None,
            },
        }
    }

    pub fn in_handshake(&self) -> bool {
        matches!(self.state.phase, Phase::Handshake(_))
    }

    /// Reads once through `read` into the input buffer, which grows with what
    /// arrives (see `GROWTH_STEP`), never with what a length field promises.
    pub fn receive(
        &mut self,
        pool: &mut Pool,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<Received> {
        let want = self.want();
        let room = self.input.space(want, pool);
        let asked = room.len();
        let n = read(room)?;
        self.input.commit(n);
        Ok(match n {
            0 => Received::Eof,
            n => Received::Bytes {
                n,
                drained: n < asked,
            },
        })
    }

    /// Room the next read asks for. A message still arriving fills the block
    /// it has before the block grows again (so a large payload is copied a
    /// few times, not once per read); the block grows by what has arrived, at
    /// least `GROWTH_STEP`, and never past the message.
    fn want(&self) -> usize {
        let len = self.input.len();
        let missing = self.state.need.saturating_sub(len);
        let fill = missing.min(READ_CHUNK);
        if missing > 0 && self.input.free() >= fill {
            return fill;
        }
        READ_CHUNK.max(missing.min(len.max(GROWTH_STEP)))
    }

    /// Bytes of storage this connection holds for its requests: its input
    /// buffer (or, if more, what the request at the front was admitted with)
    /// and the buffers it lent the I/O engine. Its output queue is the
    /// caller's to add.
    pub fn held(&self) -> usize {
        self.input.capacity().max(self.state.reserved) + self.state.in_flight_bufs
    }

    /// Buffers lent to the I/O engine: they stay held until reaped, even if
    /// the connection goes first.
    pub fn lent_to_engine(&self) -> usize {
        self.state.in_flight_bufs
    }

    /// Asks the budget whether the next read may grow the input buffer
    /// (nothing to ask when it has room, or when the message arriving was
    /// admitted whole). `out_held` is what the output queue holds.
    pub fn admit_read(&mut self, ctx: &mut Ctx, out_held: usize) -> bool {
        let want = self.want();
        if self.input.free() >= want {
            return true;
        }
        let after = (self.input.len() + want).max(READ_CHUNK);
        let has = self.input.capacity().max(self.state.reserved);
        let grow = after.saturating_sub(has);
        grow == 0 || {
            let held = self.held() + out_held;
            ctx.budget
                .admit(ctx.serving, held, grow, &mut self.state.queued)
        }
    }

    /// The budget resumed this connection: it is out of its queue, and goes
    /// ahead of it once.
    pub fn memory_granted(&mut self) {
        self.state.queued = None;
    }

    /// The budget queue it waits in, if any (to leave it when the connection goes).
    pub fn queued(&self) -> Option<Class> {
        self.state.queued
    }

    /// Handles the message at the front of the input, if it is complete,
    /// queueing any reply on `out`.
    pub fn step(&mut self, ctx: &mut Ctx, out: &mut OutQueue) -> Progress {
        let held = self.held() + out.held();
        let (used, progress) = self.state.one(self.input.pending(), held, ctx, out);
        self.input.consume(used);
        if used > READ_CHUNK {
            // A large message is done: what follows it needs no large block
            // (the engine took a copy of a WRITE's payload).
            self.input.shrink(&mut ctx.pool);
        }
        progress
    }

    /// Nothing half-received, nothing to skip, no reply still to come, and no
    /// refused request whose client owes us a disconnect: the connection may be
    /// let go at shutdown.
    pub fn quiet(&self) -> bool {
        !self.mid_message() && !self.awaiting_io() && !self.state.refused_in_shutdown
    }

    /// Requests are in the I/O engine: their completions (and replies) are to
    /// come, so the connection may not close yet.
    pub fn awaiting_io(&self) -> bool {
        self.state.in_flight > 0
    }

    /// Data that replies still in the I/O engine will carry: output to come,
    /// which counts against a client's output limit as queued output does.
    pub fn awaited_data(&self) -> usize {
        self.state.in_flight_data
    }

    /// A request of ours came back from the I/O engine: its reply goes on `out`.
    pub fn complete(&mut self, ctx: &mut Ctx, flight: &InFlight, done: Done, out: &mut OutQueue) {
        self.state.in_flight -= 1;
        self.state.in_flight_data -= reply_data(&flight.req, flight.effect);
        self.state.in_flight_bufs -= transmission::engine_bytes(&flight.req, flight.effect);
        transmission::complete(flight, done, &mut ctx.pool, out);
    }

    /// Part of a message has arrived, or its data is still being skipped.
    pub fn mid_message(&self) -> bool {
        !self.input.is_empty() || self.state.skip > 0
    }

    /// Bytes received and not used: after STARTTLS, the start of the TLS
    /// handshake (never options: `forget_unread` drops them from here).
    pub fn unread(&self) -> &[u8] {
        self.input.pending()
    }

    pub fn forget_unread(&mut self) {
        self.input.consume(self.input.len());
    }

    /// Gives the input buffer back to the pool if nothing is pending.
    pub fn release(&mut self, pool: &mut Pool) {
        self.input.release(pool);
    }

    /// Keeps what little is pending (half a header, say) in a small block,
    /// the large one back to the pool: for a connection about to wait.
    pub fn shrink(&mut self, pool: &mut Pool) {
        self.input.shrink(pool);
    }
}

impl State {
    /// Handles the message at the front of `input`, if it is complete. Returns
    /// how many bytes of `input` were used.
    fn one(
        &mut self,
        input: &[u8],
        held: usize,
        ctx: &mut Ctx,
        out: &mut OutQueue,
    ) -> (usize, Progress) {
        let mut skipped = 0;
        if self.skip > 0 {
            let n = self.skip.min(input.len() as u64);
            skipped = n as usize; // ≤ input.len()
            self.skip -= n;
            if self.skip > 0 {
                return (skipped, Progress::NeedInput);
            }
        }
        let input = &input[skipped..];
        let (used, progress) = match &mut self.phase {
            Phase::Handshake(hs) => {
                let mut replies = Vec::new();
                let outcome = hs.step(input, &mut replies, &ctx.export, ctx.shutting_down());
                out.writer(&mut ctx.pool).put(&replies);
                self.handshake_outcome(outcome)
            }
            Phase::Transmission(s) => {
                let s = *s;
                self.request(&s, input, held, ctx, out)
            }
        };
        (skipped + used, progress)
    }

    fn handshake_outcome(&mut self, outcome: Outcome) -> (usize, Progress) {
        match outcome {
            Outcome::Continue(0) => (0, Progress::NeedInput),
            Outcome::Continue(n) => (n, Progress::Some),
            Outcome::Skip { consumed, skip } => {
                self.skip = skip;
                (consumed, Progress::Some)
            }
            Outcome::Transmission { consumed, session } => {
                log::debug!(
                    "transmission: {:?}, flags {:#x}, base:allocation {}",
                    session.style,
                    session.flags,
                    session.meta
                );
                self.phase = Phase::Transmission(session);
                (consumed, Progress::Some)
            }
            Outcome::StartTls { consumed } => (consumed, Progress::StartTls),
            Outcome::Abort => (0, Progress::Close("client aborted")),
            Outcome::Close(why) => {
                log::warn!("handshake: {why}: disconnecting");
                (0, Progress::Close(why))
            }
        }
    }

    fn request(
        &mut self,
        s: &Session,
        input: &[u8],
        held: usize,
        ctx: &mut Ctx,
        out: &mut OutQueue,
    ) -> (usize, Progress) {
        let (req, hdr) = match parse_request(input, s.extended()) {
            Parse::Done(req, n) => (req, n),
            Parse::NeedMore => return (0, Progress::NeedInput),
            Parse::Malformed(why) => {
                log::warn!("{why}: disconnecting");
                return (0, Progress::Close(why));
            }
        };
        if req.kind == CMD_DISC {
            return (0, Progress::Close("client sent DISC"));
        }
        if req.payload > ctx.export.max_request {
            if s.extended() {
                log::warn!("payload of {} bytes: disconnecting", req.payload);
                return (0, Progress::Close("payload too large"));
            }
            // Compact WRITE: refuse it, then read past its payload without keeping it.
            log::warn!("WRITE of {} bytes refused", req.payload);
            let mut w = out.writer(&mut ctx.pool);
            transmission::error(s, &req, &mut w, crate::proto::EINVAL, "request too large");
            self.skip = req.payload;
            return (hdr, Progress::Some);
        }
        let total = hdr + req.payload as usize; // payload ≤ max_request, checked
        if !self.admitted {
            // Its payload still to come and its reply's data, counted from now.
            let payload = total.saturating_sub(input.len());
            let reply = transmission::reply_cost(s, ctx, &req);
            let want = payload + reply + REPLY;
            if !ctx.budget.admit(ctx.serving, held, want, &mut self.queued) {
                return (0, Progress::NeedMemory);
            }
            self.admitted = true;
            self.reserved = total + reply;
        }
        if input.len() < total {
            self.need = total;
            return (0, Progress::NeedInput);
        }
        self.need = 0;
        if !transmission::room_for(ctx, self.in_flight) {
            return (0, Progress::Blocked);
        }
        self.admitted = false;
        self.reserved = 0;
        self.refused_in_shutdown |= ctx.shutting_down();
        if transmission::handle(s, ctx, &req, &input[hdr..total], out) == Handled::Submitted {
            self.in_flight += 1;
            self.in_flight_data += reply_data(&req, req.length);
            self.in_flight_bufs += transmission::engine_bytes(&req, req.length);
        }
        (total, Progress::Some)
    }
}

/// Bytes of data a request's reply carries: a READ's length (≤ MAX_REQUEST, or
/// it would not have been submitted), nothing for the others.
fn reply_data(req: &Request, len: u64) -> usize {
    if req.kind == CMD_READ {
        len as usize
    } else {
        0
    }
}

/// What the fuzz harness's checker inspects between steps.
#[cfg(feature = "fuzzing")]
impl Driver {
    pub(crate) fn session(&self) -> Option<Session> {
        match self.state.phase {
            Phase::Transmission(s) => Some(s),
            Phase::Handshake(_) => None,
        }
    }

    pub(crate) fn skip(&self) -> u64 {
        self.state.skip
    }

    pub(crate) fn need(&self) -> usize {
        self.state.need
    }
}
