//! nbdlite-bench against a real server: nbdlite itself, and nbdkit when it is
//! installed (with TLS too: `nbds` URIs). Each run is short (half a second of
//! traffic); what is checked is that requests flow and come back without
//! errors, and that failures give exit status 1 with a one-line message.

mod common;

use std::io::Read;
use std::process::{Command, Output, Stdio};

#[cfg(feature = "tls")]
use common::TempDir;
use common::{Server, have, json_field, run, wait_exit};

fn bench() -> &'static str {
    env!("CARGO_BIN_EXE_nbdlite-bench")
}

fn number(json: &str, key: &str) -> f64 {
    let v = json_field(json, key);
    v.parse()
        .unwrap_or_else(|_| panic!("{key} is not a number: {v}"))
}

/// How long a bench run of half a second may take in all, start-up included,
/// before it counts as hung.
const RUN_LIMIT_SECS: u64 = 30;

/// Runs the bench with `args` and the options every test shares.
fn run_bench(uri: &str, args: &[&str]) -> Output {
    run(
        Command::new(bench())
            .args(["-c", "4", "-q", "4", "-t", "0.5", "--json", uri])
            .args(args),
        RUN_LIMIT_SECS,
    )
}

/// A run that must succeed: nonzero requests of the right kind, no errors.
#[track_caller]
fn check_ok(uri: &str, rw: &str) -> String {
    let out = run_bench(uri, &["--rw", rw]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "--rw {rw}: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.trim_end().starts_with('{') && stdout.trim_end().ends_with('}'));
    assert!(number(&stdout, "requests") > 0.0, "{stdout}");
    assert_eq!(number(&stdout, "errors"), 0.0, "{stdout}");
    assert_eq!(json_field(&stdout, "pattern"), format!("\"{rw}\""));
    assert_eq!(number(&stdout, "connections"), 4.0);
    assert_eq!(number(&stdout, "queue_depth"), 4.0);
    let kind = if rw.contains("write") {
        "writes"
    } else {
        "reads"
    };
    assert_eq!(
        number(&stdout, kind),
        number(&stdout, "requests"),
        "{stdout}"
    );
    // At least the half second asked for; at most what the run may take (a
    // loaded machine may stretch it far beyond 0.5 s).
    let secs = number(&stdout, "seconds");
    assert!((0.5..RUN_LIMIT_SECS as f64).contains(&secs), "{stdout}");
    assert!(number(&stdout, "lat_p50_us") <= number(&stdout, "lat_p99_us"));
    assert!(number(&stdout, "lat_p99_us") <= number(&stdout, "lat_max_us"));
    stdout
}

#[test]
fn nbdlite_read_and_write() {
    let srv = Server::start(&["memory", "64M"]);
    check_ok(&srv.uri(), "randread");
    let j = check_ok(&srv.uri(), "write");
    assert_eq!(number(&j, "export_size"), (64 << 20) as f64);
}

#[test]
fn nbdkit_read_and_write() {
    if !have(&["nbdkit"]) {
        return;
    }
    let srv = Server::start_with(Command::new("nbdkit"), &["memory", "64M"]);
    check_ok(&srv.uri(), "randread");
    check_ok(&srv.uri(), "randwrite");
}

/// A misuse or a refusal before the run: one line, status 1, no report.
#[track_caller]
fn refused(uri: &str, args: &[&str], needle: &str) {
    let out = run_bench(uri, args);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("nbdlite-bench: ") && err.contains(needle),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn refused_export_is_one_line_and_status_1() {
    // nbdlite serves any name, but not one longer than the spec allows.
    let srv = Server::start(&["-e", "disk", "memory", "1M"]);
    refused(
        &srv.uri_export(&"x".repeat(5000)),
        &[],
        "server refused export",
    );
}

#[test]
fn requests_over_the_advertised_maximum_are_refused_before_the_run() {
    // nbdlite advertises 32 MiB as its maximum block size.
    let srv = Server::start(&["memory", "128M"]);
    refused(
        &srv.uri(),
        &["-s", "33M"],
        "larger than the server's maximum block size (33554432 bytes): use -s 32M or less",
    );
}

#[test]
fn progress_lines_with_interval() {
    let srv = Server::start(&["memory", "64M"]);
    let out = run_bench(&srv.uri(), &["--interval", "0.1", "--warmup", "0.2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    // About seven in 0.7 s; a loaded machine may be late, never that late.
    assert!(lines.len() >= 2, "{err}");
    assert!(lines[0].ends_with("(warm-up)"), "{err}");
    for l in &lines {
        assert!(
            l.contains(" IOPS ") && l.contains(" MiB/s ") && l.contains(" errors"),
            "{l}"
        );
    }
    // Not on a pipe without --interval.
    let out = run_bench(&srv.uri(), &[]);
    assert!(out.status.success() && out.stderr.is_empty());
}

#[test]
fn error_replies_are_counted_and_status_1() {
    // Over the largest request nbdlite serves (64 MiB): every READ is refused.
    // Oldstyle, so that no maximum block size stops the bench asking.
    let srv = Server::start(&["-o", "memory", "128M"]);
    let out = run_bench(&srv.uri(), &["-s", "65M"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(number(&stdout, "errors") > 0.0, "{stdout}");
    assert_eq!(number(&stdout, "requests"), 0.0, "{stdout}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("nbdlite-bench: ") && err.contains("EINVAL"),
        "{err}"
    );
}

#[test]
fn lost_server_is_status_1() {
    let mut srv = Server::start(&["-v", "memory", "64M"]);
    let mut child = Command::new(bench())
        .args(["-c", "2", "-q", "2", "-t", "20", &srv.uri()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nbdlite-bench");
    // Killed mid-run: once both connections have sent requests.
    common::wait_until(10, "both connections at work", || {
        srv.log_text().matches("READ cookie").count() >= 4
    });
    srv.signal("KILL");
    let st = wait_exit(&mut child, 10);
    let _ = child.kill();
    assert_eq!(st.and_then(|s| s.code()), Some(1));
    // Its sockets close as it dies, before it can be reaped: wait for that.
    assert!(
        wait_exit(&mut srv.child, 10).is_some(),
        "the server is gone"
    );
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(err.starts_with("nbdlite-bench: connection "), "{err}");
}

/// The scale target: 10,000 clients at once, each through the handshake and a
/// 4 KiB read (each connection starts with one READ in flight, and the bench
/// fails if any is left unanswered), on one server thread. Needs a hard
/// descriptor limit of at least 10,000 for each side; nbdlite raises its soft
/// limit itself, the bench gets it from `ulimit -n`.
#[test]
fn ten_thousand_connections() {
    const N: u64 = 10_000;
    let hard = run(Command::new("sh").args(["-c", "ulimit -Hn"]), 5);
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_string();
    if hard != "unlimited" && hard.parse::<u64>().unwrap_or(0) < N + 100 {
        // A limit of the machine, not a missing tool: skip even in CI.
        common::skip(&format!("hard fd limit {hard} < {}", N + 100));
        return;
    }
    let srv = Server::start(&["memory", "1G"]);
    let script = format!(
        "ulimit -n {} && exec \"$0\" -c {N} -q 1 -t 1 -s 4K --rw randread --json \"$1\"",
        N + 100
    );
    let out = run(
        Command::new("sh").args(["-c", &script, bench(), &srv.uri()]),
        120,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\nstdout: {stdout}\nstderr: {}\nserver: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        srv.log_text()
    );
    assert_eq!(number(&stdout, "connections"), N as f64, "{stdout}");
    assert!(number(&stdout, "reads") >= N as f64, "{stdout}");
    assert_eq!(number(&stdout, "errors"), 0.0, "{stdout}");
    assert_eq!(srv.log_text(), "", "nothing to complain about");
}

/// Test certificates (see `common::certs`) under a fresh directory, kept
/// alive with it; `None` after a skip when openssl is missing.
#[cfg(feature = "tls")]
fn certificates() -> Option<(TempDir, common::certs::Certs)> {
    let dir = TempDir::new();
    let c = common::certs::make_or_skip(dir.path())?;
    Some((dir, c))
}

/// nbdkit with `--tls=require` and client certificates checked
/// (`--tls-verify-peer`), over a Unix socket and over TCP: the bench's TLS
/// runs, its client certificate accepted, and each kind of refusal in one
/// line.
#[cfg(feature = "tls")]
#[test]
fn tls_against_nbdkit() {
    if !have(&["nbdkit"]) {
        return;
    }
    let Some((dir, c)) = certificates() else {
        return;
    };
    let pki = c.dir.to_str().unwrap();
    let tls_args = [
        "--tls=require",
        "--tls-verify-peer",
        &format!("--tls-certificates={pki}"),
        "memory",
        "64M",
    ];
    let srv = Server::start_with(Command::new("nbdkit"), &tls_args);
    let unix = format!("nbds+unix:///?socket={}", srv.sock.display());
    let with_certs = |uri: &str, rw: &str| {
        let j = check_ok(&format!("{uri}&tls-certificates={pki}"), rw);
        assert!(json_field(&j, "tls").starts_with("\"TLSv1_"), "{j}");
    };
    with_certs(&unix, "randread");
    with_certs(&unix, "randwrite");
    let out = run_bench(
        &unix,
        &["--tls-certificates", pki, "-s", "1M", "--rw", "read"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // TCP: the certificate names 127.0.0.1 (checked as an IP address).
    let tcp = common::nbdkit_tcp(&tls_args);
    with_certs(
        &format!("nbds://127.0.0.1:{}/?x=1", tcp.tcp_port()),
        "randread",
    );

    // A CA that did not sign the server's certificate.
    let wrong = dir.join("wrong-ca");
    std::fs::create_dir(&wrong).unwrap();
    std::fs::copy(
        c.selfsigned.join("client-cert.pem"),
        wrong.join("ca-cert.pem"),
    )
    .unwrap();
    let wrong = wrong.to_str().unwrap();
    refused(
        &unix,
        &["--tls-certificates", wrong],
        "TLS handshake failed: invalid peer certificate: UnknownIssuer",
    );
    // The name checked is not the certificate's.
    let other = format!("{unix}&tls-hostname=nbd.example.com");
    refused(&other, &["--tls-certificates", pki], "not valid for name");
    // A client certificate the server's CA did not sign: nbdkit hangs up.
    let selfsigned = c.selfsigned.to_str().unwrap();
    refused(
        &unix,
        &["--tls-certificates", selfsigned],
        "the server hung up after the TLS handshake: did it refuse the client certificate",
    );
    // Plaintext where TLS is required.
    refused(
        &srv.uri(),
        &[],
        "TLS required (use an nbds:// or nbds+unix:// URI)",
    );
}

/// An `nbds` URI against a server without TLS: nbdlite (ERR_POLICY, until it
/// has TLS) and nbdkit without `--tls`.
#[cfg(feature = "tls")]
#[test]
fn nbds_against_a_plaintext_server_is_one_line() {
    let Some((_dir, c)) = certificates() else {
        return;
    };
    let pki = c.dir.to_str().unwrap();
    let srv = Server::start(&["memory", "1M"]);
    let uri = format!("nbds+unix:///?socket={}", srv.sock.display());
    let needle = "connection 0: the server does not offer TLS (STARTTLS: forbidden by policy";
    refused(&uri, &["--tls-certificates", pki], needle);
    if have(&["nbdkit"]) {
        let srv = Server::start_with(Command::new("nbdkit"), &["memory", "1M"]);
        let uri = format!("nbds+unix:///?socket={}", srv.sock.display());
        refused(
            &uri,
            &["--tls-certificates", pki],
            "the server does not offer TLS",
        );
    }
}

/// Certificate files missing or wrong: one line before anything connects.
#[cfg(feature = "tls")]
#[test]
fn bad_certificate_directories_are_one_line() {
    let Some((_certs_dir, c)) = certificates() else {
        return;
    };
    let dir = TempDir::new();
    let d = dir.path().to_str().unwrap();
    // No server: the files are read before connecting.
    let uri = format!("nbds+unix:///?socket={d}/none");
    refused(
        &uri,
        &["--tls-certificates", d],
        "ca-cert.pem: No such file",
    );
    std::fs::write(dir.join("ca-cert.pem"), "not PEM").unwrap();
    refused(
        &uri,
        &["--tls-certificates", d],
        "ca-cert.pem: no certificate (PEM",
    );
    std::fs::copy(c.dir.join("ca-cert.pem"), dir.join("ca-cert.pem")).unwrap();
    std::fs::copy(c.dir.join("client-cert.pem"), dir.join("client-cert.pem")).unwrap();
    refused(&uri, &["--tls-certificates", d], "client-key.pem: missing");
    std::fs::write(dir.join("client-key.pem"), "").unwrap();
    refused(
        &uri,
        &["--tls-certificates", d],
        "client-key.pem: no private key",
    );
    std::fs::remove_file(dir.join("client-cert.pem")).unwrap();
    refused(&uri, &["--tls-certificates", d], "client-cert.pem: missing");
    // With no directory named, libnbd's places are looked in.
    refused(&uri, &[], "give --tls-certificates DIR");
}

/// Without the `tls` feature, an `nbds` URI is refused before connecting.
#[cfg(not(feature = "tls"))]
#[test]
fn nbds_without_the_tls_feature_is_one_line() {
    refused("nbds+unix:///?socket=/nonexistent", &[], "built without it");
}
