//! One client's TLS stream after STARTTLS: a rustls `ServerConnection` driven
//! over a non-blocking socket, with the same shape as the plaintext path
//! (read into a slice, write from `&[IoSlice]`), so that the connection's
//! state machine can use either.
//!
//! The TLS handshake needs nothing from the caller: records of any kind are
//! processed inside `read`, and whatever rustls wants to send (handshake
//! flights, a KeyUpdate answer, an alert) goes out from there too, or is left
//! for `flush` when the socket is full (`wants_write`).
//!
//! Replies are encrypted straight from the caller's slices: rustls copies each
//! record's plaintext once into the record it seals in place, so pages lent by
//! the memory backend are read once and never staged in a plaintext buffer.
//! Bytes `write` reports taken are sealed already: the caller may release them.
//!
//! Decrypted bytes can wait inside the session while the socket is empty (a
//! record larger than the caller's buffer): with edge-triggered readiness, a
//! connection forgets that it is readable only when `read` says `WouldBlock`.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use rustls::{ServerConfig, ServerConnection};

use crate::sys;

/// Ciphertext queued but not yet taken by the socket, at most (about; rustls
/// adds a record's overhead). A 1 MiB reply is sealed in steps of this size,
/// each sent before the next is sealed, so a slow reader costs a bounded
/// buffer, not a copy of every reply it has not read.
pub const SEND_LIMIT: usize = 128 * 1024;

pub struct Stream {
    tls: ServerConnection,
    /// `announce` has said what the handshake agreed.
    announced: bool,
}

impl Stream {
    /// Starts the server side of the handshake. `early` holds the bytes the
    /// client sent after STARTTLS that the option parser already received:
    /// they belong to TLS (a ClientHello, usually), never to the options.
    /// Its answer is queued: the caller flushes when `wants_write()`.
    pub fn new(cfg: Arc<ServerConfig>, early: &[u8]) -> io::Result<Stream> {
        let mut tls = ServerConnection::new(cfg).map_err(|e| tls_error(&e, true))?;
        tls.set_buffer_limit(Some(SEND_LIMIT));
        let mut s = Stream {
            tls,
            announced: false,
        };
        let mut rest = early;
        while !rest.is_empty() {
            // `&[u8]` reads advance `rest`; rustls takes at most a few KiB at once.
            if s.tls.read_tls(&mut rest)? == 0 {
                break;
            }
            s.process()?;
        }
        Ok(s)
    }

    /// Decrypted bytes into `buf` (which must not be empty), reading
    /// ciphertext from `fd` as needed. `Ok(0)`: the client closed, with a
    /// close_notify or without one (NBD framing shows any truncation);
    /// `WouldBlock`: nothing to deliver yet. Any other error ends the
    /// connection: a failed handshake says why ("TLS handshake: ..."), after
    /// the alert that tells the client has been offered to the socket.
    pub fn read(&mut self, fd: BorrowedFd, buf: &mut [u8]) -> io::Result<usize> {
        self.read_split(fd, fd, buf)
    }

    /// `read` for a client whose two directions are two descriptors (`-s` on
    /// a pair of pipes, as from ssh): what TLS sends while reading (handshake
    /// flights, alerts) goes out on `wfd`.
    pub fn read_split(
        &mut self,
        fd: BorrowedFd,
        wfd: BorrowedFd,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    if self.tls.is_handshaking() {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "TLS handshake: the client closed the connection",
                        ));
                    }
                    return Ok(0);
                }
                Err(e) => return Err(e),
            }
            let eof = match self.tls.read_tls(&mut Fd(fd)) {
                Ok(n) => n == 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let processed = self.process();
            // Handshake flights, a KeyUpdate answer or the alert for an error;
            // after EOF, a failure to send them says nothing new.
            let sent = self.flush(wfd);
            processed?;
            match sent {
                Err(e) if !eof && e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
    }

    /// Encrypts from the front of `bufs` and returns how many plaintext bytes
    /// it took (possibly fewer than offered: at most about `SEND_LIMIT` of
    /// ciphertext waits at once), then sends what the socket takes. The rest of
    /// the sealed records stay queued (`wants_write`) for `flush`. `WouldBlock`
    /// when nothing could be taken because the queue is full and the socket
    /// too.
    pub fn write(&mut self, fd: BorrowedFd, bufs: &[IoSlice]) -> io::Result<usize> {
        self.flush_some(fd)?;
        let n = self.tls.writer().write_vectored(bufs)?;
        self.flush_some(fd)?;
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Sends queued ciphertext; `WouldBlock` if the socket fills first.
    pub fn flush(&mut self, fd: BorrowedFd) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut Fd(fd)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Queues a close_notify alert (a clean TLS close after NBD_CMD_DISC);
    /// the caller flushes it, best effort, before closing the socket.
    pub fn close_notify(&mut self) {
        self.tls.send_close_notify();
    }

    /// Ciphertext is waiting for the socket: the caller wants writability.
    pub fn wants_write(&self) -> bool {
        self.tls.wants_write()
    }

    pub fn is_handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    /// "TLSv1_3 TLS13_AES_256_GCM_SHA384", and whether the client showed a
    /// verified certificate: one debug line per connection after the handshake.
    pub fn peer_summary(&self) -> String {
        let version = self.tls.protocol_version();
        let suite = self.tls.negotiated_cipher_suite().map(|s| s.suite());
        let client = match self.tls.peer_certificates() {
            Some(_) => ", client certificate verified",
            None => "",
        };
        match (version, suite) {
            (Some(v), Some(s)) => format!("{v:?} {s:?}{client}"),
            _ => "handshake not finished".to_string(),
        }
    }

    /// `peer_summary`, the first time it is asked once the handshake is over.
    pub fn announce(&mut self) -> Option<String> {
        if self.announced || self.tls.is_handshaking() {
            return None;
        }
        self.announced = true;
        Some(self.peer_summary())
    }

    /// Flushes, treating a full socket as success: the data stays queued.
    fn flush_some(&mut self, fd: BorrowedFd) -> io::Result<()> {
        match self.flush(fd) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }

    /// Decrypts and acts on the records read so far.
    fn process(&mut self) -> io::Result<()> {
        match self.tls.process_new_packets() {
            Ok(_) => Ok(()),
            Err(e) => Err(tls_error(&e, self.tls.is_handshaking())),
        }
    }
}

/// A rustls error as an I/O error the connection logs at debug level and
/// closes on.
fn tls_error(e: &rustls::Error, handshaking: bool) -> io::Error {
    let when = if handshaking { "TLS handshake" } else { "TLS" };
    io::Error::new(io::ErrorKind::InvalidData, format!("{when}: {e}"))
}

/// The socket as rustls's reader and writer, through the `sys` wrappers.
struct Fd<'a>(BorrowedFd<'a>);

impl Read for Fd<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sys::read(self.0, buf)
    }
}

impl Write for Fd<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sys::writev(self.0, &[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice]) -> io::Result<usize> {
        sys::writev(self.0, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
