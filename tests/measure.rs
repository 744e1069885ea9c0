//! Measurements, not tests: each is `#[ignore]`d and prints figures instead of
//! asserting them (speed is measured, never asserted). Run them on a release
//! build, one at a time or all:
//!
//!     cargo test --release --test measure -- --ignored --nocapture [NAME]
//!
//! - `engine_randread`: the file I/O engine alone (`nbdlite::aio`), 4 KiB random
//!   reads at a total depth of 64 over a 2 GiB file whose pages were evicted,
//!   as `filecmp.py cold` measures the disk, with both engines and fio's io_uring
//!   engine beside them.
//! - `read_beside_write_zeroes`: a second client's 4 KiB READ latency while one
//!   WRITE_ZEROES (NO_HOLE) clears 4 GiB of a tmpfs file (issue 12's case).
//! - `read_beside_flush`: the same while a FLUSH writes back 1 GiB of dirty
//!   data to a file on the local disk.
//! - `tls_idle_memory`: the heap one idle TLS session keeps after its
//!   handshake (issue 13 allows 64 KiB).
//!
//! Knobs, as environment variables: NBDLITE_MEASURE_SECS (8),
//! NBDLITE_MEASURE_DEPTH (64), NBDLITE_MEASURE_FILE (the 2 GiB data file,
//! default /var/tmp/nbdlite-bench/data-2g.img, made once as the harness does),
//! NBDLITE_MEASURE_WARM=1 (keep the page cache: the engine's CPU per
//! operation), NBDLITE_MEASURE_FUA=1 (4 KiB FUA writes instead of reads),
//! NBDLITE_MEASURE_GIB (the size of the zeroing and of the dirty data: 4 and
//! 1), NBDLITE_MEASURE_SESSIONS (200 TLS sessions).

mod common;
#[path = "common/fileio.rs"]
mod fileio;
#[path = "common/pipeline.rs"]
mod pipeline;
#[cfg(feature = "tls")]
#[path = "common/tls_client.rs"]
mod tls_client;
#[path = "common/wire.rs"]
mod wire;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{Server, sparse_file};
use fileio::*;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nbdlite::aio::{Engine, Op};
use nbdlite::os as sys;
use pipeline::*;
use wire::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// An environment knob, or its default.
fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

fn load() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

const DATA_SIZE: u64 = 2 << 30;
const BS: usize = 4096;

/// The file I/O engine alone, without a server: 4 KiB random reads (or FUA
/// writes) kept `depth` deep for a few seconds, io_uring then the synchronous
/// engine, then fio's io_uring engine on the same file for the disk's figure.
#[test]
#[ignore]
fn engine_randread() {
    let secs = knob("NBDLITE_MEASURE_SECS", 8);
    let depth = knob("NBDLITE_MEASURE_DEPTH", 64usize);
    let path: String = knob(
        "NBDLITE_MEASURE_FILE",
        "/var/tmp/nbdlite-bench/data-2g.img".to_string(),
    );
    let (warm, fua) = (flag("NBDLITE_MEASURE_WARM"), flag("NBDLITE_MEASURE_FUA"));
    let file = Rc::new(data_file(&path).expect("the data file"));
    let what = if fua { "FUA writes" } else { "reads" };
    for sync in [false, true] {
        if !warm {
            evict(&file).expect("evict");
        }
        let dur = Duration::from_secs(secs);
        let (iops, p50, p99) = engine_run(&file, sync, fua, depth, dur).expect("engine");
        let name = if sync { "sync" } else { "io_uring" };
        println!(
            "engine ({name}), 4 KiB random {what}, depth {depth}: {iops:.0} IOPS, p50 {p50} us, p99 {p99} us (load {})",
            load()
        );
    }
    if fua || !common::have(&["fio"]) {
        return;
    }
    if !warm {
        evict(&file).expect("evict");
    }
    let out = Command::new("fio")
        .args([
            "--name=disk",
            &format!("--filename={path}"),
            "--ioengine=io_uring",
            "--direct=0",
            "--rw=randread",
            "--bs=4k",
            &format!("--iodepth={depth}"),
            "--time_based=1",
            &format!("--runtime={secs}"),
            "--output-format=terse",
            "--terse-version=3",
        ])
        .output()
        .expect("fio");
    // Terse v3: field 8 (from 1) is the read IOPS.
    let text = String::from_utf8_lossy(&out.stdout);
    let iops = text.split(';').nth(7).unwrap_or("?");
    println!(
        "fio io_uring --direct=0 randread 4k depth {depth}: {iops} IOPS (load {})",
        load()
    );
}

/// The 2 GiB data file, written once with non-zero data.
fn data_file(path: &str) -> io::Result<File> {
    if fs::metadata(path).is_ok_and(|m| m.len() == DATA_SIZE) {
        return OpenOptions::new().read(true).write(true).open(path);
    }
    if let Some(dir) = std::path::Path::new(path).parent() {
        fs::create_dir_all(dir)?;
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let mut chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 251) as u8 | 1).collect();
    for i in 0..DATA_SIZE >> 20 {
        chunk[0] = i as u8;
        f.write_all_at(&chunk, i << 20)?;
    }
    f.sync_all()?;
    Ok(f)
}

fn evict(f: &File) -> io::Result<()> {
    f.sync_all()?;
    sys::fadvise_dontneed(f.as_fd(), 0, 0)
}

/// Keeps `depth` operations in flight for `dur`, as the server's loop drives
/// the engine; returns IOPS and the p50/p99 latency in microseconds.
fn engine_run(
    file: &Rc<File>,
    sync: bool,
    fua: bool,
    depth: usize,
    dur: Duration,
) -> io::Result<(f64, u64, u64)> {
    let mut e = Engine::new(file.clone(), sync);
    let mut poll = Poll::new()?;
    if let Some(fd) = e.fd() {
        let raw = fd.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&raw), Token(0), Interest::READABLE)?;
    }
    let mut events = Events::with_capacity(4);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_offset = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % (DATA_SIZE / BS as u64)) * BS as u64
    };
    let op = |offset, buf| match fua {
        true => Op::Write {
            offset,
            buf,
            fua: true,
        },
        false => Op::Read { offset, buf },
    };
    let mut started = vec![Instant::now(); depth];
    let mut lat = Vec::new();
    let t0 = Instant::now();
    for tag in 0..depth {
        e.submit(op(next_offset(), vec![1; BS]), tag as u64)
            .map_err(|_| io::Error::other("no room"))?;
    }
    let mut done = Vec::new();
    while t0.elapsed() < dur {
        e.run();
        if !e.busy() {
            match poll.poll(&mut events, Some(Duration::from_secs(1))) {
                // io_uring's task work may interrupt epoll_wait: go round.
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                r => r?,
            }
        }
        e.reap(&mut done);
        let now = Instant::now();
        for d in done.drain(..) {
            d.result?;
            let tag = d.tag as usize;
            lat.push(now.duration_since(started[tag]).as_micros() as u64);
            started[tag] = now;
            e.submit(op(next_offset(), d.buf), d.tag)
                .map_err(|_| io::Error::other("no room"))?;
        }
    }
    let iops = lat.len() as f64 / t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: usize| lat.get(lat.len() * p / 100).copied().unwrap_or(0);
    Ok((iops, pct(50), pct(99)))
}

/// nbdkit's file plugin on `path`, for the same figure beside ours, if installed.
fn nbdkit(path: &std::path::Path) -> Option<Server> {
    let bin = "/usr/bin/nbdkit";
    std::path::Path::new(bin).exists().then(|| {
        let file = std::ffi::OsStr::new("file");
        Server::start_with(Command::new(bin), &[file, path.as_os_str()])
    })
}

/// Serves `img` with each engine (and nbdkit), runs `prepare` then the busy
/// request `busy` (flags, command, length) on one client while another reads
/// 4 KiB of `marker` at `at` back to back, and prints the reader's latencies.
fn read_beside(
    img: &std::path::Path,
    at: u64,
    marker: &[u8],
    label: &str,
    prepare: &dyn Fn(),
    busy: (u16, u16, u64),
) {
    let servers = fileio::ENGINES
        .into_iter()
        .map(|io| (format!("nbdlite ({io:?})"), io.serve(img)))
        .chain(nbdkit(img).map(|s| ("nbdkit".to_string(), s)));
    for (name, srv) in servers {
        prepare();
        let style = Style::Structured;
        let mut reader = unix(&srv.sock, style);
        let sock = srv.sock.clone();
        let (flags, kind, len) = busy;
        let (lat, took) = reads_beside(&mut reader, style, at, marker, move |sent| {
            let mut s = unix(&sock, style);
            let mut b = Batch::new(style);
            b.cmd(flags, kind, 1, 0, len);
            std::io::Write::write_all(&mut s, &b.bytes).unwrap();
            sent();
            let f = Inbox::new(style, &b.sent).next(&mut s);
            assert_eq!(f.errno, 0, "the busy request failed");
        });
        println!(
            "{name}: {label} took {took:?}; a second client's 4 KiB READs beside it: {} (load {})",
            summary(&lat),
            load()
        );
    }
}

/// WRITE_ZEROES with NO_HOLE over 4 GiB of a tmpfs file, where no fallocate
/// mode zeroes in place: every page is allocated and cleared.
#[test]
#[ignore]
fn read_beside_write_zeroes() {
    let size = knob("NBDLITE_MEASURE_GIB", 4u64) * GIB;
    let Some(shm) = Scratch::tmpfs(size + 64 * MIB) else {
        return;
    };
    let img = shm.join("disk.img");
    sparse_file(&img, size + MIB);
    let marker = block_data(3, 3, 4096);
    write_at(&img, size, &marker);
    // A compact request's length is 32 bits: 4 GiB less 4 KiB is the most
    // one carries (and what nbdkit 1.32, without extended headers, can take).
    let len = size.min((u32::MAX as u64) & !4095);
    let label = format!("WRITE_ZEROES NO_HOLE of {} MiB on tmpfs", len >> 20);
    // Each server starts from a file with nothing allocated.
    let fresh = || {
        let f = OpenOptions::new().write(true).open(&img).unwrap();
        f.set_len(0).unwrap();
        f.set_len(size + MIB).unwrap();
        f.write_all_at(&marker, size).unwrap();
    };
    read_beside(
        &img,
        size,
        &marker,
        &label,
        &fresh,
        (F_NO_HOLE, CMD_ZERO, len),
    );
}

/// FLUSH of 1 GiB of dirty data to a file on the local disk.
#[test]
#[ignore]
fn read_beside_flush() {
    let dirty = knob("NBDLITE_MEASURE_GIB", 1u64) * GIB;
    let Some(disk) = Scratch::disk(dirty + 64 * MIB) else {
        return;
    };
    let img = disk.join("disk.img");
    sparse_file(&img, dirty + MIB);
    let marker = block_data(4, 4, 4096);
    write_at(&img, dirty, &marker);
    File::open(&img).unwrap().sync_all().unwrap();
    let chunk = block_data(5, 5, (4 * MIB) as usize);
    // Dirty data for each server's FLUSH to write back (the page cache is the
    // file's, whoever wrote into it).
    let dirty_it = || {
        let f = OpenOptions::new().write(true).open(&img).unwrap();
        for at in (0..dirty).step_by(chunk.len()) {
            f.write_all_at(&chunk, at).unwrap();
        }
    };
    let label = format!("FLUSH of {} MiB dirty on the local disk", dirty >> 20);
    read_beside(&img, dirty, &marker, &label, &dirty_it, (0, CMD_FLUSH, 0));
}

/// The heap one idle TLS session keeps after its handshake. Makes test
/// certificates with `openssl`, opens N sessions against in-process rustls
/// clients over socketpairs, completes each handshake, moves a request and a
/// 1 MiB reply through each (so that every buffer has been used), then
/// compares the heap in use (glibc's mallinfo2) before and after dropping the
/// server sessions only.
#[cfg(all(feature = "tls", target_env = "gnu"))]
#[test]
#[ignore]
fn tls_idle_memory() {
    use nbdlite::os::heap_in_use;
    use nbdlite::tls::{Stream, TlsMode, TlsOptions, server_config};
    use rustls::version::{TLS12, TLS13};

    if !common::certs::have_openssl() {
        panic!("tls_idle_memory needs the openssl command");
    }
    let n: usize = knob("NBDLITE_MEASURE_SESSIONS", 200);
    let root = common::TempDir::new();
    let c = common::certs::make(root.path());
    let reply = vec![7u8; 1 << 20];
    println!(
        "size_of::<Stream>() = {} bytes",
        std::mem::size_of::<Stream>()
    );
    for (label, verify_peer, versions) in [
        ("TLS 1.3", false, &[&TLS13][..]),
        ("TLS 1.2", false, &[&TLS12][..]),
        ("TLS 1.3, verified client certificate", true, &[&TLS13][..]),
    ] {
        let cfg = server_config(&TlsOptions {
            asked: Some(TlsMode::Require),
            certificates: Some(c.dir.clone()),
            verify_peer,
            psk: None,
        })
        .expect("server config");
        let auth = verify_peer.then_some(c.dir.as_path());
        let client = tls_client::client_config(&c.dir, auth, versions);
        let mut clients = Vec::with_capacity(n);
        let mut servers = Vec::with_capacity(n);
        for _ in 0..n {
            let mut p = tls_client::Pair::start(cfg.clone(), client.clone()).expect("start");
            p.handshake().expect("handshake");
            assert_eq!(p.client_to_server(&[1u8; 32]).len(), 32);
            assert_eq!(
                p.server_to_client(&[&[2u8; 16], &reply]).len(),
                reply.len() + 16
            );
            let tls_client::Pair {
                client,
                csock,
                server,
                ssock,
            } = p;
            clients.push((client, csock, ssock));
            servers.push(server);
        }
        let with = heap_in_use();
        drop(servers);
        let without = heap_in_use();
        println!(
            "{label}: {} bytes of heap per idle session ({n} sessions)",
            with.saturating_sub(without) / n
        );
        drop(clients);
    }
}
