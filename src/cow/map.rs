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

/// The entries of one view, made only where something was written: leaves
/// of 1024 entries (4 KiB), and runs of whole leaves whose blocks all have
/// one entry without a slot (a zeroing or trim of a terabyte is one run, not
/// a million leaves). A leaf overrides a run it lies in. A map never
/// written costs nothing; one fully written, 4 bytes a block.
#[derive(Default)]
pub struct Map {
    leaves: BTreeMap<u64, Box<[u32]>>,
    /// First leaf -> (the leaf after the last, the entry).
    runs: BTreeMap<u64, (u64, u32)>,
}

impl Map {
    pub fn get(&self, block: u64) -> Entry {
        match self.leaves.get(&(block / LEAF)) {
            Some(leaf) => decode(leaf[(block % LEAF) as usize]),
            None => decode(self.run_entry(block / LEAF)),
        }
    }

    /// The entry of the run `leaf` lies in (0, below, if none).
    fn run_entry(&self, leaf: u64) -> u32 {
        match self.runs.range(..=leaf).next_back() {
            Some((_, &(end, e))) if end > leaf => e,
            _ => 0,
        }
    }

    pub fn set(&mut self, block: u64, e: Entry) {
        let (n, i) = (block / LEAF, (block % LEAF) as usize);
        let x = encode(e);
        if let Some(leaf) = self.leaves.get_mut(&n) {
            leaf[i] = x;
            return;
        }
        let base = self.run_entry(n);
        if x != base {
            let mut leaf = vec![base; LEAF as usize].into_boxed_slice();
            leaf[i] = x;
            self.leaves.insert(n, leaf);
        }
    }

    /// Sets `block`'s state, keeping its slot.
    pub fn set_state(&mut self, block: u64, state: State) {
        let slot = self.get(block).slot;
        self.set(block, Entry { state, slot });
    }

    /// Sets the state of every block of `blocks`, keeping their slots: whole
    /// leaves without slots become one run.
    pub fn set_states(&mut self, blocks: Range<u64>, state: State) {
        let (first, last) = (blocks.start.div_ceil(LEAF), blocks.end / LEAF);
        if first >= last {
            return blocks.for_each(|b| self.set_state(b, state));
        }
        (blocks.start..first * LEAF).for_each(|b| self.set_state(b, state));
        let x = encode(Entry { state, slot: None });
        let mut plain = Vec::new();
        for (&n, leaf) in self.leaves.range_mut(first..last) {
            if leaf.iter().any(|&e| decode(e).slot.is_some()) {
                for e in leaf.iter_mut() {
                    let slot = decode(*e).slot;
                    *e = encode(Entry { state, slot });
                }
            } else {
                plain.push(n);
            }
        }
        for n in plain {
            self.leaves.remove(&n);
        }
        self.put_run(first..last, x);
        (last * LEAF..blocks.end).for_each(|b| self.set_state(b, state));
    }

    /// Makes leaves `leaves` one run of entry `x` (none, for below), cutting
    /// the runs it overlaps.
    fn put_run(&mut self, leaves: Range<u64>, x: u32) {
        let from = match self.runs.range(..leaves.start).next_back() {
            Some((&s, &(end, _))) if end > leaves.start => s,
            _ => leaves.start,
        };
        let cut: Vec<(u64, (u64, u32))> = self
            .runs
            .range(from..leaves.end)
            .map(|(&s, &r)| (s, r))
            .collect();
        for (s, (end, e)) in cut {
            self.runs.remove(&s);
            if s < leaves.start {
                self.runs.insert(s, (leaves.start, e));
            }
            if end > leaves.end {
                self.runs.insert(leaves.end, (end, e));
            }
        }
        if x != 0 {
            self.runs.insert(leaves.start, (leaves.end, x));
        }
    }

    /// Where the run of blocks in the same state as `block` ends (at most
    /// `limit`), whatever their slots. Costs what the map holds, not what
    /// the run spans.
    pub fn same_until(&self, block: u64, limit: u64) -> u64 {
        let state = self.get(block).state;
        let mut b = block;
        while b < limit {
            let n = b / LEAF;
            if let Some(leaf) = self.leaves.get(&n) {
                let end = ((n + 1) * LEAF).min(limit);
                while b < end {
                    if decode(leaf[(b % LEAF) as usize]).state != state {
                        return b;
                    }
                    b += 1;
                }
                continue;
            }
            if decode(self.run_entry(n)).state != state {
                return b;
            }
            // Up to the next leaf, or where this run (or this gap) ends.
            let next_leaf = self
                .leaves
                .range(n + 1..)
                .next()
                .map_or(u64::MAX, |(&k, _)| k);
            let run_end = match self.runs.range(..=n).next_back() {
                Some((_, &(end, _))) if end > n => end,
                _ => self
                    .runs
                    .range(n + 1..)
                    .next()
                    .map_or(u64::MAX, |(&k, _)| k),
            };
            let stop = next_leaf.min(run_end);
            b = stop.saturating_mul(LEAF).min(limit);
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

    /// Bytes of memory it takes.
    pub fn bytes(&self) -> usize {
        self.leaves.len() * (LEAF as usize * 4 + 48) + self.runs.len() * 64
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
    fn runs_skip_what_the_map_does_not_hold() {
        let mut m = Map::default();
        assert_eq!(m.same_until(0, u64::MAX / 2), u64::MAX / 2);
        let data = Entry {
            state: State::Data,
            slot: Some(1),
        };
        m.set(5000, data);
        m.set(5002, Entry::BELOW);
        assert_eq!(m.same_until(0, 1 << 40), 5000);
        assert_eq!(m.same_until(5000, 1 << 40), 5001);
        assert_eq!(m.same_until(5001, 1 << 40), 1 << 40);
        assert_eq!(m.same_until(10, 20), 20);
        assert_eq!(m.slots(), vec![1]);
    }

    #[test]
    fn a_huge_zeroing_is_one_run() {
        let mut m = Map::default();
        let data = |slot| Entry {
            state: State::Data,
            slot: Some(slot),
        };
        m.set(3000, data(4));
        m.set(10, data(5));
        let hole = State::Zero { hole: true };
        m.set_states(5..(1 << 50), hole);
        assert_eq!(m.leaves.len(), 2, "the leaf with a slot, and block 5's");
        assert_eq!(m.runs.len(), 1);
        assert_eq!(m.get(4), Entry::BELOW);
        assert_eq!(m.get(5).state, hole);
        assert_eq!(
            m.get(3000),
            Entry {
                state: hole,
                slot: Some(4)
            }
        );
        assert_eq!(m.get((1 << 50) - 1).state, hole);
        assert_eq!(m.get(1 << 50), Entry::BELOW);
        assert_eq!(m.same_until(5, u64::MAX), 1 << 50);
        // A block written inside the run: a leaf of its own, over the run.
        m.set(1 << 40, data(6));
        assert_eq!(m.get((1 << 40) + 1).state, hole);
        assert_eq!(m.same_until(5, u64::MAX), 1 << 40);
        assert_eq!(m.same_until((1 << 40) + 1, u64::MAX), 1 << 50);
        // A run cut in two by another.
        m.set_states(1 << 30..1 << 31, State::Zero { hole: false });
        assert_eq!(m.runs.len(), 3);
        assert_eq!(m.get((1 << 31) + 7).state, hole);
        assert_eq!(m.get((1 << 30) + 7).state, State::Zero { hole: false });
        assert_eq!(m.slots(), vec![4, 5, 6]);
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
