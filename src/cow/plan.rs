//! Where the bytes of a request are, block by block: runs that read from
//! below, from the overlay (consecutive slots: one read), or as zeroes; and
//! where a write's bytes go. Pure: the map in, runs out.

use std::ops::Range;

use super::map::{Map, State};

/// Blocks of `bs` bytes over an export of `size` bytes (the last block may
/// be short).
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub bs: u64,
    pub size: u64,
}

impl Geometry {
    pub fn block(&self, offset: u64) -> u64 {
        offset / self.bs
    }

    pub fn start(&self, block: u64) -> u64 {
        block * self.bs
    }

    /// Where block `block` ends: the next one's start, or the export's end.
    pub fn end(&self, block: u64) -> u64 {
        ((block + 1) * self.bs).min(self.size)
    }

    /// The blocks `[offset, offset + len)` touches (len ≥ 1).
    pub fn blocks(&self, offset: u64, len: u64) -> Range<u64> {
        self.block(offset)..self.block(offset + len - 1) + 1
    }

    /// Whether `[offset, end)` covers the whole of `block`.
    pub fn covers(&self, block: u64, offset: u64, end: u64) -> bool {
        offset <= self.start(block) && end >= self.end(block)
    }

    /// Where `block`'s slot starts in the overlay file.
    pub fn slot_at(&self, slot: u32) -> u64 {
        u64::from(slot) * self.bs
    }
}

/// Where a run of a request's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Src {
    /// The layer below, from this offset.
    Below(u64),
    /// The overlay file, from this offset.
    Overlay(u64),
    Zero,
}

/// A run of a request: `len` bytes at `at` in its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub at: usize,
    pub len: usize,
    pub src: Src,
}

/// The runs a read of `[offset, offset + len)` (len ≥ 1, within the export)
/// is made of, in order; `map` None: a view never written.
pub fn reads(map: Option<&Map>, g: Geometry, offset: u64, len: u64) -> Vec<Run> {
    let end = offset + len;
    let mut out: Vec<Run> = Vec::new();
    let mut pos = offset;
    while pos < end {
        let b = g.block(pos);
        let e = map.map_or(super::map::Entry::BELOW, |m| m.get(b));
        // Where the run of blocks in this one's state ends.
        let run_end = || {
            let last = g.block(end - 1) + 1;
            let stop = map.map_or(last, |m| m.same_until(b, last));
            g.start(stop).clamp(pos + 1, end)
        };
        let (src, upto) = match (e.state, e.slot) {
            (State::Below, _) => (Src::Below(pos), run_end()),
            (State::Data, Some(slot)) => {
                (Src::Overlay(g.slot_at(slot) + pos - g.start(b)), g.end(b))
            }
            // Data always has a slot: read as zeroes would be wrong, but
            // cannot happen.
            (State::Data, None) | (State::Zero { .. }, _) => (Src::Zero, run_end()),
        };
        let n = upto.min(end) - pos;
        push(&mut out, (pos - offset) as usize, n as usize, src);
        pos += n;
    }
    out
}

/// Appends a run, merged with the last one where the bytes continue it.
fn push(out: &mut Vec<Run>, at: usize, len: usize, src: Src) {
    if let Some(last) = out.last_mut() {
        let next = match last.src {
            Src::Below(o) => Src::Below(o + last.len as u64),
            Src::Overlay(o) => Src::Overlay(o + last.len as u64),
            Src::Zero => Src::Zero,
        };
        if next == src {
            last.len += len;
            return;
        }
    }
    out.push(Run { at, len, src });
}

/// The overlay's bytes from `file` continue run `r`.
fn follows(r: &Run, file: u64) -> bool {
    matches!(r.src, Src::Overlay(o) if o + r.len as u64 == file)
}

/// Where the bytes of a write of `[offset, offset + len)` go: runs of the
/// overlay file at consecutive slots, each with the blocks it writes. Every
/// block must have its slot (None if one has not).
pub fn writes(map: &Map, g: Geometry, offset: u64, len: u64) -> Option<Vec<(Run, Range<u64>)>> {
    let end = offset + len;
    let mut out: Vec<(Run, Range<u64>)> = Vec::new();
    for b in g.blocks(offset, len) {
        let slot = map.get(b).slot?;
        let from = offset.max(g.start(b));
        let n = (end.min(g.end(b)) - from) as usize;
        let file = g.slot_at(slot) + from - g.start(b);
        let at = (from - offset) as usize;
        match out.last_mut() {
            Some((r, blocks)) if follows(r, file) => {
                r.len += n;
                blocks.end = b + 1;
            }
            _ => out.push((
                Run {
                    at,
                    len: n,
                    src: Src::Overlay(file),
                },
                b..b + 1,
            )),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::map::Entry;
    use super::*;

    const G: Geometry = Geometry {
        bs: 100,
        size: 1050,
    };

    fn data(slot: u32) -> Entry {
        Entry {
            state: State::Data,
            slot: Some(slot),
        }
    }

    #[test]
    fn geometry() {
        assert_eq!(G.blocks(0, 1), 0..1);
        assert_eq!(G.blocks(99, 2), 0..2);
        assert_eq!(G.end(10), 1050, "the last block is short");
        assert!(G.covers(10, 1000, 1050));
        assert!(!G.covers(9, 901, 1050));
    }

    #[test]
    fn reads_split_where_the_source_changes() {
        assert_eq!(
            reads(None, G, 50, 1000),
            vec![Run {
                at: 0,
                len: 1000,
                src: Src::Below(50)
            }]
        );
        let mut m = Map::default();
        m.set(2, data(7));
        m.set(3, data(8)); // consecutive slots: one run
        m.set(4, data(3));
        m.set_state(6, State::Zero { hole: true });
        let runs = reads(Some(&m), G, 150, 700);
        let want = [
            (0, 50, Src::Below(150)),
            (50, 200, Src::Overlay(700)),
            (250, 100, Src::Overlay(300)),
            (350, 100, Src::Below(500)),
            (450, 100, Src::Zero),
            (550, 150, Src::Below(700)),
        ];
        let want: Vec<Run> = want
            .iter()
            .map(|&(at, len, src)| Run { at, len, src })
            .collect();
        assert_eq!(runs, want);
        // Inside one block of the overlay: at the byte's place in its slot.
        assert_eq!(reads(Some(&m), G, 420, 10)[0].src, Src::Overlay(320));
    }

    #[test]
    fn writes_go_to_slots() {
        let mut m = Map::default();
        assert!(writes(&m, G, 0, 10).is_none(), "no slot yet");
        m.set(0, data(5));
        m.set(1, data(6));
        m.set(2, data(1));
        let w = writes(&m, G, 50, 200).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].0.src, Src::Overlay(550));
        assert_eq!((w[0].0.at, w[0].0.len, w[0].1.clone()), (0, 150, 0..2));
        assert_eq!(w[1].0.src, Src::Overlay(100));
        assert_eq!((w[1].0.at, w[1].0.len, w[1].1.clone()), (150, 50, 2..3));
    }
}
