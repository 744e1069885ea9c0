//! `null`: reads as zeroes, discards writes. Useful for measuring the server itself.

use std::io;

use super::{Access, Backend, Caps, Extent, Store, Zero};
use crate::proto::{STATE_HOLE, STATE_ZERO};

pub struct Null {
    size: u64,
}

impl Null {
    pub fn new(size: u64) -> Null {
        Null { size }
    }
}

impl Backend for Null {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        Caps::IN_MEMORY
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
            flags: STATE_HOLE | STATE_ZERO,
        });
        Ok(())
    }

    fn access(&mut self) -> Access<'_> {
        Access::Now(self)
    }
}

impl Store for Null {
    fn read(&mut self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }

    fn write(&mut self, _buf: &[u8], _offset: u64, _fua: bool) -> io::Result<()> {
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn trim(&mut self, _offset: u64, _len: u64, _fua: bool) -> io::Result<()> {
        Ok(())
    }

    fn zero(&mut self, _offset: u64, _len: u64, _how: Zero, _fua: bool) -> io::Result<()> {
        Ok(())
    }
}
