//! The client's side of the NBD wire format, pure: values in, bytes out for
//! what a client sends; bytes in, values out for what a server sends. No
//! sockets: the callers do the I/O.
//!
//! Shared by everything in this repository that plays the client: the raw
//! test client (`tests/common/wire.rs`) and the pipelining one
//! (`tests/common/pipeline.rs`), the fuzzing harness's stream generator and
//! reply checks (`src/fuzzing`), the load generator (`nbdlite-bench`), and
//! the server's unit tests where they need a client's bytes.
//!
//! Written from the spec (doc/proto.md of the NBD project, extended headers
//! from its `extension-ext-header` branch) and kept apart from the server's
//! `proto` module, constants included, so that the server and the clients
//! that test it cannot share a bug: nothing here uses `crate::proto`.
//!
//! Decoders take the bytes received so far and answer with a value and the
//! bytes it took, with how many more bytes they need at least (never an
//! error: a blocking client reads exactly that many and asks again), or with
//! why the bytes cannot be a valid message. They check every length before
//! reading a field, so no input makes them panic.

mod consts;
mod handshake;
mod transmission;

#[cfg(test)]
mod tests;

pub use consts::*;
pub use handshake::*;
pub use transmission::*;

/// The outcome of decoding a prefix of what a server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse<T> {
    /// A complete value, and how many bytes it took.
    Done(T, usize),
    /// At least this many more bytes are needed (never 0); not an error.
    NeedMore(usize),
    /// Not what the spec allows the server to send.
    Malformed(&'static str),
}

impl<T> Parse<T> {
    /// The value and its length, or what a decoder built on this one
    /// answers instead.
    fn value<U>(self) -> Result<(T, usize), Parse<U>> {
        match self {
            Parse::Done(v, n) => Ok((v, n)),
            Parse::NeedMore(n) => Err(Parse::NeedMore(n)),
            Parse::Malformed(e) => Err(Parse::Malformed(e)),
        }
    }
}

/// Why `read_message` has no value to give.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError<E> {
    /// The caller's reader failed (the end of the stream, a timeout...).
    Read(E),
    /// The server sent what the spec does not allow, or more than allowed.
    Malformed(&'static str),
}

impl<E: std::fmt::Display> std::fmt::Display for ReadError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Read(e) => e.fmt(f),
            ReadError::Malformed(e) => f.write_str(e),
        }
    }
}

/// One whole message for a blocking client: asks `read_exact` (which fills
/// the slice it is given, or fails) for exactly as many bytes at each step as
/// `parse` says it needs, so nothing of the next message is taken, and at
/// most `max` bytes in all, so a length the server sent cannot size a buffer
/// unchecked. The reading is the caller's; this only drives the decoder.
pub fn read_message<T, E>(
    mut read_exact: impl FnMut(&mut [u8]) -> Result<(), E>,
    max: usize,
    parse: impl Fn(&[u8]) -> Parse<T>,
) -> Result<T, ReadError<E>> {
    let mut buf = Vec::new();
    loop {
        match parse(&buf) {
            Parse::Done(v, _) => return Ok(v),
            Parse::NeedMore(n) if n > max - buf.len() => {
                return Err(ReadError::Malformed(
                    "message longer than the reader allows",
                ));
            }
            Parse::NeedMore(n) => {
                let at = buf.len();
                buf.resize(at + n, 0);
                read_exact(&mut buf[at..]).map_err(ReadError::Read)?;
            }
            Parse::Malformed(e) => return Err(ReadError::Malformed(e)),
        }
    }
}

/// How many bytes `buf` lacks to hold `len`, if it lacks any.
fn short(buf: &[u8], len: usize) -> Option<usize> {
    len.checked_sub(buf.len()).filter(|&n| n > 0)
}

/// The big-endian u16 at byte `at`; the caller has checked that it is there.
pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The big-endian u32 at byte `at`; the caller has checked that it is there.
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The big-endian u64 at byte `at`; the caller has checked that it is there.
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    (u64::from(u32_at(b, at)) << 32) | u64::from(u32_at(b, at + 4))
}
