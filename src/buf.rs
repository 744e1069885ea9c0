//! Byte buffers for connections, and the pool they are lent from.
//!
//! A connection holds a buffer only while it has unfinished business: bytes of a
//! request not yet complete, or replies the socket has not taken yet. Between
//! bursts the buffer goes back to the pool, so an idle connection costs a few
//! hundred bytes rather than two buffers, and a busy server does not allocate per
//! request.

/// A byte queue: `data[start..end]` is pending. `data.len()` is the initialised
/// capacity, kept across reuse so that the space is never zeroed twice.
#[derive(Default)]
pub struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buf {
    /// The pending bytes.
    pub fn pending(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Whether there is storage behind this buffer (an empty `Buf::default()` has none).
    pub fn has_storage(&self) -> bool {
        !self.data.is_empty()
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

    /// Returns `n` writable bytes at the end (stale contents), making room first.
    /// Fill some prefix of it, then `commit` that many.
    pub fn space(&mut self, n: usize) -> &mut [u8] {
        if self.data.len() - self.end < n {
            self.make_room(n);
        }
        &mut self.data[self.end..self.end + n]
    }

    pub fn commit(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.data.len());
    }

    /// Appends bytes.
    pub fn put(&mut self, bytes: &[u8]) {
        self.space(bytes.len()).copy_from_slice(bytes);
        self.commit(bytes.len());
    }

    /// Where the next byte will go: a mark for `rollback`.
    pub fn mark(&self) -> usize {
        self.end - self.start
    }

    /// Forgets everything appended after `mark`.
    pub fn rollback(&mut self, mark: usize) {
        self.end = self.start + mark;
    }

    /// Moves pending bytes to the front, then grows if `n` bytes still do not fit.
    fn make_room(&mut self, n: usize) {
        let len = self.len();
        if self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = len;
        }
        if self.data.len() - self.end < n {
            let want = (len + n).max(self.data.len() * 2).max(MIN_SIZE);
            self.data.resize(want, 0);
        }
    }

    /// Gives back storage above `keep` bytes; only when empty.
    fn trim(&mut self, keep: usize) {
        debug_assert!(self.is_empty());
        if self.data.len() > keep {
            self.data.truncate(keep);
            self.data.shrink_to_fit();
        }
    }
}

/// Smallest storage a buffer grows to.
const MIN_SIZE: usize = 64 * 1024;
/// A pooled buffer keeps at most this much storage.
const POOLED_SIZE: usize = 1 << 20;
/// The pool holds at most this many buffers; more are freed.
const POOL_DEPTH: usize = 64;

/// Free buffers, lent to connections when they need one.
#[derive(Default)]
pub struct Pool {
    free: Vec<Buf>,
}

impl Pool {
    /// Gives `slot` storage if it has none.
    pub fn fill(&mut self, slot: &mut Buf) {
        if !slot.has_storage() {
            *slot = self.free.pop().unwrap_or_default();
        }
    }

    /// Takes back `slot`'s storage if it holds nothing pending.
    pub fn reclaim(&mut self, slot: &mut Buf) {
        if slot.has_storage() && slot.is_empty() {
            let mut b = std::mem::take(slot);
            if self.free.len() < POOL_DEPTH {
                b.trim(POOLED_SIZE);
                self.free.push(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_and_compact() {
        let mut b = Buf::default();
        assert!(!b.has_storage());
        b.put(b"hello ");
        b.put(b"world");
        assert_eq!(b.pending(), b"hello world");
        b.consume(6);
        assert_eq!(b.pending(), b"world");
        let cap = b.data.len();
        b.put(&vec![7u8; cap - 8]);
        assert_eq!(&b.pending()[..5], b"world");
        assert_eq!(b.len(), 5 + cap - 8);
        b.consume(b.len());
        assert!(b.is_empty());
        assert_eq!((b.start, b.end), (0, 0));
    }

    #[test]
    fn space_commit_rollback() {
        let mut b = Buf::default();
        b.put(b"ab");
        let m = b.mark();
        b.space(100)[..3].copy_from_slice(b"cde");
        b.commit(3);
        assert_eq!(b.pending(), b"abcde");
        b.rollback(m);
        assert_eq!(b.pending(), b"ab");
        b.consume(1);
        let m = b.mark();
        b.put(b"xyz");
        b.rollback(m);
        assert_eq!(b.pending(), b"b");
    }

    #[test]
    fn pool_lends_and_reclaims() {
        let mut pool = Pool::default();
        let mut slot = Buf::default();
        pool.fill(&mut slot);
        slot.put(&vec![1u8; 3 << 20]);
        pool.reclaim(&mut slot); // still pending: kept
        assert!(slot.has_storage());
        slot.consume(3 << 20);
        pool.reclaim(&mut slot);
        assert!(!slot.has_storage());
        assert_eq!(pool.free.len(), 1);
        assert!(pool.free[0].data.len() <= POOLED_SIZE);
        pool.fill(&mut slot);
        assert!(pool.free.is_empty());
    }
}
