//! Filters: stages on a request's way from the client to the backend and
//! back, as nbdkit's (`--filter=NAME`, the first nearest the client). Each
//! sees a request on its way down (`Filter::request`) and may let it pass,
//! change it (its offset, its flags), answer it with an error, hold it on a
//! timer, or have its client disconnected; each sees the outcome on the way
//! up (`Filter::reply`). At start-up each may read what it needs of the data
//! below it and check its parameters against it (`Filter::prepare`), then
//! change what clients are told (`Filter::shape`). Each hears of connections
//! opening and closing, may turn clients away (`Filter::connect`,
//! `Filter::may_open`), and may ask the server to shut down
//! (`Filter::wants_exit`).
//!
//! A filter may instead be a layer of storage over the backend (`Layer`:
//! cow, whose overlay needs I/O of its own, which a stage cannot do): it is
//! put over the backend at start-up (`layers.rs`) and is no stage; stages
//! named after it run below it, on what it asks of the backend
//! (`beneath.rs`).
//!
//! Single-threaded: a held request is not a sleeping thread but an entry
//! here (`Held`), with its payload, released by the loop when its time comes
//! (`Stack::release`) and carried on from the stage below the one that held
//! it. With no filter configured the request path asks `Stack::is_empty`
//! and nothing else.

mod appender;
mod beneath;
mod blocksize_policy;
mod bucket;
mod cow;
mod delay;
mod due;
mod error;
mod exitlast;
mod exitwhen;
mod layers;
mod limit;
mod log;
mod noextents;
mod nozero;
mod offset;
pub mod params;
mod partition;
mod rate;
pub mod registry;
mod startup_read;
mod stats;
mod truncate;

pub use startup_read::StartupRead;

use due::Due;
pub use layers::{Layer, Layers};
pub use registry::{FILTERS, Spec, build, describe};

use std::time::Instant;

use crate::agreement::Agreement;
use crate::backend::Backend;
use crate::export::Export;
use crate::origin::Origin;
use crate::proto::request::Request;

/// A request as filters see it: what will run below them. Filters may move
/// its offset or change its flags; its reply still answers the client's
/// request as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// The connection's number (as in log lines).
    pub conn: u64,
    pub kind: u16,
    pub flags: u16,
    pub offset: u64,
    /// The length it acts on (its effect: BLOCK_STATUS's from its payload form too).
    ///
    /// A filter may shorten it where what is below ends (truncate): the rest
    /// of the client's request lies past that end and reads as zeroes. A
    /// READ's reply carries zeroes there; a WRITE's payload there must be
    /// zeroes (else ENOSPC, as nothing can be stored there); a BLOCK_STATUS
    /// reply describes only the part below.
    pub len: u64,
    /// When the client's request was taken up.
    pub started: Instant,
}

/// What a filter does with a request on its way down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// On to the next stage.
    Pass,
    /// Answer it with this NBD error; nothing below sees it.
    Fail(u32),
    /// Hold it until then, then on to the next stage.
    Hold(Instant),
    /// End the connection (its client broke a rule the filter enforces).
    Disconnect(&'static str),
    /// Answer it as if everything it covers read as zeroes (it lies wholly
    /// past the end of what is below: truncate); nothing below sees it. A
    /// READ gets zeroes, a WRITE of zeroes succeeds (any other fails with
    /// ENOSPC), TRIM, WRITE_ZEROES and CACHE succeed, BLOCK_STATUS reports a
    /// hole.
    Zeroes,
}

/// A connection, as filters hear of it.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub id: u64,
}

/// One filter. Every method has a default that does nothing, so a filter
/// says only what it does.
pub trait Filter {
    /// Its name on the command line.
    fn name(&self) -> &'static str;

    /// At start-up, from the filter nearest the backend up, before its
    /// `shape`: reads what it needs of the data below it (a partition table)
    /// and checks its parameters against what is below (`export`, as the
    /// filters below shaped it). Err: the server does not start (one line).
    fn prepare(&mut self, _below: &mut StartupRead, _export: &Export) -> Result<(), String> {
        Ok(())
    }

    /// At start-up, from the filter nearest the backend up: what clients are
    /// told (size, flags, block sizes).
    fn shape(&mut self, _export: &mut Export) {}

    /// A client has just connected (before its greeting, as nbdkit's
    /// preconnect): false turns it away (its socket is closed at once).
    fn connect(&mut self, _now: Instant) -> bool {
        true
    }

    /// Whether a client may open the export now: asked before GO or
    /// EXPORT_NAME is answered (`open` follows if it may). False refuses it
    /// (GO gets an error and may be tried again; EXPORT_NAME ends the
    /// connection).
    fn may_open(&self) -> bool {
        true
    }

    /// A client chose the export (GO, EXPORT_NAME): until when its answer is held.
    fn open(&mut self, _c: Conn, _now: Instant) -> Option<Instant> {
        None
    }

    /// A client asked to disconnect (DISC) and everything it sent is
    /// answered: until when its socket stays open.
    fn close_delay(&mut self, _c: Conn, _now: Instant) -> Option<Instant> {
        None
    }

    /// A connection has gone.
    fn closed(&mut self, _c: Conn, _now: Instant) {}

    /// A request on its way down.
    fn request(&mut self, _call: &mut Call, _now: Instant) -> Verdict {
        Verdict::Pass
    }

    /// A request's outcome on its way up: 0, or the NBD error its reply
    /// carries.
    fn reply(&mut self, _call: &Call, _errno: u32, _now: Instant) {}

    /// The server is exiting, or was asked for a report (SIGUSR1): say what
    /// there is to say.
    fn report(&mut self, _now: Instant) {}

    /// When it next wants `wake` called, if ever: for work of its own that no
    /// request brings (flushing a log, re-reading a file, polling for an
    /// event). The loop's sleep never runs past it.
    fn wake_at(&self) -> Option<Instant> {
        None
    }

    /// Called once per turn of the loop from `wake_at` on.
    fn wake(&mut self, _now: Instant) {}

    /// Whether it wants the server to shut down now, as a signal would (no
    /// new clients; those connected get the grace period). Asked once per
    /// turn of the loop.
    fn wants_exit(&self) -> bool {
        false
    }

    /// A filter that is a layer of storage rather than a stage: what is put
    /// over the backend at start-up (asked once; the filter then leaves the
    /// stages). None: a stage.
    fn layer(&mut self) -> Option<Box<dyn Layer>> {
        None
    }
}

/// A request a filter holds: everything needed to carry it on later, from
/// the stage below the one that held it.
#[derive(Debug)]
pub struct Held {
    pub origin: Origin,
    pub agreed: Agreement,
    /// The client's request, as sent (its reply answers this).
    pub req: Request,
    pub call: Call,
    /// The stage that held it.
    pub stage: usize,
    /// A WRITE's payload, copied out of the connection's input.
    pub payload: Vec<u8>,
}

/// The configured filters, first nearest the client, and the requests they hold.
#[derive(Default)]
pub struct Stack {
    filters: Vec<Box<dyn Filter>>,
    held: Due<Held>,
}

impl Stack {
    pub fn new(filters: Vec<Box<dyn Filter>>) -> Stack {
        Stack {
            filters,
            ..Stack::default()
        }
    }

    /// No filter: the request path skips every stage.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// At start-up: each filter, from the backend up, prepares (reading
    /// through the filters below it) and shapes what clients see. `export`
    /// is what the backend serves; it leaves as clients are to see it.
    pub fn prepare(
        &mut self,
        backend: &mut dyn Backend,
        export: &mut Export,
    ) -> Result<(), String> {
        prepare(&mut self.filters, backend, export)
    }

    /// A request on its way down from stage `from`: the first verdict that is
    /// not `Pass`, with the stage that gave it.
    pub fn down(&mut self, call: &mut Call, from: usize, now: Instant) -> (Verdict, usize) {
        down(&mut self.filters, call, from, now)
    }

    /// A request's outcome on its way up, from stage `from` (the one that
    /// answered it, or the bottom).
    pub fn up(&mut self, call: &Call, errno: u32, from: usize, now: Instant) {
        up(&mut self.filters, call, errno, from, now);
    }

    /// Every stage the request went through (the bottom: the backend answered).
    pub fn depth(&self) -> usize {
        self.filters.len()
    }

    /// Holds `h` until `at`.
    pub fn hold(&mut self, h: Held, at: Instant) {
        self.held.hold(h, at);
    }

    /// When the next held request is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.held.next()
    }

    /// The next held request due by `now` (all of them, if `all`: the server
    /// is shutting down and holds nothing back).
    pub fn release(&mut self, now: Instant, all: bool) -> Option<Held> {
        self.held.release(now, all)
    }

    /// A client has just connected: whether every filter lets it stay.
    pub fn connect(&mut self, now: Instant) -> bool {
        self.filters.iter_mut().all(|f| f.connect(now))
    }

    /// The filter that refuses to let a client open the export now, if one does.
    pub fn refusing_open(&self) -> Option<&'static str> {
        self.filters
            .iter()
            .find(|f| !f.may_open())
            .map(|f| f.name())
    }

    /// The filter that wants the server to shut down, if one does.
    pub fn wanting_exit(&self) -> Option<&'static str> {
        self.filters
            .iter()
            .find(|f| f.wants_exit())
            .map(|f| f.name())
    }

    pub fn open(&mut self, c: Conn, now: Instant) -> Option<Instant> {
        self.filters.iter_mut().filter_map(|f| f.open(c, now)).max()
    }

    pub fn close_delay(&mut self, c: Conn, now: Instant) -> Option<Instant> {
        self.filters
            .iter_mut()
            .filter_map(|f| f.close_delay(c, now))
            .max()
    }

    pub fn closed(&mut self, c: Conn, now: Instant) {
        for f in &mut self.filters {
            f.closed(c, now);
        }
    }

    pub fn report(&mut self, now: Instant) {
        for f in &mut self.filters {
            f.report(now);
        }
    }

    /// When the loop must next turn for the filters: a held request due, or
    /// a filter's own wake.
    pub fn next_wake(&self) -> Option<Instant> {
        [self.next_due(), self.own_wake()]
            .into_iter()
            .flatten()
            .min()
    }

    /// When a filter next wants a wake of its own (not for a held request).
    pub fn own_wake(&self) -> Option<Instant> {
        self.filters.iter().filter_map(|f| f.wake_at()).min()
    }

    /// Once per turn: the filters whose wake time has come.
    pub fn wake(&mut self, now: Instant) {
        for f in &mut self.filters {
            if f.wake_at().is_some_and(|at| at <= now) {
                f.wake(now);
            }
        }
    }
}

/// At start-up: each of `filters` (first nearest the client), from the
/// backend up, prepares (reading through the filters below it and the
/// backend) and shapes `export`. The stack's filters over the export, and
/// the stages below a layer over what the layer sees (`beneath.rs`).
pub fn prepare(
    filters: &mut [Box<dyn Filter>],
    backend: &mut dyn Backend,
    export: &mut Export,
) -> Result<(), String> {
    for i in (0..filters.len()).rev() {
        let (upper, lower) = filters.split_at_mut(i + 1);
        let f = &mut upper[i]; // in bounds: `upper` holds i + 1 filters
        let mut below = StartupRead {
            filters: lower,
            backend: &mut *backend,
        };
        f.prepare(&mut below, export)
            .map_err(|e| format!("{} filter: {e}", f.name()))?;
        f.shape(export);
    }
    Ok(())
}

/// A request on its way down `filters` from stage `from`: the first verdict
/// that is not `Pass`, with the stage that gave it.
pub fn down(
    filters: &mut [Box<dyn Filter>],
    call: &mut Call,
    from: usize,
    now: Instant,
) -> (Verdict, usize) {
    for (i, f) in filters.iter_mut().enumerate().skip(from) {
        match f.request(call, now) {
            Verdict::Pass => {}
            v => return (v, i),
        }
    }
    (Verdict::Pass, filters.len())
}

/// An outcome on its way up `filters`, from stage `from` (the one that
/// answered, or the bottom).
pub fn up(filters: &mut [Box<dyn Filter>], call: &Call, errno: u32, from: usize, now: Instant) {
    let n = from.min(filters.len());
    for f in filters[..n].iter_mut().rev() {
        f.reply(call, errno, now);
    }
}
