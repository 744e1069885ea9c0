//! A pipelining NBD client over any stream, Unix or TCP: a batch of requests
//! goes out from one thread while the replies are read on another, in whatever
//! order the server sends them, each checked against what its request allows.
//! Its bytes are built and parsed by `nbdlite::client_proto`, through
//! `wire.rs` (include that file as `mod wire` beside this one).
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

/// Receives one `what`, as `parse` decodes it.
#[track_caller]
fn recv_parsed<T>(s: &mut impl Read, what: &str, parse: impl Fn(&[u8]) -> Parse<T>) -> T {
    read_message(|b| s.read_exact(b), MAX_MESSAGE, parse)
        .unwrap_or_else(|e| panic!("recv {what}: {e}"))
}

/// The handshake: fixed newstyle without zeroes, the style's option, GO.
pub fn negotiate(s: &mut (impl Read + Write), style: Style) {
    let g = recv_parsed(s, "greeting", greeting);
    assert!(matches!(g, Greeting::Newstyle { .. }), "{g:?}");
    let flags = client_flags(CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES);
    s.write_all(&flags).unwrap();
    match style {
        Style::Simple => {}
        Style::Structured => assert_eq!(negotiate_option(s, OPT_SR, &[]), REP_ACK),
        Style::Extended => assert_eq!(negotiate_option(s, OPT_EH, &[]), REP_ACK),
    }
    let go = negotiate_option(s, OPT_GO, &info_data(b"", &[]));
    assert_eq!(go, REP_ACK, "GO");
}

/// Sends an option; returns the kind of its final reply.
fn negotiate_option(s: &mut (impl Read + Write), opt: u32, data: &[u8]) -> u32 {
    s.write_all(&option(opt, data)).unwrap();
    loop {
        let r = recv_parsed(s, "option reply", option_reply);
        if r.is_final() {
            return r.kind;
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
        let h = request(self.extended, flags, kind, cookie, offset, len);
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
        let h = request(self.extended, flags, CMD_WRITE, cookie, offset, len);
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
        request(self.extended, 0, CMD_DISC, u64::MAX, 0, 0)
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

impl Partial {
    /// Where the `n` bytes at `at` that a chunk carries go: inside the READ
    /// and covered by no other chunk.
    #[track_caller]
    fn cover(&mut self, req: &Sent, cookie: u64, at: u64, n: u64) -> &mut [u8] {
        assert_eq!(req.kind, CMD_READ, "a data chunk for cookie {cookie}");
        assert!(
            at >= req.offset && at + n <= req.offset + req.len && n > 0,
            "chunk {at}+{n} outside READ {}+{}",
            req.offset,
            req.len
        );
        let rel = at - req.offset;
        let overlaps = self.covered.iter().any(|&(a, b)| rel < b && a < rel + n);
        assert!(!overlaps, "chunk {at}+{n} covers bytes twice");
        self.covered.push((rel, rel + n));
        &mut self.data[rel as usize..(rel + n) as usize]
    }
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
        let c = match recv_parsed(s, "reply header", reply_header) {
            ReplyHeader::Simple { error, cookie } => return Some(self.simple(s, error, cookie)),
            ReplyHeader::Chunk(c) => c,
        };
        let allowed = match self.style {
            Style::Simple => false,
            Style::Structured => !c.extended,
            Style::Extended => c.extended,
        };
        assert!(allowed, "chunk {c:?} in {:?} style", self.style);
        let payload = recv(s, c.len as usize);
        let cookie = c.cookie;
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
        match chunk(c.kind, &payload).unwrap_or_else(|e| panic!("chunk {c:?}: {e}")) {
            Chunk::None => assert!(c.done(), "NONE chunk"),
            Chunk::Data { offset, data } => {
                p.cover(&req, cookie, offset, data.len() as u64)
                    .copy_from_slice(data);
            }
            Chunk::Hole { offset, len } => p.cover(&req, cookie, offset, u64::from(len)).fill(0),
            Chunk::Error { errno, .. } => p.errno = errno,
            other => panic!("unexpected chunk {other:?}"),
        }
        if !c.done() {
            return None;
        }
        let p = self.partial.remove(&cookie).expect("just inserted");
        if req.kind == CMD_READ && p.errno == 0 {
            let covered: u64 = p.covered.iter().map(|(a, b)| b - a).sum();
            assert_eq!(covered, req.len, "chunks of READ {cookie} must cover it");
        }
        Some(self.finish(cookie, p.errno, p.data))
    }

    /// A simple reply: its request is finished (with a successful simple
    /// READ's data, which follows it).
    #[track_caller]
    fn simple(&mut self, s: &mut impl Read, errno: u32, cookie: u64) -> Finished {
        assert_ne!(
            self.style,
            Style::Extended,
            "a simple reply in extended style"
        );
        let req = self.live(cookie);
        let mut data = Vec::new();
        if req.kind == CMD_READ {
            assert_ne!(self.style, Style::Structured, "a simple reply to a READ");
            if errno == 0 {
                data = recv(s, req.len as usize);
            }
        }
        self.finish(cookie, errno, data)
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
