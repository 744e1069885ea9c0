//! The io_uring engine: each job hands its pieces to the ring as room allows;
//! `run` sends them all in one io_uring_enter; `reap` feeds results back to
//! the jobs, which may hand out more pieces, and turns finished jobs into `Done`s.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;

use slab::Slab;

use super::plan::{Call, Job, Lacks, Limits, Piece, from_res};
use super::{Done, Op, Tag, ZEROES_LEN, zeroes};
use crate::sys::uring::{BufId, Options, Ring, SetupError, Sqe};

/// Piece sizes: reads and writes up to 4 MiB each, fallocate 64 MiB (2 MiB
/// where it allocates), zeroes 1 MiB, and at most 4 pieces of one operation in
/// the kernel at once.
///
/// Allocating pieces are small because of where they run: the kernel hands a
/// fallocate to an io_uring worker thread, and a read it cannot do at once
/// (tmpfs reads never can) queues for a worker too; while one worker is busy
/// the kernel starts no other for it, so the read waits for the piece in hand.
/// Beside a 4 GiB NO_HOLE zeroing on tmpfs, a cached 4 KiB read waited up to
/// 130 ms with 64 MiB pieces; with 2 MiB pieces, p99 3-8 ms and at most 15 ms
/// (1 MiB: no better at the tail, and a slower median from the extra
/// completions).
const LIMITS: Limits = Limits {
    rw: 4 << 20,
    falloc: 64 << 20,
    alloc: 2 << 20,
    zero: ZEROES_LEN,
    cache: 8 << 20,
    // A kernel worker waits for it, not the loop: in one piece.
    write_back: u64::MAX,
    per_op: 4,
};

/// SQ entries (the CQ has twice as many, and bounds what is in flight).
const ENTRIES: u32 = 256;

/// A job and its buffer (lent to the ring while pieces may name it).
struct Slot {
    job: Job,
    buf: Buf,
    /// Already in `ready`.
    queued: bool,
}

enum Buf {
    Lent(BufId),
    /// An empty buffer (no I/O names it), kept to hand back its capacity.
    Held(Vec<u8>),
}

pub(super) struct Uring {
    ring: Ring,
    jobs: Slab<Slot>,
    /// Pieces in the ring, by the token their completion carries: (job key, piece).
    pieces: Slab<(usize, Piece)>,
    /// Jobs that may have pieces to hand out, served in turn.
    ready: VecDeque<usize>,
    /// Finished before `reap` could pass them on.
    done: Vec<Done>,
    lacks: Lacks,
    scratch: Vec<(u64, i32)>,
    enter_failed: bool,
    /// cache=none: operations drop what they read or wrote from the page cache.
    evict: bool,
    /// Pieces pushed so far, for tests.
    #[cfg(test)]
    pub issued: usize,
}

impl Uring {
    /// A ring over `file`, or why not (for the warning line); with `evict`
    /// (cache=none), what operations read or write leaves the page cache.
    pub fn new(file: Rc<File>, evict: bool) -> Result<Uring, String> {
        let opt = Options {
            coop_taskrun: false,
            single_issuer: false,
            fixed_file: true,
        };
        let ring = Ring::new(file, ENTRIES, opt).map_err(explain)?;
        Ok(Uring {
            ring,
            jobs: Slab::new(),
            pieces: Slab::new(),
            ready: VecDeque::new(),
            done: Vec::new(),
            lacks: Lacks::default(),
            scratch: Vec::new(),
            enter_failed: false,
            evict,
            #[cfg(test)]
            issued: 0,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }

    pub fn submit(&mut self, op: Op, tag: Tag) {
        let (job, buf) = Job::new(op, tag, self.evict);
        let buf = if buf.is_empty() {
            Buf::Held(buf)
        } else {
            Buf::Lent(self.ring.lend(buf))
        };
        let key = self.jobs.insert(Slot {
            job,
            buf,
            queued: true,
        });
        self.ready.push_back(key);
    }

    pub fn run(&mut self) {
        self.issue();
        match self.ring.enter() {
            Ok(()) => self.enter_failed = false,
            Err(e) if !self.enter_failed => {
                // Not transient (those are retried quietly): say so once; the
                // SQEs stay queued and go out when the kernel takes them.
                log::error!("io_uring_enter: {e}");
                self.enter_failed = true;
            }
            Err(_) => {}
        }
    }

    /// Hands out pieces, one pass over the ready jobs, while the ring has room.
    fn issue(&mut self) {
        for _ in 0..self.ready.len() {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let Some(slot) = self.jobs.get_mut(key) else {
                continue; // finished since it was queued
            };
            // Stopped by the ring's lack of room, not by the job: it keeps its turn.
            let mut stalled = true;
            while self.ring.has_room() {
                let Some((piece, call)) = slot.job.next(&self.lacks, &LIMITS) else {
                    stalled = false;
                    break;
                };
                let token = self.pieces.insert((key, piece));
                let sqe = to_sqe(call, &slot.buf);
                if !self.ring.push(&sqe, token as u64) {
                    self.pieces.remove(token);
                    slot.job.give_back(piece);
                    break;
                }
                #[cfg(test)]
                {
                    self.issued += 1;
                }
            }
            if slot.job.finished() {
                self.finish(key);
            } else if stalled {
                self.ready.push_back(key);
            } else {
                slot.queued = false;
            }
            if !self.ring.has_room() {
                break;
            }
        }
    }

    pub fn reap(&mut self, out: &mut Vec<Done>) {
        self.ring.reap(&mut self.scratch);
        for i in 0..self.scratch.len() {
            let (token, res) = self.scratch[i];
            let Some((key, piece)) = self.pieces.try_remove(token as usize) else {
                continue; // every token is a piece key: cannot happen
            };
            let Some(slot) = self.jobs.get_mut(key) else {
                continue; // a job lives until its last piece is back: cannot happen
            };
            slot.job.complete(piece, from_res(res), &mut self.lacks);
            if slot.job.finished() {
                self.finish(key);
            } else if !slot.queued {
                slot.queued = true;
                self.ready.push_back(key);
            }
        }
        self.scratch.clear();
        out.append(&mut self.done);
    }

    fn finish(&mut self, key: usize) {
        let mut slot = self.jobs.remove(key);
        let buf = match slot.buf {
            // Finished means no piece in flight, so nothing pins it.
            Buf::Lent(id) => self.ring.take(id).unwrap_or_default(),
            Buf::Held(v) => v,
        };
        self.done.push(Done {
            tag: slot.job.tag,
            result: slot.job.result(),
            buf,
        });
    }

    /// Work is waiting that no completion will announce: finished jobs not yet
    /// reaped, or pieces waiting for room while the kernel holds nothing.
    pub fn busy(&self) -> bool {
        let in_kernel = self.ring.in_flight() - self.ring.queued();
        !self.done.is_empty()
            || (in_kernel == 0 && (self.ring.queued() > 0 || !self.ready.is_empty()))
    }

    pub fn in_flight(&self) -> usize {
        self.jobs.len() + self.done.len()
    }

    /// Pieces in the ring, for tests that check boundedness.
    #[cfg(test)]
    pub fn pieces_in_flight(&self) -> usize {
        self.ring.in_flight()
    }
}

fn to_sqe(call: Call, buf: &Buf) -> Sqe {
    let lent = || match buf {
        Buf::Lent(id) => *id,
        // The plan only makes Read/Write calls for non-empty buffers, which are lent.
        Buf::Held(_) => unreachable!("I/O on an empty buffer"),
    };
    match call {
        Call::Read { at, range } => Sqe::Read {
            at,
            buf: lent(),
            range,
        },
        Call::Write { at, range } => Sqe::Write {
            at,
            buf: lent(),
            range,
        },
        Call::WriteZeroes { at, len } => Sqe::WriteStatic {
            at,
            data: &zeroes()[..len],
        },
        Call::Datasync => Sqe::Datasync,
        Call::Fallocate { mode, at, len } => Sqe::Fallocate { mode, at, len },
        Call::WillNeed { at, len } => Sqe::WillNeed {
            at,
            len: len.min(u32::MAX as u64) as u32,
        },
        // A request's range: at most `MAX_REQUEST`, which fits.
        Call::WriteBack { at, len } => Sqe::WriteBack {
            at,
            len: len.min(u32::MAX as u64) as u32,
        },
        Call::Evict { at, len } => Sqe::Evict {
            at,
            len: len.min(u32::MAX as u64) as u32,
        },
    }
}

/// The warning's reason, with the likely cause.
pub(super) fn explain(e: SetupError) -> String {
    match e {
        SetupError::Setup(e) => match e.raw_os_error() {
            Some(libc::ENOSYS) => {
                format!("io_uring_setup: {e}: kernel before 5.1, or a seccomp filter refuses it")
            }
            Some(libc::EPERM) => {
                match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
                    Ok(v) if v.trim() != "0" => format!(
                        "io_uring_setup: {e}: kernel.io_uring_disabled = {}",
                        v.trim()
                    ),
                    _ => format!(
                        "io_uring_setup: {e}: a seccomp filter or security policy refuses it"
                    ),
                }
            }
            _ => format!("io_uring_setup: {e}"),
        },
        SetupError::Missing(ops) => format!(
            "the kernel's io_uring lacks {} (Linux 5.6 has them)",
            ops.join(", ")
        ),
    }
}
