//! The ways people run nbdkit, run with nbdlite instead: captive `--run`,
//! `-U -`, `-s` (socketpair, inetd, a socket on stdin alone), `--print-uri`, `-u`/`-g`,
//! `--exit-with-parent`, `--log`, `-t`.

mod common;
#[path = "common/wire.rs"]
mod wire;

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{
    PidGuard, Reap, Server, TempDir, bin, first_line, have, is_root, nbdlite_in, pid_alive,
    qemu_img, qemu_io, run, run_ok, socket_activate, wait_exit, wait_until,
};

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
    let qcow2 = dir.join("disk.qcow2");
    let (img, qcow2) = (img.to_str().unwrap(), qcow2.to_str().unwrap());
    qemu_img(&["compare", "-f", "raw", "-F", "qcow2", img, qcow2]);
}

#[test]
fn private_socket_is_removed_after_a_signal() {
    let dir = TempDir::new();
    let mut child = Reap(
        Command::new(bin())
            .args(["-f", "-U", "-", "--print-uri", "memory", "1M"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let line = first_line(child.0.stdout.take().unwrap(), 10).expect("the URI");
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
    wait_until(10, "the daemon to exit", || !pid_alive(&pid));

    // TCP: the port actually bound.
    let mut child = Reap(
        Command::new(bin())
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
            .unwrap(),
    );
    let line = first_line(child.0.stdout.take().unwrap(), 10).expect("the URI");
    let rest = line
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
    c.send(&wire::client_flags(3));
    let (size, _) = c.go(b"");
    assert_eq!(size, 1 << 20);
    assert_eq!(c.write(4096, b"pair"), 0);
    assert_eq!(c.read(0, 4096, 4).unwrap(), b"pair");
    drop(c); // the one client leaves: so does the server
    assert!(wait_exit(&mut child.0, 10).expect("exit").success());
}

/// nbd-server's inetd convention, which nbd-tester-client's `-I` mode
/// follows: the client's socket on stdin only, stdout left where the caller's
/// was (a log file, /dev/null). The replies go back on the socket, and
/// nothing is written to stdout.
#[test]
fn single_on_a_socket_on_stdin_alone() {
    let dir = TempDir::new();
    let log = dir.join("stdout.log");
    for stdout in ["file", "/dev/null"] {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let out = match stdout {
            "file" => Stdio::from(fs::File::create(&log).unwrap()),
            _ => Stdio::null(),
        };
        let mut child = Reap(
            Command::new(bin())
                .args(["-s", "-e", "export1", "memory", "1M"])
                .stdin(Stdio::from(OwnedFd::from(theirs)))
                .stdout(out)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut c = wire::Client::over(ours);
        assert_eq!(&c.recv(18)[..8], b"NBDMAGIC", "stdout on {stdout}");
        c.send(&3u32.to_be_bytes());
        let (size, _) = c.go(b"export1");
        assert_eq!(size, 1 << 20);
        assert_eq!(c.write(0, b"inetd"), 0);
        assert_eq!(c.read(0, 0, 5).unwrap(), b"inetd");
        drop(c);
        let st = wait_exit(&mut child.0, 10).expect("exit after the one client");
        assert!(st.success(), "stdout on {stdout}: {st}");
    }
    assert_eq!(fs::read(&log).unwrap(), b"", "nothing goes to stdout");
}

/// `-s` with stdin and stdout on regular files (as nbdkit's fuzzing does:
/// `nbdkit -s memory 1M < requests > replies`): descriptors the Poll refuses
/// are served without it, and the stream is answered in full.
#[test]
fn single_on_regular_files() {
    use std::io::Write;
    let dir = TempDir::new();
    let (requests, replies) = (dir.join("requests.bin"), dir.join("replies.bin"));
    let mut stream = wire::client_flags(3).to_vec(); // FIXED_NEWSTYLE | NO_ZEROES
    stream.extend(wire::option(wire::OPT_GO, &wire::info_data(b"", &[])));
    stream.extend(wire::request(false, 0, wire::CMD_WRITE, 1, 512, 5));
    stream.extend_from_slice(b"hello");
    stream.extend(wire::request(false, 0, wire::CMD_READ, 2, 512, 5));
    stream.extend(wire::request(false, 0, wire::CMD_DISC, 3, 0, 0));
    fs::write(&requests, &stream).unwrap();
    // As a user types it: the shell opens the files.
    let sh = |redirections: &str| {
        let script = format!("exec \"$0\" -s memory 1M {redirections}");
        run(Command::new("sh").args(["-c", &script, bin()]), 30)
    };
    let out = sh(&format!("< {} > {}", requests.display(), replies.display()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {err}", out.status);
    // Read the replies back with the test client, through a socketpair.
    let (mut tx, rx) = UnixStream::pair().unwrap();
    tx.write_all(&fs::read(&replies).unwrap()).unwrap();
    drop(tx);
    let mut c = wire::Client::over(rx);
    assert_eq!(&c.recv(18)[..8], b"NBDMAGIC");
    while c.recv_opt_reply().kind != wire::REP_ACK {}
    assert_eq!(c.reply(None).error, 0, "WRITE");
    let r = c.reply(Some(5));
    assert_eq!((r.error, r.payload.as_slice()), (0, &b"hello"[..]), "READ");
    // Nothing at all: EOF at once, a clean exit.
    let out = sh("< /dev/null > /dev/null");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "/dev/null: {}: {err}", out.status);
}

/// `systemd-socket-activate --inetd FLAGS -l SOCK nbdlite -s memory 1M`, once
/// its socket listens; and the socket's URI.
fn inetd(sock: &Path, flags: &[&str]) -> (Reap, String) {
    let flags = [&["--inetd"], flags].concat();
    let sa = socket_activate(sock, &flags, &[bin(), "-s", "memory", "1M"]);
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
    qemu_io(&uri, &["write -P 0x55 0 4k"]);
    // A fresh process, a fresh RAM disk.
    qemu_io(&uri, &["read -P 0 0 4k"]);
    drop(sa);

    let (mut sa, uri) = inetd(&dir.join("t"), &[]);
    qemu_io(&uri, &["read 0 4k"]);
    let st = wait_exit(&mut sa.0, 10).expect("nbdlite exits after its one client");
    assert!(st.success(), "{st}");
}

#[test]
fn user_and_group() {
    let dir = TempDir::new();
    if !is_root() {
        common::skip_part("not root: only the refusal is checked");
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
    c.send(&wire::client_flags(3));
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
    wait_until(10, "the daemon to exit", || !pid_alive(&pid));
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

/// A captive command that writes its pid to `ready`, then waits for `go` to
/// appear and exits 3.
fn waiting_command(dir: &TempDir) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let (ready, go) = (dir.join("ready"), dir.join("go"));
    let cmd = format!(
        "echo $$ > {r}.tmp && mv {r}.tmp {r}; while [ ! -e {g} ]; do sleep 0.02; done; exit 3",
        r = ready.display(),
        g = go.display()
    );
    (cmd, ready, go)
}

/// `nbdlite -v -U - memory 1M --run CMD`, its log in `log`.
fn captive(cmd: &str, log: &Path) -> Reap {
    Reap(
        Command::new(bin())
            .args(["-v", "-U", "-", "memory", "1M", "--run", cmd])
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// The captive command's pid, once it runs.
fn command_pid(ready: &Path) -> String {
    wait_until(10, "the command to start", || ready.exists());
    fs::read_to_string(ready).unwrap().trim().to_string()
}

fn kill(sig: &str, pid: u32) {
    run_ok(Command::new("kill").args([sig, &pid.to_string()]), 10);
}

/// A signal to a captive nbdlite stops the serving, not the command: it is
/// waited for and its status is nbdlite's, as with nbdkit. A second signal
/// ends the command; a SIGKILL takes it down with nbdlite.
#[test]
fn a_captive_command_is_never_left_running_on_its_own() {
    let dir = TempDir::new();
    let log = dir.join("log");
    let (cmd, ready, go) = waiting_command(&dir);
    let mut srv = captive(&cmd, &log);
    command_pid(&ready);
    kill("-TERM", srv.0.id());
    fs::write(&go, "").unwrap();
    let st = wait_exit(&mut srv.0, 10).expect("exits once the command does");
    assert_eq!(st.code(), Some(3), "the command's status");

    let dir = TempDir::new();
    let log = dir.join("log");
    let (cmd, ready, _) = waiting_command(&dir);
    let mut srv = captive(&cmd, &log);
    command_pid(&ready);
    kill("-TERM", srv.0.id());
    // Two signals sent at once could merge into one: the second follows the first's effect.
    wait_until(10, "the first signal to be seen", || {
        fs::read_to_string(&log).is_ok_and(|l| l.contains("shutting down"))
    });
    kill("-TERM", srv.0.id());
    let st = wait_exit(&mut srv.0, 10).expect("a second signal ends the command");
    assert_eq!(st.code(), Some(128 + 15), "the command was terminated");

    let dir = TempDir::new();
    let (cmd, ready, _) = waiting_command(&dir);
    let mut srv = captive(&cmd, &dir.join("log"));
    let pid = command_pid(&ready);
    kill("-KILL", srv.0.id());
    wait_exit(&mut srv.0, 10).expect("killed");
    wait_until(10, "the command to end with nbdlite", || !pid_alive(&pid));
}
