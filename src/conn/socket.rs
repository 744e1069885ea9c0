//! A connection's descriptors and what the kernel last said of them: one
//! socket for both directions, or (`-s` on two pipes) a read fd and a write fd
//! under the same token. It registers them with the Poll itself, and watches
//! for writability only while output waits for room.
//!
//! mio is edge-triggered: readiness is remembered here until a read or write
//! uses it up (EAGAIN), because the Poll will not say it again.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::event::Readiness;

/// The send buffer asked of the kernel for each client's socket: what Linux
/// gives a Unix socket by default (`net.core.wmem_default`, 208 KiB once the
/// kernel doubles it), but fixed, so that it is bounded and counted: TCP's
/// autotuning would grow it to megabytes. Smaller ones cost large READs
/// dearly (64 KiB: a fifth of the throughput of 1 MiB reads, a quarter more
/// CPU per read).
pub const SEND_BUFFER: usize = 104 << 10;
/// The receive buffer asked: requests are small, and a WRITE's payload is
/// read as it comes.
pub const RECEIVE_BUFFER: usize = 64 << 10;

/// What a client's socket buffers in the kernel may hold at most, as the
/// server's memory: the kernel allows twice what is asked. Over TCP both
/// directions are the server's socket's; over a Unix socket, what the client
/// sends waits in memory charged to the client's side, so only what we send
/// is ours.
pub fn socket_cost(tcp: bool) -> usize {
    match tcp {
        true => 2 * (SEND_BUFFER + RECEIVE_BUFFER),
        false => 2 * SEND_BUFFER,
    }
}

/// What reading may expect, in the order a connection goes through them
/// (later states are never left for earlier ones but `Ready` → `Drained`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReadSide {
    /// Nothing announced: wait for the Poll's next edge.
    Drained,
    /// Readiness reported and not used up: read until a short read (which
    /// drains a plaintext socket) or EAGAIN.
    Ready,
    /// The peer shut its side down (EPOLLRDHUP), or the descriptor cannot be
    /// polled and never blocks: read until 0. The data before a FIN may have
    /// come with the same edge, so a short read proves nothing.
    ToEnd,
    /// A read returned 0: the client will send nothing more.
    Ended,
}

/// What the Poll watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// Readability: the usual case, a socket being almost always writable.
    Read,
    /// Readability and writability: output waits for room.
    ReadWrite,
    /// Nothing to change as output comes and goes: a separate write fd,
    /// registered for writability throughout, or descriptors the Poll cannot
    /// watch.
    Fixed,
}

/// Which descriptors the Poll watches: epoll refuses regular files and some
/// devices (EPERM), which never block and are used as always ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Polled {
    Both,
    ReadOnly,
    WriteOnly,
    Neither,
}

impl Polled {
    fn read(self) -> bool {
        matches!(self, Polled::Both | Polled::ReadOnly)
    }

    fn write(self) -> bool {
        matches!(self, Polled::Both | Polled::WriteOnly)
    }
}

pub struct Socket {
    rfd: OwnedFd,
    /// A separate descriptor for writing (`-s` with distinct stdin and stdout).
    wfd: Option<OwnedFd>,
    read: ReadSide,
    /// The last write met EAGAIN: wait for writability.
    write_full: bool,
    watch: Watch,
    polled: Polled,
}

impl Socket {
    pub fn new(rfd: OwnedFd, wfd: Option<OwnedFd>) -> Socket {
        Socket {
            rfd,
            wfd,
            read: ReadSide::Ready,
            write_full: false,
            watch: Watch::Read,
            polled: Polled::Neither,
        }
    }

    /// Bounds the socket's buffers in the kernel to what the budget counts
    /// (`socket_cost`); a descriptor that is not a socket (a pipe, with `-s`)
    /// has no such buffers to bound. What the kernel made of it is looked at
    /// only when the debug log would say so: two system calls per client
    /// otherwise, before its greeting.
    pub fn bound_buffers(&self) {
        use crate::sys::net::{bound_socket_buffers, socket_buffers};
        let fd = self.rfd.as_fd();
        match bound_socket_buffers(fd, SEND_BUFFER, RECEIVE_BUFFER) {
            Ok(()) if log::log_enabled!(log::Level::Debug) => match socket_buffers(fd) {
                Ok(n) if n > socket_cost(true) => {
                    log::debug!("socket buffers: the kernel allows {n} bytes, more than counted")
                }
                _ => {}
            },
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {}
            Err(e) => log::debug!("socket buffers: {e}"),
        }
    }

    /// What we sent on it that its client has not taken yet (a system call).
    pub fn unsent_in_kernel(&self) -> usize {
        match self.wfd {
            Some(_) => 0,
            None => crate::sys::net::unsent_bytes(self.rfd.as_fd()).unwrap_or(0),
        }
    }

    /// The socket, if it is one descriptor for both ways, with what we sent
    /// on it that its client has not taken yet (none: nothing is left).
    pub fn into_leftover(self) -> Option<(OwnedFd, usize)> {
        if self.wfd.is_some() {
            return None;
        }
        match crate::sys::net::unsent_bytes(self.rfd.as_fd()) {
            Ok(n) if n > 0 => Some((self.rfd, n)),
            _ => None,
        }
    }

    pub fn read_fd(&self) -> BorrowedFd<'_> {
        self.rfd.as_fd()
    }

    /// The write side: the separate fd if there is one.
    pub fn write_fd(&self) -> BorrowedFd<'_> {
        self.wfd.as_ref().unwrap_or(&self.rfd).as_fd()
    }

    /// The separate write fd, if any (TLS may have to answer while it reads).
    pub fn split_write_fd(&self) -> Option<BorrowedFd<'_>> {
        self.wfd.as_ref().map(AsFd::as_fd)
    }

    pub fn read_side(&self) -> ReadSide {
        self.read
    }

    pub fn writable(&self) -> bool {
        !self.write_full
    }

    /// The kernel reported readiness.
    pub fn note(&mut self, r: Readiness) {
        if r.read_closed {
            self.read = self.read.max(ReadSide::ToEnd);
        } else if r.readable {
            self.read = self.read.max(ReadSide::Ready);
        }
        if r.writable {
            self.write_full = false;
        }
    }

    /// Look at the socket once more, edge or not (at shutdown: so that
    /// requests already sent are answered before we hang up).
    pub fn look_again(&mut self) {
        self.read = self.read.max(ReadSide::Ready);
    }

    /// A read got `Ok(0)`.
    pub fn ended(&mut self) {
        self.read = ReadSide::Ended;
    }

    /// A read came back short; `drains` says whether that means the socket is
    /// empty (plaintext: yes; TLS may hold decrypted bytes it no longer
    /// announces).
    pub fn short_read(&mut self, drains: bool) {
        if drains && self.read == ReadSide::Ready {
            self.read = ReadSide::Drained;
        }
    }

    /// A read met EAGAIN.
    pub fn read_blocked(&mut self) {
        if self.read != ReadSide::Ended {
            self.read = ReadSide::Drained;
        }
    }

    pub fn write_blocked(&mut self) {
        self.write_full = true;
    }

    /// Asks the Poll for writability only while output waits for room: a
    /// socket is almost always writable, and every reply the client reads would
    /// otherwise wake the loop for nothing (and, on some kernels and VMs, cost a
    /// cross-CPU wakeup per request).
    pub fn update_interest(
        &mut self,
        registry: &Registry,
        token: Token,
        has_output: bool,
    ) -> io::Result<()> {
        let want = match (self.watch, self.write_full && has_output) {
            (Watch::Fixed, _) => return Ok(()),
            (_, true) => Watch::ReadWrite,
            (_, false) => Watch::Read,
        };
        if want != self.watch {
            SourceFd(&self.rfd.as_raw_fd()).reregister(registry, token, interest(want))?;
            self.watch = want;
        }
        Ok(())
    }
}

fn interest(w: Watch) -> Interest {
    match w {
        Watch::ReadWrite => Interest::READABLE | Interest::WRITABLE,
        Watch::Read | Watch::Fixed => Interest::READABLE,
    }
}

/// A connection registers its own descriptors: one socket for both directions,
/// or (stdin/stdout pipes) a read fd and a write fd under the same token.
impl Source for Socket {
    fn register(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        let read = register_fd(&self.rfd, registry, token, Interest::READABLE)?;
        let write = match &self.wfd {
            Some(w) => register_fd(w, registry, token, Interest::WRITABLE)?,
            None => read,
        };
        self.polled = match (read, write) {
            (true, true) => Polled::Both,
            (true, false) => Polled::ReadOnly,
            (false, true) => Polled::WriteOnly,
            (false, false) => Polled::Neither,
        };
        if !read {
            self.read = self.read.max(ReadSide::ToEnd); // never blocks
        }
        if self.wfd.is_some() || !read {
            self.watch = Watch::Fixed;
        }
        Ok(())
    }

    fn reregister(&mut self, registry: &Registry, token: Token, _: Interest) -> io::Result<()> {
        if self.polled.read() {
            SourceFd(&self.rfd.as_raw_fd()).reregister(registry, token, interest(self.watch))?;
        }
        if let (Some(w), true) = (&self.wfd, self.polled.write()) {
            SourceFd(&w.as_raw_fd()).reregister(registry, token, Interest::WRITABLE)?;
        }
        Ok(())
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        if self.polled.read() {
            SourceFd(&self.rfd.as_raw_fd()).deregister(registry)?;
        }
        if let (Some(w), true) = (&self.wfd, self.polled.write()) {
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
