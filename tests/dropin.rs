//! nbdlite in nbdkit's place: the spellings nbdkit's scripts and unit files
//! use, `--dump-config`, `BACKEND --version` and `BACKEND --dump-plugin` as
//! tools probe them, `--short-options`/`--long-options`, `--mask-handshake`,
//! `-4`/`-6`, export names, sizeless null and pattern, and messages a user
//! can act on.

mod common;

use std::net::TcpStream;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};

use common::{Reap, Server, TempDir, bin, first_line, have, json_field, run, system_path};

/// Runs nbdlite to completion; (exit code, stdout, stderr).
fn nbdlite(args: &[&str]) -> (Option<i32>, String, String) {
    let out = run(
        Command::new(bin()).args(args).env("PATH", system_path()),
        60,
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A misuse: exit 1 and one `nbdlite: ` line that contains `needle`.
#[track_caller]
fn refused(args: &[&str], needle: &str) -> String {
    let (code, out, err) = nbdlite(args);
    assert_eq!(code, Some(1), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: one line expected: {err}");
    assert!(
        err.starts_with("nbdlite: ") && err.contains(needle),
        "{args:?}: {needle:?} expected in {err}"
    );
    assert!(out.is_empty(), "{args:?}: {out}");
    err
}

/// `nbdinfo --json` of a captive nbdlite started with `args`.
#[track_caller]
fn nbdinfo_json(args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--run", "nbdinfo --json \"$uri\""]);
    let (code, out, err) = nbdlite(&all);
    assert_eq!(code, Some(0), "{all:?}: {err}");
    out
}

#[test]
fn nbdkit_long_spellings() {
    if !have(&["nbdinfo"]) {
        return;
    }
    let j = nbdinfo_json(&[
        "--read-only",
        "--export=disk",
        "--new-style",
        "memory",
        "1M",
    ]);
    assert_eq!(json_field(&j, "is_read_only"), "true", "{j}");
    assert!(
        json_field(&j, "uri").starts_with("\"nbd+unix:///disk?"),
        "{j}"
    );
    assert_eq!(json_field(&j, "protocol"), "\"newstyle-fixed\"", "{j}");
    let j = nbdinfo_json(&["--old-style", "--ip-addr", "127.0.0.1", "-p", "0", "null"]);
    assert_eq!(json_field(&j, "protocol"), "\"oldstyle\"", "{j}");
    assert!(
        json_field(&j, "uri").starts_with("\"nbd://127.0.0.1:"),
        "{j}"
    );
    // --no-fork and --pid-file: the process we started is the server.
    let dir = TempDir::new();
    let (sock, pidfile, log) = (dir.join("sock"), dir.join("pid"), dir.join("log"));
    let mut cmd = Command::new(bin());
    cmd.args(["--no-fork", "-U"])
        .arg(&sock)
        .arg("--pid-file")
        .arg(&pidfile)
        .args(["memory", "1M"]);
    let srv = Server::spawn(cmd, dir, sock, pidfile.clone(), log);
    let written = std::fs::read_to_string(&pidfile).unwrap();
    assert_eq!(written.trim(), srv.pid().to_string());
}

#[test]
fn any_export_name_reaches_the_export() {
    if !have(&["nbdinfo"]) {
        return;
    }
    let srv = Server::start(&["-e", "disk", "memory", "1M"]);
    for name in ["", "disk", "something-else"] {
        let out = common::run_ok(
            Command::new("nbdinfo")
                .args(["--size", &srv.uri_export(name)])
                .env("PATH", system_path()),
            30,
        );
        assert_eq!(out.trim(), "1048576", "{name:?}");
    }
    // LIST shows the -e name.
    let out = common::run_ok(
        Command::new("nbdinfo")
            .args(["--list", "--json", &srv.uri()])
            .env("PATH", system_path()),
        30,
    );
    assert_eq!(json_field(&out, "export-name"), "\"disk\"", "{out}");
}

#[test]
fn debug_flags_and_threads_warn_and_change_nothing() {
    let (code, _, err) = nbdlite(&[
        "-D",
        "nbdkit.backend.datapath=0",
        "--debug=memory.x=1",
        "-t",
        "8",
        "-U",
        "-",
        "memory",
        "1M",
        "--run",
        "true",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "one warning each: {err}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("-D nbdkit.backend.datapath=0 -D memory.x=1")
                && l.contains("no effect")),
        "{err}"
    );
    assert!(lines.iter().any(|l| l.contains("-t")), "{err}");
    refused(&["-D", "foo", "memory", "1M"], "NAME.FLAG=N");
}

#[test]
fn dump_config_in_nbdkit_format() {
    let (code, out, err) = nbdlite(&["--dump-config"]);
    assert_eq!(code, Some(0), "{err}");
    let get = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k}= in {out}"))
            .to_string()
    };
    for l in out.lines() {
        let (k, _) = l.split_once('=').expect("key=value");
        assert!(
            k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{l}"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(get("name"), "nbdlite");
    assert_eq!(get("version"), version);
    assert_eq!(
        format!("{}.{}", get("version_major"), get("version_minor")),
        version[..version.rfind('.').unwrap()]
    );
    let tls = if cfg!(feature = "tls") { "yes" } else { "no" };
    assert_eq!(get("tls"), tls, "what this build can do");
    assert_eq!(get("exit_with_parent"), "yes");
    assert_eq!(get("host_cpu"), std::env::consts::ARCH);
    assert!(get("host_os").starts_with("linux"));
    assert_eq!(
        std::fs::canonicalize(get("binary")).unwrap(),
        std::fs::canonicalize(bin()).unwrap()
    );
}

#[test]
fn backend_version_as_nbdkit() {
    let v = env!("CARGO_PKG_VERSION");
    let (code, out, _) = nbdlite(&["memory", "--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(out, format!("nbdlite {v}\nmemory {v}\n"));
    let (code, out, _) = nbdlite(&["--version", "pattern", "1M"]);
    assert_eq!(code, Some(0));
    assert_eq!(out, format!("nbdlite {v}\npattern {v}\n"));
    refused(&["nosuch", "--version"], "unknown backend 'nosuch'");
}

#[test]
fn null_and_pattern_without_a_size_are_empty() {
    if !have(&["nbdinfo"]) {
        return;
    }
    for backend in ["null", "pattern"] {
        let (code, out, err) = nbdlite(&[backend, "--run", "nbdinfo --size \"$uri\""]);
        assert_eq!(code, Some(0), "{backend}: {err}");
        assert_eq!(out.trim(), "0", "{backend}");
    }
    refused(&["memory"], "size parameter is required");
}

/// Starts `nbdlite -f -p 0 --print-uri FLAGS memory 1M`; the child and its
/// port, or None after a skip if it cannot listen so (a machine without IPv6).
fn tcp_server(flags: &[&str]) -> Option<(Reap, u16)> {
    let mut child = Reap(
        Command::new(bin())
            .args(["-f", "-p", "0", "--print-uri"])
            .args(flags)
            .args(["memory", "1M"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nbdlite"),
    );
    let Some(uri) = first_line(child.0.stdout.take().expect("piped"), 10) else {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err);
        common::skip_part(&format!(
            "nbdlite {flags:?} could not listen ({}); the rest did not run",
            err.trim()
        ));
        return None;
    };
    let port = uri.rsplit(':').next().unwrap().parse().unwrap();
    Some((child, port))
}

fn reaches(addr: &str, port: u16) -> bool {
    TcpStream::connect((addr, port)).is_ok()
}

#[test]
fn ipv4_only_and_ipv6_only() {
    if TcpStream::connect("[::1]:1")
        .is_err_and(|e| e.kind() != std::io::ErrorKind::ConnectionRefused)
    {
        common::skip("no IPv6 loopback on this machine");
        return;
    }
    let Some((_v4, port)) = tcp_server(&["-4"]) else {
        return;
    };
    assert!(reaches("127.0.0.1", port) && !reaches("::1", port));
    let Some((_v6, port)) = tcp_server(&["-4", "--ipv6-only"]) else {
        return;
    };
    assert!(reaches("::1", port) && !reaches("127.0.0.1", port));
    let Some((_both, port)) = tcp_server(&[]) else {
        return;
    };
    assert!(reaches("::1", port) && reaches("127.0.0.1", port));
    refused(&["-4", "-i", "::1", "memory", "1M"], "no IPv4 address");
    refused(
        &["-6", "-i", "127.0.0.1", "memory", "1M"],
        "no IPv6 address",
    );
}

#[test]
fn unix_socket_paths_that_cannot_be_used_say_why() {
    let dir = TempDir::new();
    let long = format!("{}/{}", dir.path().display(), "s".repeat(120));
    refused(&["-f", "-U", &long, "memory", "1M"], "at most 107 bytes");
    let file = dir.join("file");
    std::fs::write(&file, "data").unwrap();
    refused(
        &["-f", "-U", file.to_str().unwrap(), "memory", "1M"],
        "is not a socket",
    );
    // A socket whose server is gone: named as stale, and left in place.
    let stale = dir.join("stale");
    drop(UnixListener::bind(&stale).unwrap());
    refused(
        &["-f", "-U", stale.to_str().unwrap(), "memory", "1M"],
        "a stale socket from an earlier server",
    );
    assert!(stale.exists());
    let srv = Server::start(&["memory", "1M"]);
    refused(
        &["-f", "-U", srv.sock.to_str().unwrap(), "memory", "1M"],
        "another server is listening",
    );
    assert!(UnixStream::connect(&srv.sock).is_ok());
}

#[test]
fn verbose_does_not_open_with_a_no_op() {
    if !have(&["prlimit"]) {
        return;
    }
    let run_under = |nofile: &str| {
        let out = run(
            Command::new("prlimit")
                .arg(format!("--nofile={nofile}"))
                .arg(bin())
                .args(["-v", "-U", "-", "memory", "1M", "--run", "true"]),
            30,
        );
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run_under("512:512");
    assert!(!err.contains("RLIMIT_NOFILE"), "{err}");
    let err = run_under("256:512");
    assert!(
        err.lines()
            .next()
            .unwrap()
            .contains("RLIMIT_NOFILE: 256 raised to 512"),
        "{err}"
    );
}

/// `nbdkit PLUGIN --dump-plugin`, as scripts and nbdkit's own tests read it
/// (`grep ^thread_model=`, `grep mlock=yes`): `key=value` lines only.
#[test]
fn dump_plugin_as_nbdkit() {
    let dump = |args: &[&str]| {
        let (code, out, err) = nbdlite(args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        for l in out.lines() {
            let (k, _) = l.split_once('=').expect("key=value");
            assert!(
                k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{l}"
            );
        }
        out
    };
    let v = env!("CARGO_PKG_VERSION");
    let out = dump(&["memory", "--dump-plugin"]);
    for line in [
        "name=memory",
        &format!("version={v}"),
        "thread_model=serialize_all_requests",
        "magic_config_key=size",
        "parameters=size,allocator",
        "mlock=yes",
        "zstd=no",
    ] {
        assert!(out.lines().any(|l| l == line), "{line} in {out}");
    }
    let path = out.lines().find_map(|l| l.strip_prefix("path=")).unwrap();
    assert_eq!(
        std::fs::canonicalize(path).unwrap(),
        std::fs::canonicalize(bin()).unwrap()
    );
    let out = dump(&["--dump-plugin", "file"]);
    assert!(out.contains("\nthread_model=parallel\n"), "{out}");
    assert!(out.contains("\nmagic_config_key=file\n"), "{out}");
    assert!(dump(&["pattern", "1M", "--dump-plugin"]).contains("\nname=pattern\n"));
    // nbdkit's test-dump-plugin-and-single.sh: an error, and nothing on stdout.
    refused(&["--dump-plugin", "-s", "null"], "cannot be used with -s");
    refused(&["--dump-plugin"], "name a backend");
    refused(&["nosuch", "--dump-plugin"], "unknown backend 'nosuch'");
}

/// What nbdkit's bash completion asks of it.
#[test]
fn short_and_long_options_as_nbdkit() {
    let (code, short, _) = nbdlite(&["--short-options"]);
    assert_eq!(code, Some(0));
    let (code, long, _) = nbdlite(&["--long-options"]);
    assert_eq!(code, Some(0));
    for o in ["-f", "-U", "-s", "-r", "-e", "-V"] {
        assert!(short.lines().any(|l| l == o), "{o} in {short}");
    }
    for o in [
        "--mask-handshake",
        "--no-fork",
        "--dump-plugin",
        "--tls-verify-peer",
    ] {
        assert!(long.lines().any(|l| l == o), "{o} in {long}");
    }
    assert!(short.lines().all(|l| l.len() == 2 && l.starts_with('-')));
    assert!(long.lines().all(|l| l.starts_with("--")));
    assert!(!long.contains("--short-options") && !long.contains("--long-options"));
    let (_, help, _) = nbdlite(&["memory", "--help"]);
    assert!(help.contains("\nbackend: memory\nsize=SIZE "), "{help}");
    assert!(
        help.contains("\nallocator=sparse|malloc[,mlock=true]\n"),
        "{help}"
    );
}

/// nbdkit's test-long-name.sh: with `--mask-handshake=0` (an old, not fixed,
/// newstyle server) qemu can only use EXPORT_NAME, with the longest name.
#[test]
fn mask_handshake_as_nbdkit_tests_it() {
    if !have(&["qemu-io", "nbdinfo"]) {
        return;
    }
    let name = "0123456789abcdef".repeat(256);
    let cmd = format!("qemu-io -r -f raw -c quit 'nbd+unix:///{name}?socket='\"$unixsocket\"");
    let (code, _, err) = nbdlite(&["-U", "-", "--mask-handshake=0", "null", "--run", &cmd]);
    assert_eq!(code, Some(0), "{err}");
    // libnbd copes with such a server too.
    let (code, out, err) = nbdlite(&[
        "-U",
        "-",
        "--mask-handshake=0",
        "memory",
        "1M",
        "--run",
        "nbdinfo --size \"$uri\"",
    ]);
    assert_eq!((code, out.trim()), (Some(0), "1048576"), "{err}");
}

/// The mistakes a newcomer makes first, each answered with what to type.
#[test]
fn first_mistakes_say_what_to_type() {
    refused(
        &["memory", "1", "GiB"],
        "memory: '1 GiB' is one size with a space in it: write 1G",
    );
    let err = refused(
        &["memory", "1GB"],
        "could not parse size '1GB': write 1G for 1 GiB",
    );
    assert!(err.contains("s for 512-byte sectors, or K, M, G, T, P, E for powers of 1024"));
    let dir = TempDir::new();
    let path = dir.path().to_str().unwrap();
    for ro in [&[][..], &["-r"]] {
        let args = [ro, &["-f", "-U", "-", "file", path, "--run", "true"]].concat();
        refused(
            &args,
            &format!("file: {path} is a directory: give a file or block device, or dir={path}"),
        );
    }
    refused(
        &["file", "dir=/nonexistent/srv"],
        "file: dir=/nonexistent/srv: No such file or directory",
    );
    refused(
        &["memory", "1G", "allocator=zstd"],
        "allocator=zstd is not supported",
    );
    refused(
        &["memory", "1G", "allocator=malloc,mlock=sometimes"],
        "expecting true or false",
    );
}
