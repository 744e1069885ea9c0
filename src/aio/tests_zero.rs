//! TRIM and WRITE_ZEROES on real filesystems, long operations cut into
//! bounded pieces, and dropping the engine with I/O in flight.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::Instant;

use super::blocking::{SLICE_BYTES, SLICE_CALLS};
use super::tests::{DISK, MIB, Rig, SHM, TempDir, each, evict, pattern};
use super::{Done, Inner, Op};

fn zero(offset: u64, len: u64, may_trim: bool, fast: bool) -> Op {
    Op::Zero {
        offset,
        len,
        may_trim,
        fast,
        fua: false,
    }
}

/// Allocation the filesystem may add for its own metadata (ext4's extent blocks).
const SLACK: u64 = 64 << 10;

/// Bytes allocated to the file.
fn allocated(f: &File) -> u64 {
    f.metadata().expect("stat").blocks() * 512
}

#[track_caller]
fn assert_zero(rig: &mut Rig, offset: u64, len: usize) {
    assert!(
        rig.read(offset, len).iter().all(|&b| b == 0),
        "zeroes at {offset}+{len}"
    );
}

#[test]
fn trim_and_zero() {
    each(|dir, sync| {
        let tmpfs = dir.0.starts_with(SHM);
        let f = dir.file("data", 8 * MIB);
        f.write_all_at(&pattern(0, (8 * MIB) as usize, 5), 0)
            .expect("fill");
        f.sync_all().expect("fsync");
        let mut rig = Rig::new(&f, sync);
        let full = allocated(&f);

        // May trim: a hole.
        rig.one(zero(MIB, MIB, true, false)).0.expect("zero");
        assert_zero(&mut rig, MIB, MIB as usize);
        assert!(allocated(&f) <= full - MIB + SLACK, "punched");

        // NO_HOLE: zeroes, still allocated.
        let before = allocated(&f);
        rig.one(zero(3 * MIB, MIB, false, false)).0.expect("zero");
        assert_zero(&mut rig, 3 * MIB, MIB as usize);
        assert!(allocated(&f) + SLACK >= before, "no hole");

        // TRIM makes a hole; NO_HOLE zeroes over a hole allocate it again.
        let trim = Op::Trim {
            offset: 5 * MIB,
            len: MIB,
            fua: true,
        };
        rig.one(trim).0.expect("trim");
        let trimmed = allocated(&f);
        assert!(
            trimmed <= before - MIB + SLACK,
            "trim punched: {before} -> {trimmed}"
        );
        rig.one(zero(5 * MIB, MIB, false, false)).0.expect("zero");
        assert!(allocated(&f) + SLACK >= trimmed + MIB, "allocated again");
        assert_zero(&mut rig, 5 * MIB, MIB as usize);

        // Unaligned, with FUA: the neighbours are untouched.
        let (off, len) = (6 * MIB + 100, 5000);
        let op = Op::Zero {
            offset: off,
            len,
            may_trim: true,
            fast: false,
            fua: true,
        };
        rig.one(op).0.expect("zero");
        assert_zero(&mut rig, off, len as usize);
        assert_eq!(rig.read(off - 100, 100), pattern(off - 100, 100, 5));
        assert_eq!(rig.read(off + len, 100), pattern(off + len, 100, 5));

        // FAST_ZERO: punching is fast everywhere; NO_HOLE only with ZERO_RANGE.
        rig.one(zero(7 * MIB, 4096, true, true))
            .0
            .expect("fast punch");
        let (r, _) = rig.one(zero(7 * MIB + 8192, 4096, false, true));
        if tmpfs {
            let e = r.expect_err("tmpfs has no ZERO_RANGE");
            assert_eq!(e.kind(), io::ErrorKind::Unsupported); // ENOTSUP on the wire
            let kept = pattern(7 * MIB + 8192, 4096, 5);
            assert_eq!(rig.read(7 * MIB + 8192, 4096), kept, "data kept");
        } else {
            r.expect("ZERO_RANGE is fast");
            assert_zero(&mut rig, 7 * MIB + 8192, 4096);
        }
    });
}

/// Drives `rig` by hand until `n` are done, calling `check` after every run.
fn drive(rig: &mut Rig, n: usize, mut check: impl FnMut(&Rig, &[Done])) -> Vec<Done> {
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(Instant::now() < deadline, "{} of {n} done", out.len());
        rig.e.run();
        check(rig, &out);
        rig.e.reap(&mut out);
        if out.len() < n {
            rig.idle();
        }
    }
    out
}

#[test]
fn long_no_hole_zero_on_tmpfs_is_cut_into_pieces() {
    const SIZE: u64 = 256 * MIB;
    for sync in [false, true] {
        let dir = TempDir::new(SHM);
        let f = dir.file("data", SIZE + MIB);
        f.write_all_at(&[7; 4096], SIZE).expect("fill");
        let mut rig = Rig::new(&f, sync);
        rig.submit(zero(0, SIZE, false, false), 1);
        rig.submit(
            Op::Read {
                offset: SIZE,
                buf: vec![0; 4096],
            },
            2,
        );
        let (mut runs, mut most) = (0, 0);
        let done = drive(&mut rig, 2, |rig, _| {
            runs += 1;
            match &rig.e.inner {
                Inner::Uring(u) => most = most.max(u.pieces_in_flight()),
                Inner::Blocking(b) => {
                    let (calls, bytes) = b.last_slice;
                    assert!(calls <= SLICE_CALLS, "{calls} calls in one slice");
                    assert!(bytes <= 2 * SLICE_BYTES, "{bytes} bytes in one slice");
                }
                Inner::Remote(_) => unreachable!("a file engine"),
            }
        });
        let order: Vec<u64> = done.iter().map(|d| d.tag).collect();
        assert_eq!(order, [2, 1], "the read is not held back by the zeroing");
        for d in done {
            d.result.expect("ok");
        }
        match &rig.e.inner {
            Inner::Uring(u) => {
                // 2 MiB allocating fallocates, four at a time; the read is the fifth.
                assert!(most <= 5, "{most} pieces in flight");
                assert!(u.issued >= 8, "{} pieces", u.issued);
            }
            Inner::Blocking(_) => assert!(runs >= 64, "{runs} slices"),
            Inner::Remote(_) => unreachable!("a file engine"),
        }
        assert!(allocated(&f) >= SIZE, "NO_HOLE: allocated");
        for off in [0, 100 * MIB + 17, SIZE - 4096] {
            assert_zero(&mut rig, off, 4096);
        }
        eprintln!("sync={sync}: {runs} turns");
    }
}

#[test]
fn drop_with_io_in_flight() {
    for sync in [false, true] {
        let dir = TempDir::new(DISK);
        let f = dir.file("data", 64 * MIB);
        f.write_all_at(&pattern(0, (32 * MIB) as usize, 4), 0)
            .expect("fill");
        evict(&f, 0, 0);
        let mut rig = Rig::new(&f, sync);
        for t in 0..16 {
            let op = Op::Read {
                offset: t * 2 * MIB,
                buf: vec![0; MIB as usize],
            };
            rig.submit(op, t);
        }
        for t in 0..4 {
            let op = Op::Write {
                offset: 40 * MIB + t * MIB,
                buf: vec![0xab; 256 << 10],
                fua: false,
            };
            rig.submit(op, 16 + t);
        }
        rig.submit(zero(48 * MIB, 8 * MIB, false, false), 20);
        rig.e.run();
        let in_flight = rig.e.in_flight();
        let t0 = Instant::now();
        drop(rig);
        eprintln!(
            "sync={sync}: dropped with {in_flight} in flight in {:?}",
            t0.elapsed()
        );
        if !sync {
            // They were in the kernel, and the drop waited for them.
            let mut b = vec![0; 256 << 10];
            for t in 0..4 {
                f.read_exact_at(&mut b, 40 * MIB + t * MIB).expect("pread");
                assert!(b.iter().all(|&x| x == 0xab), "write {t} done");
            }
        }
        // Submitted and never run: dropped without a trace.
        let mut rig = Rig::new(&f, sync);
        rig.submit(zero(0, 8 * MIB, true, false), 1);
        drop(rig);
    }
}
