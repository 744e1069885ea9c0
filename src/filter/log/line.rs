//! The log filter's entries, written as nbdkit's log filter writes them: in
//! the file, `2020-08-06 02:07:23.080907 connection=1 Read id=1 offset=0x0
//! count=0x200 ...` (a call), `... connection=1 ...Read id=1 return=0` (its
//! outcome), `... connection=1 Connect export="" ...` (a single event); for a
//! log script, the same as shell variables ahead of the script. Pure:
//! values in, bytes out; numbers written by hand, as this runs twice per
//! request.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::export::Export;
use crate::proto::*;
use crate::tls::TlsMode;

/// Which of nbdkit's three kinds of entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A call on its way down (the line ends " ...").
    Enter,
    /// Its outcome (the action is written "...Read").
    Leave,
    /// A single event (Ready, Connect, Disconnect).
    Print,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Enter => "ENTER",
            Kind::Leave => "LEAVE",
            Kind::Print => "PRINT",
        }
    }
}

/// What an entry says after its action and id.
#[derive(Debug, Clone, Copy)]
pub enum Fields<'a> {
    /// `key=value` pairs, space-separated (may be empty).
    Text(&'a [u8]),
    /// A request: its offset, length and flags (`request_fields`).
    Request {
        kind: u16,
        flags: u16,
        offset: u64,
        len: u64,
    },
    /// An outcome: `return=0`, or `return=-1 error=EIO`.
    Outcome(u32),
}

impl Fields<'_> {
    fn is_empty(&self) -> bool {
        match *self {
            Fields::Text(t) => t.is_empty(),
            Fields::Request { kind, .. } => kind == CMD_FLUSH,
            Fields::Outcome(_) => false,
        }
    }

    fn write(&self, out: &mut impl Put) {
        match *self {
            Fields::Text(t) => out.put(t),
            Fields::Request {
                kind,
                flags,
                offset,
                len,
            } => request_fields(kind, flags, offset, len, out),
            Fields::Outcome(errno) => outcome_fields(errno, out),
        }
    }
}

/// One entry: for a connection or not, with a transaction id or not (0).
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub conn: Option<u64>,
    pub id: u64,
    pub act: &'static str,
    pub kind: Kind,
    pub fields: Fields<'a>,
}

impl Entry<'_> {
    /// Its line in the log file, after the timestamp (`Clock::stamp`).
    pub fn write_line(&self, out: &mut impl Put) {
        if let Some(c) = self.conn {
            out.put(b" connection=");
            dec(out, c);
        }
        out.put(match self.kind {
            Kind::Leave => b" ...",
            _ => b" ",
        });
        out.put(self.act.as_bytes());
        if self.id != 0 {
            out.put(b" id=");
            dec(out, self.id);
        }
        if !self.fields.is_empty() {
            out.put(b" ");
            self.fields.write(out);
        }
        out.put(match self.kind {
            Kind::Enter => b" ...\n",
            _ => b"\n",
        });
    }

    /// The text a log script runs: its variables, then the script.
    pub fn script_text(&self, script: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + script.len());
        out.put(b"act=");
        out.put(self.act.as_bytes());
        if let Some(c) = self.conn {
            out.put(b"\nconnection=");
            dec(&mut out, c);
        }
        out.put(b"\ntype=");
        out.put(self.kind.name().as_bytes());
        if self.id != 0 {
            out.put(b"\nid=");
            dec(&mut out, self.id);
        }
        out.put(b"\n");
        self.fields.write(&mut out);
        out.put(b"\n");
        out.put(script.as_bytes());
        out
    }
}

/// Where text is written: a Vec, or a `Line` on the stack.
pub trait Put {
    fn put(&mut self, s: &[u8]);
}

impl Put for Vec<u8> {
    fn put(&mut self, s: &[u8]) {
        self.extend_from_slice(s);
    }
}

/// A line made on the stack and handed to the log's buffer in one copy: a
/// request's line is twenty small pieces, each a call and a capacity check
/// when appended to a Vec (measured: a third of the filter's time). A line
/// too long for it (a Connect line with a long export name) is marked, to be
/// made again in a Vec.
pub struct Line {
    b: [u8; 256],
    n: usize,
    full: bool,
}

impl Default for Line {
    fn default() -> Line {
        Line {
            b: [0; 256],
            n: 0,
            full: false,
        }
    }
}

impl Line {
    /// Empty again (kept, rather than made afresh: zeroing it costs more
    /// than the rest of a line).
    pub fn clear(&mut self) {
        self.n = 0;
        self.full = false;
    }

    /// The line, unless it did not fit.
    pub fn text(&self) -> Option<&[u8]> {
        (!self.full).then(|| &self.b[..self.n])
    }
}

impl Put for Line {
    #[inline]
    fn put(&mut self, s: &[u8]) {
        match self.b.get_mut(self.n..self.n + s.len()) {
            Some(to) => {
                copy_small(to, s);
                self.n += s.len();
            }
            None => self.full = true,
        }
    }
}

/// `to.copy_from_slice(from)`, without a call to memcpy for the short
/// pieces lines are made of: two overlapping fixed-size copies, which are
/// plain moves.
#[inline]
fn copy_small(to: &mut [u8], from: &[u8]) {
    let n = from.len();
    match n {
        0..4 => {
            for (t, f) in to.iter_mut().zip(from) {
                *t = *f;
            }
        }
        4..8 => {
            to[..4].copy_from_slice(&from[..4]);
            to[n - 4..].copy_from_slice(&from[n - 4..]);
        }
        8..=16 => {
            to[..8].copy_from_slice(&from[..8]);
            to[n - 8..].copy_from_slice(&from[n - 8..]);
        }
        _ => to.copy_from_slice(from),
    }
}

/// The action nbdkit's log names a command by.
pub fn act(kind: u16) -> &'static str {
    match kind {
        CMD_READ => "Read",
        CMD_WRITE => "Write",
        CMD_FLUSH => "Flush",
        CMD_TRIM => "Trim",
        CMD_WRITE_ZEROES => "Zero",
        CMD_BLOCK_STATUS => "Extents",
        CMD_CACHE => "Cache",
        _ => "Unknown",
    }
}

/// The fields of a request as nbdkit logs it: its offset and length, and
/// the flags its command takes.
pub fn request_fields(kind: u16, flags: u16, offset: u64, len: u64, out: &mut impl Put) {
    let flag = |f: u16| u64::from(flags & f != 0);
    if kind == CMD_FLUSH {
        return;
    }
    pair(out, "offset", offset, true);
    out.put(b" ");
    pair(out, "count", len, true);
    match kind {
        CMD_WRITE | CMD_TRIM => {
            out.put(b" ");
            pair(out, "fua", flag(CMD_FLAG_FUA), false);
        }
        CMD_WRITE_ZEROES => {
            out.put(b" ");
            pair(out, "trim", 1 - flag(CMD_FLAG_NO_HOLE), false);
            out.put(b" ");
            pair(out, "fua", flag(CMD_FLAG_FUA), false);
            out.put(b" ");
            pair(out, "fast", flag(CMD_FLAG_FAST_ZERO), false);
        }
        CMD_BLOCK_STATUS => {
            out.put(b" ");
            pair(out, "req_one", flag(CMD_FLAG_REQ_ONE), false);
        }
        _ => {}
    }
}

/// The Connect entry's fields: what a client of `ex` is told, as nbdkit
/// says it (zero, fua and cache: 2 for "native", 0 for none; tls: 1 when
/// TLS is required, the one case where every client has it).
pub fn connect_fields(ex: &Export, out: &mut Vec<u8>) {
    let (min, pref, max) = ex.block_sizes();
    let writable = u64::from(!ex.caps.read_only);
    let zero = writable * u64::from(ex.caps.zero);
    out.extend_from_slice(b"export=");
    shell_quote(&ex.name, out);
    let tls = u64::from(ex.tls == TlsMode::Require);
    let fields: [(&str, u64, bool); 14] = [
        ("tls", tls, false),
        ("size", ex.size, true),
        ("minsize", min.into(), true),
        ("prefsize", pref.into(), true),
        ("maxsize", max.into(), true),
        ("write", writable, false),
        ("flush", 1, false),
        ("rotational", 0, false),
        ("trim", writable, false),
        ("zero", 2 * zero, false),
        ("fua", 2 * writable, false),
        ("extents", u64::from(ex.caps.extents), false),
        ("cache", 2, false),
        ("fast_zero", zero * u64::from(ex.caps.fast_zero), false),
    ];
    for (key, v, hex_form) in fields {
        out.push(b' ');
        pair(out, key, v, hex_form);
    }
}

/// `return=0`, or `return=-1 error=EIO`: an outcome as nbdkit logs it.
pub fn outcome_fields(errno: u32, out: &mut impl Put) {
    if errno == 0 {
        out.put(b"return=0");
        return;
    }
    out.put(b"return=-1 error=");
    out.put(errno_name(errno).as_bytes());
}

/// The name nbdkit's log filter gives an NBD error.
fn errno_name(e: u32) -> &'static str {
    match e {
        EPERM => "EPERM",
        EIO => "EIO",
        ENOMEM => "ENOMEM",
        ENOSPC => "ENOSPC",
        ESHUTDOWN => "ESHUTDOWN",
        ENOTSUP => "ENOTSUP",
        EOVERFLOW => "EOVERFLOW",
        _ => "EINVAL",
    }
}

/// `key=value`, in hex (`0x1f`) or decimal.
pub fn pair(out: &mut impl Put, key: &str, v: u64, hex_form: bool) {
    out.put(key.as_bytes());
    out.put(b"=");
    match hex_form {
        true => hex(out, v),
        false => dec(out, v),
    }
}

pub fn dec(out: &mut impl Put, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.put(&buf[i..]);
}

pub fn hex(out: &mut impl Put, mut v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 18];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    buf[i - 2..i].copy_from_slice(b"0x");
    out.put(&buf[i - 2..]);
}

/// `s` as one shell word: bare if it is made only of characters the shell
/// leaves alone, else in double quotes with `"`, `\`, `$` and `` ` `` escaped
/// (nbdkit writes the empty string as `""`).
pub fn shell_quote(s: &[u8], out: &mut Vec<u8>) {
    let safe = |c: &u8| c.is_ascii_alphanumeric() || b"%+,-./:=@_".contains(c);
    if !s.is_empty() && s.iter().all(safe) {
        out.extend_from_slice(s);
        return;
    }
    out.push(b'"');
    for &c in s {
        if b"\"\\$`".contains(&c) {
            out.push(b'\\');
        }
        out.push(c);
    }
    out.push(b'"');
}

/// How long a reading of the wall clock serves to date the loop's instants:
/// a step of the system clock shows in the log within this.
const RESYNC: Duration = Duration::from_secs(1);

/// UTC timestamps, `YYYY-MM-DD HH:MM:SS.uuuuuu`, of the loop's instants (the
/// `now` every hook is given: the turn of the loop that saw the event). The
/// wall clock is read once a second, not per line; the date and time of day
/// are worked out once a second too, the microseconds every time.
#[derive(Debug, Default)]
pub struct Clock {
    /// An instant and the wall clock's reading then.
    base: Option<(Instant, Duration)>,
    second: u64,
    text: [u8; 19],
}

impl Clock {
    /// Appends the time of `now`.
    pub fn stamp(&mut self, now: Instant, out: &mut impl Put) {
        let (at, wall) = match self.base {
            Some((at, wall)) if now.saturating_duration_since(at) < RESYNC => (at, wall),
            _ => {
                let wall = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                *self.base.insert((Instant::now(), wall))
            }
        };
        let t = match now.checked_duration_since(at) {
            Some(d) => wall + d,
            None => wall.saturating_sub(at - now),
        };
        self.stamp_at(t.as_secs(), t.subsec_micros(), out);
    }

    pub fn stamp_at(&mut self, secs: u64, micros: u32, out: &mut impl Put) {
        if secs != self.second || self.text[0] == 0 {
            self.second = secs;
            self.text = civil(secs);
        }
        let mut t = [b'.'; 26];
        t[..19].copy_from_slice(&self.text);
        let mut v = micros;
        for d in t[20..].iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.put(&t);
    }
}

/// `YYYY-MM-DD HH:MM:SS` for seconds since 1970 (UTC), by the days-to-civil
/// arithmetic of the proleptic Gregorian calendar (eras of 400 years).
fn civil(secs: u64) -> [u8; 19] {
    let days = (secs / 86400) as i64;
    let tod = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut out = *b"0000-00-00 00:00:00";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y.clamp(0, 9999) as u64);
    put(5, 2, m as u64);
    put(8, 2, d as u64);
    put(11, 2, tod / 3600);
    put(14, 2, tod / 60 % 60);
    put(17, 2, tod % 60);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).expect("ascii")
    }

    #[test]
    fn numbers() {
        assert_eq!(text(|o| hex(o, 0)), "0x0");
        assert_eq!(text(|o| hex(o, 0x200)), "0x200");
        assert_eq!(text(|o| hex(o, u64::MAX)), "0xffffffffffffffff");
        assert_eq!(text(|o| dec(o, 0)), "0");
        assert_eq!(text(|o| dec(o, 1234567890)), "1234567890");
        assert_eq!(text(|o| dec(o, u64::MAX)), u64::MAX.to_string());
    }

    #[test]
    fn timestamps() {
        let mut c = Clock::default();
        assert_eq!(text(|o| c.stamp_at(0, 5, o)), "1970-01-01 00:00:00.000005");
        // 2020-08-06 02:07:23 UTC, nbdkit's manual's example.
        assert_eq!(
            text(|o| c.stamp_at(1_596_679_643, 80_415, o)),
            "2020-08-06 02:07:23.080415"
        );
        assert_eq!(
            text(|o| c.stamp_at(951_782_400, 0, o)),
            "2000-02-29 00:00:00.000000"
        );
        assert_eq!(
            text(|o| c.stamp_at(4_102_444_799, 999_999, o)),
            "2099-12-31 23:59:59.999999"
        );
        let t0 = Instant::now();
        let a = text(|o| c.stamp(t0, o));
        let b = text(|o| c.stamp(t0 + Duration::from_millis(1500), o));
        let before = text(|o| c.stamp(t0, o));
        assert_eq!((a.len(), b.len()), (26, 26), "{a} {b}");
        assert!(a < b && before <= b, "{a} {b} {before}");
    }

    fn line(e: &Entry) -> String {
        text(|o| {
            o.extend_from_slice(b"TS");
            e.write_line(o)
        })
    }

    #[test]
    fn lines_as_nbdkit_writes_them() {
        let e = Entry {
            conn: Some(1),
            id: 1,
            act: act(CMD_READ),
            kind: Kind::Enter,
            fields: Fields::Request {
                kind: CMD_READ,
                flags: 0,
                offset: 0,
                len: 0x200,
            },
        };
        assert_eq!(
            line(&e),
            "TS connection=1 Read id=1 offset=0x0 count=0x200 ...\n"
        );
        let e = Entry {
            kind: Kind::Leave,
            fields: Fields::Outcome(EIO),
            ..e
        };
        assert_eq!(
            line(&e),
            "TS connection=1 ...Read id=1 return=-1 error=EIO\n"
        );
        let ready = Entry {
            conn: None,
            id: 0,
            act: "Ready",
            kind: Kind::Print,
            fields: Fields::Text(b"thread_model=3"),
        };
        assert_eq!(line(&ready), "TS Ready thread_model=3\n");
        let flush = Entry {
            conn: Some(2),
            id: 7,
            act: "Flush",
            kind: Kind::Enter,
            fields: Fields::Request {
                kind: CMD_FLUSH,
                flags: 0,
                offset: 0,
                len: 0,
            },
        };
        assert_eq!(line(&flush), "TS connection=2 Flush id=7 ...\n");
        assert_eq!(
            String::from_utf8(e.script_text("echo $act")).expect("ascii"),
            "act=Read\nconnection=1\ntype=LEAVE\nid=1\nreturn=-1 error=EIO\necho $act"
        );
    }

    #[test]
    fn each_command_s_fields() {
        let f = |kind, flags| {
            let mut v = Vec::new();
            request_fields(kind, flags, 0x1000, 0x10, &mut v);
            format!("{} {}", act(kind), String::from_utf8(v).expect("ascii"))
        };
        assert_eq!(
            f(CMD_WRITE, CMD_FLAG_FUA),
            "Write offset=0x1000 count=0x10 fua=1"
        );
        assert_eq!(f(CMD_TRIM, 0), "Trim offset=0x1000 count=0x10 fua=0");
        assert_eq!(
            f(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO),
            "Zero offset=0x1000 count=0x10 trim=0 fua=0 fast=1"
        );
        assert_eq!(
            f(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE),
            "Extents offset=0x1000 count=0x10 req_one=1"
        );
        assert_eq!(f(CMD_CACHE, 0), "Cache offset=0x1000 count=0x10");
        assert_eq!(f(CMD_FLUSH, 0), "Flush ");
    }

    #[test]
    fn connect_says_what_clients_are_told() {
        let ex = crate::export::test_export(false, 1);
        assert_eq!(
            text(|o| connect_fields(&ex, o)),
            "export=disk tls=0 size=0x100000 minsize=0x1 prefsize=0x1000 maxsize=0x2000000 \
             write=1 flush=1 rotational=0 trim=1 zero=2 fua=2 extents=1 cache=2 fast_zero=1"
        );
        let ro = crate::export::test_export(true, 512);
        let t = text(|o| connect_fields(&ro, o));
        assert!(t.contains("minsize=0x200 "), "{t}");
        assert!(
            t.contains(" write=0 flush=1 rotational=0 trim=0 zero=0 fua=0 "),
            "{t}"
        );
    }

    #[test]
    fn shell_words() {
        assert_eq!(text(|o| shell_quote(b"", o)), "\"\"");
        assert_eq!(text(|o| shell_quote(b"disk-1.img", o)), "disk-1.img");
        assert_eq!(text(|o| shell_quote(b"a b$c\"", o)), "\"a b\\$c\\\"\"");
    }
}
