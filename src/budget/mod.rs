//! The server's memory budget: one count of the bytes its connections hold
//! (request payloads buffered, replies not yet sent, buffers lent to the I/O
//! engine), one limit, and the connections waiting for memory to free.
//!
//! Connections report what they hold as it changes (`take`, `give`: an add per
//! request, no system call) and ask before they grow (`admit`): before reading
//! a payload or building a large reply. The answer is backpressure, never an
//! allocation failure: a connection refused stops reading and waits its turn.
//!
//! Two kinds of growth. A connection that holds little, even after growing
//! ("light": a fresh client, small requests) may use the whole budget. A
//! heavier one must leave `reserve` bytes free for the light ones, so a crowd
//! of large stalled requests never keeps a fresh client from being served; and
//! heavy ones are admitted strictly in the order they asked, so a large
//! request is not starved by a stream of smaller ones. Each kind waits in its
//! own FIFO, resumed (`ready`) once what its front asked for fits, the shape of
//! the server's queue for room in the I/O engine. A connection's side of this
//! is its `Charge`.

mod charge;
pub mod host;

pub use charge::Charge;

use std::collections::VecDeque;

use crate::origin::Origin;

/// The reserve kept for light connections: an eighth of the budget, within
/// these bounds (and at most a quarter of it).
const MIN_RESERVE: usize = 1 << 20;
const MAX_RESERVE: usize = 64 << 20;
/// Holding at most this much (an eighth of the reserve, within these bounds),
/// a connection is light: it can read a 64 KiB chunk and answer small requests.
const MIN_LIGHT: usize = 256 << 10;
const MAX_LIGHT: usize = 2 << 20;
/// The smallest budget that can be asked for (`--memory-budget`).
pub const MIN_BUDGET: usize = 4 << 20;

/// Which queue a connection waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Light,
    Heavy,
}

#[derive(Debug, Clone, Copy)]
struct Waiter {
    who: Origin,
    /// The growth it asked for.
    need: usize,
}

#[derive(Debug)]
pub struct Budget {
    limit: usize,
    reserve: usize,
    light: usize,
    used: usize,
    /// Connections refused, light and heavy, in the order they asked.
    queues: [VecDeque<Waiter>; 2],
    /// The connection `ready` just resumed: it goes ahead of its queue once.
    ticket: Option<Origin>,
}

impl Budget {
    /// A budget of `limit` bytes (at least `MIN_BUDGET`).
    pub fn new(limit: usize) -> Budget {
        let limit = limit.max(MIN_BUDGET);
        let reserve = (limit / 8).clamp(MIN_RESERVE, MAX_RESERVE).min(limit / 4);
        Budget {
            limit,
            reserve,
            light: (reserve / 8).clamp(MIN_LIGHT, MAX_LIGHT),
            used: 0,
            queues: [VecDeque::new(), VecDeque::new()],
            ticket: None,
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

    /// The largest request it can always admit in time: a power of two, at
    /// most half of what heavy connections may hold together, so that one
    /// fits while others hold the rest.
    pub fn largest_request(&self) -> usize {
        let half = (self.limit - self.reserve) / 2;
        1 << half.ilog2()
    }

    /// A connection holds `n` more bytes.
    pub fn take(&mut self, n: usize) {
        self.used += n;
    }

    /// A connection holds `n` fewer bytes.
    pub fn give(&mut self, n: usize) {
        debug_assert!(n <= self.used, "gave back {n} of {}", self.used);
        self.used -= n.min(self.used);
    }

    fn class(&self, held: usize, n: usize) -> Class {
        if held.saturating_add(n) <= self.light {
            Class::Light
        } else {
            Class::Heavy
        }
    }

    fn room(&self, class: Class, n: usize) -> bool {
        let after = self.used.saturating_add(n);
        match class {
            Class::Light => after <= self.limit,
            Class::Heavy => after.saturating_add(self.reserve) <= self.limit,
        }
    }

    /// Whether `who`, holding `held` bytes, may grow by `n` now. If not, it
    /// is queued (`queued` says where, and is the caller's to keep) and will
    /// be resumed by `ready` in turn; if so, it leaves any queue it was in.
    pub fn admit(
        &mut self,
        who: Origin,
        held: usize,
        n: usize,
        queued: &mut Option<Class>,
    ) -> bool {
        let class = self.class(held, n);
        let q = &mut self.queues[class as usize];
        let mine = *queued == Some(class) && q.front().is_some_and(|w| w.who == who);
        if mine && let Some(front) = q.front_mut() {
            front.need = n; // what it asks for now, when it is resumed
        }
        let in_turn = mine || q.is_empty() || self.ticket == Some(who);
        if in_turn && self.room(class, n) {
            self.leave(who, *queued);
            *queued = None;
            if self.ticket == Some(who) {
                self.ticket = None;
            }
            return true;
        }
        if *queued != Some(class) {
            self.leave(who, *queued);
            self.queues[class as usize].push_back(Waiter { who, need: n });
            *queued = Some(class);
        }
        false
    }

    /// Takes `who` out of the queue it is in (a connection that has gone, or
    /// was admitted after asking as another class).
    pub fn leave(&mut self, who: Origin, queued: Option<Class>) {
        let Some(class) = queued else { return };
        let q = &mut self.queues[class as usize];
        if let Some(i) = q.iter().position(|w| w.who == who) {
            q.remove(i);
        }
    }

    /// The next waiting connection whose growth fits now, taken out of its
    /// queue and allowed ahead of it once (`admit`); light ones first.
    pub fn ready(&mut self) -> Option<Origin> {
        for class in [Class::Light, Class::Heavy] {
            let q = &self.queues[class as usize];
            if let Some(w) = q.front().copied()
                && self.room(class, w.need)
            {
                self.queues[class as usize].pop_front();
                self.ticket = Some(w.who);
                return Some(w.who);
            }
        }
        None
    }

    /// The connection resumed by `ready` has had its turn.
    pub fn resumed(&mut self) {
        self.ticket = None;
    }

    /// Connections waiting.
    pub fn waiting(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn who(n: u64) -> Origin {
        Origin::new(n as usize, n)
    }

    #[test]
    fn sizes_follow_the_limit() {
        let b = Budget::new(256 * MIB);
        assert_eq!((b.reserve, b.light), (32 * MIB, 2 * MIB));
        assert_eq!(b.largest_request(), 64 * MIB);
        let small = Budget::new(0);
        assert_eq!(small.limit(), MIN_BUDGET);
        assert_eq!((small.reserve, small.light), (MIB, MIN_LIGHT));
        assert_eq!(small.largest_request(), MIB);
        assert_eq!(Budget::new(64 * MIB).largest_request(), 16 * MIB);
        assert!(Budget::unlimited().largest_request() >= 64 * MIB);
    }

    #[test]
    fn light_growth_may_use_the_reserve_heavy_may_not() {
        let mut b = Budget::new(64 * MIB); // reserve 8 MiB, light 1 MiB
        let (mut qa, mut qb) = (None, None);
        b.take(55 * MIB);
        assert!(b.admit(who(1), 0, 64 << 10, &mut qa), "light");
        assert!(
            !b.admit(who(2), 0, 4 * MIB, &mut qb),
            "heavy: the reserve stays"
        );
        assert_eq!(qb, Some(Class::Heavy));
        b.take(9 * MIB);
        assert!(
            !b.admit(who(1), 0, 64 << 10, &mut qa),
            "nothing left at all"
        );
        assert_eq!(qa, Some(Class::Light));
        assert_eq!(b.ready(), None);
        b.give(10 * MIB);
        assert_eq!(b.ready(), Some(who(1)), "light first, once it fits");
        assert!(b.admit(who(1), 0, 64 << 10, &mut None));
        b.resumed();
        assert_eq!(b.ready(), None, "4 MiB and the reserve do not fit yet");
        b.give(20 * MIB);
        assert_eq!(b.ready(), Some(who(2)));
        assert!(b.admit(who(2), 0, 4 * MIB, &mut None));
        b.resumed();
        assert_eq!(b.waiting(), 0);
    }

    #[test]
    fn heavy_growth_goes_in_turn() {
        let mut b = Budget::new(64 * MIB);
        let mut q = [None; 4];
        b.take(50 * MIB);
        assert!(!b.admit(who(0), 0, 16 * MIB, &mut q[0]));
        assert!(!b.admit(who(1), 0, 2 * MIB, &mut q[1]), "behind the first");
        b.give(40 * MIB);
        // Room for both, but the first asked first: a newcomer queues too.
        assert!(!b.admit(who(2), 0, 2 * MIB, &mut q[2]));
        assert!(!b.admit(who(1), 0, 2 * MIB, &mut q[1]), "not its turn");
        assert!(
            b.admit(who(0), 0, 16 * MIB, &mut q[0]),
            "its turn, at the front"
        );
        b.take(16 * MIB);
        assert_eq!(b.ready(), Some(who(1)));
        assert!(b.admit(who(1), 0, 2 * MIB, &mut None));
        b.resumed();
        // A queued connection that became light goes at once and leaves the
        // heavy queue.
        assert!(b.admit(who(2), 0, 64 << 10, &mut q[2]));
        assert_eq!((q[2], b.waiting()), (None, 0));
    }

    #[test]
    fn a_gone_connection_leaves_its_queue() {
        let mut b = Budget::new(64 * MIB);
        b.take(64 * MIB);
        let mut q = None;
        assert!(!b.admit(who(7), 0, 10, &mut q));
        b.leave(who(7), q);
        b.give(64 * MIB);
        assert_eq!(b.ready(), None);
    }
}
