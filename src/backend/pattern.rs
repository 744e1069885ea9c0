//! `pattern`: read-only; every 8-byte big-endian word holds its own byte offset,
//! so any misplaced byte in a copy or a test is easy to see.

use std::io;

use super::{Access, Backend, Caps, Extent, Store, Zero};

pub struct Pattern {
    size: u64,
}

impl Pattern {
    pub fn new(size: u64) -> Pattern {
        Pattern { size }
    }
}

/// Fills `buf` with the pattern as it stands at `offset`.
pub fn fill(buf: &mut [u8], offset: u64) {
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let word = (pos & !7).to_be_bytes();
        let within = (pos & 7) as usize;
        let n = (8 - within).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[within..within + n]);
        i += n;
        pos += n as u64;
    }
}

fn read_only() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

impl Backend for Pattern {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        Caps {
            read_only: true,
            zero: true,
            fast_zero: false,
            extents: true,
            sparse_reads: false,
            min_block: 1,
            multi_conn: true,
        }
    }

    fn extents(
        &mut self,
        offset: u64,
        _len: u64,
        _max: usize,
        out: &mut Vec<Extent>,
    ) -> io::Result<()> {
        out.push(Extent {
            len: self.size - offset,
            flags: 0,
        });
        Ok(())
    }

    fn access(&mut self) -> Access<'_> {
        Access::Now(self)
    }
}

impl Store for Pattern {
    fn read(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        fill(buf, offset);
        Ok(())
    }

    fn write(&mut self, _buf: &[u8], _offset: u64, _fua: bool) -> io::Result<()> {
        Err(read_only())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn trim(&mut self, _offset: u64, _len: u64, _fua: bool) -> io::Result<()> {
        Err(read_only())
    }

    fn zero(&mut self, _offset: u64, _len: u64, _how: Zero, _fua: bool) -> io::Result<()> {
        Err(read_only())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_hold_their_offsets() {
        let mut b = [0u8; 24];
        fill(&mut b, 8);
        assert_eq!(&b[..8], &8u64.to_be_bytes());
        assert_eq!(&b[16..], &24u64.to_be_bytes());
        let mut odd = [0u8; 5];
        fill(&mut odd, 13);
        assert_eq!(&odd[..3], &8u64.to_be_bytes()[5..]);
        assert_eq!(&odd[3..], &16u64.to_be_bytes()[..2]);
    }
}
