//! Filters: stages on a request's way from the client to the backend and
//! back, as nbdkit's (`--filter=NAME`, the first nearest the client). Each
//! sees a request on its way down (`Filter::request`) and may let it pass,
//! change it (its offset, its flags), answer it with an error, hold it on a
//! timer, or have its client disconnected; each sees the outcome on the way
//! up (`Filter::reply`). At start-up each may change what clients are told
//! (`Filter::shape`); each hears of connections opening and closing.
//!
//! Single-threaded: a held request is not a sleeping thread but an entry
//! here (`Held`), with its payload, released by the loop when its time comes
//! (`Stack::release`) and carried on from the stage below the one that held
//! it. With no filter configured the request path asks `Stack::is_empty`
//! and nothing else.

mod appender;
mod delay;
mod error;
mod log;
pub mod params;
pub mod registry;
mod stats;

pub use registry::{FILTERS, Spec, build, describe};

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use slab::Slab;

use crate::agreement::Agreement;
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

    /// At start-up, from the filter nearest the backend up: what clients are
    /// told (size, flags, block sizes).
    fn shape(&mut self, _export: &mut Export) {}

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
    held: Slab<Held>,
    /// When each held request is due, soonest first (ties in the order held).
    due: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    /// Counts holds, to keep the queue's order stable among equal times.
    seq: u64,
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

    /// At start-up: each filter, from the backend up, shapes what clients see.
    pub fn shape(&mut self, export: &mut Export) {
        for f in self.filters.iter_mut().rev() {
            f.shape(export);
        }
    }

    /// A request on its way down from stage `from`: the first verdict that is
    /// not `Pass`, with the stage that gave it.
    pub fn down(&mut self, call: &mut Call, from: usize, now: Instant) -> (Verdict, usize) {
        for (i, f) in self.filters.iter_mut().enumerate().skip(from) {
            match f.request(call, now) {
                Verdict::Pass => {}
                v => return (v, i),
            }
        }
        (Verdict::Pass, self.filters.len())
    }

    /// A request's outcome on its way up, from stage `from` (the one that
    /// answered it, or the bottom).
    pub fn up(&mut self, call: &Call, errno: u32, from: usize, now: Instant) {
        let n = from.min(self.filters.len());
        for f in self.filters[..n].iter_mut().rev() {
            f.reply(call, errno, now);
        }
    }

    /// Every stage the request went through (the bottom: the backend answered).
    pub fn depth(&self) -> usize {
        self.filters.len()
    }

    /// Holds `h` until `at`.
    pub fn hold(&mut self, h: Held, at: Instant) {
        let key = self.held.insert(h);
        self.seq += 1;
        self.due.push(Reverse((at, self.seq, key)));
    }

    /// When the next held request is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, ..))| *at)
    }

    /// The next held request due by `now` (all of them, if `all`: the server
    /// is shutting down and holds nothing back).
    pub fn release(&mut self, now: Instant, all: bool) -> Option<Held> {
        let Reverse((at, _, key)) = *self.due.peek()?;
        if at > now && !all {
            return None;
        }
        self.due.pop();
        self.held.try_remove(key)
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
        let own = self.filters.iter().filter_map(|f| f.wake_at()).min();
        [self.next_due(), own].into_iter().flatten().min()
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
