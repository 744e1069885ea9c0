//! Nothing acknowledged is lost. A soak test: 16 clients over separate
//! connections write random runs of blocks, each with FUA or followed by a
//! FLUSH, reading others' blocks meanwhile; then every block is read back
//! through other connections and compared. And a crash test: after a FLUSH and
//! after FUA writes are acknowledged the server is killed with SIGKILL, and a
//! new one on the same file returns every acknowledged byte. The file tests
//! run under both I/O engines: io_uring and the synchronous fallback
//! (NBDLITE_IO_URING=0).
//!
//! NBDLITE_SOAK_SECS sets how long each soak runs (default 2 seconds per backend);
//! each client makes at least `MIN_WRITES` writes however slow the machine.

mod common;
#[path = "common/fileio.rs"]
mod fileio;
#[path = "common/wire.rs"]
mod wire;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Server, TempDir};
use fileio::ENGINES;
use wire::*;

const BLOCK: usize = 4096;
const CLIENTS: u64 = 16;
/// Blocks each client owns: client t writes blocks [t * OWN, (t + 1) * OWN).
const OWN: u64 = 64;
const SIZE: u64 = CLIENTS * OWN * BLOCK as u64;
/// Writes each client makes even if the soak time has run out (a loaded
/// machine, a slow fdatasync): the soak always does this much work.
const MIN_WRITES: u64 = 16;

fn soak_time() -> Duration {
    let secs = std::env::var("NBDLITE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

/// xorshift64*: deterministic, good enough to pick blocks and fill them.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Version `seq` of `block`: a header naming both, then bytes derived from them,
/// so any block read back can be checked on its own (torn or misplaced data shows).
fn content(block: u64, seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(BLOCK);
    v.extend_from_slice(&block.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    let mut r = Rng((block << 32) ^ seq ^ 0x9e37_79b9_7f4a_7c15);
    while v.len() < BLOCK {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(BLOCK);
    v
}

/// A block as read: never written (zeroes), or some whole version of itself.
#[track_caller]
fn check_consistent(block: u64, data: &[u8]) {
    if data.iter().all(|&b| b == 0) {
        return;
    }
    let seq = u64_at(data, 8);
    assert_eq!(
        u64_at(data, 0),
        block,
        "block {block} holds another block's data"
    );
    assert!(
        data == content(block, seq),
        "block {block} is torn (seq {seq})"
    );
}

/// One client's life: writes to its own blocks, reads of everybody's. Returns the
/// acknowledged version of each block it wrote, and how many writes it made.
fn client(sock: &Path, t: u64, until: Instant) -> (HashMap<u64, u64>, u64) {
    // Every reply style takes part.
    let (sr, eh) = [(false, false), (true, false), (false, true)][(t % 3) as usize];
    let (mut c, size, _) = Client::ready(sock, sr, eh, false);
    assert_eq!(size, SIZE);
    let mut rng = Rng(0x1234_5678 + t * 7919);
    let mut acked: HashMap<u64, u64> = HashMap::new();
    let mut seq = 0;
    let mut cookie = 0;
    while seq < MIN_WRITES || Instant::now() < until {
        // A run of 1..8 of our blocks, with FUA or followed by FLUSH.
        let n = 1 + rng.below(8);
        let first = t * OWN + rng.below(OWN - n + 1);
        seq += 1;
        let mut data = Vec::with_capacity(n as usize * BLOCK);
        for b in first..first + n {
            data.extend(content(b, seq));
        }
        let fua = rng.below(2) == 0;
        let mut flags = if fua { F_FUA } else { 0 };
        if c.extended {
            flags |= F_PAYLOAD_LEN;
        }
        cookie += 1;
        let off = first * BLOCK as u64;
        c.request(flags, CMD_WRITE, cookie, off, data.len() as u64, &data);
        let r = c.replies(None);
        assert!(
            r.iter().all(|r| r.errno() == 0 && r.cookie == cookie),
            "{r:?}"
        );
        if !fua {
            assert_eq!(c.cmd(0, CMD_FLUSH, 0, 0), 0);
        }
        for b in first..first + n {
            acked.insert(b, seq);
        }
        // Someone's block, maybe being written right now: whole, or never written.
        let other = rng.below(CLIENTS * OWN);
        let d = c.read(0, other * BLOCK as u64, BLOCK).expect("read");
        check_consistent(other, &d);
        // One of ours: exactly what was acknowledged.
        if let Some((&b, &s)) = acked.iter().nth(rng.below(acked.len() as u64) as usize) {
            let d = c.read(0, b * BLOCK as u64, BLOCK).expect("read");
            assert!(
                d == content(b, s),
                "client {t}: block {b} is not version {s}"
            );
        }
    }
    (acked, seq)
}

/// Reads every block through fresh connections (none of the writers') and
/// compares it with what was acknowledged.
#[track_caller]
fn verify_all(sock: &Path, acked: &HashMap<u64, u64>) {
    let readers: Vec<Client> = (0..4)
        .map(|i| Client::ready(sock, i % 2 == 0, false, false).0)
        .collect();
    for (i, mut c) in readers.into_iter().enumerate() {
        for b in (i as u64..CLIENTS * OWN).step_by(4) {
            let d = c.read(0, b * BLOCK as u64, BLOCK).expect("read");
            match acked.get(&b) {
                Some(&s) => assert!(d == content(b, s), "block {b}: not version {s}"),
                None => assert!(d.iter().all(|&x| x == 0), "block {b} was never written"),
            }
        }
    }
}

fn soak(srv: &Server) -> HashMap<u64, u64> {
    let until = Instant::now() + soak_time();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let sock = srv.sock.clone();
            std::thread::spawn(move || client(&sock, t, until))
        })
        .collect();
    let mut acked = HashMap::new();
    let mut writes = 0;
    for t in threads {
        let (a, n) = t.join().expect("a client failed");
        acked.extend(a);
        writes += n;
    }
    eprintln!(
        "soak: {writes} writes by {CLIENTS} clients in {:?}, {} blocks acknowledged, all read back",
        soak_time(),
        acked.len()
    );
    assert!(acked.len() > 100, "too little done: {}", acked.len());
    verify_all(&srv.sock, &acked);
    acked
}

#[test]
fn soak_memory() {
    let srv = Server::start(&["memory", &SIZE.to_string()]);
    soak(&srv);
    assert!(srv.stop().success());
}

/// A sparse image of the soak's size in a fresh directory, and the server
/// arguments that serve it.
fn disk_image() -> (TempDir, [OsString; 2]) {
    let dir = TempDir::new();
    let img = dir.join("disk.img");
    common::sparse_file(&img, SIZE);
    (dir, ["file".into(), img.into()])
}

#[test]
fn soak_file_then_restart() {
    for io in ENGINES {
        let (_dir, args) = disk_image();
        let srv = Server::start_with(io.command(), &args);
        eprint!("{io:?} ");
        let acked = soak(&srv);
        assert!(srv.stop().success());
        // A new server on the same file has it all.
        let srv = Server::start_with(io.command(), &args);
        verify_all(&srv.sock, &acked);
    }
}

#[test]
fn a_killed_server_loses_nothing_flushed_or_written_with_fua() {
    for io in ENGINES {
        let (_dir, args) = disk_image();
        let mut srv = Server::start_with(io.command(), &args);
        let (mut c, _, _) = Client::ready(&srv.sock, true, false, false);
        let mut rng = Rng(42);
        let mut acked = HashMap::new();
        for seq in 1..=200 {
            let b = rng.below(CLIENTS * OWN);
            assert_eq!(c.write(b * BLOCK as u64, &content(b, seq)), 0);
            acked.insert(b, seq);
        }
        assert_eq!(c.cmd(0, CMD_FLUSH, 0, 0), 0);
        // Then writes with FUA, each durable once acknowledged, no FLUSH after.
        for seq in 201..=300 {
            let b = rng.below(CLIENTS * OWN);
            c.request(
                F_FUA,
                CMD_WRITE,
                seq,
                b * BLOCK as u64,
                BLOCK as u64,
                &content(b, seq),
            );
            let r = c.replies(None);
            assert!(r.iter().all(|r| r.errno() == 0 && r.cookie == seq), "{r:?}");
            acked.insert(b, seq);
        }
        // Acknowledged: now the server dies without warning, mid-stream.
        c.request(0, CMD_WRITE, 99, 0, BLOCK as u64, &content(0, 1000));
        srv.child.kill().expect("SIGKILL");
        common::wait_exit(&mut srv.child, 10).expect("killed");
        drop(srv);
        let srv = Server::start_with(io.command(), &args);
        let (mut c, _, _) = Client::ready(&srv.sock, false, false, false);
        for (&b, &s) in &acked {
            let d = c.read(0, b * BLOCK as u64, BLOCK).unwrap();
            if b == 0 && d == content(0, 1000) {
                continue; // the unacknowledged write may have landed
            }
            assert!(d == content(b, s), "{io:?}: block {b}: version {s} lost");
        }
    }
}
