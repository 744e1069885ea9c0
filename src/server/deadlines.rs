//! Deadlines of one kind (the handshake's, a stall's), in one queue.
//!
//! Every connection gets the same timeout, so deadlines come out sorted by
//! the time they start from and one queue (no timer per connection) serves
//! them all; one that starts earlier than the last (a half-sent request whose
//! last byte came before others' first) is put in its place. Entries of
//! connections that finished the handshake or left are dropped when they
//! reach the front, and the whole queue is compacted when they are most of it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::origin::Origin;

#[derive(Debug, Clone, Copy)]
struct Entry {
    at: Instant,
    to: Origin,
}

/// The queue; `live(origin, at)` answers whether an entry still counts: its
/// connection is still there and negotiating, say.
#[derive(Debug)]
pub struct Deadlines {
    timeout: Option<Duration>,
    queue: VecDeque<Entry>,
}

impl Deadlines {
    /// `--handshake-timeout`; None: no deadlines at all.
    pub fn new(timeout: Option<Duration>) -> Deadlines {
        Deadlines {
            timeout,
            queue: VecDeque::new(),
        }
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Starts the clock for connection `to` from `since` (accepted then, say),
    /// with `open` connections in all. Returns the deadline, if there is a
    /// timeout.
    pub fn push(
        &mut self,
        to: Origin,
        since: Instant,
        open: usize,
        live: impl Fn(Origin, Instant) -> bool,
    ) -> Option<Instant> {
        let at = since + self.timeout?;
        let entry = Entry { at, to };
        if self.queue.back().is_none_or(|d| d.at <= at) {
            self.queue.push_back(entry);
        } else {
            let i = self.queue.partition_point(|d| d.at <= at);
            self.queue.insert(i, entry);
        }
        self.compact(open, live);
        Some(at)
    }

    /// Forgets stale entries once they are most of the queue: one client stalled
    /// at the front would otherwise keep every later entry, one per connection,
    /// until it expires. Amortized O(1) per connection.
    fn compact(&mut self, open: usize, live: impl Fn(Origin, Instant) -> bool) {
        if self.queue.len() <= 2 * open + 64 {
            return;
        }
        self.queue.retain(|d| live(d.to, d.at));
        self.queue.shrink_to(2 * self.queue.len() + 64);
    }

    /// The next connection whose deadline has passed by `now`. Stale entries
    /// at the front are dropped on the way, so that `next` only ever wakes the
    /// loop for a deadline that still counts.
    pub fn expired(
        &mut self,
        now: Instant,
        live: impl Fn(Origin, Instant) -> bool,
    ) -> Option<Origin> {
        while let Some(d) = self.queue.front().copied() {
            let alive = live(d.to, d.at);
            if alive && d.at > now {
                return None;
            }
            self.queue.pop_front();
            if alive {
                return Some(d.to);
            }
        }
        None
    }

    /// When the oldest deadline falls.
    pub fn next(&self) -> Option<Instant> {
        self.queue.front().map(|d| d.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(k: usize) -> Origin {
        Origin::new(k, k as u64 + 10)
    }

    #[test]
    fn expire_in_order_skipping_the_finished() {
        let t = Duration::from_secs(1);
        let mut d = Deadlines::new(Some(t));
        let now = Instant::now();
        let live = |o: Origin, _| o.key != 1;
        for k in 0..3 {
            d.push(o(k), now, 3, live);
        }
        assert_eq!(d.expired(now, live), None);
        assert_eq!(d.next(), Some(now + t));
        assert_eq!(d.expired(now + t, live), Some(o(0)));
        assert_eq!(d.expired(now + t, live), Some(o(2)), "1 finished");
        assert_eq!(d.expired(now + t, live), None);
        assert_eq!(d.next(), None);
    }

    #[test]
    fn compacts_when_mostly_stale_and_none_without_a_timeout() {
        let mut d = Deadlines::new(Some(Duration::from_secs(1)));
        let now = Instant::now();
        for k in 0..1000 {
            d.push(o(k), now, 1, |o, _| o.key == 0);
        }
        assert!(d.queue.len() <= 2 + 64 + 1, "{} entries", d.queue.len());
        let mut off = Deadlines::new(None);
        assert_eq!(off.push(o(0), now, 1, |_, _| true), None);
        assert_eq!(off.next(), None);
    }

    #[test]
    fn an_earlier_start_takes_its_place() {
        let t = Duration::from_secs(10);
        let mut d = Deadlines::new(Some(t));
        let now = Instant::now();
        let live = |_, _| true;
        d.push(o(0), now, 3, live);
        d.push(o(1), now + Duration::from_secs(2), 3, live);
        let at = d.push(o(2), now + Duration::from_secs(1), 3, live);
        assert_eq!(at, Some(now + Duration::from_secs(11)));
        let order: Vec<usize> = d.queue.iter().map(|e| e.to.key).collect();
        assert_eq!(order, [0, 2, 1]);
        assert_eq!(d.expired(now + Duration::from_secs(11), live), Some(o(0)));
        assert_eq!(d.expired(now + Duration::from_secs(11), live), Some(o(2)));
        assert_eq!(d.expired(now + Duration::from_secs(11), live), None);
    }
}
