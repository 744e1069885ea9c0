//! `memory allocator=malloc[,mlock=true]`: the RAM disk as one allocation of
//! its whole size, taken at start, as nbdkit's malloc allocator does. No
//! sparseness: a disk larger than the memory there is fails at start rather
//! than at some later write, and the memory is never given back. With
//! `mlock=true` it is locked in RAM too, never swapped out.
//!
//! The default allocator (`memory.rs`) takes memory only for data written;
//! this one is for those who want the memory reserved up front.

use std::io;

use super::{Access, Backend, Caps, Extent, Store, Zero};
use crate::sys;

pub struct Malloc {
    bytes: Vec<u8>,
}

impl Malloc {
    /// Allocates `size` bytes and writes zeroes to every page of them: a
    /// zeroed allocation is otherwise mapped lazily, and the first write to a
    /// page could find no memory left. Fails (ENOMEM) if the system refuses.
    pub fn new(size: u64) -> io::Result<Malloc> {
        let refused = || io::Error::from_raw_os_error(libc::ENOMEM);
        let len = usize::try_from(size).map_err(|_| refused())?;
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(len).map_err(|_| refused())?;
        bytes.resize(len, 0);
        Ok(Malloc { bytes })
    }

    /// `mlock=true`: keeps every page in RAM (see `sys::mlock` for what it needs).
    pub fn lock(&self) -> io::Result<()> {
        sys::mlock(&self.bytes)
    }

    /// The bytes of `[offset, offset + len)`. Callers check every range
    /// against size() (see `Backend`), so this never fails when they do;
    /// should one not, the request fails (EINVAL) rather than the server.
    fn range(&mut self, offset: u64, len: u64) -> io::Result<&mut [u8]> {
        let start = usize::try_from(offset).ok();
        let end = start.zip(usize::try_from(len).ok());
        let end = end.and_then(|(s, n)| s.checked_add(n));
        match start.zip(end) {
            Some((start, end)) => self.bytes.get_mut(start..end),
            None => None,
        }
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }
}

impl Backend for Malloc {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Writable, at any alignment; zeroing is a `memset`. No holes: every
    /// byte is allocated, so reads are never split into data and holes.
    fn caps(&self) -> Caps {
        Caps {
            sparse_reads: false,
            ..Caps::IN_MEMORY
        }
    }

    /// All data, to the end of the disk: nothing here is a hole.
    fn extents(
        &mut self,
        offset: u64,
        _len: u64,
        _max: usize,
        out: &mut Vec<Extent>,
    ) -> io::Result<()> {
        // At or past the end, which callers never ask: an error, not a panic.
        let len = (self.size().checked_sub(offset))
            .filter(|&n| n > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        out.push(Extent { len, flags: 0 });
        Ok(())
    }

    fn access(&mut self) -> Access<'_> {
        Access::Now(self)
    }
}

impl Store for Malloc {
    fn read(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        buf.copy_from_slice(self.range(offset, buf.len() as u64)?);
        Ok(())
    }

    fn write(&mut self, buf: &[u8], offset: u64, _fua: bool) -> io::Result<()> {
        self.range(offset, buf.len() as u64)?.copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Zeroes, as nbdkit's memory plugin trims with every allocator: the
    /// memory stays allocated, and a trimmed range reads as zeroes in both.
    fn trim(&mut self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        self.range(offset, len)?.fill(0);
        Ok(())
    }

    fn zero(&mut self, offset: u64, len: u64, _how: Zero, _fua: bool) -> io::Result<()> {
        self.range(offset, len)?.fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_was_written_and_zeroes_elsewhere() {
        let mut m = Malloc::new(1 << 20).unwrap();
        assert_eq!(m.size(), 1 << 20);
        m.write(b"hello", (1 << 20) - 5, false).unwrap();
        let mut b = [9u8; 8];
        m.read(&mut b, (1 << 20) - 8).unwrap();
        assert_eq!(&b, b"\0\0\0hello");
        m.trim((1 << 20) - 4, 2, false).unwrap();
        m.read(&mut b, (1 << 20) - 8).unwrap();
        assert_eq!(&b, b"\0\0\0h\0\0lo");
        let how = Zero {
            may_trim: true,
            fast: true,
        };
        m.zero(0, 1 << 20, how, false).unwrap();
        m.read(&mut b, (1 << 20) - 8).unwrap();
        assert_eq!(b, [0; 8]);
    }

    #[test]
    fn everything_is_data() {
        let mut m = Malloc::new(10_000).unwrap();
        let mut v = Vec::new();
        m.extents(100, 10, 5, &mut v).unwrap();
        assert_eq!(
            v,
            vec![Extent {
                len: 9_900,
                flags: 0
            }]
        );
        assert!(!m.caps().sparse_reads && !m.caps().read_only);
    }

    #[test]
    fn out_of_range_is_an_error_not_a_panic() {
        let mut m = Malloc::new(4096).unwrap();
        let einval = |r: io::Result<()>| r.unwrap_err().raw_os_error() == Some(libc::EINVAL);
        let mut b = [0u8; 16];
        assert!(einval(m.read(&mut b, 4090)));
        assert!(einval(m.read(&mut b, u64::MAX)));
        assert!(einval(m.write(&b, 1 << 40, false)));
        assert!(einval(m.trim(4000, u64::MAX, false)));
        let how = Zero {
            may_trim: false,
            fast: false,
        };
        assert!(einval(m.zero(4096, 1, how, false)));
        assert!(einval(m.extents(4096, 1, 1, &mut Vec::new())));
        m.read(&mut b, 4080).unwrap();
    }

    #[test]
    fn a_disk_larger_than_memory_is_refused_at_once() {
        let e = Malloc::new(i64::MAX as u64).err().expect("refused");
        assert_eq!(e.raw_os_error(), Some(libc::ENOMEM));
        // An empty disk locks nothing, and needs no privilege to.
        Malloc::new(0).unwrap().lock().unwrap();
    }
}
