//! The synchronous engine, for kernels without io_uring: the same pieces,
//! made with plain system calls on the loop's thread, a bounded slice per
//! `run` and one piece per job in turn, so that a long operation costs the
//! other clients one slice of latency per turn rather than its whole length.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::rc::Rc;

use super::plan::{Call, Job, Lacks, Limits};
use super::{Done, Op, Tag, ZEROES_LEN, zeroes};
use crate::sys;

/// Pieces small enough that one takes about a millisecond or less.
const LIMITS: Limits = Limits {
    rw: 1 << 20,
    falloc: 4 << 20,
    alloc: 4 << 20,
    zero: ZEROES_LEN,
    cache: 8 << 20,
    write_back: 1 << 20,
    per_op: 1,
};

/// One `run` makes at most this many calls...
pub(super) const SLICE_CALLS: usize = 16;
/// ...and moves at most about this many bytes (an fdatasync counts as all of them).
pub(super) const SLICE_BYTES: u64 = 4 << 20;

/// What a metadata call (fallocate that allocates nothing, readahead) counts as.
const CALL_COST: u64 = 256 << 10;

pub(super) struct Blocking {
    file: Rc<File>,
    jobs: VecDeque<(Job, Vec<u8>)>,
    done: Vec<Done>,
    lacks: Lacks,
    /// cache=none: operations drop what they read or wrote from the page cache.
    evict: bool,
    /// Calls made by the last `run`, for tests.
    #[cfg(test)]
    pub last_slice: (usize, u64),
}

impl Blocking {
    pub fn new(file: Rc<File>, evict: bool) -> Blocking {
        Blocking {
            file,
            jobs: VecDeque::new(),
            done: Vec::new(),
            lacks: Lacks::default(),
            evict,
            #[cfg(test)]
            last_slice: (0, 0),
        }
    }

    pub fn submit(&mut self, op: Op, tag: Tag) {
        self.jobs.push_back(Job::new(op, tag, self.evict));
    }

    /// One slice: a piece of each job in turn until the slice is used up.
    pub fn run(&mut self) {
        let (mut calls, mut bytes) = (0, 0);
        // Bounded even if a job had nothing to hand out (it is then finished).
        for _ in 0..SLICE_CALLS + self.jobs.len() {
            if calls >= SLICE_CALLS || bytes >= SLICE_BYTES {
                break;
            }
            let Some((mut job, mut buf)) = self.jobs.pop_front() else {
                break;
            };
            if let Some((piece, call)) = job.next(&self.lacks, &LIMITS) {
                calls += 1;
                bytes += cost(&call);
                let res = self.call(&call, &mut buf);
                job.complete(piece, res, &mut self.lacks);
            }
            if job.finished() {
                self.done.push(Done {
                    tag: job.tag,
                    result: job.result(),
                    buf,
                });
            } else {
                self.jobs.push_back((job, buf));
            }
        }
        #[cfg(test)]
        {
            self.last_slice = (calls, bytes);
        }
    }

    fn call(&self, call: &Call, buf: &mut [u8]) -> io::Result<u64> {
        let f = &*self.file;
        let n = match call {
            Call::Read { at, range } => f.read_at(&mut buf[range.clone()], *at)?,
            Call::Write { at, range } => f.write_at(&buf[range.clone()], *at)?,
            Call::WriteZeroes { at, len } => f.write_at(&zeroes()[..*len], *at)?,
            Call::Datasync => f.sync_data().map(|()| 0)?,
            Call::Fallocate { mode, at, len } => {
                sys::fallocate(f.as_fd(), *mode, *at, *len).map(|()| 0)?
            }
            Call::WillNeed { at, len } => {
                sys::fadvise_willneed(f.as_fd(), *at, *len).map(|()| 0)?
            }
            Call::WriteBack { at, len } => sys::write_back(f.as_fd(), *at, *len).map(|()| 0)?,
            Call::Evict { at, len } => sys::fadvise_dontneed(f.as_fd(), *at, *len).map(|()| 0)?,
        };
        Ok(n as u64)
    }

    pub fn reap(&mut self, out: &mut Vec<Done>) {
        out.append(&mut self.done);
    }

    pub fn busy(&self) -> bool {
        !self.jobs.is_empty() || !self.done.is_empty()
    }

    pub fn in_flight(&self) -> usize {
        self.jobs.len() + self.done.len()
    }
}

/// A call's share of the slice.
fn cost(call: &Call) -> u64 {
    match call {
        Call::Read { range, .. } | Call::Write { range, .. } => range.len() as u64,
        Call::WriteZeroes { len, .. } => *len as u64,
        // Waits for the disk: the rest of the slice is its.
        Call::Datasync | Call::WriteBack { .. } => SLICE_BYTES,
        // Allocating (mode without PUNCH or ZERO_RANGE) clears every page, like a write.
        Call::Fallocate { mode, len, .. } if *mode == libc::FALLOC_FL_KEEP_SIZE => *len,
        Call::Fallocate { .. } | Call::WillNeed { .. } | Call::Evict { .. } => CALL_COST,
    }
}
