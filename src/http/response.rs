//! Reading an HTTP/1.1 response from the bytes received so far: its head
//! (through `httparse`), then its body as the head frames it (RFC 9112 §6):
//! none, `Content-Length` bytes, `Transfer-Encoding: chunked`, or everything
//! until the server closes. Pure: `Reader::step` takes the unread bytes and
//! answers what they hold and how many it used; "need more" is not an error.

use std::ops::Range;

use crate::proto::Parse;

/// Longest response head accepted (status line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in one response head.
const MAX_HEADERS: usize = 64;

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A `Content-Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes FIRST-LAST/TOTAL` (`TOTAL` may be `*`, unknown).
    Bytes {
        first: u64,
        last: u64,
        total: Option<u64>,
    },
    /// `bytes */TOTAL`, with a 416.
    Unsatisfied { total: u64 },
}

/// What the curl backend needs of a response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub reason: String,
    pub framing: Framing,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
    pub content_range: Option<ContentRange>,
    pub location: Option<String>,
}

impl Head {
    /// "404 Not Found", for messages.
    pub fn status_line(&self) -> String {
        format!("{} {}", self.status, self.reason)
    }
}

/// Parses a response head at the front of `buf`. A HEAD request's response
/// has no body, whatever its headers say.
pub fn parse_head(buf: &[u8], head_request: bool) -> Parse<Head> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let used = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Parse::Malformed("response head too large");
        }
        Ok(httparse::Status::Partial) => return Parse::NeedMore,
        Err(httparse::Error::TooManyHeaders) => return Parse::Malformed("too many headers"),
        Err(_) => return Parse::Malformed("not an HTTP/1.x response"),
    };
    let status = r.code.unwrap_or(0); // Complete always has a code
    let version = r.version.unwrap_or(1);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut connection_close = false;
    let mut keep_alive_10 = false;
    let mut content_range = None;
    let mut location = None;
    for h in r.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let Some(n) = value.parse::<u64>().ok().filter(|_| digits(value)) else {
                return Parse::Malformed("bad Content-Length");
            };
            if length.is_some_and(|l| l != n) {
                return Parse::Malformed("two different Content-Lengths");
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding says how the body ends (RFC 9112 §6.3).
            let last = value.rsplit(',').next().unwrap_or("").trim();
            chunked = Some(last.eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for t in value.split(',').map(str::trim) {
                connection_close |= t.eq_ignore_ascii_case("close");
                keep_alive_10 |= t.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("content-range") {
            match parse_content_range(value) {
                Some(cr) => content_range = Some(cr),
                None => return Parse::Malformed("bad Content-Range"),
            }
        } else if name.eq_ignore_ascii_case("location") {
            location = Some(value.to_string());
        }
    }
    let framing = match (status, chunked, length) {
        _ if head_request => Framing::Empty,
        (100..=199 | 204 | 304, _, _) => Framing::Empty,
        (_, Some(true), _) => Framing::Chunked,
        (_, Some(false), _) => Framing::UntilClose,
        (_, None, Some(n)) => Framing::Length(n),
        (_, None, None) => Framing::UntilClose,
    };
    let keep_alive =
        framing != Framing::UntilClose && !connection_close && (version == 1 || keep_alive_10);
    let head = Head {
        status,
        reason: r.reason.unwrap_or("").to_string(),
        framing,
        keep_alive,
        content_range,
        location,
    };
    Parse::Done(head, used)
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `bytes 0-499/1234`, `bytes 0-499/*`, `bytes */1234`.
pub fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.strip_prefix("bytes ")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let number = |s: &str| s.parse::<u64>().ok().filter(|_| digits(s));
    if range == "*" {
        return Some(ContentRange::Unsatisfied {
            total: number(total)?,
        });
    }
    let (first, last) = range.split_once('-')?;
    let (first, last) = (number(first)?, number(last)?);
    let total = match total {
        "*" => None,
        t => Some(number(t)?),
    };
    let fits = first <= last && total.is_none_or(|t| last < t);
    fits.then_some(ContentRange::Bytes { first, last, total })
}

/// What `Reader::step` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// No body bytes here: call again with the rest if it used some (framing,
    /// an informational response), else wait for more bytes.
    NeedMore,
    /// A final (not 1xx) response head.
    Head(Head),
    /// Body bytes: this range of the input given.
    Data(Range<usize>),
    /// The response is complete.
    End,
}

/// One response, head to end.
#[derive(Debug)]
pub struct Reader {
    head_request: bool,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    /// Body bytes left.
    Length(u64),
    ChunkSize,
    /// Bytes left in the chunk.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    UntilClose,
    Done,
}

impl Reader {
    pub fn new(head_request: bool) -> Reader {
        Reader {
            head_request,
            phase: Phase::Head,
        }
    }

    /// Reads what `input` (the unread bytes) holds: returns how many bytes it
    /// used and what they were. Call again with the rest until `End`, or
    /// `NeedMore` having used nothing (then with more bytes). An error is
    /// malformed input.
    pub fn step(&mut self, input: &[u8]) -> Result<(usize, Event), &'static str> {
        match self.phase {
            Phase::Head => self.head(input),
            Phase::Length(0) => self.end(0),
            Phase::Length(n) => Ok(self.data(input, n, Phase::Length)),
            Phase::UntilClose => Ok(self.data(input, u64::MAX, |_| Phase::UntilClose)),
            Phase::ChunkSize => self.chunk_size(input),
            Phase::ChunkData(n) => Ok(self.data(input, n, |left| match left {
                0 => Phase::ChunkEnd,
                n => Phase::ChunkData(n),
            })),
            Phase::ChunkEnd => match input {
                [b'\r', b'\n', ..] => {
                    self.phase = Phase::ChunkSize;
                    Ok((2, Event::NeedMore))
                }
                [] | [b'\r'] => Ok((0, Event::NeedMore)),
                _ => Err("no CRLF after a chunk"),
            },
            Phase::Trailers => self.trailers(input),
            Phase::Done => Err("bytes after the response"),
        }
    }

    /// The server closed the connection: the end of a body that runs until
    /// then, or a response cut short.
    pub fn eof(&mut self) -> Result<Event, &'static str> {
        match self.phase {
            Phase::UntilClose | Phase::Length(0) => {
                self.phase = Phase::Done;
                Ok(Event::End)
            }
            Phase::Head => Err("connection closed before a response"),
            Phase::Done => Ok(Event::End),
            _ => Err("connection closed mid-body"),
        }
    }

    /// Bytes of a `Content-Length` body still to come, while in one: they
    /// may be read straight where they go, then `skip`ped here.
    pub fn body_left(&self) -> Option<u64> {
        match self.phase {
            Phase::Length(n) if n > 0 => Some(n),
            _ => None,
        }
    }

    /// `n` (at most `body_left`) body bytes were read past this reader.
    pub fn skip(&mut self, n: u64) {
        if let Phase::Length(left) = self.phase {
            self.phase = Phase::Length(left.saturating_sub(n));
        }
    }

    fn head(&mut self, input: &[u8]) -> Result<(usize, Event), &'static str> {
        let (head, used) = match parse_head(input, self.head_request) {
            Parse::Done(h, n) => (h, n),
            Parse::NeedMore => return Ok((0, Event::NeedMore)),
            Parse::Malformed(why) => return Err(why),
        };
        if (100..200).contains(&head.status) {
            // Informational: the real response follows.
            return Ok((used, Event::NeedMore));
        }
        self.phase = match head.framing {
            Framing::Empty | Framing::Length(0) => Phase::Length(0),
            Framing::Length(n) => Phase::Length(n),
            Framing::Chunked => Phase::ChunkSize,
            Framing::UntilClose => Phase::UntilClose,
        };
        Ok((used, Event::Head(head)))
    }

    fn end(&mut self, used: usize) -> Result<(usize, Event), &'static str> {
        self.phase = Phase::Done;
        Ok((used, Event::End))
    }

    /// Up to `left` body bytes from `input`; `next` is the phase with what
    /// is left after them.
    fn data(&mut self, input: &[u8], left: u64, next: impl Fn(u64) -> Phase) -> (usize, Event) {
        if input.is_empty() {
            return (0, Event::NeedMore);
        }
        let n = (input.len() as u64).min(left) as usize; // ≤ input.len()
        self.phase = next(left - n as u64);
        (n, Event::Data(0..n))
    }

    fn chunk_size(&mut self, input: &[u8]) -> Result<(usize, Event), &'static str> {
        match httparse::parse_chunk_size(input) {
            Ok(httparse::Status::Complete((used, size))) => {
                self.phase = match size {
                    0 => Phase::Trailers,
                    n => Phase::ChunkData(n),
                };
                Ok((used, Event::NeedMore))
            }
            Ok(httparse::Status::Partial) if input.len() >= MAX_HEAD => {
                Err("chunk size line too long")
            }
            Ok(httparse::Status::Partial) => Ok((0, Event::NeedMore)),
            Err(_) => Err("bad chunk size"),
        }
    }

    /// Trailer lines after the last chunk, up to an empty line.
    fn trailers(&mut self, input: &[u8]) -> Result<(usize, Event), &'static str> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                if rest.len() >= MAX_HEAD {
                    return Err("trailer line too long");
                }
                return Ok((used, Event::NeedMore));
            };
            used += eol + 2;
            if eol == 0 {
                return self.end(used);
            }
        }
    }
}

#[cfg(test)]
mod tests;
