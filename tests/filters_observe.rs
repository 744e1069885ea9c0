//! The filters that watch (`stats`, `log`) and SIGUSR1, with real clients
//! (nbdlite-bench, nbdsh, nbdcopy, qemu-io): nbdkit's report and log lines,
//! reports on demand while the server goes on, a log on a full disk or on a
//! pipe nobody reads never stalling clients, and mistakes on the command line.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn bench() -> &'static str {
    env!("CARGO_BIN_EXE_nbdlite-bench")
}

/// nbdlite-bench against `uri` for `secs` seconds (4 connections, 8 deep,
/// 4 KiB random reads and writes); its JSON summary.
#[track_caller]
fn run_bench(uri: &str, secs: &str) -> String {
    run_ok(
        Command::new(bench())
            .args(["-c", "4", "-q", "8", "-t", secs, "--rw", "randrw", "--json"])
            .arg(uri),
        60,
    )
}

fn number(json: &str, key: &str) -> u64 {
    let v = json_field(json, key);
    v.parse::<f64>()
        .unwrap_or_else(|_| panic!("{key} is not a number: {v}")) as u64
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// `key=value` for a path.
fn kv(key: &str, path: &Path) -> String {
    format!("{key}={}", path.display())
}

/// The number before `word` in `line` ("read: 12 ops, ..." -> 12 for "ops").
#[track_caller]
fn count_before(line: &str, word: &str) -> u64 {
    let at = line
        .find(&format!(" {word}"))
        .unwrap_or_else(|| panic!("no '{word}' in {line}"));
    let n = line[..at].rsplit(' ').next().unwrap_or("");
    n.parse()
        .unwrap_or_else(|_| panic!("no number before '{word}' in {line}"))
}

/// The line of `report` that starts with `prefix`.
#[track_caller]
fn line_of<'a>(report: &'a str, prefix: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no '{prefix}' line in:\n{report}"))
}

/// A latency line's four figures, in microseconds, in order.
#[track_caller]
fn latencies(line: &str) -> [f64; 4] {
    let rest = line
        .strip_prefix("  latency: ")
        .unwrap_or_else(|| panic!("not a latency line: {line}"));
    let v: Vec<f64> = rest
        .split(", ")
        .map(|part| {
            let num = part.split(' ').nth(1).unwrap_or("");
            num.parse()
                .unwrap_or_else(|_| panic!("bad figure '{part}' in {line}"))
        })
        .collect();
    let names: Vec<&str> = rest
        .split(", ")
        .map(|p| p.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(names, ["p50", "p99", "p99.9", "max"], "{line}");
    [v[0], v[1], v[2], v[3]]
}

#[test]
fn stats_report_of_a_bench_run() {
    let dir = TempDir::new();
    let stats = dir.join("stats");
    let srv = Server::start(&["--filter=stats", "memory", "64M", &kv("statsfile", &stats)]);
    let json = run_bench(&srv.uri(), "0.5");
    assert!(srv.stop().success());
    let report = read(&stats);
    eprintln!("{report}");
    let total = line_of(&report, "total: ");
    let (reads, writes) = (line_of(&report, "read: "), line_of(&report, "write: "));
    let (r, w) = (count_before(reads, "ops"), count_before(writes, "ops"));
    assert_eq!(count_before(total, "ops"), r + w, "{report}");
    // The bench counts what it saw answered; the server may have answered a
    // few more as the bench stopped.
    assert!(r + w >= number(&json, "requests"), "{json}\n{report}");
    assert!(r >= number(&json, "reads") && w >= number(&json, "writes"));
    // Each kind: its latencies in order, and its 4 KiB requests, all aligned
    // to 4 KiB.
    for kind in ["read: ", "write: "] {
        let section: Vec<&str> = report
            .lines()
            .skip_while(|l| !l.starts_with(kind))
            .take(5)
            .collect();
        let l = latencies(section[1]);
        assert!(
            l[0] > 0.0 && l[0] <= l[1] && l[1] <= l[2] && l[2] <= l[3],
            "{report}"
        );
        assert_eq!(section[2], "  Request size and alignment breakdown:");
        assert!(section[3].starts_with("    12 bits: 100.0% ("), "{report}");
        assert!(
            section[4].starts_with("         12 bit aligned: 100.0% ("),
            "{report}"
        );
    }
    assert!(!report.contains("errors:"), "{report}");
}

#[test]
fn stats_through_the_io_engine_with_nbdcopy() {
    if !have(&["nbdcopy"]) {
        return;
    }
    let dir = TempDir::new();
    let (disk, stats, src) = (dir.join("disk"), dir.join("stats"), dir.join("src"));
    sparse_file(&disk, 8 << 20);
    fs::write(&src, vec![7u8; 4 << 20]).expect("source");
    let srv = Server::start(&[
        "--filter=stats",
        "file",
        &disk.display().to_string(),
        &kv("statsfile", &stats),
        "statsthreshold=0",
    ]);
    run_ok(
        Command::new("nbdcopy")
            .arg(&src)
            .arg(srv.uri())
            .env("PATH", system_path()),
        60,
    );
    assert!(srv.stop().success());
    let report = read(&stats);
    let writes = line_of(&report, "write: ");
    assert!(writes.contains(", 4.00 MiB, "), "{report}");
    latencies(
        report
            .lines()
            .skip_while(|l| !l.starts_with("write: "))
            .nth(1)
            .unwrap_or(""),
    );
    assert!(!report.contains("breakdown"), "statsthreshold=0: {report}");
}

#[test]
fn sigusr1_logs_a_summary_and_the_server_goes_on() {
    if !have(&["nbdsh", "qemu-io"]) {
        return;
    }
    let mut srv = Server::start(&["memory", "1M"]);
    nbdsh(
        &srv.uri(),
        "h.pwrite(b'x' * 4096, 0)\nh.pread(4096, 0)\nh.set_strict_mode(0)\n\
         try:\n    h.pread(512, 1 << 30)\nexcept nbd.Error:\n    pass\n",
    );
    srv.signal("USR1");
    wait_until(10, "the summary line", || {
        srv.log_text().contains("summary:")
    });
    let log = srv.log_text();
    assert!(
        log.contains("1 connections (0 open), 3 requests, 8192 bytes read and written, 1 errors"),
        "{log}"
    );
    assert!(srv.alive(), "SIGUSR1 ended the server: {log}");
    assert!(srv.sock.exists(), "the socket went");
    qemu_io(&srv.uri(), &["read 0 4k"]);
    srv.signal("USR1");
    wait_until(10, "a second summary", || {
        srv.log_text().matches("summary:").count() == 2
    });
    // qemu-io's read, and whatever else it asks as it goes (a flush).
    let log = srv.log_text();
    let second = log.lines().nth(1).unwrap_or_default();
    assert!(second.contains(" 2 connections (0 open), "), "{log}");
    assert!(count_before(second, "requests") >= 4, "{log}");
    assert!(count_before(second, "bytes") >= 12288, "{log}");
    assert!(srv.stop().success());
}

#[test]
fn sigusr1_writes_the_stats_report_at_once() {
    if !have(&["qemu-io"]) {
        return;
    }
    let dir = TempDir::new();
    let (latest, all) = (dir.join("latest"), dir.join("all"));
    // Each report replaces the last, or (statsappend) follows it.
    let mut srv = Server::start(&["--filter=stats", "memory", "1M", &kv("statsfile", &latest)]);
    let mut app = Server::start(&[
        "--filter=stats",
        "memory",
        "1M",
        &kv("statsfile", &all),
        "statsappend=true",
    ]);
    for (round, s) in [&mut srv, &mut app].into_iter().enumerate() {
        qemu_io(&s.uri(), &["write 0 64k", "read 0 64k"]);
        s.signal("USR1");
        let file = if round == 0 { &latest } else { &all };
        wait_until(10, "the report", || read(file).contains("\nread: 1 ops"));
        assert!(s.alive() && s.sock.exists(), "{}", s.log_text());
        qemu_io(&s.uri(), &["read 0 64k"]);
        s.signal("USR1");
        wait_until(10, "the second report", || {
            read(file).contains("\nread: 2 ops")
        });
    }
    assert_eq!(
        read(&latest).matches("total: ").count(),
        1,
        "{}",
        read(&latest)
    );
    assert_eq!(read(&all).matches("total: ").count(), 2, "{}", read(&all));
    assert!(srv.stop().success() && app.stop().success());
    // At exit, one more: the latest replaces the last; appended, a third.
    assert_eq!(read(&latest).matches("total: ").count(), 1);
    assert_eq!(read(&all).matches("total: ").count(), 3);
}

#[test]
fn sigusr1_mid_run_reports_while_clients_go_on() {
    let dir = TempDir::new();
    let stats = dir.join("stats");
    let srv = Server::start(&["--filter=stats", "memory", "64M", &kv("statsfile", &stats)]);
    let mut b = Command::new(bench())
        .args([
            "-c",
            "4",
            "-q",
            "8",
            "-t",
            "1.5",
            "--interval",
            "0.1",
            "--json",
        ])
        .args(["--rw", "randrw"])
        .arg(srv.uri())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the bench");
    // Its first progress line: requests are flowing.
    let progress = b.stderr.take().expect("piped");
    assert!(
        first_line(progress, 20).is_some(),
        "the bench printed no progress"
    );
    srv.signal("USR1");
    wait_until(10, "the mid-run report", || {
        read(&stats).contains("\nwrite: ")
    });
    let mid = count_before(line_of(&read(&stats), "total: "), "ops");
    assert!(mid > 0);
    let out = b.wait_with_output().expect("the bench ends");
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{json}");
    assert_eq!(number(&json, "errors"), 0, "{json}");
    assert!(srv.sock.exists());
    assert!(srv.stop().success());
    let last = count_before(line_of(&read(&stats), "total: "), "ops");
    assert!(
        last > mid && last >= number(&json, "requests"),
        "{mid} {last} {json}"
    );
}

/// A log line without its timestamp, which is checked: `YYYY-MM-DD
/// HH:MM:SS.uuuuuu `.
#[track_caller]
fn untimed(line: &str) -> &str {
    let b = line.as_bytes();
    let ok = b.len() > 27
        && b[..26].iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b' ',
            13 | 16 => c == b':',
            19 => c == b'.',
            _ => c.is_ascii_digit(),
        })
        && b[26] == b' ';
    assert!(ok, "not a timestamped line: {line}");
    &line[27..]
}

fn log_lines(path: &Path) -> Vec<String> {
    read(path).lines().map(|l| untimed(l).to_string()).collect()
}

#[test]
fn log_lines_as_nbdkit_writes_them() {
    if !have(&["nbdsh"]) {
        return;
    }
    let dir = TempDir::new();
    let log = dir.join("log");
    let srv = Server::start(&["--filter=log", "memory", "64M", &kv("logfile", &log)]);
    nbdsh(
        &srv.uri(),
        "h.pwrite(b'x' * 4096, 4096)\n\
         h.pread(4096, 4096)\n\
         h.flush()\n\
         h.zero(4096, 8192, nbd.CMD_FLAG_FUA)\n\
         h.trim(4096, 0)\n\
         h.block_status(65536, 0, lambda *a: 0)\n",
    );
    assert!(srv.stop().success());
    let want = [
        "Ready thread_model=3",
        "Preconnect id=1 readonly=0 ...",
        "...Preconnect id=1 return=0",
        "connection=1 Connect export=\"\" tls=0 size=0x4000000 minsize=0x1 prefsize=0x1000 \
         maxsize=0x2000000 write=1 flush=1 rotational=0 trim=1 zero=2 fua=2 extents=1 \
         cache=2 fast_zero=1",
        "connection=1 Write id=1 offset=0x1000 count=0x1000 fua=0 ...",
        "connection=1 ...Write id=1 return=0",
        "connection=1 Read id=2 offset=0x1000 count=0x1000 ...",
        "connection=1 ...Read id=2 return=0",
        "connection=1 Flush id=3 ...",
        "connection=1 ...Flush id=3 return=0",
        "connection=1 Zero id=4 offset=0x2000 count=0x1000 trim=1 fua=1 fast=0 ...",
        "connection=1 ...Zero id=4 return=0",
        "connection=1 Trim id=5 offset=0x0 count=0x1000 fua=0 ...",
        "connection=1 ...Trim id=5 return=0",
        "connection=1 Extents id=6 offset=0x0 count=0x10000 req_one=0 ...",
        "connection=1 ...Extents id=6 return=0",
        "connection=1 Disconnect transactions=6",
    ];
    assert_eq!(log_lines(&log), want);
}

/// Every request's line and its outcome's, by (connection, action, id), and
/// each connection's Disconnect count: (requests, outcomes, disconnects).
type Pairs = (
    Vec<(u64, String, u64)>,
    Vec<(u64, String, u64)>,
    Vec<(u64, u64)>,
);

fn pairs(lines: &[String]) -> Pairs {
    let (mut calls, mut outcomes, mut disconnects) = (Vec::new(), Vec::new(), Vec::new());
    for l in lines {
        let Some(rest) = l.strip_prefix("connection=") else {
            continue;
        };
        let mut w = rest.split(' ');
        let conn: u64 = w.next().and_then(|c| c.parse().ok()).expect("connection");
        let act = w.next().expect("action").to_string();
        let third = w.next().unwrap_or("");
        if let Some(n) = third.strip_prefix("transactions=") {
            disconnects.push((conn, n.parse().expect("count")));
            continue;
        }
        let Some(id) = third.strip_prefix("id=").and_then(|i| i.parse().ok()) else {
            continue; // Connect
        };
        match act.strip_prefix("...") {
            Some(a) => {
                assert!(l.ends_with(" return=0"), "{l}");
                outcomes.push((conn, a.to_string(), id));
            }
            None => {
                assert!(l.ends_with(" ..."), "{l}");
                calls.push((conn, act, id));
            }
        }
    }
    calls.sort();
    outcomes.sort();
    (calls, outcomes, disconnects)
}

#[test]
fn every_request_of_real_clients_has_its_outcome_logged() {
    if !have(&["nbdcopy", "qemu-io"]) {
        return;
    }
    let dir = TempDir::new();
    let (log, src) = (dir.join("log"), dir.join("src"));
    fs::write(&src, vec![1u8; 8 << 20]).expect("source");
    let srv = Server::start(&["--filter=log", "memory", "64M", &kv("logfile", &log)]);
    run_ok(
        Command::new("nbdcopy")
            .arg(&src)
            .arg(srv.uri())
            .env("PATH", system_path()),
        60,
    );
    qemu_io(&srv.uri(), &["read -P 1 0 1M", "write -z 1M 64k", "flush"]);
    assert!(srv.stop().success());
    let lines = log_lines(&log);
    let (calls, outcomes, disconnects) = pairs(&lines);
    assert!(calls.len() > 10, "{lines:?}");
    assert_eq!(calls, outcomes, "each request and its outcome");
    let mut ids = calls.iter().map(|c| (c.0, c.2)).collect::<Vec<_>>();
    ids.dedup();
    assert_eq!(ids.len(), calls.len(), "ids are unique per connection");
    for (conn, n) in disconnects {
        let mine = calls.iter().filter(|c| c.0 == conn).count() as u64;
        assert_eq!(mine, n, "connection {conn}'s transactions");
        let max = calls.iter().filter(|c| c.0 == conn).map(|c| c.2).max();
        assert_eq!(max.unwrap_or(0), n, "ids count from 1");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" Write id=") && l.contains(" count="))
    );
    assert!(lines.iter().any(|l| l.contains(" Zero id=")));
    assert!(lines.iter().any(|l| l.contains(" Flush id=")));
}

#[test]
fn errors_are_logged_with_their_names() {
    if !have(&["qemu-io"]) {
        return;
    }
    let dir = TempDir::new();
    let log = dir.join("log");
    let srv = Server::start(&[
        "--filter=log",
        "--filter=error",
        "memory",
        "1M",
        &kv("logfile", &log),
        "error=ENOSPC",
        "error-pwrite-rate=100%",
    ]);
    let out = run(&mut qemu_io_command(&srv.uri(), &["write 0 4k"]), 60);
    assert!(String::from_utf8_lossy(&out.stdout).contains("failed"));
    assert!(srv.stop().success());
    let lines = log_lines(&log);
    assert!(
        lines.contains(&"connection=1 ...Write id=1 return=-1 error=ENOSPC".to_string()),
        "{lines:?}"
    );
}

#[test]
fn logscript_runs_for_each_entry_in_order() {
    if !have(&["nbdsh"]) {
        return;
    }
    let dir = TempDir::new();
    let out = dir.join("script.log");
    let script = format!(
        "logscript=echo $act $type $connection $id $offset >> {}",
        out.display()
    );
    let srv = Server::start(&["--filter=log", "memory", "1M", &script]);
    nbdsh(&srv.uri(), "h.pwrite(b'y' * 512, 512)\nh.pread(512, 0)\n");
    assert!(srv.stop().success());
    let text = read(&out);
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    let want = [
        "Ready PRINT",
        "Preconnect ENTER 1",
        "Preconnect LEAVE 1",
        "Connect PRINT 1",
        "Write ENTER 1 1 0x200",
        "Write LEAVE 1 1",
        "Read ENTER 1 2 0x0",
        "Read LEAVE 1 2",
        "Disconnect PRINT 1",
    ];
    assert_eq!(lines, want, "{text}");
}

/// Lines written and dropped, as SIGUSR1 makes the server say.
#[track_caller]
fn dropped_said(srv: &mut Server) -> String {
    srv.signal("USR1");
    wait_until(10, "the report of dropped lines", || {
        srv.log_text().contains("lines dropped")
    });
    srv.log_text()
}

#[test]
fn a_full_disk_under_the_log_does_not_stall_clients() {
    // /dev/full: every write fails with ENOSPC, as on a full disk.
    let mut srv = Server::start(&["--filter=log", "memory", "64M", "logfile=/dev/full"]);
    let json = run_bench(&srv.uri(), "0.5");
    assert_eq!(number(&json, "errors"), 0);
    assert!(number(&json, "requests") > 100, "{json}");
    let said = dropped_said(&mut srv);
    assert!(said.contains("No space left on device"), "{said}");
    assert!(srv.alive());
    let start = Instant::now();
    assert!(srv.stop().success());
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// A tmpfs of `size` mounted on `dir`, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        fs::create_dir_all(dir).ok()?;
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .ok()?;
        st.success().then(|| Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_log_on_a_tiny_tmpfs_fills_it_and_clients_go_on() {
    let dir = TempDir::new();
    let Some(mnt) = Mount::tmpfs(&dir.join("small"), "64k") else {
        // Mounting needs privileges this run does not have.
        eprintln!("\n*** SKIP: cannot mount a tmpfs; this test did not run ***\n");
        return;
    };
    let log = mnt.0.join("log");
    let mut srv = Server::start(&["--filter=log", "memory", "64M", &kv("logfile", &log)]);
    let json = run_bench(&srv.uri(), "1");
    assert_eq!(number(&json, "errors"), 0);
    // 2 lines of ~95 bytes per request: far more than 64 KiB.
    assert!(number(&json, "requests") > 2000, "{json}");
    let said = dropped_said(&mut srv);
    assert!(said.contains("No space left on device"), "{said}");
    assert!(srv.alive() && srv.sock.exists());
    assert!(srv.stop().success());
    let text = read(&log);
    assert!(text.len() > 32 << 10, "the log filled what there was");
    assert!(text.starts_with("20") && text.contains(" Ready thread_model=3\n"));
    drop(mnt);
}

#[test]
fn a_log_nobody_reads_does_not_stall_clients_nor_the_exit() {
    let dir = TempDir::new();
    let fifo = dir.join("fifo");
    run_ok(Command::new("mkfifo").arg(&fifo), 10);
    // Held open for reading and never read: the server's first writes fill
    // the pipe, and the next one waits for ever.
    let _reader = fs::File::options()
        .read(true)
        .write(true) // opening a FIFO read-write never blocks (Linux)
        .open(&fifo)
        .expect("open the fifo");
    let mut srv = Server::start(&["--filter=log", "memory", "64M", &kv("logfile", &fifo)]);
    let json = run_bench(&srv.uri(), "1");
    assert_eq!(number(&json, "errors"), 0);
    assert!(number(&json, "requests") > 2000, "{json}");
    dropped_said(&mut srv);
    assert!(srv.alive() && srv.sock.exists());
    let start = Instant::now();
    srv.signal("TERM");
    let st = wait_exit(&mut srv.child, 20).expect("the server exits");
    assert!(st.success(), "{}", srv.log_text());
    assert!(start.elapsed() < Duration::from_secs(15));
    assert!(
        srv.log_text().contains("still writing after"),
        "{}",
        srv.log_text()
    );
}

#[test]
fn relative_paths_are_the_directory_the_server_started_in() {
    // In the background the server changes directory to /: the filters'
    // files are opened before.
    let dir = TempDir::new();
    let (sock, pid) = (dir.join("sock"), dir.join("pid"));
    let out = run(
        Command::new(bin())
            .arg("-U")
            .arg(&sock)
            .arg("-P")
            .arg(&pid)
            .args(["--filter=log", "--filter=stats", "memory", "1M"])
            .args(["logfile=rel.log", "statsfile=rel.stats"])
            .current_dir(dir.path()),
        30,
    );
    assert!(out.status.success(), "{out:?}");
    let pid_text = read(&pid);
    let pid_text = pid_text.trim();
    wait_until(10, "Ready in the log", || {
        read(&dir.join("rel.log")).contains("Ready")
    });
    run_ok(Command::new("kill").arg(pid_text), 10);
    wait_until(10, "the server to exit", || !pid_alive(pid_text));
    assert!(read(&dir.join("rel.stats")).starts_with("total: 0 ops"));
}

#[test]
fn mistakes_are_one_line_and_exit_1() {
    let dir = TempDir::new();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--filter=stats", "memory", "1M", "statsfle=/dev/null"],
            "unknown parameter 'statsfle'",
        ),
        (
            &["--filter=stats", "memory", "1M"],
            "statsfile=FILE is required",
        ),
        (
            &[
                "--filter=stats",
                "memory",
                "1M",
                "statsfile=/dev/null",
                "statsthreshold=200",
            ],
            "statsthreshold: '200' is not a percentage",
        ),
        (
            &[
                "--filter=stats",
                "memory",
                "1M",
                "statsfile=/nonexistent/dir/s",
            ],
            "statsfile: /nonexistent/dir/s: No such file or directory",
        ),
        (
            &[
                "--filter=log",
                "memory",
                "1M",
                "logfile=/dev/null",
                "logappend=perhaps",
            ],
            "logappend: could not parse 'perhaps' as a boolean",
        ),
        (
            &["--filter=log", "memory", "1M", "logfiel=/dev/null"],
            "unknown parameter 'logfiel'",
        ),
    ];
    for (args, want) in cases {
        let (code, _, err) = nbdlite_in(dir.path(), args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("nbdlite: ") && err.contains(want),
            "{args:?}: {err}"
        );
    }
}
