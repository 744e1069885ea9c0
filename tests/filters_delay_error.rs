//! The delay and error filters with real clients: delayed requests wait on
//! timers of the one loop (a client's pipeline is delayed once, not once per
//! request, and other clients go on), open and close delays, injected errors
//! that write nothing, filters stacked in either order, the file backend
//! under both I/O engines, and what shutdown does to requests a filter holds.

mod common;
#[path = "common/wire.rs"]
mod wire;

use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::{Server, TempDir, bin, have, nbdinfo, nbdsh, nbdsh_command, run};

/// 64 reads in flight at once, each delayed a second, with nbdsh's
/// asynchronous API: they complete together after about a second (64 in a
/// row would take a minute). Prints the seconds taken.
const PIPELINE: &str = "
import time
t = time.monotonic()
cs = [h.aio_pread(nbd.Buffer(512), i * 512) for i in range(64)]
while h.aio_in_flight() > 0:
    h.poll(-1)
assert all(h.aio_command_completed(c) for c in cs)
print(time.monotonic() - t)
";

fn seconds(out: &str) -> f64 {
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not seconds: {out}"))
}

#[test]
fn a_pipeline_of_delayed_reads_is_delayed_once() {
    if !have(&["nbdsh"]) {
        return;
    }
    for backend in [&["memory", "1M"][..], &["pattern", "1M"]] {
        let mut args = vec!["--filter=delay"];
        args.extend_from_slice(backend);
        args.push("rdelay=1");
        let srv = Server::start(&args);
        let took = seconds(&nbdsh(&srv.uri(), PIPELINE));
        assert!((0.9..10.0).contains(&took), "{backend:?}: {took}s");
    }
}

#[test]
fn delayed_writes_of_one_client_do_not_hold_up_another() {
    if !have(&["nbdsh", "qemu-io"]) {
        return;
    }
    let srv = Server::start(&["--filter=delay", "memory", "1M", "wdelay=3"]);
    let mut writer = nbdsh_command()
        .args(["-u", &srv.uri(), "-c", "h.pwrite(b'x' * 512, 0)"])
        .spawn()
        .expect("nbdsh");
    // Reads are not delayed, and the writer's delay is a timer, not the loop.
    let t = Instant::now();
    let out = common::qemu_io(&srv.uri(), &["r 4096 512"]);
    assert!(out.contains("read 512/512"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(common::wait_exit(&mut writer, 30).is_some_and(|s| s.success()));
}

#[test]
fn delayed_requests_on_a_file_under_both_engines() {
    if !have(&["nbdsh"]) {
        return;
    }
    for engine in ["1", "0"] {
        let dir = TempDir::new();
        let img = dir.join("disk.img");
        common::sparse_file(&img, 1 << 20);
        let mut cmd = Command::new(bin());
        cmd.env("NBDLITE_IO_URING", engine);
        let img = img.to_string_lossy();
        let srv = Server::start_with(
            cmd,
            &[
                "--filter=delay",
                "file",
                &img,
                "rdelay=500ms",
                "wdelay=500ms",
            ],
        );
        let script = "
h.pwrite(b'abc' * 1000, 4096, nbd.CMD_FLAG_FUA)
assert h.pread(3000, 4096) == b'abc' * 1000
h.flush()
";
        let t = Instant::now();
        nbdsh(&srv.uri(), script);
        assert!(
            t.elapsed() >= Duration::from_millis(1000),
            "engine {engine}"
        );
    }
}

/// A pipeline deeper than the I/O engine takes at once, held by the delay
/// and released together: what the engine cannot take yet waits for room,
/// none of it is refused as "server busy".
#[test]
fn a_released_pipeline_deeper_than_the_engine_waits_for_room() {
    if !have(&["nbdsh"]) {
        return;
    }
    for engine in ["1", "0"] {
        let dir = TempDir::new();
        let img = dir.join("disk.img");
        common::sparse_file(&img, 1 << 20);
        let mut cmd = Command::new(bin());
        cmd.env("NBDLITE_IO_URING", engine);
        let img = img.to_string_lossy();
        let srv = Server::start_with(cmd, &["--filter=delay", "file", &img, "rdelay=200ms"]);
        let script = "
cmds = [h.aio_pread(nbd.Buffer(4096), (i % 256) * 4096) for i in range(700)]
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in cmds:
    assert h.aio_command_completed(c)
print('all', len(cmds))
";
        let out = nbdsh(&srv.uri(), script);
        assert!(out.contains("all 700"), "engine {engine}: {out}");
    }
}

#[test]
fn open_and_close_are_delayed() {
    if !have(&["nbdsh", "nbdinfo"]) {
        return;
    }
    let srv = Server::start(&[
        "--filter=delay",
        "null",
        "1M",
        "delay-open=1",
        "delay-close=1",
    ]);
    let t = Instant::now();
    nbdinfo(&["--size", &srv.uri()]);
    assert!(t.elapsed() >= Duration::from_secs(1), "delay-open");
    // A graceful disconnect waits for the close delay; a dropped one does not.
    let t = Instant::now();
    nbdsh(&srv.uri(), "h.shutdown()");
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "delay-open + delay-close"
    );
}

#[test]
fn fast_zero_may_fail_at_once() {
    if !have(&["nbdsh"]) {
        return;
    }
    let srv = Server::start(&[
        "--filter=delay",
        "memory",
        "1M",
        "delay-zero=5",
        "delay-fast-zero=false",
    ]);
    let script = "
import time
t = time.monotonic()
try:
    h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)
    assert False, 'fast zero succeeded'
except nbd.Error as e:
    assert e.errno == 'ENOTSUP', e.errno
assert time.monotonic() - t < 2
";
    nbdsh(&srv.uri(), script);
}

#[test]
fn injected_write_errors_write_nothing() {
    if !have(&["nbdsh", "nbdcopy"]) {
        return;
    }
    let srv = Server::start(&[
        "--filter=error",
        "memory",
        "1M",
        "error=ENOSPC",
        "error-pwrite-rate=100%",
    ]);
    let script = "
try:
    h.pwrite(b'x' * 512, 0)
    assert False, 'the write succeeded'
except nbd.Error as e:
    assert e.errno == 'ENOSPC', e.errno
assert h.pread(512, 0) == bytes(512)   # nothing was written
h.zero(512, 0)                          # zeroing is not pwrite
h.flush()                               # nor FLUSH
";
    nbdsh(&srv.uri(), script);
    let dir = TempDir::new();
    let data = dir.join("data");
    std::fs::write(&data, vec![0xa5; 1 << 20]).expect("data file");
    let out = run(
        Command::new("nbdcopy").args([data.to_str().expect("utf-8"), &srv.uri()]),
        60,
    );
    assert!(!out.status.success(), "nbdcopy reports the failed writes");
}

#[test]
fn errors_follow_the_error_file() {
    if !have(&["nbdsh"]) {
        return;
    }
    let dir = TempDir::new();
    let trigger = dir.join("trigger");
    let srv = Server::start(&[
        "--filter=error",
        "pattern",
        "1M",
        "error-rate=1",
        &format!("error-file={}", trigger.display()),
    ]);
    let script = format!(
        "
import os
h.pread(512, 0)
open('{t}', 'w').close()
try:
    h.pread(512, 0)
    assert False, 'no error with the file'
except nbd.Error as e:
    assert e.errno == 'EIO', e.errno
os.unlink('{t}')
h.pread(512, 0)
",
        t = trigger.display()
    );
    nbdsh(&srv.uri(), &script);
}

#[test]
fn stacked_in_either_order() {
    if !have(&["nbdsh"]) {
        return;
    }
    let failing_read = "
import time
t = time.monotonic()
try:
    h.pread(512, 0)
    assert False, 'no error'
except nbd.Error as e:
    assert e.errno == 'EPERM', e.errno
print(time.monotonic() - t)
";
    // error nearest the client: it answers before the delay is reached.
    let srv = Server::start(&[
        "--filter=error",
        "--filter=delay",
        "memory",
        "1M",
        "error=EPERM",
        "error-rate=1",
        "rdelay=1",
    ]);
    assert!(seconds(&nbdsh(&srv.uri(), failing_read)) < 0.9);
    // delay nearest the client: the error comes after the delay.
    let srv = Server::start(&[
        "--filter=delay",
        "--filter=error",
        "memory",
        "1M",
        "error=EPERM",
        "error-rate=1",
        "rdelay=1",
    ]);
    assert!(seconds(&nbdsh(&srv.uri(), failing_read)) >= 0.9);
}

#[test]
fn held_requests_are_refused_at_shutdown() {
    if !have(&["nbdsh"]) {
        return;
    }
    let srv = Server::start(&["-v", "--filter=delay", "memory", "1M", "rdelay=60"]);
    let script = "
try:
    h.pread(512, 0)
    print('read')
except nbd.Error as e:
    print(e.errno)
";
    let mut client = nbdsh_command()
        .args(["-u", &srv.uri(), "-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("nbdsh");
    // With -v the log says when the read has been taken up (and held).
    common::wait_until(10, "the read to arrive", || {
        srv.log_text().contains("READ cookie")
    });
    let t = Instant::now();
    srv.signal("TERM");
    let status = common::wait_exit(&mut client, 10).expect("the client is answered");
    assert!(t.elapsed() < Duration::from_secs(5));
    let out = client.wait_with_output().expect("output");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("ESHUTDOWN"), "{status:?}: {said}");
}

#[test]
fn misuse_is_one_line_and_exit_1() {
    for (args, says) in [
        (
            &["--filter=delay", "memory", "1M", "rdelya=1"][..],
            "unknown parameter 'rdelya'",
        ),
        (
            &["--filter=dealy", "memory", "1M"],
            "unknown filter 'dealy'",
        ),
        (&["--filter=delay", "memory", "1M", "rdelay=soon"], "rdelay"),
        (
            &["--filter=error", "memory", "1M", "error=EAGAIN"],
            "EAGAIN",
        ),
        (
            &["--filter=error", "memory", "1M", "error-rate=200%"],
            "error-rate",
        ),
    ] {
        let out = run(Command::new(bin()).args(args), 10);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("nbdlite: ") && err.contains(says),
            "{args:?}: {err}"
        );
    }
}

/// READs a filter holds count against the memory budget from the moment they
/// are held: clients that pipeline large delayed READs and read nothing hold
/// what the budget lets them, not 64 MiB each when the delay ends.
#[test]
fn held_reads_count_against_the_budget() {
    let srv = Server::start(&[
        "--memory-budget",
        "16M",
        "--filter=delay",
        "pattern",
        "1G",
        "rdelay=100ms",
    ]);
    let before = common::rss_kib(srv.pid());
    // Each client sends its READs, waits while the server is watched, then
    // reads every reply: all at once (the budget has each wait for the
    // memory the others hold until they read).
    let (sent, watched) = (Barrier::new(4), Barrier::new(4));
    std::thread::scope(|s| {
        for c in 0..3u64 {
            let (sock, sent, watched) = (&srv.sock, &sent, &watched);
            s.spawn(move || {
                let (mut client, _, _) = wire::Client::ready(sock, false, false, false);
                for i in 0..30u64 {
                    let offset = (c * 30 + i) << 20;
                    client.request(0, wire::CMD_READ, i, offset, 1 << 20, &[]);
                }
                sent.wait();
                watched.wait();
                for _ in 0..30 {
                    assert_eq!(client.reply(Some(1 << 20)).errno(), 0);
                }
            });
        }
        sent.wait();
        // Unbounded, each would hold 30 MiB of replies once released.
        let until = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < until {
            let grown = common::rss_kib(srv.pid()).saturating_sub(before);
            assert!(grown < 24 << 10, "the server grew by {grown} KiB");
            std::thread::sleep(Duration::from_millis(50));
        }
        watched.wait();
    });
}
