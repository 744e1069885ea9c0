//! The results: a two-line table for people, one JSON object for scripts.
//! The JSON is written by hand (no serde): every value is a number or a string
//! we escape ourselves.

use std::fmt::Write;

use crate::args::Config;
use crate::record::Stats;
use crate::workload::Pattern;

/// Everything the report shows, computed once.
pub struct Summary {
    pub uri: String,
    /// The TLS protocol and cipher suite of the first connection, with TLS.
    pub tls: Option<String>,
    pub export_size: u64,
    pub range: u64,
    pub connections: usize,
    pub queue_depth: usize,
    pub threads: usize,
    pub size: u64,
    pub pattern: &'static str,
    /// Percent of requests that are reads.
    pub rwmix_read: u64,
    pub seconds: f64,
    pub requests: u64,
    pub reads: u64,
    pub writes: u64,
    pub iops: f64,
    pub mib_per_sec: f64,
    /// Latencies in microseconds.
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub max_us: f64,
    pub errors: u64,
}

impl Summary {
    pub fn new(cfg: &Config, export_size: u64, range: u64, s: &Stats) -> Summary {
        let seconds = s.elapsed.as_secs_f64();
        let per_sec = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };
        let us = |nanos: u64| nanos as f64 / 1000.0;
        let requests = s.hist.count();
        Summary {
            uri: cfg.uri.clone(),
            tls: None,
            export_size,
            range,
            connections: cfg.connections,
            queue_depth: cfg.queue_depth,
            threads: cfg.threads,
            size: cfg.size,
            pattern: cfg.pattern.name(),
            rwmix_read: match cfg.pattern {
                Pattern::RandRw => cfg.rwmix_read,
                p if p.writes() => 0,
                _ => 100,
            },
            seconds,
            requests,
            reads: s.reads,
            writes: s.writes,
            iops: per_sec(requests as f64),
            mib_per_sec: per_sec(s.bytes as f64 / f64::from(1 << 20)),
            mean_us: us(s.hist.mean()),
            p50_us: us(s.hist.percentile(50.0)),
            p99_us: us(s.hist.percentile(99.0)),
            p99_9_us: us(s.hist.percentile(99.9)),
            max_us: us(s.hist.max()),
            errors: s.errors,
        }
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{}: export {}, range {}, {} thread(s){}",
            self.uri,
            human(self.export_size),
            human(self.range),
            self.threads,
            self.tls
                .as_ref()
                .map_or(String::new(), |t| format!(", {t}"))
        );
        let _ = writeln!(
            t,
            "{:>5} {:>5} {:>5} {:>9} {:>7} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
            "conns",
            "qd",
            "size",
            "pattern",
            "seconds",
            "requests",
            "IOPS",
            "MiB/s",
            "p50(us)",
            "p99(us)",
            "p99.9(us)",
            "max(us)",
            "errors"
        );
        let _ = writeln!(
            t,
            "{:>5} {:>5} {:>5} {:>9} {:>7.2} {:>10} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>6}",
            self.connections,
            self.queue_depth,
            human(self.size),
            self.pattern,
            self.seconds,
            self.requests,
            self.iops,
            self.mib_per_sec,
            self.p50_us,
            self.p99_us,
            self.p99_9_us,
            self.max_us,
            self.errors
        );
        t
    }

    pub fn json(&self) -> String {
        let mut j = String::from("{");
        let mut sep = "";
        let mut field = |k: &str, v: String| {
            let _ = write!(j, "{sep}\"{k}\": {v}");
            sep = ", ";
        };
        field("uri", quote(&self.uri));
        field("tls", self.tls.as_deref().map_or("null".into(), quote));
        field("export_size", self.export_size.to_string());
        field("range", self.range.to_string());
        field("connections", self.connections.to_string());
        field("queue_depth", self.queue_depth.to_string());
        field("threads", self.threads.to_string());
        field("size", self.size.to_string());
        field("pattern", quote(self.pattern));
        field("rwmix_read", self.rwmix_read.to_string());
        field("seconds", format!("{:.3}", self.seconds));
        field("requests", self.requests.to_string());
        field("reads", self.reads.to_string());
        field("writes", self.writes.to_string());
        field("iops", format!("{:.1}", self.iops));
        field("mib_per_sec", format!("{:.2}", self.mib_per_sec));
        field("lat_mean_us", format!("{:.1}", self.mean_us));
        field("lat_p50_us", format!("{:.1}", self.p50_us));
        field("lat_p99_us", format!("{:.1}", self.p99_us));
        field("lat_p99_9_us", format!("{:.1}", self.p99_9_us));
        field("lat_max_us", format!("{:.1}", self.max_us));
        field("errors", self.errors.to_string());
        j.push_str("}\n");
        j
    }
}

/// Bytes as the size suffixes of the command line: 4096 is "4K".
pub fn human(n: u64) -> String {
    for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", n >> shift);
        }
    }
    n.to_string()
}

/// A JSON string.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(q, "\\u{:04x}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human(4096), "4K");
        assert_eq!(human(1 << 30), "1G");
        assert_eq!(human(1536), "1536");
        assert_eq!(human(512), "512");
        assert_eq!(human(0), "0");
    }

    #[test]
    fn strings() {
        assert_eq!(quote("a\"b\\c\n\u{1}é"), "\"a\\\"b\\\\c\\n\\u0001é\"");
    }
}
