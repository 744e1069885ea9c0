//! `--filter=stats`: nbdkit's statistics report (per operation: count, bytes,
//! time, rates, and the sizes and alignments of requests), written when the
//! server exits and whenever it gets SIGUSR1, each operation with the
//! percentiles of its latency beside (`report.rs`).
//!
//! The time of a request is from when the server took it up to its reply
//! (what its client waits for, less the network), measured once, at the
//! reply; recording it is a few adds and a histogram bucket (`op.rs`,
//! `hist.rs`). Only requests that succeed are counted, as nbdkit counts
//! them; errors get a count of their own. The report goes to the file
//! through an `Appender`, so a slow disk never stalls the loop; it replaces
//! the last one (or follows it, with `statsappend=true`).

mod hist;
mod op;
mod report;

use std::path::Path;
use std::time::Instant;

use super::appender::{self, Appender};
use super::params::Param;
use super::params::{Params, boolean};
use super::{Call, Filter};
use crate::proto::*;
use op::OpStats;

pub const PARAMS: &[Param] = &[
    Param::new("statsfile", "FILE", "where the report goes (required)"),
    Param::new(
        "statsappend",
        "BOOL",
        "append reports to FILE rather than replace it",
    ),
    Param::new(
        "statsthreshold",
        "PERCENT",
        "size breakdown of this % of requests (95; 0: none)",
    ),
];

/// The operations, in the order nbdkit's report lists them.
const OPS: [(&str, u16); 7] = [
    ("read", CMD_READ),
    ("write", CMD_WRITE),
    ("trim", CMD_TRIM),
    ("zero", CMD_WRITE_ZEROES),
    ("extents", CMD_BLOCK_STATUS),
    ("cache", CMD_CACHE),
    ("flush", CMD_FLUSH),
];

struct Stats {
    out: Appender,
    append: bool,
    /// The share of requests the size breakdown covers (0: none).
    threshold: f64,
    start: Instant,
    /// One per entry of `OPS`.
    ops: [OpStats; 7],
}

pub fn build(params: &Params) -> Result<Box<dyn Filter>, String> {
    let file = params
        .get("statsfile")
        .ok_or("statsfile=FILE is required")?;
    let append = params.parsed("statsappend", boolean)?.unwrap_or(false);
    let threshold = params.parsed("statsthreshold", percent)?.unwrap_or(95);
    let out =
        Appender::open(Path::new(file), append).map_err(|e| format!("statsfile: {file}: {e}"))?;
    Ok(Box::new(Stats {
        out,
        append,
        threshold: f64::from(threshold) / 100.0,
        start: Instant::now(),
        ops: Default::default(),
    }))
}

/// A whole percentage, 0 to 100.
fn percent(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n <= 100 => Ok(n),
        _ => Err(format!("'{s}' is not a percentage from 0 to 100")),
    }
}

fn slot(kind: u16) -> Option<usize> {
    OPS.iter().position(|&(_, k)| k == kind)
}

impl Filter for Stats {
    fn name(&self) -> &'static str {
        "stats"
    }

    fn reply(&mut self, call: &Call, errno: u32, _: Instant) {
        let Some(i) = slot(call.kind) else { return };
        let op = &mut self.ops[i];
        if errno != 0 {
            op.errors += 1;
            return;
        }
        // The loop's clock may be that of the request's own turn: the time
        // now is read, once per reply.
        let took = Instant::now().saturating_duration_since(call.started);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        op.record(call.len, call.offset, nanos, self.threshold > 0.0);
    }

    fn report(&mut self, now: Instant) {
        let ops: Vec<(&str, &OpStats)> = OPS
            .iter()
            .zip(&self.ops)
            .map(|(&(name, _), s)| (name, s))
            .collect();
        let text = report::report(
            &ops,
            now.saturating_duration_since(self.start),
            self.threshold,
        );
        if !self.append {
            self.out.restart(now);
        }
        self.out.push(text.as_bytes(), now);
        self.out.flush(now);
    }

    fn wake_at(&self) -> Option<Instant> {
        self.out.wake_at()
    }

    fn wake(&mut self, now: Instant) {
        self.out.pump(now);
    }
}

impl Drop for Stats {
    /// The server exits: the last report is written (within bounds).
    fn drop(&mut self) {
        self.out.finish(appender::FINISH);
        if self.out.lost() > 0 {
            log::warn!(
                "stats filter: {}: {} report lines could not be written",
                self.out.path().display(),
                self.out.lost()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> Params {
        Params(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn parameters() {
        let err = |kv: &[(&str, &str)]| build(&params(kv)).err().unwrap_or_default();
        assert!(err(&[]).contains("statsfile=FILE is required"));
        assert!(err(&[("statsfile", "/nonexistent/dir/x")]).contains("statsfile: /nonexistent"));
        assert!(
            err(&[("statsfile", "/dev/null"), ("statsappend", "maybe")])
                .starts_with("statsappend: ")
        );
        assert!(
            err(&[("statsfile", "/dev/null"), ("statsthreshold", "101")])
                .starts_with("statsthreshold: ")
        );
        assert_eq!(percent("0"), Ok(0));
        assert_eq!(percent("95"), Ok(95));
        assert!(percent("-1").is_err() && percent("x").is_err());
    }

    #[test]
    fn a_report_at_each_request_and_at_exit() {
        let path = std::env::temp_dir().join(format!("nbdlite-stats-{}", std::process::id()));
        let file = path.display().to_string();
        let mut f = build(&params(&[("statsfile", &file)])).expect("valid");
        let t0 = Instant::now();
        let call = |kind, len| Call {
            conn: 1,
            kind,
            flags: 0,
            offset: 4096,
            len,
            started: t0,
        };
        f.reply(&call(CMD_READ, 4096), 0, t0);
        f.reply(&call(CMD_READ, 4096), EIO, t0);
        f.reply(&call(CMD_FLUSH, 0), 0, t0);
        f.report(Instant::now());
        f.reply(&call(CMD_WRITE, 512), 0, t0);
        drop(f); // no second report: only what `report` wrote
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("total: 2 ops, "), "{text}");
        assert!(text.contains("\nread: 1 ops, "), "{text}");
        assert!(text.contains("  errors: 1\n"), "{text}");
        assert!(
            text.contains("    12 bits: 100.0% (1 reqs, 4.00 KiB total)\n"),
            "{text}"
        );
        assert!(text.contains("\nflush: 1 ops, "), "{text}");
        assert!(!text.contains("write:"), "{text}");
        let _ = std::fs::remove_file(&path);
    }
}
