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
//!
//! A third kind of engine does its work over sockets of its own: `Remote`
//! (the `curl` backend's pool of HTTP connections). The server `attach`es it
//! to the Poll once; it registers and deregisters its sockets itself, under
//! tokens `top - i` for `i < MAX_SOURCES`; the server hands it each event on
//! one of them (`ready(i)`), and polls no longer than its `deadline()`.

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
use std::time::Instant;

use mio::Registry;

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

/// Whether the page cache keeps what a file's operations read and write
/// (nbdkit's `cache=`): with `None`, a read's range is dropped from it once
/// read, a write's once written back (which the write then waits for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    Default,
    None,
}

/// NBDLITE_IO_URING=0 asks for synchronous file I/O (tests use it to run the
/// fallback that a kernel without io_uring gets), for every file: the
/// `file` backend's, and the cow filter's overlay.
pub fn sync_asked() -> bool {
    std::env::var_os("NBDLITE_IO_URING").is_some_and(|v| v == "0")
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

/// Most sockets a `Remote` engine may have on the Poll at once.
pub const MAX_SOURCES: usize = 1024;

/// An engine whose operations are carried out over sockets it owns, each on
/// the server's Poll: it never blocks, it opens and closes its sockets as it
/// needs, and its time limits are deadlines the loop sleeps no longer than.
/// `Op`s, tags and `Done`s mean what they mean for the file engines.
pub trait Remote {
    /// Takes `op`; it starts at the next `run`.
    fn submit(&mut self, op: Op, tag: Tag);
    /// `submit`, for a request of connection `conn`: for an engine whose
    /// data differs between connections (`cow-per-client`).
    fn submit_from(&mut self, op: Op, tag: Tag, _conn: u64) {
        self.submit(op, tag)
    }
    /// Once per loop turn, after `ready` calls and `reap`: starts queued
    /// operations, and acts on deadlines that have passed.
    fn run(&mut self);
    /// Appends completed operations to `out`.
    fn reap(&mut self, out: &mut Vec<Done>);
    /// Completions wait to be reaped: the loop must not sleep.
    fn busy(&self) -> bool;
    /// Operations submitted and not yet reaped.
    fn in_flight(&self) -> usize;
    /// Where its sockets go: `registry` (kept, a clone) with tokens `top - i`.
    fn attach(&mut self, registry: &Registry, top: usize) -> io::Result<()>;
    /// An event on the socket of token `top - source`.
    fn ready(&mut self, source: usize);
    /// The next moment `run` has something to do without an event.
    fn deadline(&self) -> Option<Instant>;
}

/// The I/O engine: io_uring, synchronous calls in bounded slices, or a
/// `Remote` engine.
pub struct Engine {
    inner: Inner,
}

enum Inner {
    /// Boxed: the ring is large, and there is one engine per served file.
    Uring(Box<uring::Uring>),
    Blocking(blocking::Blocking),
    Remote(Box<dyn Remote>),
}

impl Engine {
    /// Tries io_uring, else falls back to the synchronous engine with one
    /// warning line saying why. `force_sync` skips the try (tests, and
    /// NBDLITE_IO_URING=0).
    pub fn new(file: Rc<File>, force_sync: bool) -> Engine {
        Engine::with_cache(file, force_sync, CacheMode::Default)
    }

    /// `new`, with what the page cache keeps of the file's operations.
    pub fn with_cache(file: Rc<File>, force_sync: bool, cache: CacheMode) -> Engine {
        let evict = cache == CacheMode::None;
        if force_sync {
            log::debug!("file I/O: synchronous, as asked");
        } else {
            match uring::Uring::new(file.clone(), evict) {
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
            inner: Inner::Blocking(blocking::Blocking::new(file, evict)),
        }
    }

    /// An engine that works over sockets of its own.
    pub fn remote(remote: Box<dyn Remote>) -> Engine {
        Engine {
            inner: Inner::Remote(remote),
        }
    }

    /// True with io_uring or a remote engine (the tests ask which they got).
    #[cfg(test)]
    pub fn is_async(&self) -> bool {
        !matches!(self.inner, Inner::Blocking(_))
    }

    /// The fd to register with the Poll (readable: completions to reap); None
    /// when synchronous or remote.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.inner {
            Inner::Uring(u) => Some(u.fd()),
            _ => None,
        }
    }

    /// Lets a remote engine put its sockets on the Poll, under tokens `top - i`
    /// for `i < MAX_SOURCES`. Nothing to do for the file engines.
    pub fn attach(&mut self, registry: &Registry, top: usize) -> io::Result<()> {
        match &mut self.inner {
            Inner::Remote(r) => r.attach(registry, top),
            _ => Ok(()),
        }
    }

    /// An event on the remote engine's socket of token `top - source`.
    pub fn ready(&mut self, source: usize) {
        if let Inner::Remote(r) = &mut self.inner {
            r.ready(source);
        }
    }

    /// When the loop must wake for the engine, events or not.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.inner {
            Inner::Remote(r) => r.deadline(),
            _ => None,
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
            Inner::Remote(r) => r.submit(op, tag),
        }
        Ok(())
    }

    /// `submit` for a request of connection `conn` (the number in log
    /// lines), which a remote engine may serve from data of its own.
    pub fn submit_from(&mut self, op: Op, tag: Tag, conn: u64) -> Result<(), (Op, Tag)> {
        if !self.has_room() {
            return Err((op, tag));
        }
        match &mut self.inner {
            Inner::Remote(r) => r.submit_from(op, tag, conn),
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
            Inner::Remote(r) => r.run(),
        }
    }

    /// Appends the completed operations to `out`, in completion order.
    pub fn reap(&mut self, out: &mut Vec<Done>) {
        match &mut self.inner {
            Inner::Uring(u) => u.reap(out),
            Inner::Blocking(b) => b.reap(out),
            Inner::Remote(r) => r.reap(out),
        }
    }

    /// The loop must not sleep: work can progress (or completions wait) that
    /// no fd will announce.
    pub fn busy(&self) -> bool {
        match &self.inner {
            Inner::Uring(u) => u.busy(),
            Inner::Blocking(b) => b.busy(),
            Inner::Remote(r) => r.busy(),
        }
    }

    /// Operations submitted and not yet reaped.
    pub fn in_flight(&self) -> usize {
        match &self.inner {
            Inner::Uring(u) => u.in_flight(),
            Inner::Blocking(b) => b.in_flight(),
            Inner::Remote(r) => r.in_flight(),
        }
    }
}
