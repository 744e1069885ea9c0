//! What a thread counts: each completion goes through `Recorder::complete`,
//! which keeps the measured `Stats` (after the warm-up) and the running
//! totals the progress line shows (from the first request on).

use std::time::{Duration, Instant};

use crate::hist::Histogram;
use crate::workload::Io;
use nbdlite::client_proto::errno_name;

/// What one thread measured; merged across threads for the report.
#[derive(Default)]
pub struct Stats {
    pub hist: Histogram,
    pub reads: u64,
    pub writes: u64,
    pub bytes: u64,
    /// Error replies, counted from the first request on (warm-up included).
    pub errors: u64,
    pub first_error: Option<String>,
    /// From the end of the warm-up to the last counted completion.
    pub elapsed: Duration,
}

impl Stats {
    pub fn merge(&mut self, o: &Stats) {
        self.hist.merge(&o.hist);
        self.reads += o.reads;
        self.writes += o.writes;
        self.bytes += o.bytes;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.elapsed = self.elapsed.max(o.elapsed);
    }
}

/// Completions since the start, warm-up included: what `--interval` reports.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
}

/// The thread-wide state a completion touches.
pub struct Recorder {
    pub stats: Stats,
    pub totals: Totals,
    /// Past the warm-up: completions count.
    pub recording: bool,
    /// Before the end: completions are replaced by new requests.
    pub issuing: bool,
    /// The clock, read once per read(2).
    pub now: Instant,
    pub last_completion: Option<Instant>,
}

impl Recorder {
    pub fn new(now: Instant, recording: bool) -> Recorder {
        Recorder {
            stats: Stats::default(),
            totals: Totals::default(),
            recording,
            issuing: true,
            now,
            last_completion: None,
        }
    }

    /// One request answered: `io` sent at `sent`, `size` bytes, `error` from
    /// the reply.
    pub fn complete(&mut self, io: Io, sent: Instant, size: u64, error: u32) {
        if error != 0 {
            self.stats.errors += 1;
            self.totals.errors += 1;
            if self.stats.first_error.is_none() {
                self.stats.first_error = Some(format!(
                    "{} at offset {} failed with error {error} ({})",
                    if io.write { "WRITE" } else { "READ" },
                    io.offset,
                    errno_name(error)
                ));
            }
            // A refusal is not I/O: it must not inflate IOPS, MiB/s or latency.
            return;
        }
        self.totals.requests += 1;
        self.totals.bytes += size;
        if !self.recording {
            return;
        }
        let nanos = self.now.saturating_duration_since(sent).as_nanos();
        self.stats
            .hist
            .record(u64::try_from(nanos).unwrap_or(u64::MAX));
        if io.write {
            self.stats.writes += 1;
        } else {
            self.stats.reads += 1;
        }
        self.stats.bytes += size;
        self.last_completion = Some(self.now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_and_errors_count_in_totals_only() {
        let t0 = Instant::now();
        let read = Io {
            write: false,
            offset: 0,
        };
        let mut r = Recorder::new(t0, false);
        r.complete(read, t0, 4096, 0);
        r.complete(read, t0, 4096, 5);
        assert_eq!((r.stats.hist.count(), r.stats.errors), (0, 1));
        r.recording = true;
        r.complete(
            Io {
                write: true,
                ..read
            },
            t0,
            4096,
            0,
        );
        assert_eq!((r.stats.writes, r.stats.bytes), (1, 4096));
        let want = Totals {
            requests: 2,
            bytes: 8192,
            errors: 1,
        };
        assert_eq!(r.totals, want);
        assert!(r.stats.first_error.unwrap().contains("READ at offset 0"));
    }
}
