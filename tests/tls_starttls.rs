//! STARTTLS on the wire, against the running server, with the raw client of
//! `common/wire.rs` switched to TLS (rustls, `common/tls_client.rs`) on the
//! same socket: what `--tls=require`, `on` and `off` answer, bytes pipelined
//! behind STARTTLS, what is forgotten, and how a TLS client that goes wrong
//! (garbage, silence, EOF, never reading) costs that client alone.
#![cfg(feature = "tls")]

mod common;
#[path = "common/tls_client.rs"]
mod tls_client;
#[path = "common/wire.rs"]
mod wire;

use std::ffi::OsString;
use std::io::{self, ErrorKind};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::certs::{self, Certs};
use common::{Reap, Server, TempDir, bin, rss_kib, wait_exit, wait_until};
use rustls::ClientConfig;
use rustls::version::{TLS12, TLS13};
use tls_client::{Blocking, client_config};
use wire::*;

const MIB: u64 = 1 << 20;
const INFO_NAME: u16 = 1;
const INFO_DESCRIPTION: u16 = 2;

/// The raw client's TLS: rustls over its socket.
struct Rustls(Blocking);

impl Tunnel for Rustls {
    fn send(&mut self, s: &mut UnixStream, b: &[u8]) -> io::Result<()> {
        self.0.send(s, b)
    }

    fn recv(&mut self, s: &mut UnixStream, b: &mut [u8]) -> io::Result<usize> {
        self.0.recv(s, b)
    }
}

/// Certificates in a fresh directory, or None after a skip.
fn certs() -> Option<(TempDir, Certs)> {
    let tmp = TempDir::new();
    let c = certs::make_or_skip(tmp.path())?;
    Some((tmp, c))
}

/// `nbdlite -f -U SOCK --tls=MODE --tls-certificates=DIR EXTRA… memory 1M`.
#[track_caller]
fn serve(c: &Certs, mode: &str, extra: &[&str]) -> Server {
    let mut args: Vec<OsString> = vec![format!("--tls={mode}").into(), "--tls-certificates".into()];
    args.push(c.dir.clone().into());
    args.extend(extra.iter().map(OsString::from));
    args.extend(["memory".into(), "1M".into()]);
    Server::start(&args)
}

/// A client that trusts the test CA, TLS 1.3 or 1.2.
fn trusting(c: &Certs) -> Arc<ClientConfig> {
    client_config(&c.dir, None, &[&TLS13, &TLS12])
}

/// STARTTLS, its ACK, the handshake: from here on `c` speaks TLS.
#[track_caller]
fn starttls(c: &mut Client, cfg: Arc<ClientConfig>) {
    let r = c.opt(OPT_STARTTLS, &[]);
    assert_eq!((r.len(), r[0].kind), (1, REP_ACK), "{r:?}");
    handshake(c, Blocking::new(cfg));
}

/// Completes the handshake `t` began and switches `c` to it.
#[track_caller]
fn handshake(c: &mut Client, mut t: Blocking) {
    t.handshake(&mut c.s).expect("TLS handshake");
    c.tls(Box::new(Rustls(t)));
}

/// GO, then a write and a read: the session works.
#[track_caller]
fn serves(c: &mut Client) {
    c.go(b"");
    assert_eq!(c.write(512, b"sealed"), 0);
    assert_eq!(c.read(0, 512, 6).unwrap(), b"sealed");
}

/// The one reply to an option that has exactly one.
#[track_caller]
fn only_reply(c: &mut Client, opt: u32, data: &[u8]) -> OptReply {
    let mut r = c.opt(opt, data);
    assert_eq!(r.len(), 1, "{r:?}");
    r.pop().unwrap()
}

#[test]
fn require_refuses_every_option_but_starttls_and_abort() {
    let Some((_tmp, c)) = certs() else {
        return;
    };
    let srv = serve(&c, "require", &[]);
    let mut cl = Client::start(&srv.sock);
    for (opt, data) in [
        (OPT_LIST, vec![]),
        (OPT_INFO, info_data(b"", &[])),
        (OPT_GO, info_data(b"", &[])),
        (OPT_SR, vec![]),
        (OPT_EH, vec![]),
        (OPT_SET_META, meta_data(b"", &[b"base:allocation"])),
        (OPT_LIST, vec![0; 100]), // data read and thrown away
    ] {
        let r = only_reply(&mut cl, opt, &data);
        assert_eq!(r.kind, ERR_TLS_REQD, "option {opt}: {r:?}");
    }
    // The connection is still up: STARTTLS, and the export is served inside.
    starttls(&mut cl, trusting(&c));
    serves(&mut cl);

    // ABORT gets its ACK, then the server hangs up.
    let mut cl = Client::start(&srv.sock);
    assert_eq!(only_reply(&mut cl, OPT_ABORT, &[]).kind, REP_ACK);
    assert!(cl.closed_by_peer(5));
    // EXPORT_NAME cannot be refused: the client is let go, nothing sent.
    let mut cl = Client::start(&srv.sock);
    cl.send_opt(OPT_EXPORT_NAME, b"");
    assert!(cl.closed_by_peer(5), "EXPORT_NAME served without TLS");
}

#[test]
fn on_serves_plaintext_and_tls_clients() {
    let Some((_tmp, c)) = certs() else {
        return;
    };
    let srv = serve(&c, "on", &[]);
    still_serves(&srv.sock);
    let mut cl = Client::start(&srv.sock);
    starttls(&mut cl, trusting(&c));
    serves(&mut cl);
    // The kernel's nbd-client speaks TLS 1.2 only.
    let mut cl = Client::start(&srv.sock);
    starttls(&mut cl, client_config(&c.dir, None, &[&TLS12]));
    serves(&mut cl);
}

#[test]
fn starttls_refused_with_data_twice_or_when_off() {
    let Some((_tmp, c)) = certs() else {
        return;
    };
    let off = serve(&c, "off", &[]);
    let mut cl = Client::start(&off.sock);
    assert_eq!(only_reply(&mut cl, OPT_STARTTLS, &[]).kind, ERR_POLICY);
    serves(&mut cl);

    let srv = serve(&c, "require", &[]);
    let mut cl = Client::start(&srv.sock);
    assert_eq!(only_reply(&mut cl, OPT_STARTTLS, b"x").kind, ERR_INVALID);
    starttls(&mut cl, trusting(&c));
    let again = only_reply(&mut cl, OPT_STARTTLS, &[]);
    assert_eq!(again.kind, ERR_INVALID, "{again:?}");
    serves(&mut cl); // still inside the same TLS session
}

#[test]
fn a_client_hello_pipelined_behind_starttls_is_tls() {
    let Some((_tmp, c)) = certs() else {
        return;
    };
    let srv = serve(&c, "require", &[]);
    let mut cl = Client::start(&srv.sock);
    let mut t = Blocking::new(trusting(&c));
    let mut bytes = option(OPT_STARTTLS, &[]);
    bytes.extend(t.hello());
    cl.send(&bytes); // one write: the server reads both at once
    assert_eq!(cl.recv_opt_reply().kind, REP_ACK);
    handshake(&mut cl, t);
    serves(&mut cl);
}

/// STARTTLS's ACK cannot go out at once (the client has not read 30 large
/// INFO replies): the ClientHello already received behind it must wait for
/// TLS, not be taken for an option meanwhile.
#[test]
fn a_pipelined_client_hello_waits_for_the_ack_behind_a_full_socket() {
    let Some((_tmp, c)) = certs() else {
        return;
    };
    let long = "n".repeat(4096);
    let srv = serve(&c, "on", &["-v", "-e", &long, "--description", &long]);
    let mut cl = Client::start(&srv.sock);
    let mut t = Blocking::new(trusting(&c));
    let mut bytes = Vec::new();
    // 30 replies of 8 KiB and more: beyond what a Unix socket buffers by default.
    let infos = 30;
    for _ in 0..infos {
        let data = info_data(b"", &[INFO_NAME, INFO_DESCRIPTION]);
        bytes.extend(option(OPT_INFO, &data));
    }
    bytes.extend(option(OPT_STARTTLS, &[]));
    bytes.extend(t.hello());
    cl.send(&bytes);
    // Once the server has taken STARTTLS, it writes until the socket is full
    // and gives up its turn. Nothing tells the client when that is done: it
    // waits a moment (if it read too soon, the ACK might go out at once and
    // this test prove less, but never fail wrongly).
    wait_until(10, "the server to take STARTTLS", || {
        srv.log_text().contains("option STARTTLS")
    });
    std::thread::sleep(Duration::from_millis(100));
    if srv.log_text().contains("TLS handshake begins") {
        eprintln!("note: the socket took every reply: STARTTLS's ACK was not held back");
    }
    for _ in 0..infos {
        let r = cl.opt_replies(OPT_INFO);
        assert_eq!(r.last().unwrap().kind, REP_ACK, "{r:?}");
    }
    assert_eq!(cl.recv_opt_reply().kind, REP_ACK, "STARTTLS");
    if let Err(e) = t.handshake(&mut cl.s) {
        panic!("TLS handshake: {e}\n{}", srv.log_text());
    }
    cl.tls(Box::new(Rustls(t)));
    serves(&mut cl);
}

#[test]
fn what_was_negotiated_before_starttls_is_forgotten() {
    let Some((_tmp, c)) = certs() else {
        return;
    };
    let srv = serve(&c, "on", &[]);
    let mut cl = Client::start(&srv.sock);
    assert_eq!(only_reply(&mut cl, OPT_SR, &[]).kind, REP_ACK);
    let r = cl.opt(OPT_SET_META, &meta_data(b"", &[b"base:allocation"]));
    assert_eq!(r.last().unwrap().kind, REP_ACK);
    starttls(&mut cl, trusting(&c));
    let r = only_reply(
        &mut cl,
        OPT_SET_META,
        &meta_data(b"", &[b"base:allocation"]),
    );
    assert_eq!(r.kind, ERR_INVALID);
    assert_eq!(r.data, b"negotiate structured replies first");
    // GO: simple replies (a structured one would fail the raw client's parse).
    let (_, flags) = cl.go(b"");
    assert_eq!(
        flags & (1 << 7),
        0,
        "NBD_FLAG_SEND_DF without structured replies"
    );
    assert_eq!(cl.write(0, b"plain"), 0);
    cl.request(0, CMD_READ, 7, 0, 5, &[]);
    let r = cl.reply(Some(5));
    assert_eq!(
        (r.magic, r.payload.as_slice()),
        (SIMPLE_MAGIC, &b"plain"[..])
    );

    // Extended headers too: EXPORT_NAME, refused after them, is served again.
    let mut cl = Client::start(&srv.sock);
    assert_eq!(only_reply(&mut cl, OPT_EH, &[]).kind, REP_ACK);
    starttls(&mut cl, trusting(&c));
    cl.send_opt(OPT_EXPORT_NAME, b"");
    let reply = cl.recv(10); // size and flags (NO_ZEROES asked by Client::start)
    assert_eq!(u64_at(&reply, 0), MIB);
    assert_eq!(cl.cmd(0, CMD_FLUSH, 0, 0), 0);
}

#[test]
fn garbage_instead_of_a_client_hello_ends_that_client_only() {
    let Some((_tmp, c)) = certs() else {
        return;
    };
    let mut srv = serve(&c, "on", &["-v"]);
    let garbage = option(OPT_GO, &info_data(b"", &[])); // options, not TLS
    // Sent after the ACK, and pipelined behind STARTTLS.
    for pipelined in [false, true] {
        let mut cl = Client::start(&srv.sock);
        if pipelined {
            let mut b = option(OPT_STARTTLS, &[]);
            b.extend(&garbage);
            cl.send(&b);
            assert_eq!(cl.recv_opt_reply().kind, REP_ACK);
        } else {
            assert_eq!(only_reply(&mut cl, OPT_STARTTLS, &[]).kind, REP_ACK);
            cl.send(&garbage);
        }
        assert!(
            cl.closed_by_peer(5),
            "pipelined {pipelined}: still connected"
        );
        assert!(srv.alive());
        let mut fresh = Client::start(&srv.sock);
        starttls(&mut fresh, trusting(&c));
        serves(&mut fresh);
        still_serves(&srv.sock);
    }
    let log = srv.log_text();
    let why: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS handshake: "))
        .collect();
    assert_eq!(why.len(), 2, "a debug line each, saying why: {log}");
    assert!(why.iter().all(|l| l.contains("debug: conn ")), "{log}");
}

#[test]
fn the_handshake_timeout_covers_the_tls_handshake() {
    let Some((_tmp, c)) = certs() else {
        return;
    };
    let srv = serve(&c, "require", &["--handshake-timeout", "1"]);
    // STARTTLS, then nothing; and a TLS handshake that never chooses an export.
    let mut silent = Client::start(&srv.sock);
    assert_eq!(only_reply(&mut silent, OPT_STARTTLS, &[]).kind, REP_ACK);
    let mut idle = Client::start(&srv.sock);
    starttls(&mut idle, trusting(&c));
    for cl in [&mut silent, &mut idle] {
        assert!(cl.closed_by_peer(10), "not dropped");
    }
    let log = srv.log_text();
    let dropped = log.matches("handshake not finished within 1s").count();
    assert_eq!(dropped, 2, "{log}");
}

#[test]
fn eof_in_the_middle_of_the_tls_handshake() {
    let Some((_tmp, c)) = certs() else {
        return;
    };
    let mut srv = serve(&c, "require", &["-v"]);
    let mut cl = Client::start(&srv.sock);
    assert_eq!(only_reply(&mut cl, OPT_STARTTLS, &[]).kind, REP_ACK);
    let hello = Blocking::new(trusting(&c)).hello();
    cl.send(&hello[..hello.len() / 2]);
    cl.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(cl.closed_by_peer(5));
    wait_until(5, "the debug line", || {
        srv.log_text()
            .contains("TLS handshake: the client closed the connection")
    });
    assert!(srv.alive());
    let mut fresh = Client::start(&srv.sock);
    starttls(&mut fresh, trusting(&c));
    serves(&mut fresh);
}

#[test]
fn disc_and_abort_end_with_close_notify() {
    let Some((_tmp, c)) = certs() else {
        return;
    };
    let srv = serve(&c, "require", &[]);
    let mut cl = Client::start(&srv.sock);
    starttls(&mut cl, trusting(&c));
    serves(&mut cl);
    cl.request(0, CMD_DISC, 1, 0, 0, &[]);
    // Ok(0): a clean TLS end; without close_notify rustls says UnexpectedEof.
    assert_eq!(cl.read_some(&mut [0; 16]).expect("close_notify"), 0);

    let mut cl = Client::start(&srv.sock);
    starttls(&mut cl, trusting(&c));
    assert_eq!(only_reply(&mut cl, OPT_ABORT, &[]).kind, REP_ACK);
    assert_eq!(cl.read_some(&mut [0; 16]).expect("close_notify"), 0);
}

/// The limits test's slow reader, over TLS: the replies it leaves unread cost
/// at most the output limit plus the sealed records queued (128 KiB).
#[test]
fn a_tls_client_that_never_reads_costs_at_most_the_output_limit() {
    let Some((tmp, c)) = certs() else {
        return;
    };
    let img = tmp.join("disk.img");
    common::sparse_file(&img, 64 * MIB);
    let dir = c.dir.as_os_str();
    let srv = Server::start(&[
        "--tls=require".as_ref(),
        "--tls-certificates".as_ref(),
        dir,
        "file".as_ref(),
        img.as_os_str(),
    ]);
    let mut other = Client::start(&srv.sock);
    starttls(&mut other, trusting(&c));
    other.go(b"");
    let base = rss_kib(srv.pid());

    let mut hog = Client::start(&srv.sock);
    starttls(&mut hog, trusting(&c));
    hog.go(b"");
    hog.s
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let batch = read_batch(256, MIB, 64 * MIB);
    let mut sent = 0u64;
    let stopped = loop {
        match hog.send_raw(&batch) {
            Ok(()) => sent += 256,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break true;
            }
            Err(e) => panic!("hog: {e}"),
        }
        if sent >= 1 << 20 {
            break false;
        }
    };
    assert!(stopped, "the server kept reading requests ({sent} sent)");
    let hog_rss = rss_kib(srv.pid());
    eprintln!("TLS slow reader: {sent}+ requests sent; RSS {base} KiB before, {hog_rss} KiB after");
    let bound = base + (64 << 10) + 128 + 8 * 1024;
    assert!(hog_rss < bound, "RSS grew from {base} to {hog_rss} KiB");
    // Another TLS client is served meanwhile.
    for i in 0..16 {
        other.request(0, CMD_READ, i, i * MIB, MIB, &[]);
        assert_eq!(other.reply(Some(MIB as usize)).error, 0);
    }
    drop(hog);
    let mut fresh = Client::start(&srv.sock);
    starttls(&mut fresh, trusting(&c));
    serves(&mut fresh);
}

/// `-s` on two pipes (stdin and stdout apart, as ssh gives a command): the
/// handshake's answers must go out on stdout, not on the stdin they came from.
#[test]
fn tls_over_a_pair_of_pipes() {
    let Some((tmp, c)) = certs() else {
        return;
    };
    let log = std::fs::File::create(tmp.join("log")).unwrap();
    let mut child = Command::new(bin())
        .args(["-s", "--tls=require", "-v", "--tls-certificates"])
        .arg(&c.dir)
        .args(["memory", "1M"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let (mut to, mut from) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let mut server = Reap(child);
    // The raw client speaks over a socket; two threads carry it to the pipes.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut up = theirs.try_clone().unwrap();
    let mut down = theirs;
    std::thread::spawn(move || carry(&mut up, &mut to));
    std::thread::spawn(move || {
        carry(&mut from, &mut down);
        let _ = down.shutdown(std::net::Shutdown::Write);
    });
    let mut cl = Client::over(ours);
    let greeting = cl.recv(18);
    assert_eq!(u64_at(&greeting, 8), IHAVEOPT);
    cl.send(&client_flags(3));
    let r = cl.opt(OPT_STARTTLS, &[]);
    assert_eq!(r[0].kind, REP_ACK, "{r:?}");
    let mut t = Blocking::new(trusting(&c));
    if let Err(e) = t.handshake(&mut cl.s) {
        let text = std::fs::read_to_string(tmp.join("log")).unwrap_or_default();
        panic!("TLS handshake: {e}\n{text}");
    }
    cl.tls(Box::new(Rustls(t)));
    serves(&mut cl);
    cl.request(0, CMD_DISC, 1, 0, 0, &[]);
    let st = wait_exit(&mut server.0, 10).expect("the -s server exits after DISC");
    let text = std::fs::read_to_string(tmp.join("log")).unwrap_or_default();
    assert!(st.success(), "{st}: {text}");
}

/// Copies until EOF or an error, each read passed on at once.
fn carry(from: &mut impl io::Read, to: &mut impl io::Write) {
    let mut buf = [0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
            break;
        }
    }
}
