//! Blocks being changed: an operation that changes blocks of a view (a write,
//! a zeroing, a fill from below) holds them from before it reads their state
//! until its last write to them is done, so that a read-modify-write never
//! works from a block another operation is changing. One that finds any of
//! its blocks held waits, holding none, and is woken when the holder lets go.
//!
//! Held ranges are few (at most one per operation in the engine), so a list
//! scanned in full costs less than a table of every block, and a zeroing of
//! a terabyte holds one entry, not millions.

use std::ops::Range;

use slab::Slab;

struct Held {
    view: u64,
    blocks: Range<u64>,
    /// Jobs to wake when this is let go.
    waiters: Vec<usize>,
}

#[derive(Default)]
pub struct Locks {
    held: Slab<Held>,
}

impl Locks {
    /// Holds `blocks` of `view` for `job`: the key to let them go with, or
    /// None if some are held (then `job` is woken when they are let go).
    pub fn lock(&mut self, view: u64, blocks: Range<u64>, job: usize) -> Option<usize> {
        let clash = self
            .held
            .iter_mut()
            .find(|(_, h)| h.view == view && overlap(&h.blocks, &blocks));
        if let Some((_, h)) = clash {
            h.waiters.push(job);
            return None;
        }
        Some(self.held.insert(Held {
            view,
            blocks,
            waiters: Vec::new(),
        }))
    }

    /// Lets go of what `key` holds; the jobs that waited for it go to `woken`.
    pub fn unlock(&mut self, key: usize, woken: &mut impl Extend<usize>) {
        if let Some(h) = self.held.try_remove(key) {
            woken.extend(h.waiters);
        }
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

fn overlap(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clashing_ranges_wait_others_go_on() {
        let mut l = Locks::default();
        let a = l.lock(0, 0..4, 1).expect("free");
        assert!(l.lock(0, 3..5, 2).is_none(), "block 3 is held");
        let b = l.lock(0, 4..8, 3).expect("no overlap");
        let c = l.lock(1, 0..4, 4).expect("another view");
        let mut woken = Vec::new();
        l.unlock(a, &mut woken);
        assert_eq!(woken, vec![2]);
        assert!(l.lock(0, 3..5, 2).is_none(), "block 4 is held now");
        l.unlock(b, &mut woken);
        l.unlock(c, &mut woken);
        assert_eq!(woken, vec![2, 2]);
        assert!(l.is_empty());
    }
}
