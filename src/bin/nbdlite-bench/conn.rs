//! One connection of the load: its socket, its request stream, what it has in
//! flight, and where it is in the reply stream.
//!
//! Requests are stamped when queued and written in batches by writev(2), WRITE
//! payloads straight from one shared buffer. Replies are parsed in place in a
//! scratch buffer shared by every connection of the thread: a connection only
//! keeps the few bytes of a header split across reads, and a READ's data is
//! counted and dropped as it streams past, so memory does not grow with the
//! request size or the queue depth.
//!
//! A connection with TLS does the same through its session (`conn/tls.rs`):
//! one read(2) of records into the same scratch buffer, decrypted record by
//! record and parsed where rustls decrypted them; requests sealed straight
//! from the slices writev(2) would have sent (a WRITE payload is copied once,
//! into the record it is encrypted in), the records sent by writev(2).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::time::Instant;

use nbdlite::client_proto::{
    CMD_DISC, CMD_READ, CMD_WRITE, COMPACT_REQUEST_LEN as REQUEST_LEN, Parse, ReplyHeader,
    SIMPLE_REPLY_LEN as REPLY_LEN, compact_request, reply_header,
};
use nbdlite::error::plain;

use crate::client::Link;
use crate::record::Recorder;
use crate::stream::Stream;
use crate::tls::Session;
use crate::workload::Plan;
use crate::workload::{Io, Workload};

mod tls;

/// Slices handed to one writev(2) (each request is one or two).
const IOV: usize = 64;
/// Reads per connection per turn (4 MiB).
const TURN: usize = 16;

/// A request in flight; its index in the slot table is its cookie.
#[derive(Clone, Copy)]
struct InFlight {
    sent: Instant,
    io: Io,
    busy: bool,
}

/// A request header waiting to be written, with the length of its payload.
struct Pending {
    hdr: [u8; REQUEST_LEN],
    payload: usize,
}

/// One connection: its socket, its request stream, what it has in flight, and
/// where it is in the reply stream.
pub struct Conn {
    /// Index among all connections, for messages.
    id: usize,
    pub stream: Stream,
    /// The TLS session that wraps `stream`, if the connection has one.
    tls: Option<Box<Session>>,
    work: Workload,
    slots: Vec<InFlight>,
    free: Vec<u32>,
    out: VecDeque<Pending>,
    /// Bytes of `out.front()` (header, then payload) already written.
    out_done: usize,
    /// A reply header split across reads.
    hdr: [u8; REPLY_LEN],
    hdr_len: usize,
    /// READ data still to come for the reply to `data_slot`.
    data_left: u64,
    data_slot: usize,
    /// The server hung up or the socket failed: read to the end every time.
    pub hup: bool,
}

impl Conn {
    /// Takes over a socket that finished its handshake.
    pub fn new(id: usize, link: Link, work: Workload, qd: usize) -> Result<Conn, String> {
        let Link { stream, tls } = link;
        stream
            .set_nonblocking()
            .map_err(|e| format!("connection {id}: non-blocking mode: {}", plain(&e)))?;
        let now = Instant::now();
        let idle = InFlight {
            sent: now,
            io: Io {
                write: false,
                offset: 0,
            },
            busy: false,
        };
        Ok(Conn {
            id,
            stream,
            tls,
            work,
            slots: vec![idle; qd],
            free: (0..qd as u32).rev().collect(),
            out: VecDeque::with_capacity(qd),
            out_done: 0,
            hdr: [0; REPLY_LEN],
            hdr_len: 0,
            data_left: 0,
            data_slot: 0,
            hup: false,
        })
    }

    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn fail(&self, what: impl std::fmt::Display) -> String {
        format!("connection {}: {what}", self.id)
    }

    /// Queues a new request in every free slot, stamped `now`.
    pub fn fill(&mut self, size: u64, now: Instant) {
        while let Some(cookie) = self.free.pop() {
            let io = self.work.next();
            let kind = if io.write { CMD_WRITE } else { CMD_READ };
            self.out.push_back(Pending {
                hdr: compact_request(0, kind, u64::from(cookie), io.offset, size as u32),
                payload: if io.write { size as usize } else { 0 },
            });
            self.slots[cookie as usize] = InFlight {
                sent: now,
                io,
                busy: true,
            };
        }
    }

    /// Writes queued requests until done or the socket is full.
    pub fn flush(&mut self, payload: &[u8]) -> Result<(), String> {
        if self.tls.is_some() {
            return self.flush_tls(payload);
        }
        while !self.out.is_empty() {
            let mut iov = [IoSlice::new(&[]); IOV];
            let n = gather(&self.out, self.out_done, payload, &mut iov);
            match self.stream.write_vectored(&iov[..n]) {
                Ok(0) => return Err(self.fail("server stopped accepting data")),
                Ok(written) => self.advance(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail(format_args!("writing: {}", plain(&e)))),
            }
        }
        Ok(())
    }

    /// Drops `written` bytes off the front of the queue.
    #[inline(always)]
    fn advance(&mut self, mut written: usize) {
        while let Some(p) = self.out.front() {
            let left = REQUEST_LEN + p.payload - self.out_done;
            if written < left {
                self.out_done += written;
                return;
            }
            written -= left;
            self.out_done = 0;
            self.out.pop_front();
        }
    }

    /// Reads and handles replies until the socket is empty, replacing each
    /// completed request with a new one while `rec.issuing`. Returns true if it
    /// stopped at the end of its turn with more to read: a connection streaming
    /// large READs must not keep the loop, and the latencies of the others, to
    /// itself.
    ///
    /// A read that does not fill `scratch` took everything there was, and any
    /// byte that arrives later raises a new edge-triggered event, so we stop
    /// there rather than spend one more read(2) per wake-up to see EAGAIN
    /// (a third of our syscalls at queue depth 1-2). The exception is a hang-up
    /// (`hup`): the EOF may have come with the data, and no edge follows it.
    pub fn on_readable(
        &mut self,
        scratch: &mut [u8],
        rec: &mut Recorder,
        plan: &Plan,
    ) -> Result<bool, String> {
        if self.tls.is_some() {
            return self.on_readable_tls(scratch, rec, plan);
        }
        for _ in 0..TURN {
            match self.stream.read(scratch) {
                Ok(0) => return self.closed(rec),
                Ok(n) => {
                    rec.now = Instant::now();
                    self.replies(&scratch[..n], rec, plan.size)?;
                    if rec.issuing {
                        self.fill(plan.size, rec.now);
                    }
                    self.flush(plan.payload)?;
                    if n < scratch.len() && !self.hup {
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail(format_args!("reading: {}", plain(&e)))),
            }
        }
        Ok(true)
    }

    /// The server closed the connection: fine once nothing is in flight and
    /// nothing more will be asked.
    fn closed(&self, rec: &Recorder) -> Result<bool, String> {
        if self.in_flight() == 0 && !rec.issuing {
            return Ok(false);
        }
        Err(self.fail(format_args!(
            "server closed the connection with {} request(s) in flight",
            self.in_flight()
        )))
    }

    /// Handles every reply (or part of one) in `buf`.
    fn replies(&mut self, mut buf: &[u8], rec: &mut Recorder, size: u64) -> Result<(), String> {
        while !buf.is_empty() {
            if self.data_left > 0 {
                let n = (buf.len() as u64).min(self.data_left);
                self.data_left -= n;
                buf = &buf[n as usize..];
                if self.data_left == 0 {
                    self.finish(self.data_slot, rec, size, 0);
                }
                continue;
            }
            let hdr: [u8; REPLY_LEN] = if self.hdr_len == 0 && buf.len() >= REPLY_LEN {
                let mut h = [0; REPLY_LEN];
                h.copy_from_slice(&buf[..REPLY_LEN]);
                buf = &buf[REPLY_LEN..];
                h
            } else {
                let n = (REPLY_LEN - self.hdr_len).min(buf.len());
                self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&buf[..n]);
                self.hdr_len += n;
                buf = &buf[n..];
                if self.hdr_len < REPLY_LEN {
                    return Ok(());
                }
                self.hdr_len = 0;
                self.hdr
            };
            self.header(&hdr, rec, size)?;
        }
        Ok(())
    }

    /// One simple reply header: completes its request, or waits for READ data.
    fn header(&mut self, h: &[u8; REPLY_LEN], rec: &mut Recorder, size: u64) -> Result<(), String> {
        let (error, cookie) = simple_reply(h).map_err(|e| self.fail(e))?;
        let slot = usize::try_from(cookie)
            .ok()
            .filter(|&c| c < self.slots.len() && self.slots[c].busy)
            .ok_or_else(|| self.fail(format_args!("reply to unknown cookie {cookie:#x}")))?;
        if error == 0 && !self.slots[slot].io.write && size > 0 {
            self.data_left = size;
            self.data_slot = slot;
        } else {
            self.finish(slot, rec, size, error);
        }
        Ok(())
    }

    fn finish(&mut self, slot: usize, rec: &mut Recorder, size: u64, error: u32) {
        self.slots[slot].busy = false;
        rec.complete(self.slots[slot].io, self.slots[slot].sent, size, error);
        self.free.push(slot as u32);
    }

    /// Says goodbye with NBD_CMD_DISC, best effort: the numbers are already in.
    /// Not in the middle of a half-written request (the server would read the
    /// DISC as the rest of it): then closing the socket is the goodbye.
    /// With TLS, a close_notify follows the DISC.
    pub fn disconnect(&mut self) {
        if self.out_done != 0 {
            return;
        }
        let disc = compact_request(0, CMD_DISC, 0, 0, 0);
        match self.tls.as_deref_mut() {
            None => {
                let _ = self.stream.write(&disc);
            }
            Some(tls) => {
                let _ = tls.seal(&[IoSlice::new(&disc)]);
                tls.close();
                let _ = tls.send(&mut self.stream);
            }
        }
    }
}

/// A simple reply header: its error and cookie. We never ask for structured
/// replies, so a chunk is an error too.
fn simple_reply(h: &[u8; REPLY_LEN]) -> Result<(u32, u64), &'static str> {
    match reply_header(h) {
        Parse::Done(ReplyHeader::Simple { error, cookie }, _) => Ok((error, cookie)),
        // A magic it knows that is not a simple reply's starts a longer header.
        Parse::Done(ReplyHeader::Chunk(_), _) | Parse::NeedMore(_) => {
            Err("structured reply, which we did not ask for")
        }
        Parse::Malformed(_) => Err("bad reply magic (garbage from the server)"),
    }
}

/// The queued requests as writev(2) slices, from `done` bytes into the first:
/// each header, and a WRITE's payload straight from the shared buffer.
/// Returns how many slices of `iov` it filled. Inlined: the plaintext path
/// costs what it did before the TLS path shared this code.
#[inline(always)]
fn gather<'a>(
    out: &'a VecDeque<Pending>,
    done: usize,
    payload: &'a [u8],
    iov: &mut [IoSlice<'a>; IOV],
) -> usize {
    let mut n = 0;
    let mut skip = done;
    for p in out.iter() {
        if n + 2 > IOV {
            break;
        }
        for part in [&p.hdr[..], &payload[..p.payload]] {
            if skip >= part.len() {
                skip -= part.len();
            } else {
                iov[n] = IoSlice::new(&part[skip..]);
                skip = 0;
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Pattern;
    use nbdlite::proto::reply::Style;

    fn conn(qd: usize) -> (Conn, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let w = Workload::new(Pattern::RandRead, 4096, 1 << 20, 50, 1, 0, 1).unwrap();
        let link = Link {
            stream: Stream::Unix(a),
            tls: None,
        };
        (Conn::new(0, link, w, qd).unwrap(), b)
    }

    fn rec() -> Recorder {
        Recorder::new(Instant::now(), true)
    }

    fn reply(error: u32, cookie: u64) -> Vec<u8> {
        nbdlite::proto::reply::simple(error, cookie)
            .as_bytes()
            .to_vec()
    }

    #[test]
    fn simple_reply_headers() {
        let mut h = [0u8; REPLY_LEN];
        h.copy_from_slice(&reply(5, 9));
        assert_eq!(simple_reply(&h), Ok((5, 9)));
        let s = nbdlite::proto::reply::chunk(Style::Structured, 1, 0, 9, 0, 0);
        h.copy_from_slice(&s.as_bytes()[..REPLY_LEN]);
        assert!(simple_reply(&h).unwrap_err().contains("structured"));
        assert!(
            simple_reply(&[0xff; REPLY_LEN])
                .unwrap_err()
                .contains("garbage")
        );
    }

    #[test]
    fn replies_split_anywhere() {
        let mut stream = Vec::new();
        for (cookie, error) in [(1u64, 0u32), (0, 0), (2, 5)] {
            stream.extend(reply(error, cookie));
            if error == 0 {
                stream.extend(vec![0xaa; 4096]);
            }
        }
        for cut in [1, 7, 16, 17, 4111, 4112, 4113, 5000] {
            let (mut c, _peer) = conn(3);
            c.fill(4096, Instant::now());
            let mut r = rec();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let n = cut.min(rest.len());
                c.replies(&rest[..n], &mut r, 4096).unwrap();
                rest = &rest[n..];
            }
            assert_eq!(c.in_flight(), 0, "cut {cut}");
            assert_eq!((r.stats.reads, r.stats.errors), (2, 1));
            assert_eq!((r.stats.hist.count(), r.stats.bytes), (2, 8192));
            assert!(r.stats.first_error.as_deref().unwrap().contains("EIO"));
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let (mut c, _peer) = conn(2);
        c.fill(4096, Instant::now());
        let mut r = rec();
        assert!(c.replies(&reply(0, 7), &mut r, 4096).is_err());
        assert!(c.replies(&[0xff; 16], &mut r, 4096).is_err());
        let (mut c, _peer) = conn(2);
        let mut r = rec();
        // nothing in flight: any cookie is unknown
        assert!(c.replies(&reply(0, 0), &mut r, 4096).is_err());
        let s = nbdlite::proto::reply::chunk(Style::Structured, 1, 0, 0, 0, 0)
            .as_bytes()
            .to_vec();
        c.fill(4096, Instant::now());
        assert!(c.replies(&s, &mut r, 4096).is_err());
    }

    #[test]
    fn partial_writes_resume_mid_request() {
        let (mut c, _peer) = conn(3);
        c.out.push_back(Pending {
            hdr: compact_request(0, CMD_WRITE, 0, 0, 10),
            payload: 10,
        });
        c.out.push_back(Pending {
            hdr: compact_request(0, CMD_READ, 1, 0, 10),
            payload: 0,
        });
        c.advance(30);
        assert_eq!((c.out.len(), c.out_done), (2, 30));
        c.advance(8);
        assert_eq!((c.out.len(), c.out_done), (1, 0));
        c.advance(28);
        assert!(c.out.is_empty());
    }
}
