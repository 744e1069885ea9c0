//! How a connection's bytes cross its socket: as they are, or through TLS once
//! STARTTLS has been accepted. Plaintext keeps the zero-copy paths (replies go
//! to writev(2) straight from the blocks and lent pages they were built in);
//! TLS seals records straight from those same slices, one copy per record.

use std::io::{self, IoSlice};
use std::os::fd::BorrowedFd;

use crate::sys;

pub enum Transport {
    Plain,
    #[cfg(feature = "tls")]
    Tls(Box<crate::tls::Stream>),
}

impl Transport {
    /// Plaintext bytes into `buf`; `Ok(0)` at the end; `WouldBlock` when none yet.
    /// `wfd`: the write side, if it is not `fd` (`-s` on two pipes): TLS may
    /// have to answer while it reads.
    pub fn read(
        &mut self,
        fd: BorrowedFd,
        wfd: Option<BorrowedFd>,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        let _ = wfd; // only TLS writes while reading
        match self {
            Transport::Plain => sys::read(fd, buf),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => s.read_split(fd, wfd.unwrap_or(fd), buf),
        }
    }

    /// TLS records read since the last call (the decryption work done): none
    /// in plaintext.
    pub fn take_records(&mut self) -> u64 {
        match self {
            Transport::Plain => 0,
            #[cfg(feature = "tls")]
            Transport::Tls(s) => s.take_records(),
        }
    }

    /// Sends from the front of `bufs`; returns the plaintext bytes taken.
    pub fn write(&mut self, fd: BorrowedFd, bufs: &[IoSlice]) -> io::Result<usize> {
        match self {
            Transport::Plain => sys::writev(fd, bufs),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => s.write(fd, bufs),
        }
    }

    /// Bytes of ours (TLS records) still waiting for the socket.
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Plain => false,
            #[cfg(feature = "tls")]
            Transport::Tls(s) => s.wants_write(),
        }
    }

    /// Sends what `wants_write`; `WouldBlock` if the socket fills first.
    pub fn flush(&mut self, fd: BorrowedFd) -> io::Result<()> {
        let _ = fd; // only TLS has anything of its own to send
        match self {
            Transport::Plain => Ok(()),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => s.flush(fd),
        }
    }

    /// Whether a short read means the socket is drained. Not under TLS: the
    /// session may hold decrypted bytes the socket no longer announces, so only
    /// `WouldBlock` says there is nothing more.
    pub fn short_read_drains(&self) -> bool {
        matches!(self, Transport::Plain)
    }

    /// The connection is closing cleanly: under TLS, a close_notify, sent if
    /// the socket takes it now (best effort: the client may be gone).
    pub fn finish(&mut self, fd: BorrowedFd) {
        #[cfg(feature = "tls")]
        if let Transport::Tls(s) = self {
            s.close_notify();
            let _ = s.flush(fd);
        }
        let _ = fd; // plaintext ends with the socket's own close
    }

    /// Starts TLS after STARTTLS's ACK has gone out: `early` holds the bytes
    /// the client already sent behind STARTTLS, which belong to TLS.
    #[cfg(feature = "tls")]
    pub fn start_tls(
        config: Option<&std::sync::Arc<rustls::ServerConfig>>,
        early: &[u8],
    ) -> io::Result<Transport> {
        let Some(config) = config else {
            return Err(io::Error::other("STARTTLS accepted without TLS configured"));
        };
        let s = crate::tls::Stream::new(config.clone(), early)?;
        Ok(Transport::Tls(Box::new(s)))
    }

    /// Plaintext arrived through TLS: the handshake is done; the first time, a
    /// debug line's worth about the session (version, cipher suite, client
    /// certificate).
    pub fn first_plaintext(&mut self) -> Option<String> {
        match self {
            Transport::Plain => None,
            #[cfg(feature = "tls")]
            Transport::Tls(s) => s.announce(),
        }
    }
}
