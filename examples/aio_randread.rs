//! Micro-benchmark of the file I/O engine alone (not shipped): 4 KiB random
//! reads at a total depth of 64 over a 2 GiB file whose pages were evicted,
//! the way `shared/bench/filecmp.py` measures the disk, and fio beside it.
//!
//! cargo run --release --example aio_randread -- [--sync] [--secs N] [--depth N] [--no-fio] [FILE]
//! FILE defaults to /var/tmp/nbdlite-bench/data-2g.img (made once, as the harness does).
//! --sync: the synchronous engine. --warm: keep the cache (cat FILE first) to see
//! the engine's CPU per operation. --fua: 4 KiB FUA writes instead of reads.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nbdlite::aio::{Engine, Op};
use nbdlite::sys;

const SIZE: u64 = 2 << 30;
const BS: usize = 4096;

fn main() -> io::Result<()> {
    let mut args = pico_args::Arguments::from_env();
    let sync = args.contains("--sync");
    let fua = args.contains("--fua");
    let warm = args.contains("--warm");
    let no_fio = args.contains("--no-fio");
    let secs: u64 = args
        .opt_value_from_str("--secs")
        .ok()
        .flatten()
        .unwrap_or(8);
    let depth: usize = args
        .opt_value_from_str("--depth")
        .ok()
        .flatten()
        .unwrap_or(64);
    let path: String = args
        .opt_free_from_str()
        .ok()
        .flatten()
        .unwrap_or_else(|| "/var/tmp/nbdlite-bench/data-2g.img".into());
    let file = Rc::new(data_file(&path)?);

    // --warm: leave the cache as it is (`cat FILE >/dev/null` first) to
    // measure the engine's own CPU cost per operation.
    if !warm {
        evict(&file)?;
    }
    let (iops, p50, p99) = engine_run(&file, sync, fua, depth, Duration::from_secs(secs))?;
    println!(
        "engine ({}): {iops:.0} IOPS, p50 {p50} us, p99 {p99} us",
        if sync { "sync" } else { "io_uring" }
    );
    if !no_fio {
        evict(&file)?;
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
            .output()?;
        // Terse v3: field 8 (from 1) is the read IOPS.
        let text = String::from_utf8_lossy(&out.stdout);
        let iops = text.split(';').nth(7).unwrap_or("?");
        println!("fio io_uring --direct=0 randread 4k depth {depth}: {iops} IOPS");
    }
    Ok(())
}

/// The 2 GiB data file, written once with non-zero data.
fn data_file(path: &str) -> io::Result<File> {
    if fs::metadata(path).is_ok_and(|m| m.len() == SIZE) {
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
    for i in 0..SIZE >> 20 {
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

/// Keeps `depth` reads in flight for `dur`; returns IOPS and the p50/p99 latency.
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
        (rng % (SIZE / BS as u64)) * BS as u64
    };
    let mut started = vec![Instant::now(); depth];
    let mut lat = Vec::new();
    let t0 = Instant::now();
    for tag in 0..depth {
        let op = Op::Read {
            offset: next_offset(),
            buf: vec![0; BS],
        };
        e.submit(op, tag as u64)
            .map_err(|_| io::Error::other("no room"))?;
    }
    let mut done = Vec::new();
    let mut eintr = 0u64;
    while t0.elapsed() < dur {
        e.run();
        if !e.busy() {
            match poll.poll(&mut events, Some(Duration::from_secs(1))) {
                // io_uring's task work interrupts epoll_wait: just go round.
                Err(err) if err.kind() == io::ErrorKind::Interrupted => eintr += 1,
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
            let op = if fua {
                Op::Write {
                    offset: next_offset(),
                    buf: d.buf,
                    fua: true,
                }
            } else {
                Op::Read {
                    offset: next_offset(),
                    buf: d.buf,
                }
            };
            e.submit(op, d.tag)
                .map_err(|_| io::Error::other("no room"))?;
        }
    }
    let iops = lat.len() as f64 / t0.elapsed().as_secs_f64();
    eprintln!("({} completions, {eintr} interrupted polls)", lat.len());
    lat.sort_unstable();
    let pct = |p: usize| lat.get(lat.len() * p / 100).copied().unwrap_or(0);
    Ok((iops, pct(50), pct(99)))
}
