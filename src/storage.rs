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
    /// READ: its data, into a buffer the engine fills; WRITE: a copy of its
    /// payload.
    pub fn owed(&self) -> Owed {
        let len = self.call.len as usize; // ≤ max_request, checked
        match self.req.kind {
            CMD_READ => Owed {
                data: len,
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
            CMD_READ => self.call.len as usize, // ≤ max_request, checked
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
    pub export: Export,
    /// The filters in front of the backend, and the requests they hold.
    pub filters: Stack,
    /// Requests answered since the start (SIGUSR1's summary).
    pub tally: Tally,
    /// Scratch space for extents, reused by every request.
    extents: Vec<Extent>,
    /// Requests in the engine, by the tag their completion carries.
    flights: Slab<Flight>,
}

impl Storage {
    /// `export` is what the backend serves; the filters shape what clients
    /// are told of it.
    pub fn new(backend: Box<dyn Backend>, mut export: Export, mut filters: Stack) -> Storage {
        filters.shape(&mut export);
        Storage {
            backend,
            export,
            filters,
            tally: Tally::default(),
            extents: Vec::new(),
            flights: Slab::new(),
        }
    }

    /// A request's outcome (0, or the NBD error its reply carries), from
    /// filter stage `from` (the one that answered it, or the bottom): counted,
    /// and told to the filters above.
    pub fn answered(&mut self, call: &Call, errno: u32, from: usize, now: std::time::Instant) {
        self.tally.note(call.kind, call.len, errno);
        self.filters.up(call, errno, from, now);
    }

    pub fn backend(&mut self) -> &mut dyn Backend {
        &mut *self.backend
    }

    /// The backend's data and the extents last found, together: a READ split
    /// at its holes runs on both.
    pub fn split(&mut self) -> (Access<'_>, &[Extent]) {
        (self.backend.access(), &self.extents)
    }

    /// Finds at most `max` (≥ 1) extents from `offset` (see `Backend::extents`)
    /// into the scratch list, which it returns; `max` 0 just empties it.
    pub fn find_extents(
        &mut self,
        offset: u64,
        len: u64,
        max: usize,
    ) -> std::io::Result<&mut Vec<Extent>> {
        self.extents.clear();
        if max > 0 {
            self.backend.extents(offset, len, max, &mut self.extents)?;
        }
        Ok(&mut self.extents)
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
        engine.submit(op, tag as u64).map_err(|(op, _)| {
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
