//! The ways people run nbdkit, run with nbdlite instead: captive `--run`,
//! `-U -`, `-s` (socketpair, inetd), `--print-uri`, `-u`/`-g`,
//! `--exit-with-parent`, `--log`, `-t`.

mod common;
#[path = "common/wire.rs"]
mod wire;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{
    PidGuard, Reap, Server, TempDir, bin, have, run, run_ok, start_printing_uri, system_path,
    wait_exit, wait_until,
};

/// Runs nbdlite to completion in `dir`; (exit code, stdout, stderr).
fn nbdlite_in(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
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

fn is_root() -> bool {
    run_ok(Command::new("id").arg("-u"), 5).trim() == "0"
}

fn alive(pid: &str) -> bool {
    // A zombie has exited: only a live process has a non-Z state.
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

#[test]
fn run_sets_every_variable_in_the_environment_and_the_command() {
    let dir = TempDir::new();
    // Expanded by the shell in CMD, and visible to a grandchild (exported).
    let (code, out, err) = nbdlite_in(
        dir.path(),
        &[
            "-e",
            "disk",
            "memory",
            "1M",
            "--run",
            r#"printf '%s|' "$uri" "$nbd" "$port" "$unixsocket" "$exportname" "$tls"; sh -c 'printf "%s" "$uri"'"#,
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let f: Vec<&str> = out.split('|').collect();
    let sock = f[3];
    assert!(sock.ends_with("/socket"), "--run alone means -U -: {out}");
    let uri = format!("nbd+unix:///disk?socket={sock}");
    assert_eq!(f[0], uri);
    assert_eq!(f[1], uri, "$nbd: the URI, as nbdkit >= 1.24");
    assert_eq!(f[2], "", "no TCP port");
    assert_eq!((f[4], f[5]), ("disk", "0"));
    assert_eq!(f[6], uri, "exported to grandchildren");
    assert!(!Path::new(sock).parent().unwrap().exists(), "-U - removed");
}

#[test]
fn run_exit_status_is_the_commands() {
    let dir = TempDir::new();
    for (cmd, want) in [
        ("exit 0", 0),
        ("exit 7", 7),
        ("exit 255", 255),
        ("kill -TERM $$", 128 + 15),
        ("kill -KILL $$", 128 + 9),
    ] {
        let (code, _, err) = nbdlite_in(dir.path(), &["memory", "1M", "--run", cmd]);
        assert_eq!(code, Some(want), "{cmd}: {err}");
    }
    // --run implies -f: nbdlite is still there while the command runs.
    let (code, out, _) = nbdlite_in(
        dir.path(),
        &["memory", "1M", "--run", "kill -0 $PPID && echo here"],
    );
    assert_eq!((code, out.trim()), (Some(0), "here"));
}

/// The two command lines of the issue, as a user types them.
#[test]
fn captive_examples_work_as_written() {
    if !have(&["nbdinfo", "qemu-img"]) {
        return;
    }
    let dir = TempDir::new();
    let (code, out, err) = nbdlite_in(
        dir.path(),
        &["-U", "-", "memory", "1G", "--run", r#"nbdinfo "$uri""#],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("1073741824"), "{out}");

    let img = dir.join("disk.img");
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 / 4096) as u8).collect();
    fs::write(&img, &data).unwrap();
    let (code, out, err) = nbdlite_in(
        dir.path(),
        &[
            "-U",
            "-",
            "file",
            "disk.img",
            "--run",
            r#"qemu-img convert -O qcow2 "$nbd" disk.qcow2"#,
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "qcow2"])
            .arg(&img)
            .arg(dir.join("disk.qcow2")),
        30,
    );
}

#[test]
fn private_socket_is_removed_after_a_signal() {
    let dir = TempDir::new();
    let (mut child, line) = start_printing_uri(&["-f", "-U", "-", "memory", "1M"]);
    let sock = line.split_once("?socket=").expect("a Unix URI").1;
    let sock = Path::new(sock).to_path_buf();
    assert!(sock.exists(), "{line}");
    wire::still_serves(&sock);
    assert!(
        Command::new("kill")
            .arg(child.0.id().to_string())
            .status()
            .unwrap()
            .success()
    );
    assert!(wait_exit(&mut child.0, 10).is_some());
    assert!(
        !sock.parent().unwrap().exists(),
        "private directory removed"
    );
    drop(dir);
}

#[test]
fn print_uri_before_forking() {
    let dir = TempDir::new();
    let (sock, pidfile) = (dir.join("s"), dir.join("pid"));
    let _daemon = PidGuard(pidfile.clone());
    // In the background: the URI is on our stdout before nbdlite returns.
    let (code, out, err) = nbdlite_in(
        dir.path(),
        &["--print-uri", "-U", "s", "-P", "pid", "memory", "1M"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("nbd+unix:///?socket={}\n", sock.display()));
    let pid = fs::read_to_string(&pidfile).unwrap().trim().to_string();
    wire::still_serves(&sock);
    run_ok(Command::new("kill").arg(&pid), 5);
    wait_until(10, "the daemon to exit", || !alive(&pid));

    // TCP: the port actually bound.
    let mut child = Command::new(bin())
        .args([
            "-f",
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "-e",
            "x y",
            "--print-uri",
        ])
        .args(["memory", "1M"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let rest = line
        .trim()
        .strip_prefix("nbd://127.0.0.1:")
        .unwrap_or_else(|| panic!("{line}"));
    let (port, name) = rest.split_once('/').unwrap();
    assert!(port.parse::<u16>().unwrap() > 0);
    assert_eq!(name, "x%20y");
}

#[test]
fn single_on_a_socketpair() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = OwnedFd::from(theirs);
    let mut child = Reap(
        Command::new(bin())
            .args(["-s", "memory", "1M"])
            .stdin(Stdio::from(fd.try_clone().unwrap()))
            .stdout(Stdio::from(fd))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut c = wire::Client::over(ours);
    let g = c.recv(18);
    assert_eq!(&g[..8], b"NBDMAGIC");
    c.send(&3u32.to_be_bytes());
    let (size, _) = c.go(b"");
    assert_eq!(size, 1 << 20);
    assert_eq!(c.write(4096, b"pair"), 0);
    assert_eq!(c.read(0, 4096, 4).unwrap(), b"pair");
    drop(c); // the one client leaves: so does the server
    assert!(wait_exit(&mut child.0, 10).expect("exit").success());
}

/// `systemd-socket-activate --inetd FLAGS -l SOCK nbdlite -s memory 1M`, once
/// its socket exists; and the socket's URI.
fn inetd(sock: &Path, flags: &[&str]) -> (Reap, String) {
    let sa = Reap(
        Command::new("systemd-socket-activate")
            .arg("--inetd")
            .args(flags)
            .arg("-l")
            .arg(sock)
            .args([bin(), "-s", "memory", "1M"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(10, "the socket", || sock.exists());
    (sa, format!("nbd+unix:///?socket={}", sock.display()))
}

/// `systemd-socket-activate --accept --inetd`: one process per client, with the
/// client on stdin/stdout; without `--accept` the listening socket itself is
/// on stdin, and nbdlite serves the first client from it, then exits.
#[test]
fn single_under_an_inetd() {
    if !have(&["systemd-socket-activate", "qemu-io"]) {
        return;
    }
    let dir = TempDir::new();
    let (sa, uri) = inetd(&dir.join("s"), &["--accept"]);
    let io = |cmd: &str| {
        run_ok(
            Command::new("qemu-io").args(["-f", "raw", &uri, "-c", cmd]),
            30,
        )
    };
    assert!(!io("write -P 0x55 0 4k").contains("failed"));
    // A fresh process, a fresh RAM disk.
    assert!(!io("read -P 0 0 4k").contains("failed"));
    drop(sa);

    let (mut sa, uri) = inetd(&dir.join("t"), &[]);
    run_ok(
        Command::new("qemu-io").args(["-f", "raw", &uri, "-c", "read 0 4k"]),
        30,
    );
    let st = wait_exit(&mut sa.0, 10).expect("nbdlite exits after its one client");
    assert!(st.success(), "{st}");
}

#[test]
fn user_and_group() {
    let dir = TempDir::new();
    if !is_root() {
        eprintln!("\n*** SKIP: user_and_group: not root; only the refusal is checked ***\n");
        let (code, _, err) = nbdlite_in(dir.path(), &["-u", "0", "memory", "1M", "--run", "true"]);
        assert_eq!(code, Some(1));
        assert!(err.starts_with("nbdlite: cannot change to"), "{err}");
        return;
    }
    // By name, and by number; the server (our parent) and the command run as them.
    for (u, g) in [("nobody", "nogroup"), ("65534", "65534")] {
        let (code, out, err) = nbdlite_in(
            dir.path(),
            &[
                "-u",
                u,
                "-g",
                g,
                "memory",
                "1M",
                "--run",
                "grep -E '^(Uid|Gid|Groups):' /proc/$PPID/status; test -O \"$unixsocket\" && echo owner",
            ],
        );
        assert_eq!(code, Some(0), "{err}");
        let fields = |key: &str| -> Vec<String> {
            let line = out.lines().find(|l| l.starts_with(key)).unwrap_or("");
            line.split_whitespace().skip(1).map(String::from).collect()
        };
        assert_eq!(fields("Uid:"), ["65534"; 4], "{out}");
        assert_eq!(fields("Gid:"), ["65534"; 4], "{out}");
        assert_eq!(fields("Groups:"), ["65534"], "{out}");
        assert!(
            out.contains("owner"),
            "the private socket was handed over: {out}"
        );
    }
    // A user alone, by name or by number, takes its primary group, and no
    // supplementary group of root's stays.
    for u in ["nobody", "65534"] {
        let (code, out, err) = nbdlite_in(
            dir.path(),
            &["-u", u, "memory", "1M", "--run", "id -g; id -G"],
        );
        assert_eq!((code, out.as_str()), (Some(0), "65534\n65534\n"), "{err}");
    }
    // A uid without a passwd entry has no known group: -g is required.
    let (code, _, err) = nbdlite_in(dir.path(), &["-u", "54321", "memory", "1M"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("-g"), "{err}");
    // The pidfile is written before privileges go, where only root may write
    // (the temp dir is root's: nobody cannot create files in it).
    let (code, out, err) = nbdlite_in(
        dir.path(),
        &[
            "-u",
            "nobody",
            "-P",
            "pid",
            "memory",
            "1M",
            "--run",
            "test -s pid && echo written",
        ],
    );
    assert_eq!((code, out.trim()), (Some(0), "written"), "{err}");
    for (flag, name) in [("-u", "no-such-user-here"), ("-g", "no-such-group-here")] {
        let (code, _, err) = nbdlite_in(dir.path(), &[flag, name, "memory", "1M"]);
        assert_eq!(code, Some(1));
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(name), "{err}");
    }
    // Clients are served once privileges are gone.
    if have(&["nbdinfo"]) {
        let (code, out, err) = nbdlite_in(
            dir.path(),
            &[
                "-u",
                "nobody",
                "memory",
                "1M",
                "--run",
                r#"nbdinfo --size "$uri""#,
            ],
        );
        assert_eq!((code, out.trim()), (Some(0), "1048576"), "{err}");
    }
}

/// A client that breaks the protocol: the server logs a warning about it.
fn provoke_warning(sock: &Path) {
    let mut c = wire::Client::connect(sock);
    c.send(&3u32.to_be_bytes());
    c.send(b"NOT-IHAVEOPT-AT-ALL");
    assert!(c.closed_by_peer(10));
}

#[test]
fn logging_destinations_and_levels() {
    // Default (stderr): the warning names the connection.
    let srv = Server::start(&["memory", "1M"]);
    provoke_warning(&srv.sock);
    wire::still_serves(&srv.sock);
    wait_until(5, "the warning", || srv.log_text().contains("warning"));
    let log = srv.log_text();
    assert!(
        log.lines().all(|l| l.starts_with("nbdlite: ")) && log.contains("conn 1: "),
        "{log}"
    );
    // A healthy connection logs nothing per request without -v.
    assert!(!log.contains("READ"), "{log}");
    drop(srv);

    // --log=null: nothing at all.
    let mut srv = Server::start(&["--log=null", "memory", "1M"]);
    provoke_warning(&srv.sock);
    wire::still_serves(&srv.sock);
    srv.signal("TERM");
    assert!(wait_exit(&mut srv.child, 10).is_some());
    assert_eq!(srv.log_text(), "");

    // -v: a debug line per request, naming its connection.
    let srv = Server::start(&["-v", "memory", "1M"]);
    wire::still_serves(&srv.sock);
    wait_until(5, "request lines", || srv.log_text().contains("READ"));
    assert!(
        srv.log_text()
            .lines()
            .any(|l| l.starts_with("nbdlite: debug: conn ") && l.contains("READ")),
        "{}",
        srv.log_text()
    );
    drop(srv);

    // --log=stderr in the background keeps stderr (the default there is syslog).
    let dir = TempDir::new();
    let err = fs::File::create(dir.join("err")).unwrap();
    let _daemon = PidGuard(dir.join("pid"));
    let st = Command::new(bin())
        .args(["--log=stderr", "-U", "s", "-P", "pid", "memory", "1M"])
        .current_dir(dir.path())
        .stderr(err)
        .status()
        .unwrap();
    assert!(st.success());
    let pid = fs::read_to_string(dir.join("pid"))
        .unwrap()
        .trim()
        .to_string();
    provoke_warning(&dir.join("s"));
    wait_until(5, "the daemon's warning", || {
        fs::read_to_string(dir.join("err")).is_ok_and(|l| l.contains("warning: conn 1: "))
    });
    run_ok(Command::new("kill").arg(&pid), 5);
    wait_until(10, "the daemon to exit", || !alive(&pid));
}

#[test]
fn threads_are_accepted_and_ignored() {
    let dir = TempDir::new();
    for flag in [["-t", "16"], ["--threads", "4"]] {
        let (code, _, err) = nbdlite_in(
            dir.path(),
            &[flag[0], flag[1], "memory", "1M", "--run", "true"],
        );
        assert_eq!(code, Some(0));
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains("ignored"), "{err}");
    }
    for tls in ["on", "require"] {
        let (code, _, err) = nbdlite_in(dir.path(), &["--tls", tls, "memory", "1M"]);
        assert_eq!(code, Some(1));
        assert!(
            err.starts_with("nbdlite: ") && err.lines().count() == 1,
            "{err}"
        );
    }
    let (code, _, _) = nbdlite_in(dir.path(), &["--tls=off", "memory", "1M", "--run", "true"]);
    assert_eq!(code, Some(0));
}
