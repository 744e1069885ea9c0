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
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    TempDir, bin, cpu_ticks, have, nbdinfo, nbdsh, qemu_io, run, run_ok, socket_activate,
    wait_exit, wait_until,
};

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

    fn pid(&self) -> i32 {
        self.child.id() as i32
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

    /// The server's log says `what`.
    #[track_caller]
    fn assert_logged(&self, what: &str) {
        let log = self.log_text();
        assert!(log.contains(what), "no {what:?} in the log: {log}");
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
    srv.assert_logged("socket activation: 1 fd(s)");
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
    assert_eq!(written, srv.pid() as u32);
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
        // A write on the Unix socket is read over TCP.
        qemu_io(&format!("nbd://127.0.0.1:{port}"), &["read -P 0x62 0 1"]);
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

/// A server given a socket at fd 3 but LISTEN_* variables that are not for it
/// (LISTEN_FDS = `fds`, LISTEN_PID = `pid` or its own), run as
/// `-U DIR/own.sock ARGS memory 1M`; and the path of that socket.
fn not_activated(
    dir: &TempDir,
    fds: &str,
    pid: Option<&str>,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Activated, PathBuf) {
    let (l, _) = unix_listener(dir);
    let own = dir.join("own.sock");
    let all = [&["-U", own.to_str().unwrap()], args, &["memory", "1M"]].concat();
    (activate(dir, stdio_of(l), None, fds, pid, env, &all), own)
}

#[test]
fn variables_for_another_process_are_ignored() {
    let dir = TempDir::new();
    // LISTEN_PID=1 is not us: a warning, then -U works as if nothing was set.
    let (mut srv, own) = not_activated(&dir, "1", Some("1"), &[], &["-f"]);
    srv.wait_serving();
    srv.assert_logged("warning: LISTEN_PID=1 was not for us");
    let mut c = wire::Client::start(&own);
    c.go(b"");
    for bad in ["x", "0", "-1"] {
        let dir = TempDir::new();
        let (mut srv, _) = not_activated(&dir, bad, None, &[], &["-f"]);
        srv.wait_serving();
        srv.assert_logged(&format!(
            "malformed LISTEN_FDS environment variable '{bad}'"
        ));
    }
}

#[test]
fn no_child_inherits_the_variables() {
    // Activation forbids --run, so look at a --run child of a server whose
    // LISTEN_PID was not its own: the variables are gone all the same.
    let dir = TempDir::new();
    let out = dir.join("env");
    let run = format!("env > {}", out.display());
    let env = [("LISTEN_FDNAMES", "nbd"), ("NOTIFY_SOCKET", "/nonexistent")];
    let (mut srv, _) = not_activated(&dir, "1", Some("1"), &env, &["--run", &run]);
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
    srv.assert_logged("fd 3 is not a usable socket");
    // fd 3 is a datagram socket.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut srv = activate_one(&dir, stdio_of(udp), &["memory", "1M"]);
    assert_eq!(srv.exit_status(10).code(), Some(1));
    srv.assert_logged("not a stream socket");
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
    // A client waiting before the server starts: connected from the first
    // moment, so the idle clock cannot run out before it arrives.
    let c = UnixStream::connect(&path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut srv = activate_one(
        &dir,
        stdio_of(l),
        &["--idle-timeout", "0.5", "memory", "1M"],
    );
    assert_eq!(&greeting(&c), b"NBDMAGIC");
    // A connected client, even an idle one, keeps it alive past the timeout.
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

#[test]
fn under_systemd_socket_activate() {
    if !have(&["systemd-socket-activate", "nbdinfo", "nbdsh"]) {
        return;
    }
    let dir = TempDir::new();
    let path = dir.join("s");
    let _sa = socket_activate(&path, &[], &[bin(), "memory", "1G"]);
    let out = nbdinfo(&[&format!("nbd+unix:///?socket={}", path.display())]);
    assert!(out.contains("1073741824"), "{out}");
}

#[test]
fn under_systemd_socket_activate_accept() {
    if !have(&["systemd-socket-activate", "nbdsh"]) {
        return;
    }
    let dir = TempDir::new();
    let path = dir.join("s");
    let sa = socket_activate(&path, &["--accept"], &[bin(), "memory", "1M"]);
    let uri = format!("nbd+unix:///?socket={}", path.display());
    // Each connection gets a fresh server: the first one's write is not seen by the second.
    nbdsh(&uri, "h.pwrite(b'first', 0)");
    let out = nbdsh(&uri, "print(bytes(h.pread(5, 0)))");
    assert!(out.contains(r"b'\x00\x00\x00\x00\x00'"), "{out}");
    // And each exits when its client leaves.
    let ppid = sa.0.id().to_string();
    wait_until(20, "the per-connection servers to exit", || {
        let out = run(
            Command::new("ps").args(["-o", "pid=,stat=,comm=", "--ppid", &ppid]),
            10,
        );
        out.stdout.is_empty()
    });
}

/// systemd's Accept=yes over TCP: fd 3 is one accepted TCP connection. The
/// test is the superserver (systemd-socket-activate cannot listen on port 0,
/// and a fixed port could be taken): it accepts one connection on a port the
/// kernel chose and starts nbdlite with it, while qemu-io is that client.
#[test]
fn accept_mode_over_tcp() {
    if !have(&["qemu-io"]) {
        return;
    }
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let superserver = std::thread::spawn(move || {
        let (conn, _) = l.accept().expect("accept");
        let dir = TempDir::new();
        let srv = activate_one(&dir, stdio_of(conn), &["memory", "1M"]);
        (dir, srv)
    });
    qemu_io(
        &format!("nbd://127.0.0.1:{port}"),
        &["write -P 9 0 64k", "read -P 9 0 64k"],
    );
    let (_dir, mut srv) = superserver.join().expect("the superserver");
    // Its one client has gone, and so has it.
    assert!(srv.exit_status(10).success(), "{}", srv.log_text());
}
