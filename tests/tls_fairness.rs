//! Issue 21, attack 4, scaled: TLS clients that send a WRITE's payload one
//! byte per record. A turn of the loop is bounded by the records it decrypts as
//! well as by the bytes (2 MiB of 1-byte records used to keep it for 0.7 s),
//! so a fresh client is served without waiting behind them.
#![cfg(feature = "tls")]

mod common;
#[path = "common/tls_client.rs"]
mod tls_client;
#[path = "common/wire.rs"]
mod wire;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::Server;
use common::TempDir;
use common::certs;
use rustls::version::{TLS12, TLS13};
use tls_client::{Blocking, client_config};
use wire::*;

/// `requests`, sealed one byte per TLS record behind STARTTLS and a GO, on a
/// client past the TLS handshake; returns its socket and the ciphertext.
fn one_byte_records(
    srv: &Server,
    dir: &std::path::Path,
    requests: &[u8],
) -> (std::os::unix::net::UnixStream, Vec<u8>) {
    let mut c = Client::start(&srv.sock);
    let r = c.opt(OPT_STARTTLS, &[]);
    assert_eq!(r[0].kind, REP_ACK, "{r:?}");
    let mut t = Blocking::new(client_config(dir, None, &[&TLS13, &TLS12]));
    t.handshake(&mut c.s).expect("TLS handshake");
    let mut plain = opt_bytes(OPT_GO, &info_data(b"", &[]));
    plain.extend_from_slice(requests);
    let mut sealed = Vec::new();
    for b in plain {
        t.conn.writer().write_all(&[b]).expect("seal a record");
        while t.conn.wants_write() {
            t.conn.write_tls(&mut sealed).expect("into a Vec");
        }
    }
    (c.s, sealed)
}

/// An option as the client sends it.
fn opt_bytes(opt: u32, data: &[u8]) -> Vec<u8> {
    let mut v = 0x4948_4156_454F_5054u64.to_be_bytes().to_vec();
    v.extend_from_slice(&opt.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn one_byte_records_do_not_keep_a_fresh_client_waiting() {
    let tmp = TempDir::new();
    let Some(c) = certs::make_or_skip(tmp.path()) else {
        return;
    };
    let dir = c.dir.as_os_str();
    let srv = Server::start(&[
        "--tls=on".as_ref(),
        "--tls-certificates".as_ref(),
        dir,
        "memory".as_ref(),
        "64M".as_ref(),
    ]);
    // A WRITE whose 1 MiB payload comes a byte a record: no request is
    // complete before its last, so only the turn's own bounds end a turn.
    let mut requests = request(false, 0, CMD_WRITE, 1, 0, 1 << 20);
    requests.resize(requests.len() + (1 << 20), 0x5a);
    let attackers: Vec<_> = (0..2)
        .map(|_| one_byte_records(&srv, &c.dir, &requests))
        .collect();
    let mut threads = Vec::new();
    for (s, sealed) in attackers {
        // A deep socket (what the system allows): many records wait at once.
        let _ = nbdlite::os::bound_socket_buffers(s.as_fd(), 4 << 20, 64 << 10);
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = s.try_clone().unwrap();
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
        }));
        let mut w = s;
        threads.push(std::thread::spawn(move || {
            let _ = w.write_all(&sealed);
            let _ = w.shutdown(std::net::Shutdown::Write);
        }));
    }
    // A fresh client, plaintext, over and over while they send.
    let (mut worst, mut rounds) = (Duration::ZERO, 0);
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        let start = Instant::now();
        let (mut f, _, _) = Client::ready(&srv.sock, false, false, false);
        let at = 8 << 20; // away from the attackers' WRITEs
        assert_eq!(f.write(at, &[7; 4096]), 0);
        assert!(f.read(0, at, 4096).unwrap() == [7; 4096], "read back");
        worst = worst.max(start.elapsed());
        rounds += 1;
    }
    eprintln!(
        "2 clients x a 1 MiB WRITE in one-byte records: {rounds} fresh rounds, the slowest {worst:?}"
    );
    assert!(
        worst < Duration::from_secs(1),
        "a fresh client waited {worst:?}"
    );
    drop(srv);
    for t in threads {
        t.join().expect("an attacking client");
    }
}
