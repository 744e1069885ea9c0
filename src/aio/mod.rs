//! Asynchronous file I/O for the one event loop: operations go in with
//! `submit`, out come `Done`s, in any order, and the loop's thread never
//! waits on a disk.
//!
//! Two engines behind one type. io_uring (`uring.rs`) is the main path: each
//! loop turn sends everything queued in one `io_uring_enter` and completions
//! wake the `mio::Poll` through the ring's fd. Where io_uring is missing or
//! refused, the synchronous engine (`blocking.rs`) does the same operations
//! with plain system calls, a bounded slice per turn, so one long WRITE_ZEROES
//! cannot stop the loop for seconds. Both cut operations into pieces the same
//! way (`plan.rs`).
//!
//! The loop's turn: `reap` completions, act on them (maybe `submit` more),
//! `run`, then sleep in `Poll::poll` unless `busy()` (sync engine with work
//! left: poll with a zero timeout). With io_uring, register `fd()` for
//! readable, edge-triggered: an event means "reap".

mod blocking;
mod plan;
mod uring;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_plan;
#[cfg(test)]
mod tests_zero;

use std::fs::File;
use std::io;
use std::os::fd::BorrowedFd;
use std::rc::Rc;

/// The caller's name for an operation; the engine only hands it back.
pub type Tag = u64;

/// One file operation. Offsets and lengths are the caller's to check against the file's size.
#[derive(Debug)]
pub enum Op {
    /// Fill all of `buf` from `offset`; reaching the end of the file first is an error.
    Read { offset: u64, buf: Vec<u8> },
    /// Write all of `buf` at `offset`; with `fua` it is durable before its `Done`.
    Write {
        offset: u64,
        buf: Vec<u8>,
        fua: bool,
    },
    /// fdatasync: every write completed before it was submitted becomes durable.
    Flush,
    /// Punch a hole (the size stays); a filesystem that cannot is not an error.
    Trim { offset: u64, len: u64, fua: bool },
    /// Make the range read as zeroes: a hole if `may_trim`, else allocated.
    /// With `fast`, fails with `ErrorKind::Unsupported` rather than write zeroes.
    Zero {
        offset: u64,
        len: u64,
        may_trim: bool,
        fast: bool,
        fua: bool,
    },
    /// Readahead hint (POSIX_FADV_WILLNEED).
    Cache { offset: u64, len: u64 },
}

/// A completed operation.
#[derive(Debug)]
pub struct Done {
    pub tag: Tag,
    /// Errors carry the system's errno (map with `backend::nbd_errno`); a read
    /// that met the end of the file is `UnexpectedEof`.
    pub result: io::Result<()>,
    /// The Read or Write buffer, back to its owner (empty for other operations).
    pub buf: Vec<u8>,
}

/// Operations accepted at once (`has_room`).
const MAX_OPS: usize = 256;

/// Bytes in the buffer of zeroes every zero-writing piece is written from.
const ZEROES_LEN: usize = 1 << 20;

/// The buffer of zeroes, made on first use and kept for the life of the
/// process (in-flight writes may read it at any time). An immutable `static`
/// array would sit in .rodata and add a megabyte to the binary; this one is a
/// fresh anonymous mapping, never written, so it costs no memory either.
fn zeroes() -> &'static [u8] {
    static ZEROES: std::sync::OnceLock<&'static [u8]> = std::sync::OnceLock::new();
    ZEROES.get_or_init(|| Box::leak(vec![0u8; ZEROES_LEN].into_boxed_slice()))
}

/// The file I/O engine: io_uring, or synchronous calls in bounded slices.
pub struct Engine {
    inner: Inner,
}

enum Inner {
    /// Boxed: the ring is large, and there is one engine per served file.
    Uring(Box<uring::Uring>),
    Blocking(blocking::Blocking),
}

impl Engine {
    /// Tries io_uring, else falls back to the synchronous engine with one
    /// warning line saying why. `force_sync` skips the try (tests, and
    /// NBDLITE_IO_URING=0).
    pub fn new(file: Rc<File>, force_sync: bool) -> Engine {
        if force_sync {
            log::debug!("file I/O: synchronous, as asked");
        } else {
            match uring::Uring::new(file.clone()) {
                Ok(u) => {
                    return Engine {
                        inner: Inner::Uring(Box::new(u)),
                    };
                }
                Err(why) => {
                    log::warn!("io_uring unavailable ({why}): serving file I/O synchronously")
                }
            }
        }
        Engine {
            inner: Inner::Blocking(blocking::Blocking::new(file)),
        }
    }

    /// True with io_uring.
    pub fn is_async(&self) -> bool {
        matches!(self.inner, Inner::Uring(_))
    }

    /// The fd to register with the Poll (readable: completions to reap); None when synchronous.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.inner {
            Inner::Uring(u) => Some(u.fd()),
            Inner::Blocking(_) => None,
        }
    }

    /// A `submit` now would be accepted.
    pub fn has_room(&self) -> bool {
        self.in_flight() < MAX_OPS
    }

    /// Accepts `op`; it starts at the next `run`. Err gives it back when there
    /// is no room. Never blocks.
    pub fn submit(&mut self, op: Op, tag: Tag) -> Result<(), (Op, Tag)> {
        if !self.has_room() {
            return Err((op, tag));
        }
        match &mut self.inner {
            Inner::Uring(u) => u.submit(op, tag),
            Inner::Blocking(b) => b.submit(op, tag),
        }
        Ok(())
    }

    /// Once per loop turn: io_uring sends everything queued in one system call
    /// without waiting; the synchronous engine does a bounded slice of work.
    pub fn run(&mut self) {
        match &mut self.inner {
            Inner::Uring(u) => u.run(),
            Inner::Blocking(b) => b.run(),
        }
    }

    /// Appends the completed operations to `out`, in completion order.
    pub fn reap(&mut self, out: &mut Vec<Done>) {
        match &mut self.inner {
            Inner::Uring(u) => u.reap(out),
            Inner::Blocking(b) => b.reap(out),
        }
    }

    /// The loop must not sleep: work can progress (or completions wait) that
    /// no fd will announce.
    pub fn busy(&self) -> bool {
        match &self.inner {
            Inner::Uring(u) => u.busy(),
            Inner::Blocking(b) => b.busy(),
        }
    }

    /// Operations submitted and not yet reaped.
    pub fn in_flight(&self) -> usize {
        match &self.inner {
            Inner::Uring(u) => u.in_flight(),
            Inner::Blocking(b) => b.in_flight(),
        }
    }
}
