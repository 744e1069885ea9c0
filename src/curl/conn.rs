//! One connection of the pool: closed, idle (open, kept alive), or carrying
//! one request (`Exchange`). `pump` moves what the socket allows, both ways,
//! and says how the request stands; the pool decides what follows.

use std::io;

use slab::Slab;

use super::exchange::{Exchange, Job, Stage, Verdict, judge};
use super::transport::{Recv, Transport};
use crate::http::Event;
use crate::http::response::MAX_HEAD;

/// Bytes read from the socket at a time (a response head always fits).
const READ_BUF: usize = 64 * 1024;

/// How a connection's request stands after `pump`.
#[derive(Debug)]
pub enum Outcome {
    /// Waiting for the socket.
    Wait,
    /// The response is complete; the connection may carry another if `reuse`.
    Complete { reuse: bool },
    /// The request failed with an HTTP error (its pieces are to fail); the
    /// connection goes on reading the error's body, or is closed if `close`.
    Refused { why: String, close: bool },
    /// The connection is unusable. What it carried fails, or is retried if
    /// `retry` (the server went away; not a response that made no sense).
    Broken { why: io::Error, retry: bool },
}

impl Outcome {
    fn broken(why: impl Into<String>) -> Outcome {
        Outcome::Broken {
            why: io::Error::new(io::ErrorKind::InvalidData, why.into()),
            retry: false,
        }
    }

    fn lost(why: io::Error) -> Outcome {
        // TLS errors (a certificate, an alert) will not go away by retrying.
        let retry = why.kind() != io::ErrorKind::InvalidData;
        Outcome::Broken { why, retry }
    }
}

#[derive(Default)]
pub struct Conn {
    pub link: Option<Transport>,
    /// The request being sent, and how much of it has gone.
    out: Vec<u8>,
    sent: usize,
    /// Bytes received, `used..have` not yet read.
    input: Vec<u8>,
    used: usize,
    have: usize,
    pub exchange: Option<Exchange>,
    /// Requests completed on this connection (it may be stale when reused).
    pub served: u64,
}

impl Conn {
    /// Starts a request on this connection: `request` is its encoded head.
    pub fn start(&mut self, exchange: Exchange, request: impl FnOnce(&mut Vec<u8>)) {
        self.out.clear();
        self.sent = 0;
        request(&mut self.out);
        self.exchange = Some(exchange);
    }

    /// Forgets the socket and any bytes read or unsent (the exchange is the
    /// caller's to take first).
    pub fn reset(&mut self) {
        self.link = None;
        self.out.clear();
        self.sent = 0;
        self.used = 0;
        self.have = 0;
    }

    /// Sends what is unsent, reads what has arrived, and hands body bytes to
    /// the pieces they belong to.
    pub fn pump(&mut self, jobs: &mut Slab<Job>, size: u64) -> Outcome {
        if let Err(e) = self.send() {
            return Outcome::lost(e);
        }
        if self.input.len() < READ_BUF {
            self.input.resize(READ_BUF, 0);
        }
        loop {
            match self.recv(jobs) {
                Ok(Recv::Bytes(_)) => {}
                Ok(Recv::WouldBlock) => return Outcome::Wait,
                Ok(Recv::Eof) => return self.eof(),
                Err(e) => return Outcome::lost(e),
            }
            let outcome = self.read(jobs, size);
            if !matches!(outcome, Outcome::Wait) {
                return outcome;
            }
        }
    }

    /// Sends what the socket takes of the request.
    fn send(&mut self) -> io::Result<()> {
        let link = self.link.as_mut().ok_or(io::ErrorKind::NotConnected)?;
        while self.sent < self.out.len() {
            match link.send(&self.out[self.sent..])? {
                0 => break,
                n => self.sent += n,
            }
        }
        link.flush().map(|_| ())
    }

    /// Receives once: into the input buffer, or straight where body bytes go.
    fn recv(&mut self, jobs: &mut Slab<Job>) -> io::Result<Recv> {
        if self.used == self.have {
            (self.used, self.have) = (0, 0);
        } else if self.have == self.input.len() {
            self.input.copy_within(self.used..self.have, 0);
            (self.have, self.used) = (self.have - self.used, 0);
        }
        if let Some(got) = self.recv_direct(jobs) {
            return got;
        }
        let link = self.link.as_mut().ok_or(io::ErrorKind::NotConnected)?;
        let got = link.recv(&mut self.input[self.have..])?;
        if let Recv::Bytes(n) = got {
            self.have += n;
        }
        Ok(got)
    }

    /// In the middle of a `Content-Length` body, with nothing buffered:
    /// receives straight into the buffer the bytes are for (no copy). None
    /// when that is not where the connection stands.
    fn recv_direct(&mut self, jobs: &mut Slab<Job>) -> Option<io::Result<Recv>> {
        let x = self.exchange.as_mut()?;
        if x.stage != Stage::Body || self.used != self.have {
            return None;
        }
        let left = x.reader.body_left()?;
        let (job, at, n) = x.next_dest()?;
        let n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
        let buf = &mut jobs.get_mut(job)?.buf[at..at + n];
        let got = self.link.as_mut()?.recv(buf);
        if let Ok(Recv::Bytes(k)) = got {
            x.reader.skip(k as u64);
            x.got += k as u64;
        }
        Some(got)
    }

    /// The server closed the connection.
    fn eof(&mut self) -> Outcome {
        let Some(x) = &mut self.exchange else {
            // An idle connection the server let go (keep-alive timeout).
            return Outcome::lost(io::ErrorKind::ConnectionAborted.into());
        };
        if x.stage == Stage::Body && !x.complete() && x.reader.body_left().is_some() {
            return Outcome::lost(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the body ended after {} of {} bytes", x.got, x.len),
            ));
        }
        match x.reader.eof() {
            Ok(_) if x.stage == Stage::Body && !x.complete() => {
                Outcome::broken(format!("the body ended after {} of {} bytes", x.got, x.len))
            }
            Ok(_) => Outcome::Complete { reuse: false },
            Err(why) => Outcome::lost(io::Error::new(io::ErrorKind::UnexpectedEof, why)),
        }
    }

    /// Reads the response from the bytes received.
    fn read(&mut self, jobs: &mut Slab<Job>, size: u64) -> Outcome {
        let Some(x) = &mut self.exchange else {
            return Outcome::broken("bytes from the server with no request outstanding");
        };
        loop {
            let input = &self.input[self.used..self.have];
            let (used, ev) = match x.reader.step(input) {
                Ok(r) => r,
                Err(why) => return Outcome::broken(format!("bad response: {why}")),
            };
            self.used += used;
            match ev {
                Event::NeedMore if used == 0 => {
                    if self.have - self.used >= MAX_HEAD && x.stage == Stage::Head {
                        return Outcome::broken("response head too large");
                    }
                    return Outcome::Wait;
                }
                Event::NeedMore => {}
                Event::Head(head) => {
                    x.keep_alive = head.keep_alive;
                    match judge(&head, x.start, x.len, size) {
                        Verdict::Data => x.stage = Stage::Body,
                        Verdict::Refused { why, drain } => {
                            x.stage = Stage::Drain;
                            return Outcome::Refused { why, close: !drain };
                        }
                        Verdict::Broken(why) => return Outcome::broken(why),
                    }
                }
                Event::Data(r) if x.stage == Stage::Body => {
                    if let Err(why) = x.deliver(jobs, &input[r]) {
                        return Outcome::broken(why);
                    }
                }
                Event::Data(_) => {} // an error page, dropped
                Event::End if x.stage == Stage::Body && !x.complete() => {
                    return Outcome::broken(format!(
                        "the body ended after {} of {} bytes",
                        x.got, x.len
                    ));
                }
                Event::End => {
                    // Bytes after the response were not asked for: do not
                    // read another response from this stream.
                    let reuse = x.keep_alive && self.used == self.have;
                    self.served += 1;
                    return Outcome::Complete { reuse };
                }
            }
        }
    }
}
