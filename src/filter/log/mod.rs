//! `--filter=log`: a line per connection event and per request and its
//! reply, in nbdkit's log filter's format (`line.rs`), to a file
//! (`logfile=`), to a script (`logscript=`, `script.rs`), or both.
//!
//! The loop never waits for either: lines go to the file through an
//! `Appender` (a bounded buffer, written through io_uring; what the file does
//! not take is dropped and counted, the count written into the log as a
//! `Dropped lines=N` line once it takes lines again, and logged at SIGUSR1
//! and at exit), and scripts run one at a time from a bounded queue.
//!
//! Which reply answers which request: the filter numbers each connection's
//! requests (`id=`, as nbdkit) and finds the number again by the request the
//! reply reports (`Client::take`).

mod line;
mod script;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;
use std::time::Instant;

use super::appender::Appender;
use super::params::Param;
use super::params::{Params, boolean};
use super::{Call, Conn, Filter, Verdict};
use crate::export::Export;
use line::{Clock, Entry, Fields, Kind, Line};
use script::Scripts;

pub const PARAMS: &[Param] = &[
    Param::new(
        "logfile",
        "FILE",
        "the log: a line per event, request and reply",
    ),
    Param::new("logappend", "BOOL", "append to FILE rather than replace it"),
    Param::new(
        "logscript",
        "SCRIPT",
        "shell script run per entry ($act $type $connection $id ...)",
    ),
];

pub fn build(params: &Params) -> Result<Box<dyn Filter>, String> {
    let append = params.parsed("logappend", boolean)?.unwrap_or(false);
    let out = match params.get("logfile") {
        Some(f) => {
            Some(Appender::open(Path::new(f), append).map_err(|e| format!("logfile: {f}: {e}"))?)
        }
        None => None,
    };
    Ok(Box::new(Log {
        sinks: Sinks {
            out,
            scripts: params.get("logscript").map(Scripts::new),
            clock: Clock::default(),
            line: Line::default(),
        },
        connect: Vec::new(),
        read_only: false,
        clients: HashMap::default(),
        preconnects: 0,
        marked: 0,
        said: 0,
        fields: Vec::new(),
    }))
}

/// Where entries go.
struct Sinks {
    out: Option<Appender>,
    scripts: Option<Scripts>,
    clock: Clock,
    /// Where each line is made.
    line: Line,
}

impl Sinks {
    fn emit(&mut self, e: &Entry, now: Instant) {
        if let Some(buf) = self.out.as_mut().and_then(|o| o.line(now)) {
            let line = &mut self.line;
            line.clear();
            self.clock.stamp(now, line);
            e.write_line(line);
            match line.text() {
                Some(text) => buf.extend_from_slice(text),
                None => {
                    self.clock.stamp(now, buf);
                    e.write_line(buf);
                }
            }
        }
        if let Some(s) = &mut self.scripts {
            let text = e.script_text(s.script());
            s.push(text, now);
        }
    }
}

/// A connection's requests: how many so far, and those not yet answered.
#[derive(Default)]
struct Client {
    transactions: u64,
    open: Vec<(Call, u64)>,
}

impl Client {
    /// The id of the request whose reply reports `call`: the one that came
    /// down as `call` is; failing that (a filter below changed it on its
    /// way), the oldest of its kind taken up at the same moment, or of its
    /// kind at all.
    fn take(&mut self, call: &Call) -> Option<u64> {
        let same = |c: &Call| c.kind == call.kind && c.started == call.started;
        let i = (self.open.iter().position(|(c, _)| c == call))
            .or_else(|| self.open.iter().position(|(c, _)| same(c)))
            .or_else(|| self.open.iter().position(|(c, _)| c.kind == call.kind))?;
        Some(self.open.remove(i).1)
    }
}

struct Log {
    sinks: Sinks,
    /// The Connect entry's fields, from what clients are told (`shape`).
    connect: Vec<u8>,
    read_only: bool,
    clients: HashMap<u64, Client, BuildHasherDefault<IdHasher>>,
    /// Preconnect entries so far (their ids).
    preconnects: u64,
    /// Lines lost that the log file has been told of (`Dropped`), and that
    /// the server's log has.
    marked: u64,
    said: u64,
    /// Scratch space for an entry's fields.
    fields: Vec<u8>,
}

impl Log {
    fn print(&mut self, conn: Option<u64>, act: &'static str, now: Instant) {
        let e = Entry {
            conn,
            id: 0,
            act,
            kind: Kind::Print,
            fields: Fields::Text(&self.fields),
        };
        self.sinks.emit(&e, now);
    }

    /// Lines lost since the log file was last told, told now (if it has room).
    fn mark_lost(&mut self, now: Instant) {
        let Some(out) = &self.sinks.out else { return };
        let lost = out.lost();
        if lost > self.marked && out.has_room() {
            self.fields.clear();
            line::pair(&mut self.fields, "lines", lost - self.marked, false);
            self.marked = lost;
            self.print(None, "Dropped", now);
        }
    }

    /// Tells the server's log of lines lost and scripts dropped, if anything
    /// new went wrong since it was last told.
    fn say_troubles(&mut self) {
        if let Some(out) = &self.sinks.out
            && out.lost() > self.said
        {
            self.said = out.lost();
            log::warn!(
                "log filter: {}: {} lines dropped: the file did not take them",
                out.path().display(),
                self.said
            );
        }
        if let Some(t) = self.sinks.scripts.as_ref().and_then(Scripts::troubles) {
            log::warn!("log filter: {t}");
        }
    }
}

impl Filter for Log {
    fn name(&self) -> &'static str {
        "log"
    }

    fn shape(&mut self, export: &mut Export) {
        self.connect.clear();
        line::connect_fields(export, &mut self.connect);
        self.read_only = export.caps.read_only;
        self.fields.clear();
        // One thread serves every request in parallel: nbdkit's PARALLEL.
        self.fields.extend_from_slice(b"thread_model=3");
        self.print(None, "Ready", Instant::now());
    }

    fn open(&mut self, c: Conn, now: Instant) -> Option<Instant> {
        self.preconnects += 1;
        self.fields.clear();
        line::pair(&mut self.fields, "readonly", self.read_only.into(), false);
        let mut e = Entry {
            conn: None,
            id: self.preconnects,
            act: "Preconnect",
            kind: Kind::Enter,
            fields: Fields::Text(&self.fields),
        };
        self.sinks.emit(&e, now);
        e.kind = Kind::Leave;
        e.fields = Fields::Outcome(0);
        self.sinks.emit(&e, now);
        self.clients.insert(c.id, Client::default());
        let e = Entry {
            conn: Some(c.id),
            id: 0,
            act: "Connect",
            kind: Kind::Print,
            fields: Fields::Text(&self.connect),
        };
        self.sinks.emit(&e, now);
        None
    }

    fn closed(&mut self, c: Conn, now: Instant) {
        let n = self.clients.remove(&c.id).map_or(0, |cl| cl.transactions);
        self.fields.clear();
        line::pair(&mut self.fields, "transactions", n, false);
        self.print(Some(c.id), "Disconnect", now);
    }

    fn request(&mut self, call: &mut Call, now: Instant) -> Verdict {
        let client = self.clients.entry(call.conn).or_default();
        client.transactions += 1;
        let id = client.transactions;
        client.open.push((*call, id));
        let e = Entry {
            conn: Some(call.conn),
            id,
            act: line::act(call.kind),
            kind: Kind::Enter,
            fields: Fields::Request {
                kind: call.kind,
                flags: call.flags,
                offset: call.offset,
                len: call.len,
            },
        };
        self.sinks.emit(&e, now);
        Verdict::Pass
    }

    fn reply(&mut self, call: &Call, errno: u32, now: Instant) {
        let id = self.clients.get_mut(&call.conn).and_then(|c| c.take(call));
        let e = Entry {
            conn: Some(call.conn),
            id: id.unwrap_or(0),
            act: line::act(call.kind),
            kind: Kind::Leave,
            fields: Fields::Outcome(errno),
        };
        self.sinks.emit(&e, now);
    }

    fn report(&mut self, now: Instant) {
        self.mark_lost(now);
        if let Some(out) = &mut self.sinks.out {
            out.flush(now);
        }
        self.say_troubles();
    }

    fn wake_at(&self) -> Option<Instant> {
        let out = self.sinks.out.as_ref().and_then(Appender::wake_at);
        let scripts = self.sinks.scripts.as_ref().and_then(Scripts::wake_at);
        [out, scripts].into_iter().flatten().min()
    }

    fn wake(&mut self, now: Instant) {
        self.mark_lost(now);
        if let Some(out) = &mut self.sinks.out {
            out.pump(now);
        }
        if let Some(s) = &mut self.sinks.scripts {
            s.pump(now);
        }
    }
}

impl Drop for Log {
    /// The server exits: what is waiting is written (and the scripts run),
    /// within bounds; what was lost is said.
    fn drop(&mut self) {
        if let Some(out) = &mut self.sinks.out {
            out.finish(super::appender::FINISH);
        }
        if let Some(s) = &mut self.sinks.scripts {
            s.finish(script::FINISH);
        }
        self.say_troubles();
    }
}

/// Connection numbers are small and distinct: one multiply spreads them.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::*;

    fn call(kind: u16, offset: u64, started: Instant) -> Call {
        Call {
            conn: 1,
            kind,
            flags: 0,
            offset,
            len: 512,
            started,
        }
    }

    #[test]
    fn replies_find_their_requests() {
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_millis(1);
        let mut c = Client::default();
        let (a, b, d) = (
            call(CMD_READ, 0, t0),
            call(CMD_READ, 512, t0),
            call(CMD_READ, 0, t1),
        );
        c.open = vec![(a, 1), (b, 2), (d, 3)];
        assert_eq!(c.take(&b), Some(2), "the very request");
        let mut moved = d;
        moved.offset += 4096; // a filter below moved it
        assert_eq!(c.take(&moved), Some(3), "taken up at the same moment");
        assert_eq!(c.take(&call(CMD_READ, 9, t1)), Some(1), "of its kind");
        assert_eq!(c.take(&a), None);
    }
}
