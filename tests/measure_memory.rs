//! The resident memory of a running server under the memory attacks of issue
//! 14, for the figures in the README and the man page. It attacks whatever
//! server listens on SOCKET (any build, or nbdkit), reading the RSS of PID:
//!
//!     NBDLITE_ATTACK_SOCKET=S NBDLITE_ATTACK_PID=P NBDLITE_ATTACK=writes \
//!         cargo test --release --test measure_memory -- --ignored --nocapture
//!
//! (`NBDLITE_ATTACK_N` and `NBDLITE_ATTACK_SECS` set N and SECS.) ATTACK is one of
//! - `writes`: N clients (default 50) each send a WRITE header for 64 MiB and
//!   63 MiB of its payload, then stall (they push until the server has taken
//!   nothing for SECS, default 0.5: a slow server needs more);
//! - `reads`: N clients (default 50) each ask for four 32 MiB READs and never
//!   read (serve a file of at least 128 MiB: the file backend reads into
//!   buffers of its own, where the memory backend lends its pages);
//! - `halfsent`: N clients (default 1000) each send 10 bytes of a request
//!   header after the handshake;
//! - `idle`: N clients (default 1000) finish the handshake and send nothing;
//! - `churn`: N half-sent clients (default 2000) come and go, three times.
//!
//! It prints the RSS before, once the attack has settled, and a few seconds
//! after its clients have gone. A server that dies is reported as such.

#[path = "common/attacks.rs"]
mod attacks;
#[path = "common/wire.rs"]
mod wire;

use std::path::PathBuf;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// VmRSS (or another /proc/PID/status size) in KiB; None once the process is gone.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("(gone)".to_string(), |k| {
        format!("{:.1} MiB", k as f64 / 1024.0)
    })
}

/// The RSS once it has stopped moving for half a second (at most `secs`).
fn settled(pid: u32, secs: u64) -> Option<u64> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut last = status_kib(pid, "VmRSS:")?;
    let mut since = Instant::now();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        let now = status_kib(pid, "VmRSS:")?;
        if now.abs_diff(last) > 256 {
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_millis(500) {
            return Some(now);
        }
        last = now;
    }
    Some(last)
}

/// An environment knob, if set.
fn knob(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[test]
#[ignore]
fn memory_attacks() {
    let (Some(sock), Some(pid)) = (knob("NBDLITE_ATTACK_SOCKET"), knob("NBDLITE_ATTACK_PID"))
    else {
        panic!("set NBDLITE_ATTACK_SOCKET and NBDLITE_ATTACK_PID (see the file's comment)");
    };
    let attack = knob("NBDLITE_ATTACK").unwrap_or_else(|| "writes".into());
    let sock = PathBuf::from(sock);
    let pid: u32 = pid.parse().expect("PID: a number");
    let n = |default: usize| knob("NBDLITE_ATTACK_N").map_or(default, |s| s.parse().expect("N"));
    let _ = nbdlite::os::raise_nofile_limit();
    let before = settled(pid, 5);
    println!("{attack}: RSS before: {}", mib(before));
    let start = Instant::now();
    let crowd = match attack.as_str() {
        "writes" => {
            let secs: f64 = knob("NBDLITE_ATTACK_SECS").map_or(0.5, |s| s.parse().expect("SECS"));
            let patience = Duration::from_secs_f64(secs);
            attacks::stalled_writes(&sock, n(50), 64 * MIB, 63 * MIB, patience)
        }
        "reads" => attacks::unread_reads(&sock, n(50), 4, 32 * MIB),
        "halfsent" => attacks::half_sent_headers(&sock, n(1000)),
        "idle" => attacks::idle(&sock, n(1000)),
        "churn" => {
            for round in 1..=3 {
                drop(attacks::half_sent_headers(&sock, n(2000)));
                std::thread::sleep(Duration::from_secs(2)); // a quiet second gives back
                let after = settled(pid, 10);
                println!("churn: RSS after round {round}: {}", mib(after));
            }
            return;
        }
        other => panic!("unknown attack {other}"),
    };
    let during = settled(pid, 10);
    let per = match (before, during) {
        (Some(b), Some(d)) => format!(
            "{} bytes",
            (d.saturating_sub(b) * 1024) / crowd.clients.len() as u64
        ),
        _ => "?".into(),
    };
    println!(
        "{attack}: {} clients sent {} MiB in {:.1?}; RSS with the attack: {}, peak {} ({per} a client)",
        crowd.clients.len(),
        crowd.sent / MIB,
        start.elapsed(),
        mib(during),
        mib(status_kib(pid, "VmHWM:")),
    );
    drop(crowd);
    std::thread::sleep(Duration::from_secs(2)); // the pool is let go after a quiet second
    println!("{attack}: RSS after: {}", mib(settled(pid, 10)));
}
