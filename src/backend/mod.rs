//! What an export is served from: the `Backend` trait, its capabilities, and the
//! one place where system errors become NBD errors.

mod below;
mod curl;
mod dir;
mod file;
mod malloc;
mod memory;
mod null;
mod pages;
mod pattern;

use std::io;
use std::ops::Range;
use std::rc::Rc;

use crate::aio::Engine;
use crate::proto;

pub use below::Below;
pub use curl::Curl;
pub use dir::Dir;
pub use file::{CacheMode, Fadvise, File, FileOptions};
pub use malloc::Malloc;
pub use memory::Memory;
pub use null::Null;
pub use pattern::Pattern;

/// What a backend can do. The server turns these into transmission flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub read_only: bool,
    /// WRITE_ZEROES is offered (a filter may take it away).
    pub zero: bool,
    /// WRITE_ZEROES with FAST_ZERO can ever succeed.
    pub fast_zero: bool,
    /// Block status tells what is allocated; without, the whole export is
    /// reported as data (a filter may take it away).
    pub extents: bool,
    /// Reads are cheap to split into data and holes (`extents` costs no syscall).
    pub sparse_reads: bool,
    /// Smallest addressable unit; requests must be aligned to it.
    pub min_block: u32,
    /// Every connection sees every other's writes and flushes (CAN_MULTI_CONN):
    /// false only where each connection has data of its own (`cow-per-client`).
    pub multi_conn: bool,
}

impl Caps {
    /// Data held in memory (or nowhere at all): writable, any alignment, zeroes
    /// that cost nothing, and holes known without a system call.
    pub const IN_MEMORY: Caps = Caps {
        read_only: false,
        zero: true,
        fast_zero: true,
        extents: true,
        sparse_reads: true,
        min_block: 1,
        multi_conn: true,
    };
}

/// How WRITE_ZEROES may be carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zero {
    /// The area may become a hole (the client did not send NO_HOLE).
    pub may_trim: bool,
    /// FAST_ZERO: fail with `Unsupported` rather than do it slowly.
    pub fast: bool,
}

/// A run of the export with one `base:allocation` status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub flags: u32,
}

/// The storage behind the export. One backend is shared by every connection;
/// the server is single-threaded, so `&mut self` is all the locking there is.
///
/// Callers check bounds and alignment first: every offset and length passed in
/// lies inside `0..size()`.
pub trait Backend {
    fn size(&self) -> u64;
    fn caps(&self) -> Caps;
    /// Appends at most `max` (≥ 1) consecutive extents starting at `offset` to `out`,
    /// covering at least one byte; the last may run past `offset + len`.
    fn extents(
        &mut self,
        offset: u64,
        len: u64,
        max: usize,
        out: &mut Vec<Extent>,
    ) -> io::Result<()>;
    /// Where requests that move data go.
    fn access(&mut self) -> Access<'_>;

    /// Reads at start-up, before the event loop runs (a filter reading a
    /// partition table), so it may wait. Data at hand is read at once; a
    /// backend whose data goes through an engine reads it directly if it
    /// can, else says it cannot (`Unsupported`).
    fn read_at_start(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self.access() {
            Access::Now(store) => store.read(buf, offset),
            Access::Engine(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this backend cannot be read before the server starts",
            )),
        }
    }

    /// `extents` as connection `conn` sees them: the same for every
    /// connection but where each has data of its own (`cow-per-client`).
    fn extents_for(
        &mut self,
        _conn: u64,
        offset: u64,
        len: u64,
        max: usize,
        out: &mut Vec<Extent>,
    ) -> io::Result<()> {
        self.extents(offset, len, max, out)
    }
    /// Connection `conn` has gone: what the backend kept for it alone may go
    /// (its requests still in the engine finish first).
    fn closed(&mut self, _conn: u64) {}

    /// Several exports, chosen by name (`file dir=`); None (every other
    /// backend): one export, whatever name a client gives.
    fn exports(&mut self) -> Option<&mut dyn Exports> {
        None
    }
}

/// What a file served by name is (`Exports`): what its export's
/// agreement carries besides what every export shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub size: u64,
    /// It can only be read: it could not be opened for writing, or the
    /// server serves everything read-only.
    pub read_only: bool,
    /// Its block size: a block device's logical sector size, else 1.
    pub min_block: u32,
}

/// A backend that serves several exports, each chosen by the name a client
/// gives (`file dir=`): the handshake lists them, and finds or opens the one
/// a client names, through this (`crate::catalog`). Names are the client's
/// bytes, unchecked: refusing a hostile one is the backend's to do. Err is
/// why a name is not served, for the log.
pub trait Exports {
    /// The names served now (a bounded number of them), in the order the
    /// backend finds them: not sorted (`file dir=` lists them in readdir's
    /// order, as nbdkit does).
    fn names(&mut self) -> io::Result<Vec<Vec<u8>>>;
    /// What `name` is, without keeping it open (INFO).
    fn probe(&mut self, name: &[u8]) -> Result<Found, String>;
    /// Opens `name` for connection `conn` (GO, EXPORT_NAME): its requests
    /// are served from it until `Backend::closed(conn)`.
    fn open(&mut self, name: &[u8], conn: u64) -> Result<Found, String>;
}

/// How a backend moves data.
pub enum Access<'a> {
    /// At once, on the loop's thread: the data is at hand (RAM, synthetic exports).
    Now(&'a mut dyn Store),
    /// Through an asynchronous engine whose completions come back to the loop:
    /// a file's I/O can wait on a disk, and the loop must never wait with it.
    Engine(&'a mut Engine),
}

/// Data that is at hand: every call completes before it returns.
pub trait Store {
    /// Fills `buf` from `offset`.
    fn read(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` at `offset`; with `fua` the data is durable on return.
    fn write(&mut self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()>;
    /// Makes every write so far durable.
    fn flush(&mut self) -> io::Result<()>;
    /// Discards a range (a hint: doing nothing is correct).
    fn trim(&mut self, offset: u64, len: u64, fua: bool) -> io::Result<()>;
    /// Makes a range read as zeroes.
    fn zero(&mut self, offset: u64, len: u64, how: Zero, fua: bool) -> io::Result<()>;
    /// Prefetch hint.
    fn cache(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Lends `[offset, offset + len)` as shared, immutable pieces of storage, in
    /// order, so a reply can be sent without copying it. A later write must not
    /// change what was lent (copy on write). False: this store cannot lend.
    fn lend(
        &mut self,
        _offset: u64,
        _len: u64,
        _sink: &mut dyn FnMut(Rc<[u8]>, Range<usize>),
    ) -> bool {
        false
    }
}

/// Maps a system error to the small set of errors NBD allows on the wire.
pub fn nbd_errno(e: &io::Error) -> u32 {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES | libc::EROFS) => proto::EPERM,
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => proto::ENOSPC,
        Some(libc::EINVAL) => proto::EINVAL,
        Some(libc::ENOMEM) => proto::ENOMEM,
        Some(libc::EOVERFLOW) => proto::EOVERFLOW,
        Some(libc::EOPNOTSUPP) => proto::ENOTSUP,
        Some(libc::ESHUTDOWN) => proto::ESHUTDOWN,
        Some(_) => proto::EIO,
        None => match e.kind() {
            io::ErrorKind::Unsupported => proto::ENOTSUP,
            io::ErrorKind::OutOfMemory => proto::ENOMEM,
            io::ErrorKind::InvalidInput => proto::EINVAL,
            io::ErrorKind::PermissionDenied => proto::EPERM,
            _ => proto::EIO,
        },
    }
}

/// Splits `[offset, offset + len)` at multiples of `unit`, yielding
/// (unit index, offset within the unit, length) pieces.
pub(crate) fn pieces(
    offset: u64,
    len: u64,
    unit: u64,
) -> impl Iterator<Item = (u64, usize, usize)> {
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let idx = pos / unit;
        let within = pos % unit;
        let n = (unit - within).min(end - pos);
        pos += n;
        Some((idx, within as usize, n as usize))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        let e = |n| nbd_errno(&io::Error::from_raw_os_error(n));
        assert_eq!(e(libc::EROFS), proto::EPERM);
        assert_eq!(e(libc::EPERM), proto::EPERM);
        assert_eq!(e(libc::EACCES), proto::EPERM);
        assert_eq!(e(libc::ENOSPC), proto::ENOSPC);
        assert_eq!(e(libc::EIO), proto::EIO);
        assert_eq!(e(libc::ENXIO), proto::EIO);
        // No errno at all (a short read past a file that shrank): EIO.
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(nbd_errno(&eof), proto::EIO);
        assert_eq!(e(libc::EDQUOT), proto::ENOSPC);
        assert_eq!(e(libc::EFBIG), proto::ENOSPC);
        assert_eq!(e(libc::EBADF), proto::EIO);
        assert_eq!(e(libc::ENOTSUP), proto::ENOTSUP);
        // FAST_ZERO that would not be fast (see aio::plan).
        let not_fast = io::Error::new(io::ErrorKind::Unsupported, "zeroing would be slow");
        assert_eq!(nbd_errno(&not_fast), proto::ENOTSUP);
    }

    #[test]
    fn pieces_split_at_units() {
        let v: Vec<_> = pieces(100, 300, 128).collect();
        assert_eq!(v, vec![(0, 100, 28), (1, 0, 128), (2, 0, 128), (3, 0, 16)]);
        assert_eq!(pieces(0, 0, 128).count(), 0);
    }
}
