//! A connection and the Poll: it registers its own descriptors (one socket, or
//! a read and a write fd under the same token), and watches for writability
//! only while output waits for room.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::Conn;

impl Conn {
    /// Asks the Poll for writability only while output waits for room: a socket
    /// is almost always writable, and every reply the client reads would
    /// otherwise wake the loop for nothing (and, on some kernels and VMs, cost a
    /// cross-CPU wakeup per request). A separate write fd stays registered for
    /// writability throughout.
    pub(super) fn update_interest(&mut self, registry: &Registry) -> io::Result<()> {
        let want = !self.writable && self.has_output();
        if want == self.write_registered || self.wfd.is_some() || self.unpolled_write {
            return Ok(());
        }
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        SourceFd(&self.rfd.as_raw_fd()).reregister(registry, self.token, interest)?;
        self.write_registered = want;
        Ok(())
    }
}

/// A connection registers its own descriptors: one socket for both directions,
/// or (stdin/stdout pipes) a read fd and a write fd under the same token.
impl Source for Conn {
    fn register(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        self.token = token;
        self.unpolled_read = !register_fd(&self.rfd, registry, token, Interest::READABLE)?;
        self.unpolled_write = match &self.wfd {
            Some(w) => !register_fd(w, registry, token, Interest::WRITABLE)?,
            None => self.unpolled_read,
        };
        self.write_registered = self.wfd.is_some();
        Ok(())
    }

    fn reregister(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        self.token = token;
        let interest = match self.write_registered && self.wfd.is_none() {
            true => Interest::READABLE | Interest::WRITABLE,
            false => Interest::READABLE,
        };
        if !self.unpolled_read {
            SourceFd(&self.rfd.as_raw_fd()).reregister(registry, token, interest)?;
        }
        if let (Some(w), false) = (&self.wfd, self.unpolled_write) {
            SourceFd(&w.as_raw_fd()).reregister(registry, token, Interest::WRITABLE)?;
        }
        Ok(())
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        if !self.unpolled_read {
            SourceFd(&self.rfd.as_raw_fd()).deregister(registry)?;
        }
        if let (Some(w), false) = (&self.wfd, self.unpolled_write) {
            SourceFd(&w.as_raw_fd()).deregister(registry)?;
        }
        Ok(())
    }
}

/// Registers `fd`; false if the Poll cannot watch it (epoll refuses regular
/// files and some devices with EPERM), which is no error: such a descriptor
/// never blocks.
fn register_fd(fd: &OwnedFd, registry: &Registry, token: Token, i: Interest) -> io::Result<bool> {
    match SourceFd(&fd.as_raw_fd()).register(registry, token, i) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            log::debug!("fd {}: not pollable: used as always ready", fd.as_raw_fd());
            Ok(false)
        }
        Err(e) => Err(e),
    }
}
