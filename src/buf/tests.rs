//! The buffers' unit tests.

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
    let b = pool.take(600 << 10);
    assert_eq!(b.len(), 1 << 20);
    assert_eq!(pool.free.len(), before - 1);
    // Far larger than asked for: a new block (what a connection holds is
    // counted), and small blocks are not kept.
    assert_eq!(pool.take(1000).len(), BLOCK);
    pool.give(vec![0u8; TINY]);
    assert_eq!(pool.free.len(), before - 1);
}

#[test]
fn storage_held_is_counted_with_the_ranges_lent() {
    let mut pool = Pool::default();
    let mut q = OutQueue::default();
    let mut w = q.writer(&mut pool);
    w.put(b"hdr");
    w.lend(Rc::from(&[1u8; 100][..]), 0..100);
    w.give(vec![2u8; 3 * BLOCK]);
    let m = w.mark();
    w.put(b"more");
    assert_eq!(
        q.held(),
        2 * BLOCK + 100 + 3 * BLOCK,
        "two blocks, a range, a buffer"
    );
    q.writer(&mut pool).rollback(m);
    assert_eq!(q.held(), BLOCK + 100 + 3 * BLOCK);
    q.consume(3 + 100, &mut pool);
    assert_eq!(q.held(), 3 * BLOCK);
    q.consume(3 * BLOCK, &mut pool);
    q.release(&mut pool);
    assert_eq!((q.held(), q.len()), (0, 0));
}

#[test]
fn a_few_pending_bytes_leave_a_large_block() {
    let mut pool = Pool::default();
    let mut b = InBuf::default();
    b.space(BLOCK, &mut pool)[..10].copy_from_slice(b"0123456789");
    b.commit(10);
    b.shrink(&mut pool);
    assert_eq!((b.capacity(), b.pending()), (TINY, &b"0123456789"[..]));
    assert_eq!(pool.free.len(), 1, "the block went back");
    // After a large message, what follows it moves to an ordinary block.
    let n = 4 * BLOCK;
    b.space(n, &mut pool);
    b.commit(n - 10);
    b.consume(n - 1000);
    b.shrink(&mut pool);
    assert_eq!((b.capacity(), b.len()), (BLOCK, 1000));
    b.shrink(&mut pool);
    assert_eq!(b.capacity(), BLOCK, "not much larger");
    b.consume(900);
    b.shrink(&mut pool);
    assert_eq!(b.capacity(), TINY);
    b.consume(100);
    b.shrink(&mut pool);
    assert_eq!(b.capacity(), 0);
}

#[test]
fn zero_checks() {
    assert!(all_zero(&[]));
    assert!(all_zero(&[0; 100]));
    assert!(!all_zero(&[0, 0, 1]));
}
