//! The command line and the life of the process: misuse, forking into the
//! background, pidfiles, captive `--run`, signals, idle exit, readiness.

mod common;
#[path = "common/wire.rs"]
mod wire;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    PidGuard, Server, TempDir, bin, have, nbdlite_in, pid_alive, qemu_io, rss_kib, run_ok,
    wait_exit, wait_until,
};

/// Runs nbdlite to completion; (exit code, stdout, stderr).
fn nbdlite(args: &[&str]) -> (Option<i32>, String, String) {
    nbdlite_in(&std::env::temp_dir(), args)
}

#[test]
fn misuse_is_one_line_and_exit_1() {
    let dir = TempDir::new();
    let sock = dir.join("s");
    let s = sock.to_str().unwrap();
    for (args, needle) in [
        (vec!["--bogus", "memory", "1M"], "unknown option"),
        (vec!["-f", "-U", s, "disk", "1M"], "unknown backend"),
        (vec!["-f", "-U", s, "memory", "1X"], "could not parse size"),
        (vec!["-f", "-U", s, "memory", "8E"], "too large"),
        (vec!["-f", "-U", s, "memory"], "size parameter is required"),
        (
            vec!["-f", "-U", s, "memory", "color=red"],
            "unknown parameter",
        ),
        (
            vec!["-f", "-U", s, "file", "/nonexistent/disk.img"],
            "No such file",
        ),
        (vec!["-s", "-U", s, "memory", "1M"], "-s cannot"),
        (vec!["--tls=require", "-U", s, "memory", "1M"], "TLS"),
        (vec!["-p", "notaport", "memory", "1M"], "not a port"),
        (vec!["-f"], "no backend"),
        (
            vec!["-f", "-U", "/nonexistent/dir/s", "memory", "1M"],
            "/nonexistent/dir/s",
        ),
    ] {
        let (code, out, err) = nbdlite(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line expected: {err}");
        assert!(
            err.starts_with("nbdlite: ") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(out.is_empty());
        assert!(!sock.exists(), "{args:?} left a socket");
    }
}

#[test]
fn help_and_version() {
    let (code, out, _) = nbdlite(&["--help"]);
    assert_eq!(code, Some(0));
    for word in [
        "--foreground",
        "--unix",
        "--port",
        "memory",
        "file",
        "null",
        "pattern",
        "--idle-timeout",
    ] {
        assert!(out.contains(word), "--help lacks {word}");
    }
    let (code, out, _) = nbdlite(&["--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(out, format!("nbdlite {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn background_mode() {
    if !have(&["qemu-io"]) {
        return;
    }
    let dir = TempDir::new();
    fs::write(dir.join("disk.img"), vec![0x33u8; 1 << 20]).unwrap();
    let (sock, pidfile) = (dir.join("s"), dir.join("pid"));
    let _guard = PidGuard(pidfile.clone());
    // A relative file path, resolved before the daemon moves to /.
    let (code, _, err) = nbdlite_in(
        dir.path(),
        &[
            "-U",
            sock.to_str().unwrap(),
            "-P",
            pidfile.to_str().unwrap(),
            "file",
            "disk.img",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    // Ready the moment the parent returns.
    let pid = fs::read_to_string(&pidfile).expect("pidfile written before the parent exits");
    let pid = pid.trim().to_string();
    assert!(pid_alive(&pid));
    assert_ne!(pid, std::process::id().to_string());
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(cwd, std::path::Path::new("/"));
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    qemu_io(&uri, &["read -P 0x33 0 1M", "write -P 4 0 4k"]);
    assert_eq!(fs::read(dir.join("disk.img")).unwrap()[..4096], [4u8; 4096]);
    run_ok(Command::new("kill").arg(&pid), 10);
    wait_until(10, "the daemon to exit", || !pid_alive(&pid));
    assert!(!sock.exists(), "socket removed");
    // As nbdkit's, the pidfile stays: scripts read it to see the server gone.
    assert_eq!(fs::read_to_string(&pidfile).unwrap().trim(), pid);
}

#[test]
fn captive_run() {
    // The command's status is ours; the private socket goes away.
    let (code, out, err) = nbdlite(&[
        "-U",
        "-",
        "-e",
        "foo",
        "memory",
        "1M",
        "--run",
        "echo \"$uri|$unixsocket|$exportname|$port\"; exit 7",
    ]);
    assert_eq!(code, Some(7), "{err}");
    let fields: Vec<&str> = out.trim().split('|').collect();
    let sock = fields[1];
    assert_eq!(fields[0], format!("nbd+unix:///foo?socket={sock}"));
    assert!(sock.ends_with("/socket"), "{sock}");
    assert_eq!((fields[2], fields[3]), ("foo", ""));
    assert!(
        !std::path::Path::new(sock).exists(),
        "private socket removed"
    );
    assert!(
        !std::path::Path::new(sock).parent().unwrap().exists(),
        "private dir removed"
    );
    // A real client through $uri.
    if have(&["qemu-io"]) {
        let (code, out, err) = nbdlite(&[
            "-U",
            "-",
            "memory",
            "1M",
            "--run",
            "qemu-io -f raw \"$uri\" -c 'write -P 1 0 4k' -c 'read -P 1 0 4k'",
        ]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(!out.contains("failed"), "{out}");
    }
    // TCP: the URI names the address and the port actually bound.
    let (code, out, err) = nbdlite(&[
        "-i",
        "127.0.0.1",
        "-p",
        "0",
        "memory",
        "1M",
        "--run",
        "echo \"$uri $port\"",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (uri, port) = out.trim().split_once(' ').unwrap();
    assert!(port.parse::<u16>().unwrap() > 0);
    assert_eq!(uri, format!("nbd://127.0.0.1:{port}"));
}

#[test]
fn signals_end_the_server_in_order() {
    for sig in ["INT", "TERM", "QUIT"] {
        let mut srv = Server::start(&["memory", "1M"]);
        srv.signal(sig);
        let st = wait_exit(&mut srv.child, 10).expect("exit");
        assert!(st.success(), "SIG{sig}: {st}");
        assert!(!srv.sock.exists(), "SIG{sig} left the socket");
        assert!(srv.pidfile.exists(), "SIG{sig} removed the pidfile");
    }
}

#[test]
fn a_client_that_vanishes_mid_reply_does_not_kill_the_server() {
    let srv = Server::start(&["memory", "64M"]);
    for _ in 0..3 {
        let (mut c, _, _) = wire::Client::ready(&srv.sock, false, false, false);
        c.request(0, wire::CMD_READ, 1, 0, 32 << 20, &[]);
        c.recv(1000); // part of the reply, then gone: the server meets EPIPE
    }
    let (mut c, _, _) = wire::Client::ready(&srv.sock, false, false, false);
    assert_eq!(c.write(0, b"ok"), 0);
    let mut srv = srv;
    assert!(srv.alive());
}

#[test]
fn idle_timeout() {
    // Nobody connects: gone soon after the timeout, with status 0. Run to the
    // end (waiting for the pidfile could miss a server this quick).
    let dir = TempDir::new();
    let (sock, pidfile) = (dir.join("s"), dir.join("pid"));
    let (code, _, err) = nbdlite_in(
        dir.path(),
        &[
            "-f",
            "-U",
            "s",
            "-P",
            "pid",
            "--idle-timeout",
            "0.3",
            "memory",
            "1M",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(!sock.exists() && pidfile.exists());
    // A connected client keeps it alive; its departure starts the clock. The
    // client must connect before the clock started at start-up runs out: the
    // timeout leaves a loaded machine time for that.
    let mut srv = Server::start(&["--idle-timeout", "2", "memory", "1M"]);
    let (c, _, _) = wire::Client::ready(&srv.sock, false, false, false);
    std::thread::sleep(Duration::from_millis(2500)); // deliberately past the timeout
    assert!(srv.alive(), "exited with a client connected");
    drop(c);
    assert!(
        wait_exit(&mut srv.child, 10)
            .expect("exit after the client left")
            .success()
    );
}

#[test]
fn ready_and_stopping_notifications() {
    let dir = TempDir::new();
    let path = dir.join("notify");
    let rx = UnixDatagram::bind(&path).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let sock = dir.join("s");
    let mut child = Command::new(bin())
        .args(["-f", "-U", sock.to_str().unwrap(), "memory", "1M"])
        .env("NOTIFY_SOCKET", &path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut b = [0u8; 128];
    let n = rx.recv(&mut b).expect("READY=1");
    assert_eq!(
        String::from_utf8_lossy(&b[..n]),
        format!("READY=1\nMAINPID={}", child.id())
    );
    assert!(sock.exists(), "listening before READY=1");
    run_ok(Command::new("kill").arg(child.id().to_string()), 10);
    let n = rx.recv(&mut b).expect("STOPPING=1");
    assert_eq!(&b[..n], b"STOPPING=1");
    assert!(wait_exit(&mut child, 10).unwrap().success());
}

#[test]
fn abstract_notify_socket() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;
    let name = format!("nbdlite-test-notify-{}", std::process::id());
    let rx =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let dir = TempDir::new();
    let mut child = Command::new(bin())
        .args(["-f", "-U", dir.join("s").to_str().unwrap(), "memory", "1M"])
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut b = [0u8; 128];
    let n = rx.recv(&mut b).expect("READY=1");
    assert!(b[..n].starts_with(b"READY=1\n"));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn exit_with_parent() {
    let dir = TempDir::new();
    let (sock, pidfile) = (dir.join("s"), dir.join("pid"));
    let _guard = PidGuard(pidfile.clone());
    // The parent: a shell that starts nbdlite, then waits to be killed.
    let script = format!(
        "{} --exit-with-parent -U {} -P {} memory 1M & while :; do sleep 1; done",
        bin(),
        sock.display(),
        pidfile.display()
    );
    let mut parent = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(10, "the pidfile", || pidfile.exists());
    let pid = fs::read_to_string(&pidfile).unwrap().trim().to_string();
    parent.kill().unwrap();
    parent.wait().unwrap();
    wait_until(10, "nbdlite to follow its parent", || !pid_alive(&pid));
}

#[test]
fn single_mode_over_a_pair_of_pipes() {
    use std::io::{Read, Write};
    let mut child = Command::new(bin())
        .args(["-s", "memory", "1M"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut to = child.stdin.take().unwrap();
    let mut from = child.stdout.take().unwrap();
    let mut greeting = [0u8; 18];
    from.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    let mut msg = wire::client_flags(3).to_vec();
    msg.extend(wire::option(wire::OPT_EXPORT_NAME, b""));
    // WRITE "pipe" at 0, then READ it back.
    for (kind, len, payload) in [
        (wire::CMD_WRITE, 4u64, &b"pipe"[..]),
        (wire::CMD_READ, 4, &[][..]),
    ] {
        msg.extend(wire::request(false, 0, kind, 7, 0, len));
        msg.extend_from_slice(payload);
    }
    to.write_all(&msg).unwrap();
    let mut reply = [0u8; 10 + 16 + 16 + 4];
    from.read_exact(&mut reply).unwrap();
    assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), 1 << 20);
    assert_eq!(&reply[10..14], &wire::SIMPLE_MAGIC.to_be_bytes());
    assert_eq!(&reply[42..], b"pipe");
    drop(to); // EOF on stdin: the one client is gone
    assert!(wait_exit(&mut child, 10).expect("exit").success());
}

#[test]
fn a_gibibyte_of_ram_costs_nothing_until_written() {
    let srv = Server::start(&["memory", "1G"]);
    let base = rss_kib(srv.pid());
    // Connected and negotiated clients cost next to nothing either.
    let clients: Vec<_> = (0..50)
        .map(|_| wire::Client::ready(&srv.sock, true, false, false).0)
        .collect();
    let rss = rss_kib(srv.pid());
    // The release build stays under 4 MiB (README); a debug build maps more
    // of its larger, unoptimised text.
    let limit = if cfg!(debug_assertions) { 8192 } else { 4096 };
    assert!(rss < limit, "RSS {rss} KiB before any write");
    assert!(
        rss - base < 512,
        "50 idle clients: RSS from {base} to {rss} KiB"
    );
    drop(clients);
}
