//! The filters that decide who may connect and when the server ends:
//! exitlast, exitwhen (every kind of event) and limit, with real clients and
//! the raw client (to hold connections open, and to see what a refused one
//! is told).

mod common;
#[path = "common/wire.rs"]
mod wire;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use wire::*;

/// A client the server turns away as it connects: closed before its greeting.
#[track_caller]
fn turned_away(sock: &Path) {
    let mut c = Client::connect_raw(sock);
    let mut b = [0u8; 18];
    let n = c.read_some(&mut b).unwrap_or(0);
    assert_eq!(n, 0, "no greeting for a client turned away");
}

/// The server exits by itself, with status 0, within 10 s.
#[track_caller]
fn exits_cleanly(s: &mut Server) {
    let st = wait_exit(&mut s.child, 10);
    let st = st.unwrap_or_else(|| panic!("the server did not exit: {}", s.log_text()));
    assert!(st.success(), "{st}: {}", s.log_text());
}

fn nbdinfo_ok(uri: &str) -> bool {
    run(Command::new("nbdinfo").args(["--size", uri]), 30)
        .status
        .success()
}

#[test]
fn exitlast_exits_once_the_last_client_has_gone() {
    let mut s = Server::start(&["--filter=exitlast", "memory", "1M"]);
    // A client that never opens the export does not count.
    let mut lister = Client::start(&s.sock);
    assert_eq!(lister.opt(OPT_LIST, &[]).last().unwrap().kind, REP_ACK);
    drop(lister);
    let (mut first, _, _) = Client::ready(&s.sock, true, false, false);
    // Another comes and goes: one is left.
    still_serves(&s.sock);
    assert_eq!(first.write(0, b"still here"), 0);
    assert!(s.alive(), "{}", s.log_text());
    drop(first);
    exits_cleanly(&mut s);
}

#[test]
fn exitlast_with_nbdinfo() {
    if !have(&["nbdinfo"]) {
        return;
    }
    let mut s = Server::start(&["--filter=exitlast", "memory", "1M"]);
    assert!(nbdinfo_ok(&s.uri()));
    exits_cleanly(&mut s);
}

#[test]
fn limit_turns_away_clients_beyond_it_until_one_goes() {
    let s = Server::start(&["--filter=limit", "memory", "1M", "limit=2"]);
    let (mut a, _, _) = Client::ready(&s.sock, true, false, false);
    let (b, _, _) = Client::ready(&s.sock, true, false, false);
    turned_away(&s.sock);
    if have(&["nbdinfo"]) {
        assert!(!nbdinfo_ok(&s.uri()), "a third client got in");
    }
    assert_eq!(a.write(0, b"a"), 0, "those in are served");
    drop(b);
    wait_until(10, "room for a client", || {
        let mut c = Client::connect_raw(&s.sock);
        let mut g = [0u8; 18];
        c.read_some(&mut g).unwrap_or(0) > 0
    });
    still_serves(&s.sock);
    assert!(s.log_text().contains("limit: too many clients connected"));
}

#[test]
fn limit_refuses_go_for_a_client_that_got_in_while_others_negotiated() {
    let s = Server::start(&["--filter=limit", "memory", "1M"]);
    // Both connect while nobody has opened the export yet.
    let mut slow = Client::start(&s.sock);
    let mut by_name = Client::start(&s.sock);
    let (fast, _, _) = Client::ready(&s.sock, false, false, false);
    let refused = slow.opt(OPT_GO, &info_data(b"", &[]));
    assert_eq!(refused.last().unwrap().kind, ERR_UNKNOWN, "{refused:?}");
    assert_eq!(slow.opt(OPT_LIST, &[]).last().unwrap().kind, REP_ACK);
    by_name.send_opt(OPT_EXPORT_NAME, b"");
    assert!(
        by_name.closed_by_peer(10),
        "EXPORT_NAME cannot be refused: closed"
    );
    drop(fast);
    // Once the other has gone, GO succeeds.
    let mut tries = 0;
    wait_until(10, "GO to succeed", || {
        tries += 1;
        assert!(tries < 25, "the option limit is near");
        slow.opt(OPT_GO, &info_data(b"", &[])).last().unwrap().kind == REP_ACK
    });
}

#[test]
fn limit_counts_oldstyle_clients_too() {
    let s = Server::start(&["-o", "--filter=limit", "memory", "1M"]);
    let mut first = Client::connect_raw(&s.sock);
    assert_eq!(first.recv(8), b"NBDMAGIC");
    turned_away(&s.sock);
    drop(first);
    wait_until(10, "room for a client", || {
        let mut c = Client::connect_raw(&s.sock);
        let mut g = [0u8; 8];
        c.read_some(&mut g).unwrap_or(0) > 0
    });
}

#[test]
fn exitwhen_a_file_is_created_turns_new_clients_away_then_exits() {
    let dir = TempDir::new();
    let flag = dir.join("stop");
    let event = format!("exit-when-file-created={}", flag.display());
    let mut s = Server::start(&["--filter=exitwhen", "memory", "1M", &event]);
    let (mut a, _, _) = Client::ready(&s.sock, true, false, false);
    fs::write(&flag, b"").unwrap();
    turned_away(&s.sock);
    assert_eq!(a.write(0, b"served on"), 0, "a client in is served on");
    assert_eq!(a.read(0, 0, 9).unwrap(), b"served on");
    assert!(s.alive());
    drop(a);
    exits_cleanly(&mut s);
}

#[test]
fn exitwhen_an_event_that_has_happened_ends_the_server_at_once() {
    let dir = TempDir::new();
    fs::write(dir.join("stop"), b"").unwrap();
    let args = [
        "-U",
        "-",
        "--filter=exitwhen",
        "null",
        "exit-when-file-created=stop",
    ];
    let (code, _, err) = nbdlite_in(dir.path(), &args);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn exitwhen_polls_while_idle() {
    let dir = TempDir::new();
    let flag = dir.join("running");
    fs::write(&flag, b"").unwrap();
    let event = format!("exit-when-file-deleted={}", flag.display());
    let mut s = Server::start(&[
        "--filter=exitwhen",
        "null",
        "1M",
        &event,
        "exit-when-poll=50ms",
    ]);
    still_serves_read_only(&s.sock);
    fs::remove_file(&flag).unwrap();
    exits_cleanly(&mut s);
}

/// A fresh client negotiates and reads.
fn still_serves_read_only(sock: &Path) {
    let (mut c, _, _) = Client::ready(sock, true, false, false);
    assert!(c.read(0, 0, 512).is_ok());
}

#[test]
fn exitwhen_a_process_exits() {
    let mut other = Command::new("sleep").arg("60").spawn().unwrap();
    let event = format!("exit-when-process-exits={}", other.id());
    let mut s = Server::start(&[
        "--filter=exitwhen",
        "null",
        "1M",
        &event,
        "exit-when-poll=50ms",
    ]);
    still_serves_read_only(&s.sock);
    assert!(s.alive());
    other.kill().unwrap();
    other.wait().unwrap(); // reaped: a zombie is still a process
    exits_cleanly(&mut s);
}

#[test]
fn exitwhen_a_pipe_is_closed() {
    let dir = TempDir::new();
    let (sock, pidfile) = (dir.join("sock"), dir.join("pid"));
    // fd 3 is the read end of a pipe whose only writer is `cat`, which ends
    // when our end of its input is closed.
    let script = format!(
        "exec {} -f -U {} -P {} --filter=exitwhen null 1M \
         exit-when-pipe-closed=3 exit-when-poll=50ms 3< <(cat)",
        bin(),
        sock.display(),
        pidfile.display()
    );
    let mut server = Reap(
        Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(10, "the pidfile", || pidfile.exists());
    still_serves_read_only(&sock);
    assert!(matches!(server.0.try_wait(), Ok(None)), "exited too early");
    drop(server.0.stdin.take());
    let st = wait_exit(&mut server.0, 10);
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
}

#[test]
fn exitwhen_a_script_says_88_and_never_blocks_the_server() {
    let dir = TempDir::new();
    let flag = dir.join("stop");
    // The script takes longer than the test may wait: the server must not
    // wait for it either.
    let script = format!(
        "exit-when-script=test -e {} && exit 88; sleep 15",
        flag.display()
    );
    let mut s = Server::start(&["--filter=exitwhen", "memory", "1M", &script]);
    for _ in 0..3 {
        still_serves(&s.sock);
    }
    let quick = format!(
        "exit-when-script=test -e {} && exit 88; exit 0",
        flag.display()
    );
    let mut t = Server::start(&[
        "--filter=exitwhen",
        "memory",
        "1M",
        &quick,
        "exit-when-poll=50ms",
    ]);
    still_serves(&t.sock);
    fs::write(&flag, b"").unwrap();
    exits_cleanly(&mut t);
    assert!(s.alive(), "{}", s.log_text());
}

#[test]
fn bad_parameters_are_one_line_and_exit_1() {
    let dir = TempDir::new();
    let cases: &[(&[&str], &str)] = &[
        (&["--filter=limit", "limit=x"], "limit: could not parse 'x'"),
        (&["--filter=limit", "limt=2"], "unknown parameter 'limt'"),
        (
            &["--filter=exitlast", "exitlast=1"],
            "unknown parameter 'exitlast'",
        ),
        (
            &["--filter=exitwhen", "exit-when-pipe-closed=987"],
            "987 is not an open file",
        ),
        (
            &["--filter=exitwhen", "exit-when-pipe-closed=x"],
            "could not parse 'x'",
        ),
        (
            &["--filter=exitwhen", "exit-when-process-exits=4000000"],
            "/proc/4000000/stat",
        ),
        (
            &["--filter=exitwhen", "exit-when-poll=soon"],
            "exit-when-poll",
        ),
        (
            &["--filter=exitwhen", "exit-when-file-craeted=x"],
            "unknown parameter",
        ),
    ];
    for (filter_args, what) in cases {
        let mut args = vec!["-U", "-", filter_args[0], "memory", "1M"];
        args.extend_from_slice(&filter_args[1..]);
        args.extend_from_slice(&["--run", "true"]);
        let (code, _, err) = nbdlite_in(dir.path(), &args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.starts_with("nbdlite: ") && err.contains(what),
            "{args:?}: {err}"
        );
    }
}
