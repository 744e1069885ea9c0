//! What every connection's requests act on: the export, the filters in front
//! of the backend and the backend itself, and the requests that have left
//! their connection for the backend's I/O engine (`Flight`s), each found again
//! by the tag its completion carries.
//!
//! Single-threaded: `&mut` is all the locking there is, and every connection
//! sees every acknowledged write.

use slab::Slab;

use crate::agreement::Agreement;
use crate::aio::{Done, Engine, Op};
use crate::backend::{Access, Backend, Extent};
use crate::catalog::Catalog;
use crate::export::Export;
use crate::filter::{Call, Held, Stack};
use crate::origin::Origin;
use crate::proto::request::Request;
use crate::proto::{CMD_READ, CMD_WRITE};
use crate::tally::Tally;

/// A request the I/O engine is working on: who asked, and what its reply needs.
#[derive(Debug, Clone, Copy)]
pub struct Flight {
    pub origin: Origin,
    pub agreed: Agreement,
    /// The client's request, as sent (its reply answers this).
    pub req: Request,
    /// What runs below the filters (`call.len`: the length it acts on).
    pub call: Call,
}

/// What a request that has left its connection (for the I/O engine, or held
/// by a filter) still costs it, until it comes back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owed {
    /// Bytes of data its reply will carry: output still to come, which counts
    /// against its connection's output limit as queued output does.
    pub data: usize,
    /// Bytes of buffer it holds outside the connection (the engine's buffer,
    /// a held WRITE's payload), counted against the memory budget until it
    /// comes back, whether or not its connection is still there.
    pub lent: usize,
}

impl Flight {
    /// READ: its data, into a buffer the engine fills (its reply also
    /// carries the zeroes past a filter's cut); WRITE: a copy of its payload.
    pub fn owed(&self) -> Owed {
        let len = self.call.len as usize; // ≤ max_request, checked
        match self.req.kind {
            CMD_READ => Owed {
                data: self.req.length as usize, // ≤ max_request, checked
                lent: len,
            },
            CMD_WRITE => Owed { data: 0, lent: len },
            _ => Owed::default(),
        }
    }
}

impl Held {
    /// A held READ's data is still to come; a held WRITE holds its payload.
    pub fn owed(&self) -> Owed {
        let data = match self.req.kind {
            CMD_READ => self.req.length as usize, // ≤ max_request, checked
            _ => 0,
        };
        Owed {
            data,
            lent: self.payload.len(),
        }
    }
}

pub struct Storage {
    backend: Box<dyn Backend>,
    /// The server's export: the one served, or what the exports a backend
    /// serves by name share (`catalog`). A connection's own is in its
    /// agreement.
    pub export: Export,
    /// The filters in front of the backend, and the requests they hold.
    pub filters: Stack,
    /// Requests answered since the start (SIGUSR1's summary).
    pub tally: Tally,
    /// Scratch space for extents, reused by every request.
    extents: Vec<Extent>,
    /// Requests in the engine, by the tag their completion carries.
    flights: Slab<Flight>,
    /// Work done on the loop beyond an ordinary request's, since the last
    /// `take_work`, in ordinary requests.
    work: usize,
}

/// Extents found with a system call each (a file's SEEK_DATA/SEEK_HOLE, about
/// 1 µs apiece) that cost the loop as much as an ordinary request.
const EXTENTS_PER_REQUEST: usize = 8;

impl Storage {
    /// `export` is what clients are told, as the filters (prepared:
    /// `Stack::prepare`) shaped it.
    pub fn new(backend: Box<dyn Backend>, export: Export, filters: Stack) -> Storage {
        Storage {
            backend,
            export,
            filters,
            tally: Tally::default(),
            extents: Vec::new(),
            flights: Slab::new(),
            work: 0,
        }
    }

    /// A request's outcome (0, or the NBD error its reply carries), from
    /// filter stage `from` (the one that answered it, or the bottom): counted,
    /// and told to the filters above.
    pub fn answered(&mut self, call: &Call, errno: u32, from: usize, now: std::time::Instant) {
        self.tally.note(call.kind, call.len, errno);
        self.filters.up(call, errno, from, now);
    }

    #[cfg(test)]
    pub fn backend(&mut self) -> &mut dyn Backend {
        &mut *self.backend
    }

    /// The exports, as connection `conn`'s handshake lists, describes and
    /// opens them.
    pub fn catalog(&mut self, conn: u64) -> Catalog<'_> {
        Catalog::new(&self.export, self.backend.exports(), conn)
    }

    /// The backend's data and the extents last found, together: a READ split
    /// at its holes runs on both.
    pub fn split(&mut self) -> (Access<'_>, &[Extent]) {
        (self.backend.access(), &self.extents)
    }

    /// Finds at most `max` (≥ 1) extents from `offset`, as connection `conn`
    /// sees them (see `Backend::extents_for`), into the scratch list, which it
    /// returns; `max` 0 just empties it.
    pub fn find_extents(
        &mut self,
        conn: u64,
        offset: u64,
        len: u64,
        max: usize,
    ) -> std::io::Result<&mut Vec<Extent>> {
        self.extents.clear();
        if max > 0 {
            let out = &mut self.extents;
            self.backend.extents_for(conn, offset, len, max, out)?;
            if !self.export.caps.sparse_reads {
                self.work += self.extents.len() / EXTENTS_PER_REQUEST;
            }
        }
        Ok(&mut self.extents)
    }

    /// A connection has gone: the filters and the backend hear of it.
    pub fn closed(&mut self, c: crate::filter::Conn, now: std::time::Instant) {
        self.filters.closed(c, now);
        self.backend.closed(c.id);
    }

    /// Work beyond an ordinary request's done for a connection outside the
    /// request path (a LIST that read a directory), in ordinary requests.
    pub fn add_work(&mut self, n: usize) {
        self.work = self.work.saturating_add(n);
    }

    /// The loop work done beyond ordinary requests' since the last call,
    /// counted in ordinary requests: what a connection's turn is charged
    /// besides one per request.
    pub fn take_work(&mut self) -> usize {
        std::mem::take(&mut self.work)
    }

    /// The backend's I/O engine, if its data goes through one.
    pub fn engine(&mut self) -> Option<&mut Engine> {
        match self.backend.access() {
            Access::Engine(e) => Some(e),
            Access::Now(_) => None,
        }
    }

    /// Whether the engine would take another operation now (always, without one).
    pub fn has_room(&mut self) -> bool {
        self.engine().is_none_or(|e| e.has_room())
    }

    /// Hands `op` to the engine for `flight`; gives it back if there is no
    /// engine or no room (callers ask `has_room` first).
    pub fn submit(&mut self, flight: Flight, op: Op) -> Result<(), Op> {
        let Access::Engine(engine) = self.backend.access() else {
            return Err(op);
        };
        let tag = self.flights.insert(flight);
        let conn = flight.call.conn;
        engine.submit_from(op, tag as u64, conn).map_err(|(op, _)| {
            self.flights.remove(tag);
            op
        })
    }

    /// The completions the engine has, each with the request it finishes.
    /// `done` is scratch space, kept by the caller to reuse its storage.
    pub fn reap(&mut self, done: &mut Vec<Done>, out: &mut Vec<(Flight, Done)>) {
        let Access::Engine(engine) = self.backend.access() else {
            return;
        };
        engine.reap(done);
        for d in done.drain(..) {
            // Every tag was given out by `submit`: a missing one cannot happen.
            if let Some(flight) = self.flights.try_remove(d.tag as usize) {
                out.push((flight, d));
            }
        }
    }

    /// Sends the engine what this turn queued (io_uring: in one system call).
    pub fn run(&mut self) {
        if let Some(e) = self.engine() {
            e.run();
        }
    }

    /// The engine has work that no descriptor will announce: the loop must
    /// not sleep.
    pub fn busy(&mut self) -> bool {
        self.engine().is_some_and(|e| e.busy())
    }
}
