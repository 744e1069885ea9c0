//! Shared by the fuzz targets (`fuzz/`) and `tests/random_streams.rs`; not part
//! of the server.
//!
//! `run` feeds a byte stream, cut into arbitrary pieces, through the server's own
//! `Driver` exactly as `Conn` does: each piece arrives through `Driver::receive`,
//! the same input buffer and growth policy a socket read goes through, then
//! messages are handled until one is incomplete or the connection closes. Every
//! step is checked with `check`, which parses the replies back on its own. `fuzz_one` is a
//! whole fuzz iteration: decode the input, run it in its chunking and unsplit,
//! and demand the same result.

pub mod check;
pub mod streams;

pub use crate::sys::alloc;

use std::hash::Hasher;
use std::io::IoSlice;

use crate::agreement::Agreement;
use crate::backend::{Backend, Caps, Memory, Null, Pattern};
use crate::buf::{OutQueue, Pool};
use crate::driver::{Driver, Phase, Progress};
use crate::export::Export;
use crate::filter::Stack;
use crate::handshake::Handshake;
use crate::lifecycle::Lifecycle;
use crate::notify::Notifier;
use crate::origin::Origin;
use crate::proto::reply::Style;
use crate::shared::Shared;
use crate::storage::Storage;
use crate::tls::TlsMode;

/// Export sizes to pick from: past a page boundary and not page aligned, one
/// block, empty, and three pages and a bit (several extents).
const SIZES: [u64; 4] = [65536 + 512, 4096, 0, 3 * 32768 + 512];

/// The largest allocation a run may make beyond its input: Pool blocks (64 KiB),
/// the input buffer's growth step (256 KiB), backend pages (32 KiB) and reads of
/// the largest export are below it.
pub const ALLOC_LIMIT: usize = 1 << 20;

/// Which backend serves the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Null,
    Pattern,
}

/// Everything about the server and the session that is not the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Transmission target only: what the handshake agreed.
    pub style: Style,
    pub meta: bool,
    pub read_only: bool,
    pub min_block: u32,
    pub shutting_down: bool,
    pub size: u64,
    pub no_sr: bool,
    pub description: bool,
    pub kind: Kind,
    /// `--tls`: STARTTLS refused, accepted, or required before anything else.
    pub tls: TlsMode,
}

impl Config {
    /// A configuration from two bytes of fuzz input: every bit pattern is valid.
    pub fn from_bits(a: u8, b: u8) -> Config {
        Config {
            style: match a & 3 {
                1 => Style::Structured,
                2 => Style::Extended,
                _ => Style::Simple,
            },
            meta: a & 4 != 0,
            read_only: a & 8 != 0,
            min_block: if a & 16 != 0 { 512 } else { 1 },
            shutting_down: a & 32 != 0,
            size: SIZES[usize::from(a >> 6)],
            no_sr: b & 1 != 0,
            description: b & 2 == 0,
            kind: match (b >> 2) & 3 {
                1 => Kind::Null,
                2 => Kind::Pattern,
                _ => Kind::Memory,
            },
            tls: match (b >> 4) & 3 {
                1 => TlsMode::On,
                2 => TlsMode::Require,
                _ => TlsMode::Off,
            },
        }
    }

    /// The export the server would build for this configuration.
    pub fn export(&self) -> Export {
        Export {
            name: b"disk".to_vec(),
            description: self.description.then(|| b"a fuzzed disk".to_vec()),
            size: self.size,
            caps: Caps {
                read_only: self.read_only || self.kind == Kind::Pattern,
                zero: true,
                fast_zero: self.kind != Kind::Pattern,
                extents: true,
                sparse_reads: self.kind != Kind::Pattern,
                min_block: self.min_block,
                multi_conn: true,
            },
            no_sr: self.no_sr,
            handshake_flags: crate::proto::option::HANDSHAKE_FLAGS,
            tls: self.tls,
            max_request: crate::export::MAX_REQUEST,
            block_override: None,
        }
    }

    /// A server's lifecycle, shutting down if the configuration says so.
    fn lifecycle(&self) -> Lifecycle {
        let mut l = Lifecycle::new(None, false, Notifier::new(None));
        if self.shutting_down {
            l.shut_down(0);
        }
        l
    }

    fn backend(&self) -> Box<dyn Backend> {
        match self.kind {
            Kind::Memory => Box::new(Memory::new(self.size)),
            Kind::Null => Box::new(Null::new(self.size)),
            Kind::Pattern => Box::new(Pattern::new(self.size)),
        }
    }

    /// The session a handshake agreeing on `style` and `meta` would have produced
    /// (meta needs structured replies; the oldstyle session is the simple one).
    pub fn session(&self) -> Agreement {
        let meta = self.meta && self.style != Style::Simple;
        Agreement::new(&self.export(), self.style, meta)
    }
}

/// Where the stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After our newstyle greeting: the client's flags come first.
    Handshake,
    /// In transmission, with `Config::session`.
    Transmission,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server closed the connection, for this reason.
    Closed(&'static str),
    /// The stream ran out with the server waiting for more (maybe mid-message).
    Eof,
    /// STARTTLS was accepted: the rest of the stream would be TLS, which the
    /// harness does not speak.
    StartTls,
}

/// What a run did, in a form cheap to compare between chunkings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub end: End,
    /// Input bytes the server used (or skipped).
    pub consumed: usize,
    /// Messages handled.
    pub steps: usize,
    pub out_len: usize,
    /// A hash of every byte sent, in order.
    pub out_hash: u64,
    pub session: Option<Agreement>,
}

/// Runs `stream` through a fresh connection, delivered in pieces of the lengths
/// in `chunks` (cycled; an empty list delivers it whole), checking every step.
/// Panics on any broken invariant.
pub fn run(cfg: &Config, start: Start, stream: &[u8], chunks: &[usize]) -> Run {
    let export = cfg.export();
    let storage = Storage::new(cfg.backend(), export.clone(), Stack::default());
    let mut sh = Shared::new(storage, cfg.lifecycle());
    let me = Origin::new(0, 1);
    let phase = match start {
        Start::Handshake => Phase::Handshake(Handshake::default()),
        Start::Transmission => Phase::Transmission(cfg.session()),
    };
    let mut drv = Driver::new(1, phase, &[], &mut sh);
    let mut checker = check::Checker::new(&export, start);
    let mut hash = Fnv::default();
    let mut run = Run {
        end: End::Eof,
        consumed: 0,
        steps: 0,
        out_len: 0,
        out_hash: 0,
        session: None,
    };
    for mut piece in pieces(stream, chunks) {
        while !piece.is_empty() {
            // As a read(2) would: as much of the piece as the buffer offers.
            let mut n = 0;
            let got = drv.receive(&mut sh.pool, |room| {
                n = room.len().min(piece.len());
                room[..n].copy_from_slice(&piece[..n]);
                Ok(n)
            });
            assert!(got.is_ok() && n > 0, "the input buffer offered no room");
            piece = &piece[n..];
            // Every handled message uses at least one byte: more steps than bytes
            // (plus the one that finds the front incomplete) is a loop.
            let mut budget = drv.unread().len() + 1;
            loop {
                assert!(
                    budget > 0,
                    "no progress: {} bytes pending",
                    drv.unread().len()
                );
                budget -= 1;
                let before = check::State::of(&drv);
                let pending = drv.unread().to_vec();
                let progress = drv.step(&mut sh, me);
                let used = pending.len() - drv.unread().len();
                let reply = drain(drv.output(), &mut sh.pool);
                checker.step(&before, &drv, &pending, used, progress, &reply);
                hash.write(&reply);
                run.out_len += reply.len();
                run.consumed += used;
                match progress {
                    Progress::Handled => run.steps += 1,
                    Progress::NeedInput => break,
                    // Only a backend with an I/O engine (a file) waits for room.
                    Progress::NeedRoom => panic!("blocked without an I/O engine"),
                    // The harness runs with an unlimited budget.
                    Progress::NeedMemory => panic!("no memory in an unlimited budget"),
                    Progress::StartTls => {
                        run.end = End::StartTls;
                        return finish(run, &drv, hash);
                    }
                    Progress::Close(why) => {
                        run.end = End::Closed(why);
                        return finish(run, &drv, hash);
                    }
                    Progress::Disc => {
                        run.end = End::Closed("client sent DISC");
                        return finish(run, &drv, hash);
                    }
                    Progress::Paused(_) => panic!("paused without a filter"),
                }
            }
        }
    }
    finish(run, &drv, hash)
}

fn finish(mut run: Run, drv: &Driver, hash: Fnv) -> Run {
    run.session = drv.session();
    run.out_hash = hash.finish();
    run
}

/// `stream` cut into pieces of the lengths in `chunks`, cycled.
fn pieces<'a>(stream: &'a [u8], chunks: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = stream;
    let mut lens = chunks.iter().cycle();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = lens.next().map_or(rest.len(), |&n| n.clamp(1, rest.len()));
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        Some(piece)
    })
}

/// Takes everything queued for sending, as the socket would.
fn drain(queue: &mut OutQueue, pool: &mut Pool) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(queue.len());
    while !queue.is_empty() {
        let mut iov = [IoSlice::new(&[]); 64];
        let n = queue.slices(&mut iov);
        let before = bytes.len();
        for s in &iov[..n] {
            bytes.extend_from_slice(s);
        }
        queue.consume(bytes.len() - before, pool);
    }
    queue.release(pool);
    bytes
}

/// FNV-1a: a stable hash, so runs compare equal across processes.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A fuzz input taken apart: two configuration bytes, a count byte and that
/// many chunk lengths (each 1 to 256), then the stream.
pub struct Input<'a> {
    pub cfg: Config,
    pub chunks: Vec<usize>,
    pub stream: &'a [u8],
}

/// Most chunk lengths an input carries.
const MAX_CHUNKS: usize = 16;

impl Input<'_> {
    pub fn decode(data: &[u8]) -> Option<Input<'_>> {
        let (&[a, b, n], rest) = data.split_first_chunk::<3>()?;
        let n = usize::from(n) % (MAX_CHUNKS + 1);
        if rest.len() < n {
            return None;
        }
        let (lens, stream) = rest.split_at(n);
        Some(Input {
            cfg: Config::from_bits(a, b),
            chunks: lens.iter().map(|&l| usize::from(l) + 1).collect(),
            stream,
        })
    }
}

/// The inverse of `Input::decode`, for seed corpora. Chunk lengths are 1 to 256.
pub fn encode(a: u8, b: u8, chunks: &[usize], stream: &[u8]) -> Vec<u8> {
    let chunks = &chunks[..chunks.len().min(MAX_CHUNKS)];
    let mut v = vec![a, b, chunks.len() as u8]; // ≤ MAX_CHUNKS
    v.extend(chunks.iter().map(|&c| (c.clamp(1, 256) - 1) as u8));
    v.extend_from_slice(stream);
    v
}

/// One fuzz iteration: the stream in the input's chunking and unsplit must be
/// served identically, every step must pass `check`, and no allocation may be
/// sized by the input's length fields.
pub fn fuzz_one(start: Start, data: &[u8]) {
    let Some(input) = Input::decode(data) else {
        return;
    };
    alloc::reset();
    let chunked = run(&input.cfg, start, input.stream, &input.chunks);
    let whole = run(&input.cfg, start, input.stream, &[]);
    assert_eq!(chunked, whole, "the chunking changed the outcome");
    let largest = alloc::largest();
    assert!(
        largest <= ALLOC_LIMIT + 4 * data.len(),
        "an allocation of {largest} bytes from {} bytes of input",
        data.len()
    );
}
