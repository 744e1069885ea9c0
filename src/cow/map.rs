//! What one view of the overlay holds: for each block of the export, whether
//! it reads from below, from the overlay file (and from which slot of it), or
//! as zeroes; and the slots of the overlay file, handed out and taken back.
//! Pure bookkeeping, no I/O.
//!
//! A block keeps its slot once it has one, even when it is zeroed or trimmed:
//! a slot is only ever given to another block after its view is gone and the
//! slot's space was punched (`Slots::release`), so no read in flight can see
//! another block's data, and no punch can land on fresh data.

use std::collections::BTreeMap;
use std::ops::Range;

/// What a block reads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// What the layer below holds: never written here.
    Below,
    /// Its slot in the overlay file, written whole.
    Data,
    /// Zeroes; `hole`: reported as a hole (trimmed, or zeroed without NO_HOLE).
    Zero { hole: bool },
}

/// A block's entry: its state, and its slot if it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub state: State,
    pub slot: Option<u32>,
}

impl Entry {
    pub const BELOW: Entry = Entry {
        state: State::Below,
        slot: None,
    };
}

/// Blocks per leaf of the map: a leaf is 4 KiB, made when one of its blocks
/// is first given an entry.
const LEAF: u64 = 1024;
/// An entry in a leaf: the state in the top two bits, slot + 1 in the rest.
const STATE_SHIFT: u32 = 30;
/// Slots are numbered below this (slot + 1 must fit in 30 bits).
pub const MAX_SLOTS: u32 = (1 << STATE_SHIFT) - 1;

/// The entries of one view: leaves only where something was written, so the
/// map of an export never written costs nothing, and one fully written costs
/// 4 bytes a block.
#[derive(Default)]
pub struct Map {
    leaves: BTreeMap<u64, Box<[u32]>>,
}

impl Map {
    pub fn get(&self, block: u64) -> Entry {
        match self.leaves.get(&(block / LEAF)) {
            Some(leaf) => decode(leaf[(block % LEAF) as usize]),
            None => Entry::BELOW,
        }
    }

    pub fn set(&mut self, block: u64, e: Entry) {
        let leaf = match self.leaves.get_mut(&(block / LEAF)) {
            Some(leaf) => leaf,
            None if e == Entry::BELOW => return,
            None => self
                .leaves
                .entry(block / LEAF)
                .or_insert_with(|| vec![0; LEAF as usize].into_boxed_slice()),
        };
        leaf[(block % LEAF) as usize] = encode(e);
    }

    /// Sets `block`'s state, keeping its slot.
    pub fn set_state(&mut self, block: u64, state: State) {
        let slot = self.get(block).slot;
        self.set(block, Entry { state, slot });
    }

    /// Where the run of blocks that read from below, from `block`, ends (at
    /// most `limit`). Leaves that were never made are passed over whole.
    pub fn below_until(&self, block: u64, limit: u64) -> u64 {
        let mut b = block;
        while b < limit {
            let Some(leaf) = self.leaves.get(&(b / LEAF)) else {
                // No leaf here: up to the next one that exists.
                let next = self
                    .leaves
                    .range(b / LEAF + 1..)
                    .next()
                    .map(|(k, _)| k * LEAF);
                b = next.unwrap_or(limit).min(limit);
                continue;
            };
            let end = ((b / LEAF + 1) * LEAF).min(limit);
            while b < end {
                if decode(leaf[(b % LEAF) as usize]).state != State::Below {
                    return b;
                }
                b += 1;
            }
        }
        limit
    }

    /// Every slot the view holds, in order.
    pub fn slots(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .leaves
            .values()
            .flat_map(|l| l.iter().filter_map(|&x| decode(x).slot))
            .collect();
        v.sort_unstable();
        v
    }

    /// Bytes of memory its leaves take.
    pub fn bytes(&self) -> usize {
        self.leaves.len() * (LEAF as usize * 4 + 48)
    }
}

fn encode(e: Entry) -> u32 {
    let state = match e.state {
        State::Below => 0,
        State::Data => 1,
        State::Zero { hole: true } => 2,
        State::Zero { hole: false } => 3,
    };
    (state << STATE_SHIFT) | e.slot.map_or(0, |s| s + 1)
}

fn decode(x: u32) -> Entry {
    let state = match x >> STATE_SHIFT {
        0 => State::Below,
        1 => State::Data,
        2 => State::Zero { hole: true },
        _ => State::Zero { hole: false },
    };
    let slot = (x & MAX_SLOTS).checked_sub(1);
    Entry { state, slot }
}

/// The slots of the overlay file: the next never used, and runs given back.
#[derive(Default)]
pub struct Slots {
    next: u32,
    /// Runs given back (`release`), to be handed out again first.
    free: Vec<Range<u32>>,
}

impl Slots {
    /// A run of at most `n` (≥ 1) consecutive slots, as long as one is at hand
    /// (the first run given back, else fresh ones); None: the overlay is full.
    pub fn take(&mut self, n: u32) -> Option<Range<u32>> {
        if let Some(r) = self.free.last_mut() {
            let got = r.start..r.start + n.min(r.end - r.start);
            r.start = got.end;
            if r.start == r.end {
                self.free.pop();
            }
            return Some(got);
        }
        let n = n.min(MAX_SLOTS - self.next);
        if n == 0 {
            return None;
        }
        let got = self.next..self.next + n;
        self.next += n;
        Some(got)
    }

    /// Slots that may be handed out again (their space already punched).
    pub fn release(&mut self, r: Range<u32>) {
        if r.end == self.next {
            self.next = r.start; // the end of the file: just move back
        } else if r.start < r.end {
            self.free.push(r);
        }
    }
}

/// `slots` (sorted) as runs of consecutive slots.
pub fn runs(slots: &[u32]) -> Vec<Range<u32>> {
    let mut out: Vec<Range<u32>> = Vec::new();
    for &s in slots {
        match out.last_mut() {
            Some(r) if r.end == s => r.end = s + 1,
            _ => out.push(s..s + 1),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let mut m = Map::default();
        assert_eq!(m.get(5), Entry::BELOW);
        m.set(5, Entry::BELOW);
        assert_eq!(m.bytes(), 0, "setting below makes no leaf");
        for e in [
            Entry {
                state: State::Data,
                slot: Some(0),
            },
            Entry {
                state: State::Zero { hole: true },
                slot: Some(MAX_SLOTS - 1),
            },
            Entry {
                state: State::Zero { hole: false },
                slot: None,
            },
            Entry {
                state: State::Below,
                slot: Some(7),
            },
        ] {
            m.set(3_000_000_000, e);
            assert_eq!(m.get(3_000_000_000), e);
        }
        m.set_state(3_000_000_000, State::Data);
        assert_eq!(m.get(3_000_000_000).slot, Some(7), "the slot stays");
        assert_eq!(m.leaves.len(), 1);
    }

    #[test]
    fn runs_below_skip_missing_leaves() {
        let mut m = Map::default();
        assert_eq!(m.below_until(0, u64::MAX / 2), u64::MAX / 2);
        let data = Entry {
            state: State::Data,
            slot: Some(1),
        };
        m.set(5000, data);
        m.set(5002, Entry::BELOW);
        assert_eq!(m.below_until(0, 1 << 40), 5000);
        assert_eq!(m.below_until(5000, 1 << 40), 5000);
        assert_eq!(m.below_until(5001, 1 << 40), 1 << 40);
        assert_eq!(m.below_until(10, 20), 20);
        assert_eq!(m.slots(), vec![1]);
    }

    #[test]
    fn slots_are_reused_once_released() {
        let mut s = Slots::default();
        assert_eq!(s.take(4), Some(0..4));
        assert_eq!(s.take(2), Some(4..6));
        s.release(0..3);
        assert_eq!(s.take(2), Some(0..2));
        assert_eq!(s.take(5), Some(2..3), "what the run has left");
        assert_eq!(s.take(1), Some(6..7));
        s.release(6..7);
        assert_eq!(s.take(1), Some(6..7), "the end moved back");
        assert_eq!(runs(&[1, 2, 3, 7, 9, 10]), vec![1..4, 7..8, 9..11]);
        let mut full = Slots {
            next: MAX_SLOTS - 1,
            free: Vec::new(),
        };
        assert_eq!(full.take(8), Some(MAX_SLOTS - 1..MAX_SLOTS));
        assert_eq!(full.take(1), None);
    }
}
