//! The pool: `connections=` keep-alive HTTP/1.1 connections to the web
//! server, each a socket on the server's one Poll, as the I/O engine of the
//! `curl` backend (`aio::Remote`).
//!
//! A read becomes one or more pieces (a large read is split across idle
//! connections; small adjacent reads of different clients may be merged into
//! one request), each fetched by a range GET straight into the read's buffer.
//! A connection carries one request at a time. One that drops (or a request
//! that passes its deadline) is closed, and what it carried is retried on a
//! fresh connection, up to `RETRIES` times with growing pauses; an HTTP error
//! fails the read with EIO and one log line. A slow server delays only the
//! reads waiting for it: nothing here ever blocks the loop.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use mio::{Registry, Token};
use slab::Slab;

use super::config::Settings;
use super::conn::{Conn, Outcome};
use super::exchange::{Exchange, Job, Piece};
use super::transport::Transport;
use crate::aio::{Done, Op, Remote, Tag};

/// Retries of a request whose connection failed, and the pause before each:
/// the first at once (a kept-alive connection the server had just closed),
/// then growing, so a web server that restarts is waited for ~3 s in all.
const BACKOFF: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
];
const RETRIES: u32 = BACKOFF.len() as u32;
/// Reads of at least twice this are split across idle connections, in
/// pieces of at least this.
const SPLIT_MIN: usize = 128 * 1024;
/// Reads of at most this, adjacent and from different clients, may share one
/// request, up to `MERGE_MAX` in all.
const MERGE_PIECE: usize = 64 * 1024;
const MERGE_MAX: u64 = 256 * 1024;

pub struct Pool {
    settings: Settings,
    size: u64,
    registry: Option<Registry>,
    top: usize,
    conns: Vec<Conn>,
    jobs: Slab<Job>,
    /// Pieces waiting for a connection, oldest first.
    queue: VecDeque<Piece>,
    /// Pieces to retry once their pause is over.
    delayed: Vec<(Instant, Piece)>,
    done: Vec<Done>,
    /// Operations submitted and not yet reaped.
    in_flight: usize,
    /// The time of the last failure logged at warning level (rate limit).
    last_warning: Option<Instant>,
}

impl Pool {
    pub fn new(settings: Settings, size: u64) -> Pool {
        let conns = (0..settings.connections).map(|_| Conn::default()).collect();
        Pool {
            settings,
            size,
            registry: None,
            top: 0,
            conns,
            jobs: Slab::new(),
            queue: VecDeque::new(),
            delayed: Vec::new(),
            done: Vec::new(),
            in_flight: 0,
            last_warning: None,
        }
    }

    /// Queues a read, split into pieces for idle connections when large.
    fn read(&mut self, tag: Tag, offset: u64, buf: Vec<u8>) {
        let len = buf.len();
        let free = self
            .conns
            .iter()
            .filter(|c| c.exchange.is_none())
            .count()
            .saturating_sub(self.queue.len());
        let n = (len / SPLIT_MIN).clamp(1, free.max(1));
        let step = len.div_ceil(n).next_multiple_of(4096);
        let job = self.jobs.insert(Job {
            tag,
            buf,
            pieces: len.div_ceil(step),
            error: None,
        });
        for start in (0..len).step_by(step) {
            self.queue.push_back(Piece {
                job,
                start,
                len: step.min(len - start),
                offset: offset + start as u64,
                tries: 0,
            });
        }
    }

    /// A piece is done (`Ok`) or has failed for good; its job completes with
    /// its last piece.
    fn settle(&mut self, piece: &Piece, result: io::Result<()>) {
        let Some(job) = self.jobs.get_mut(piece.job) else {
            return;
        };
        if let Err(e) = result
            && job.error.is_none()
        {
            job.error = Some(e);
        }
        job.pieces -= 1;
        if job.pieces == 0 {
            let job = self.jobs.remove(piece.job);
            let result = job.error.map_or(Ok(()), Err);
            self.done.push(Done {
                tag: job.tag,
                result,
                buf: job.buf,
            });
        }
    }

    /// Pieces whose request failed: retried after a pause, or failed with
    /// EIO once they have had their retries.
    fn retry_or_fail(&mut self, pieces: Vec<Piece>, why: &io::Error, retry: bool, now: Instant) {
        for mut p in pieces {
            if retry && p.tries < RETRIES {
                log::debug!("curl: bytes {}-{}: {why}: retrying", p.offset, p.end() - 1);
                let at = now + BACKOFF[p.tries as usize]; // tries < RETRIES
                p.tries += 1;
                self.delayed.push((at, p));
            } else {
                self.warn(&format!("bytes {}-{}: {why}", p.offset, p.end() - 1));
                self.settle(&p, Err(io::Error::from_raw_os_error(libc::EIO)));
            }
        }
    }

    /// One line per failed request, but at most a few a second (a server
    /// gone fails every read at once): the rest at debug level.
    fn warn(&mut self, what: &str) {
        let now = Instant::now();
        match self.last_warning {
            Some(t) if now.duration_since(t) < Duration::from_millis(100) => {
                log::debug!("curl: {} {what}", self.settings.url);
            }
            _ => {
                self.last_warning = Some(now);
                log::warn!("curl: {}: {what}", self.settings.url);
            }
        }
    }

    /// Moves pieces whose pause is over to the front of the queue.
    fn wake_delayed(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.delayed.len() {
            if self.delayed[i].0 <= now {
                let (_, p) = self.delayed.swap_remove(i);
                self.queue.push_front(p);
            } else {
                i += 1;
            }
        }
    }

    /// The next queued piece and those adjacent to it that may share its request.
    fn next_request(&mut self) -> Option<Vec<Piece>> {
        let first = self.queue.pop_front()?;
        let mut pieces = vec![first];
        let mut total = first.len as u64;
        while let Some(next) = self.queue.front().copied() {
            let last = pieces[pieces.len() - 1]; // pieces is never empty
            let fits = next.offset == last.end()
                && next.job != last.job
                && next.len <= MERGE_PIECE
                && last.len <= MERGE_PIECE
                && total + next.len as u64 <= MERGE_MAX;
            if !fits {
                break;
            }
            total += next.len as u64;
            pieces.push(next);
            self.queue.pop_front();
        }
        Some(pieces)
    }

    /// Hands queued pieces to idle connections first, then opens closed ones.
    fn dispatch(&mut self, now: Instant) {
        for open in [true, false] {
            for i in 0..self.conns.len() {
                if self.queue.is_empty() {
                    return;
                }
                let c = &self.conns[i];
                let free = c.exchange.is_none() && c.link.is_some() == open;
                if free && let Some(pieces) = self.next_request() {
                    self.start(i, pieces, now);
                }
            }
        }
    }

    /// Sends a request for `pieces` on connection `i`, opening it if closed.
    fn start(&mut self, i: usize, pieces: Vec<Piece>, now: Instant) {
        if self.conns[i].link.is_none()
            && let Err(e) = self.open(i)
        {
            return self.retry_or_fail(pieces, &e, true, now);
        }
        let exchange = Exchange::new(pieces, now + self.settings.timeout);
        let (start, len) = (exchange.start, exchange.len);
        let template = &self.settings.template;
        self.conns[i].start(exchange, |out| template.get(start, len, out));
        self.pump(i);
    }

    fn open(&mut self, i: usize) -> io::Result<()> {
        let s = &self.settings;
        let registry = self.registry.as_ref().ok_or(io::ErrorKind::NotConnected)?;
        let mut link = Transport::connect(
            &s.endpoint,
            s.nodelay,
            #[cfg(feature = "tls")]
            s.tls.as_ref(),
        )?;
        link.register(registry, Token(self.top - i))?;
        self.conns[i].link = Some(link);
        self.conns[i].served = 0;
        Ok(())
    }

    fn close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if let (Some(link), Some(registry)) = (&mut c.link, &self.registry) {
            link.deregister(registry);
        }
        c.reset();
    }

    /// Moves connection `i`'s bytes and acts on how its request stands.
    fn pump(&mut self, i: usize) {
        loop {
            let outcome = self.conns[i].pump(&mut self.jobs, self.size);
            let now = Instant::now();
            match outcome {
                Outcome::Wait => return,
                Outcome::Complete { reuse } => {
                    if let Some(x) = self.conns[i].exchange.take() {
                        for p in &x.pieces {
                            self.settle(p, Ok(()));
                        }
                    }
                    if !reuse {
                        self.close(i);
                    }
                    return;
                }
                Outcome::Refused { why, close } => {
                    let pieces = self.conns[i]
                        .exchange
                        .as_mut()
                        .map(|x| std::mem::take(&mut x.pieces))
                        .unwrap_or_default();
                    let why = io::Error::other(why);
                    self.retry_or_fail(pieces, &why, false, now);
                    if close {
                        self.conns[i].exchange = None;
                        self.close(i);
                        return;
                    }
                    // Read the error's body, to keep the connection.
                }
                Outcome::Broken { why, retry } => {
                    // (An idle connection the server let go carried nothing.)
                    let pieces = self.conns[i]
                        .exchange
                        .take()
                        .map(|x| x.pieces)
                        .unwrap_or_default();
                    self.retry_or_fail(pieces, &why, retry, now);
                    self.close(i);
                    return;
                }
            }
        }
    }

    /// Requests past their deadline: their connections are closed, and what
    /// they carried retried.
    fn expire(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            let late = self.conns[i]
                .exchange
                .as_ref()
                .is_some_and(|x| x.deadline <= now);
            if late {
                let pieces = self.conns[i]
                    .exchange
                    .take()
                    .map(|x| x.pieces)
                    .unwrap_or_default();
                let secs = self.settings.timeout.as_secs();
                let why = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no response within {secs} s"),
                );
                self.retry_or_fail(pieces, &why, true, now);
                self.close(i);
            }
        }
    }
}

impl Remote for Pool {
    fn submit(&mut self, op: Op, tag: Tag) {
        self.in_flight += 1;
        let result = match op {
            Op::Read { offset, buf } if !buf.is_empty() => return self.read(tag, offset, buf),
            Op::Read { buf, .. } => {
                return self.done.push(Done {
                    tag,
                    result: Ok(()),
                    buf,
                });
            }
            // Nothing to make durable, nothing worth prefetching.
            Op::Flush | Op::Cache { .. } => Ok(()),
            // A read-only export: the server refuses these first.
            Op::Write { .. } | Op::Trim { .. } | Op::Zero { .. } => {
                Err(io::Error::from_raw_os_error(libc::EROFS))
            }
        };
        self.done.push(Done {
            tag,
            result,
            buf: Vec::new(),
        });
    }

    fn run(&mut self) {
        let now = Instant::now();
        self.expire(now);
        self.wake_delayed(now);
        self.dispatch(now);
    }

    fn reap(&mut self, out: &mut Vec<Done>) {
        self.in_flight -= self.done.len();
        out.append(&mut self.done);
    }

    fn busy(&self) -> bool {
        !self.done.is_empty()
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn attach(&mut self, registry: &Registry, top: usize) -> io::Result<()> {
        self.registry = Some(registry.try_clone()?);
        self.top = top;
        Ok(())
    }

    fn ready(&mut self, source: usize) {
        if source < self.conns.len() && self.conns[source].link.is_some() {
            self.pump(source);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let requests = self
            .conns
            .iter()
            .filter_map(|c| c.exchange.as_ref().map(|x| x.deadline));
        let retries = self.delayed.iter().map(|(at, _)| *at);
        requests.chain(retries).min()
    }
}
