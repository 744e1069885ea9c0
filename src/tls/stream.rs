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
/// What one session's buffers hold at most, for the memory budget: the sealed
/// records waiting for the socket (`SEND_LIMIT`, and one record beyond),
/// rustls's buffer of received records (64 KiB while a handshake message
/// arrives, 18 KiB after), the plaintext it decrypted and not yet delivered
/// (16 KiB), and the session's own state.
pub const MEMORY: usize = SEND_LIMIT + (128 << 10);
/// Most records one `read` decrypts before it gives the loop back
/// (`Interrupted`): records carrying no plaintext would otherwise keep it
/// decrypting for as long as the client sends them.
const RECORDS_PER_READ: u64 = 256;

pub struct Stream {
    tls: ServerConnection,
    /// `announce` has said what the handshake agreed.
    announced: bool,
    /// The records read from the socket, counted as they arrive.
    records: Records,
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
            records: Records::default(),
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
        let start = self.records.count;
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
            if self.records.count - start >= RECORDS_PER_READ {
                return Err(io::ErrorKind::Interrupted.into()); // more in the next turn
            }
            let mut from = Counted {
                fd,
                records: &mut self.records,
            };
            let eof = match self.tls.read_tls(&mut from) {
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

    /// Records read since the last call: the decryption work done, which a
    /// turn counts besides the plaintext bytes (a client sending one byte
    /// per record makes much work of few bytes).
    pub fn take_records(&mut self) -> u64 {
        std::mem::take(&mut self.records.count)
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
            Err(e) => {
                if refused_certificate(&e) {
                    // A warning, in the connection's scope: rate-limited there.
                    log::warn!("TLS handshake: client certificate refused: {e}");
                }
                Err(tls_error(&e, self.tls.is_handshaking()))
            }
        }
    }
}

/// Whether the handshake failed on the client's certificate (missing, not
/// trusted, revoked, expired): what a person running `--tls-verify-peer`
/// needs to hear of without `-v`.
fn refused_certificate(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertRevocationList(_)
    )
}

/// A rustls error as an I/O error the connection logs at debug level and
/// closes on.
fn tls_error(e: &rustls::Error, handshaking: bool) -> io::Error {
    let when = if handshaking { "TLS handshake" } else { "TLS" };
    io::Error::new(io::ErrorKind::InvalidData, format!("{when}: {e}"))
}

/// TLS records as their bytes go by: each begins with a 5-byte header whose
/// last two bytes are the length of what follows.
#[derive(Debug, Default)]
struct Records {
    /// Records begun.
    count: u64,
    /// The header of the next record, as far as it has come.
    header: [u8; 5],
    have: usize,
    /// Bytes of the current record's body still to come.
    body_left: usize,
}

impl Records {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let k = self.body_left.min(bytes.len());
                self.body_left -= k;
                bytes = &bytes[k..];
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have == self.header.len() {
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.have = 0;
                self.count += 1;
            }
        }
    }
}

/// The socket as rustls reads it, counting the records that pass.
struct Counted<'a> {
    fd: BorrowedFd<'a>,
    records: &'a mut Records,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = sys::read(self.fd, buf)?;
        self.records.feed(&buf[..n]);
        Ok(n)
    }
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

#[cfg(test)]
mod tests {
    use super::Records;

    #[test]
    fn records_are_counted_however_their_bytes_arrive() {
        let mut stream = Vec::new();
        for len in [1u16, 0, 300, 16384] {
            stream.extend_from_slice(&[23, 3, 3]);
            stream.extend_from_slice(&len.to_be_bytes());
            stream.extend(std::iter::repeat_n(0u8, usize::from(len)));
        }
        for step in [1, 2, 5, 7, 4096, stream.len()] {
            let mut r = Records::default();
            for piece in stream.chunks(step) {
                r.feed(piece);
            }
            assert_eq!(
                (r.count, r.have, r.body_left),
                (4, 0, 0),
                "pieces of {step}"
            );
        }
    }
}
