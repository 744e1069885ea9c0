//! The log cannot be driven by clients, and never stops the server: warnings a
//! client causes are rate-limited (per connection and in total), and a stderr
//! nobody reads (a full pipe) costs log lines, not service. (The system log's
//! socket is tested in `logging::syslog`'s unit tests: a daemon that stops
//! reading costs messages, not time.)

mod common;
#[path = "common/wire.rs"]
mod wire;

use std::io::Read;
use std::process::{Command, Stdio};

use common::{Reap, Server, TempDir, wait_until};
use wire::*;

#[test]
fn a_stderr_nobody_reads_does_not_stop_the_server() {
    let dir = TempDir::new();
    let (sock, pidfile) = (dir.join("sock"), dir.join("pid"));
    // -v: a debug line per request, into a pipe nobody reads (64 KiB).
    let mut child = Command::new(common::bin())
        .args(["-f", "-v", "-U"])
        .arg(&sock)
        .arg("-P")
        .arg(&pidfile)
        .args(["memory", "1M"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nbdlite");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let srv = Reap(child);
    wait_until(10, "the pidfile", || pidfile.exists());
    let (mut c, _, _) = Client::ready(&sock, false, false, false);
    // 20,000 requests: over a megabyte of log lines. Every reply comes (the
    // client waits 10 s at most for each).
    for batch in 0..200 {
        c.send(&read_batch(100, 512, 1 << 20));
        for _ in 0..100 {
            assert_eq!(c.reply(Some(512)).error, 0, "batch {batch}");
        }
    }
    // Someone reads at last: the next line says what was lost.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    assert_eq!(c.write(0, b"read at last"), 0);
    let pid = srv.0.id().to_string();
    assert!(Command::new("kill").arg(&pid).status().unwrap().success());
    let text = reader.join().unwrap();
    assert!(
        text.contains("log lines lost"),
        "{}",
        &text[text.len().saturating_sub(2000)..]
    );
    drop(srv);
}

#[test]
fn warnings_a_client_causes_are_rate_limited() {
    // A small budget: a 2 MiB WRITE is over the maximum, refused with a
    // warning, and the connection goes on.
    let srv = Server::start(&["--memory-budget", "4M", "memory", "8M"]);
    let (mut c, _, _) = Client::ready(&srv.sock, false, false, false);
    let big = vec![0u8; 2 << 20];
    for _ in 0..20 {
        assert_eq!(c.write(0, &big), EINVAL);
    }
    let refused = srv.log_text().matches("refused").count();
    assert!(
        (1..=5).contains(&refused),
        "{refused} lines from one connection"
    );
    // 200 clients that each break the framing: a warning each, in the
    // limit for all connections together.
    for _ in 0..200 {
        let (mut c, _, _) = Client::ready(&srv.sock, false, false, false);
        c.send(&[0xee; 28]);
        assert!(c.closed_by_peer(5));
    }
    let log = srv.log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains(": disconnecting"))
        .count();
    assert!(
        (1..=50).contains(&lines),
        "{lines} lines from 200 clients:\n{log}"
    );
    still_serves(&srv.sock);
}
