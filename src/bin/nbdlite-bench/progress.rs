//! The progress line: every interval (each second on a terminal, or
//! `--interval SECS`), one line on stderr with the IOPS, MiB/s and errors of
//! the interval just past. The event loops publish their running totals in
//! slots of their own (plain stores, no shared counter to fight over); a
//! thread that sleeps between lines sums them.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::record::Totals;

/// One event loop's running totals, on a cache line of its own.
#[derive(Default)]
#[repr(align(64))]
pub struct Slot {
    requests: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

impl Slot {
    pub fn publish(&self, t: &Totals) {
        self.requests.store(t.requests, Ordering::Relaxed);
        self.bytes.store(t.bytes, Ordering::Relaxed);
        self.errors.store(t.errors, Ordering::Relaxed);
    }
}

/// What the progress thread reads: a slot per event loop.
pub struct Board {
    pub slots: Vec<Slot>,
}

impl Board {
    pub fn new(threads: usize) -> Board {
        Board {
            slots: (0..threads).map(|_| Slot::default()).collect(),
        }
    }

    fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for s in &self.slots {
            t.requests += s.requests.load(Ordering::Relaxed);
            t.bytes += s.bytes.load(Ordering::Relaxed);
            t.errors += s.errors.load(Ordering::Relaxed);
        }
        t
    }
}

/// Prints a line every `every` until `done` is raised (and this thread
/// unparked). The first line comes one interval after `start`.
pub fn report(board: &Board, start: Instant, every: Duration, warmup: Duration, done: &AtomicBool) {
    let mut last = Totals::default();
    let mut at = start;
    loop {
        let next = at + every;
        while !done.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::park_timeout(next.saturating_duration_since(Instant::now()));
        }
        if done.load(Ordering::Relaxed) {
            return;
        }
        let now = board.totals();
        let line = line(next - start, warmup, every, &last, &now);
        // A closed stderr is no reason to stop the run.
        let _ = writeln!(std::io::stderr().lock(), "{line}");
        (last, at) = (now, next);
    }
}

/// `   3.0s   41234 IOPS   161.1 MiB/s   0 errors` (tagged during the warm-up).
fn line(
    elapsed: Duration,
    warmup: Duration,
    every: Duration,
    last: &Totals,
    now: &Totals,
) -> String {
    let secs = every.as_secs_f64();
    let iops = (now.requests - last.requests) as f64 / secs;
    let mib = (now.bytes - last.bytes) as f64 / secs / f64::from(1 << 20);
    let phase = if elapsed <= warmup { " (warm-up)" } else { "" };
    format!(
        "{:>7.1}s {iops:>10.0} IOPS {mib:>9.1} MiB/s {:>6} errors{phase}",
        elapsed.as_secs_f64(),
        now.errors
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval() {
        let last = Totals {
            requests: 100,
            bytes: 100 << 12,
            errors: 0,
        };
        let now = Totals {
            requests: 100 + 2048,
            bytes: (100 + 2048) << 12,
            errors: 3,
        };
        let s = Duration::from_secs(1);
        let l = line(2 * s, Duration::ZERO, 2 * s, &last, &now);
        assert_eq!(l, "    2.0s       1024 IOPS       4.0 MiB/s      3 errors");
        assert!(line(s, s, s, &last, &now).ends_with("(warm-up)"));
    }

    #[test]
    fn stops_when_told() {
        let board = Board::new(2);
        board.slots[1].publish(&Totals {
            requests: 5,
            bytes: 7,
            errors: 1,
        });
        assert_eq!(board.totals().requests, 5);
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                report(
                    &board,
                    Instant::now(),
                    Duration::from_secs(3600),
                    Duration::ZERO,
                    &done,
                )
            });
            done.store(true, Ordering::Relaxed);
            h.thread().unpark();
        });
    }
}
