//! Helpers shared by the integration tests: a guard that owns a running server,
//! private temp dirs, bounded waits, and checks for external tools.
//!
//! Every wait here is bounded and waits for a signal (a pidfile, a socket, an
//! exit), never a fixed sleep.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nbdlite")
}

/// A fresh directory under /tmp (short: sun_path is 108 bytes), removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = PathBuf::from(format!("/tmp/nbdlite-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Polls `f` every few milliseconds until it is true; panics after `secs` seconds.
#[track_caller]
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut pause = Duration::from_millis(1);
    while !f() {
        if Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Waits for a child to exit, at most `secs` seconds.
pub fn wait_exit(child: &mut Child, secs: u64) -> Option<ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether interop tools are mandatory (CI sets NBDLITE_REQUIRE_INTEROP=1).
pub fn interop_required() -> bool {
    skipped::interop_required()
}

/// True if every tool is on PATH. If one is missing: a skip that `cargo test`
/// shows (see `skip`), or a failure when NBDLITE_REQUIRE_INTEROP=1.
#[track_caller]
pub fn have(tools: &[&str]) -> bool {
    for t in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        if !found {
            skipped::missing_tool(t);
            return false;
        }
    }
    true
}

/// PATH with /usr/bin first, so that nbdsh finds Debian's python3 and its `nbd`
/// module rather than a pyenv shim.
pub fn system_path() -> String {
    let old = std::env::var("PATH").unwrap_or_default();
    format!("/usr/bin:/bin:{old}")
}

/// Runs a command to completion with a time limit, capturing its output.
#[track_caller]
pub fn run(cmd: &mut Command, secs: u64) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let status = match wait_exit(&mut child, secs) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{desc} did not finish within {secs}s");
        }
    };
    Output {
        status,
        stdout: out.collect(),
        stderr: err.collect(),
    }
}

/// A pipe read on a thread of its own, as its bytes come.
struct Drain {
    bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

fn drain(mut pipe: impl Read + Send + 'static) -> Drain {
    let bytes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, done) = mpsc::channel();
    let sink = bytes.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            sink.lock().map(|mut v| v.extend_from_slice(&buf[..n])).ok();
        }
        let _ = tx.send(());
    });
    Drain { bytes, done }
}

impl Drain {
    /// What the command wrote, once the pipe ends; a process it left behind
    /// (a server libnbd started for it) may hold the pipe open, so after a
    /// few seconds, what came by then.
    fn collect(self) -> Vec<u8> {
        let _ = self.done.recv_timeout(Duration::from_secs(3));
        self.bytes.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Runs a command that must succeed; returns its stdout.
#[track_caller]
pub fn run_ok(cmd: &mut Command, secs: u64) -> String {
    let desc = format!("{cmd:?}");
    let out = run(cmd, secs);
    assert!(
        out.status.success(),
        "{desc} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A server in the foreground on a private Unix socket (or, from `start_tcp`,
/// on a TCP port the kernel chose). Dropping it kills and reaps the process, so
/// a failed assert leaks nothing.
pub struct Server {
    pub child: Child,
    pub dir: TempDir,
    /// The Unix socket; from `start_tcp`, a path where none was made.
    pub sock: PathBuf,
    pub pidfile: PathBuf,
    pub log: PathBuf,
    /// The TCP port, from `start_tcp`.
    pub port: Option<u16>,
}

impl Server {
    /// `nbdlite -f -U DIR/sock -P DIR/pid ARGS…`, ready when the pidfile appears.
    #[track_caller]
    pub fn start<S: AsRef<OsStr>>(args: &[S]) -> Server {
        Server::start_with(Command::new(bin()), args)
    }

    /// `PROGRAM… -f -U DIR/sock -P DIR/pid ARGS…`: `start` for another server
    /// that takes nbdkit's flags (nbdkit itself), or nbdlite behind a wrapper
    /// (`prlimit … -- nbdlite`).
    #[track_caller]
    pub fn start_with<S: AsRef<OsStr>>(mut cmd: Command, args: &[S]) -> Server {
        let dir = TempDir::new();
        let (sock, pidfile, log) = (dir.join("sock"), dir.join("pid"), dir.join("log"));
        cmd.arg("-f")
            .arg("-U")
            .arg(&sock)
            .arg("-P")
            .arg(&pidfile)
            .args(args);
        Server::spawn(cmd, dir, sock, pidfile, log)
    }

    /// `nbdlite -f -i 127.0.0.1 -p 0 --print-uri -P DIR/pid ARGS…`, on TCP
    /// alone: the kernel picks the port as it binds (no port is chosen before,
    /// so none can be taken in between), and the server prints
    /// `nbd://127.0.0.1:PORT` once it listens. That line is the readiness
    /// signal (`nbds://...` under `--tls=require`). (Given `-U` too, it would
    /// print the Unix URI instead.)
    #[track_caller]
    pub fn start_tcp<S: AsRef<OsStr>>(args: &[S]) -> Server {
        Server::start_tcp_with(Command::new(bin()), args)
    }

    /// `start_tcp` with a command of the caller's (nbdlite with its own
    /// environment, e.g. NBDLITE_IO_URING=0).
    #[track_caller]
    pub fn start_tcp_with<S: AsRef<OsStr>>(mut cmd: Command, args: &[S]) -> Server {
        let dir = TempDir::new();
        let (sock, pidfile, log) = (dir.join("sock"), dir.join("pid"), dir.join("log"));
        cmd.args(["-f", "-i", "127.0.0.1", "-p", "0", "--print-uri", "-P"])
            .arg(&pidfile)
            .args(args);
        let mut s = Server::launch(cmd, dir, sock, pidfile, log, Stdio::piped());
        let out = s.child.stdout.take().expect("piped stdout");
        let Some(line) = first_line(out, 10) else {
            panic!("nbdlite printed no URI within 10s: {}", s.log_text());
        };
        // `nbds://` when TLS is required.
        let port = line
            .strip_prefix("nbd://127.0.0.1:")
            .or_else(|| line.strip_prefix("nbds://127.0.0.1:"))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("not a TCP URI on 127.0.0.1: {line}"));
        s.port = Some(port);
        s.wait_for_pidfile();
        s
    }

    /// Like `start`, with full control of the command line: the caller passes
    /// `-P` with `pidfile` and whatever listening flags it wants.
    #[track_caller]
    pub fn spawn(
        cmd: Command,
        dir: TempDir,
        sock: PathBuf,
        pidfile: PathBuf,
        log: PathBuf,
    ) -> Server {
        let mut s = Server::launch(cmd, dir, sock, pidfile, log, Stdio::null());
        s.wait_for_pidfile();
        s
    }

    /// Starts the process, stderr into `log`; does not wait for anything.
    fn launch(
        mut cmd: Command,
        dir: TempDir,
        sock: PathBuf,
        pidfile: PathBuf,
        log: PathBuf,
        stdout: Stdio,
    ) -> Server {
        let err = fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(err)
            .spawn()
            .expect("spawn the server");
        Server {
            child,
            dir,
            sock,
            pidfile,
            log,
            port: None,
        }
    }

    /// Bounded wait for the pidfile, written once the server is listening.
    #[track_caller]
    /// Until the pidfile names this very process (the file of a server run
    /// before on the same path stays, as nbdkit's does, with its pid).
    fn wait_for_pidfile(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let me = self.child.id().to_string();
        while fs::read_to_string(&self.pidfile).map_or(true, |p| p.trim() != me) {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("the server exited early ({st}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the server did not write its pidfile: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }

    pub fn uri_export(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.sock.display())
    }

    /// The port of a server from `start_tcp`.
    #[track_caller]
    pub fn tcp_port(&self) -> u16 {
        self.port.expect("a server from Server::start_tcp")
    }

    /// `nbd://127.0.0.1:PORT`, for a server from `start_tcp`.
    #[track_caller]
    pub fn tcp_uri(&self) -> String {
        format!("nbd://127.0.0.1:{}", self.tcp_port())
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What the server wrote to stderr so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (via kill(1), so tests need no libc).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(st.success());
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    #[track_caller]
    pub fn stop(mut self) -> ExitStatus {
        self.signal("TERM");
        let st = wait_exit(&mut self.child, 10);
        st.unwrap_or_else(|| panic!("nbdlite ignored SIGTERM: {}", self.log_text()))
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first line a child writes to `out` (without its line end), waiting at
/// most `secs` seconds; None if it closed `out` first or took longer. The rest
/// of its output is read and thrown away, so it never blocks on a full pipe.
pub fn first_line(out: impl Read + Send + 'static, secs: u64) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut line = String::new();
        let got = r.read_line(&mut line).is_ok_and(|n| n > 0);
        let _ = tx.send(got.then(|| line.trim_end().to_string()));
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    rx.recv_timeout(Duration::from_secs(secs)).ok().flatten()
}

/// Runs nbdlite to completion in `dir`, with `system_path()`; (exit code,
/// stdout, stderr).
pub fn nbdlite_in(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = run(
        Command::new(bin())
            .args(args)
            .current_dir(dir)
            .env("PATH", system_path()),
        60,
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `qemu-io -f raw URI -c CMD…`, for a caller that adds options (`-r`,
/// `--trace`: qemu-io takes them after the image too) or expects a failure.
pub fn qemu_io_command(uri: &str, cmds: &[&str]) -> Command {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", uri]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c
}

/// qemu-io with commands that must all succeed; returns its stdout.
#[track_caller]
pub fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let out = run_ok(&mut qemu_io_command(uri, cmds), 60);
    assert!(!out.contains("failed"), "qemu-io: {out}");
    out
}

/// `qemu-img ARGS…`, which must succeed; returns its stdout.
#[track_caller]
pub fn qemu_img(args: &[&str]) -> String {
    run_ok(Command::new("qemu-img").args(args), 300)
}

/// `nbdinfo ARGS…`, which must succeed; returns its stdout.
#[track_caller]
pub fn nbdinfo(args: &[&str]) -> String {
    run_ok(Command::new("nbdinfo").args(args), 60)
}

/// nbdsh, with `system_path()` so that it finds Debian's python3.
pub fn nbdsh_command() -> Command {
    let mut c = Command::new("nbdsh");
    c.env("PATH", system_path());
    c
}

/// Runs an nbdsh script against `uri` (`h` is connected, with base:allocation
/// requested); returns stdout.
#[track_caller]
pub fn nbdsh(uri: &str, script: &str) -> String {
    run_ok(
        nbdsh_command().args(["--base-allocation", "-u", uri, "-c", script]),
        60,
    )
}

/// A sparse file of `size` bytes (all holes).
pub fn sparse_file(path: &Path, size: u64) {
    fs::File::create(path)
        .and_then(|f| f.set_len(size))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Whether this test runs as root (mounts and loop devices need it).
pub fn is_root() -> bool {
    proc_status(std::process::id() as i32, "Uid") == 0
}

/// Whether a process (by the pid a pidfile holds) is running: a zombie has
/// exited already.
pub fn pid_alive(pid: &str) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

/// Whether a Unix socket is bound at `path` and listening, as the kernel's
/// table says: the signal that a superserver is ready, which a test cannot get
/// by connecting (that would start a server, or use up a one-client one).
pub fn unix_listening(path: &Path) -> bool {
    const ACCEPTCON: u32 = 0x0001_0000; // "Flags": __SO_ACCEPTCON, listening
    let want = path.as_os_str().to_string_lossy();
    fs::read_to_string("/proc/net/unix").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 8
                && f[7] == want
                && u32::from_str_radix(f[3], 16).is_ok_and(|x| x & ACCEPTCON != 0)
        })
    })
}

/// `systemd-socket-activate FLAGS… -l SOCK SERVER…` (SERVER: a program and its
/// arguments), once SOCK listens; killed with the servers it started on drop.
#[track_caller]
pub fn socket_activate(sock: &Path, flags: &[&str], server: &[&str]) -> Reap {
    let sa = Command::new("systemd-socket-activate")
        .args(flags)
        .arg("-l")
        .arg(sock)
        .args(server)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn systemd-socket-activate");
    let sa = Reap(sa);
    wait_until(20, "systemd-socket-activate to listen", || {
        unix_listening(sock)
    });
    sa
}

/// A loop device over a file (with `sector`-byte logical sectors if given),
/// detached on drop. None if it cannot be set up (not root, no loop devices).
pub struct LoopDevice(pub String);

impl LoopDevice {
    pub fn new(img: &Path, sector: Option<u32>) -> Option<LoopDevice> {
        let mut c = Command::new("losetup");
        c.args(["-f", "--show"]);
        if let Some(b) = sector {
            c.args(["-b", &b.to_string()]);
        }
        let out = c.arg(img).output().ok()?;
        let dev = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && dev.starts_with("/dev/")).then_some(LoopDevice(dev))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A field of /proc/PID/status (the number before " kB" for sizes).
pub fn proc_status(pid: i32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number")
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    proc_status(pid, "VmRSS")
}

/// CPU time a process has used (utime + stime), in clock ticks (usually 10 ms).
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The command name may hold spaces: fields are counted after its ')'.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Raises this test process's soft RLIMIT_NOFILE to its hard limit, with the
/// server's own call (so the tests need no libc); returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    nbdlite::os::raise_nofile_limit().map_or(0, |(_, after)| after)
}

/// Kills and reaps a child when dropped, so a failed assert leaks no process;
/// the child's own children first (a superserver's per-connection servers).
pub struct Reap(pub Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-P", &self.0.id().to_string()])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills (SIGKILL) the process named in a pidfile when dropped: for servers
/// that forked into the background.
pub struct PidGuard(pub PathBuf);

impl Drop for PidGuard {
    fn drop(&mut self) {
        if let Ok(pid) = fs::read_to_string(&self.0) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
    }
}

/// `"key": value` from a JSON object (nbdinfo's, nbdlite-bench's), as text: a
/// number, `true`, or a string with its quotes. Enough for flat objects.
#[track_caller]
pub fn json_field<'a>(json: &'a str, key: &str) -> &'a str {
    let k = format!("\"{key}\": ");
    let at = json
        .find(&k)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + k.len();
    let rest = &json[at..];
    let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
    rest[..end].trim()
}
pub mod certs;
pub mod nginx;
pub mod skipped;

/// The test did not run: said where `cargo test` shows it (see `skipped`).
pub fn skip(why: &str) {
    skipped::skip(why);
}

/// Part of the test did not run (see `skipped`).
pub fn skip_part(why: &str) {
    skipped::skip_part(why);
}

/// `nbdkit -f -i 127.0.0.1 -p PORT -P DIR/pid ARGS…` on a free TCP port,
/// ready when the pidfile appears. nbdkit 1.32 can neither print a port the
/// kernel chose nor take a listening socket from us, so the port is one the
/// kernel just gave us and we let go; should another process take it in
/// between, nbdkit exits with "Address already in use" and another is tried.
#[track_caller]
pub fn nbdkit_tcp<S: AsRef<OsStr>>(args: &[S]) -> Server {
    for _ in 0..10 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = TempDir::new();
        let (sock, pidfile, log) = (dir.join("sock"), dir.join("pid"), dir.join("log"));
        let mut cmd = Command::new("nbdkit");
        cmd.args(["-f", "-i", "127.0.0.1", "-p", &port.to_string(), "-P"])
            .arg(&pidfile)
            .args(args);
        let mut s = Server::launch(cmd, dir, sock, pidfile, log, Stdio::null());
        s.port = Some(port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if s.pidfile.exists() {
                return s;
            }
            if let Ok(Some(st)) = s.child.try_wait() {
                let log = s.log_text();
                assert!(log.contains("in use"), "nbdkit exited early ({st}): {log}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nbdkit wrote no pidfile: {}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    panic!("nbdkit found no free TCP port in 10 tries");
}
