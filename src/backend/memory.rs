//! `memory`: a sparse RAM disk. Only pages that hold written data other than
//! zeroes take memory; TRIM, WRITE_ZEROES and zeroes written as data give whole
//! pages back, and a partly zeroed page that ends up all zero is given back
//! too, so `memory 1G` costs nothing until used.
//!
//! Pages are reference-counted so that large reads can be sent straight from
//! them (`lend`); a write to a page that is still queued for sending copies it
//! first, so a reply always shows the data as it was when it was read.

use std::io;
use std::ops::Range;
use std::rc::Rc;

use super::pages::Pages;
use super::{Access, Backend, Caps, Extent, Store, Zero, pieces};
use crate::proto::{STATE_HOLE, STATE_ZERO};

/// Allocation unit. Small enough that scattered 4 KiB writes do not balloon,
/// large enough that a 1 GiB export is at most 32768 pages (128 leaves of
/// the page table, `pages.rs`).
const PAGE: usize = 32 * 1024;

pub struct Memory {
    size: u64,
    /// Page index -> contents. An absent page reads as zeroes.
    pages: Pages,
    /// A page of zeroes to lend for holes (made on first use).
    zeroes: Option<Rc<[u8]>>,
}

impl Memory {
    pub fn new(size: u64) -> Memory {
        Memory {
            size,
            pages: Pages::default(),
            zeroes: None,
        }
    }

    /// A page to write to: allocated if absent, copied if it is lent out.
    fn page_mut(&mut self, idx: u64) -> &mut [u8] {
        let page = self.pages.get_or_insert_with(idx, zero_page);
        if Rc::get_mut(page).is_none() {
            *page = Rc::from(&page[..]);
        }
        // Unique now: either it was, or it is a fresh copy.
        Rc::get_mut(page).expect("a page nobody else holds")
    }

    /// Whether `data` (at most a page) is all zero: a `memcmp` against the
    /// shared page of zeroes, which stops at the first byte that differs.
    fn is_zero(&mut self, data: &[u8]) -> bool {
        let zeroes = self.zeroes.get_or_insert_with(zero_page);
        data == &zeroes[..data.len()]
    }

    /// Zeroes a range, giving back every page that ends up all zero (when
    /// `free`), or keeping every page it touches (NO_HOLE). Only pages that exist
    /// are visited, so a zero or trim of an exabyte costs what is allocated in it.
    fn clear(&mut self, offset: u64, len: u64, free: bool) {
        let Some(last) = (offset + len).checked_sub(1) else {
            return;
        };
        let (first_page, last_page) = (offset / PAGE as u64, last / PAGE as u64);
        for idx in self.pages.allocated(first_page, last_page) {
            let start = (idx * PAGE as u64).max(offset);
            let end = ((idx + 1) * PAGE as u64).min(offset + len);
            let within = (start - idx * PAGE as u64) as usize;
            let n = (end - start) as usize;
            if n == PAGE && free {
                self.pages.remove(idx);
                continue;
            }
            let page = self.page_mut(idx);
            page[within..within + n].fill(0);
            if free && page.iter().all(|&b| b == 0) {
                self.pages.remove(idx);
            }
        }
    }
}

fn zero_page() -> Rc<[u8]> {
    Rc::from(vec![0u8; PAGE])
}

impl Backend for Memory {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        Caps::IN_MEMORY
    }

    fn extents(
        &mut self,
        offset: u64,
        len: u64,
        max: usize,
        out: &mut Vec<Extent>,
    ) -> io::Result<()> {
        let page = PAGE as u64;
        let end = offset.saturating_add(len).min(self.size);
        let mut pos = offset;
        let mut count = 0;
        while pos < end.max(offset + 1) && count < max {
            let idx = pos / page;
            // One lookup per run: this is on every structured READ's path.
            let allocated = self.pages.contains(idx);
            let run_end = if allocated && (idx + 1) * page >= end {
                (idx + 1) * page // the common case: the request ends in this page
            } else if allocated {
                // Extend over consecutive allocated pages, stopping past `end`.
                self.pages.run_end(idx + 1, end.div_ceil(page)) * page
            } else {
                // A hole runs to the next allocated page.
                self.pages
                    .next_allocated(idx + 1)
                    .map_or(self.size, |k| k * page)
            };
            let run_end = run_end.min(self.size);
            let flags = if allocated {
                0
            } else {
                STATE_HOLE | STATE_ZERO
            };
            match out.last_mut() {
                Some(last) if count > 0 && last.flags == flags => last.len += run_end - pos,
                _ => {
                    out.push(Extent {
                        len: run_end - pos,
                        flags,
                    });
                    count += 1;
                }
            }
            pos = run_end;
        }
        Ok(())
    }

    fn access(&mut self) -> Access<'_> {
        Access::Now(self)
    }
}

impl Store for Memory {
    fn read(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        for (idx, within, n) in pieces(offset, buf.len() as u64, PAGE as u64) {
            let dst = &mut buf[done..done + n];
            match self.pages.get(idx) {
                Some(page) => dst.copy_from_slice(&page[within..within + n]),
                None => dst.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// Zeroes written as data (`dd if=/dev/zero`, a guest formatting its disk,
    /// `nbdcopy` from a sparse image) take no memory either, as in nbdkit: a
    /// piece that is all zero goes through `clear` instead of being stored.
    /// Random data fails the comparison within its first bytes.
    fn write(&mut self, buf: &[u8], offset: u64, _fua: bool) -> io::Result<()> {
        let mut done = 0;
        for (idx, within, n) in pieces(offset, buf.len() as u64, PAGE as u64) {
            let data = &buf[done..done + n];
            if self.is_zero(data) {
                self.clear(idx * PAGE as u64 + within as u64, n as u64, true);
            } else {
                self.page_mut(idx)[within..within + n].copy_from_slice(data);
            }
            done += n;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn trim(&mut self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        self.clear(offset, len, true);
        Ok(())
    }

    fn zero(&mut self, offset: u64, len: u64, how: Zero, _fua: bool) -> io::Result<()> {
        // NO_HOLE: pages that hold data stay allocated (zeroed in place). Pages
        // that are absent stay absent: allocating zeroes on request would let one
        // request take all the memory there is.
        self.clear(offset, len, how.may_trim);
        Ok(())
    }

    fn lend(
        &mut self,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(Rc<[u8]>, Range<usize>),
    ) -> bool {
        for (idx, within, n) in pieces(offset, len, PAGE as u64) {
            let page = match self.pages.get(idx) {
                Some(p) => p.clone(),
                None => self.zeroes.get_or_insert_with(zero_page).clone(),
            };
            sink(page, within..within + n);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Zero = Zero {
        may_trim: true,
        fast: true,
    };

    fn extents(m: &mut Memory, off: u64, len: u64) -> Vec<(u64, u32)> {
        let mut v = Vec::new();
        m.extents(off, len, 1000, &mut v).unwrap();
        v.into_iter().map(|e| (e.len, e.flags)).collect()
    }

    #[test]
    fn sparse_until_written() {
        let mut m = Memory::new(1 << 40);
        assert!(m.pages.is_empty());
        m.write(&[0xab; 10], PAGE as u64 - 5, false).unwrap();
        assert_eq!(m.pages.len(), 2);
        let mut b = [0u8; 12];
        m.read(&mut b, PAGE as u64 - 6).unwrap();
        assert_eq!(
            b,
            [
                0, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0
            ]
        );
        m.zero(0, 2 * PAGE as u64, FAST, false).unwrap();
        assert!(m.pages.is_empty());
    }

    #[test]
    fn lent_pages_do_not_change() {
        let mut m = Memory::new(1 << 20);
        m.write(b"before", 100, false).unwrap();
        let mut lent = Vec::new();
        assert!(m.lend(96, 16, &mut |p, r| lent.push((p, r))));
        m.write(b"after!", 100, false).unwrap();
        m.trim(0, PAGE as u64, false).unwrap();
        let (p, r) = &lent[0];
        assert_eq!(&p[r.clone()][4..10], b"before");
        let mut b = [0u8; 6];
        m.read(&mut b, 100).unwrap();
        assert_eq!(&b, &[0; 6]);
        // holes are lent as zeroes
        let mut hole = Vec::new();
        m.lend(5 * PAGE as u64, 10, &mut |p, r| hole.push(p[r].to_vec()));
        assert_eq!(hole, vec![vec![0u8; 10]]);
    }

    #[test]
    fn partial_zero_gives_back_zero_pages() {
        let mut m = Memory::new(1 << 20);
        m.write(&[1; 8], 100, false).unwrap();
        m.trim(0, 50, false).unwrap();
        assert_eq!(m.pages.len(), 1);
        m.trim(90, 20, false).unwrap();
        assert!(m.pages.is_empty());
    }

    #[test]
    fn zeroes_written_as_data_take_no_pages() {
        let p = PAGE as u64;
        let mut m = Memory::new(8 * p);
        m.write(&vec![0; 3 * PAGE], 0, false).unwrap();
        assert!(m.pages.is_empty(), "zeroes into holes allocate nothing");
        m.write(&vec![7; 2 * PAGE], p, false).unwrap();
        m.write(&[0; 10], p + 5, false).unwrap();
        assert_eq!(m.pages.len(), 2, "a page partly zeroed keeps its data");
        let mut b = [9u8; 16];
        m.read(&mut b, p).unwrap();
        assert_eq!(b, [7, 7, 7, 7, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        m.write(&vec![0; PAGE], 2 * p, false).unwrap();
        assert_eq!(
            m.pages.len(),
            1,
            "a page overwritten with zeroes is given back"
        );
        assert_eq!(extents(&mut m, 0, 8 * p), vec![(p, 3), (p, 0), (6 * p, 3)]);
    }

    #[test]
    fn no_hole_keeps_pages_but_allocates_none() {
        let mut m = Memory::new(1 << 20);
        let how = Zero {
            may_trim: false,
            fast: false,
        };
        m.write(&[5; 10], 0, false).unwrap();
        m.zero(0, 3 * PAGE as u64, how, false).unwrap();
        assert_eq!(m.pages.len(), 1, "the written page stays, no others appear");
        let mut b = [9u8; 10];
        m.read(&mut b, 0).unwrap();
        assert_eq!(b, [0; 10]);
        assert_eq!(extents(&mut m, 0, 1 << 20)[0], (PAGE as u64, 0));
    }

    #[test]
    fn huge_trims_cost_what_is_allocated() {
        let size = i64::MAX as u64;
        let mut m = Memory::new(size);
        m.write(b"x", 1 << 40, false).unwrap();
        m.write(b"y", size - 1, false).unwrap();
        m.zero(0, size, FAST, false).unwrap(); // visits two pages, not 2^48
        assert!(m.pages.is_empty());
        m.trim(0, 0, false).unwrap();
    }

    #[test]
    fn extents_merge_and_clip() {
        let p = PAGE as u64;
        let mut m = Memory::new(10 * p);
        assert_eq!(extents(&mut m, 0, 10 * p), vec![(10 * p, 3)]);
        m.write(&[1], 2 * p, false).unwrap();
        m.write(&[1], 3 * p, false).unwrap();
        m.write(&[1], 7 * p, false).unwrap();
        assert_eq!(
            extents(&mut m, 0, 10 * p),
            vec![(2 * p, 3), (2 * p, 0), (3 * p, 3), (p, 0), (2 * p, 3)]
        );
        // starting inside a page, limited count
        let mut v = Vec::new();
        m.extents(2 * p + 7, p, 1, &mut v).unwrap();
        assert_eq!(
            v,
            vec![Extent {
                len: 2 * p - 7,
                flags: 0
            }]
        );
        // a query at the last byte
        assert_eq!(extents(&mut m, 10 * p - 1, 1), vec![(1, 3)]);
    }

    /// Runs that cross the page table's leaves (256 pages, 8 MiB) are one
    /// extent, holes too, and a trim across them gives every page back.
    #[test]
    fn runs_across_the_page_tables_leaves() {
        let p = PAGE as u64;
        let mut m = Memory::new(1024 * p);
        m.write(&vec![7; 4 * PAGE], 254 * p, false).unwrap(); // pages 254-257
        m.write(&[7], 700 * p, false).unwrap();
        assert_eq!(
            extents(&mut m, 0, 1024 * p),
            vec![(254 * p, 3), (4 * p, 0), (442 * p, 3), (p, 0), (323 * p, 3)]
        );
        assert_eq!(extents(&mut m, 255 * p, 2 * p), vec![(2 * p, 0)]);
        m.trim(200 * p, 600 * p, false).unwrap();
        assert!(m.pages.is_empty());
        assert_eq!(extents(&mut m, 0, 1024 * p), vec![(1024 * p, 3)]);
    }

    #[test]
    fn huge_sparse_export() {
        let size = i64::MAX as u64;
        let mut m = Memory::new(size);
        m.write(b"end", size - 3, false).unwrap();
        let mut b = [0u8; 3];
        m.read(&mut b, size - 3).unwrap();
        assert_eq!(&b, b"end");
        let e = extents(&mut m, 0, size);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].0 + e[1].0, size);
    }
}
