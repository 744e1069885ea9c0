//! The event loop: one mio Poll over a set of connections (`conn.rs`), each
//! keeping its queue depth of requests in flight, through the phases of a
//! run: warm-up, measuring, and draining what is still in flight.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use nbdlite::error::plain;

use crate::conn::Conn;
use crate::progress;
use crate::record::{Recorder, Stats};
use crate::workload::Plan;

/// Bytes read per read(2) into the thread's scratch buffer (plaintext replies,
/// or TLS records).
const SCRATCH: usize = 256 * 1024;
/// How long requests still in flight at the end may take to come back.
const DRAIN: Duration = Duration::from_secs(10);
/// Longest sleep in poll, so a failure on another thread is noticed soon.
const TICK: Duration = Duration::from_millis(50);

/// Why a thread stopped early.
pub enum Failure {
    /// Another thread failed and said so; this one just stopped.
    Stopped,
    Error(String),
}

/// Runs the plan on `conns` until the time is up and every request is answered.
/// `stop` is raised by whichever thread fails first.
/// Its running totals go to `board` as it goes, for the progress line.
pub fn run(
    mut conns: Vec<Conn>,
    plan: &Plan,
    stop: &AtomicBool,
    board: &progress::Slot,
) -> Result<Stats, Failure> {
    let result = drive(&mut conns, plan, stop, board);
    if result.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    for c in &mut conns {
        c.disconnect();
    }
    result
}

fn drive(
    conns: &mut [Conn],
    plan: &Plan,
    stop: &AtomicBool,
    board: &progress::Slot,
) -> Result<Stats, Failure> {
    let err = Failure::Error;
    let mut poll = Poll::new().map_err(|e| err(format!("epoll: {}", plain(&e))))?;
    for (i, c) in conns.iter_mut().enumerate() {
        poll.registry()
            .register(
                &mut c.stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| err(c.fail(format_args!("epoll: {}", plain(&e)))))?;
    }
    let start = Instant::now();
    let mut clock = Clock::new(start, plan);
    let mut rec = Recorder::new(start, plan.warmup.is_zero());
    for c in conns.iter_mut() {
        c.fill(plan.size, start);
        c.flush(plan.payload).map_err(err)?;
    }
    let mut scratch = vec![0u8; SCRATCH];
    let mut events = Events::with_capacity(1024);
    // Connections that ended their turn with more to read.
    let mut again: Vec<usize> = Vec::new();
    while let Some(next) = clock.tick(&mut rec, conns)? {
        if stop.load(Ordering::Relaxed) {
            return Err(Failure::Stopped);
        }
        let now = Instant::now();
        let timeout = if again.is_empty() {
            next.saturating_duration_since(now).min(TICK)
        } else {
            Duration::ZERO
        };
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err(format!("epoll_wait: {}", plain(&e)))),
        }
        let pending = std::mem::take(&mut again);
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(c) = conns.get_mut(i) else {
                continue;
            };
            c.hup |= ev.is_read_closed() || ev.is_error();
            if (ev.is_readable() || c.hup)
                && c.on_readable(&mut scratch, &mut rec, plan).map_err(err)?
            {
                again.push(i);
            }
            if ev.is_writable() {
                c.flush(plan.payload).map_err(err)?;
            }
        }
        for i in pending {
            if conns[i]
                .on_readable(&mut scratch, &mut rec, plan)
                .map_err(err)?
            {
                again.push(i);
            }
        }
        board.publish(&rec.totals);
    }
    let last = rec
        .last_completion
        .unwrap_or(clock.stopped_at)
        .max(clock.stopped_at);
    rec.stats.elapsed = last.saturating_duration_since(clock.measure);
    Ok(rec.stats)
}

/// The phases of a run: warm-up, measuring, draining what is still in flight.
struct Clock {
    measure: Instant,
    end: Instant,
    /// When new requests stopped (`end`, or just after).
    stopped_at: Instant,
}

impl Clock {
    fn new(start: Instant, plan: &Plan) -> Clock {
        let measure = start + plan.warmup;
        let end = measure + plan.run;
        Clock {
            measure,
            end,
            stopped_at: end,
        }
    }

    /// Moves `rec` to the phase it is in now. Returns the next moment that
    /// matters, or `None` once the run is over and every request answered.
    fn tick(&mut self, rec: &mut Recorder, conns: &[Conn]) -> Result<Option<Instant>, Failure> {
        let now = Instant::now();
        if !rec.recording && now >= self.measure {
            rec.recording = true;
        }
        if rec.issuing && now >= self.end {
            rec.issuing = false;
            self.stopped_at = now;
        }
        if rec.issuing {
            return Ok(Some(if rec.recording {
                self.end
            } else {
                self.measure
            }));
        }
        let left: usize = conns.iter().map(Conn::in_flight).sum();
        if left == 0 {
            return Ok(None);
        }
        if now >= self.stopped_at + DRAIN {
            return Err(Failure::Error(format!(
                "{left} request(s) unanswered {}s after the end of the run",
                DRAIN.as_secs()
            )));
        }
        Ok(Some(self.stopped_at + DRAIN))
    }
}
