//! Things held until a time: requests a filter holds (`Stack`), operations a
//! stage below a storage layer holds (`beneath`). One queue, ordered by when
//! each is due and, among equal times, by when it was held.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use slab::Slab;

pub struct Due<T> {
    items: Slab<T>,
    /// When each is due, soonest first (ties in the order held).
    order: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    /// Counts holds, to keep the order stable among equal times.
    seq: u64,
}

impl<T> Default for Due<T> {
    fn default() -> Due<T> {
        Due {
            items: Slab::new(),
            order: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<T> Due<T> {
    /// Holds `item` until `at`.
    pub fn hold(&mut self, item: T, at: Instant) {
        let key = self.items.insert(item);
        self.seq += 1;
        self.order.push(Reverse((at, self.seq, key)));
    }

    /// When the next is due.
    pub fn next(&self) -> Option<Instant> {
        self.order.peek().map(|Reverse((at, ..))| *at)
    }

    /// The next due by `now` (or the next whatever its time, if `all`).
    pub fn release(&mut self, now: Instant, all: bool) -> Option<T> {
        let Reverse((at, _, key)) = *self.order.peek()?;
        if at > now && !all {
            return None;
        }
        self.order.pop();
        self.items.try_remove(key)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn in_order_of_time_then_of_holding() {
        let t = Instant::now();
        let mut d = Due::default();
        d.hold("late", t + Duration::from_secs(2));
        d.hold("first", t + Duration::from_secs(1));
        d.hold("second", t + Duration::from_secs(1));
        assert_eq!(d.next(), Some(t + Duration::from_secs(1)));
        assert_eq!(d.release(t, false), None);
        assert_eq!(d.release(t, true), Some("first"));
        assert_eq!(d.release(t + Duration::from_secs(1), false), Some("second"));
        assert_eq!(d.len(), 1);
        assert_eq!(d.release(t + Duration::from_secs(5), false), Some("late"));
        assert_eq!(d.next(), None);
    }
}
