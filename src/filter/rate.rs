//! `--filter=rate`: bandwidth limits, for the whole server (`rate=`) and
//! for each connection (`connection-rate=`), in bits a second, reads and
//! writes counted apart (their payloads; other requests are free). Each
//! limit is a token bucket (`bucket.rs`) that starts full with `burstiness`
//! seconds' worth; a request waits on a timer of the loop until the
//! server's bucket, then its connection's, have its bits. A rate file's
//! first line, when it changes, replaces the rate (looked at about once a
//! second, from the loop's wake; a file that is gone or unreadable leaves
//! the last rate in place).

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::bucket::Bucket;
use super::params::Param;
use super::params::{Params, bits_per_sec, duration};
use super::{Call, Conn, Filter, Verdict};
use crate::proto::*;

pub const PARAMS: &[Param] = &[
    Param::new(
        "rate",
        "BITSPERSEC",
        "limit the whole server (K, M, G: 2^10…)",
    ),
    Param::new("connection-rate", "BITSPERSEC", "limit each connection"),
    Param::new(
        "rate-file",
        "FILE",
        "the server's rate, read from FILE as it changes",
    ),
    Param::new(
        "connection-rate-file",
        "FILE",
        "each connection's rate, read from FILE as it changes",
    ),
    Param::new(
        "burstiness",
        "SECS",
        "the buckets hold this long at the rate (2.0)",
    ),
];

/// How often rate files are looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// The most of a rate file read: its first line is a number.
const FILE_MAX: u64 = 4096;

/// A read bucket and a write bucket, with one rate.
#[derive(Debug, Clone)]
struct Pair {
    read: Bucket,
    write: Bucket,
}

impl Pair {
    fn new(rate: u64, burst: f64, now: Instant) -> Pair {
        let b = Bucket::new(rate, burst, now);
        Pair {
            read: b.clone(),
            write: b,
        }
    }

    fn of(&mut self, kind: u16) -> &mut Bucket {
        match kind {
            CMD_READ => &mut self.read,
            _ => &mut self.write,
        }
    }

    /// Returns the old rate.
    fn set_rate(&mut self, rate: u64, now: Instant) -> u64 {
        self.write.set_rate(rate, now);
        self.read.set_rate(rate, now)
    }
}

/// What the filter keeps of one connection, from its first held request
/// (or, with a connection rate, its first read or write) until it closes.
#[derive(Debug, Default)]
struct Client {
    /// Its buckets, while there is a connection rate.
    buckets: Option<Pair>,
    /// Its requests still held, as (when due, bits taken from the server's
    /// buckets), reads then writes, each soonest first: given back if it
    /// goes before they run, so that a client that queues a flood of reads
    /// and leaves does not hold the others back.
    held: [VecDeque<(Instant, u64)>; 2],
}

#[derive(Debug)]
struct Rate {
    burst: f64,
    /// The whole server's buckets.
    total: Pair,
    /// Each connection's rate (0: none).
    conn_rate: u64,
    conns: HashMap<u64, Client>,
    total_file: Option<RateFile>,
    conn_file: Option<RateFile>,
    /// When the rate files are next looked at.
    next_look: Instant,
}

pub fn build(params: &Params) -> Result<Box<dyn Filter>, String> {
    let rate = |key| -> Result<u64, String> {
        if params.0.iter().filter(|(k, _)| k == key).count() > 1 {
            return Err(format!("{key} set twice on the command line"));
        }
        match params.parsed(key, bits_per_sec)? {
            Some(0) => Err(format!("{key} cannot be 0")),
            r => Ok(r.unwrap_or(0)),
        }
    };
    let (total_rate, conn_rate) = (rate("rate")?, rate("connection-rate")?);
    let burst = match params.parsed("burstiness", duration)? {
        Some(d) => d.as_secs_f64(),
        None => 2.0,
    };
    let file = |key| params.get(key).map(RateFile::new).transpose();
    let (mut total_file, mut conn_file) = (file("rate-file")?, file("connection-rate-file")?);
    let now = Instant::now();
    // A file there at start-up says the first rate.
    let first =
        |f: &mut Option<RateFile>, given| f.as_mut().and_then(RateFile::look).unwrap_or(given);
    let total_rate = first(&mut total_file, total_rate);
    let conn_rate = first(&mut conn_file, conn_rate);
    Ok(Box::new(Rate {
        burst,
        total: Pair::new(total_rate, burst, now),
        conn_rate,
        conns: HashMap::new(),
        total_file,
        conn_file,
        next_look: now + LOOK_EVERY,
    }))
}

impl Rate {
    /// A rate file said `rate` for the whole server.
    fn set_total(&mut self, rate: u64, now: Instant) {
        let old = self.total.set_rate(rate, now);
        if old != rate {
            log::info!("rate adjusted from {old} to {rate} bits/s");
        }
    }

    /// A rate file said `rate` for each connection.
    fn set_conn(&mut self, rate: u64, now: Instant) {
        let old = std::mem::replace(&mut self.conn_rate, rate);
        if old != rate {
            log::info!("connection-rate adjusted from {old} to {rate} bits/s");
        }
        for c in self.conns.values_mut() {
            match (rate, &mut c.buckets) {
                (0, b) => *b = None,
                (_, Some(pair)) => _ = pair.set_rate(rate, now),
                (_, None) => {}
            }
        }
    }
}

impl Filter for Rate {
    fn name(&self) -> &'static str {
        "rate"
    }

    fn request(&mut self, call: &mut Call, now: Instant) -> Verdict {
        if !matches!(call.kind, CMD_READ | CMD_WRITE) {
            return Verdict::Pass;
        }
        let bits = call.len.saturating_mul(8);
        // The server's bucket first, then the connection's from when that
        // one lets the request go.
        let mut at = self.total.of(call.kind).take(bits, now);
        let (limit, burst) = (self.conn_rate, self.burst);
        if limit == 0 && at <= now {
            return Verdict::Pass;
        }
        let c = self.conns.entry(call.conn).or_default();
        if limit != 0 {
            let pair = c
                .buckets
                .get_or_insert_with(|| Pair::new(limit, burst, now));
            at = pair.of(call.kind).take(bits, at);
        }
        if at <= now {
            return Verdict::Pass;
        }
        let held = &mut c.held[usize::from(call.kind != CMD_READ)];
        while held.front().is_some_and(|&(due, _)| due <= now) {
            held.pop_front();
        }
        held.push_back((at, bits));
        Verdict::Hold(at)
    }

    /// What it still held is given back to the server's buckets.
    fn closed(&mut self, c: Conn, now: Instant) {
        let Some(client) = self.conns.remove(&c.id) else {
            return;
        };
        for (kind, held) in [CMD_READ, CMD_WRITE].into_iter().zip(client.held) {
            let bucket = self.total.of(kind);
            for (_, bits) in held.into_iter().filter(|&(due, _)| due > now) {
                bucket.refund(bits, now);
            }
        }
    }

    fn wake_at(&self) -> Option<Instant> {
        (self.total_file.is_some() || self.conn_file.is_some()).then_some(self.next_look)
    }

    fn wake(&mut self, now: Instant) {
        self.next_look = now + LOOK_EVERY;
        if let Some(rate) = self.total_file.as_mut().and_then(RateFile::look) {
            self.set_total(rate, now);
        }
        if let Some(rate) = self.conn_file.as_mut().and_then(RateFile::look) {
            self.set_conn(rate, now);
        }
    }
}

/// What tells a file changed without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

/// A file whose first line is a rate (`BITSPERSEC`), read when its stamp
/// changes. The path is made absolute at start-up, as nbdkit does: a
/// server that goes into the background leaves its working directory.
#[derive(Debug)]
struct RateFile {
    path: PathBuf,
    seen: Option<Stamp>,
}

impl RateFile {
    fn new(path: &str) -> Result<RateFile, String> {
        let path = std::path::absolute(Path::new(path)).map_err(|e| format!("{path}: {e}"))?;
        Ok(RateFile { path, seen: None })
    }

    /// The rate it says, if it changed since last looked at and says one.
    /// Only a regular file is opened (opening a FIFO could wait).
    fn look(&mut self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&self.path).ok()?;
        let stamp = Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            ino: meta.ino(),
        };
        if !meta.is_file() || self.seen == Some(stamp) {
            return None;
        }
        self.seen = Some(stamp);
        let mut text = String::new();
        let file = std::fs::File::open(&self.path).ok()?;
        file.take(FILE_MAX).read_to_string(&mut text).ok()?;
        let line = text.lines().next().unwrap_or("").trim();
        bits_per_sec(line)
            .inspect_err(|e| log::warn!("{}: {e}", self.path.display()))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(kv: &[(&str, &str)]) -> Result<Box<dyn Filter>, String> {
        let p = Params(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        build(&p)
    }

    fn call(conn: u64, kind: u16, len: u64) -> Call {
        Call {
            conn,
            kind,
            flags: 0,
            offset: 0,
            len,
            started: Instant::now(),
        }
    }

    /// How long the request waits, in ms (0: it passes).
    fn wait(f: &mut Box<dyn Filter>, c: Call, now: Instant) -> u128 {
        match f.request(&mut { c }, now) {
            Verdict::Pass => 0,
            Verdict::Hold(at) => (at.duration_since(now).as_micros() + 500) / 1000,
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn values_as_nbdkit_takes_them() {
        assert!(rate(&[("rate", "1M"), ("burstiness", "0.5")]).is_ok());
        for bad in [
            vec![("rate", "0")],
            vec![("rate", "fast")],
            vec![("connection-rate", "1.5M")],
            vec![("rate", "1M"), ("rate", "2M")],
            vec![("burstiness", "-1")],
            vec![("burstiness", "x")],
        ] {
            assert!(rate(&bad).is_err(), "{bad:?}");
        }
        let e = rate(&[("rate", "1M"), ("rate", "1M")]).err().unwrap();
        assert_eq!(e, "rate set twice on the command line");
    }

    #[test]
    fn the_server_and_each_connection_are_limited() {
        let now = Instant::now();
        // 8 Kbit/s for all (1 KiB a second), 4 Kbit/s for each connection.
        let kv = [
            ("rate", "8K"),
            ("connection-rate", "4K"),
            ("burstiness", "0.25"),
        ];
        let mut f = rate(&kv).unwrap();
        // Each bucket holds a quarter second: 256 bytes for all, 128 each.
        assert_eq!(wait(&mut f, call(1, CMD_READ, 128), now), 0);
        assert_eq!(wait(&mut f, call(1, CMD_READ, 128), now), 250);
        assert_eq!(wait(&mut f, call(2, CMD_READ, 128), now), 125);
        // Writes have buckets of their own; other requests are free.
        assert_eq!(wait(&mut f, call(1, CMD_WRITE, 128), now), 0);
        assert_eq!(wait(&mut f, call(1, CMD_WRITE_ZEROES, 1 << 30), now), 0);
        // A connection that closes and comes back starts afresh.
        f.closed(Conn { id: 1 }, now);
        let later = now + Duration::from_secs(10);
        assert_eq!(wait(&mut f, call(1, CMD_READ, 128), later), 0);
    }

    #[test]
    fn a_connection_that_goes_gives_back_what_it_held() {
        let now = Instant::now();
        let mut f = rate(&[("rate", "8K"), ("burstiness", "0")]).unwrap();
        // Connection 1 queues 10 s of reads, and goes after 1 s.
        for i in 1..=10 {
            assert_eq!(wait(&mut f, call(1, CMD_READ, 1024), now), i * 1000);
        }
        let t1 = now + Duration::from_secs(1);
        f.closed(Conn { id: 1 }, t1);
        // Connection 2 waits only for its own bits.
        assert_eq!(wait(&mut f, call(2, CMD_READ, 1024), t1), 1000);
        // One that never waited leaves nothing behind.
        f.closed(Conn { id: 3 }, t1);
    }

    #[test]
    fn rate_files_replace_the_rate() {
        let dir = std::env::temp_dir().join(format!("nbdlite-rate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rate");
        std::fs::write(&file, "8K\n").unwrap();
        let path = file.to_str().unwrap();
        let mut f = rate(&[("rate", "1G"), ("rate-file", path), ("burstiness", "0")]).unwrap();
        let now = Instant::now();
        assert_eq!(
            wait(&mut f, call(1, CMD_READ, 1024), now),
            1000,
            "the file's rate"
        );
        // Rewritten as a tool would (a new file renamed over it).
        std::fs::write(dir.join("new"), "16K").unwrap();
        std::fs::rename(dir.join("new"), &file).unwrap();
        let t1 = now + Duration::from_secs(1);
        assert!(f.wake_at().is_some_and(|at| at <= t1));
        f.wake(t1);
        assert_eq!(wait(&mut f, call(1, CMD_READ, 2048), t1), 1000);
        // Gone, or nonsense: the last rate stays.
        std::fs::write(&file, "fast").unwrap();
        f.wake(t1 + Duration::from_secs(2));
        std::fs::remove_file(&file).unwrap();
        f.wake(t1 + Duration::from_secs(3));
        let t4 = t1 + Duration::from_secs(4);
        assert_eq!(wait(&mut f, call(1, CMD_READ, 2048), t4), 1000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_connection_rate_file_reaches_open_connections() {
        let dir = std::env::temp_dir().join(format!("nbdlite-crate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rate");
        let path = file.to_str().unwrap();
        let kv = [("connection-rate-file", path), ("burstiness", "0")];
        let mut f = rate(&kv).unwrap();
        let now = Instant::now();
        assert_eq!(
            wait(&mut f, call(1, CMD_READ, 1 << 20), now),
            0,
            "no file: no limit"
        );
        std::fs::write(&file, "8K").unwrap();
        f.wake(now);
        assert_eq!(wait(&mut f, call(1, CMD_READ, 1024), now), 1000);
        assert_eq!(wait(&mut f, call(2, CMD_WRITE, 1024), now), 1000);
        // Faster: connection 1's debt is paid at the new rate.
        std::fs::write(&file, "16384\n").unwrap();
        f.wake(now);
        assert_eq!(wait(&mut f, call(1, CMD_READ, 1024), now), 1000);
        std::fs::write(&file, "0").unwrap();
        f.wake(now);
        assert_eq!(
            wait(&mut f, call(1, CMD_READ, 1 << 30), now),
            0,
            "0: no limit"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
