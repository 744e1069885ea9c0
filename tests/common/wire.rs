//! A raw NBD client for bytes real clients never send: the socket, its
//! timeouts and the conversation. The bytes themselves are built and parsed by
//! `nbdlite::client_proto`, the client's side of the protocol, written from the
//! spec (doc/proto.md) apart from the server's `proto` module so that the two
//! cannot share a bug; this file re-exports it. Every read has a timeout: no
//! test can hang on it.
#![allow(dead_code)]

use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub use nbdlite::client_proto::*;

/// The longest message a test reads: more than any READ a test makes.
pub const MAX_MESSAGE: usize = 1 << 30;

/// An encrypted channel over the client's socket, once STARTTLS has been
/// accepted (`tests/common/tls_client.rs` has the rustls one): kept behind a
/// trait so that this file needs std only and builds without the `tls` feature.
pub trait Tunnel {
    /// Sends all of `b`, encrypted.
    fn send(&mut self, s: &mut UnixStream, b: &[u8]) -> io::Result<()>;
    /// Decrypted bytes into `b`; `Ok(0)` at the end.
    fn recv(&mut self, s: &mut UnixStream, b: &mut [u8]) -> io::Result<usize>;
}

pub struct Client {
    pub s: UnixStream,
    /// After STARTTLS: what every byte goes through (`Client::tls`).
    pub tunnel: Option<Box<dyn Tunnel>>,
    /// Extended headers negotiated: 32-byte requests, extended replies.
    pub extended: bool,
    /// Structured replies (or extended) negotiated: READ replies are chunks.
    pub structured: bool,
}

impl Client {
    /// Connects and reads the 18-byte newstyle greeting.
    pub fn connect(path: &Path) -> Client {
        let mut c = Client::connect_raw(path);
        let g = c.recv_parsed("greeting", greeting);
        assert_eq!(g, Greeting::Newstyle { flags: 3 }, "handshake flags");
        c
    }

    /// Connects without reading anything.
    pub fn connect_raw(path: &Path) -> Client {
        Client::over(UnixStream::connect(path).expect("connect"))
    }

    /// A client on a socket that is already connected (`-s` on a socketpair).
    pub fn over(s: UnixStream) -> Client {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            s,
            tunnel: None,
            extended: false,
            structured: false,
        }
    }

    /// From now on every byte goes through `t` (after STARTTLS's ACK).
    pub fn tls(&mut self, t: Box<dyn Tunnel>) {
        self.tunnel = Some(t);
    }

    /// Sends all of `b`, through the tunnel if there is one; the error is
    /// the caller's to judge (a write timeout, a closed connection).
    pub fn send_raw(&mut self, b: &[u8]) -> io::Result<()> {
        self.write_all(b)
    }

    /// Sends all of `b`, through the tunnel if there is one.
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match &mut self.tunnel {
            Some(t) => t.send(&mut self.s, b),
            None => self.s.write_all(b),
        }
    }

    /// Some bytes into `b`, through the tunnel if there is one.
    pub fn read_some(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match &mut self.tunnel {
            Some(t) => t.recv(&mut self.s, b),
            None => self.s.read(b),
        }
    }

    fn read_exact(&mut self, mut b: &mut [u8]) -> io::Result<()> {
        while !b.is_empty() {
            match self.read_some(b) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => b = &mut b[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Connects, sends flags 3 (FIXED_NEWSTYLE | NO_ZEROES).
    pub fn start(path: &Path) -> Client {
        let mut c = Client::connect(path);
        c.send(&client_flags(CFLAG_FIXED_NEWSTYLE | CFLAG_NO_ZEROES));
        c
    }

    /// Full handshake: optional SR / EH, optional base:allocation, then GO "".
    pub fn ready(path: &Path, sr: bool, eh: bool, meta: bool) -> (Client, u64, u16) {
        let mut c = Client::start(path);
        if eh {
            assert_eq!(c.opt(OPT_EH, &[])[0].kind, REP_ACK);
            c.extended = true;
            c.structured = true;
        } else if sr {
            assert_eq!(c.opt(OPT_SR, &[])[0].kind, REP_ACK);
            c.structured = true;
        }
        if meta {
            let r = c.opt(OPT_SET_META, &meta_data(b"", &[BASE_ALLOCATION]));
            assert_eq!(r.last().unwrap().kind, REP_ACK, "{r:?}");
        }
        let (size, flags) = c.go(b"");
        (c, size, flags)
    }

    pub fn send(&mut self, b: &[u8]) {
        self.write_all(b).expect("send");
    }

    /// Sends, but tolerates the server having closed the connection already.
    pub fn send_lossy(&mut self, b: &[u8]) {
        let _ = self.write_all(b);
    }

    pub fn recv(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.read_exact(&mut v)
            .unwrap_or_else(|e| panic!("recv {n} bytes: {e}"));
        v
    }

    /// Receives one `what`, as `parse` decodes it.
    #[track_caller]
    pub fn recv_parsed<T>(&mut self, what: &str, parse: impl Fn(&[u8]) -> Parse<T>) -> T {
        read_message(|b| self.read_exact(b), MAX_MESSAGE, parse)
            .unwrap_or_else(|e| panic!("recv {what}: {e}"))
    }

    /// True if the server closes the connection (EOF or reset) within `secs`,
    /// discarding anything it still sends.
    pub fn closed_by_peer(&mut self, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 4096];
        self.s
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let r = loop {
            match self.read_some(&mut buf) {
                Ok(0) => break true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if Instant::now() > deadline {
                        break false;
                    }
                }
                Err(_) => break true,
            }
        };
        self.s
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        r
    }

    pub fn send_opt(&mut self, opt: u32, data: &[u8]) {
        self.send(&option(opt, data));
    }

    pub fn recv_opt_reply(&mut self) -> OptReply {
        self.recv_parsed("option reply", option_reply)
    }

    /// Sends an option and collects replies up to the final one (ACK or error).
    pub fn opt(&mut self, opt: u32, data: &[u8]) -> Vec<OptReply> {
        self.send_opt(opt, data);
        self.opt_replies(opt)
    }

    /// The replies to option `opt`, already sent, up to the final one.
    pub fn opt_replies(&mut self, opt: u32) -> Vec<OptReply> {
        let mut v = Vec::new();
        loop {
            let r = self.recv_opt_reply();
            assert_eq!(r.opt, opt, "reply for another option");
            let last = r.is_final();
            v.push(r);
            if last {
                return v;
            }
        }
    }

    /// GO with `name`; returns the export size and flags from NBD_INFO_EXPORT.
    pub fn go(&mut self, name: &[u8]) -> (u64, u16) {
        let r = self.opt(OPT_GO, &info_data(name, &[]));
        assert_eq!(r.last().unwrap().kind, REP_ACK, "GO failed: {r:?}");
        let e = r
            .iter()
            .filter(|r| r.kind == REP_INFO)
            .find_map(|r| match info(&r.data) {
                Ok(Info::Export(e)) => Some(e),
                _ => None,
            })
            .expect("NBD_INFO_EXPORT");
        (e.size, e.flags)
    }

    /// Sends a request header (compact or extended per `self.extended`) and payload.
    pub fn request(
        &mut self,
        flags: u16,
        kind: u16,
        cookie: u64,
        offset: u64,
        len: u64,
        payload: &[u8],
    ) {
        let mut v = request(self.extended, flags, kind, cookie, offset, len);
        v.extend_from_slice(payload);
        self.send(&v);
    }

    /// Reads one reply. `read_len` is the READ length when simple replies are in
    /// use (a successful simple READ reply carries that much data).
    pub fn reply(&mut self, read_len: Option<usize>) -> Reply {
        self.recv_parsed("reply", |b| reply(b, read_len))
    }

    /// Reads replies until the one marked done; returns them all.
    pub fn replies(&mut self, read_len: Option<usize>) -> Vec<Reply> {
        let mut v = Vec::new();
        loop {
            let r = self.reply(read_len);
            let done = r.done();
            v.push(r);
            if done {
                return v;
            }
        }
    }

    /// A command without data; returns the error (0 on success).
    pub fn cmd(&mut self, flags: u16, kind: u16, offset: u64, len: u64) -> u32 {
        self.request(flags, kind, 9, offset, len, &[]);
        let rs = self.replies(None);
        rs.iter().map(Reply::errno).find(|&e| e != 0).unwrap_or(0)
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        let flags = if self.extended { F_PAYLOAD_LEN } else { 0 };
        self.request(flags, CMD_WRITE, 1, offset, data.len() as u64, data);
        let rs = self.replies(None);
        rs.iter().map(Reply::errno).find(|&e| e != 0).unwrap_or(0)
    }

    /// READ; returns the data, reassembled from chunks (holes as zeroes), or the error.
    pub fn read(&mut self, flags: u16, offset: u64, len: usize) -> Result<Vec<u8>, u32> {
        self.request(flags, CMD_READ, 2, offset, len as u64, &[]);
        if !self.structured {
            let r = self.reply(Some(len));
            return if r.error == 0 {
                Ok(r.payload)
            } else {
                Err(r.error)
            };
        }
        let mut data = vec![0xeeu8; len];
        let mut covered = 0;
        for r in self.replies(None) {
            match r.chunk() {
                Some(Chunk::Data {
                    offset: at,
                    data: d,
                }) => {
                    let i = (at - offset) as usize;
                    data[i..i + d.len()].copy_from_slice(d);
                    covered += d.len();
                }
                Some(Chunk::Hole { offset: at, len: n }) => {
                    let i = (at - offset) as usize;
                    data[i..i + n as usize].fill(0);
                    covered += n as usize;
                }
                Some(Chunk::None) => {}
                Some(Chunk::Error { errno, .. }) => return Err(errno),
                other => panic!("unexpected reply to a READ: {other:?}"),
            }
        }
        assert_eq!(covered, len, "chunks must cover the read");
        Ok(data)
    }
}

/// `count` compact READ requests of `len` bytes, cookies 0, 1, 2…, at offsets
/// `len` apart that wrap at `span`: a batch to send in one write.
pub fn read_batch(count: u64, len: u64, span: u64) -> Vec<u8> {
    (0..count)
        .flat_map(|i| request(false, 0, CMD_READ, i, i * len % span, len))
        .collect()
}

/// A fresh client can still negotiate, write and read.
#[track_caller]
pub fn still_serves(path: &Path) {
    let (mut c, _, _) = Client::ready(path, true, false, false);
    assert_eq!(c.write(0, b"alive"), 0);
    assert_eq!(c.read(0, 0, 5).unwrap(), b"alive");
}

/// Block-status descriptors of a BLOCK_STATUS or BLOCK_STATUS_EXT chunk: (length, flags).
pub fn descriptors(r: &Reply) -> Vec<(u64, u64)> {
    match r.chunk() {
        Some(Chunk::BlockStatus { extents, .. }) => extents,
        other => panic!("not a block status chunk: {other:?}"),
    }
}

/// The u16 at the start of an NBD_REP_INFO payload.
pub fn info_type(r: &OptReply) -> u16 {
    u16_at(&r.data, 0)
}
