//! A backend as the layer below another (the cow filter's overlay, stages
//! named below it), driven alike however it moves its data: through an
//! engine of its own (a file's io_uring, the curl backend's connections), or
//! at once (RAM, synthetic exports), in which case an operation is done as it
//! is submitted and its completion waits here to be reaped like any other.
//! Only reads and cache hints are done at once (a layer over data at hand
//! writes nothing to it).

use std::io;

use mio::Registry;
use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::{Access, Backend, Extent};
use crate::aio::{Done, Op, Tag};

pub struct Below {
    backend: Box<dyn Backend>,
    /// Completions of operations done at once.
    done: Vec<Done>,
}

impl Below {
    pub fn new(backend: Box<dyn Backend>) -> Below {
        Below {
            backend,
            done: Vec::new(),
        }
    }

    pub fn size(&self) -> u64 {
        self.backend.size()
    }

    /// The backend itself, for what it does at once (block status).
    pub fn backend(&mut self) -> &mut dyn Backend {
        &mut *self.backend
    }

    /// Its data is at hand: `read_now` reads it without an operation.
    pub fn at_hand(&mut self) -> bool {
        matches!(self.backend.access(), Access::Now(_))
    }

    /// Reads into `buf` at once, if the data is at hand (else None).
    pub fn read_now(&mut self, buf: &mut [u8], offset: u64) -> Option<io::Result<()>> {
        match self.backend.access() {
            Access::Now(store) => Some(store.read(buf, offset)),
            Access::Engine(_) => None,
        }
    }

    pub fn has_room(&mut self) -> bool {
        match self.backend.access() {
            Access::Now(_) => true,
            Access::Engine(e) => e.has_room(),
        }
    }

    /// Takes a read or a cache hint (nothing else is ever sent below), for
    /// connection `conn`; gives it back if the engine has no room.
    pub fn submit(&mut self, op: Op, tag: Tag, conn: u64) -> Result<(), (Op, Tag)> {
        let store = match self.backend.access() {
            Access::Engine(e) => return e.submit_from(op, tag, conn),
            Access::Now(store) => store,
        };
        let (result, buf) = match op {
            Op::Read { offset, mut buf } => (store.read(&mut buf, offset), buf),
            Op::Cache { offset, len } => (store.cache(offset, len), Vec::new()),
            _ => (Err(io::Error::from_raw_os_error(libc::EROFS)), Vec::new()),
        };
        self.done.push(Done { tag, result, buf });
        Ok(())
    }

    pub fn reap(&mut self, out: &mut Vec<Done>) {
        out.append(&mut self.done);
        if let Access::Engine(e) = self.backend.access() {
            e.reap(out);
        }
    }

    pub fn run(&mut self) {
        if let Access::Engine(e) = self.backend.access() {
            e.run();
        }
    }

    pub fn busy(&mut self) -> bool {
        !self.done.is_empty()
            || match self.backend.access() {
                Access::Engine(e) => e.busy(),
                Access::Now(_) => false,
            }
    }

    /// Puts its engine's descriptors on the Poll: its ring under `token`,
    /// its own sockets under `top - i`.
    pub fn attach(&mut self, registry: &Registry, token: Token, top: usize) -> io::Result<()> {
        let Access::Engine(e) = self.backend.access() else {
            return Ok(());
        };
        if let Some(fd) = e.fd() {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&fd);
            registry.register(&mut SourceFd(&fd), token, Interest::READABLE)?;
        }
        e.attach(registry, top)
    }

    pub fn ready(&mut self, source: usize) {
        if let Access::Engine(e) = self.backend.access() {
            e.ready(source);
        }
    }

    pub fn deadline(&mut self) -> Option<std::time::Instant> {
        match self.backend.access() {
            Access::Engine(e) => e.deadline(),
            Access::Now(_) => None,
        }
    }

    /// Its extents over `[offset, end)`, cut there, handed to `push` in
    /// order; at most `max` calls' worth. Something it cannot say is data.
    pub fn extents(
        &mut self,
        offset: u64,
        end: u64,
        max: usize,
        scratch: &mut Vec<Extent>,
        push: &mut impl FnMut(u64, u32) -> bool,
    ) -> io::Result<()> {
        let mut pos = offset;
        while pos < end {
            scratch.clear();
            self.backend.extents(pos, end - pos, max.max(1), scratch)?;
            if scratch.iter().all(|e| e.len == 0) {
                push(end - pos, 0); // nothing said: data
                return Ok(());
            }
            for e in scratch.iter() {
                let n = e.len.min(end - pos);
                if n == 0 {
                    continue;
                }
                pos += n;
                if !push(n, e.flags) || pos >= end {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
