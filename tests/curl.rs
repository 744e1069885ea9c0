//! The `curl` backend against a real web server (Debian's nginx, the test's
//! child, on a Unix socket or a TCP port; HTTPS with a test CA), checked with
//! real clients: nbdcopy and qemu-img compare what they read with the file,
//! 64 clients read at random, the web server stops and starts mid-run, and
//! misbehaving servers (one that ignores Range, 404, 500, a redirect loop, a
//! body shorter than promised, a certificate from another CA) each give the
//! error the manual page says.

mod common;
#[path = "common/wire.rs"]
mod wire;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::nginx::{Nginx, Site, have_nginx};
use common::{Server, TempDir, have, nbdlite_in, qemu_io_command, run, run_ok, system_path};

const SIZE: usize = 8 << 20;

/// `SIZE` bytes that differ everywhere (xorshift), so a misplaced byte shows.
fn image() -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut v = Vec::with_capacity(SIZE);
    while v.len() < SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// A web root with `disk.img` in it.
fn web_root(dir: &TempDir) -> (PathBuf, Vec<u8>) {
    let root = dir.join("www");
    fs::create_dir_all(&root).unwrap();
    let data = image();
    fs::write(root.join("disk.img"), &data).unwrap();
    (root, data)
}

/// nbdlite serving `args` (after `curl`), with -v so its log shows each request.
#[track_caller]
fn serve(backend: &str, args: &[String]) -> Server {
    let mut all = vec!["-v".to_string(), backend.to_string()];
    all.extend_from_slice(args);
    Server::start(&all)
}

/// Copies the export with nbdcopy and checks it is the file.
#[track_caller]
fn copy_matches(uri: &str, data: &[u8], dir: &TempDir) {
    let out = dir.join("copy.img");
    run_ok(Command::new("nbdcopy").arg(uri).arg(&out), 60);
    let got = fs::read(&out).unwrap();
    assert!(got == data, "nbdcopy read different data");
}

/// qemu-io's read-only `cmd` on `uri`: what it printed.
fn qemu_read(uri: &str, cmd: &str) -> String {
    let out = run(qemu_io_command(uri, &[cmd]).arg("-r"), 60);
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// Starts nbdlite on `args` and expects it to fail at start-up, saying `what`.
#[track_caller]
fn refused_at_start(args: &[String], what: &str) {
    let dir = TempDir::new();
    let mut all = vec!["-U", "-", "curl"];
    all.extend(args.iter().map(String::as_str));
    all.extend(["--run", "true"]);
    let (code, _, err) = nbdlite_in(dir.path(), &all);
    assert_eq!(code, Some(1), "{args:?} should fail: {err}");
    assert!(err.contains(what), "{args:?}: expected '{what}' in: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn copies_and_compares_over_a_unix_socket() {
    if !have_nginx() || !have(&["nbdcopy", "qemu-img", "qemu-io", "nbdinfo"]) {
        return;
    }
    let dir = TempDir::new();
    let (root, data) = web_root(&dir);
    let web = Nginx::start(Site {
        root: root.clone(),
        ..Site::default()
    });
    let s = serve("curl", &web.unix_args("/disk.img"));
    let uri = s.uri();
    let size = run_ok(Command::new("nbdinfo").args(["--size", &uri]), 30);
    assert_eq!(size.trim(), SIZE.to_string());
    copy_matches(&uri, &data, &dir);
    let img = root.join("disk.img");
    let cmp = run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw", &uri])
            .arg(&img),
        60,
    );
    assert!(cmp.contains("identical"), "{cmp}");
    // Read-only, and the web server's file is never written.
    let out = run(&mut qemu_io_command(&uri, &["write -P 1 0 4k"]), 30);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("write failed") || !out.status.success(),
        "{text}"
    );
    assert!(fs::read(&img).unwrap() == data);
    // Reads of every size at odd offsets, across the pool.
    for (off, len) in [
        (0, 1),
        (4095, 2),
        (SIZE - 1, 1),
        (12345, 1 << 20),
        (7, 3 << 20),
    ] {
        let (mut c, _, _) = wire::Client::ready(&s.sock, true, false, false);
        let got = c.read(0, off as u64, len).expect("read");
        assert!(got == data[off..off + len], "read {off}+{len}");
    }
}

#[test]
fn serves_over_tcp_through_a_redirect_with_the_http_alias() {
    if !have_nginx() || !have(&["nbdcopy"]) {
        return;
    }
    let dir = TempDir::new();
    let (root, data) = web_root(&dir);
    let web = Nginx::start(Site {
        root,
        tcp: true,
        ..Site::default()
    });
    let s = serve("http", &[web.tcp_url("/moved"), "connections=2".into()]);
    copy_matches(&s.uri(), &data, &dir);
    assert!(s.log_text().contains("redirected to"), "{}", s.log_text());
}

#[test]
fn sixty_four_clients_read_at_random() {
    if !have_nginx() || !have(&["fio"]) {
        return;
    }
    let dir = TempDir::new();
    let (root, data) = web_root(&dir);
    let web = Nginx::start(Site {
        root,
        ..Site::default()
    });
    let mut args = web.unix_args("/disk.img");
    args.push("connections=8".into());
    let s = serve("curl", &args);
    let data = Arc::new(data);
    let threads: Vec<_> = (0..64u64)
        .map(|t| {
            let (sock, data) = (s.sock.clone(), data.clone());
            std::thread::spawn(move || {
                let (mut c, _, _) = wire::Client::ready(&sock, t % 2 == 0, false, false);
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                for _ in 0..40 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let len = 1 + (x >> 40) as usize % (64 << 10);
                    let off = (x as usize) % (SIZE - len);
                    let got = c.read(0, off as u64, len).expect("read");
                    assert!(got == data[off..off + len], "client {t}: read {off}+{len}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a reader failed");
    }
    // And fio's 64 jobs, which count errors.
    let uri = format!("--uri={}", s.uri());
    let out = run_ok(
        Command::new("fio").args([
            "--name=r",
            "--ioengine=nbd",
            &uri,
            "--rw=randread",
            "--bs=4k",
            "--numjobs=64",
            "--iodepth=2",
            "--size=8m",
            "--time_based=1",
            "--runtime=2",
            "--group_reporting=1",
        ]),
        60,
    );
    assert!(out.contains("err= 0"), "{out}");
}

#[test]
fn web_server_stopped_and_started_mid_run() {
    if !have_nginx() || !have(&["qemu-io", "nbdcopy"]) {
        return;
    }
    let dir = TempDir::new();
    let (root, data) = web_root(&dir);
    let mut web = Nginx::start(Site {
        root,
        ..Site::default()
    });
    let mut args = web.unix_args("/disk.img");
    args.push("connections=4".into());
    let mut s = serve("curl", &args);
    let uri = s.uri();
    copy_matches(&uri, &data, &dir);
    // Gone: reads are retried for a while, then fail with EIO; nbdlite lives.
    web.stop();
    let text = qemu_read(&uri, "read 0 64k");
    assert!(text.contains("Input/output error"), "{text}");
    assert!(s.alive());
    // Back: new connections, and every read succeeds.
    web.restart();
    copy_matches(&uri, &data, &dir);
    // Stopped and started again while a copy runs: it succeeds (retried)
    // or fails cleanly, and the server serves on.
    let copy = Command::new("nbdcopy")
        .arg(&uri)
        .arg(dir.join("during.img"))
        .env("PATH", system_path())
        .spawn()
        .expect("spawn nbdcopy");
    web.stop();
    web.restart();
    let out = copy.wait_with_output().expect("nbdcopy");
    if out.status.success() {
        assert!(fs::read(dir.join("during.img")).unwrap() == data);
    }
    copy_matches(&uri, &data, &dir);
    assert!(s.alive());
    assert!(s.log_text().contains("retrying"), "{}", s.log_text());
}

#[test]
fn misbehaving_servers_fail_at_start_up() {
    if !have_nginx() {
        return;
    }
    let dir = TempDir::new();
    let (root, _) = web_root(&dir);
    let web = Nginx::start(Site {
        root,
        ..Site::default()
    });
    let cases = [
        ("/norange.img", "does not support range requests"),
        ("/missing.img", "HTTP 404 Not Found"),
        ("/broken", "HTTP 500 Internal Server Error"),
        ("/loop", "too many redirects"),
    ];
    for (path, what) in cases {
        refused_at_start(&web.unix_args(path), what);
    }
    let mut args = web.unix_args("/moved");
    args.push("followlocation=false".into());
    refused_at_start(
        &args,
        "301 Moved Permanently to http://localhost/disk.img (followlocation=false)",
    );
    let gone = vec![
        "http://localhost/x".into(),
        format!("unix-socket-path={}", dir.join("none").display()),
    ];
    refused_at_start(&gone, "cannot connect to");
}

#[test]
fn an_object_deleted_mid_run_fails_reads_with_eio_and_one_log_line() {
    if !have_nginx() || !have(&["qemu-io"]) {
        return;
    }
    let dir = TempDir::new();
    let (root, _) = web_root(&dir);
    let web = Nginx::start(Site {
        root: root.clone(),
        ..Site::default()
    });
    let s = serve("curl", &web.unix_args("/disk.img"));
    fs::remove_file(root.join("disk.img")).unwrap();
    let text = qemu_read(&s.uri(), "read 0 4k");
    assert!(text.contains("Input/output error"), "{text}");
    let log = s.log_text();
    let lines: Vec<_> = log
        .lines()
        .filter(|l| l.contains("HTTP 404 Not Found"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("bytes 0-4095"), "{log}");
}

/// A web server that answers every range request with the right head and
/// half the body, then hangs up (byte 0 alone is whole, so start-up works).
fn short_body_server(sock: &Path, size: u64) {
    let listener = UnixListener::bind(sock).expect("bind");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&b[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req);
            let Some(range) = text.lines().find_map(|l| l.strip_prefix("Range: bytes=")) else {
                continue;
            };
            let (a, z) = range.trim().split_once('-').unwrap();
            let (a, z): (u64, u64) = (a.parse().unwrap(), z.parse().unwrap());
            let len = z - a + 1;
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{z}/{size}\r\n\
                 Content-Length: {len}\r\n\r\n"
            );
            let body = vec![7u8; len.div_ceil(2) as usize];
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
        }
    });
}

#[test]
fn a_body_shorter_than_promised_is_retried_then_eio() {
    if !have(&["qemu-io"]) {
        return;
    }
    let dir = TempDir::new();
    let sock = dir.join("short.sock");
    short_body_server(&sock, 1 << 20);
    let s = serve(
        "curl",
        &[
            "http://localhost/disk.img".into(),
            format!("unix-socket-path={}", sock.display()),
        ],
    );
    let text = qemu_read(&s.uri(), "read 4096 4096");
    assert!(text.contains("Input/output error"), "{text}");
    let log = s.log_text();
    assert!(
        log.contains("the body ended after 2048 of 4096 bytes"),
        "{log}"
    );
    assert!(log.contains("retrying"), "{log}");
}

#[test]
fn unsupported_parameters_are_refused_by_name() {
    let dir = TempDir::new();
    for (arg, what) in [
        ("proxy=http://p:3128/", "curl: 'proxy' is not supported"),
        ("cookiejar=/tmp/j", "curl: 'cookiejar' is not supported"),
        ("colour=red", "curl: unknown parameter 'colour'"),
    ] {
        let (code, _, err) = nbdlite_in(dir.path(), &["curl", "http://localhost/x", arg]);
        assert_eq!(code, Some(1));
        assert!(err.contains(what), "{err}");
    }
    let (code, _, err) = nbdlite_in(dir.path(), &["curl", "ftp://h/x"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("'ftp' scheme is not supported"), "{err}");
}

#[cfg(feature = "tls")]
mod https {
    use super::*;
    use common::certs;

    /// nginx with HTTPS on its Unix socket, its certificate from the CA in
    /// `pki`; and a second CA that signed nothing of it.
    fn site(dir: &TempDir) -> Option<(Nginx, PathBuf, PathBuf, Vec<u8>)> {
        let ours = certs::make_or_skip(&dir.join("a"))?;
        let other_dir = dir.join("b");
        fs::create_dir_all(&other_dir).unwrap();
        let other = certs::make(&other_dir);
        let (root, data) = web_root(dir);
        let tls = Some((
            ours.dir.join("server-cert.pem"),
            ours.dir.join("server-key.pem"),
        ));
        let web = Nginx::start(Site {
            root,
            tls,
            ..Site::default()
        });
        Some((
            web,
            ours.dir.join("ca-cert.pem"),
            other.dir.join("ca-cert.pem"),
            data,
        ))
    }

    #[test]
    fn https_with_a_test_ca() {
        let dir = TempDir::new();
        fs::create_dir_all(dir.join("a")).unwrap();
        if !have_nginx() || !have(&["nbdcopy", "qemu-img"]) {
            return;
        }
        let Some((web, ca, other_ca, data)) = site(&dir) else {
            return;
        };
        let mut args = web.unix_args("/disk.img");
        args.push(format!("cainfo={}", ca.display()));
        let s = serve("curl", &args);
        copy_matches(&s.uri(), &data, &dir);
        drop(s);
        // capath: a directory holding the CA.
        let mut args = web.unix_args("/disk.img");
        args.push(format!("capath={}", ca.parent().unwrap().display()));
        let s = serve("curl", &args);
        copy_matches(&s.uri(), &data, &dir);
        drop(s);
        // A certificate from another CA: refused at start-up, unless told not to verify.
        let mut args = web.unix_args("/disk.img");
        args.push(format!("cainfo={}", other_ca.display()));
        refused_at_start(&args, "invalid peer certificate");
        args.push("sslverify=false".into());
        let s = serve("curl", &args);
        copy_matches(&s.uri(), &data, &dir);
    }
}

/// The issue's ask: `--filter=cow` over the read-only backend makes the
/// export writable, every write kept in the overlay and none sent to the web
/// server, whose file stays as it was.
#[test]
fn cow_over_curl_makes_it_writable() {
    if !have_nginx() || !have(&["nbdcopy", "qemu-io", "nbdsh"]) {
        return;
    }
    let dir = TempDir::new();
    let (root, data) = web_root(&dir);
    let img = root.join("disk.img");
    let mtime = fs::metadata(&img).unwrap().modified().unwrap();
    let web = Nginx::start(Site {
        root,
        ..Site::default()
    });
    let tmp = TempDir::new();
    let mut cmd = Command::new(common::bin());
    cmd.env("TMPDIR", tmp.path());
    let mut args = vec!["--filter=cow".to_string(), "curl".to_string()];
    args.extend(web.unix_args("/disk.img"));
    let s = Server::start_with(cmd, &args);
    let uri = s.uri();
    common::nbdsh(&uri, "assert not h.is_read_only()");
    common::qemu_io(
        &uri,
        &[
            "write -P 0x11 12345 200000",
            "write -z 1M 64k",
            "discard 2M 128k",
            "write -f -P 0x22 8388000 608",
            "flush",
        ],
    );
    let mut want = data.clone();
    want[12345..212345].fill(0x11);
    want[1 << 20..(1 << 20) + (64 << 10)].fill(0);
    want[2 << 20..(2 << 20) + (128 << 10)].fill(0);
    want[8388000..].fill(0x22);
    copy_matches(&uri, &want, &dir);
    assert!(
        fs::read(&img).unwrap() == data,
        "the web server's file changed"
    );
    assert_eq!(fs::metadata(&img).unwrap().modified().unwrap(), mtime);
}
