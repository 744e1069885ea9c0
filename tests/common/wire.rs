//! A raw NBD client for bytes real clients never send, written from the spec
//! (doc/proto.md) and kept apart from the server's `proto` module so that the
//! two cannot share a bug. Every read has a timeout: no test can hang on it.
#![allow(dead_code)]

use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST: u32 = 0x2560_9513;
pub const EXT_REQUEST: u32 = 0x21e4_1c71;
pub const SIMPLE: u32 = 0x6744_6698;
pub const STRUCTURED: u32 = 0x668e_33ef;
pub const EXTENDED: u32 = 0x6e8a_278c;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_SR: u32 = 8;
pub const OPT_LIST_META: u32 = 9;
pub const OPT_SET_META: u32 = 10;
pub const OPT_EH: u32 = 11;

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META: u32 = 4;
pub const ERR_UNSUP: u32 = 0x8000_0001;
pub const ERR_POLICY: u32 = 0x8000_0002;
pub const ERR_INVALID: u32 = 0x8000_0003;
pub const ERR_TLS_REQD: u32 = 0x8000_0005;
pub const ERR_UNKNOWN: u32 = 0x8000_0006;
pub const ERR_SHUTDOWN: u32 = 0x8000_0007;
pub const ERR_TOO_BIG: u32 = 0x8000_0009;
pub const ERR_EXT_HEADER_REQD: u32 = 0x8000_000a;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_ZERO: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const F_FUA: u16 = 1;
pub const F_NO_HOLE: u16 = 2;
pub const F_DF: u16 = 4;
pub const F_REQ_ONE: u16 = 8;
pub const F_FAST_ZERO: u16 = 16;
pub const F_PAYLOAD_LEN: u16 = 32;

pub const T_NONE: u16 = 0;
pub const T_DATA: u16 = 1;
pub const T_HOLE: u16 = 2;
pub const T_BS: u16 = 5;
pub const T_BS_EXT: u16 = 6;
pub const T_ERROR: u16 = 0x8001;

pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes(b[..2].try_into().unwrap())
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// One option reply.
#[derive(Debug, Clone)]
pub struct OptReply {
    pub opt: u32,
    pub kind: u32,
    pub data: Vec<u8>,
}

/// One transmission reply (simple, or one chunk).
#[derive(Debug, Clone)]
pub struct Reply {
    pub magic: u32,
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    /// Extended chunks only.
    pub offset: u64,
    /// Simple replies: the error field.
    pub error: u32,
    pub payload: Vec<u8>,
}

impl Reply {
    pub fn done(&self) -> bool {
        self.magic == SIMPLE || self.flags & 1 != 0
    }

    /// The error of a simple reply or an error chunk; 0 otherwise.
    pub fn errno(&self) -> u32 {
        if self.magic == SIMPLE {
            self.error
        } else if self.kind & 0x8000 != 0 {
            be32(&self.payload)
        } else {
            0
        }
    }

    /// The message of an error chunk.
    pub fn message(&self) -> String {
        let n = be16(&self.payload[4..]) as usize;
        String::from_utf8_lossy(&self.payload[6..6 + n]).into_owned()
    }
}

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
        let g = c.recv(18);
        assert_eq!(be64(&g), NBDMAGIC);
        assert_eq!(be64(&g[8..]), IHAVEOPT);
        assert_eq!(be16(&g[16..]), 3, "handshake flags");
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
        c.send(&3u32.to_be_bytes());
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
            let r = c.opt(OPT_SET_META, &meta_data(b"", &[b"base:allocation"]));
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
        self.send(&option_bytes(opt, data));
    }

    pub fn recv_opt_reply(&mut self) -> OptReply {
        let h = self.recv(20);
        assert_eq!(be64(&h), REPLY_MAGIC, "option reply magic");
        let len = be32(&h[16..]) as usize;
        OptReply {
            opt: be32(&h[8..]),
            kind: be32(&h[12..]),
            data: self.recv(len),
        }
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
            let last = r.kind == REP_ACK || r.kind & 0x8000_0000 != 0;
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
            .find(|r| r.kind == REP_INFO && be16(&r.data) == 0)
            .expect("NBD_INFO_EXPORT");
        (be64(&e.data[2..]), be16(&e.data[10..]))
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
        let mut v = request_bytes(self.extended, flags, kind, cookie, offset, len);
        v.extend_from_slice(payload);
        self.send(&v);
    }

    /// Reads one reply. `read_len` is the READ length when simple replies are in
    /// use (a successful simple READ reply carries that much data).
    pub fn reply(&mut self, read_len: Option<usize>) -> Reply {
        let m = self.recv(4);
        let magic = be32(&m);
        match magic {
            SIMPLE => {
                let h = self.recv(12);
                let error = be32(&h);
                let payload = match (error, read_len) {
                    (0, Some(n)) => self.recv(n),
                    _ => Vec::new(),
                };
                Reply {
                    magic,
                    flags: 0,
                    kind: 0,
                    cookie: be64(&h[4..]),
                    offset: 0,
                    error,
                    payload,
                }
            }
            STRUCTURED | EXTENDED => {
                // Extended: a 64-bit offset, then a 64-bit length.
                let ext = magic == EXTENDED;
                let h = self.recv(if ext { 28 } else { 16 });
                let (offset, len) = if ext {
                    (be64(&h[12..]), be64(&h[20..]))
                } else {
                    (0, u64::from(be32(&h[12..])))
                };
                Reply {
                    magic,
                    flags: be16(&h),
                    kind: be16(&h[2..]),
                    cookie: be64(&h[4..]),
                    offset,
                    error: 0,
                    payload: self.recv(len as usize),
                }
            }
            other => panic!("bad reply magic {other:#x}"),
        }
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
            match r.kind {
                T_DATA => {
                    let at = (be64(&r.payload) - offset) as usize;
                    let d = &r.payload[8..];
                    data[at..at + d.len()].copy_from_slice(d);
                    covered += d.len();
                }
                T_HOLE => {
                    let at = (be64(&r.payload) - offset) as usize;
                    let n = be32(&r.payload[8..]) as usize;
                    data[at..at + n].fill(0);
                    covered += n;
                }
                T_NONE => {}
                _ if r.kind & 0x8000 != 0 => return Err(r.errno()),
                k => panic!("unexpected chunk type {k}"),
            }
        }
        assert_eq!(covered, len, "chunks must cover the read");
        Ok(data)
    }
}

/// A request header (compact, or extended with a 64-bit length).
pub fn request_bytes(
    extended: bool,
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u64,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(32);
    let magic = if extended { EXT_REQUEST } else { REQUEST };
    v.extend_from_slice(&magic.to_be_bytes());
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    if extended {
        v.extend_from_slice(&len.to_be_bytes());
    } else {
        v.extend_from_slice(&(len as u32).to_be_bytes());
    }
    v
}

/// `count` compact READ requests of `len` bytes, cookies 0, 1, 2…, at offsets
/// `len` apart that wrap at `span`: a batch to send in one write.
pub fn read_batch(count: u64, len: u64, span: u64) -> Vec<u8> {
    (0..count)
        .flat_map(|i| request_bytes(false, 0, CMD_READ, i, i * len % span, len))
        .collect()
}

/// A fresh client can still negotiate, write and read.
#[track_caller]
pub fn still_serves(path: &Path) {
    let (mut c, _, _) = Client::ready(path, true, false, false);
    assert_eq!(c.write(0, b"alive"), 0);
    assert_eq!(c.read(0, 0, 5).unwrap(), b"alive");
}

/// An option as the client sends it: IHAVEOPT, the option, its data.
pub fn option_bytes(opt: u32, data: &[u8]) -> Vec<u8> {
    let mut v = IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&opt.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

pub fn info_data(name: &[u8], items: &[u16]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name);
    v.extend_from_slice(&(items.len() as u16).to_be_bytes());
    for i in items {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

pub fn meta_data(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name);
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q);
    }
    v
}

/// Block-status descriptors of a BLOCK_STATUS or BLOCK_STATUS_EXT chunk: (length, flags).
pub fn descriptors(r: &Reply) -> Vec<(u64, u64)> {
    match r.kind {
        T_BS => r.payload[4..]
            .chunks_exact(8)
            .map(|d| (u64::from(be32(d)), u64::from(be32(&d[4..]))))
            .collect(),
        T_BS_EXT => {
            let n = be32(&r.payload[4..]) as usize;
            let v: Vec<_> = r.payload[8..]
                .chunks_exact(16)
                .map(|d| (be64(d), be64(&d[8..])))
                .collect();
            assert_eq!(v.len(), n, "descriptor count");
            v
        }
        k => panic!("not a block status chunk: {k}"),
    }
}

/// The u16 at the start of an NBD_REP_INFO payload.
pub fn info_type(r: &OptReply) -> u16 {
    be16(&r.data)
}

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    be16(&b[at..])
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    be32(&b[at..])
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    be64(&b[at..])
}
