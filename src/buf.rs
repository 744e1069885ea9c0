//! Byte buffers for connections, and the pool they are lent from.
//!
//! A connection holds storage only while it has unfinished business: bytes of a
//! request not yet complete, or replies the socket has not taken yet. Between
//! bursts the storage goes back to the pool, so an idle connection costs a few
//! hundred bytes, and a busy server does not allocate per request.
//!
//! Input is one contiguous buffer, because requests are parsed in place. Output
//! is a queue of blocks written with writev(2): a reply, once queued, is never
//! moved, however much is queued behind or in front of it.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::ops::Range;
use std::rc::Rc;

/// Storage: a vector whose length is its initialised size, so reuse never
/// zeroes it again.
type Block = Vec<u8>;

/// Size of an ordinary block; a larger reply gets a block of its own size.
const BLOCK: usize = 64 * 1024;
/// The pool keeps at most this many blocks…
const POOL_BLOCKS: usize = 32;
/// …holding at most this many bytes; the rest is freed.
const POOL_BYTES: usize = 16 << 20;

/// Free blocks, lent to connections when they need storage.
#[derive(Default)]
pub struct Pool {
    free: Vec<Block>,
    bytes: usize,
}

impl Pool {
    /// A block of at least `min` bytes: a pooled one if any fits, else a new one.
    pub fn take(&mut self, min: usize) -> Block {
        if let Some(i) = self.free.iter().rposition(|b| b.len() >= min) {
            let b = self.free.swap_remove(i);
            self.bytes -= b.len();
            return b;
        }
        // Zeroed by calloc: large blocks come from the kernel already zero.
        vec![0u8; min.max(BLOCK)]
    }

    /// Whether the pool holds any storage.
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// Takes a block back (or frees it, when the pool is full).
    pub fn give(&mut self, b: Block) {
        if b.is_empty() {
            return;
        }
        if self.free.len() < POOL_BLOCKS && self.bytes + b.len() <= POOL_BYTES {
            self.bytes += b.len();
            self.free.push(b);
        }
    }
}

/// Input bytes: `data[start..end]` is pending.
#[derive(Default)]
pub struct InBuf {
    data: Block,
    start: usize,
    end: usize,
}

impl InBuf {
    pub fn pending(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Drops `n` bytes from the front.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// At least `n` writable bytes after the pending ones (all the room the block
    /// has; stale contents): fill a prefix, then `commit` it. Moves the pending
    /// bytes to a bigger block if they must.
    pub fn space(&mut self, n: usize, pool: &mut Pool) -> &mut [u8] {
        if self.data.len() - self.end < n {
            let len = self.len();
            if self.start > 0 && self.data.len() - len >= n {
                self.data.copy_within(self.start..self.end, 0);
            } else {
                let mut bigger = pool.take(len + n);
                bigger[..len].copy_from_slice(self.pending());
                pool.give(std::mem::replace(&mut self.data, bigger));
            }
            self.start = 0;
            self.end = len;
        }
        &mut self.data[self.end..]
    }

    pub fn commit(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.data.len());
    }

    /// Returns the storage to the pool if nothing is pending.
    pub fn release(&mut self, pool: &mut Pool) {
        if self.is_empty() && !self.data.is_empty() {
            pool.give(std::mem::take(&mut self.data));
        }
    }
}

impl std::fmt::Debug for InBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InBuf({} pending of {})", self.len(), self.data.len())
    }
}

/// Bytes behind a queued segment.
enum Bytes {
    /// A block of ours, from the pool: replies are built in it.
    Owned(Block),
    /// Storage lent by the backend (shared, immutable): sent without a copy.
    Lent(Rc<[u8]>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(b) => b,
            Bytes::Lent(r) => r,
        }
    }

    fn give_back(self, pool: &mut Pool) {
        if let Bytes::Owned(b) = self {
            pool.give(b);
        }
    }
}

/// One queued segment: `bytes[start..end]` is still to be written.
struct Seg {
    bytes: Bytes,
    start: usize,
    end: usize,
}

impl Seg {
    /// Room left at the end for more replies (none in lent storage).
    fn room(&self) -> usize {
        match &self.bytes {
            Bytes::Owned(b) => b.len() - self.end,
            Bytes::Lent(_) => 0,
        }
    }
}

/// Output bytes waiting for the socket.
///
/// Invariant: only the back segment may be empty (a block waiting to be
/// appended to), so the front of a non-empty queue always has bytes to write.
#[derive(Default)]
pub struct OutQueue {
    segs: VecDeque<Seg>,
    len: usize,
}

/// A position in an `OutQueue` to roll back to.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    segs: usize,
    end: usize,
    len: usize,
}

impl OutQueue {
    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills `iov` with the front of the queue; returns how many slices it used.
    pub fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let written = self.segs.iter().filter(|s| s.start < s.end);
        for (slot, seg) in iov.iter_mut().zip(written) {
            *slot = IoSlice::new(&seg.bytes.as_slice()[seg.start..seg.end]);
            n += 1;
        }
        n
    }

    /// Drops `n` written bytes from the front, returning emptied blocks.
    pub fn consume(&mut self, mut n: usize, pool: &mut Pool) {
        self.len -= n;
        while n > 0 {
            let Some(seg) = self.segs.front_mut() else {
                break;
            };
            let take = n.min(seg.end - seg.start);
            seg.start += take;
            n -= take;
            if seg.start == seg.end
                && let Some(seg) = self.segs.pop_front()
            {
                seg.bytes.give_back(pool);
            }
        }
    }

    /// Returns every block to the pool (the queue must be empty).
    pub fn release(&mut self, pool: &mut Pool) {
        debug_assert!(self.is_empty());
        for seg in self.segs.drain(..) {
            seg.bytes.give_back(pool);
        }
    }

    /// An appender that can take blocks from `pool`.
    pub fn writer<'a>(&'a mut self, pool: &'a mut Pool) -> Out<'a> {
        Out { q: self, pool }
    }
}

/// Appends replies to an `OutQueue`.
pub struct Out<'a> {
    q: &'a mut OutQueue,
    pool: &'a mut Pool,
}

impl Out<'_> {
    /// `n` contiguous writable bytes at the end of the queue (stale contents):
    /// fill a prefix, then `commit` it.
    pub fn space(&mut self, n: usize) -> &mut [u8] {
        if self.q.segs.back().is_none_or(|s| s.room() < n) {
            self.drop_empty_back();
            let block = self.pool.take(n);
            self.q.segs.push_back(Seg {
                bytes: Bytes::Owned(block),
                start: 0,
                end: 0,
            });
        }
        match self.q.segs.back_mut() {
            Some(Seg {
                bytes: Bytes::Owned(b),
                end,
                ..
            }) => &mut b[*end..*end + n],
            // The back segment is an owned block with room: found or pushed above.
            _ => unreachable!("no owned block at the back of the queue"),
        }
    }

    pub fn commit(&mut self, n: usize) {
        if let Some(seg) = self.q.segs.back_mut() {
            debug_assert!(seg.room() >= n);
            seg.end += n;
            self.q.len += n;
        }
    }

    pub fn put(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.space(bytes.len()).copy_from_slice(bytes);
        self.commit(bytes.len());
    }

    /// Queues `bytes[range]` without copying it: the queue keeps the storage
    /// alive until the socket has taken it.
    pub fn lend(&mut self, bytes: Rc<[u8]>, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        self.drop_empty_back();
        self.q.len += range.len();
        self.q.segs.push_back(Seg {
            bytes: Bytes::Lent(bytes),
            start: range.start,
            end: range.end,
        });
    }

    /// Queues a whole block of ours (a buffer the disk read into) without
    /// copying it; it goes back to the pool once written.
    pub fn give(&mut self, block: Vec<u8>) {
        if block.is_empty() {
            return;
        }
        self.drop_empty_back();
        self.q.len += block.len();
        self.q.segs.push_back(Seg {
            start: 0,
            end: block.len(),
            bytes: Bytes::Owned(block),
        });
    }

    /// Before a segment is pushed behind it, an empty back segment goes (the
    /// queue's invariant).
    fn drop_empty_back(&mut self) {
        if self.q.segs.back().is_some_and(|s| s.start == s.end)
            && let Some(seg) = self.q.segs.pop_back()
        {
            seg.bytes.give_back(self.pool);
        }
    }

    /// A position to roll back to. An empty back segment is dropped first, so a
    /// rollback never has to restore one.
    pub fn mark(&mut self) -> Mark {
        self.drop_empty_back();
        Mark {
            segs: self.q.segs.len(),
            end: self.q.segs.back().map_or(0, |s| s.end),
            len: self.q.len,
        }
    }

    /// Forgets everything appended since `m`.
    pub fn rollback(&mut self, m: Mark) {
        while self.q.segs.len() > m.segs {
            if let Some(seg) = self.q.segs.pop_back() {
                seg.bytes.give_back(self.pool);
            }
        }
        if let Some(seg) = self.q.segs.back_mut() {
            seg.end = m.end;
        }
        self.q.len = m.len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(q: &OutQueue) -> Vec<u8> {
        let mut iov = [IoSlice::new(&[]); 64];
        let n = q.slices(&mut iov);
        iov[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn input_compacts_and_grows() {
        let mut pool = Pool::default();
        let mut b = InBuf::default();
        b.space(5, &mut pool)[..5].copy_from_slice(b"hello");
        b.commit(5);
        b.consume(2);
        assert_eq!(b.pending(), b"llo");
        let big = 3 * BLOCK;
        b.space(big, &mut pool)[..3].copy_from_slice(b"abc");
        b.commit(3);
        assert_eq!(b.pending(), b"lloabc");
        b.consume(6);
        b.release(&mut pool);
        assert!(b.data.is_empty());
        assert_eq!(pool.free.len(), 2); // the first block and the bigger one
    }

    #[test]
    fn output_queue_never_moves_bytes() {
        let mut pool = Pool::default();
        let mut q = OutQueue::default();
        let mut w = q.writer(&mut pool);
        w.put(b"head");
        let m = w.mark();
        w.put(&vec![7u8; BLOCK]); // needs a second block
        w.put(b"tail");
        assert_eq!(q.len(), 4 + BLOCK + 4);
        let all = contents(&q);
        assert_eq!(&all[..4], b"head");
        assert_eq!(&all[all.len() - 4..], b"tail");
        // rollback drops the later blocks
        q.writer(&mut pool).rollback(m);
        assert_eq!(contents(&q), b"head");
        assert_eq!(q.len(), 4);
        q.consume(2, &mut pool);
        assert_eq!(contents(&q), b"ad");
        q.consume(2, &mut pool);
        assert!(q.is_empty());
        q.release(&mut pool);
        assert!(pool.free.len() >= 2);
    }

    /// Only the back segment may be empty, so a queue with bytes always gives
    /// writev something to write.
    fn assert_invariant(q: &OutQueue) {
        let n = q.segs.len();
        for (i, seg) in q.segs.iter().enumerate() {
            assert!(
                i + 1 == n || seg.start < seg.end,
                "empty segment {i} of {n}"
            );
        }
        if !q.is_empty() {
            let mut iov = [IoSlice::new(&[]); 4];
            assert!(q.slices(&mut iov) > 0, "bytes queued but nothing to write");
        }
    }

    #[test]
    fn empty_appends_leave_no_empty_segment_in_front() {
        let mut pool = Pool::default();
        let mut q = OutQueue::default();
        let mut w = q.writer(&mut pool);
        w.put(&[]);
        w.put(&vec![1u8; 2 * BLOCK]); // too big for the first block
        w.lend(Rc::from(&b"abc"[..]), 1..1);
        w.space(0);
        w.commit(0);
        assert_invariant(&q);
        assert_eq!(contents(&q).len(), 2 * BLOCK);
        // An empty block at the back, then a lent page behind it.
        let mut q = OutQueue::default();
        let mut w = q.writer(&mut pool);
        w.space(10);
        w.lend(Rc::from(&b"abc"[..]), 0..3);
        w.space(100);
        assert_invariant(&q);
        assert_eq!(contents(&q), b"abc");
        q.consume(3, &mut pool);
        assert!(q.is_empty());
        assert_invariant(&q);
        // A mark taken over an empty back segment rolls back cleanly.
        let mut w = q.writer(&mut pool);
        w.put(b"x");
        w.space(2 * BLOCK);
        let m = w.mark();
        w.lend(Rc::from(&b"abc"[..]), 0..3);
        w.rollback(m);
        w.put(b"y");
        assert_invariant(&q);
        assert_eq!(contents(&q), b"xy");
    }

    #[test]
    fn lent_storage_is_queued_in_place() {
        let mut pool = Pool::default();
        let mut q = OutQueue::default();
        let page: Rc<[u8]> = Rc::from(&b"0123456789"[..]);
        let mut w = q.writer(&mut pool);
        w.put(b"hdr:");
        w.lend(page.clone(), 2..6);
        w.put(b":tail"); // a lent segment takes no appends: a new block follows
        assert_eq!(contents(&q), b"hdr:2345:tail");
        assert_eq!(Rc::strong_count(&page), 2, "the queue holds the page");
        let m = q.writer(&mut pool).mark();
        q.writer(&mut pool).lend(page.clone(), 0..1);
        q.writer(&mut pool).rollback(m);
        assert_eq!(contents(&q), b"hdr:2345:tail");
        q.consume(q.len(), &mut pool);
        assert_eq!(
            Rc::strong_count(&page),
            1,
            "written out: the page is let go"
        );
    }

    #[test]
    fn pool_is_bounded_and_reuses() {
        let mut pool = Pool::default();
        for _ in 0..100 {
            pool.give(vec![0u8; 1 << 20]);
        }
        assert!(pool.bytes <= POOL_BYTES && pool.free.len() <= POOL_BLOCKS);
        let before = pool.free.len();
        let b = pool.take(1000);
        assert_eq!(b.len(), 1 << 20);
        assert_eq!(pool.free.len(), before - 1);
    }
}
