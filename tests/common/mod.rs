//! Helpers shared by the integration tests: a guard that owns a running server,
//! private temp dirs, bounded waits, and checks for external tools.
//!
//! Every wait here is bounded and waits for a signal (a pidfile, a socket, an
//! exit), never a fixed sleep.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
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
    std::env::var("NBDLITE_REQUIRE_INTEROP").is_ok_and(|v| v == "1")
}

/// True if every tool is on PATH. If one is missing: a loud SKIP line, or a
/// failure when NBDLITE_REQUIRE_INTEROP=1.
#[track_caller]
pub fn have(tools: &[&str]) -> bool {
    for t in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        if !found {
            if interop_required() {
                panic!("{t} is required (NBDLITE_REQUIRE_INTEROP=1) but not installed");
            }
            eprintln!("\n*** SKIP: {t} is not installed; this test did not run ***\n");
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
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
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
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
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

/// A server in the foreground on a private Unix socket. Dropping it kills and
/// reaps the process, so a failed assert leaks nothing.
pub struct Server {
    pub child: Child,
    pub dir: TempDir,
    pub sock: PathBuf,
    pub pidfile: PathBuf,
    pub log: PathBuf,
}

impl Server {
    /// `nbdlite -f -U DIR/sock -P DIR/pid ARGS…`, ready when the pidfile appears.
    #[track_caller]
    pub fn start<S: AsRef<OsStr>>(args: &[S]) -> Server {
        let dir = TempDir::new();
        let sock = dir.join("sock");
        let pidfile = dir.join("pid");
        let log = dir.join("log");
        let mut cmd = Command::new(bin());
        cmd.arg("-f")
            .arg("-U")
            .arg(&sock)
            .arg("-P")
            .arg(&pidfile)
            .args(args);
        Server::spawn(cmd, dir, sock, pidfile, log)
    }

    /// Like `start`, with full control of the command line: the caller passes
    /// `-P` with `pidfile_in(dir)` and whatever listening flags it wants.
    #[track_caller]
    pub fn spawn(
        mut cmd: Command,
        dir: TempDir,
        sock: PathBuf,
        pidfile: PathBuf,
        log: PathBuf,
    ) -> Server {
        let err = fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn nbdlite");
        let mut s = Server {
            child,
            dir,
            sock,
            pidfile,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !s.pidfile.exists() {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("nbdlite exited early ({st}): {}", s.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "nbdlite did not write its pidfile: {}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        s
    }

    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }

    pub fn uri_export(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.sock.display())
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

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel picked it).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
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
    nbdlite::sys::raise_nofile_limit().map_or(0, |(_, after)| after)
}

/// Kills and reaps a child when dropped, so a failed assert leaks no process.
pub struct Reap(pub Child);

impl Drop for Reap {
    fn drop(&mut self) {
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

/// Starts `nbdlite --print-uri ARGS` (ARGS keep it in the foreground: `-f`)
/// and reads the URI it prints once it listens. The URI is empty if the server
/// exited instead; its stderr is left in the child's pipe to say why.
pub fn start_printing_uri(args: &[&str]) -> (Reap, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Reap(
        Command::new(bin())
            .arg("--print-uri")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nbdlite"),
    );
    let mut line = String::new();
    let out = child.0.stdout.take().expect("piped stdout");
    let _ = BufReader::new(out).read_line(&mut line);
    (child, line.trim().to_string())
}
