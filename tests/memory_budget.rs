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

use std::io::Write;
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

    /// The most memory the cgroup has used: `memory.peak` (v2) or
    /// `memory.max_usage_in_bytes` (v1).
    fn peak(&self) -> u64 {
        ["memory.peak", "memory.max_usage_in_bytes"]
            .iter()
            .find_map(|f| std::fs::read_to_string(self.dir.join(f)).ok())
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
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

/// A client that connects afresh (GO), writes 4 KiB and reads it back, over
/// and over until told to stop; its rounds are counted, and the slowest
/// timed. A round the server turns away (at its connection limit) is tried
/// again at once, its time counting on; any other failure ends the client
/// (every read has a 10 s timeout), and `finish` says so.
struct Fresh {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    worst: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

/// One round of a fresh client: Err(None) if it was turned away at the door.
fn fresh_round(sock: &Path, n: u64) -> Result<(), Option<String>> {
    use std::io::{Read, Write};
    let mut s = attacks::try_ready(sock).map_err(|_| None)?;
    let fail = |what: &str, e: std::io::Error| Some(format!("{what}: {e}"));
    let data = vec![n as u8; 4096];
    let at = 200 * MIB + (n % 16) * 4096;
    let mut w = request(false, 0, CMD_WRITE, 1, at, 4096);
    w.extend_from_slice(&data);
    s.write_all(&w).map_err(|e| fail("write", e))?;
    let mut reply = [0u8; 16];
    s.read_exact(&mut reply)
        .map_err(|e| fail("write reply", e))?;
    if reply[4..8] != [0; 4] {
        return Err(Some(format!("write failed: {reply:?}")));
    }
    s.write_all(&request(false, 0, CMD_READ, 2, at, 4096))
        .map_err(|e| fail("read", e))?;
    let mut back = vec![0u8; 16 + 4096];
    s.read_exact(&mut back).map_err(|e| fail("read reply", e))?;
    match back[16..] == data[..] {
        true => Ok(()),
        false => Err(Some("read back something else".into())),
    }
}

impl Fresh {
    fn start(sock: &Path) -> Fresh {
        let (stop, rounds, worst) = Default::default();
        let (s, r, w): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>) =
            (Arc::clone(&stop), Arc::clone(&rounds), Arc::clone(&worst));
        let sock = sock.to_path_buf();
        let thread = std::thread::spawn(move || {
            let mut start = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let n = r.load(Ordering::Relaxed);
                match fresh_round(&sock, n) {
                    Err(Some(e)) => return Err(e),
                    Err(None) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue; // turned away: again, the clock running
                    }
                    Ok(()) => {}
                }
                w.fetch_max(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                r.fetch_add(1, Ordering::Relaxed);
                start = Instant::now();
            }
            Ok(())
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
            let outcome = t.join().expect("the fresh client's thread");
            outcome.expect("the fresh client failed");
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
            "250 half-sent headers",
            |s| attacks::half_sent_headers(s, 250),
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
    assert_eq!(max, 2 << 20, "advertised maximum");
    // Up to the maximum: served (and beyond the budget's share of the
    // moment, it waits its turn); over it: refused as the spec says.
    let big = vec![0x5a; 2 << 20];
    assert_eq!(c.write(0, &big), 0);
    assert_eq!(c.read(0, 0, big.len()).unwrap(), big);
    assert_eq!(c.read(0, 0, 4 << 20), Err(EOVERFLOW));
    assert_eq!(c.write(0, &vec![1; 4 << 20]), EINVAL, "payload read past");
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

/// The line `-v` writes at start-up about the connection limit.
fn limit_line(srv: &Server) -> String {
    let mut line = None;
    wait_until(10, "the connection limit's line (-v)", || {
        line = srv
            .log_text()
            .lines()
            .find(|l| l.contains("up to"))
            .map(String::from);
        line.is_some()
    });
    line.unwrap_or_default()
}

/// Clients in one cgroup (or, where there is none, under `--memory-budget`):
/// the server, its limit, and the budget it runs with.
fn server_in(limit: u64, fallback: &str, args: &[&std::ffi::OsStr]) -> (Server, Option<Cgroup>) {
    let cgroup = Cgroup::new(limit);
    let srv = match &cgroup {
        Some(cg) => Server::start_with(cg.command(), &[&["-v".as_ref()][..], args].concat()),
        None => {
            eprintln!("\n*** no memory cgroup here: --memory-budget {fallback} is the limit ***\n");
            let flags = ["-v", "--memory-budget", fallback].map(std::ffi::OsStr::new);
            Server::start(&[&flags[..], args].concat())
        }
    };
    (srv, cgroup)
}

/// Issue 21, attack 1, scaled: a RAM disk filled by a legitimate client, then
/// a crowd larger than the budget holds, each client with four 1 MiB READs
/// it never reads. Every byte they cost is counted (socket buffers and state
/// too), so the crowd past the connection limit is turned away or takes the
/// place of one that stalled; the server lives, within its limit, and a
/// fresh client is served throughout.
#[test]
fn a_crowd_of_unread_reads_stays_within_the_memory_limit() {
    if common::raise_fd_limit() < 700 {
        common::skip("cannot open 600 sockets (RLIMIT_NOFILE)");
        return;
    }
    let limit = 512 * MIB;
    let args = ["memory", "256M"].map(std::ffi::OsStr::new);
    let (srv, cgroup) = server_in(limit, "128M", &args);
    let line = limit_line(&srv);
    eprintln!("{line}");
    let (mut c, _, _) = Client::ready(&srv.sock, true, false, false);
    let data = pattern();
    for i in 0..128 {
        assert_eq!(c.write(i * MIB, &data), 0);
    }
    drop(c);
    let fresh = Fresh::start(&srv.sock);
    let (crowd, refused) = attacks::ready_some(&srv.sock, 600, &read_batch(4, MIB, 128 * MIB));
    let rounds = fresh.rounds();
    wait_until(20, "the fresh client to be served twice more", || {
        fresh.rounds() >= rounds + 2
    });
    let rss = rss_kib(srv.pid()) * 1024;
    eprintln!(
        "{} clients kept, {refused} turned away; RSS {} MiB",
        crowd.len(),
        rss / MIB
    );
    let worst = fresh.finish();
    eprintln!("the fresh client's slowest round: {worst} ms");
    assert!(worst < 2000, "a fresh client waited {worst} ms");
    let mut srv = srv;
    assert!(srv.alive(), "the server died: {}", srv.log_text());
    if let Some(cg) = &cgroup {
        assert_eq!(cg.oom_kills(), 0, "the kernel killed something");
        let peak = cg.peak();
        eprintln!("the cgroup's peak: {} MiB of {}", peak / MIB, limit / MIB);
        assert!(peak < limit - 16 * MIB, "{} MiB: at the limit", peak / MIB);
    } else {
        assert!(
            rss < 256 * MIB + 128 * MIB + 48 * MIB,
            "RSS {} MiB",
            rss / MIB
        );
    }
    // What was written reads back (in pieces within a client's own share:
    // a larger READ waits until the crowd reads or is dropped).
    let (mut c, _, _) = Client::ready(&srv.sock, true, false, false);
    for at in [0, 17 * 4096, MIB as usize - 4096] {
        let back = c.read(0, 127 * MIB + at as u64, 4096).unwrap();
        assert!(back == data[at..at + 4096], "data written before, at {at}");
    }
    drop(crowd);
}

/// Issue 21, attack 2: 32 clients with 64 unread 1 MiB READs each used to
/// fill a 256 MiB budget, reserve included, and lock every new client out
/// until its handshake timed out. Each connection's own share now serves the
/// newcomer.
#[test]
fn unread_small_reads_never_lock_out_a_fresh_client() {
    let dir = TempDir::new();
    let img = dir.join("disk.img");
    common::sparse_file(&img, 256 * MIB);
    let srv = Server::start(&[
        "--memory-budget".as_ref(),
        "256M".as_ref(),
        "file".as_ref(),
        img.as_os_str(),
    ]);
    let fresh = Fresh::start(&srv.sock);
    let crowd = attacks::unread_reads(&srv.sock, 32, 64, MIB);
    let rounds = fresh.rounds();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        fresh.rounds() > rounds + 2,
        "the fresh client was not served"
    );
    let worst = fresh.finish();
    eprintln!(
        "32 x 64 unread READs, {} MiB sent; slowest fresh round {worst} ms",
        crowd.sent >> 20
    );
    assert!(worst < 2000, "a fresh client waited {worst} ms");
    drop(crowd);
}

/// Issue 21, attack 3, scaled: BLOCK_STATUS over a file of 8,192 extents
/// (a system call each) from four clients, 64 at a time. Each reply stops at
/// 1,024 extents, and a turn at its share of such work, so a fresh client
/// waits milliseconds, not seconds.
#[test]
fn block_status_on_a_fragmented_file_shares_the_loop() {
    use std::os::unix::fs::FileExt;
    let dir = TempDir::new();
    let img = dir.join("frag.img");
    common::sparse_file(&img, 256 * MIB);
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    for i in 0..4096u64 {
        f.write_all_at(&[1; 4096], i * 16384).unwrap();
    }
    drop(f);
    let srv = Server::start(&["file".as_ref(), img.as_os_str()]);
    let (mut c, _, _) = Client::ready(&srv.sock, true, false, true);
    c.request(0, CMD_BLOCK_STATUS, 1, 0, 64 * MIB, &[]);
    let r = c.reply(None);
    let d = descriptors(&r);
    assert!(d.len() == 1024, "{} extents in one reply", d.len());
    let stop = Arc::new(AtomicBool::new(false));
    let walkers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sock) = (Arc::clone(&stop), srv.sock.clone());
            std::thread::spawn(move || {
                let (mut c, _, _) = Client::ready(&sock, true, false, true);
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<u8> = (0..64)
                        .flat_map(|i| request(false, 0, CMD_BLOCK_STATUS, i, 0, 256 * MIB))
                        .collect();
                    c.send(&batch);
                    for _ in 0..64 {
                        c.reply(None);
                    }
                }
            })
        })
        .collect();
    let fresh = Fresh::start(&srv.sock);
    std::thread::sleep(Duration::from_secs(3)); // deliberately: the attack's length
    let worst = fresh.finish();
    stop.store(true, Ordering::Relaxed);
    for w in walkers {
        w.join().expect("a client walking the extents");
    }
    eprintln!("4 clients x 64 BLOCK_STATUS of 8,192 extents: slowest fresh round {worst} ms");
    assert!(worst < 1000, "a fresh client waited {worst} ms");
}

/// A client that holds replies without reading them is dropped after
/// `--request-timeout`, whatever its requests' sizes, with a line that says
/// so; one that reads them is not.
#[test]
fn a_client_that_reads_no_replies_is_dropped_after_the_request_timeout() {
    let srv = Server::start(&["--request-timeout", "1", "memory", "64M"]);
    let crowd = attacks::unread_reads(&srv.sock, 1, 256, 64 << 10);
    assert!(crowd.sent > 0);
    wait_until(10, "the unread client to be dropped", || {
        srv.log_text().contains("replies not read for 1s")
    });
    let (mut c, _, _) = Client::ready(&srv.sock, true, false, false);
    for _ in 0..3 {
        assert_eq!(
            c.read(0, 0, MIB as usize).map(|d| d.len()),
            Ok(MIB as usize)
        );
        std::thread::sleep(Duration::from_millis(600)); // deliberately: under the timeout, twice over
    }
    assert_eq!(srv.log_text().matches("replies not read").count(), 1);
}

/// The connection limit follows the budget and says so; at the limit, a new
/// client takes the place of one that keeps the server waiting.
#[test]
fn the_connection_limit_follows_the_budget_and_makes_room() {
    let srv = Server::start(&["-v", "--memory-budget", "16M", "memory", "64M"]);
    let line = limit_line(&srv);
    let n: usize = line
        .split("up to ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a number of connections");
    assert!((4..64).contains(&n), "{line}");
    let (crowd, refused) = attacks::ready_some(&srv.sock, n + 1, &[]);
    assert_eq!(
        (crowd.len(), refused),
        (n, 1),
        "the one past the limit is turned away"
    );
    let log = srv.log_text();
    assert!(log.contains("what the memory budget holds"), "{log}");
    for mut c in &crowd {
        c.write_all(&read_batch(8, MIB, 8 * MIB))
            .expect("unread READs");
    }
    std::thread::sleep(Duration::from_millis(300)); // deliberately: past the 0.1 s
    still_serves(&srv.sock);
    assert!(srv.log_text().contains("to make room for new ones"));
}
