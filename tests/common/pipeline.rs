//! A pipelining NBD client over any stream, Unix or TCP: a batch of requests
//! goes out from one thread while the replies are read on another, in whatever
//! order the server sends them, each checked against what its request allows.
//! Written from the spec, like `wire.rs`, whose constants and request encoder
//! it uses (include that file as `mod wire` beside this one).
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::wire::*;

/// How long any read or write on a pipelined stream may wait.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The reply style a client negotiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Simple,
    Structured,
    Extended,
}

pub const STYLES: [Style; 3] = [Style::Simple, Style::Structured, Style::Extended];

/// A stream whose two directions two threads can use at once.
pub trait Stream: Read + Write + Send + 'static {
    fn duplicate(&self) -> Self;
    fn shut(&self, how: Shutdown);
}

impl Stream for UnixStream {
    fn duplicate(&self) -> Self {
        self.try_clone().expect("clone a Unix stream")
    }
    fn shut(&self, how: Shutdown) {
        let _ = self.shutdown(how);
    }
}

impl Stream for TcpStream {
    fn duplicate(&self) -> Self {
        self.try_clone().expect("clone a TCP stream")
    }
    fn shut(&self, how: Shutdown) {
        let _ = self.shutdown(how);
    }
}

/// A negotiated connection on a Unix socket.
pub fn unix(path: &Path, style: Style) -> UnixStream {
    let mut s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    negotiate(&mut s, style);
    s
}

/// A negotiated connection to 127.0.0.1:`port`.
pub fn tcp(port: u16, style: Style) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    negotiate(&mut s, style);
    s
}

fn recv(s: &mut impl Read, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v)
        .unwrap_or_else(|e| panic!("recv {n} bytes: {e}"));
    v
}

/// The handshake: fixed newstyle without zeroes, the style's option, GO.
pub fn negotiate(s: &mut (impl Read + Write), style: Style) {
    let g = recv(s, 18);
    assert_eq!((u64_at(&g, 0), u64_at(&g, 8)), (NBDMAGIC, IHAVEOPT));
    s.write_all(&3u32.to_be_bytes()).unwrap();
    match style {
        Style::Simple => {}
        Style::Structured => assert_eq!(option(s, OPT_SR, &[]), REP_ACK),
        Style::Extended => assert_eq!(option(s, OPT_EH, &[]), REP_ACK),
    }
    assert_eq!(option(s, OPT_GO, &info_data(b"", &[])), REP_ACK, "GO");
}

/// Sends an option; returns the kind of its final reply.
fn option(s: &mut (impl Read + Write), opt: u32, data: &[u8]) -> u32 {
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
    loop {
        let h = recv(s, 20);
        assert_eq!(u64_at(&h, 0), REPLY_MAGIC);
        recv(s, u32_at(&h, 16) as usize);
        let kind = u32_at(&h, 12);
        if kind == REP_ACK || kind & 0x8000_0000 != 0 {
            return kind;
        }
    }
}

/// What a pipelined request was, for checking its reply.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub kind: u16,
    pub offset: u64,
    pub len: u64,
}

/// A batch of requests, encoded, and what each cookie asked.
#[derive(Default)]
pub struct Batch {
    pub bytes: Vec<u8>,
    pub sent: HashMap<u64, Sent>,
    extended: bool,
}

impl Batch {
    pub fn new(style: Style) -> Batch {
        Batch {
            extended: style == Style::Extended,
            ..Batch::default()
        }
    }

    /// Adds a request without payload (READ, FLUSH, WRITE_ZEROES, TRIM...).
    pub fn cmd(&mut self, flags: u16, kind: u16, cookie: u64, offset: u64, len: u64) {
        let h = request_bytes(self.extended, flags, kind, cookie, offset, len);
        self.bytes.extend_from_slice(&h);
        self.note(kind, cookie, offset, len);
    }

    pub fn write(&mut self, flags: u16, cookie: u64, offset: u64, data: &[u8]) {
        let flags = if self.extended {
            flags | F_PAYLOAD_LEN
        } else {
            flags
        };
        let len = data.len() as u64;
        let h = request_bytes(self.extended, flags, CMD_WRITE, cookie, offset, len);
        self.bytes.extend_from_slice(&h);
        self.bytes.extend_from_slice(data);
        self.note(CMD_WRITE, cookie, offset, len);
    }

    fn note(&mut self, kind: u16, cookie: u64, offset: u64, len: u64) {
        assert!(
            self.extended || len <= u32::MAX as u64,
            "a compact request cannot carry length {len}"
        );
        let old = self.sent.insert(cookie, Sent { kind, offset, len });
        assert!(old.is_none(), "cookie {cookie} used twice");
    }

    /// The DISC request, to send after the batch.
    pub fn disc(&self) -> Vec<u8> {
        request_bytes(self.extended, 0, CMD_DISC, u64::MAX, 0, 0)
    }
}

/// A request whose last reply has come.
#[derive(Debug)]
pub struct Finished {
    pub cookie: u64,
    pub errno: u32,
    /// A successful READ's data, reassembled.
    pub data: Vec<u8>,
    /// When its last reply came.
    pub at: Instant,
}

/// A READ's reply so far.
struct Partial {
    data: Vec<u8>,
    /// Byte ranges (relative to the READ's offset) that chunks covered.
    covered: Vec<(u64, u64)>,
    errno: u32,
}

/// Reads the replies to a batch and checks what every reply must be, whatever
/// order they come in: a cookie we sent and that is not finished; the reply
/// magic the style allows (structured: simple replies only for requests other
/// than READ; extended: extended chunks only); data chunks only for READs,
/// inside the READ's range and covering each byte at most once, all of it on
/// success; a chunk marked done last; nothing more for that cookie after it.
pub struct Inbox<'a> {
    style: Style,
    sent: &'a HashMap<u64, Sent>,
    partial: HashMap<u64, Partial>,
    finished: HashSet<u64>,
}

impl<'a> Inbox<'a> {
    pub fn new(style: Style, sent: &'a HashMap<u64, Sent>) -> Inbox<'a> {
        Inbox {
            style,
            sent,
            partial: HashMap::new(),
            finished: HashSet::new(),
        }
    }

    /// Every request has its final reply.
    pub fn all_finished(&self) -> bool {
        self.finished.len() == self.sent.len()
    }

    /// Reads replies until one more request is finished.
    #[track_caller]
    pub fn next(&mut self, s: &mut impl Read) -> Finished {
        loop {
            if let Some(f) = self.one(s) {
                return f;
            }
        }
    }

    /// Reads every outstanding reply; returns them in the order they finished.
    #[track_caller]
    pub fn rest(&mut self, s: &mut impl Read) -> Vec<Finished> {
        let mut v = Vec::new();
        while !self.all_finished() {
            v.push(self.next(s));
        }
        v
    }

    /// Reads one reply (simple, or one chunk); Some when it finished a request.
    #[track_caller]
    fn one(&mut self, s: &mut impl Read) -> Option<Finished> {
        let magic = u32_at(&recv(s, 4), 0);
        let allowed = match self.style {
            Style::Simple => magic == SIMPLE,
            Style::Structured => magic == SIMPLE || magic == STRUCTURED,
            Style::Extended => magic == EXTENDED,
        };
        assert!(allowed, "reply magic {magic:#x} in {:?} style", self.style);
        if magic == SIMPLE {
            let h = recv(s, 12);
            let (errno, cookie) = (u32_at(&h, 0), u64_at(&h, 4));
            let req = self.live(cookie);
            let mut data = Vec::new();
            if req.kind == CMD_READ {
                assert_ne!(self.style, Style::Structured, "a simple reply to a READ");
                if errno == 0 {
                    data = recv(s, req.len as usize);
                }
            }
            return Some(self.finish(cookie, errno, data));
        }
        let ext = magic == EXTENDED;
        let h = recv(s, if ext { 28 } else { 16 });
        let (flags, kind, cookie) = (u16_at(&h, 0), u16_at(&h, 2), u64_at(&h, 4));
        let len = if ext {
            u64_at(&h, 20)
        } else {
            u32_at(&h, 12) as u64
        };
        let payload = recv(s, len as usize);
        let req = self.live(cookie);
        let p = self.partial.entry(cookie).or_insert_with(|| Partial {
            data: vec![
                0xee;
                if req.kind == CMD_READ {
                    req.len as usize
                } else {
                    0
                }
            ],
            covered: Vec::new(),
            errno: 0,
        });
        match kind {
            T_NONE => assert!(payload.is_empty() && flags & 1 != 0, "NONE chunk"),
            T_DATA | T_HOLE => {
                assert_eq!(req.kind, CMD_READ, "a data chunk for cookie {cookie}");
                let at = u64_at(&payload, 0);
                let n = if kind == T_DATA {
                    payload.len() as u64 - 8
                } else {
                    u32_at(&payload, 8) as u64
                };
                assert!(
                    at >= req.offset && at + n <= req.offset + req.len && n > 0,
                    "chunk {at}+{n} outside READ {}+{}",
                    req.offset,
                    req.len
                );
                let rel = at - req.offset;
                let overlaps = p.covered.iter().any(|&(a, b)| rel < b && a < rel + n);
                assert!(!overlaps, "chunk {at}+{n} covers bytes twice");
                p.covered.push((rel, rel + n));
                let dst = &mut p.data[rel as usize..(rel + n) as usize];
                match kind {
                    T_DATA => dst.copy_from_slice(&payload[8..]),
                    _ => dst.fill(0),
                }
            }
            k if k & 0x8000 != 0 => {
                assert!(payload.len() >= 6, "error chunk too short");
                let errno = u32_at(&payload, 0);
                assert_ne!(errno, 0, "error chunk with errno 0");
                p.errno = errno;
            }
            k => panic!("unexpected chunk type {k:#x}"),
        }
        if flags & 1 == 0 {
            return None;
        }
        let p = self.partial.remove(&cookie).expect("just inserted");
        if req.kind == CMD_READ && p.errno == 0 {
            let covered: u64 = p.covered.iter().map(|(a, b)| b - a).sum();
            assert_eq!(covered, req.len, "chunks of READ {cookie} must cover it");
        }
        Some(self.finish(cookie, p.errno, p.data))
    }

    /// The request behind `cookie`, which must be ours and not finished.
    #[track_caller]
    fn live(&self, cookie: u64) -> Sent {
        assert!(
            !self.finished.contains(&cookie),
            "a reply for cookie {cookie} after its last one"
        );
        *self
            .sent
            .get(&cookie)
            .unwrap_or_else(|| panic!("a reply for cookie {cookie}, never sent"))
    }

    fn finish(&mut self, cookie: u64, errno: u32, data: Vec<u8>) -> Finished {
        self.finished.insert(cookie);
        Finished {
            cookie,
            errno,
            data,
            at: Instant::now(),
        }
    }
}

/// True once the peer has closed the stream (EOF or reset) with nothing more
/// to say: any byte that arrives first is a failure.
#[track_caller]
pub fn expect_closed(s: &mut impl Read) {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(_) => panic!("bytes after the last reply"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("waiting for the server to close: {e}"),
    }
}

/// Deterministic bytes for block `i` written in round `round`: any block read
/// back shows which write it came from.
pub fn block_data(i: u64, round: u64, len: usize) -> Vec<u8> {
    let mut x = ((i << 32) ^ round).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Latencies of READs of `offset` (which must read as `expect`) that `reader`
/// makes back to back while `busy` runs on another thread: from the moment
/// `busy` says (by calling the function it is given) that its request is on
/// its way, until it returns. Returns those latencies and how long `busy`
/// took.
pub fn reads_beside<S: Stream>(
    reader: &mut S,
    style: Style,
    offset: u64,
    expect: &[u8],
    busy: impl FnOnce(&dyn Fn()) + Send + 'static,
) -> (Vec<Duration>, Duration) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    let done = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    /// Says "done" however the busy thread ends, a failed assert included,
    /// so that the reader never outlives it.
    struct Done(Arc<AtomicBool>);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let flag = Done(done.clone());
    let worker = std::thread::spawn(move || {
        let _flag = flag;
        let t0 = Instant::now();
        busy(&|| {
            let _ = tx.send(());
        });
        t0.elapsed()
    });
    rx.recv_timeout(IO_TIMEOUT)
        .expect("the busy request was sent");
    let mut lat = Vec::new();
    let mut cookie = 0;
    while !done.load(Ordering::SeqCst) {
        cookie += 1;
        let mut b = Batch::new(style);
        b.cmd(0, CMD_READ, cookie, offset, expect.len() as u64);
        let t = Instant::now();
        reader.write_all(&b.bytes).expect("send READ");
        let f = Inbox::new(style, &b.sent).next(reader);
        let took = t.elapsed();
        assert_eq!(f.errno, 0, "READ failed");
        assert!(f.data == expect, "READ returned the wrong data");
        // Every one was sent while the busy request ran: the one that waited
        // for it to end, if any, shows the stall.
        lat.push(took);
    }
    let took = worker.join().expect("the busy request failed");
    (lat, took)
}

/// "n reads, p50 …, p99 …, max …" of a set of latencies.
pub fn summary(lat: &[Duration]) -> String {
    if lat.is_empty() {
        return "no reads overlapped it".into();
    }
    let mut v = lat.to_vec();
    v.sort();
    let pct = |p: usize| v[(v.len() - 1) * p / 100];
    format!(
        "{} reads, p50 {:?}, p99 {:?}, max {:?}",
        v.len(),
        pct(50),
        pct(99),
        v[v.len() - 1]
    )
}
