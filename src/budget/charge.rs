//! One connection's account with the budget: what it holds beyond its floor
//! (the part of the budget set aside for it, see `FLOOR`), as the budget was
//! last told, and its place among those waiting for more. Every change a
//! connection makes to the count goes through here, so the budget's shared
//! part is always the sum of its connections' charges plus the buffers of
//! connections gone that the I/O engine still holds (given back as they are
//! reaped: `Server::orphan`).

use super::{Budget, FLOOR, Place};
use crate::origin::Origin;

#[derive(Debug, Default)]
pub struct Charge {
    /// What the budget counts this connection as holding in its shared part.
    beyond: usize,
    /// Its place among the connections waiting for memory, if it waits.
    place: Option<Place>,
}

/// What holding `held` bytes takes from the shared part.
fn beyond(held: usize) -> usize {
    held.saturating_sub(FLOOR)
}

impl Charge {
    /// Whether it waits for memory.
    pub fn waiting(&self) -> bool {
        self.place.is_some()
    }

    /// What the budget counts the connection as holding in its shared part.
    pub fn counted(&self) -> usize {
        self.beyond
    }

    /// Tells the budget the connection now holds `held` bytes.
    pub fn settle(&mut self, budget: &mut Budget, held: usize) {
        self.set(budget, beyond(held));
    }

    fn set(&mut self, budget: &mut Budget, beyond: usize) {
        if beyond > self.beyond {
            budget.take(beyond - self.beyond);
        } else if beyond < self.beyond {
            budget.give(self.beyond - beyond);
        }
        self.beyond = beyond;
    }

    /// Whether `who`, holding `held` bytes, may grow by `grow` now: at once
    /// within its floor; beyond it, if the shared part has room and nobody
    /// is before it. If not, it waits until the server resumes it.
    pub fn admit(&mut self, budget: &mut Budget, who: Origin, held: usize, grow: usize) -> bool {
        let extra = beyond(held.saturating_add(grow)) - beyond(held);
        if extra == 0 {
            if self.place.is_some() {
                budget.leave(self.place.take());
            }
            return true;
        }
        budget.admit(who, held, extra, &mut self.place)
    }

    /// The budget resumed this connection: it is out of its place, and goes
    /// ahead of the others once.
    pub fn granted(&mut self) {
        self.place = None;
    }

    /// The connection goes: what it holds goes back, but for `lent`, the
    /// buffers still in the I/O engine, which stay counted (in the shared
    /// part: the connection's floor goes with it) until they are reaped.
    pub fn close(&mut self, budget: &mut Budget, lent: usize) {
        self.set(budget, lent);
        self.beyond = 0;
        budget.leave(self.place.take());
    }
}
