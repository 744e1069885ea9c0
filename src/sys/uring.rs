//! io_uring made safe to use: a ring over one file that owns every buffer the
//! kernel may touch until the completion naming it has been reaped.
//!
//! Pushing an SQE hands the kernel a raw pointer, which is only sound if the
//! memory outlives the operation. So the caller never passes a pointer: it
//! *lends* a `Vec<u8>` to the ring, names it by `BufId` in the SQEs, and can
//! only `take` it back once no SQE naming it is still in flight. Dropping the
//! ring waits for every outstanding completion before the buffers are freed.
//! The file is held (`Rc<File>`, and registered as fixed file 0 where the
//! kernel allows) so its fd cannot be closed and reused under an SQE either.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::rc::Rc;

use io_uring::{IoUring, Probe, cqueue, opcode, squeue, types};
use slab::Slab;

/// A buffer lent to the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufId(usize);

/// One system call for the kernel to make on the ring's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sqe {
    /// pread into `buf[range]` from `at`.
    Read {
        at: u64,
        buf: BufId,
        range: Range<usize>,
    },
    /// pwrite of `buf[range]` at `at`.
    Write {
        at: u64,
        buf: BufId,
        range: Range<usize>,
    },
    /// write of `buf[range]` at the file's end (an O_APPEND file), by a
    /// kernel worker: never tried inline, so the submitter spends no time on
    /// it (a log's writes).
    Append { buf: BufId, range: Range<usize> },
    /// pwrite of static data (the shared zero buffer) at `at`.
    WriteStatic { at: u64, data: &'static [u8] },
    /// fdatasync.
    Datasync,
    /// fallocate(mode, at, len).
    Fallocate { mode: i32, at: u64, len: u64 },
    /// posix_fadvise(WILLNEED); `len` fits the SQE's 32-bit field.
    WillNeed { at: u64, len: u32 },
    /// sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER): the range
    /// written back, waited for.
    WriteBack { at: u64, len: u32 },
    /// posix_fadvise(DONTNEED): the range dropped from the page cache.
    Evict { at: u64, len: u32 },
    /// ftruncate (Linux 6.9; an older kernel answers -EINVAL).
    Truncate { len: u64 },
}

/// Why a ring could not be had.
#[derive(Debug)]
pub enum SetupError {
    /// io_uring_setup failed (ENOSYS: no io_uring or a seccomp filter; EPERM:
    /// kernel.io_uring_disabled or a policy).
    Setup(io::Error),
    /// The kernel lacks opcodes we need (it is older than 5.6).
    Missing(Vec<&'static str>),
}

/// Ring options the kernel may or may not know; `Ring::new` drops the ones it refuses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// IORING_SETUP_COOP_TASKRUN | TASKRUN_FLAG (5.19).
    pub coop_taskrun: bool,
    /// IORING_SETUP_SINGLE_ISSUER (6.0).
    pub single_issuer: bool,
    /// Register the file as fixed file 0 (saves a file lookup per SQE).
    pub fixed_file: bool,
}

struct Lent {
    buf: Vec<u8>,
    /// SQEs in flight that name this buffer.
    pins: u32,
}

struct Flight {
    token: u64,
    buf: Option<usize>,
}

/// The opcodes every `Sqe` needs, by name for the warning.
const NEEDED: [(u8, &str); 6] = [
    (opcode::Read::CODE, "READ"),
    (opcode::Write::CODE, "WRITE"),
    (opcode::Fsync::CODE, "FSYNC"),
    (opcode::Fallocate::CODE, "FALLOCATE"),
    (opcode::Fadvise::CODE, "FADVISE"),
    (opcode::SyncFileRange::CODE, "SYNC_FILE_RANGE"),
];

pub struct Ring {
    ring: IoUring,
    /// Keeps the fd open (and unreused) while any SQE names it.
    file: Rc<File>,
    fixed: bool,
    lent: Slab<Lent>,
    /// Pushed and not yet reaped (in the SQ or in the kernel); the SQE's
    /// user_data is the key.
    flights: Slab<Flight>,
    /// Most flights at once: the CQ's size, so completions never overflow it.
    limit: usize,
    /// Pushed but not yet consumed by the kernel.
    queued: usize,
    /// Set when an unrecoverable error makes waiting impossible: Drop leaks
    /// the buffers rather than free memory the kernel may still write.
    poisoned: bool,
}

impl Ring {
    /// A ring of `entries` SQEs (and twice as many CQEs) over `file`.
    pub fn new(file: Rc<File>, entries: u32, opt: Options) -> Result<Ring, SetupError> {
        let ring = build(entries, opt).map_err(SetupError::Setup)?;
        let mut probe = Probe::new();
        // Before 5.6 there is no probe at all: everything we need is missing then.
        let missing: Vec<&str> = match ring.submitter().register_probe(&mut probe) {
            Ok(()) => NEEDED
                .iter()
                .filter(|(code, _)| !probe.is_supported(*code))
                .map(|(_, name)| *name)
                .collect(),
            Err(_) => NEEDED.iter().map(|(_, name)| *name).collect(),
        };
        if !missing.is_empty() {
            return Err(SetupError::Missing(missing));
        }
        let fixed = opt.fixed_file && ring.submitter().register_files(&[file.as_raw_fd()]).is_ok();
        let limit = ring.params().cq_entries() as usize;
        Ok(Ring {
            ring,
            file,
            fixed,
            lent: Slab::new(),
            flights: Slab::new(),
            limit,
            queued: 0,
            poisoned: false,
        })
    }

    fn ring_fd(&self) -> BorrowedFd<'_> {
        // The io-uring crate exposes the fd as a RawFd only; it lives as long as self.ring.
        let raw: RawFd = self.ring.as_raw_fd();
        // SAFETY: raw is the ring's fd, open until self.ring drops, which cannot
        // happen while the returned borrow of self lives.
        unsafe { BorrowedFd::borrow_raw(raw) }
    }

    /// Hands `buf` to the ring; it comes back through `take`.
    pub fn lend(&mut self, buf: Vec<u8>) -> BufId {
        BufId(self.lent.insert(Lent { buf, pins: 0 }))
    }

    /// Takes a lent buffer back. None while an SQE naming it is in flight (or
    /// for an id never lent): the caller waits for its completions first.
    pub fn take(&mut self, id: BufId) -> Option<Vec<u8>> {
        match self.lent.get(id.0) {
            Some(l) if l.pins == 0 => Some(self.lent.remove(id.0).buf),
            _ => None,
        }
    }

    /// A `push` now would be accepted.
    pub fn has_room(&self) -> bool {
        self.flights.len() < self.limit && self.queued < self.ring.params().sq_entries() as usize
    }

    /// SQEs pushed and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// SQEs pushed but not yet consumed by the kernel (a later `enter` sends them).
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Queues `sqe` (no system call); its completion will carry `token`.
    /// False when there is no room: the SQ is full, or as many operations are
    /// in flight as the CQ can hold. Panics if `sqe` names a buffer range that
    /// was not lent (a caller bug, checked before any pointer is made).
    pub fn push(&mut self, sqe: &Sqe, token: u64) -> bool {
        if !self.has_room() {
            return false;
        }
        let buf = match sqe {
            Sqe::Read { buf, range, .. }
            | Sqe::Write { buf, range, .. }
            | Sqe::Append { buf, range } => {
                let len = self.lent[buf.0].buf.len();
                assert!(range.start <= range.end && range.end <= len);
                assert!(u32::try_from(range.len()).is_ok());
                Some(buf.0)
            }
            _ => None,
        };
        let key = self.flights.insert(Flight { token, buf });
        let entry = self.entry(sqe).user_data(key as u64);
        // SAFETY: every pointer in `entry` stays valid until its completion is
        // reaped: buffers named by a BufId are owned by `self.lent` and pinned
        // (take() refuses them, Drop waits) until reap() sees this key;
        // WriteStatic data is 'static; the fd is kept open by `self.file` and
        // the fixed-file registration. push() refuses a full SQ, writing nothing.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.flights.remove(key);
            return false;
        }
        if let Some(b) = buf {
            self.lent[b].pins += 1;
        }
        self.queued += 1;
        true
    }

    /// Builds the SQE. The pointers it holds are only made here, from lent
    /// buffers whose ranges `push` checked. No reference to a lent buffer's
    /// bytes is made (the kernel may be writing into another part of it): only
    /// raw pointers, from `Vec::as_mut_ptr`, which materialises none.
    fn entry(&mut self, sqe: &Sqe) -> squeue::Entry {
        macro_rules! on_file {
            ($op:ident ( $($arg:expr),* ) $(.$m:ident($v:expr))*) => {
                if self.fixed {
                    opcode::$op::new(types::Fixed(0), $($arg),*)$(.$m($v))*.build()
                } else {
                    opcode::$op::new(types::Fd(self.file.as_raw_fd()), $($arg),*)$(.$m($v))*.build()
                }
            };
        }
        match sqe {
            Sqe::Read { at, buf, range } => {
                let ptr = self.lent[buf.0].buf.as_mut_ptr().wrapping_add(range.start);
                on_file!(Read(ptr, range.len() as u32).offset(*at))
            }
            Sqe::Write { at, buf, range } => {
                let ptr = self.lent[buf.0].buf.as_mut_ptr().wrapping_add(range.start);
                on_file!(Write(ptr.cast_const(), range.len() as u32).offset(*at))
            }
            Sqe::Append { buf, range } => {
                let ptr = self.lent[buf.0].buf.as_mut_ptr().wrapping_add(range.start);
                // Offset -1: at the file position, which O_APPEND keeps at the end.
                on_file!(Write(ptr.cast_const(), range.len() as u32).offset(u64::MAX))
                    .flags(squeue::Flags::ASYNC)
            }
            Sqe::WriteStatic { at, data } => {
                let len = data.len().min(u32::MAX as usize) as u32;
                // Straight to a kernel worker: done inline, filling a tmpfs
                // file with zeroes would spend the loop thread's time.
                on_file!(Write(data.as_ptr(), len).offset(*at)).flags(squeue::Flags::ASYNC)
            }
            Sqe::Datasync => on_file!(Fsync().flags(types::FsyncFlags::DATASYNC)),
            Sqe::Fallocate { mode, at, len } => on_file!(Fallocate(*len).offset(*at).mode(*mode)),
            Sqe::WillNeed { at, len } => {
                on_file!(Fadvise(*len as libc::off_t, libc::POSIX_FADV_WILLNEED).offset(*at))
            }
            Sqe::WriteBack { at, len } => {
                let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER;
                on_file!(SyncFileRange(*len).offset(*at).flags(flags))
            }
            Sqe::Evict { at, len } => {
                on_file!(Fadvise(*len as libc::off_t, libc::POSIX_FADV_DONTNEED).offset(*at))
            }
            Sqe::Truncate { len } => on_file!(Ftruncate(*len)),
        }
    }

    /// io_uring_enter for everything queued, without waiting. A kernel that is
    /// short of resources (EAGAIN), has completions to flush first (EBUSY) or
    /// was interrupted leaves the SQEs in the SQ for the next call: Ok.
    pub fn enter(&mut self) -> io::Result<()> {
        if self.queued == 0 {
            return Ok(());
        }
        match self.ring.submit() {
            Ok(n) => {
                self.queued -= n.min(self.queued);
                Ok(())
            }
            Err(e) if is_transient(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Moves every waiting completion to `out` as (token, result): the
    /// result is what the system call returned, or -errno. Unpins buffers.
    pub fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let cqe: cqueue::Entry = cqe;
            let Some(flight) = self.flights.try_remove(cqe.user_data() as usize) else {
                continue; // not ours: cannot happen, every SQE is pushed by push()
            };
            if let Some(b) = flight.buf {
                self.lent[b].pins -= 1;
            }
            out.push((flight.token, cqe.result()));
        }
    }

    /// Blocks until at least one completion is there (or an error): only for
    /// Drop and for callers that have nothing else to do.
    pub fn wait(&mut self) -> io::Result<()> {
        match self.ring.submit_and_wait(1) {
            Ok(n) => {
                self.queued -= n.min(self.queued);
                Ok(())
            }
            Err(e) if is_transient(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN | libc::EBUSY | libc::EINTR)
    )
}

/// io_uring_setup with the options asked for, dropping those the kernel refuses (EINVAL).
fn build(entries: u32, opt: Options) -> io::Result<IoUring> {
    let try_build = |coop: bool, single: bool| {
        let mut b = IoUring::builder();
        b.setup_cqsize(entries * 2);
        if coop {
            b.setup_coop_taskrun().setup_taskrun_flag();
        }
        if single {
            b.setup_single_issuer();
        }
        b.build(entries)
    };
    match try_build(opt.coop_taskrun, opt.single_issuer) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => try_build(false, false),
        r => r,
    }
}

impl Drop for Ring {
    /// Waits for every operation in flight: until then the kernel may still
    /// read or write the lent buffers, which are freed after this returns.
    fn drop(&mut self) {
        let mut scratch = Vec::new();
        while !self.poisoned && !self.flights.is_empty() {
            self.reap(&mut scratch);
            scratch.clear();
            if self.flights.is_empty() {
                break;
            }
            if let Err(e) = self.wait() {
                log::error!("io_uring: cannot wait for in-flight I/O ({e}): leaking its buffers");
                self.poisoned = true;
            }
        }
        if self.poisoned {
            std::mem::forget(std::mem::take(&mut self.lent));
        }
    }
}

impl AsFd for Ring {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lent_buffers_stay_put_until_reaped() {
        let path = std::env::temp_dir().join(format!("nbdlite-ring-{}", std::process::id()));
        std::fs::write(&path, vec![5u8; 8192]).expect("write");
        let file = Rc::new(File::open(&path).expect("open"));
        let _ = std::fs::remove_file(&path);
        let Ok(mut ring) = Ring::new(file, 4, Options::default()) else {
            crate::skipped::skip("io_uring unavailable");
            return;
        };
        let id = ring.lend(vec![0; 4096]);
        let sqe = Sqe::Read {
            at: 4096,
            buf: id,
            range: 0..4096,
        };
        assert!(ring.push(&sqe, 42));
        assert_eq!((ring.queued(), ring.in_flight()), (1, 1));
        assert!(ring.take(id).is_none(), "pinned while in flight");
        let mut out = Vec::new();
        while out.is_empty() {
            ring.wait().expect("wait");
            ring.reap(&mut out);
        }
        assert_eq!(out, [(42, 4096)]);
        assert_eq!(ring.in_flight(), 0);
        assert_eq!(ring.take(id).expect("free again"), vec![5; 4096]);
        // Room is bounded by the SQ (4 here).
        let id = ring.lend(vec![0; 16]);
        let n = (0..10)
            .take_while(|&t| {
                let sqe = Sqe::Read {
                    at: 0,
                    buf: id,
                    range: 0..16,
                };
                ring.push(&sqe, t)
            })
            .count();
        assert_eq!(n, 4);
        assert!(!ring.has_room());
        // Dropped with four reads in flight: the drop waits for them.
    }
}
