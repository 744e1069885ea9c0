//! One range request and its response on a connection: what the response's
//! head means for it (`judge`), and where its body's bytes go (`deliver`):
//! into the buffers of the reads it serves, which the memory budget already
//! counts, so a body in flight costs nothing more.

use std::time::Instant;

use slab::Slab;

use crate::aio::Tag;
use crate::http::{ContentRange, Framing, Head, Reader};

/// An error body larger than this is not read to keep the connection: the
/// connection is closed instead.
const DRAIN_MAX: u64 = 64 * 1024;

/// A read the pool is working on.
pub struct Job {
    pub tag: Tag,
    pub buf: Vec<u8>,
    /// Pieces not yet done.
    pub pieces: usize,
    /// The first failure of one of its pieces.
    pub error: Option<std::io::Error>,
}

/// A part of a job that one request fetches (or a run of adjacent parts of
/// several small jobs, merged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub job: usize,
    /// Where in the job's buffer.
    pub start: usize,
    pub len: usize,
    /// Where in the object.
    pub offset: u64,
    /// Requests that carried it and failed in a way worth retrying.
    pub tries: u32,
}

impl Piece {
    pub fn end(&self) -> u64 {
        self.offset + self.len as u64
    }
}

/// What a response head means for a request of `len` bytes at `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The body is the bytes asked for.
    Data,
    /// An HTTP error: the request fails; the connection may carry more once
    /// the (small) body is read, if `drain`.
    Refused { why: String, drain: bool },
    /// A response that does not answer the request: the request fails and
    /// the connection is closed.
    Broken(String),
}

pub fn judge(head: &Head, start: u64, len: u64, size: u64) -> Verdict {
    let last = start + len - 1;
    let length_ok = match head.framing {
        Framing::Length(n) => n == len,
        _ => true, // counted as it arrives
    };
    match head.status {
        206 => match head.content_range {
            Some(ContentRange::Bytes { first, last: l, .. }) if first == start && l == last => {
                match length_ok {
                    true => Verdict::Data,
                    false => Verdict::Broken(format!(
                        "206 with Content-Length {:?} for {len} bytes",
                        head.framing
                    )),
                }
            }
            cr => Verdict::Broken(format!(
                "206 with Content-Range {cr:?} for bytes {start}-{last}"
            )),
        },
        // The whole object is what was asked for.
        200 if start == 0 && len == size && length_ok => Verdict::Data,
        200 => Verdict::Broken("the server ignored Range (200 OK)".into()),
        _ => Verdict::Refused {
            why: format!("HTTP {}", head.status_line()),
            drain: head.keep_alive
                && match head.framing {
                    Framing::Length(n) => n <= DRAIN_MAX,
                    Framing::Empty | Framing::Chunked => true,
                    Framing::UntilClose => false,
                },
        },
    }
}

/// How far a request on a connection has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for the response head.
    Head,
    /// Body bytes go to the pieces.
    Body,
    /// The request has failed; its small error body is read and dropped.
    Drain,
}

/// A request in flight on a connection.
pub struct Exchange {
    /// The pieces its body fills, in order (empty once they have failed).
    pub pieces: Vec<Piece>,
    pub start: u64,
    pub len: u64,
    /// Body bytes delivered.
    pub got: u64,
    pub reader: Reader,
    pub stage: Stage,
    pub deadline: Instant,
    pub keep_alive: bool,
}

impl Exchange {
    /// A request for `pieces` (adjacent, in order, at least one).
    pub fn new(pieces: Vec<Piece>, deadline: Instant) -> Exchange {
        let start = pieces.first().map_or(0, |p| p.offset);
        let len = pieces.iter().map(|p| p.len as u64).sum();
        Exchange {
            pieces,
            start,
            len,
            got: 0,
            reader: Reader::new(false),
            stage: Stage::Head,
            deadline,
            keep_alive: false,
        }
    }

    /// Copies body bytes into the pieces' buffers; more than asked for is an
    /// error.
    pub fn deliver(&mut self, jobs: &mut Slab<Job>, mut data: &[u8]) -> Result<(), &'static str> {
        if self.got + data.len() as u64 > self.len {
            return Err("the body is longer than the range asked for");
        }
        let mut skip = self.got;
        for p in &self.pieces {
            if data.is_empty() {
                break;
            }
            if skip >= p.len as u64 {
                skip -= p.len as u64;
                continue;
            }
            let within = skip as usize; // < p.len
            let n = (p.len - within).min(data.len());
            if let Some(job) = jobs.get_mut(p.job) {
                let at = p.start + within;
                job.buf[at..at + n].copy_from_slice(&data[..n]);
            }
            self.got += n as u64;
            data = &data[n..];
            skip = 0;
        }
        Ok(())
    }

    /// Where the next body byte goes: (job, offset in its buffer, bytes
    /// left in that piece).
    pub fn next_dest(&self) -> Option<(usize, usize, usize)> {
        let mut skip = self.got;
        for p in &self.pieces {
            if skip < p.len as u64 {
                let within = skip as usize; // < p.len
                return Some((p.job, p.start + within, p.len - within));
            }
            skip -= p.len as u64;
        }
        None
    }

    /// Every byte asked for has come.
    pub fn complete(&self) -> bool {
        self.got == self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::response::parse_head;
    use crate::proto::Parse;

    fn head(s: &str) -> Head {
        match parse_head(s.as_bytes(), false) {
            Parse::Done(h, _) => h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn verdicts() {
        let ok =
            head("HTTP/1.1 206 P\r\nContent-Range: bytes 10-19/100\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(judge(&ok, 10, 10, 100), Verdict::Data);
        assert!(matches!(judge(&ok, 10, 11, 100), Verdict::Broken(_)));
        assert!(matches!(judge(&ok, 0, 10, 100), Verdict::Broken(_)));
        let long =
            head("HTTP/1.1 206 P\r\nContent-Range: bytes 10-19/100\r\nContent-Length: 11\r\n\r\n");
        assert!(matches!(judge(&long, 10, 10, 100), Verdict::Broken(_)));
        let whole = head("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
        assert_eq!(judge(&whole, 0, 100, 100), Verdict::Data);
        assert!(
            matches!(judge(&whole, 0, 10, 100), Verdict::Broken(w) if w.contains("ignored Range"))
        );
        let missing = head("HTTP/1.1 404 Not Found\r\nContent-Length: 150\r\n\r\n");
        assert_eq!(
            judge(&missing, 0, 10, 100),
            Verdict::Refused {
                why: "HTTP 404 Not Found".into(),
                drain: true
            }
        );
        let big = head("HTTP/1.1 500 Oops\r\nContent-Length: 10000000\r\n\r\n");
        assert!(matches!(
            judge(&big, 0, 10, 100),
            Verdict::Refused { drain: false, .. }
        ));
        let closing = head("HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 1\r\n\r\n");
        assert!(matches!(
            judge(&closing, 0, 10, 100),
            Verdict::Refused { drain: false, .. }
        ));
    }

    #[test]
    fn bodies_fill_merged_pieces_in_order() {
        let mut jobs = Slab::new();
        let a = jobs.insert(Job {
            tag: 1,
            buf: vec![0; 4],
            pieces: 1,
            error: None,
        });
        let b = jobs.insert(Job {
            tag: 2,
            buf: vec![0; 6],
            pieces: 1,
            error: None,
        });
        let piece = |job, len, offset| Piece {
            job,
            start: 0,
            len,
            offset,
            tries: 0,
        };
        let mut x = Exchange::new(vec![piece(a, 4, 100), piece(b, 6, 104)], Instant::now());
        assert_eq!((x.start, x.len), (100, 10));
        x.deliver(&mut jobs, b"abc").unwrap();
        x.deliver(&mut jobs, b"defg").unwrap();
        assert!(!x.complete());
        x.deliver(&mut jobs, b"hij").unwrap();
        assert!(x.complete());
        assert_eq!(jobs[a].buf, b"abcd");
        assert_eq!(jobs[b].buf, b"efghij");
        assert!(x.deliver(&mut jobs, b"k").is_err());
    }
}
