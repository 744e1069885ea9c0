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
//!
//! Both say how much storage they hold (`capacity`, `held`): what the server's
//! memory budget (`crate::budget`) counts. Storage lent by the backend counts
//! too, for the range lent: it is the RAM disk itself only until the disk is
//! written there, which gives the disk a new page while the lent one lives
//! on until it is sent.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::ops::Range;
use std::rc::Rc;

/// Storage: a vector whose length is its initialised size, so reuse never
/// zeroes it again.
type Block = Vec<u8>;

/// Size of an ordinary block; a larger reply gets a block of its own size.
const BLOCK: usize = 64 * 1024;
/// Pending input this small is kept in a block of this size between turns,
/// not in a whole `BLOCK`: a client that sends half a header and stops holds
/// a few hundred bytes, not 64 KiB.
const TINY: usize = 512;
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
    /// A block of at least `min` bytes: a pooled one if any fits (and is not
    /// much larger: what a connection holds is counted), else a new one.
    pub fn take(&mut self, min: usize) -> Block {
        let max = min.saturating_mul(2).max(BLOCK);
        if let Some(i) = self
            .free
            .iter()
            .rposition(|b| b.len() >= min && b.len() <= max)
        {
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

    /// Takes a block back (or frees it, when the pool is full or the block is
    /// smaller than an ordinary one).
    pub fn give(&mut self, b: Block) {
        if b.len() < BLOCK {
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

    /// Bytes of storage held.
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Room for more bytes in the block as it is (once the pending ones are
    /// moved to its front).
    pub fn free(&self) -> usize {
        self.data.len() - self.len()
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

    /// Moves a few pending bytes out of a much larger block, which goes back
    /// to the pool: a connection waiting in the middle of a header keeps
    /// `TINY` bytes, one just done with a large message an ordinary block.
    pub fn shrink(&mut self, pool: &mut Pool) {
        let len = self.len();
        let mut smaller = match len {
            0 => return self.release(pool),
            _ if len <= TINY && self.data.len() > TINY => vec![0u8; TINY],
            _ if len <= BLOCK / 2 && self.data.len() > BLOCK => pool.take(len),
            _ => return,
        };
        smaller[..len].copy_from_slice(self.pending());
        pool.give(std::mem::replace(&mut self.data, smaller));
        self.start = 0;
        self.end = len;
    }
}

impl std::fmt::Debug for OutQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OutQueue({} queued, {} held)", self.len, self.held)
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
    /// Storage lent by the backend (shared, immutable): sent without a copy;
    /// with the length of the range lent, which is what it counts for.
    Lent(Rc<[u8]>, usize),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(b) => b,
            Bytes::Lent(r, _) => r,
        }
    }

    fn give_back(self, pool: &mut Pool) {
        if let Bytes::Owned(b) = self {
            pool.give(b);
        }
    }

    /// Storage it holds: a block of ours, whole; the range of lent storage.
    fn held(&self) -> usize {
        match self {
            Bytes::Owned(b) => b.len(),
            Bytes::Lent(_, n) => *n,
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
            Bytes::Lent(..) => 0,
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
    /// Bytes of storage in `segs`: our blocks, and the ranges lent.
    held: usize,
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

    /// Bytes of storage held: the blocks replies are queued in, whole, and
    /// the ranges of pages the backend lent.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Takes the front segment off, returning its storage.
    fn pop_front(&mut self, pool: &mut Pool) {
        if let Some(seg) = self.segs.pop_front() {
            self.held -= seg.bytes.held();
            seg.bytes.give_back(pool);
        }
    }

    /// Takes the back segment off, returning its storage.
    fn pop_back(&mut self, pool: &mut Pool) {
        if let Some(seg) = self.segs.pop_back() {
            self.held -= seg.bytes.held();
            seg.bytes.give_back(pool);
        }
    }

    fn push_back(&mut self, seg: Seg) {
        self.held += seg.bytes.held();
        self.segs.push_back(seg);
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
            if seg.start == seg.end {
                self.pop_front(pool);
            }
        }
    }

    /// Returns every block to the pool (the queue must be empty).
    pub fn release(&mut self, pool: &mut Pool) {
        debug_assert!(self.is_empty());
        while !self.segs.is_empty() {
            self.pop_front(pool);
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
    /// The pool blocks come from: a request handed to the I/O engine takes its
    /// buffer there, and gives it back when its reply is built.
    pub fn pool(&mut self) -> &mut Pool {
        self.pool
    }

    /// `n` contiguous writable bytes at the end of the queue (stale contents):
    /// fill a prefix, then `commit` it.
    pub fn space(&mut self, n: usize) -> &mut [u8] {
        if self.q.segs.back().is_none_or(|s| s.room() < n) {
            self.drop_empty_back();
            let block = self.pool.take(n);
            self.q.push_back(Seg {
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
        self.q.push_back(Seg {
            bytes: Bytes::Lent(bytes, range.len()),
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
        self.q.push_back(Seg {
            start: 0,
            end: block.len(),
            bytes: Bytes::Owned(block),
        });
    }

    /// Before a segment is pushed behind it, an empty back segment goes (the
    /// queue's invariant).
    fn drop_empty_back(&mut self) {
        if self.q.segs.back().is_some_and(|s| s.start == s.end) {
            self.q.pop_back(self.pool);
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
            self.q.pop_back(self.pool);
        }
        if let Some(seg) = self.q.segs.back_mut() {
            seg.end = m.end;
        }
        self.q.len = m.len;
    }
}

/// Whether `b` holds only zeroes: data written past the end of what is
/// below a filter may be dropped only then (else ENOSPC, as nbdkit's).
pub fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests;
