//! The plan alone: which calls an operation becomes, fed made-up results.

use std::io;

use super::Op;
use super::plan::{Call, Job, Lacks, Limits, Piece};

const LIM: Limits = Limits {
    rw: 4096,
    falloc: 16384,
    alloc: 16384,
    zero: 1024,
    cache: 8192,
    write_back: 8192,
    per_op: 2,
};

const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

fn job(op: Op) -> Job {
    Job::new(op, 1, false).0
}

/// A job on a file served with cache=none.
fn evicting(op: Op) -> Job {
    Job::new(op, 1, true).0
}

fn zero(len: u64, may_trim: bool, fast: bool, fua: bool) -> Job {
    job(Op::Zero {
        offset: 1000,
        len,
        may_trim,
        fast,
        fua,
    })
}

fn errno(n: i32) -> io::Result<u64> {
    Err(io::Error::from_raw_os_error(n))
}

/// Hands out everything that may go now.
fn take(j: &mut Job, lacks: &Lacks) -> Vec<(Piece, Call)> {
    std::iter::from_fn(|| j.next(lacks, &LIM)).collect()
}

#[test]
fn reads_are_cut_and_bounded_per_op() {
    let mut j = job(Op::Read {
        offset: 100,
        buf: vec![0; 10000],
    });
    let l = &mut Lacks::default();
    let first = take(&mut j, l);
    let calls: Vec<_> = first.iter().map(|p| p.1.clone()).collect();
    assert_eq!(
        calls,
        [
            Call::Read {
                at: 100,
                range: 0..4096
            },
            Call::Read {
                at: 4196,
                range: 4096..8192
            }
        ]
    );
    j.complete(first[0].0, Ok(4096), l);
    let third = take(&mut j, l);
    assert_eq!(
        third[0].1,
        Call::Read {
            at: 8292,
            range: 8192..10000
        }
    );
    j.complete(first[1].0, Ok(4096), l);
    j.complete(third[0].0, Ok(1808), l);
    assert!(j.finished());
    j.result().expect("ok");
}

#[test]
fn short_reads_continue_and_eof_fails() {
    let mut j = job(Op::Read {
        offset: 0,
        buf: vec![0; 3000],
    });
    let l = &mut Lacks::default();
    let (p, _) = j.next(l, &LIM).expect("piece");
    j.complete(p, Ok(1000), l);
    let (p, c) = j.next(l, &LIM).expect("the rest");
    assert_eq!(
        c,
        Call::Read {
            at: 1000,
            range: 1000..3000
        }
    );
    j.complete(p, Ok(0), l);
    assert!(j.finished());
    let e = j.result().expect_err("eof");
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
}

#[test]
fn transient_errors_reissue_the_piece() {
    let mut j = job(Op::Flush);
    let l = &mut Lacks::default();
    let (p, c) = j.next(l, &LIM).expect("sync");
    assert_eq!(c, Call::Datasync);
    assert!(j.next(l, &LIM).is_none(), "one sync at a time");
    j.complete(p, errno(libc::EINTR), l);
    let (p, c) = j.next(l, &LIM).expect("again");
    assert_eq!(c, Call::Datasync);
    j.complete(p, Ok(0), l);
    assert!(j.finished());
    j.result().expect("ok");
}

#[test]
fn fua_writes_then_one_closing_fdatasync() {
    let l = &mut Lacks::default();
    let mut small = job(Op::Write {
        offset: 0,
        buf: vec![1; 4096],
        fua: true,
    });
    let (p, c) = small.next(l, &LIM).expect("write");
    assert!(matches!(c, Call::Write { .. }));
    assert!(
        small.next(l, &LIM).is_none(),
        "no sync before the write is done"
    );
    small.complete(p, Ok(4096), l);
    let (p, c) = small.next(l, &LIM).expect("sync");
    assert_eq!(c, Call::Datasync);
    small.complete(p, Ok(0), l);
    assert!(small.finished());

    let mut big = job(Op::Write {
        offset: 0,
        buf: vec![1; 8192],
        fua: true,
    });
    let pieces = take(&mut big, l);
    assert_eq!(pieces.len(), 2);
    big.complete(pieces[0].0, Ok(4096), l);
    assert!(
        big.next(l, &LIM).is_none(),
        "no sync before every write is done"
    );
    big.complete(pieces[1].0, Ok(4096), l);
    let (p, c) = big.next(l, &LIM).expect("sync");
    assert_eq!(c, Call::Datasync);
    assert!(!big.finished());
    big.complete(p, Ok(0), l);
    assert!(big.finished());
    big.result().expect("ok");

    // Without FUA: no sync.
    let mut plain = job(Op::Write {
        offset: 0,
        buf: vec![1; 100],
        fua: false,
    });
    let (p, _) = plain.next(l, &LIM).expect("write");
    plain.complete(p, Ok(100), l);
    assert!(plain.finished());
}

#[test]
fn zero_falls_back_and_remembers() {
    let l = &mut Lacks::default();
    // NO_HOLE on tmpfs: ZERO_RANGE is refused, then punch + allocate.
    let mut j = zero(20000, false, false, false);
    let (p, c) = j.next(l, &LIM).expect("zero range");
    assert_eq!(
        c,
        Call::Fallocate {
            mode: ZERO_RANGE,
            at: 1000,
            len: 16384
        }
    );
    j.complete(p, errno(libc::EOPNOTSUPP), l);
    assert!(l.zero_range);
    let (p, c) = j.next(l, &LIM).expect("punch");
    assert_eq!(
        c,
        Call::Fallocate {
            mode: PUNCH,
            at: 1000,
            len: 16384
        }
    );
    j.complete(p, Ok(0), l);
    let (p, c) = j.next(l, &LIM).expect("allocate");
    assert_eq!(
        c,
        Call::Fallocate {
            mode: libc::FALLOC_FL_KEEP_SIZE,
            at: 1000,
            len: 16384
        }
    );
    j.complete(p, Ok(0), l);
    let rest = take(&mut j, l);
    assert_eq!(rest.len(), 1, "the tail: {rest:?}");
    j.complete(rest[0].0, Ok(0), l);
    let (p, _) = j.next(l, &LIM).expect("its allocate");
    j.complete(p, Ok(0), l);
    assert!(j.finished());
    j.result().expect("ok");

    // Remembered: a FAST_ZERO without trim fails at once, before any call.
    let mut fast = zero(4096, false, true, false);
    assert!(fast.next(l, &LIM).is_none());
    assert!(fast.finished());
    assert_eq!(
        fast.result().expect_err("not fast").kind(),
        io::ErrorKind::Unsupported
    );

    // Nothing left but writing zeroes, in pieces of the zero buffer.
    l.punch = true;
    let mut w = zero(2500, true, false, true);
    let calls: Vec<_> = take(&mut w, l).into_iter().map(|p| p.1).collect();
    assert_eq!(
        calls,
        [
            Call::WriteZeroes {
                at: 1000,
                len: 1024
            },
            Call::WriteZeroes {
                at: 2024,
                len: 1024
            }
        ]
    );
}

#[test]
fn trim_is_a_hint() {
    let l = &mut Lacks::default();
    let mut j = job(Op::Trim {
        offset: 0,
        len: 40000,
        fua: true,
    });
    let pieces = take(&mut j, l);
    assert_eq!(pieces.len(), 2);
    j.complete(pieces[0].0, errno(libc::EOPNOTSUPP), l);
    j.complete(pieces[1].0, errno(libc::EOPNOTSUPP), l);
    assert!(l.punch);
    assert!(j.next(l, &LIM).is_none(), "no sync: nothing was punched");
    assert!(j.finished());
    j.result().expect("a hint");

    // Other errors are errors.
    let mut j = job(Op::Trim {
        offset: 0,
        len: 100,
        fua: false,
    });
    let l = &mut Lacks::default();
    let (p, _) = j.next(l, &LIM).expect("punch");
    j.complete(p, errno(libc::EIO), l);
    assert_eq!(j.result().expect_err("eio").raw_os_error(), Some(libc::EIO));
}

#[test]
fn an_error_stops_new_pieces_and_waits_for_the_rest() {
    let l = &mut Lacks::default();
    let mut j = job(Op::Write {
        offset: 0,
        buf: vec![0; 40000],
        fua: false,
    });
    let pieces = take(&mut j, l);
    j.complete(pieces[0].0, errno(libc::ENOSPC), l);
    assert!(j.next(l, &LIM).is_none());
    assert!(!j.finished(), "a piece is still in flight");
    j.complete(pieces[1].0, Ok(4096), l);
    assert!(j.finished());
    assert_eq!(
        j.result().expect_err("e").raw_os_error(),
        Some(libc::ENOSPC)
    );
}

#[test]
fn cache_none_drops_what_was_read_and_written_back() {
    let l = &mut Lacks::default();
    // A read: its pieces, then its range dropped from the page cache.
    let mut j = evicting(Op::Read {
        offset: 100,
        buf: vec![0; 5000],
    });
    let data = take(&mut j, l);
    assert_eq!(data.len(), 2);
    for (p, c) in &data {
        let Call::Read { range, .. } = c else {
            panic!("{c:?}")
        };
        j.complete(*p, Ok(range.len() as u64), l);
    }
    let evict = take(&mut j, l);
    assert_eq!(
        evict.iter().map(|p| p.1.clone()).collect::<Vec<_>>(),
        [Call::Evict { at: 100, len: 5000 }]
    );
    assert!(!j.finished());
    // Failing to evict changes nothing of the data: a hint.
    j.complete(evict[0].0, errno(libc::EINVAL), l);
    assert!(j.finished());
    j.result().expect("the read succeeded");
    // A FUA write: written, synced, written back (already), then dropped;
    // one call at a time, in that order.
    let mut j = evicting(Op::Write {
        offset: 0,
        buf: vec![1; 100],
        fua: true,
    });
    let mut order = Vec::new();
    while !j.finished() {
        let out = take(&mut j, l);
        assert_eq!(out.len(), 1, "one at a time: {out:?}");
        order.push(out[0].1.clone());
        j.complete(out[0].0, Ok(100), l);
    }
    assert_eq!(
        order,
        [
            Call::Write {
                at: 0,
                range: 0..100
            },
            Call::Datasync,
            Call::WriteBack { at: 0, len: 100 },
            Call::Evict { at: 0, len: 100 },
        ]
    );
    // Neither a flush nor a trim has anything to drop; without cache=none
    // a read has nothing after it.
    for (mut j, calls) in [
        (evicting(Op::Flush), 1),
        (
            evicting(Op::Trim {
                offset: 0,
                len: 10,
                fua: false,
            }),
            1,
        ),
        (
            job(Op::Read {
                offset: 0,
                buf: vec![0; 10],
            }),
            1,
        ),
    ] {
        let mut n = 0;
        while !j.finished() {
            let out = take(&mut j, l);
            n += out.len();
            for (p, _) in out {
                j.complete(p, Ok(10), l);
            }
        }
        assert_eq!(n, calls);
    }
    // A read that failed is not followed by anything.
    let mut j = evicting(Op::Read {
        offset: 0,
        buf: vec![0; 10],
    });
    let out = take(&mut j, l);
    j.complete(out[0].0, errno(libc::EIO), l);
    assert!(j.finished() && take(&mut j, l).is_empty());
    assert!(j.result().is_err());
}

/// The writeback a cache=none write waits for goes in pieces of at most
/// `write_back` (the synchronous engine waits for each on the loop), then
/// the whole range is dropped.
#[test]
fn a_long_writeback_goes_in_pieces() {
    let l = &mut Lacks::default();
    let mut j = evicting(Op::Write {
        offset: 1 << 20,
        buf: vec![1; 20000],
        fua: false,
    });
    let mut closing = Vec::new();
    while !j.finished() {
        for (piece, call) in take(&mut j, l) {
            let n = match &call {
                Call::Write { range, .. } => range.len() as u64,
                _ => 0,
            };
            if !matches!(call, Call::Write { .. }) {
                closing.push(call);
            }
            j.complete(piece, Ok(n), l);
        }
    }
    let at = 1 << 20;
    assert_eq!(
        closing,
        [
            Call::WriteBack { at, len: 8192 },
            Call::WriteBack {
                at: at + 8192,
                len: 8192
            },
            Call::WriteBack {
                at: at + 16384,
                len: 3616
            },
            Call::Evict { at, len: 20000 },
        ]
    );
    j.result().expect("written");
}
