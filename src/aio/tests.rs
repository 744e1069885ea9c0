//! The engines against real files: on the disk (/var/tmp, ext4-like) and on
//! tmpfs (/dev/shm), each test run on the io_uring engine and the
//! synchronous one, driven as the server will drive them: a real mio Poll.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::{Done, Engine, Op, Tag};
use crate::sys;

pub(super) const DISK: &str = "/var/tmp";
pub(super) const SHM: &str = "/dev/shm";
pub(super) const MIB: u64 = 1 << 20;

/// A fresh directory, removed on drop.
pub(super) struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(base: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = PathBuf::from(format!("{base}/nbdlite-aio-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    /// A new file of `size` bytes (a hole), open read-write.
    pub fn file(&self, name: &str, size: u64) -> Rc<File> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.0.join(name))
            .expect("create");
        f.set_len(size).expect("set_len");
        Rc::new(f)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Bytes that differ at every offset, so misplaced data shows.
pub(super) fn pattern(offset: u64, len: usize, seed: u8) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) % 251) as u8 ^ seed)
        .collect()
}

/// An engine and the Poll its completions wake, driven like the server's loop.
pub(super) struct Rig {
    pub e: Engine,
    poll: Poll,
    events: Events,
    /// Poll wake-ups that carried the engine's token.
    pub wakeups: usize,
}

const RING: Token = Token(7);

impl Rig {
    pub fn new(file: &Rc<File>, sync: bool) -> Rig {
        let e = Engine::new(file.clone(), sync);
        if !sync && !e.is_async() {
            crate::skipped::skip_part(
                "io_uring unavailable here: the async case ran synchronously",
            );
        }
        let poll = Poll::new().expect("poll");
        if let Some(fd) = e.fd() {
            let raw = fd.as_raw_fd();
            poll.registry()
                .register(&mut SourceFd(&raw), RING, Interest::READABLE)
                .expect("register");
        }
        Rig {
            e,
            poll,
            events: Events::with_capacity(8),
            wakeups: 0,
        }
    }

    pub fn submit(&mut self, op: Op, tag: Tag) {
        self.e.submit(op, tag).expect("room");
    }

    /// Drives the engine until `n` operations have completed (bounded).
    #[track_caller]
    pub fn wait(&mut self, n: usize) -> Vec<Done> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut out = Vec::new();
        loop {
            self.e.run();
            self.e.reap(&mut out);
            if out.len() >= n {
                return out;
            }
            assert!(Instant::now() < deadline, "{} of {n} done", out.len());
            self.idle();
        }
    }

    /// Sleeps in the Poll as the server would, unless the engine is busy.
    #[track_caller]
    pub fn idle(&mut self) {
        if self.e.busy() {
            return;
        }
        assert!(self.e.fd().is_some(), "sync engine idle with work left");
        match self
            .poll
            .poll(&mut self.events, Some(Duration::from_secs(20)))
        {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            r => r.expect("poll"),
        }
        assert!(
            !self.events.is_empty(),
            "no wake-up in 20 s with I/O in flight"
        );
        self.wakeups += self.events.iter().filter(|ev| ev.token() == RING).count();
    }

    /// Runs one operation to completion.
    #[track_caller]
    pub fn one(&mut self, op: Op) -> (io::Result<()>, Vec<u8>) {
        self.submit(op, 99);
        let mut d = self.wait(1);
        assert_eq!(d.len(), 1);
        let d = d.pop().expect("one");
        assert_eq!(d.tag, 99);
        (d.result, d.buf)
    }

    #[track_caller]
    pub fn read(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let (r, buf) = self.one(Op::Read {
            offset,
            buf: vec![0; len],
        });
        r.expect("read");
        buf
    }
}

/// Both engines (io_uring first) on both filesystems.
pub(super) fn each(mut f: impl FnMut(&TempDir, bool)) {
    for base in [DISK, SHM] {
        for sync in [false, true] {
            eprintln!("-- {base}, {}", if sync { "sync" } else { "io_uring" });
            f(&TempDir::new(base), sync);
        }
    }
}

/// Writes the file out and drops its pages from the cache.
pub(super) fn evict(f: &File, offset: u64, len: u64) {
    f.sync_all().expect("fsync");
    sys::fadvise_dontneed(f.as_fd(), offset, len).expect("fadvise");
}

#[test]
fn round_trip() {
    each(|dir, sync| {
        let f = dir.file("data", 64 * MIB);
        let mut rig = Rig::new(&f, sync);
        // Small, odd-sized and multi-piece (9 MiB: three pieces on either engine).
        let cases = [
            (0, 4096),
            (12345, 777),
            (5 * MIB + 3, (9 * MIB) as usize + 123),
        ];
        for (i, &(off, len)) in cases.iter().enumerate() {
            let data = pattern(off, len, i as u8);
            let (r, back) = rig.one(Op::Write {
                offset: off,
                buf: data.clone(),
                fua: false,
            });
            r.expect("write");
            assert_eq!(back, data, "the write buffer comes back");
            assert!(rig.read(off, len) == data, "read back {off}+{len}");
            let mut direct = vec![0; len];
            f.read_exact_at(&mut direct, off).expect("pread");
            assert!(direct == data, "in the file at {off}+{len}");
        }
        // Empty operations complete at once.
        assert!(rig.read(100, 0).is_empty());
        assert_eq!(rig.e.in_flight(), 0);
    });
}

#[test]
fn fua_and_flush() {
    each(|dir, sync| {
        let f = dir.file("data", 32 * MIB);
        let mut rig = Rig::new(&f, sync);
        // One piece and several: the writes, then one fdatasync.
        for (off, len) in [(4096, 4096), (MIB, (10 * MIB) as usize)] {
            let data = pattern(off, len, 3);
            let (r, _) = rig.one(Op::Write {
                offset: off,
                buf: data.clone(),
                fua: true,
            });
            r.expect("fua write");
            assert!(rig.read(off, len) == data);
        }
        rig.one(Op::Flush).0.expect("flush");
        // A flush behind writes in flight: all complete.
        for i in 0..8u64 {
            rig.submit(
                Op::Write {
                    offset: i * MIB,
                    buf: pattern(i * MIB, 65536, 9),
                    fua: i % 2 == 0,
                },
                i,
            );
        }
        rig.submit(Op::Flush, 100);
        for d in rig.wait(9) {
            d.result.expect("ok");
        }
    });
}

#[test]
fn read_past_eof_is_an_error() {
    each(|dir, sync| {
        let f = dir.file("data", 10000);
        let mut rig = Rig::new(&f, sync);
        assert_eq!(rig.read(8000, 2000).len(), 2000, "up to the end is fine");
        let (r, buf) = rig.one(Op::Read {
            offset: 4096,
            buf: vec![0; 8192],
        });
        let e = r.expect_err("past the end");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof); // EIO on the wire
        assert_eq!(buf.len(), 8192, "the buffer comes back on error too");
    });
}

#[test]
fn many_in_flight_complete_out_of_order() {
    for sync in [false, true] {
        let dir = TempDir::new(DISK);
        let f = dir.file("data", 64 * MIB);
        for i in 0..64 {
            f.write_all_at(&pattern(i * MIB, MIB as usize, 1), i * MIB)
                .expect("fill");
        }
        evict(&f, 32 * MIB, 32 * MIB); // the first 32 MiB stay cached
        let mut rig = Rig::new(&f, sync);
        // A cold 4 MiB read first, then 63 cached 4 KiB reads.
        rig.submit(
            Op::Read {
                offset: 40 * MIB,
                buf: vec![0; 4 << 20],
            },
            0,
        );
        for t in 1..64u64 {
            let off = t * 4096 * 7;
            rig.submit(
                Op::Read {
                    offset: off,
                    buf: vec![0; 4096],
                },
                t,
            );
        }
        assert_eq!(rig.e.in_flight(), 64);
        let done = rig.wait(64);
        let order: Vec<Tag> = done.iter().map(|d| d.tag).collect();
        for d in &done {
            let off = if d.tag == 0 {
                40 * MIB
            } else {
                d.tag * 4096 * 7
            };
            assert!(d.buf == pattern(off, d.buf.len(), 1), "tag {}", d.tag);
        }
        let cold = order.iter().position(|&t| t == 0).expect("cold read");
        eprintln!("sync={sync}: cold read completed {cold}th of 64");
        assert!(cold > 0, "the cold read held back the cached ones");
    }
}

#[test]
fn completions_wake_the_poll() {
    let dir = TempDir::new(DISK);
    let f = dir.file("data", 16 * MIB);
    f.write_all_at(&pattern(0, (16 * MIB) as usize, 2), 0)
        .expect("fill");
    evict(&f, 0, 0);
    let e = &mut Engine::new(f.clone(), false);
    let Some(fd) = e.fd().map(|fd| fd.as_raw_fd()) else {
        crate::skipped::skip("io_uring unavailable, no fd to poll");
        return;
    };
    let mut poll = Poll::new().expect("poll");
    poll.registry()
        .register(&mut SourceFd(&fd), RING, Interest::READABLE)
        .expect("register");
    let mut events = Events::with_capacity(4);
    let wait = |poll: &mut Poll, events: &mut Events, ms| loop {
        match poll.poll(events, Some(Duration::from_millis(ms))) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r.expect("poll"),
        }
    };
    // Nothing in flight: no event.
    wait(&mut poll, &mut events, 50);
    assert!(events.is_empty());
    let mut out = Vec::new();
    for round in 0..3u64 {
        // Cold reads (round 0 evicted everything) go to the disk: only the
        // Poll can say when they are done.
        for t in 0..4 {
            let op = Op::Read {
                offset: (round * 4 + t) * MIB,
                buf: vec![0; 65536],
            };
            e.submit(op, t).expect("room");
        }
        e.run();
        let deadline = Instant::now() + Duration::from_secs(20);
        while out.len() < 4 {
            assert!(Instant::now() < deadline, "no completion");
            e.reap(&mut out);
            if out.len() < 4 && !e.busy() {
                wait(&mut poll, &mut events, 20_000);
                assert!(
                    events
                        .iter()
                        .any(|ev| ev.token() == RING && ev.is_readable())
                );
            }
        }
        out.clear();
        // Drained: edge-triggered, so no further event until new completions.
        wait(&mut poll, &mut events, 50);
        e.reap(&mut out);
        assert!(out.is_empty());
    }
}

#[test]
fn enospc_through_the_engine() {
    if !is_root() {
        crate::skipped::skip("mounting a small tmpfs needs root");
        return;
    }
    let dir = TempDir::new("/tmp");
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&dir.0)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        crate::skipped::skip("mount -t tmpfs refused");
        return;
    }
    // Lazily: a ring's teardown runs after its fd is closed and keeps the
    // registered file (so the mount) busy a moment longer; a plain umount
    // then fails with EBUSY and the mount is left behind.
    struct Unmount<'a>(&'a TempDir);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0.0)
                .status();
        }
    }
    let _u = Unmount(&dir);
    for sync in [false, true] {
        let f = dir.file(if sync { "b" } else { "a" }, 8 * MIB);
        let mut rig = Rig::new(&f, sync);
        let (r, _) = rig.one(Op::Write {
            offset: 0,
            buf: vec![1; (2 * MIB) as usize],
            fua: false,
        });
        let e = r.expect_err("full");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        drop(rig);
        fs::remove_file(dir.0.join(if sync { "b" } else { "a" })).expect("rm");
    }
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn the_fallback_warning_says_why() {
    use super::uring::explain;
    use crate::sys::uring::SetupError;
    let e = |n| explain(SetupError::Setup(io::Error::from_raw_os_error(n)));
    assert!(e(libc::ENOSYS).contains("seccomp"), "{}", e(libc::ENOSYS));
    assert!(e(libc::EPERM).contains("io_uring_setup"));
    let m = explain(SetupError::Missing(vec!["FALLOCATE", "FADVISE"]));
    assert!(m.contains("FALLOCATE, FADVISE") && m.contains("5.6"), "{m}");
}
