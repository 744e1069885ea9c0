//! One non-blocking connection to the web server: TCP or a Unix socket, with
//! TLS (rustls's client side) over it for `https`. Bytes in and out, nothing
//! about HTTP; every call returns at once, `WouldBlock` meaning "wait for the
//! socket's next event".

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};

/// Where connections go.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Tcp(SocketAddr),
    /// `unix-socket-path=`: every connection goes there, whatever the URL's host.
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// TLS for one connection: the configuration and the name to verify.
#[cfg(feature = "tls")]
#[derive(Debug, Clone)]
pub struct TlsTarget {
    pub config: std::sync::Arc<rustls::ClientConfig>,
    pub name: rustls::pki_types::ServerName<'static>,
}

/// What a receive got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    Bytes(usize),
    /// Nothing more until the socket's next event.
    WouldBlock,
    /// The server closed the connection.
    Eof,
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

pub struct Transport {
    stream: Stream,
    #[cfg(feature = "tls")]
    tls: Option<Box<rustls::ClientConnection>>,
}

/// An error of the TLS protocol (a certificate that does not verify, an
/// alert): not to be retried. Its kind is `InvalidData`.
#[cfg(feature = "tls")]
pub fn tls_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

impl Transport {
    /// Starts connecting (it completes in the background: the first write
    /// waits for it), with TLS when `tls` is given.
    pub fn connect(
        to: &Endpoint,
        nodelay: bool,
        #[cfg(feature = "tls")] tls: Option<&TlsTarget>,
    ) -> io::Result<Transport> {
        let stream = match to {
            Endpoint::Tcp(addr) => {
                let s = TcpStream::connect(*addr)?;
                if nodelay {
                    // Best effort: a socket still connecting may refuse it.
                    let _ = s.set_nodelay(true);
                }
                Stream::Tcp(s)
            }
            Endpoint::Unix(path) => Stream::Unix(UnixStream::connect(path)?),
        };
        Ok(Transport {
            stream,
            #[cfg(feature = "tls")]
            tls: match tls {
                Some(t) => Some(Box::new(
                    rustls::ClientConnection::new(t.config.clone(), t.name.clone())
                        .map_err(tls_error)?,
                )),
                None => None,
            },
        })
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        match &mut self.stream {
            Stream::Tcp(s) => s.register(registry, token, interest),
            Stream::Unix(s) => s.register(registry, token, interest),
        }
    }

    pub fn deregister(&mut self, registry: &Registry) {
        let _ = match &mut self.stream {
            Stream::Tcp(s) => s.deregister(registry),
            Stream::Unix(s) => s.deregister(registry),
        };
    }

    /// Takes what it can of `buf` (TLS: into its own buffer, sent as the
    /// handshake allows); returns how much.
    pub fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            let n = tls.writer().write(buf)?;
            self.flush()?;
            return Ok(n);
        }
        match self.stream.write(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            r => r,
        }
    }

    /// Sends TLS records waiting to go; true when none is left.
    pub fn flush(&mut self) -> io::Result<bool> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            while tls.wants_write() {
                match tls.write_tls(&mut self.stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(true)
    }

    /// Reads what has arrived into `buf` (not empty).
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<Recv> {
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            return self.recv_tls(buf);
        }
        match self.stream.read(buf) {
            Ok(0) => Ok(Recv::Eof),
            Ok(n) => Ok(Recv::Bytes(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Recv::WouldBlock),
            Err(e) => Err(e),
        }
    }

    /// Plaintext if rustls has some, else records from the socket until it
    /// does or the socket has no more.
    #[cfg(feature = "tls")]
    fn recv_tls(&mut self, buf: &mut [u8]) -> io::Result<Recv> {
        loop {
            let Some(tls) = &mut self.tls else {
                return Ok(Recv::Eof); // only called with TLS
            };
            match tls.reader().read(buf) {
                Ok(0) => return Ok(Recv::Eof),
                Ok(n) => return Ok(Recv::Bytes(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Recv::Eof),
                Err(e) => return Err(e),
            }
            match tls.read_tls(&mut self.stream) {
                Ok(_) => {} // 0: end of stream, which the reader reports next
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Recv::WouldBlock),
                Err(e) => return Err(e),
            }
            if let Err(e) = tls.process_new_packets() {
                // Send the alert saying why, if the socket takes it.
                let _ = self.flush();
                return Err(tls_error(e));
            }
            // Handshake messages (and the request held back until it is done).
            self.flush()?;
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let r = match self {
                Stream::Tcp(s) => s.read(buf),
                Stream::Unix(s) => s.read(buf),
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            let r = match self {
                Stream::Tcp(s) => s.write(buf),
                Stream::Unix(s) => s.write(buf),
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A TCP connection still being made: wait for it.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
