//! The pure half of a connection: the bytes received so far, what the message
//! at their front means, the replies going back, and what all of that holds
//! as the memory budget counts it.
//!
//! No sockets and no clock. `Conn` hands `receive` a function that reads from
//! its socket and writes `output()` to it; the fuzz targets and the randomized
//! tests hand it one that copies arbitrary bytes in arbitrary pieces. Both go
//! through the same buffers and growth policy, so the code they exercise is
//! the code the server runs.
//!
//! A request's way through here (`Front::request`): framed, admitted (the
//! budget has room for its payload and reply before the payload is read; the
//! I/O engine has room for it before it runs), then served by the request
//! pipeline (`crate::request::serve`); a request the engine took comes back
//! through `complete`.

use std::io;
use std::time::Instant;

use crate::agreement::Agreement;
use crate::aio::Done;
use crate::budget::{Budget, Charge};
use crate::buf::{InBuf, OutQueue, Pool};
use crate::filter::{self, Held};
use crate::handshake::{Gate, Handshake, Outcome};
use crate::lifecycle::{Activity, Lifecycle};
use crate::origin::Origin;
use crate::proto::request::parse_request;
use crate::proto::{CMD_DISC, EINVAL, Parse};
use crate::request::{self, Incoming, Served};
use crate::shared::Shared;
use crate::storage::{Flight, Owed};

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
/// Most requests one connection has in the I/O engine at once: a client with
/// a deep queue takes no more than this, so others always find room.
const MAX_IN_ENGINE: usize = 32;
/// Most requests of one connection filters hold at once (a delay, a rate):
/// past this, its next requests wait until some come back.
const MAX_HELD: usize = 1024;
/// Stop handling requests while this much output is unsent or to come;
/// resume once it drains.
const OUT_LIMIT: usize = 64 << 20;

/// Where a connection is in the protocol.
#[derive(Debug)]
pub enum Phase {
    Handshake(Handshake),
    Transmission(Agreement),
}

/// How far handling the buffered input got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A message was handled.
    Handled,
    /// The message at the front is incomplete.
    NeedInput,
    /// The memory budget has no room for the request at the front (its
    /// payload, its reply): the connection waits in the budget's queue, and
    /// reads nothing meanwhile, until it is resumed.
    NeedMemory,
    /// The request at the front waits for room in the I/O engine; a
    /// completion or freed room resumes it.
    NeedRoom,
    /// STARTTLS was accepted: once its ACK is sent, the connection switches to
    /// TLS, handing it the bytes not yet used (`unread`).
    StartTls,
    /// The client chose the export, and a filter holds the answer until then
    /// (delay-open): nothing is sent or read meanwhile.
    Paused(Instant),
    /// The client sent DISC: once everything is answered, the connection ends.
    Disc,
    /// End the connection (after sending what is queued).
    Close(&'static str),
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

/// One connection's protocol state and buffers.
#[derive(Debug)]
pub struct Driver {
    /// The connection's number (as in log lines), for filters.
    id: u64,
    input: InBuf,
    out: OutQueue,
    front: Front,
    /// Its requests in the I/O engine.
    flights: Flights,
    /// What the budget counts it as holding.
    charge: Charge,
    /// When a message was last handled.
    last_active: Instant,
}

/// The protocol state proper, apart from the buffers it reads and writes.
#[derive(Debug)]
struct Front {
    phase: Phase,
    /// Input bytes still to be thrown away (option data or a WRITE payload we refused).
    skip: u64,
    /// Total bytes the message at the front needs: how much to read next.
    need: usize,
    /// Whether the budget has admitted the request at the front.
    admission: Admission,
    /// A request arrived while the server was shutting down (and was refused):
    /// the client owes us a soft disconnect.
    refused_in_shutdown: bool,
}

/// The budget's answer for the request at the front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Not asked yet (or no request at the front).
    Pending,
    /// Admitted with this much, its whole size and its reply's data, counted
    /// from the moment it was admitted however little of it has arrived.
    Admitted { reserved: usize },
}

/// A connection's requests that have left it (in the I/O engine, or held by
/// a filter), whose replies are still to come.
#[derive(Debug, Default, Clone, Copy)]
struct Flights {
    count: usize,
    /// Of them, those in the I/O engine (each connection has a share of it).
    in_engine: usize,
    /// Bytes of data their replies will carry.
    data: usize,
    /// Bytes of buffers they hold outside the connection.
    lent: usize,
    /// Of `data`, what held requests' replies will carry: no buffer holds it
    /// yet, but one will as each is released, and that is not asked for then.
    held_data: usize,
}

impl Flights {
    fn add(&mut self, o: Owed, in_engine: bool) {
        self.count += 1;
        self.in_engine += usize::from(in_engine);
        self.data += o.data;
        self.lent += o.lent;
        if !in_engine {
            self.held_data += o.data;
        }
    }

    fn remove(&mut self, o: Owed, in_engine: bool) {
        self.count -= 1;
        self.in_engine -= usize::from(in_engine);
        self.data -= o.data;
        self.lent -= o.lent;
        if !in_engine {
            self.held_data -= o.data;
        }
    }
}

impl Driver {
    /// Connection `id` in `phase`, whose first bytes out are `greeting`.
    pub fn new(id: u64, phase: Phase, greeting: &[u8], sh: &mut Shared) -> Driver {
        let pool = &mut sh.pool;
        let mut out = OutQueue::default();
        out.writer(pool).put(greeting);
        Driver {
            id,
            input: InBuf::default(),
            out,
            front: Front {
                phase,
                skip: 0,
                need: 0,
                admission: Admission::Pending,
                refused_in_shutdown: false,
            },
            flights: Flights::default(),
            charge: Charge::default(),
            last_active: sh.now,
        }
    }

    pub fn in_handshake(&self) -> bool {
        matches!(self.front.phase, Phase::Handshake(_))
    }

    /// Reads once through `read` into the input buffer, if the memory budget
    /// lets it grow as far as the read needs (None: it waits in the budget's
    /// queue, and is resumed when there is room).
    pub fn read(
        &mut self,
        sh: &mut Shared,
        who: Origin,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> Option<io::Result<Received>> {
        if !self.admit_read(&mut sh.budget, who) {
            return None;
        }
        let got = self.receive(&mut sh.pool, read);
        self.settle(&mut sh.budget);
        Some(got)
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

    /// Room the next read asks for: always a whole `READ_CHUNK`, so that one
    /// read takes a client's whole pipeline of small requests and a short read
    /// says the socket is drained. Asked for less (the few bytes left at the
    /// end of the block), reads come back full, the turn reads on while the
    /// client refills, and one client keeps the loop for the turn's whole
    /// allowance while the others wait (4 x 16 random writes: p99 2.3 ms
    /// instead of 0.9). A large message still arriving fills the block it
    /// has while a chunk fits before the block grows again (so its payload is
    /// copied a few times, not once per read); the block grows by what has
    /// arrived, at least `GROWTH_STEP`, and past the message by a chunk at
    /// most, where the next message begins (stopping at the message's end
    /// instead cost 1 MiB WRITEs 8 % more CPU: the next one grew its block
    /// again from a chunk).
    fn want(&self) -> usize {
        let len = self.input.len();
        let missing = self.front.need.saturating_sub(len);
        if missing > 0 && self.input.free() >= READ_CHUNK {
            return READ_CHUNK;
        }
        READ_CHUNK.max(missing.min(len.max(GROWTH_STEP)))
    }

    /// Bytes of storage this connection holds: its input buffer (or, if more,
    /// what the request at the front was admitted with), the buffers it lent
    /// the I/O engine, its output queue's blocks, and the replies of READs a
    /// filter holds (admitted before they were held, and counted until they
    /// are answered).
    fn held(&self) -> usize {
        self.input_held() + self.flights.lent + self.out.held() + self.flights.held_data
    }

    fn input_held(&self) -> usize {
        let reserved = match self.front.admission {
            Admission::Admitted { reserved } => reserved,
            Admission::Pending => 0,
        };
        self.input.capacity().max(reserved)
    }

    /// Tells the budget what this connection holds now.
    pub fn settle(&mut self, budget: &mut Budget) {
        let held = self.held();
        self.charge.settle(budget, held);
    }

    /// Asks the budget whether the next read may grow the input buffer
    /// (nothing to ask when it has room, or when the message arriving was
    /// admitted whole).
    fn admit_read(&mut self, budget: &mut Budget, who: Origin) -> bool {
        let want = self.want();
        if self.input.free() >= want {
            return true;
        }
        let after = (self.input.len() + want).max(READ_CHUNK);
        let grow = after.saturating_sub(self.input_held());
        let held = self.held();
        grow == 0 || self.charge.admit(budget, who, held, grow)
    }

    /// It waits in the budget's queue for memory.
    pub fn waiting_for_memory(&self) -> bool {
        self.charge.waiting()
    }

    /// What the budget counts it as holding beyond its own share.
    pub fn counted(&self) -> usize {
        self.charge.counted()
    }

    /// The budget resumed this connection: it goes ahead of its queue once.
    pub fn memory_granted(&mut self) {
        self.charge.granted();
    }

    /// The connection goes: what it holds goes back to the budget (buffers
    /// still in the I/O engine as they are reaped), and it leaves any queue.
    pub fn close(&mut self, budget: &mut Budget) {
        self.charge.close(budget, self.flights.lent);
    }

    /// Handles the message at the front of the input, if it is complete,
    /// queueing any reply, and tells the budget what the connection holds then.
    pub fn step(&mut self, sh: &mut Shared, who: Origin) -> Progress {
        let progress = self.handle_front(sh, who);
        if progress == Progress::Handled {
            self.last_active = sh.now;
        }
        self.settle(&mut sh.budget);
        progress
    }

    fn handle_front(&mut self, sh: &mut Shared, who: Origin) -> Progress {
        let held = self.held();
        let Driver {
            id,
            input,
            out,
            front,
            flights,
            charge,
            ..
        } = self;
        let mut turn = Turn {
            sh,
            who,
            id: *id,
            held,
            out,
            flights,
            charge,
        };
        let (used, progress) = front.handle(input.pending(), &mut turn);
        input.consume(used);
        if used > READ_CHUNK {
            // A large message is done: what follows it needs no large block
            // (the engine took a copy of a WRITE's payload).
            input.shrink(&mut sh.pool);
        }
        progress
    }

    /// A request of ours came back from the I/O engine: its reply is queued.
    pub fn complete(&mut self, flight: &Flight, done: Done, sh: &mut Shared) {
        self.flights.remove(flight.owed(), true);
        let out = &mut self.out.writer(&mut sh.pool);
        request::complete(flight, done, &mut sh.storage, sh.now, out);
    }

    /// A request a filter held is due: it goes on its way (maybe to the
    /// engine, or held again), or is answered.
    pub fn resume(&mut self, held: Held, sh: &mut Shared) -> Progress {
        self.flights.remove(held.owed(), false);
        let shutting_down = sh.lifecycle.shutting_down();
        let out = &mut self.out.writer(&mut sh.pool);
        let served = request::resume(held, &mut sh.storage, sh.now, shutting_down, out);
        let progress = self.flights.count_in(served);
        self.settle(&mut sh.budget);
        progress
    }

    /// The output queue, for the socket to take from.
    pub fn output(&mut self) -> &mut OutQueue {
        &mut self.out
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Bytes of replies queued, not yet taken by the socket.
    pub fn unsent(&self) -> usize {
        self.out.len()
    }

    /// Output the client has yet to read: queued, and still to come from the
    /// I/O engine.
    fn backlog(&self) -> usize {
        self.out.len() + self.flights.data
    }

    /// Too much is owed the client to take up more requests: replies unsent
    /// or to come (`OUT_LIMIT`), or requests held (`MAX_HELD`). Resumed by
    /// a writable edge, a completion or a release.
    pub fn saturated(&self) -> bool {
        self.backlog() >= OUT_LIMIT || self.flights.count - self.flights.in_engine >= MAX_HELD
    }

    /// Whether, at shutdown, the lifecycle lets this connection go though it
    /// did not ask to (see `Lifecycle::may_let_go`).
    pub fn may_let_go(&self, lifecycle: &Lifecycle, now: Instant) -> bool {
        let activity = Activity {
            negotiating: self.in_handshake(),
            quiet: self.quiet(),
            last_active: self.last_active,
        };
        lifecycle.may_let_go(&activity, now)
    }

    /// Nothing half-received, nothing to skip, no reply still to come, and no
    /// refused request whose client owes us a disconnect: the connection may be
    /// let go at shutdown.
    fn quiet(&self) -> bool {
        !self.mid_message() && !self.awaiting_io() && !self.front.refused_in_shutdown
    }

    /// Requests are in the I/O engine or held by a filter: their replies are
    /// to come, so the connection may not close yet.
    pub fn awaiting_io(&self) -> bool {
        self.flights.count > 0
    }

    /// Part of a message has arrived, or its data is still being skipped.
    pub fn mid_message(&self) -> bool {
        !self.input.is_empty() || self.front.skip > 0
    }

    /// Bytes received and not used: after STARTTLS, the start of the TLS
    /// handshake (never options: `forget_unread` drops them from here).
    #[cfg(any(feature = "tls", feature = "fuzzing"))]
    pub fn unread(&self) -> &[u8] {
        self.input.pending()
    }

    #[cfg(feature = "tls")]
    pub fn forget_unread(&mut self) {
        self.input.consume(self.input.len());
    }

    /// Between bursts: storage with nothing pending goes back to the pool; a
    /// connection about to wait (`waiting`) keeps what little is pending (half
    /// a header, say) in a small block.
    pub fn tidy(&mut self, pool: &mut Pool, waiting: bool) {
        match waiting {
            true => self.input.shrink(pool),
            false => self.input.release(pool),
        }
        if self.out.is_empty() {
            self.out.release(pool);
        }
    }
}

impl Flights {
    /// Counts what `served` left out of the connection; a filter's
    /// disconnect ends it.
    fn count_in(&mut self, served: Served) -> Progress {
        match served {
            Served::Replied => Progress::Handled,
            Served::Submitted(owed) => {
                self.add(owed, true);
                Progress::Handled
            }
            Served::Held(owed) => {
                self.add(owed, false);
                Progress::Handled
            }
            Served::Disconnect(why) => {
                log::warn!("{why}: disconnecting");
                Progress::Close(why)
            }
        }
    }
}

/// What handling one message may touch besides the protocol state.
struct Turn<'a> {
    sh: &'a mut Shared,
    who: Origin,
    id: u64,
    /// What the connection held before the message.
    held: usize,
    out: &'a mut OutQueue,
    flights: &'a mut Flights,
    charge: &'a mut Charge,
}

/// Whether a client may choose the export now: not while the server shuts
/// down, nor while a filter admits no more clients.
fn gate(sh: &Shared) -> Gate {
    if sh.lifecycle.shutting_down() {
        return Gate::ShuttingDown;
    }
    match sh.storage.filters.refusing_open() {
        Some(by) => Gate::Refused(by),
        None => Gate::Open,
    }
}

/// Option replies beyond this (a LIST of a large directory: a megabyte at
/// most) are admitted by the budget before they are queued, as large data
/// replies are: a client that lists and never reads holds no more than the
/// budget lets it.
const LARGE_OPTION_REPLY: usize = 4096;

/// Whether the budget lets a connection queue option `replies`; a large
/// reply also counts as loop work, by its size (a KiB an ordinary request).
fn admit_replies(replies: &[u8], t: &mut Turn) -> bool {
    if replies.len() <= LARGE_OPTION_REPLY {
        return true;
    }
    t.sh.storage.add_work(replies.len() / 1024);
    t.charge
        .admit(&mut t.sh.budget, t.who, t.held, replies.len())
}

impl Front {
    /// Handles the message at the front of `input`, if it is complete. Returns
    /// how many bytes of `input` were used.
    fn handle(&mut self, input: &[u8], t: &mut Turn) -> (usize, Progress) {
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
                let gate = gate(t.sh);
                let mut replies = Vec::new();
                let mut catalog = t.sh.storage.catalog(t.id);
                let outcome = hs.step(input, &mut replies, &mut catalog, gate);
                if !admit_replies(&replies, t) {
                    // Asked again once resumed (a LIST reads its directory
                    // again then; its answer is the same).
                    return (skipped, Progress::NeedMemory);
                }
                t.out.writer(&mut t.sh.pool).put(&replies);
                self.handshake_outcome(outcome, t)
            }
            Phase::Transmission(s) => {
                let s = *s;
                self.request(s, input, t)
            }
        };
        (skipped + used, progress)
    }

    fn handshake_outcome(&mut self, outcome: Outcome, t: &mut Turn) -> (usize, Progress) {
        match outcome {
            Outcome::Continue(0) => (0, Progress::NeedInput),
            Outcome::Continue(n) => (n, Progress::Handled),
            Outcome::Skip { consumed, skip } => {
                self.skip = skip;
                (consumed, Progress::Handled)
            }
            Outcome::Transmission { consumed, session } => {
                log::debug!(
                    "transmission: {:?}, flags {:#x}, base:allocation {}",
                    session.style,
                    session.flags,
                    session.meta
                );
                self.phase = Phase::Transmission(session);
                let me = filter::Conn { id: t.id };
                match t.sh.storage.filters.open(me, t.sh.now) {
                    Some(until) => (consumed, Progress::Paused(until)),
                    None => (consumed, Progress::Handled),
                }
            }
            Outcome::StartTls { consumed } => (consumed, Progress::StartTls),
            Outcome::Abort => (0, Progress::Close("client aborted")),
            Outcome::Close(why) => {
                log::warn!("handshake: {why}: disconnecting");
                (0, Progress::Close(why))
            }
        }
    }

    /// A request's way through the connection: framed, admitted, served.
    fn request(&mut self, s: Agreement, input: &[u8], t: &mut Turn) -> (usize, Progress) {
        let (req, hdr) = match parse_request(input, s.extended()) {
            Parse::Done(req, n) => (req, n),
            Parse::NeedMore => return (0, Progress::NeedInput),
            Parse::Malformed(why) => {
                log::warn!("{why}: disconnecting");
                return (0, Progress::Close(why));
            }
        };
        if req.kind == CMD_DISC {
            return (0, Progress::Disc);
        }
        if req.payload > t.sh.storage.export.max_request {
            return self.refuse_payload(s, &req, hdr, t);
        }
        let total = hdr + req.payload as usize; // payload ≤ max_request, checked
        if let Err(wait) = self.admit(&req, total, input.len(), t) {
            return (0, wait);
        }
        let shutting_down = t.sh.lifecycle.shutting_down();
        self.admission = Admission::Pending;
        self.refused_in_shutdown |= shutting_down;
        let incoming = Incoming {
            origin: t.who,
            conn: t.id,
            agreed: s,
            req,
            payload: &input[hdr..total],
            now: t.sh.now,
        };
        let out = &mut t.out.writer(&mut t.sh.pool);
        let served = request::serve(&incoming, &mut t.sh.storage, shutting_down, out);
        match t.flights.count_in(served) {
            Progress::Handled => (total, Progress::Handled),
            other => (0, other),
        }
    }

    /// A request may run once the budget has admitted it (before its payload
    /// is read), all of it has arrived, and the I/O engine has room for it.
    fn admit(
        &mut self,
        req: &crate::proto::request::Request,
        total: usize,
        arrived: usize,
        t: &mut Turn,
    ) -> Result<(), Progress> {
        if self.admission == Admission::Pending {
            let shutting_down = t.sh.lifecycle.shutting_down();
            let reply = request::reply_cost(req, &t.sh.storage, shutting_down);
            // Its payload still to come and its reply's data, counted from now.
            let want = total.saturating_sub(arrived) + reply + REPLY;
            if !t.charge.admit(&mut t.sh.budget, t.who, t.held, want) {
                return Err(Progress::NeedMemory);
            }
            self.admission = Admission::Admitted {
                reserved: total + reply,
            };
        }
        if arrived < total {
            self.need = total;
            return Err(Progress::NeedInput);
        }
        self.need = 0;
        if t.flights.in_engine >= MAX_IN_ENGINE || !t.sh.storage.has_room() {
            return Err(Progress::NeedRoom);
        }
        Ok(())
    }

    /// A request whose payload is over the maximum: an extended one ends the
    /// connection; a compact WRITE is refused, and its payload read past
    /// without being kept.
    fn refuse_payload(
        &mut self,
        s: Agreement,
        req: &crate::proto::request::Request,
        hdr: usize,
        t: &mut Turn,
    ) -> (usize, Progress) {
        if s.extended() {
            log::warn!("payload of {} bytes: disconnecting", req.payload);
            return (0, Progress::Close("payload too large"));
        }
        log::warn!("WRITE of {} bytes refused", req.payload);
        let out = &mut t.out.writer(&mut t.sh.pool);
        request::refuse(&s, req, out, EINVAL, "request too large");
        t.sh.storage.tally.refused();
        self.skip = req.payload;
        (hdr, Progress::Handled)
    }
}

/// What the fuzz harness's checker inspects between steps.
#[cfg(feature = "fuzzing")]
impl Driver {
    pub(crate) fn session(&self) -> Option<Agreement> {
        match self.front.phase {
            Phase::Transmission(s) => Some(s),
            Phase::Handshake(_) => None,
        }
    }

    pub(crate) fn skip(&self) -> u64 {
        self.front.skip
    }

    pub(crate) fn need(&self) -> usize {
        self.front.need
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_proto::compact_request;
    use crate::export::test_export;
    use crate::lifecycle::Lifecycle;
    use crate::notify::Notifier;
    use crate::proto::CMD_WRITE;
    use crate::proto::reply::Style;
    use crate::request::testing::{session, with_memory};

    /// A pipeline of small WRITEs that straddles the end of the input block:
    /// once the whole ones are handled, the next read still offers a whole
    /// `READ_CHUNK`, not the few bytes left at the block's end (see `want`).
    #[test]
    fn a_read_after_a_block_of_small_writes_offers_a_whole_chunk() {
        let ex = test_export(false, 1);
        let lifecycle = Lifecycle::new(None, false, Notifier::new(None));
        let mut sh = Shared::new(with_memory(&ex), lifecycle);
        let agreed = session(&ex, Style::Simple, false);
        let mut drv = Driver::new(1, Phase::Transmission(agreed), &[], &mut sh);
        let me = Origin::new(0, 1);
        let mut stream = Vec::new();
        for i in 0..20u64 {
            stream.extend(compact_request(0, CMD_WRITE, i, i * 4096, 4096));
            stream.extend([0x5a; 4096]);
        }
        let mut offered = Vec::new();
        let mut sent = 0;
        while sent < stream.len() {
            let got = drv.receive(&mut sh.pool, |room| {
                offered.push(room.len());
                let n = room.len().min(stream.len() - sent);
                room[..n].copy_from_slice(&stream[sent..sent + n]);
                Ok(n)
            });
            sent += match got {
                Ok(Received::Bytes { n, .. }) => n,
                other => panic!("read: {other:?}"),
            };
            while drv.step(&mut sh, me) == Progress::Handled {}
        }
        assert!(offered.len() >= 2, "the pipeline took {offered:?}");
        assert!(
            offered.iter().all(|&n| n >= READ_CHUNK),
            "reads offered {offered:?}"
        );
    }
}
