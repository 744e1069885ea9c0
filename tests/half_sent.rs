//! Requests left half-sent (`--request-timeout`), and deadlines after a pause:
//! a server stopped (SIGSTOP) and continued reads what came meanwhile before it
//! enforces any deadline.

mod common;
#[path = "common/wire.rs"]
mod wire;

use std::time::{Duration, Instant};

use common::{Server, wait_until};
use wire::*;

/// Bytes the process has read(2) so far: the sign that the server has taken
/// in what a client sent.
fn bytes_read(pid: i32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io");
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|n| n.parse().ok())
        .expect("rchar")
}

#[test]
fn a_half_sent_request_is_dropped_and_an_idle_client_is_not() {
    let srv = Server::start(&["--request-timeout", "1", "memory", "1M"]);
    let (mut idle, _, _) = Client::ready(&srv.sock, false, false, false);
    let (mut half, _, _) = Client::ready(&srv.sock, false, false, false);
    let start = Instant::now();
    half.send(&request(false, 0, CMD_READ, 1, 0, 512)[..10]);
    assert!(half.closed_by_peer(10), "a half-sent request is dropped");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900), "dropped after {took:?}");
    let log = srv.log_text();
    assert!(
        log.contains("request half-sent, then nothing for 1s"),
        "{log}"
    );
    // Idle for as long, with nothing half-sent: untouched.
    assert_eq!(idle.write(0, b"idle"), 0);
    // A payload that trickles in, never silent for the timeout, goes on.
    let (mut slow, _, _) = Client::ready(&srv.sock, false, false, false);
    slow.send(&request(false, 0, CMD_WRITE, 2, 0, 6));
    for b in b"trickl" {
        std::thread::sleep(Duration::from_millis(300)); // deliberately: slow, not silent
        slow.send(&[*b]);
    }
    assert_eq!(slow.reply(None).error, 0);
    assert_eq!(slow.read(0, 0, 6).unwrap(), b"trickl");
}

/// The last reply to an option (ACK or an error), or how the connection failed.
fn final_reply(c: &mut Client) -> Result<u32, ReadError<std::io::Error>> {
    use std::io::Read;
    loop {
        let r = read_message(|b| c.s.read_exact(b), MAX_MESSAGE, option_reply)?;
        if r.is_final() {
            return Ok(r.kind);
        }
    }
}

/// More clients than one wake-up's batch of events (1,024): those whose input
/// is only seen in the next batch must not be dropped in between.
const CROWD: usize = 1100;

#[test]
fn input_that_came_during_a_pause_is_read_before_deadlines() {
    if common::raise_fd_limit() < CROWD as u64 + 100 {
        common::skip(&format!("cannot open {CROWD} sockets (RLIMIT_NOFILE)"));
        return;
    }
    // Long enough for the crowd to connect on a loaded machine; the pause
    // outlasts it.
    let srv = Server::start(&[
        "--handshake-timeout",
        "3",
        "--request-timeout",
        "1",
        "memory",
        "1M",
    ]);
    let pid = srv.pid();
    let (mut half, _, _) = Client::ready(&srv.sock, false, false, false);
    let mut negotiating: Vec<Client> = (0..CROWD).map(|_| Client::start(&srv.sock)).collect();
    let write = request(false, 0, CMD_WRITE, 5, 0, 4);
    let before = bytes_read(pid);
    half.send(&write[..10]);
    wait_until(5, "the server to read the half request", || {
        bytes_read(pid) >= before + 10
    });
    srv.signal("STOP");
    // All finish during the pause, which then outlasts both timeouts.
    for c in &mut negotiating {
        c.send_opt(OPT_GO, &info_data(b"", &[]));
    }
    half.send(&write[10..]);
    half.send(b"late");
    std::thread::sleep(Duration::from_millis(3500)); // deliberately: a long pause
    srv.signal("CONT");
    for (i, c) in negotiating.iter_mut().enumerate() {
        let answer = final_reply(c);
        assert!(
            matches!(answer, Ok(REP_ACK)),
            "client {i}: GO answered {answer:?}: {}",
            srv.log_text()
        );
    }
    assert_eq!(half.reply(None).error, 0, "the WRITE answered");
    assert_eq!(negotiating[0].read(0, 0, 4).unwrap(), b"late");
}
