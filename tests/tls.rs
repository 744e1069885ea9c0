//! TLS with real clients against the running server: libnbd's nbdinfo, nbdsh
//! and nbdcopy (`nbds://`, `nbds+unix://` with `tls-certificates=DIR`), qemu-img
//! and qemu-io (`--object tls-creds-x509`), client certificates under
//! `--tls-verify-peer`, plaintext clients against `require` and `on`, and what
//! `--run` gets (`$tls`, `nbds` URIs). The wire-level STARTTLS cases are in
//! tls_starttls.rs; start-up misuse in tls_config.rs.
#![cfg(feature = "tls")]

mod common;

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::certs::{self, Certs};
use common::{Server, TempDir, have, nbdinfo, nbdlite_in, nbdsh_command, run, run_ok};

const MIB: usize = 1 << 20;

/// Certificates in a fresh directory, or None after a skip.
fn certs() -> Option<(TempDir, Certs)> {
    let tmp = TempDir::new();
    let c = certs::make_or_skip(tmp.path())?;
    Some((tmp, c))
}

/// `--tls=MODE --tls-certificates DIR EXTRA… memory 64M`, as arguments.
fn tls_args(c: &Certs, mode: &str, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![format!("--tls={mode}").into(), "--tls-certificates".into()];
    args.push(c.dir.clone().into());
    args.extend(extra.iter().map(OsString::from));
    args.extend(["memory".into(), "64M".into()]);
    args
}

/// A libnbd URI for the server's Unix socket, TLS, certificates from `dir`.
fn nbds_unix(srv: &Server, dir: &Path) -> String {
    format!(
        "nbds+unix:///?socket={}&tls-certificates={}",
        srv.sock.display(),
        dir.display()
    )
}

/// A libnbd URI over TCP: `localhost`, the name the server certificate holds,
/// which libnbd checks (over TCP, and only when `tls-certificates` names a
/// directory with `ca-cert.pem`).
fn nbds_tcp(srv: &Server, dir: &Path) -> String {
    format!(
        "nbds://localhost:{}/?tls-certificates={}",
        srv.tcp_port(),
        dir.display()
    )
}

/// A command's (success, stdout + stderr).
fn outcome(cmd: &mut Command) -> (bool, String) {
    let out = run(cmd, 60);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// nbdinfo, nbdsh and nbdcopy through one URI: size, a write read back, TLS
/// negotiated, and 8 MiB copied in and out over 4 connections.
#[track_caller]
fn libnbd_round_trip(uri: &str, tmp: &TempDir) {
    assert_eq!(nbdinfo(&["--size", uri]).trim(), (64 * MIB).to_string());
    // `nbdsh -u` refuses URIs that name local files (tls-certificates=).
    let connect = format!("h.set_uri_allow_local_file(True)\nh.connect_uri({uri:?})");
    let out = run_ok(
        nbdsh_command().args([
            "-c",
            &connect,
            "-c",
            "h.pwrite(b'tls!' * 128, 4096)\n\
             assert h.pread(512, 4096) == b'tls!' * 128\n\
             print(h.get_tls_negotiated())",
        ]),
        60,
    );
    assert_eq!(out.trim(), "True", "{uri}");
    let (src, dst) = (tmp.join("src"), tmp.join("dst"));
    let data: Vec<u8> = (0..8 * MIB).map(|i| (i * 31 / 7) as u8).collect();
    fs::write(&src, &data).unwrap();
    run_ok(
        Command::new("nbdcopy")
            .args(["--connections=4", "--flush"])
            .arg(&src)
            .arg(uri),
        120,
    );
    run_ok(
        Command::new("nbdcopy")
            .args(["--connections=4", uri])
            .arg(&dst),
        120,
    );
    let got = fs::read(&dst).unwrap();
    assert_eq!(got.len(), 64 * MIB);
    assert!(got[..8 * MIB] == data[..], "{uri}: the copy differs");
    fs::remove_file(&dst).unwrap();
}

#[test]
fn nbdinfo_nbdsh_nbdcopy_over_unix_and_tcp() {
    if !have(&["nbdinfo", "nbdsh", "nbdcopy"]) {
        return;
    }
    let Some((tmp, c)) = certs() else {
        return;
    };
    let unix = Server::start(&tls_args(&c, "require", &[]));
    libnbd_round_trip(&nbds_unix(&unix, &c.dir), &tmp);
    let tcp = Server::start_tcp(&tls_args(&c, "require", &[]));
    libnbd_round_trip(&nbds_tcp(&tcp, &c.dir), &tmp);
    // Over TCP libnbd checks the server against the CA it is given.
    let other = TempDir::new();
    let stranger = certs::make(other.path());
    let (ok, why) =
        outcome(Command::new("nbdinfo").args(["--size", &nbds_tcp(&tcp, &stranger.dir)]));
    assert!(!ok, "a server signed by another CA was trusted");
    assert!(why.contains("certificate"), "{why}");
}

/// qemu's TLS object: the client reads `ca-cert.pem` (and, if present,
/// `client-cert.pem` and `client-key.pem`) from `dir`.
fn qemu_creds(dir: &Path) -> String {
    format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        dir.display()
    )
}

/// qemu's NBD options for a Unix socket (no host name to check the
/// certificate against: `tls-hostname` gives it) or TCP.
fn qemu_unix(srv: &Server) -> String {
    format!(
        "driver=nbd,server.type=unix,server.path={},tls-creds=tls0,tls-hostname=localhost",
        srv.sock.display()
    )
}

fn qemu_tcp(srv: &Server) -> String {
    format!(
        "driver=nbd,server.type=inet,server.host=localhost,server.port={},tls-creds=tls0",
        srv.tcp_port()
    )
}

/// `qemu-io --object CREDS --image-opts OPTS -c CMD…`.
fn qemu_io(creds: &str, opts: &str, cmds: &[&str]) -> Command {
    let mut c = Command::new("qemu-io");
    c.args(["--object", creds, "--image-opts", opts]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c
}

#[test]
fn qemu_img_and_qemu_io_with_x509_credentials() {
    if !have(&["qemu-io", "qemu-img"]) {
        return;
    }
    let Some((tmp, c)) = certs() else {
        return;
    };
    let creds = qemu_creds(&c.dir);
    let unix = Server::start(&tls_args(&c, "require", &[]));
    let tcp = Server::start_tcp(&tls_args(&c, "require", &[]));
    for (n, opts) in [qemu_unix(&unix), qemu_tcp(&tcp)].iter().enumerate() {
        let out = run_ok(
            &mut qemu_io(
                &creds,
                opts,
                &[
                    "write -P 0xab 0 1M",
                    "read -P 0xab 0 1M",
                    "write -z 1M 1M",
                    "flush",
                ],
            ),
            60,
        );
        assert!(!out.contains("failed"), "{opts}: {out}");
        let info = run_ok(
            Command::new("qemu-img").args(["info", "--object", &creds, "--image-opts", opts]),
            60,
        );
        assert!(info.contains("64 MiB"), "{info}");
        let copy = tmp.join(&format!("copy-{n}.raw"));
        run_ok(
            Command::new("qemu-img")
                .args([
                    "convert",
                    "--object",
                    &creds,
                    "--image-opts",
                    opts,
                    "-O",
                    "raw",
                ])
                .arg(&copy),
            120,
        );
        let got = fs::read(&copy).unwrap();
        assert_eq!(got.len(), 64 * MIB);
        assert!(got[..MIB].iter().all(|&b| b == 0xab) && got[MIB..].iter().all(|&b| b == 0));
    }
}

#[test]
fn client_certificates_under_verify_peer() {
    if !have(&["nbdinfo", "qemu-img"]) {
        return;
    }
    let Some((tmp, c)) = certs() else {
        return;
    };
    // A client directory with the CA alone: no certificate to show.
    let bare = tmp.join("bare");
    fs::create_dir(&bare).unwrap();
    fs::copy(c.dir.join("ca-cert.pem"), bare.join("ca-cert.pem")).unwrap();
    // c.dir holds ca-crl.pem, which revokes the `revoked` client.
    let mut srv = Server::start(&tls_args(&c, "require", &["--tls-verify-peer", "-v"]));
    assert_eq!(
        nbdinfo(&["--size", &nbds_unix(&srv, &c.dir)]).trim(),
        (64 * MIB).to_string()
    );
    for dir in [&c.selfsigned, &c.revoked, &bare] {
        let (ok, why) = outcome(Command::new("nbdinfo").args(["--size", &nbds_unix(&srv, dir)]));
        assert!(!ok, "{}: accepted: {why}", dir.display());
    }
    // qemu shows its certificate too.
    let info = |dir: &Path| {
        outcome(Command::new("qemu-img").args([
            "info",
            "--object",
            &qemu_creds(dir),
            "--image-opts",
            &qemu_unix(&srv),
        ]))
    };
    assert!(info(&c.dir).0, "{}", info(&c.dir).1);
    assert!(!info(&c.selfsigned).0);
    assert!(srv.alive());
    // A debug line for each of nbdinfo's refusals, saying why. (GnuTLS
    // clients do not even show a certificate the server's CA did not issue:
    // "no certificates"; qemu refuses to load one.)
    let log = srv.log_text();
    let why: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("debug: conn ") && l.contains("TLS handshake: "))
        .collect();
    assert!(why.len() >= 3, "{log}");
    assert!(
        why.iter()
            .any(|l| l.ends_with("invalid peer certificate: Revoked")),
        "{log}"
    );
    assert!(
        why.iter().any(|l| l.ends_with("peer sent no certificates")),
        "{log}"
    ); // GnuTLS prefers AES-256; the server picks AES-128 where the CPU has AES.
    #[cfg(target_arch = "x86_64")]
    let aes = std::arch::is_x86_feature_detected!("aes");
    #[cfg(not(target_arch = "x86_64"))]
    let aes = false;
    let suite = match aes {
        true => "TLSv1_3 TLS13_AES_128_GCM_SHA256",
        false => "TLSv1_3 TLS13_",
    };
    let accepted = format!("TLS: {suite}");
    assert!(
        log.lines()
            .any(|l| l.contains(&accepted) && l.ends_with(", client certificate verified")),
        "{log}"
    );
}

#[test]
fn plaintext_clients_against_require_and_on() {
    if !have(&["nbdinfo", "qemu-img"]) {
        return;
    }
    let Some((_tmp, c)) = certs() else {
        return;
    };
    let required = Server::start(&tls_args(&c, "require", &[]));
    let (ok, why) = outcome(Command::new("nbdinfo").args(["--size", &required.uri()]));
    assert!(!ok, "served in plaintext: {why}");
    // qemu shows the server's message for ERR_TLS_REQD.
    let (ok, why) = outcome(Command::new("qemu-img").args(["info", &required.uri()]));
    assert!(!ok, "qemu-img served in plaintext");
    assert!(why.contains("TLS is required: use STARTTLS"), "{why}");
    nbdinfo(&["--size", &nbds_unix(&required, &c.dir)]);

    let on = Server::start(&tls_args(&c, "on", &[]));
    for uri in [on.uri(), nbds_unix(&on, &c.dir)] {
        assert_eq!(nbdinfo(&["--size", &uri]).trim(), (64 * MIB).to_string());
    }
    let out = run_ok(Command::new("qemu-img").args(["info", &on.uri()]), 60);
    assert!(out.contains("64 MiB"), "{out}");
}

/// `nbdlite ARGS… --run CMD` in `dir`: (exit code, stdout, stderr).
fn captive(dir: &Path, args: &[&str], cmd: &str) -> (Option<i32>, String, String) {
    let mut all = args.to_vec();
    all.extend(["--run", cmd]);
    nbdlite_in(dir, &all)
}

#[test]
fn run_gets_dollar_tls_and_nbds_uris() {
    let Some((tmp, c)) = certs() else {
        return;
    };
    let d = c.dir.to_str().unwrap();
    let show = r#"printf '%s|%s' "$tls" "$uri""#;
    for (args, tls, scheme) in [
        (vec!["--tls=off"], "0", "nbd+unix:///?socket="),
        (
            vec!["--tls=on", "--tls-certificates", d],
            "1",
            "nbd+unix:///?socket=",
        ),
        (vec!["--tls-certificates", d], "1", "nbd+unix:///?socket="),
        (
            vec!["--tls=require", "--tls-certificates", d],
            "2",
            "nbds+unix:///?socket=",
        ),
    ] {
        let mut all = args.clone();
        all.extend(["memory", "1M"]);
        let (code, out, err) = captive(tmp.path(), &all, show);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        let (t, uri) = out.split_once('|').unwrap();
        assert_eq!(t, tls, "{args:?}");
        assert!(
            uri.starts_with(scheme) && uri.ends_with("/socket"),
            "{args:?}: {uri}"
        );
    }
    // Over TCP, --print-uri and $uri both say nbds://.
    let (code, out, err) = captive(
        tmp.path(),
        &[
            "--tls=require",
            "--tls-certificates",
            d,
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "--print-uri",
            "memory",
            "1M",
        ],
        r#"echo "$uri""#,
    );
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0], lines[1]);
    assert!(lines[0].starts_with("nbds://127.0.0.1:"), "{out}");
}

/// The README's captive example, and what a user must add for libnbd to use
/// the certificates: `&tls-certificates=DIR` after a Unix `$uri` (which has
/// `?socket=` already), `?tls-certificates=DIR` after a TCP one.
#[test]
fn captive_nbdinfo_over_tls() {
    if !have(&["nbdinfo"]) {
        return;
    }
    let Some((tmp, c)) = certs() else {
        return;
    };
    let d = c.dir.to_str().unwrap();
    let size = (1u64 << 30).to_string();
    let require = [
        "-U",
        "-",
        "--tls=require",
        "--tls-certificates",
        d,
        "memory",
        "1G",
    ];
    // libnbd does not check the server over a Unix socket: $uri alone works.
    for cmd in [
        r#"nbdinfo --size "$uri""#.to_string(),
        format!(r#"nbdinfo --size "$uri&tls-certificates={d}""#),
    ] {
        let (code, out, err) = captive(tmp.path(), &require, &cmd);
        assert_eq!((code, out.trim()), (Some(0), size.as_str()), "{cmd}: {err}");
    }
    // Client certificates come from that directory only.
    let verify = [&require[..5], &["--tls-verify-peer", "memory", "1G"]].concat();
    let (code, _, _) = captive(tmp.path(), &verify, r#"nbdinfo --size "$uri""#);
    assert_ne!(code, Some(0), "no client certificate, yet served");
    let cmd = format!(r#"nbdinfo --size "$uri&tls-certificates={d}""#);
    let (code, out, err) = captive(tmp.path(), &verify, &cmd);
    assert_eq!((code, out.trim()), (Some(0), size.as_str()), "{err}");
    // Over TCP.
    let tcp = [
        "-i",
        "127.0.0.1",
        "-p",
        "0",
        "--tls=require",
        "--tls-certificates",
        d,
        "memory",
        "1G",
    ];
    let cmd = format!(r#"nbdinfo --size "$uri?tls-certificates={d}""#);
    let (code, out, err) = captive(tmp.path(), &tcp, &cmd);
    assert_eq!((code, out.trim()), (Some(0), size.as_str()), "{err}");
}
