//! The server's memory budget: one count of the bytes its connections cost
//! (request payloads buffered, replies not yet sent, buffers lent to the I/O
//! engine, and what each connection costs just by being open: its socket
//! buffers in the kernel, its TLS buffers, its state), one limit, and the
//! connections waiting for memory to free.
//!
//! The budget is cut in two. **The connections' share** (up to three
//! quarters of it) holds, for every
//! connection the server admits (`--max-connections`, by default derived from
//! the budget: `connection_limit`), its fixed costs at their worst and a
//! `floor` of buffers it may always hold without asking: enough for the
//! handshake and small requests. It is set aside whether the connections are
//! open or not, so a new client is always served however the others behave.
//! **The shared part**, the rest, is what connections grow into beyond their
//! floors: large payloads, replies their clients have not read.
//!
//! Connections report what they hold as it changes (`Charge::settle`: an add
//! per request, no system call) and ask before they grow past their floor
//! (`admit`): before reading a payload or building a large reply. The answer
//! is backpressure, never an allocation failure: a connection refused stops
//! reading and waits its turn. Waiting connections are resumed in a fair
//! order (`ready`): the one holding least first, so the heaviest holder waits
//! first; among equals, the first to ask. The front waits until what it asked
//! for fits, and nobody passes it, so a large request is not starved by a
//! stream of small ones. A connection's side of this is its `Charge`.

mod charge;
pub mod host;
mod pressure;

pub use charge::Charge;

use std::collections::BTreeMap;

use crate::origin::Origin;
use pressure::Pressure;

/// The smallest budget that can be asked for (`--memory-budget`).
pub const MIN_BUDGET: usize = 4 << 20;
/// What a connection may always hold without asking: an input block and an
/// output block (64 KiB each, see `crate::buf`), and room for a small
/// request's payload and reply besides.
pub const FLOOR: usize = 160 << 10;
/// The share of the budget the connections' fixed costs and floors may take
/// at most (when the connection limit is derived from it, and when it is
/// given): three quarters. Their worst case is rare (every client's socket
/// full, every floor used), and many clients matter more than one huge
/// request; the quarter left still takes a 32 MiB request from 256 MiB.
fn connections_share(limit: usize) -> usize {
    limit / 4 * 3
}

/// Where a waiting connection stands: what it held when it asked (lightest
/// first), then when it first asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    held: usize,
    seq: u64,
}

#[derive(Debug, Clone, Copy)]
struct Waiter {
    who: Origin,
    /// The growth of the shared part it asked for.
    need: usize,
}

#[derive(Debug)]
pub struct Budget {
    limit: usize,
    /// Set aside for the connections admitted: each one's fixed costs and
    /// `FLOOR`.
    connections: usize,
    /// Bytes held in the shared part (beyond connections' floors, and the
    /// buffers of connections gone that the I/O engine still holds).
    used: usize,
    /// Connections refused, in the order they will be resumed.
    waiting: BTreeMap<Place, Waiter>,
    /// The next waiter's arrival number.
    seq: u64,
    /// The connection `ready` just resumed: it goes ahead of the others once.
    ticket: Option<Origin>,
    /// Whether connections are waiting, for the log.
    pressure: Pressure,
}

impl Budget {
    /// A budget of `limit` bytes (at least `MIN_BUDGET`), no connections'
    /// share set aside yet (`set_connections`).
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit: limit.max(MIN_BUDGET),
            connections: 0,
            used: 0,
            waiting: BTreeMap::new(),
            seq: 0,
            ticket: None,
            pressure: Pressure::default(),
        }
    }

    /// No limit to speak of: what the unit tests and the fuzz harness run with.
    pub fn unlimited() -> Budget {
        Budget::new(usize::MAX / 4)
    }

    #[cfg(test)]
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held in the shared part.
    pub fn used(&self) -> usize {
        self.used
    }

    /// The shared part: what connections may hold beyond their floors.
    pub fn shared(&self) -> usize {
        self.limit - self.connections
    }

    /// How many connections the budget can hold at their worst, each costing
    /// `fixed` bytes besides its floor (see `connections_share`).
    pub fn connection_limit(&self, fixed: usize) -> usize {
        (connections_share(self.limit) / (fixed + FLOOR)).max(1)
    }

    /// Sets aside the connections' share for `n` connections each costing
    /// `fixed` bytes besides its floor (at most `connections_share`, see
    /// `connection_limit`).
    pub fn set_connections(&mut self, n: usize, fixed: usize) {
        let share = n.saturating_mul(fixed + FLOOR);
        self.connections = share.min(connections_share(self.limit));
    }

    /// The largest request it can always admit in time: a power of two, at
    /// most half of the shared part, so that one fits while others hold the
    /// rest.
    pub fn largest_request(&self) -> usize {
        1 << (self.shared() / 2).ilog2()
    }

    /// The shared part holds `n` more bytes.
    pub fn take(&mut self, n: usize) {
        self.used += n;
    }

    /// The shared part holds `n` fewer bytes.
    pub fn give(&mut self, n: usize) {
        debug_assert!(n <= self.used, "gave back {n} of {}", self.used);
        self.used -= n.min(self.used);
    }

    /// Whether `who`, holding `held` bytes, may have `n` more of the shared
    /// part now. If not, it waits (`place` says where, and is the caller's to
    /// keep) and will be resumed by `ready` in turn; if so, it leaves its place.
    pub fn admit(&mut self, who: Origin, held: usize, n: usize, place: &mut Option<Place>) -> bool {
        let seq = match place.take() {
            Some(p) => {
                self.waiting.remove(&p);
                p.seq
            }
            None => {
                self.seq += 1;
                self.seq
            }
        };
        let mine = Place { held, seq };
        let first = self.ticket.is_none() && self.waiting.range(..mine).next().is_none();
        let ticket = self.ticket == Some(who);
        if (first || ticket) && self.used.saturating_add(n) <= self.shared() {
            if ticket {
                self.ticket = None;
            }
            if self.waiting.is_empty() {
                self.pressure.relieved();
            }
            return true;
        }
        self.waiting.insert(mine, Waiter { who, need: n });
        *place = Some(mine);
        self.pressure
            .refused(self.used, self.shared(), self.waiting.len());
        false
    }

    /// Takes a waiting connection out of its place (it has gone).
    pub fn leave(&mut self, place: Option<Place>) {
        if let Some(p) = place {
            self.waiting.remove(&p);
        }
        if self.waiting.is_empty() {
            self.pressure.relieved();
        }
    }

    /// The first waiting connection, if what it asked for fits now: taken out
    /// of its place, and allowed ahead of the others once (`admit`).
    pub fn ready(&mut self) -> Option<Origin> {
        let (&place, w) = self.waiting.first_key_value()?;
        if self.used.saturating_add(w.need) > self.shared() {
            return None;
        }
        let who = w.who;
        self.waiting.remove(&place);
        self.ticket = Some(who);
        Some(who)
    }

    /// The connection resumed by `ready` has had its turn.
    pub fn resumed(&mut self) {
        self.ticket = None;
        if self.waiting.is_empty() {
            self.pressure.relieved();
        }
    }

    /// Connections waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests;
