//! One client: its socket and what the kernel said of it, its transport
//! (plaintext or TLS), its protocol driver, and where it is in its life.
//!
//! The server hands each event to `Conn::handle` (having checked that it is
//! addressed to this very connection, see `crate::origin`); the connection
//! reads, runs and writes until it must wait, runs out of its turn, or is
//! done, keeps its registration with the Poll up to date, and answers with a
//! `Step`. It never sees the Poll itself, only the registry.
//!
//! Its state is a few enums whose combinations are all legal: where it is in
//! its life (`Life`), its place in the queue for room in the I/O engine
//! (`Room`), whether it waits for the rest of a half-sent request (`Stall`),
//! and what its socket last reported (`socket::ReadSide`). Which one a turn
//! looks at next is decided in one place, `Conn::next`.

use std::io::{self, IoSlice};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use mio::Registry;

use crate::agreement::Agreement;
use crate::driver::{Driver, Phase, Progress, Received};
use crate::filter;
use crate::handshake::Handshake;
use crate::logging;
use crate::origin::Origin;
use crate::proto::option::{greeting_newstyle, greeting_oldstyle};
use crate::proto::reply::Style;
use crate::shared::Shared;

mod event;
mod socket;
mod stall;
#[cfg(test)]
mod tests;
mod transport;

pub use event::{Event, Step};
use socket::ReadSide;
pub use socket::Socket;
use stall::{Await, Stall, Waits};
use transport::Transport;

/// Requests (or options) handled per turn, so one busy client cannot starve the rest.
const TURN_REQUESTS: usize = 64;
/// Bytes read per turn: a client streaming large WRITEs yields after this
/// much, rather than keep the loop copying its payloads while others wait.
const TURN_BYTES: usize = 2 << 20;
/// TLS records decrypted per turn: a client sending tiny records makes much
/// work of few bytes (2 MiB of 1-byte records took the loop 0.7 s).
const TURN_RECORDS: u64 = 1024;
/// The loop's time per turn: however cheap each request looked, a turn that
/// has taken this long yields. The clock is read at the start, then every
/// `CLOCK_EVERY` requests and after any that did extra work (`Storage::take_work`).
const TURN_TIME: Duration = Duration::from_millis(2);
const CLOCK_EVERY: usize = 8;
/// Blocks handed to one writev(2).
const IOV_MAX: usize = 256;
/// What a connection's state costs at most besides its buffers: itself, its
/// slab slot, its deadlines, the allocator's rounding (an idle connection
/// costs under 1 KiB; this is its worst, with room to spare).
const STATE_COST: usize = 16 << 10;

/// What one connection costs just by being open, at its worst, besides the
/// buffers the budget counts as they come and go: its socket buffers in the
/// kernel (more over `tcp`), its state, and with `tls` (if clients may start
/// it) the TLS session's buffers. The memory budget sets this aside for
/// every connection it admits.
pub fn fixed_cost(tls: bool, tcp: bool) -> usize {
    let tls_cost = match tls {
        #[cfg(feature = "tls")]
        true => crate::tls::MEMORY,
        _ => 0,
    };
    socket::socket_cost(tcp) + STATE_COST + tls_cost
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// Reading and handling messages (the driver knows whether they are
    /// options or requests).
    Open,
    /// The client chose the export and a filter holds the answer until then
    /// (delay-open): nothing is sent or read meanwhile.
    Opening(Instant),
    /// STARTTLS was accepted: TLS begins once its ACK is out; nothing is read
    /// meanwhile.
    StartingTls,
    /// Ending: nothing more is read, and it closes once its output is out
    /// and its requests have come back from the I/O engine and the filters.
    Closing(Ending),
    /// Everything the client sent before its DISC is answered; a filter
    /// keeps the socket open until then (delay-close).
    Lingering(Instant),
}

/// Why a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The client sent DISC: a graceful end, which a filter may delay.
    Disc,
    Other(&'static str),
}

impl Ending {
    fn why(self) -> &'static str {
        match self {
            Ending::Disc => "client sent DISC",
            Ending::Other(why) => why,
        }
    }
}

/// Its place in the server's queue for room in the I/O engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// Not in the queue.
    Free,
    /// In the queue, but holding nothing back (a completion gave it a share
    /// of the engine since): `Room` finds it with work to do or not.
    Queued,
    /// In the queue, and holding the request at its front: it reads nothing
    /// until a completion or `Room` comes.
    Blocked,
}

impl Room {
    /// The request at its front waits for room; true if it must join the
    /// queue for it (it was not in it already).
    fn block(&mut self) -> bool {
        let join = *self == Room::Free;
        *self = Room::Blocked;
        join
    }

    /// One of its requests came back from the engine: its own share has room
    /// again, though its place in the queue stays.
    fn share_back(&mut self) {
        if *self == Room::Blocked {
            *self = Room::Queued;
        }
    }
}

/// What a turn may still do, and what it did.
#[derive(Debug)]
struct Turn {
    /// Requests it may still handle (a request that did extra work counts
    /// for more than one).
    requests: usize,
    bytes: usize,
    records: u64,
    /// When it must yield.
    until: Instant,
    /// Bytes arrived (for the half-sent clock).
    got_input: bool,
    /// It ended waiting for the client's bytes, not held back by us.
    awaiting_input: bool,
    /// It joined the queue for room in the I/O engine.
    queued_for_room: bool,
}

impl Turn {
    /// A request was handled, having done `work` more than an ordinary one
    /// (see `Storage::take_work`): the turn ends when its requests run out,
    /// or its time.
    fn handled(&mut self, work: usize) {
        self.requests = self.requests.saturating_sub(1 + work);
        let look = work > 0 || self.requests.is_multiple_of(CLOCK_EVERY);
        if look && self.requests > 0 && Instant::now() >= self.until {
            self.requests = 0;
        }
    }

    fn new() -> Turn {
        Turn {
            requests: TURN_REQUESTS,
            bytes: TURN_BYTES,
            records: TURN_RECORDS,
            until: Instant::now() + TURN_TIME,
            got_input: false,
            awaiting_input: false,
            queued_for_room: false,
        }
    }
}

/// What the turn does after a look at the state.
enum Next {
    /// Look again: something changed.
    Again,
    /// The turn is over.
    Stop(Step),
}

pub struct Conn {
    origin: Origin,
    /// The server's number for this connection: unique for the life of the
    /// process (slab keys are reused), so it names the connection in log lines.
    id: u64,
    socket: Socket,
    /// Plaintext, or TLS after STARTTLS.
    transport: Transport,
    /// The protocol, its buffers, and what they cost the memory budget.
    driver: Driver,
    life: Life,
    room: Room,
    stall: Stall,
    /// Since when it has waited for memory, if it does (the server holds it
    /// back: not timed, but at the connection limit it may give its place up).
    starved: Option<Instant>,
    /// How many of its warnings the log still takes (`logging::Quota`).
    log_quota: logging::Quota,
}

impl Conn {
    /// Connection `id` in slab slot `key`, which starts by sending the greeting.
    pub fn new(key: usize, id: u64, socket: Socket, oldstyle: bool, sh: &mut Shared) -> Conn {
        let export = &sh.storage.export;
        let (phase, greeting) = if oldstyle {
            let session = Agreement::new(export, Style::Simple, false);
            let greeting = greeting_oldstyle(export.size, session.flags);
            (Phase::Transmission(session), greeting.to_vec())
        } else {
            let greeting = greeting_newstyle(export.handshake_flags);
            (Phase::Handshake(Handshake::default()), greeting.to_vec())
        };
        // Oldstyle has no handshake: the client opens the export as it
        // connects, so the filters hear of it now (and may hold its greeting).
        let life = match oldstyle {
            true => match sh.storage.filters.open(filter::Conn { id }, sh.now) {
                Some(until) => Life::Opening(until),
                None => Life::Open,
            },
            false => Life::Open,
        };
        Conn {
            origin: Origin::new(key, id),
            id,
            socket,
            transport: Transport::Plain,
            driver: Driver::new(id, phase, &greeting, sh),
            life,
            room: Room::Free,
            stall: Stall::No,
            starved: None,
            log_quota: logging::Quota::default(),
        }
    }

    /// Its number in log lines.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// What the memory budget counts it as holding beyond its own share:
    /// what dropping it gives back.
    pub fn counted(&self) -> usize {
        self.driver.counted()
    }

    /// Since when it has made no progress: its client keeps us waiting (see
    /// `stall`), or it waits for memory; None if it is going about its
    /// business.
    pub fn stuck_since(&self) -> Option<Instant> {
        match (self.stalled_since(), self.starved) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Bytes it sent that its client has not taken yet, still in the kernel
    /// (charged to us, and left behind if it is dropped).
    pub fn unsent_in_kernel(&self) -> usize {
        self.socket.unsent_in_kernel()
    }

    /// Once closed: its socket, if replies it sent still wait in the kernel
    /// for its client, with how many bytes (see `crate::server` ghosts).
    pub fn into_leftover(self) -> Option<(OwnedFd, usize)> {
        self.socket.into_leftover()
    }

    /// What events for it are addressed to.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Still negotiating: the question a queued handshake deadline asks.
    pub fn negotiating(&self) -> bool {
        self.driver.in_handshake()
    }

    /// The connection goes: what it holds goes back to the budget (buffers
    /// still in the I/O engine as they are reaped), it leaves any queue for
    /// memory, and the filters hear of it.
    pub fn close(&mut self, sh: &mut Shared) {
        self.driver.close(&mut sh.budget);
        if !self.negotiating() {
            let me = filter::Conn { id: self.id };
            sh.storage.closed(me, sh.now);
        }
    }

    /// The one entry point: acts on `ev`, does as much work as readiness and
    /// the turn allow, and keeps its registration with the Poll current.
    pub fn handle(&mut self, ev: Event, sh: &mut Shared, registry: &Registry) -> Step {
        let scope = logging::conn_scope(self.id, self.log_quota);
        let step = match self.take(ev, sh) {
            Next::Stop(step) => step,
            Next::Again => self.turn(sh, registry),
        };
        self.driver.settle(&mut sh.budget);
        self.log_quota = scope.end();
        step
    }

    /// Takes in what an event says; `Stop` if there is nothing more to do now.
    fn take(&mut self, ev: Event, sh: &mut Shared) -> Next {
        match ev {
            Event::Ready(r) => self.socket.note(r),
            Event::Resume => {}
            Event::Shutdown => self.socket.look_again(),
            Event::Close => return self.end("the server is exiting"),
            Event::Completed { flight, done } => {
                self.driver.complete(&flight, done, sh);
                self.room.share_back();
                // The server's Resume sends it, with the others.
                return Next::Stop(Step::Wait);
            }
            Event::Released(held) => {
                if let Progress::Close(why) = self.driver.resume(held, sh) {
                    self.life = Life::Closing(Ending::Other(why));
                }
                return Next::Stop(Step::Wait); // sent at the server's Resume
            }
            Event::Room => self.room = Room::Free,
            Event::Memory => self.driver.memory_granted(),
            Event::Stalled { after } if self.stalled_since().is_some() => {
                return self.timed_out(after);
            }
            Event::Deadline { after } if self.negotiating() => {
                let secs = after.as_secs_f64();
                log::warn!("handshake not finished within {secs}s: disconnecting");
                return self.end("handshake timeout");
            }
            Event::Stalled { .. } | Event::Deadline { .. } => return Next::Stop(Step::Wait),
        }
        Next::Again
    }

    /// The client kept us waiting for `--request-timeout`: dropped, with
    /// one line saying why.
    fn timed_out(&self, after: Duration) -> Next {
        let secs = after.as_secs_f64();
        match self.stall {
            Stall::Since {
                on: Await::Reader { .. },
                ..
            } => log::warn!(
                "replies not read for {secs}s, {} KiB of them held: disconnecting",
                self.driver.unsent() >> 10
            ),
            _ => log::warn!("request half-sent, then nothing for {secs}s: disconnecting"),
        }
        self.end("request timeout")
    }

    fn end(&self, why: &str) -> Next {
        log::debug!("closed: {why}");
        Next::Stop(Step::Close)
    }

    /// A turn: work until the connection must wait, has used up its turn, or
    /// is done; then tidy its buffers, note whether it waits for a half-sent
    /// request, and update its registration.
    fn turn(&mut self, sh: &mut Shared, registry: &Registry) -> Step {
        let mut turn = Turn::new();
        let mut step = loop {
            if let Next::Stop(step) = self.next(sh, &mut turn) {
                break step;
            }
        };
        self.stall = self.stall.after_turn(self.waits(&turn), sh.now);
        self.starved = match self.driver.waiting_for_memory() {
            true => self.starved.or(Some(sh.now)),
            false => None,
        };
        // Storage with nothing pending goes back to the pool between bursts;
        // a connection about to wait keeps only what it needs.
        let waiting = matches!(step, Step::Wait | Step::WaitForRoom | Step::Sleep(_));
        self.driver.tidy(&mut sh.pool, waiting);
        let has_output = self.has_output();
        if step != Step::Close
            && let Err(e) = self
                .socket
                .update_interest(registry, self.origin.token(), has_output)
        {
            log::warn!("epoll: {e}");
            step = Step::Close;
        }
        if step == Step::Close {
            let why = match self.life {
                Life::Closing(ending) => ending.why(),
                Life::Lingering(_) => Ending::Disc.why(),
                _ => "error",
            };
            log::debug!("closed: {why}");
        }
        step
    }

    /// What the client keeps us waiting for after a turn, if anything: the
    /// rest of a half-sent request, or room for the replies we hold.
    fn waits(&self, turn: &Turn) -> Waits {
        let half_sent = turn.awaiting_input && !self.negotiating() && self.driver.mid_message();
        let unsent = self.driver.unsent();
        match (half_sent, unsent > 0 && !self.socket.writable()) {
            (true, _) => Waits::Input {
                got: turn.got_input,
            },
            (false, true) => Waits::Reader { unsent },
            (false, false) => Waits::Nothing,
        }
    }

    /// One look at the state: handle what input there is, send what output
    /// the socket takes, then decide what comes next by where the connection
    /// is in its life.
    fn next(&mut self, sh: &mut Shared, turn: &mut Turn) -> Next {
        let progress = match self.life {
            Life::Open => self.process(sh, turn),
            _ => Progress::NeedInput,
        };
        let held = matches!(self.life, Life::Opening(_));
        if !held && let Err(e) = self.send(sh) {
            log::debug!("write: {e}");
            return Next::Stop(Step::Close);
        }
        match self.life {
            Life::Open => self.after(progress, sh, turn),
            Life::Opening(until) => self.held_until(until, sh.now, Life::Open),
            Life::StartingTls => self.start_tls(sh),
            Life::Closing(ending) => self.drain(ending, sh),
            Life::Lingering(until) => self.held_until(
                until,
                sh.now,
                Life::Closing(Ending::Other("delay-close over")),
            ),
        }
    }

    /// A filter holds the connection until `until`; then it goes on as `then`.
    fn held_until(&mut self, until: Instant, now: Instant, then: Life) -> Next {
        if now < until {
            return Next::Stop(Step::Sleep(until));
        }
        self.life = then;
        Next::Again
    }

    /// Handles buffered messages until one is incomplete or must wait, the
    /// turn's requests run out, or the output passes its limit. A message that
    /// changes the connection's life changes it here.
    fn process(&mut self, sh: &mut Shared, turn: &mut Turn) -> Progress {
        let mut progress = Progress::NeedInput;
        while turn.requests > 0 && !self.driver.saturated() {
            match self.driver.step(sh, self.origin) {
                Progress::Handled => {
                    turn.handled(sh.storage.take_work());
                    progress = Progress::Handled;
                }
                Progress::NeedInput => break,
                Progress::NeedMemory => return Progress::NeedMemory,
                Progress::NeedRoom => {
                    turn.queued_for_room = self.room.block();
                    break;
                }
                Progress::StartTls => {
                    self.life = Life::StartingTls;
                    break;
                }
                Progress::Paused(until) => {
                    self.life = Life::Opening(until);
                    break;
                }
                Progress::Disc => {
                    self.life = Life::Closing(Ending::Disc);
                    break;
                }
                Progress::Close(why) => {
                    self.life = Life::Closing(Ending::Other(why));
                    break;
                }
            }
        }
        progress
    }

    /// An open connection after its messages were handled as far as they
    /// could be: wait for what holds it back, go on, or read more.
    fn after(&mut self, progress: Progress, sh: &mut Shared, turn: &mut Turn) -> Next {
        if self.room == Room::Blocked {
            let step = match turn.queued_for_room {
                true => Step::WaitForRoom,
                false => Step::Wait,
            };
            return Next::Stop(step); // a completion or freed room resumes us
        }
        if progress == Progress::NeedMemory || self.driver.saturated() {
            // Freed memory, a writable edge or a completion resumes us.
            return Next::Stop(Step::Wait);
        }
        if progress == Progress::Handled {
            return match turn.requests {
                0 => Next::Stop(Step::Yield),
                _ => Next::Again,
            };
        }
        // The front message is incomplete: read more.
        match self.socket.read_side() {
            ReadSide::Ended => {
                if self.driver.mid_message() {
                    log::warn!("client disconnected in the middle of a message");
                }
                self.life = Life::Closing(Ending::Other("client closed the connection"));
                Next::Again
            }
            ReadSide::Drained if self.driver.may_let_go(&sh.lifecycle, sh.now) => {
                self.life = Life::Closing(Ending::Other("server shutting down"));
                Next::Again
            }
            ReadSide::Drained => {
                turn.awaiting_input = true;
                Next::Stop(Step::Wait)
            }
            ReadSide::Ready | ReadSide::ToEnd => self.read(sh, turn),
        }
    }

    /// Reads once, within the turn's bytes and the memory budget. EAGAIN and
    /// EINTR are not errors.
    fn read(&mut self, sh: &mut Shared, turn: &mut Turn) -> Next {
        if turn.bytes == 0 || turn.records == 0 {
            return Next::Stop(Step::Yield); // the rest after the others' turn
        }
        let (fd, wfd) = (self.socket.read_fd(), self.socket.split_write_fd());
        let transport = &mut self.transport;
        let got = self
            .driver
            .read(sh, self.origin, |buf| transport.read(fd, wfd, buf));
        turn.records = turn.records.saturating_sub(self.transport.take_records());
        match got {
            None => return Next::Stop(Step::Wait), // resumed once the budget has room
            Some(Ok(Received::Eof)) => self.socket.ended(),
            // A short read drained the socket: anything arriving later raises a
            // new edge, so skip the read that would only say EAGAIN.
            Some(Ok(Received::Bytes { n, drained })) => self.got(n, drained, turn),
            Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => self.socket.read_blocked(),
            Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Some(Err(e)) => {
                log::debug!("read: {e}");
                return Next::Stop(Step::Close);
            }
        }
        Next::Again
    }

    /// `n` bytes arrived, with a short read if `drained`.
    fn got(&mut self, n: usize, drained: bool, turn: &mut Turn) {
        turn.got_input = true;
        turn.bytes = turn.bytes.saturating_sub(n);
        if drained {
            self.socket.short_read(self.transport.short_read_drains());
        }
        if let Some(about) = self.transport.first_plaintext() {
            log::debug!("TLS: {about}");
        }
    }

    /// A closing connection: gone once its output is out and its requests
    /// have come back (their replies go out first); after a DISC, a filter
    /// may keep it open a while longer.
    fn drain(&mut self, ending: Ending, sh: &mut Shared) -> Next {
        if self.has_output() || self.driver.awaiting_io() {
            return Next::Stop(Step::Wait);
        }
        if ending == Ending::Disc {
            let me = filter::Conn { id: self.id };
            if let Some(until) = sh.storage.filters.close_delay(me, sh.now) {
                self.life = Life::Lingering(until);
                return Next::Again;
            }
        }
        self.transport.finish(self.socket.write_fd());
        Next::Stop(Step::Close)
    }

    /// STARTTLS's ACK is out (else wait for it to go, in plaintext): from here
    /// on the socket carries TLS, beginning with what the client already sent
    /// behind STARTTLS.
    fn start_tls(&mut self, sh: &mut Shared) -> Next {
        if self.has_output() {
            return Next::Stop(Step::Wait);
        }
        match self.begin_tls(sh) {
            Ok(()) => {
                self.life = Life::Open;
                Next::Again
            }
            Err(e) => {
                log::debug!("{e}");
                Next::Stop(Step::Close)
            }
        }
    }

    #[cfg(feature = "tls")]
    fn begin_tls(&mut self, sh: &mut Shared) -> io::Result<()> {
        self.transport = Transport::start_tls(sh.tls.as_ref(), self.driver.unread())?;
        self.driver.forget_unread();
        log::debug!("STARTTLS: TLS handshake begins");
        Ok(())
    }

    /// Without TLS built in, STARTTLS is refused (ERR_POLICY): never reached.
    #[cfg(not(feature = "tls"))]
    fn begin_tls(&mut self, _: &mut Shared) -> io::Result<()> {
        Err(io::Error::other("STARTTLS accepted without TLS built in"))
    }

    /// Bytes waiting for the socket: replies, or TLS records already sealed.
    fn has_output(&self) -> bool {
        self.driver.has_output() || self.transport.wants_write()
    }

    /// Sends what output the socket takes, if it is writable.
    fn send(&mut self, sh: &mut Shared) -> io::Result<()> {
        if self.socket.writable() && self.has_output() {
            self.flush(sh)?;
            self.driver.settle(&mut sh.budget);
        }
        Ok(())
    }

    /// Writes queued output until it is gone or the socket is full: many replies
    /// per writev(2), straight from the blocks they were built in (or, under
    /// TLS, sealed straight from them).
    fn flush(&mut self, sh: &mut Shared) -> io::Result<()> {
        let fd = self.socket.write_fd();
        let out = self.driver.output();
        let mut sent = Ok(());
        while sent.is_ok() && !out.is_empty() {
            sent = {
                let mut iov = [IoSlice::new(&[]); IOV_MAX];
                let n = out.slices(&mut iov);
                self.transport.write(fd, &iov[..n])
            }
            .map(|n| out.consume(n, &mut sh.pool));
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
                self.socket.write_blocked();
                Ok(())
            }
            r => r,
        }
    }
}

/// A connection registers its own descriptors (see `socket.rs`).
impl mio::event::Source for Conn {
    fn register(
        &mut self,
        registry: &Registry,
        token: mio::Token,
        interest: mio::Interest,
    ) -> io::Result<()> {
        self.socket.register(registry, token, interest)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: mio::Token,
        interest: mio::Interest,
    ) -> io::Result<()> {
        self.socket.reregister(registry, token, interest)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.socket.deregister(registry)
    }
}
