//! What one client, or a crowd of them, can cost the server: memory for replies
//! a client will not read and for a write it trickles, a slot held by a client
//! that never finishes its handshake, and descriptors. In each case other
//! clients are served meanwhile.

mod common;
#[path = "common/wire.rs"]
mod wire;

use std::io::{ErrorKind, Read, Write as _};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, TempDir, cpu_ticks, proc_status, rss_kib, wait_until};
use wire::*;

const MIB: u64 = 1 << 20;
/// conn.rs: the unsent output above which a connection's requests are not read.
const OUT_LIMIT_KIB: u64 = 64 << 10;

/// Reads `n` MiB in 1 MiB requests, pipelined 8 deep, each of which must
/// succeed (within the client's read timeout); returns MiB/s, to print.
fn read_speed(c: &mut Client, n: u64) -> f64 {
    let start = Instant::now();
    let mut sent = 0;
    let mut got = 0;
    while got < n {
        while sent < n && sent - got < 8 {
            c.request(0, CMD_READ, sent, (sent % 32) * MIB, MIB, &[]);
            sent += 1;
        }
        let r = c.reply(Some(MIB as usize));
        assert_eq!(r.error, 0);
        got += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[test]
fn a_client_that_never_reads_costs_at_most_the_output_limit() {
    let dir = TempDir::new();
    let img = dir.join("disk.img");
    common::sparse_file(&img, 64 * MIB);
    // The file backend copies every read into the output queue (memory lends its pages).
    let srv = Server::start(&[std::ffi::OsStr::new("file"), img.as_os_str()]);
    let (mut other, _, _) = Client::ready(&srv.sock, false, false, false);
    let alone = read_speed(&mut other, 64);
    let base = rss_kib(srv.pid());

    // Requests for 1 MiB reads, sent until the server stops taking them: with
    // nothing read, each costs a megabyte of output until the limit is reached.
    let (mut hog, _, _) = Client::ready(&srv.sock, false, false, false);
    // A write that blocks this long: the server has stopped reading (a loaded
    // machine may only make it conclude so late, never wrongly).
    hog.s
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let batch = read_batch(1024, MIB, 64 * MIB);
    let mut sent = 0u64;
    let stopped = loop {
        match hog.s.write_all(&batch) {
            Ok(()) => sent += 1024,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break true;
            }
            Err(e) => panic!("hog: {e}"),
        }
        if sent >= 1 << 20 {
            break false; // a terabyte of replies asked for, and still reading
        }
    };
    assert!(stopped, "the server kept reading requests ({sent} sent)");
    let hog_rss = rss_kib(srv.pid());
    eprintln!(
        "slow reader: {sent}+ requests for 1 MiB sent before the server stopped reading; \
         RSS {base} KiB before, {hog_rss} KiB with its replies queued"
    );
    assert!(
        hog_rss < base + OUT_LIMIT_KIB + 8 * 1024,
        "RSS grew from {base} to {hog_rss} KiB"
    );

    // Meanwhile another client is served: every one of its reads completes (a
    // stalled loop would fail it at the client's 10 s read timeout). Its speed
    // is measured, not asserted: on a shared machine it says little.
    let with_hog = read_speed(&mut other, 64);
    eprintln!("another client reads at {alone:.0} MiB/s alone, {with_hog:.0} MiB/s beside it");
    common::wait_until(5, "RSS to stay put", || {
        rss_kib(srv.pid()) < base + OUT_LIMIT_KIB + 8 * 1024
    });
    drop(hog);
    still_serves(&srv.sock);
}

#[test]
fn a_trickled_write_costs_only_what_has_arrived() {
    let srv = Server::start(&["memory", "64M"]);
    let base = rss_kib(srv.pid());
    // Eight clients each promise 32 MiB and send 1 MiB of it: 8 MiB arrive,
    // 256 MiB are promised.
    let mut writers: Vec<Client> = (0..8)
        .map(|i| {
            let (mut c, _, _) = Client::ready(&srv.sock, false, false, false);
            c.request(0, CMD_WRITE, i, 0, 32 * MIB, &vec![i as u8; MIB as usize]);
            c
        })
        .collect();
    wait_until(10, "the server to take in the 8 MiB sent", || {
        rss_kib(srv.pid()) >= base + 6 * 1024
    });
    still_serves(&srv.sock);
    let rss = rss_kib(srv.pid());
    eprintln!("trickled writes: RSS {base} KiB before, {rss} KiB with 8 x 1 of 32 MiB received");
    assert!(
        rss < base + 8 * 1024 + 6 * 1024,
        "RSS grew from {base} to {rss} KiB for 8 MiB received"
    );
    // The rest arrives: the write is done, in full.
    let w = &mut writers[3];
    w.send(&vec![3u8; (31 * MIB) as usize]);
    assert_eq!(w.reply(None).error, 0);
    assert_eq!(w.read(0, 32 * MIB - 1, 1).unwrap(), [3]);
    drop(writers);
    still_serves(&srv.sock);
}

#[test]
fn a_thousand_silent_clients_do_not_delay_a_new_one() {
    let n = 1000;
    if common::raise_fd_limit() < n + 100 {
        common::skip(&format!("cannot open {n} sockets (RLIMIT_NOFILE)"));
        return;
    }
    let srv = Server::start(&["memory", "1M"]);
    let silent: Vec<UnixStream> = (0..n)
        .map(|_| UnixStream::connect(&srv.sock).expect("connect"))
        .collect();
    let start = Instant::now();
    let (mut c, _, _) = Client::ready(&srv.sock, true, false, false);
    assert_eq!(c.write(0, b"hello"), 0);
    assert_eq!(c.read(0, 0, 5).unwrap(), b"hello");
    let took = start.elapsed();
    eprintln!("handshake, write and read beside {n} silent clients: {took:?}");
    // The fault this catches: the new client served only after the silent ones
    // time out (the 10 s handshake timeout). Far from 10 s, far above what a
    // loaded machine needs.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    drop(silent);
}

#[test]
fn a_stalled_handshake_is_dropped_after_the_timeout() {
    let srv = Server::start(&["--handshake-timeout", "1", "memory", "1M"]);
    // Finished its handshake first: the timeout no longer concerns it.
    let (mut done, _, _) = Client::ready(&srv.sock, false, false, false);
    let start = Instant::now();
    let mut silent = Client::connect_raw(&srv.sock);
    let mut stalled = Client::start(&srv.sock);
    stalled.send(&IHAVEOPT.to_be_bytes()); // half an option header, then nothing
    assert!(stalled.closed_by_peer(10), "a stalled client is dropped");
    assert!(silent.closed_by_peer(10), "a silent client is dropped");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900), "dropped after {took:?}");
    assert_eq!(done.write(0, b"still here"), 0);
    let log = srv.log_text();
    assert!(
        log.contains("handshake not finished within 1s"),
        "a log line names the connection: {log}"
    );
    // With nobody negotiating, the server sleeps: no wake-ups for deadlines.
    // It may still wake to let its buffer pool go (a second after its last
    // use, later on a loaded machine), so one quiet second of the next five
    // will do; a server woken for deadlines has none.
    let pid = srv.pid();
    let wakeups = || proc_status(pid, "voluntary_ctxt_switches");
    let mut woke = Vec::new();
    let quiet = (0..5).any(|_| {
        let before = wakeups();
        std::thread::sleep(Duration::from_secs(1)); // deliberately: wake-ups in a second
        woke.push(wakeups() - before);
        woke.last() <= Some(&2)
    });
    assert!(
        quiet,
        "an idle server woke {woke:?} times in successive seconds"
    );
    still_serves(&srv.sock);
}

/// A client beyond the limit waits at the door for a second (no connection
/// keeps the server waiting, so none gives its place up), then is closed.
#[test]
fn connections_beyond_the_limit_are_closed() {
    let srv = Server::start(&["--max-connections", "3", "memory", "1M"]);
    let mut first: Vec<Client> = (0..3).map(|_| Client::connect(&srv.sock)).collect();
    let mut fourth = Client::connect_raw(&srv.sock);
    let mut buf = [0u8; 18];
    assert_eq!(
        fourth.s.read(&mut buf).expect("EOF, not an error"),
        0,
        "closed before the greeting"
    );
    wait_until(5, "a log line", || srv.log_text().contains("refused"));
    // The first three are served…
    first[2].send(&client_flags(3));
    first[2].go(b"");
    assert_eq!(first[2].write(0, b"third"), 0);
    // …and once one leaves, a newcomer is.
    drop(first.remove(0));
    let mut next = None;
    wait_until(5, "a free slot", || {
        let mut c = Client::connect_raw(&srv.sock);
        let mut g = [0u8; 18];
        let ok = c.s.read_exact(&mut g).is_ok();
        if ok {
            next = Some(c);
        }
        ok
    });
    let mut c = next.expect("greeted");
    c.send(&client_flags(3));
    c.go(b"");
    assert_eq!(c.read(0, 0, 5).unwrap(), b"third");
}

/// `nbdlite -f -U … -P … EXTRA memory 1M` started with the descriptor limits
/// `soft:hard` (prlimit's --nofile syntax).
fn under_prlimit(nofile: &str, extra: &[&str]) -> Server {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}"))
        .arg("--")
        .arg(common::bin());
    Server::start_with(cmd, &[extra, &["memory", "1M"]].concat())
}

/// A server under `prlimit --nofile=64` meets 100 clients: it must neither spin
/// nor stop serving once they leave.
fn under_low_fd_limit(extra: &[&str], expect_in_log: &str) {
    if !common::have(&["prlimit"]) {
        return;
    }
    let srv = under_prlimit("64:64", extra);
    let clients: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(&srv.sock).expect("connect"))
        .collect();
    wait_until(5, expect_in_log, || srv.log_text().contains(expect_in_log));
    let before = cpu_ticks(srv.pid());
    std::thread::sleep(Duration::from_secs(1)); // deliberately: CPU used in a second
    let used = cpu_ticks(srv.pid()) - before;
    eprintln!("{extra:?}: {used} ticks of CPU in a second with 100 clients and 64 fds");
    assert!(
        used <= 10,
        "the server used {used} ticks in a second: spinning?"
    );
    drop(clients);
    wait_until(5, "the server to serve again", || {
        let mut c = Client::connect_raw(&srv.sock);
        let mut g = [0u8; 18];
        c.s.read_exact(&mut g).is_ok()
    });
    still_serves(&srv.sock);
    let mut srv = srv;
    assert!(srv.alive());
}

#[test]
fn a_low_descriptor_limit_refuses_clients_without_spinning() {
    under_low_fd_limit(&[], "refused");
}

#[test]
fn running_out_of_descriptors_does_not_spin() {
    under_low_fd_limit(&["--max-connections", "1000"], "pausing new connections");
}

#[test]
fn the_descriptor_limit_is_raised_to_the_hard_limit() {
    if !common::have(&["prlimit"]) {
        return;
    }
    let srv = under_prlimit("64:4096", &[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", srv.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let soft: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(soft, ["4096", "4096"], "{line}");
    // 100 clients fit now.
    let clients: Vec<Client> = (0..100).map(|_| Client::connect(&srv.sock)).collect();
    drop(clients);
}
