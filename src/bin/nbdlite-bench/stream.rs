//! The bench's one socket type: a Unix or TCP stream, connected and used
//! blocking (with timeouts) for the handshake, then switched to non-blocking
//! and registered with the event loop, which reads it, writes it with
//! writev(2) batches, and polls it through its fd.

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nbdlite::error::plain;

use crate::uri::Address;

/// How long one step of a handshake may take (each read and write, the TLS
/// handshake's included). A server that accepts but never speaks (qemu-nbd
/// past its `--shared` limit) is reported instead of waited on.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    /// Connects to `addr`, blocking, with reads, writes and each TCP connect
    /// attempt bounded by `timeout` (a blackholed host would otherwise take
    /// minutes, a server that never speaks for ever).
    pub fn connect(addr: &Address, timeout: Duration) -> Result<Stream, String> {
        let s = match addr {
            Address::Unix(p) => Stream::Unix(
                UnixStream::connect(p).map_err(|e| format!("{}: {}", p.display(), plain(&e)))?,
            ),
            Address::Tcp(host, port) => {
                let s = connect_tcp(host, *port, timeout)
                    .map_err(|e| format!("{host}:{port}: {}", plain(&e)))?;
                // Requests are written in batches already; Nagle would only delay them.
                s.set_nodelay(true)
                    .map_err(|e| format!("socket options: {}", plain(&e)))?;
                Stream::Tcp(s)
            }
        };
        s.set_timeouts(timeout)
            .map_err(|e| format!("socket options: {}", plain(&e)))?;
        Ok(s)
    }

    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s
                .set_read_timeout(Some(t))
                .and_then(|()| s.set_write_timeout(Some(t))),
            Stream::Tcp(s) => s
                .set_read_timeout(Some(t))
                .and_then(|()| s.set_write_timeout(Some(t))),
        }
    }

    /// For the event loop, once the handshake is done.
    pub fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(true),
            Stream::Tcp(s) => s.set_nonblocking(true),
        }
    }
}

/// Each address the name resolves to in turn, none for longer than `timeout`.
fn connect_tcp(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for a in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(b),
            Stream::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(b),
            Stream::Tcp(s) => s.write(b),
        }
    }

    fn write_vectored(&mut self, b: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write_vectored(b),
            Stream::Tcp(s) => s.write_vectored(b),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Registered by its fd: the stream is std's, and mio needs only the fd.
impl Source for Stream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        SourceFd(&self.as_raw_fd()).register(r, t, i)
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        SourceFd(&self.as_raw_fd()).reregister(r, t, i)
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        SourceFd(&self.as_raw_fd()).deregister(r)
    }
}
