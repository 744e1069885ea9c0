//! nbdlite-bench: a load generator for NBD servers. Opens N connections, keeps
//! Q requests in flight on each for T seconds, and reports IOPS, throughput
//! and latency percentiles. Errors become one line on stderr and exit status 1.

#![forbid(unsafe_code)]

mod args;
mod client;
mod conn;
mod engine;
mod hist;
mod progress;
mod record;
mod report;
mod stream;
#[cfg(feature = "tls")]
mod tls;
#[cfg(not(feature = "tls"))]
#[path = "notls.rs"]
mod tls;
mod uri;
mod workload;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nbdlite::client_proto::{TF_HAS_FLAGS, TF_READ_ONLY};

use args::{Command, Config};
use client::{ExportInfo, Link};
use conn::Conn;
use engine::Failure;
use progress::Board;
use record::Stats;
use report::{Summary, human};
use workload::Plan;
use workload::{Rng, Workload};

fn main() {
    let code = match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nbdlite-bench: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn real_main() -> Result<i32, String> {
    let cfg = match args::parse(std::env::args_os().skip(1).collect())? {
        Command::Help => {
            print!("{}", args::HELP);
            return Ok(0);
        }
        Command::Version => {
            println!("nbdlite-bench {}", env!("CARGO_PKG_VERSION"));
            return Ok(0);
        }
        Command::Run(cfg) => cfg,
    };
    // Certificates are read once, before the first connection.
    let tls = cfg.target.tls.as_ref().map(tls::Client::new).transpose()?;
    let (links, info) = open_all(&cfg, tls.as_ref())?;
    let tls_summary = links
        .first()
        .and_then(|l| l.tls.as_ref())
        .map(|t| t.describe());
    let range = check(&cfg, info)?;
    let payload = if cfg.pattern.writes() {
        payload(cfg.size, cfg.seed)
    } else {
        Vec::new()
    };
    let groups = spread(&cfg, links, range)?;
    let plan = Plan {
        size: cfg.size,
        warmup: cfg.warmup,
        run: cfg.time,
        payload: &payload,
    };
    let stats = run_threads(groups, &plan, progress_interval(&cfg))?;
    let mut summary = Summary::new(&cfg, info.size, range, &stats);
    summary.tls = tls_summary;
    if cfg.json {
        print!("{}", summary.json());
    } else {
        print!("{}", summary.table());
    }
    if let Some(first) = &stats.first_error {
        eprintln!(
            "nbdlite-bench: {} request(s) failed; the first: {first}",
            stats.errors
        );
        return Ok(1);
    }
    Ok(0)
}

/// Opens every connection before any traffic, so that connecting (and the
/// TLS handshake) is not measured. All must see the same export.
fn open_all(cfg: &Config, tls: Option<&tls::Client>) -> Result<(Vec<Link>, ExportInfo), String> {
    let mut links = Vec::with_capacity(cfg.connections);
    let mut first: Option<ExportInfo> = None;
    for i in 0..cfg.connections {
        let (l, info) =
            client::open(&cfg.target, tls).map_err(|e| format!("connection {i}: {e}"))?;
        match first {
            None => first = Some(info),
            Some(f) if f.size != info.size => {
                return Err(format!(
                    "connection {i}: the export is {} bytes here but was {} on connection 0",
                    info.size, f.size
                ));
            }
            Some(_) => {}
        }
        links.push(l);
    }
    // Invariant: connections >= 1 (args::parse), so the loop set `first`.
    let info = first.ok_or("no connections")?;
    Ok((links, info))
}

/// The byte range to use, after checking the options against the export.
fn check(cfg: &Config, info: ExportInfo) -> Result<u64, String> {
    let range = cfg.range.unwrap_or(info.size);
    if range > info.size {
        return Err(format!(
            "--range {range} is larger than the export ({} bytes)",
            info.size
        ));
    }
    if let Some(max) = info.max_block
        && cfg.size > u64::from(max)
    {
        return Err(format!(
            "requests of {} bytes are larger than the server's maximum block size \
             ({max} bytes): use -s {} or less",
            cfg.size,
            human(u64::from(max))
        ));
    }
    if cfg.size > range {
        return Err(format!(
            "requests of {} bytes do not fit in {range} bytes (see --size, --range)",
            cfg.size
        ));
    }
    let read_only = info.tflags & TF_HAS_FLAGS != 0 && info.tflags & TF_READ_ONLY != 0;
    if read_only && cfg.pattern.writes() {
        return Err(format!(
            "the export is read-only; --rw {} writes",
            cfg.pattern.name()
        ));
    }
    Ok(range)
}

/// WRITE data: pseudo-random bytes, so that no server can take a shortcut
/// for zeroes or repeated blocks.
fn payload(size: u64, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut v = Vec::with_capacity(size as usize);
    while v.len() < size as usize {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(size as usize);
    v
}

/// Deals the connections out to the threads, round-robin.
fn spread(cfg: &Config, links: Vec<Link>, range: u64) -> Result<Vec<Vec<Conn>>, String> {
    let mut groups: Vec<Vec<Conn>> = (0..cfg.threads).map(|_| Vec::new()).collect();
    let n = links.len() as u64;
    for (i, l) in links.into_iter().enumerate() {
        let work = Workload::new(
            cfg.pattern,
            cfg.size,
            range,
            cfg.rwmix_read,
            cfg.seed,
            i as u64,
            n,
        )?;
        groups[i % cfg.threads].push(Conn::new(i, l, work, cfg.queue_depth)?);
    }
    Ok(groups)
}

/// How often to print a progress line, if at all: `--interval`, else each
/// second when stderr is a terminal (someone is watching).
fn progress_interval(cfg: &Config) -> Option<Duration> {
    let every = match cfg.interval {
        Some(i) => i,
        None if std::io::stderr().is_terminal() => Duration::from_secs(1),
        None => Duration::ZERO,
    };
    (!every.is_zero()).then_some(every)
}

/// Runs each group on its own thread (the first on this one), with a thread
/// for the progress line if `progress` says how often, and merges the
/// results. The first real error wins over the "stopped" of the others.
fn run_threads(
    mut groups: Vec<Vec<Conn>>,
    plan: &Plan,
    progress: Option<Duration>,
) -> Result<Stats, String> {
    let stop = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let board = Board::new(groups.len());
    let start = Instant::now();
    // Never empty: args::parse makes threads at least 1.
    let mine = groups.remove(0);
    let results: Vec<Result<Stats, Failure>> = std::thread::scope(|scope| {
        let reporter = progress.map(|every| {
            let (board, done) = (&board, &done);
            scope.spawn(move || progress::report(board, start, every, plan.warmup, done))
        });
        let handles: Vec<_> = groups
            .into_iter()
            .zip(&board.slots[1..])
            .map(|(g, slot)| scope.spawn(|| engine::run(g, plan, &stop, slot)))
            .collect();
        let mut all = vec![engine::run(mine, plan, &stop, &board.slots[0])];
        for h in handles {
            all.push(
                h.join()
                    .unwrap_or_else(|_| Err(Failure::Error("a worker thread panicked".into()))),
            );
        }
        done.store(true, Ordering::Relaxed);
        if let Some(r) = reporter {
            r.thread().unpark();
        }
        all
    });
    let mut total = Stats::default();
    let mut stopped = false;
    for r in results {
        match r {
            Ok(s) => total.merge(&s),
            Err(Failure::Error(e)) => return Err(e),
            Err(Failure::Stopped) => stopped = true,
        }
    }
    if stopped {
        return Err("a thread stopped without saying why".into());
    }
    Ok(total)
}
