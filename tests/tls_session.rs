//! `tls::Stream` against an in-process rustls client over a socketpair, and
//! against GnuTLS's `gnutls-cli` (the library libnbd, qemu and nbd-client use)
//! over TCP: handshakes in TLS 1.3 and 1.2, client certificates, data both
//! ways, the bound on queued ciphertext, and how a session ends.
#![cfg(feature = "tls")]

mod common;
#[path = "common/tls_client.rs"]
mod tls_client;

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use common::TempDir;
use common::certs::{self, Certs};
use nbdlite::tls::stream::SEND_LIMIT;
use nbdlite::tls::{Stream, TlsMode, TlsOptions, server_config};
use rustls::version::{TLS12, TLS13};
use tls_client::{Pair, client_config};

fn server(c: &Certs, verify_peer: bool) -> Arc<rustls::ServerConfig> {
    server_config(&TlsOptions {
        asked: Some(TlsMode::Require),
        certificates: Some(c.dir.clone()),
        verify_peer,
        psk: None,
    })
    .expect("load test certificates")
}

fn connect(c: &Certs, verify_peer: bool, auth: Option<&Path>, tls12: bool) -> io::Result<Pair> {
    let versions: &[_] = if tls12 { &[&TLS12] } else { &[&TLS13, &TLS12] };
    let mut p = Pair::start(
        server(c, verify_peer),
        client_config(&c.dir, auth, versions),
    )?;
    p.handshake()?;
    Ok(p)
}

#[test]
fn tls13_and_tls12_carry_data_both_ways() {
    let tmp = TempDir::new();
    let Some(c) = certs::make_or_skip(tmp.path()) else {
        return;
    };
    for (tls12, version) in [(false, "TLSv1_3"), (true, "TLSv1_2")] {
        let mut p = connect(&c, false, None, tls12).unwrap();
        let summary = p.server.peer_summary();
        assert!(summary.starts_with(version), "{summary}");
        assert!(!summary.contains("client certificate"), "{summary}");
        // A request, then a large write whose records span the reads.
        assert_eq!(p.client_to_server(b"request"), b"request");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(p.client_to_server(&big), big);
        // A reply built of many segments (header, pages...), sealed from them directly.
        let header = [1u8; 16];
        let pages: Vec<Vec<u8>> = (0..300).map(|i| vec![i as u8; 4096]).collect();
        let mut parts: Vec<&[u8]> = vec![&header];
        parts.extend(pages.iter().map(|p| p.as_slice()));
        let got = p.server_to_client(&parts);
        assert_eq!(got, parts.concat());
    }
}

#[test]
fn rsa_server_keys_sign_in_both_versions() {
    let tmp = TempDir::new();
    let Some(mut c) = certs::make_or_skip(tmp.path()) else {
        return;
    };
    let rsa = tmp.join("rsa");
    std::fs::create_dir(&rsa).unwrap();
    certs::rsa_pair(&c, &rsa, "server");
    std::fs::copy(c.dir.join("ca-cert.pem"), rsa.join("ca-cert.pem")).unwrap();
    c.dir = rsa;
    for tls12 in [false, true] {
        let mut p = connect(&c, false, None, tls12).unwrap();
        assert_eq!(p.client_to_server(b"x"), b"x");
    }
}

#[test]
fn client_certificates_are_checked_with_verify_peer() {
    let tmp = TempDir::new();
    let Some(c) = certs::make_or_skip(tmp.path()) else {
        return;
    };
    for tls12 in [false, true] {
        let p = connect(&c, true, Some(&c.dir), tls12).unwrap();
        assert!(
            p.server
                .peer_summary()
                .ends_with(", client certificate verified")
        );
        // Shown but not asked for: no check, and rustls does not even request one.
        let p = connect(&c, false, Some(&c.selfsigned), tls12).unwrap();
        assert!(!p.server.peer_summary().contains("client certificate"));
        for (auth, why) in [
            (Some(&c.selfsigned), "UnknownIssuer"),
            (Some(&c.revoked), "Revoked"),
            (None, "peer sent no certificates"),
        ] {
            let e = connect(&c, true, auth.map(|p| p.as_path()), tls12)
                .err()
                .expect("refused");
            let msg = e.to_string();
            assert!(msg.starts_with("TLS handshake: "), "{msg}");
            assert!(msg.contains(why), "{auth:?}: {msg}");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        }
    }
}

#[test]
fn queued_ciphertext_is_bounded() {
    let tmp = TempDir::new();
    let Some(c) = certs::make_or_skip(tmp.path()) else {
        return;
    };
    let mut p = connect(&c, false, None, false).unwrap();
    // The client reads nothing: the server may take what the socket buffer and
    // its own queue hold, then says WouldBlock rather than buffer more.
    let data = vec![0x5a; 64 << 20];
    let mut taken = 0;
    let blocked = loop {
        match p
            .server
            .write(p.ssock.as_fd(), &[IoSlice::new(&data[taken..])])
        {
            Ok(n) => taken += n,
            Err(e) => break e,
        }
        assert!(taken < data.len(), "the whole 64 MiB was taken");
    };
    assert_eq!(blocked.kind(), io::ErrorKind::WouldBlock);
    assert!(p.server.wants_write());
    let sndbuf = tls_client::drain(&mut p.csock);
    assert!(
        taken <= sndbuf + SEND_LIMIT,
        "took {taken}, socket held {sndbuf}"
    );
    assert!(
        taken + 2 * 16 * 1024 >= sndbuf,
        "took {taken}, socket held {sndbuf}"
    );
}

#[test]
fn endings() {
    let tmp = TempDir::new();
    let Some(c) = certs::make_or_skip(tmp.path()) else {
        return;
    };
    let mut buf = [0u8; 100];
    // close_notify: a clean end.
    let mut p = connect(&c, false, None, false).unwrap();
    p.client.send_close_notify();
    p.client.write_tls(&mut p.csock).unwrap();
    assert_eq!(p.server.read(p.ssock.as_fd(), &mut buf).unwrap(), 0);
    // The socket closed without close_notify, after the handshake: the end too.
    let p = connect(&c, false, None, false).unwrap();
    let Pair {
        mut server,
        ssock,
        csock,
        ..
    } = p;
    drop(csock);
    assert_eq!(server.read(ssock.as_fd(), &mut buf).unwrap(), 0);
    // ...but during the handshake, an error that says so.
    let p = Pair::start(server_cfg(&c), client_config(&c.dir, None, &[&TLS13])).unwrap();
    let Pair {
        mut server,
        ssock,
        csock,
        ..
    } = p;
    drop(csock);
    let e = server.read(ssock.as_fd(), &mut buf).unwrap_err();
    assert!(e.to_string().contains("TLS handshake"), "{e}");
    // The server's own close_notify reaches the client.
    let mut p = connect(&c, false, None, false).unwrap();
    p.server.close_notify();
    p.server.flush(p.ssock.as_fd()).unwrap();
    p.client.read_tls(&mut p.csock).unwrap();
    p.client.process_new_packets().unwrap();
    assert!(p.client.reader().read(&mut buf).is_ok_and(|n| n == 0));
}

fn server_cfg(c: &Certs) -> Arc<rustls::ServerConfig> {
    server(c, false)
}

#[test]
fn plaintext_after_starttls_fails_the_handshake() {
    let tmp = TempDir::new();
    let Some(c) = certs::make_or_skip(tmp.path()) else {
        return;
    };
    // A confused client that goes on with NBD options instead of a ClientHello.
    let option = b"IHAVEOPT\0\0\0\x01\0\0\0\0";
    let e = Stream::new(server_cfg(&c), option).err().expect("refused");
    assert!(e.to_string().starts_with("TLS handshake: "), "{e}");
    // The same bytes arriving on the socket after an empty start.
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    let mut s = Stream::new(server_cfg(&c), b"").unwrap();
    (&a).write_all(option).unwrap();
    let e = s.read(b.as_fd(), &mut [0u8; 64]).unwrap_err();
    assert!(e.to_string().starts_with("TLS handshake: "), "{e}");
}
