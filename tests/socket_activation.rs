//! Socket activation: sockets handed over at fd 3… with LISTEN_FDS/LISTEN_PID,
//! as systemd, systemd-socket-activate and libnbd do it.
//!
//! To put a socket at fd 3 with std alone, the test passes it as the child's
//! stdin (and a second one as stdout), and a shell moves it into place and
//! execs the server, keeping its pid so that `LISTEN_PID=$$` is right.

mod common;
#[path = "common/wire.rs"]
mod wire;

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{TempDir, bin, have, run, run_ok, wait_exit, wait_until};

/// An activated server; killed and reaped on drop.
struct Activated {
    child: Child,
    log: PathBuf,
    pidfile: PathBuf,
}

impl Activated {
    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the pidfile (the server is serving), or panics if it died.
    #[track_caller]
    fn wait_serving(&mut self) {
        let (pidfile, child) = (&self.pidfile, &mut self.child);
        wait_until(10, "the pidfile", || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "nbdlite exited early: {st}: {}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            pidfile.exists()
        });
    }

    #[track_caller]
    fn exit_status(&mut self, secs: u64) -> std::process::ExitStatus {
        wait_exit(&mut self.child, secs)
            .unwrap_or_else(|| panic!("nbdlite did not exit: {}", self.log_text()))
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `nbdlite -P DIR/pid ARGS` with `fd3` (and `fd4`) in place, LISTEN_FDS =
/// `listen_fds` and LISTEN_PID = its own pid (unless `pid` overrides it).
fn activate(
    dir: &TempDir,
    fd3: Stdio,
    fd4: Option<Stdio>,
    listen_fds: &str,
    pid: Option<&str>,
    env: &[(&str, &str)],
    args: &[&str],
) -> Activated {
    let log = dir.join("log");
    let pidfile = dir.join("pid");
    let _ = fs::remove_file(&pidfile);
    let pid_expr = pid.unwrap_or("$$");
    let script = format!(
        "exec 3<&0 {} 0</dev/null; LISTEN_PID={pid_expr} LISTEN_FDS={listen_fds} exec \"$@\"",
        if fd4.is_some() {
            "4>&1 1>/dev/null"
        } else {
            ""
        }
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .arg("sh")
        .arg(bin())
        .arg("-P")
        .arg(&pidfile)
        .args(args);
    cmd.stdin(fd3)
        .stdout(fd4.unwrap_or(Stdio::null()))
        .stderr(fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn sh");
    Activated {
        child,
        log,
        pidfile,
    }
}

/// The usual case: one socket at fd 3, LISTEN_FDS=1 and our own pid.
fn activate_one(dir: &TempDir, fd3: Stdio, args: &[&str]) -> Activated {
    activate(dir, fd3, None, "1", None, &[], args)
}

fn unix_listener(dir: &TempDir) -> (UnixListener, PathBuf) {
    let path = dir.join("sock");
    (UnixListener::bind(&path).unwrap(), path)
}

fn stdio_of(fd: impl Into<OwnedFd>) -> Stdio {
    Stdio::from(fd.into())
}

/// Reads the 8-byte NBDMAGIC from a fresh connection.
fn greeting(mut s: impl Read) -> [u8; 8] {
    let mut b = [0u8; 8];
    s.read_exact(&mut b).expect("greeting");
    b
}

#[test]
fn the_seed_test_and_a_full_session() {
    let dir = TempDir::new();
    let (l, path) = unix_listener(&dir);
    let mut srv = activate_one(&dir, stdio_of(l), &["-v", "memory", "1M"]);
    srv.wait_serving();
    let s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(&greeting(&s), b"NBDMAGIC");
    drop(s);
    let (mut c, size, _) = wire::Client::ready(&path, true, false, false);
    assert_eq!(size, 1 << 20);
    assert_eq!(c.write(4096, b"activated"), 0);
    assert_eq!(c.read(0, 4096, 9).unwrap(), b"activated");
    assert!(
        srv.log_text().contains("socket activation: 1 fd(s)"),
        "{}",
        srv.log_text()
    );
    // FD_CLOEXEC on the inherited fd, and LISTEN_* gone from the environment.
    let fdinfo = fs::read_to_string(format!("/proc/{}/fdinfo/3", srv.pid())).unwrap();
    let flags = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap()
        .trim();
    let flags = u32::from_str_radix(flags, 8).unwrap();
    assert_ne!(flags & 0o2000000, 0, "O_CLOEXEC on fd 3: {fdinfo}");
    // The pidfile names the server itself.
    let written: u32 = fs::read_to_string(&srv.pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(written, srv.pid());
}

#[test]
fn a_client_queued_before_the_server_starts() {
    let dir = TempDir::new();
    let (l, path) = unix_listener(&dir);
    let early = UnixStream::connect(&path).unwrap(); // in the backlog, as systemd leaves it
    early
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _srv = activate_one(&dir, stdio_of(l), &["memory", "1M"]);
    assert_eq!(&greeting(&early), b"NBDMAGIC");
}

#[test]
fn unix_and_tcp_in_one_process() {
    let dir = TempDir::new();
    let (l, path) = unix_listener(&dir);
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let mut srv = activate(
        &dir,
        stdio_of(l),
        Some(stdio_of(tcp)),
        "2",
        None,
        &[],
        &["memory", "1M"],
    );
    srv.wait_serving();
    let t = TcpStream::connect(("127.0.0.1", port)).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(&greeting(&t), b"NBDMAGIC");
    let mut c = wire::Client::start(&path);
    c.go(b"");
    assert_eq!(c.write(0, b"both"), 0);
    if have(&["qemu-io"]) {
        let out = run_ok(
            Command::new("qemu-io").args([
                "-f",
                "raw",
                &format!("nbd://127.0.0.1:{port}"),
                "-c",
                "read -P 0x62 0 1",
            ]),
            30,
        );
        assert!(
            !out.contains("failed"),
            "a write on the Unix socket is read over TCP: {out}"
        );
    }
}

#[test]
fn flags_that_choose_sockets_are_refused() {
    let dir = TempDir::new();
    for (flag, args) in [
        ("-i", &["-i", "127.0.0.1"][..]),
        ("-p", &["-p", "10809"]),
        ("-s", &["-s"]),
        ("-U", &["-U", "/tmp/x"]),
        ("--run", &["--run", "true"]),
    ] {
        let (l, _) = unix_listener(&dir);
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["memory", "1M"]);
        let mut srv = activate(&dir, stdio_of(l), None, "1", None, &[], &all);
        let st = srv.exit_status(10);
        assert_eq!(st.code(), Some(1));
        assert_eq!(
            srv.log_text(),
            format!("nbdlite: cannot use socket activation with {flag} flag\n")
        );
        fs::remove_file(dir.join("sock")).unwrap();
    }
}

#[test]
fn variables_for_another_process_are_ignored() {
    let dir = TempDir::new();
    let (l, _) = unix_listener(&dir);
    let own = dir.join("own.sock");
    let own_s = own.to_str().unwrap();
    // LISTEN_PID=1 is not us: a warning, then -U works as if nothing was set.
    let mut srv = activate(
        &dir,
        stdio_of(l),
        None,
        "1",
        Some("1"),
        &[],
        &["-f", "-U", own_s, "memory", "1M"],
    );
    srv.wait_serving();
    assert!(
        srv.log_text()
            .contains("warning: LISTEN_PID=1 was not for us"),
        "{}",
        srv.log_text()
    );
    let mut c = wire::Client::start(&own);
    c.go(b"");
    for bad in ["x", "0", "-1"] {
        let dir = TempDir::new();
        let (l, _) = unix_listener(&dir);
        let own = dir.join("own.sock");
        let mut srv = activate(
            &dir,
            stdio_of(l),
            None,
            bad,
            None,
            &[],
            &["-f", "-U", own.to_str().unwrap(), "memory", "1M"],
        );
        srv.wait_serving();
        assert!(
            srv.log_text().contains("malformed LISTEN_FDS"),
            "{bad}: {}",
            srv.log_text()
        );
    }
}

#[test]
fn no_child_inherits_the_variables() {
    // Activation forbids --run, so look at a --run child of a server whose
    // LISTEN_PID was not its own: the variables are gone all the same.
    let dir = TempDir::new();
    let (l, _) = unix_listener(&dir);
    let out = dir.join("env");
    let run = format!("env > {}", out.display());
    let own = dir.join("own.sock");
    let mut srv = activate(
        &dir,
        stdio_of(l),
        None,
        "1",
        Some("1"),
        &[("LISTEN_FDNAMES", "nbd"), ("NOTIFY_SOCKET", "/nonexistent")],
        &["-U", own.to_str().unwrap(), "--run", &run, "memory", "1M"],
    );
    assert!(srv.exit_status(10).success(), "{}", srv.log_text());
    let env = fs::read_to_string(&out).unwrap();
    for v in [
        "LISTEN_PID=",
        "LISTEN_FDS=",
        "LISTEN_FDNAMES=",
        "NOTIFY_SOCKET=",
    ] {
        assert!(!env.contains(v), "{v} inherited: {env}");
    }
    assert!(env.contains("uri=nbd+unix:///?socket="), "{env}");
}

#[test]
fn broken_inheritance_is_fatal_and_never_spins() {
    // LISTEN_FDS=2 but only fd 3 is open.
    let dir = TempDir::new();
    let (l, _) = unix_listener(&dir);
    let mut srv = activate(&dir, stdio_of(l), None, "2", None, &[], &["memory", "1M"]);
    assert_eq!(srv.exit_status(10).code(), Some(1));
    let log = srv.log_text();
    assert!(
        log.starts_with("nbdlite: socket activation: invalid file descriptor fd = 4: "),
        "{log}"
    );
    assert_eq!(log.lines().count(), 1, "{log}");
    // fd 3 is /dev/null (nbdkit 1.32 spins on this).
    let null = fs::File::open("/dev/null").unwrap();
    let mut srv = activate_one(&dir, Stdio::from(null), &["memory", "1M"]);
    assert_eq!(srv.exit_status(10).code(), Some(1));
    assert!(
        srv.log_text().contains("fd 3 is not a usable socket"),
        "{}",
        srv.log_text()
    );
    // fd 3 is a datagram socket.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut srv = activate_one(&dir, stdio_of(udp), &["memory", "1M"]);
    assert_eq!(srv.exit_status(10).code(), Some(1));
    assert!(
        srv.log_text().contains("not a stream socket"),
        "{}",
        srv.log_text()
    );
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn an_accepted_connection_is_one_client_then_exit() {
    // systemd Accept=yes: fd 3 is the client itself.
    let dir = TempDir::new();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut srv = activate_one(&dir, stdio_of(theirs), &["memory", "1M"]);
    srv.wait_serving();
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(&greeting(&ours), b"NBDMAGIC");
    // Idle, it must not spin (nbdkit 1.32 loops on accept() here).
    let before = cpu_ticks(srv.pid());
    std::thread::sleep(Duration::from_millis(500)); // deliberately idle: nothing to wait for
    let used = cpu_ticks(srv.pid()) - before;
    assert!(used <= 5, "{used} ticks of CPU in 0.5 s while idle");
    drop(ours);
    assert!(srv.exit_status(10).success());
}

#[test]
fn readiness_notification() {
    let dir = TempDir::new();
    let (l, _) = unix_listener(&dir);
    let notify = dir.join("notify");
    let rx = UnixDatagram::bind(&notify).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut srv = activate(
        &dir,
        stdio_of(l),
        None,
        "1",
        None,
        &[("NOTIFY_SOCKET", notify.to_str().unwrap())],
        &["memory", "1M"],
    );
    let mut b = [0u8; 256];
    let n = rx.recv(&mut b).expect("READY=1");
    assert_eq!(
        String::from_utf8_lossy(&b[..n]),
        format!("READY=1\nMAINPID={}", srv.pid())
    );
    srv.wait_serving();
    run_ok(Command::new("kill").arg(srv.pid().to_string()), 10);
    let n = rx.recv(&mut b).expect("STOPPING=1");
    assert_eq!(&b[..n], b"STOPPING=1");
    assert!(srv.exit_status(10).success());
}

#[test]
fn idle_exit_leaves_the_socket_to_the_next_server() {
    let dir = TempDir::new();
    let (l, path) = unix_listener(&dir);
    let keep = l.try_clone().unwrap(); // the superserver's copy
    let mut srv = activate_one(
        &dir,
        stdio_of(l),
        &["--idle-timeout", "0.5", "memory", "1M"],
    );
    srv.wait_serving();
    // A connected client, even an idle one, keeps it alive past the timeout.
    let c = wire::Client::connect(&path);
    std::thread::sleep(Duration::from_millis(900)); // deliberately past the idle timeout
    assert!(
        srv.child.try_wait().unwrap().is_none(),
        "exited with a client connected"
    );
    drop(c);
    assert!(srv.exit_status(10).success(), "idle exit is a success");
    // A client arriving now is not refused: it waits in the backlog…
    let late = UnixStream::connect(&path).expect("not refused");
    late.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // …and the next activated server greets it.
    let _next = activate_one(&dir, stdio_of(keep), &["memory", "1M"]);
    assert_eq!(&greeting(&late), b"NBDMAGIC");
}

/// Retries `f` until it succeeds (a superserver socket appears asynchronously).
fn retry_ok(what: &str, mut f: impl FnMut() -> bool) {
    wait_until(20, what, &mut f);
}

fn sa_child(args: &[&str]) -> Child {
    Command::new("systemd-socket-activate")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate")
}

struct Reap(Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-P", &self.0.id().to_string()])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn connects(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}

#[test]
fn under_systemd_socket_activate() {
    if !have(&["systemd-socket-activate", "nbdinfo", "nbdsh"]) {
        return;
    }
    let dir = TempDir::new();
    let path = dir.join("s");
    let p = path.to_str().unwrap();
    let _sa = Reap(sa_child(&["-l", p, bin(), "memory", "1G"]));
    retry_ok("the socket", || path.exists());
    let uri = format!("nbd+unix:///?socket={p}");
    let mut last = String::new();
    retry_ok("nbdinfo", || {
        let out = run(Command::new("nbdinfo").arg(&uri), 30);
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success()
    });
    assert!(last.contains("1073741824"), "{last}");
}

#[test]
fn under_systemd_socket_activate_accept() {
    if !have(&["systemd-socket-activate", "nbdsh"]) {
        return;
    }
    let dir = TempDir::new();
    let path = dir.join("s");
    let p = path.to_str().unwrap();
    let sa = Reap(sa_child(&["--accept", "-l", p, bin(), "memory", "1M"]));
    retry_ok("the socket", || path.exists() && connects(&path));
    let uri = format!("nbd+unix:///?socket={p}");
    let nbdsh = |script: &str| {
        run_ok(
            Command::new("nbdsh")
                .env("PATH", common::system_path())
                .args(["-u", &uri, "-c", script]),
            30,
        )
    };
    // Each connection gets a fresh server: the first one's write is not seen by the second.
    nbdsh("h.pwrite(b'first', 0)");
    let out = nbdsh("print(bytes(h.pread(5, 0)))");
    assert!(out.contains(r"b'\x00\x00\x00\x00\x00'"), "{out}");
    // And each exits when its client leaves.
    let ppid = sa.0.id().to_string();
    retry_ok("the per-connection servers to exit", || {
        let out = run(
            Command::new("ps").args(["-o", "pid=,stat=,comm=", "--ppid", &ppid]),
            10,
        );
        out.stdout.is_empty()
    });
}

#[test]
fn accept_mode_over_tcp() {
    if !have(&["systemd-socket-activate", "qemu-io"]) {
        return;
    }
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let _sa = Reap(sa_child(&["--accept", "-l", &addr, bin(), "memory", "1M"]));
    retry_ok("the TCP socket", || TcpStream::connect(&addr).is_ok());
    let out = run_ok(
        Command::new("qemu-io").args([
            "-f",
            "raw",
            &format!("nbd://{addr}"),
            "-c",
            "write -P 9 0 64k",
            "-c",
            "read -P 9 0 64k",
        ]),
        30,
    );
    assert!(!out.contains("failed"), "{out}");
}
