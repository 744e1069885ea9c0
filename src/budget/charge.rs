//! One connection's account with the budget: what it was last counted as
//! holding, and the queue it waits in for more. Every change a connection makes
//! to the count goes through here, so the budget's total is always the sum of
//! its connections' charges plus the buffers of connections gone that the I/O
//! engine still holds (given back as they are reaped: `Storage::drop_flight`).

use super::{Budget, Class};
use crate::origin::Origin;

#[derive(Debug, Default)]
pub struct Charge {
    /// What the budget was last told this connection holds.
    held: usize,
    /// The budget queue it waits in, if any.
    queued: Option<Class>,
}

impl Charge {
    /// Tells the budget the connection now holds `held` bytes.
    pub fn settle(&mut self, budget: &mut Budget, held: usize) {
        if held > self.held {
            budget.take(held - self.held);
        } else {
            budget.give(self.held - held);
        }
        self.held = held;
    }

    /// Whether `who`, holding `held` bytes, may grow by `grow` now; if not, it
    /// waits in the budget's queue until the server resumes it.
    pub fn admit(&mut self, budget: &mut Budget, who: Origin, held: usize, grow: usize) -> bool {
        budget.admit(who, held, grow, &mut self.queued)
    }

    /// The budget resumed this connection: it is out of its queue, and goes
    /// ahead of it once.
    pub fn granted(&mut self) {
        self.queued = None;
    }

    /// The connection goes: what it holds goes back, but for `lent`, the
    /// buffers still in the I/O engine, which come back as they are reaped.
    pub fn close(&mut self, budget: &mut Budget, who: Origin, lent: usize) {
        budget.give(self.held - lent.min(self.held));
        self.held = 0;
        budget.leave(who, self.queued.take());
    }
}
