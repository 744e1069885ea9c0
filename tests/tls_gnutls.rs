//! `tls::Stream` against GnuTLS, the library behind libnbd, qemu and the
//! kernel's nbd-client: `gnutls-cli` over TCP, in TLS 1.3 and in TLS 1.2 only
//! (what nbd-client offers), with and without a client certificate.
#![cfg(feature = "tls")]

mod common;

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::certs::{self, Certs};
use common::{TempDir, have, wait_exit, wait_until};
use nbdlite::tls::{Stream, TlsMode, TlsOptions, server_config};

/// One gnutls-cli session: it sends "ping\n"; we answer "pong\n" and close.
/// Returns what gnutls-cli printed and our summary of the session.
fn ping(c: &Certs, priority: &str, client_cert: bool) -> (String, String) {
    let cfg = server_config(&TlsOptions {
        asked: Some(TlsMode::Require),
        certificates: Some(c.dir.clone()),
        verify_peer: client_cert,
        psk: None,
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let ca = c.dir.join("ca-cert.pem");
    let mut cmd = Command::new("gnutls-cli");
    cmd.args(["--x509cafile".as_ref(), ca.as_os_str()]).args([
        "--priority",
        priority,
        "-p",
        &port,
        "localhost",
    ]);
    if client_cert {
        cmd.arg("--x509certfile").arg(c.dir.join("client-cert.pem"));
        cmd.arg("--x509keyfile").arg(c.dir.join("client-key.pem"));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // gnutls-cli reads its input once the handshake is done.
    child.stdin.take().unwrap().write_all(b"ping\n").unwrap();

    let mut sock = None;
    wait_until(10, "gnutls-cli to connect", || {
        sock = listener.accept().ok().map(|(s, _)| s);
        sock.is_some()
    });
    let sock = sock.unwrap();
    // Blocking with a timeout: a read that waits too long fails as WouldBlock.
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let fd = sock.as_fd();
    let mut s = Stream::new(cfg, b"").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"ping\n") {
        s.flush(fd).unwrap();
        match s.read(fd, &mut buf) {
            Ok(0) => panic!("gnutls-cli closed: {}", output(&mut child)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{e}: {}", output(&mut child)),
        }
    }
    assert_eq!(got, b"ping\n");
    let summary = s.peer_summary();
    assert_eq!(s.write(fd, &[IoSlice::new(b"pong\n")]).unwrap(), 5);
    s.close_notify();
    s.flush(fd).unwrap();
    drop(sock);
    assert!(
        wait_exit(&mut child, 10).is_some(),
        "gnutls-cli did not exit"
    );
    (output(&mut child), summary)
}

fn output(child: &mut std::process::Child) -> String {
    let _ = child.kill();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

#[test]
fn gnutls_cli_in_tls13_and_tls12() -> io::Result<()> {
    if !have(&["gnutls-cli"]) {
        return Ok(());
    }
    let tmp = TempDir::new();
    let Some(c) = certs::make_or_skip(tmp.path()) else {
        return Ok(());
    };
    for (priority, ours, theirs) in [
        ("NORMAL", "TLSv1_3", "(TLS1.3"),
        ("NORMAL:-VERS-ALL:+VERS-TLS1.2", "TLSv1_2", "(TLS1.2"),
    ] {
        for client_cert in [false, true] {
            let (out, summary) = ping(&c, priority, client_cert);
            assert!(out.contains("pong"), "{out}");
            assert!(out.contains(theirs), "{out}");
            assert!(summary.starts_with(ours), "{summary}");
            assert_eq!(
                summary.ends_with("client certificate verified"),
                client_cert
            );
        }
    }
    Ok(())
}
