//! The stats filter's report, as nbdkit's stats filter writes it (a totals
//! line, then a line per kind of operation with its request size and
//! alignment breakdown), with one line more per operation: its latency
//! percentiles (and its errors, if any). Pure: counts in, text out.

use std::fmt::Write;
use std::time::Duration;

use super::op::{OpStats, Shapes};

const KIB: f64 = 1024.0;

/// "512 bytes", "1.50 KiB", "3.16 MiB", "25.13 GiB" (as nbdkit).
pub fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1024 => format!("{bytes} bytes"),
        1024..1_048_576 => format!("{:.2} KiB", b / KIB),
        1_048_576..1_073_741_824 => format!("{:.2} MiB", b / KIB / KIB),
        _ => format!("{:.2} GiB", b / KIB / KIB / KIB),
    }
}

/// Bytes per second over `nanos`, or "(n/a)" for no time at all.
fn human_rate(bytes: u64, nanos: u64) -> String {
    match nanos {
        0 => "(n/a)".into(),
        n => human_size((bytes as f64 / (n as f64 / 1e9)) as u64),
    }
}

/// The whole report: `ops` in the order shown, over `elapsed` since the start;
/// the breakdown covers `threshold` (0..=1) of the requests (0: none).
pub fn report(ops: &[(&str, &OpStats)], elapsed: Duration, threshold: f64) -> String {
    let mut out = String::new();
    let total = elapsed.as_nanos().min(u128::from(u64::MAX)) as u64;
    let count: u64 = ops.iter().map(|(_, s)| s.ops).sum();
    let bytes: u64 = ops
        .iter()
        .filter(|(name, _)| matches!(*name, "read" | "write" | "trim" | "zero"))
        .map(|(_, s)| s.bytes)
        .sum();
    let _ = writeln!(
        out,
        "total: {count} ops, {:.6} s, {}, {}/s",
        elapsed.as_secs_f64(),
        human_size(bytes),
        human_rate(bytes, total)
    );
    for (name, s) in ops.iter().filter(|(_, s)| s.ops > 0 || s.errors > 0) {
        one(&mut out, name, s, total, threshold);
    }
    out
}

/// One operation's lines.
fn one(out: &mut String, name: &str, s: &OpStats, total: u64, threshold: f64) {
    let _ = writeln!(
        out,
        "{name}: {} ops, {:.6} s, {}, {}/s op, {}/s total",
        s.ops,
        s.nanos as f64 / 1e9,
        human_size(s.bytes),
        human_rate(s.bytes, s.nanos),
        human_rate(s.bytes, total)
    );
    if s.ops > 0 {
        let us = |p: f64| s.latency.percentile(p) as f64 / 1e3;
        let _ = writeln!(
            out,
            "  latency: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
            us(50.0),
            us(99.0),
            us(99.9),
            s.latency.max() as f64 / 1e3
        );
    }
    if s.errors > 0 {
        let _ = writeln!(out, "  errors: {}", s.errors);
    }
    if let Some(shapes) = &s.shapes
        && threshold > 0.0
    {
        out.push_str("  Request size and alignment breakdown:\n");
        breakdown(out, shapes, threshold);
        out.push('\n');
    }
}

/// The size classes, most requests first, until `threshold` of them are
/// shown; the rest as "other sizes".
fn breakdown(out: &mut String, sh: &Shapes, threshold: f64) {
    let mut sizes: Vec<(usize, u64)> = (0..64)
        .map(|bits| (bits, sh.counts[bits].iter().sum::<u64>()))
        .filter(|&(_, n)| n > 0)
        .collect();
    sizes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: u64 = sizes.iter().map(|s| s.1).sum();
    let all_bytes: u64 = sh.bytes.iter().sum();
    let pct = |n: u64| n as f64 * 100.0 / total as f64;
    let to_show = (threshold * total as f64).ceil() as u64;
    let (mut shown, mut shown_bytes) = (0, 0);
    for (bits, n) in sizes {
        if shown >= to_show {
            let rest = total - shown;
            let _ = writeln!(
                out,
                "    other sizes: {:4.1}% ({rest} reqs, {} total)",
                pct(rest),
                human_size(all_bytes - shown_bytes)
            );
            return;
        }
        let _ = writeln!(
            out,
            "    {bits:2} bits: {:4.1}% ({n} reqs, {} total)",
            pct(n),
            human_size(sh.bytes[bits])
        );
        shown += n;
        shown_bytes += sh.bytes[bits];
        alignments(out, &sh.counts[bits], n, threshold);
    }
}

/// For one size class of `n` requests: how many are aligned to at least each
/// number of bits that occurs, until fewer than `1 - threshold` of them are.
fn alignments(out: &mut String, row: &[u64; 65], n: u64, threshold: f64) {
    let cutoff = ((1.0 - threshold) * n as f64) as u64;
    let pct = |c: u64| c as f64 * 100.0 / n as f64;
    // Offset 0 (index 64) is aligned to every number of bits.
    let mut at_least = n;
    for (bits, &exactly) in row[..64].iter().enumerate() {
        if exactly == 0 {
            continue;
        }
        if at_least < cutoff {
            let _ = writeln!(
                out,
                "         {bits:2}+ bit-aligned: {:4.1}% ({at_least})",
                pct(at_least)
            );
            return;
        }
        let _ = writeln!(
            out,
            "         {bits:2} bit aligned: {:5.1}% ({at_least})",
            pct(at_least)
        );
        at_least -= exactly;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_nbdkit_writes_them() {
        assert_eq!(human_size(0), "0 bytes");
        assert_eq!(human_size(1023), "1023 bytes");
        assert_eq!(human_size(1536), "1.50 KiB");
        assert_eq!(human_size(3 << 20), "3.00 MiB");
        assert_eq!(human_size(25 << 30), "25.00 GiB");
        assert_eq!(human_rate(1 << 20, 500_000_000), "2.00 MiB");
        assert_eq!(human_rate(1, 0), "(n/a)");
    }

    #[test]
    fn a_report() {
        let mut read = OpStats::default();
        // 8 reads of 4 KiB: 4 at 4 KiB-aligned offsets, 2 at 8 KiB, 1 at
        // 64 KiB, 1 at 0; and 2 of 64 KiB at offset 0.
        for off in [4096, 12288, 20480, 28672, 8192, 24576, 65536, 0] {
            read.record(4096, off, 2_000, true);
        }
        read.record(65536, 0, 10_000, true);
        read.record(65536, 0, 10_000, true);
        let mut flush = OpStats::default();
        flush.record(0, 0, 1_000, true);
        flush.errors = 1;
        let ops = [
            ("read", &read),
            ("write", &OpStats::default()),
            ("flush", &flush),
        ];
        let text = report(&ops, Duration::from_secs(2), 0.95);
        let want = "\
total: 11 ops, 2.000000 s, 160.00 KiB, 80.00 KiB/s
read: 10 ops, 0.000036 s, 160.00 KiB, 4.24 GiB/s op, 80.00 KiB/s total
  latency: p50 2.0 us, p99 10.0 us, p99.9 10.0 us, max 10.0 us
  Request size and alignment breakdown:
    12 bits: 80.0% (8 reqs, 32.00 KiB total)
         12 bit aligned: 100.0% (8)
         13 bit aligned:  50.0% (4)
         16 bit aligned:  25.0% (2)
    16 bits: 20.0% (2 reqs, 128.00 KiB total)

flush: 1 ops, 0.000001 s, 0 bytes, 0 bytes/s op, 0 bytes/s total
  latency: p50 1.0 us, p99 1.0 us, p99.9 1.0 us, max 1.0 us
  errors: 1
";
        assert_eq!(text, want);
        // A low threshold leaves the rest to "other sizes".
        let text = report(&[("read", &read)], Duration::from_secs(2), 0.5);
        assert!(
            text.contains("    other sizes: 20.0% (2 reqs, 128.00 KiB total)"),
            "{text}"
        );
        assert!(
            text.contains("         16+ bit-aligned: 25.0% (2)"),
            "{text}"
        );
    }
}
