//! The memory budget (issue 14): crowds of hostile clients against a server
//! under a memory limit it must live with. The server stays alive and within
//! its budget, a fresh client is served throughout, and data written before
//! reads back intact; a crowd that comes and goes leaves nothing behind.
//!
//! The limit is a memory cgroup where the host lets us make one (root, v2
//! with the memory controller, else v1): the kernel then enforces it, and the
//! server finds its budget from it as under systemd's `MemoryMax=`. Elsewhere
//! the server's own `--memory-budget` stands in, and a line says so.

#[path = "common/attacks.rs"]
mod attacks;
mod common;
#[path = "common/wire.rs"]
mod wire;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Server, TempDir, rss_kib, wait_until};
use wire::*;

const MIB: u64 = 1 << 20;

/// A memory cgroup of our own, removed on drop (once its process is gone).
struct Cgroup {
    dir: PathBuf,
    /// The counter of OOM kills: `memory.events` (v2) or `memory.oom_control` (v1).
    events: PathBuf,
}

impl Cgroup {
    /// A cgroup limited to `limit` bytes, if this host lets us make one.
    fn new(limit: u64) -> Option<Cgroup> {
        if !common::is_root() {
            return None;
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mount = |v2: bool| {
            mounts.lines().find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let r: Vec<&str> = right.split(' ').collect();
                let ok = match v2 {
                    true => r[0] == "cgroup2",
                    false => r[0] == "cgroup" && r.get(2)?.split(',').any(|o| o == "memory"),
                };
                let mount = PathBuf::from(left.split(' ').nth(4)?);
                ok.then_some(mount)
            })
        };
        let name = format!("nbdlite-test-{}", std::process::id());
        let v2 = mount(true).and_then(|m| {
            let controllers = std::fs::read_to_string(m.join("cgroup.controllers")).ok()?;
            controllers
                .split_whitespace()
                .any(|c| c == "memory")
                .then_some(())?;
            // Children get the memory controller (systemd usually did this already).
            let _ = std::fs::write(m.join("cgroup.subtree_control"), "+memory");
            Cgroup::make(m.join(&name), "memory.max", "memory.events", limit)
        });
        let v1 = || {
            let m = mount(false)?;
            Cgroup::make(
                m.join(&name),
                "memory.limit_in_bytes",
                "memory.oom_control",
                limit,
            )
        };
        v2.or_else(v1)
    }

    fn make(dir: PathBuf, max: &str, events: &str, limit: u64) -> Option<Cgroup> {
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).ok()?;
        let cg = Cgroup {
            events: dir.join(events),
            dir,
        };
        std::fs::write(cg.dir.join(max), limit.to_string()).ok()?;
        let _ = std::fs::write(cg.dir.join("memory.swap.max"), "0");
        Some(cg)
    }

    /// `sh` putting itself in the cgroup, then becoming `nbdlite` (the
    /// server's arguments follow).
    fn command(&self) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(self.dir.join("cgroup.procs"))
            .arg(common::bin());
        c
    }

    /// OOM kills in the cgroup so far.
    fn oom_kills(&self) -> u64 {
        let text = std::fs::read_to_string(&self.events).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The server is killed and reaped first (declared after the cgroup);
        // its cgroup empties a moment later.
        let end = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A client that connects afresh, writes and reads back, over and over until
/// told to stop; its rounds are counted (it panics on any failure: every read
/// has a 10 s timeout).
struct Fresh {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    worst: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Fresh {
    fn start(sock: &Path) -> Fresh {
        let (stop, rounds, worst) = Default::default();
        let (s, r, w): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>) =
            (Arc::clone(&stop), Arc::clone(&rounds), Arc::clone(&worst));
        let sock = sock.to_path_buf();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let start = Instant::now();
                let n = r.load(Ordering::Relaxed);
                let data = vec![n as u8; 4096];
                let (mut c, _, _) = Client::ready(&sock, true, false, false);
                let at = 200 * MIB + (n % 16) * 4096;
                assert_eq!(c.write(at, &data), 0, "fresh client: write");
                assert_eq!(c.read(0, at, 4096).unwrap(), data, "fresh client: read");
                w.fetch_max(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                r.fetch_add(1, Ordering::Relaxed);
            }
        });
        Fresh {
            stop,
            rounds,
            worst,
            thread: Some(thread),
        }
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Stops it; panics if it failed. Returns its slowest round, in ms.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the fresh client failed");
        }
        self.worst.load(Ordering::Relaxed)
    }
}

/// 1 MiB that says where it is.
fn pattern() -> Vec<u8> {
    (0..MIB).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn attacks_under_a_memory_limit() {
    if common::raise_fd_limit() < 1200 {
        common::skip("cannot open 1,100 sockets (RLIMIT_NOFILE)");
        return;
    }
    let limit = 384 * MIB;
    let img_dir = TempDir::new();
    let img = img_dir.join("disk.img");
    common::sparse_file(&img, 256 * MIB);
    let cgroup = Cgroup::new(limit);
    // The budget the server derives from the cgroup (see budget::host), or
    // the one given to it.
    let budget = match &cgroup {
        Some(_) => (limit - 32 * MIB) / 4 * 3,
        None => 256 * MIB,
    };
    let file = [std::ffi::OsStr::new("file"), img.as_os_str()];
    let srv = match &cgroup {
        Some(cg) => Server::start_with(
            cg.command(),
            &[&[std::ffi::OsStr::new("-v")][..], &file].concat(),
        ),
        None => {
            eprintln!(
                "\n*** no memory cgroup here: the server's own --memory-budget is the limit ***\n"
            );
            let flags = ["-v", "--memory-budget", "256M"].map(std::ffi::OsStr::new);
            Server::start(&[&flags[..], &file].concat())
        }
    };
    let want = format!("memory budget: {} MiB", budget / MIB);
    assert!(srv.log_text().contains(&want), "{want}: {}", srv.log_text());
    let pid = srv.pid();

    let (mut c, _, _) = Client::ready(&srv.sock, true, false, false);
    let data = pattern();
    assert_eq!(c.write(192 * MIB, &data), 0);
    drop(c);
    let base = rss_kib(pid);
    let fresh = Fresh::start(&srv.sock);
    // (attack, the memory the clients ask the server to hold)
    type Attack = fn(&Path) -> attacks::Crowd;
    let table: [(&str, Attack, u64); 3] = [
        (
            "20 x 64 MiB stalled WRITEs",
            |s| attacks::stalled_writes(s, 20, 64 * MIB, 63 * MIB, Duration::from_millis(500)),
            20 * 64 * MIB,
        ),
        (
            "20 x four 32 MiB unread READs",
            |s| attacks::unread_reads(s, 20, 4, 32 * MIB),
            20 * 128 * MIB,
        ),
        (
            "1,000 half-sent headers",
            |s| attacks::half_sent_headers(s, 1000),
            0,
        ),
    ];
    for (name, attack, asked) in table {
        let start = Instant::now();
        let crowd = attack(&srv.sock);
        let rounds = fresh.rounds();
        // The fresh client goes on being served while the crowd holds on.
        wait_until(20, "the fresh client to be served twice more", || {
            fresh.rounds() >= rounds + 2
        });
        let rss = rss_kib(pid) * 1024;
        eprintln!(
            "{name}: {} MiB asked for, {} MiB sent; RSS {} MiB (budget {} MiB), {:.1?}",
            asked / MIB,
            crowd.sent / MIB,
            rss / MIB,
            budget / MIB,
            start.elapsed()
        );
        assert!(
            asked == 0 || asked > 3 * budget,
            "{name}: not beyond the budget"
        );
        assert!(
            rss < budget + 48 * MIB,
            "{name}: RSS {} MiB over a budget of {} MiB",
            rss / MIB,
            budget / MIB
        );
        drop(crowd);
    }
    let worst = fresh.finish();
    eprintln!("the fresh client's slowest round: {worst} ms");
    let mut srv = srv;
    assert!(srv.alive(), "the server died: {}", srv.log_text());
    if let Some(cg) = &cgroup {
        assert_eq!(
            cg.oom_kills(),
            0,
            "the kernel killed something in the cgroup"
        );
    }
    let (mut c, _, _) = Client::ready(&srv.sock, true, false, false);
    assert!(
        c.read(0, 192 * MIB, MIB as usize).unwrap() == data,
        "data written before"
    );
    wait_until(10, "RSS to come back", || rss_kib(pid) < base + 8 * 1024);
    drop(srv);
    drop(cgroup);
}

#[test]
fn a_crowd_of_half_sent_connections_leaves_nothing_behind() {
    if common::raise_fd_limit() < 2200 {
        common::skip("cannot open 2,100 sockets (RLIMIT_NOFILE)");
        return;
    }
    let srv = Server::start(&["memory", "64M"]);
    still_serves(&srv.sock);
    // Once quiet, the server gives back what the first client left.
    std::thread::sleep(Duration::from_millis(1500)); // deliberately: a quiet second
    let base = rss_kib(srv.pid());
    for round in 1..=3 {
        let crowd = attacks::half_sent_headers(&srv.sock, 2000);
        let held = rss_kib(srv.pid());
        drop(crowd);
        wait_until(10, "RSS within 2 MiB of the start", || {
            rss_kib(srv.pid()) <= base + 2048
        });
        let rss = rss_kib(srv.pid());
        eprintln!(
            "round {round}: RSS {base} KiB, {held} KiB with 2,000 half-sent, {rss} KiB after"
        );
    }
    still_serves(&srv.sock);
}

/// The info items of GO: `NBD_INFO_BLOCK_SIZE`'s maximum.
fn max_block_size(c: &mut Client) -> u32 {
    let r = c.opt(OPT_GO, &info_data(b"", &[3]));
    let info = r
        .iter()
        .find(|r| r.kind == REP_INFO && info_type(r) == 3)
        .expect("NBD_INFO_BLOCK_SIZE");
    u32_at(&info.data, 10)
}

/// A client with structured replies, in transmission, and the largest
/// request the server advertised.
fn structured_with_max(sock: &Path) -> (Client, usize) {
    let mut c = Client::start(sock);
    assert_eq!(c.opt(OPT_SR, &[])[0].kind, REP_ACK);
    c.structured = true;
    let max = max_block_size(&mut c) as usize;
    (c, max)
}

#[test]
fn a_small_budget_lowers_the_largest_request_and_says_so() {
    let srv = Server::start(&["--memory-budget", "16M", "memory", "64M"]);
    let (mut c, max) = structured_with_max(&srv.sock);
    assert_eq!(max, 4 << 20, "advertised maximum");
    // Up to the maximum: served (and beyond the budget's share of the
    // moment, it waits its turn); over it: refused as the spec says.
    let big = vec![0x5a; 4 << 20];
    assert_eq!(c.write(0, &big), 0);
    assert_eq!(c.read(0, 0, big.len()).unwrap(), big);
    assert_eq!(c.read(0, 0, 8 << 20), Err(EOVERFLOW));
    assert_eq!(c.write(0, &vec![1; 8 << 20]), EINVAL, "payload read past");
    assert_eq!(c.write(0, b"after"), 0);
    // The default budget of a large host leaves it as it was.
    let srv = Server::start(&["memory", "64M"]);
    let mut c = Client::start(&srv.sock);
    assert_eq!(max_block_size(&mut c), 32 << 20);
}

/// A READ that carries a payload (extended headers) is refused, and is not
/// charged twice on its way there: counted as payload plus reply it would ask
/// a 5M budget for more than it can ever give, and every large request would
/// queue behind it for ever.
#[test]
fn a_read_with_a_payload_is_refused_without_stalling_the_queue() {
    let srv = Server::start(&["--memory-budget", "5M", "memory", "64M"]);
    let (mut c, max) = structured_with_max(&srv.sock);
    let (mut odd, _, _) = Client::ready(&srv.sock, true, true, false);
    odd.request(F_PAYLOAD_LEN, CMD_READ, 7, 0, max as u64, &vec![0; max]);
    let r = odd.replies(None);
    assert_eq!(r.last().map(Reply::errno), Some(EINVAL));
    let data = vec![0x6b; max];
    assert_eq!(c.write(0, &data), 0);
    assert_eq!(
        c.read(0, 0, max).unwrap(),
        data,
        "a full-size READ is served"
    );
}
