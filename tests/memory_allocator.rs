//! `memory allocator=sparse|malloc[,mlock=true]`, as nbdkit's memory plugin
//! takes it: malloc really takes the whole disk at start (and mlock locks
//! it), serves it like the sparse one, and says what to do when the host
//! will not give or lock that much.

mod common;
#[path = "common/wire.rs"]
mod wire;

use std::process::Command;

use common::{Server, bin, have, is_root, proc_status, rss_kib, run, skip, skip_part};
use wire::{CMD_TRIM, Client};

const MIB: u64 = 1 << 20;

/// Writes, reads back, trims and reads zeroes over a raw client, with and
/// without structured replies (which split reads into data and holes).
#[track_caller]
fn serves_data(srv: &Server, size: u64) {
    for sr in [false, true] {
        let (mut c, got, _) = Client::ready(&srv.sock, sr, false, sr);
        assert_eq!(got, size);
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8 + 1).collect();
        for offset in [0, size / 2 + 1, size - data.len() as u64] {
            assert_eq!(c.write(offset, &data), 0);
            assert_eq!(c.read(0, offset, data.len()).unwrap(), data, "sr {sr}");
        }
        c.request(0, CMD_TRIM, 3, 0, 4096, &[]);
        assert_eq!(c.reply(None).error, 0);
        assert_eq!(c.read(0, 0, 4096).unwrap(), vec![0; 4096]);
        assert_eq!(c.read(0, 4096, 16).unwrap(), data[4096..4112]);
    }
}

#[test]
fn malloc_takes_the_whole_disk_at_start() {
    let size = 64 * MIB;
    let sparse = Server::start(&["memory", "64M"]);
    let malloc = Server::start(&["memory", "64M", "allocator=malloc"]);
    let (s, m) = (rss_kib(sparse.pid()), rss_kib(malloc.pid()));
    assert!(s < 32 * 1024, "sparse: {s} KiB before any write");
    assert!(m >= 64 * 1024, "malloc: {m} KiB, not the whole disk");
    serves_data(&sparse, size);
    serves_data(&malloc, size);
    assert_eq!(proc_status(malloc.pid(), "VmLck"), 0, "not locked");
    let spelled = Server::start(&["memory", "size=1M", "allocator=malloc,mlock=false"]);
    serves_data(&spelled, MIB);
}

#[test]
fn mlock_locks_it_in_ram() {
    // 16 MiB, or a quarter of the locked-memory limit (usually 64 KiB or
    // more) if that is less: even root may be held to it (a container's root,
    // without CAP_IPC_LOCK).
    let limit = nbdlite::os::memlock_limit().expect("RLIMIT_MEMLOCK");
    let size = limit.map_or(16 * MIB, |l| (l / 4 / 4096 * 4096).min(16 * MIB));
    if size == 0 {
        skip(&format!("the locked-memory limit is only {limit:?} bytes"));
        return;
    }
    let srv = Server::start(&["memory", &size.to_string(), "allocator=malloc,mlock=true"]);
    let locked = proc_status(srv.pid(), "VmLck");
    assert!(locked >= size / 1024, "VmLck {locked} KiB");
    serves_data(&srv, size);
}

/// A disk the host will not hold, or lock, is one line at start that says
/// what to do, not a crash (or a kill) at some later write.
#[test]
fn what_the_host_refuses_is_said_at_start() {
    let refused = |cmd: &mut Command| {
        let out = run(cmd, 60);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        err
    };
    let err = refused(
        Command::new(bin())
            .args(["-f", "-U", "-", "memory", "1E"])
            .args(["allocator=malloc", "--run", "true"]),
    );
    assert!(
        err.starts_with("nbdlite: memory: allocator=malloc cannot take 1 EiB at start: ")
            && err.contains("allocator=sparse takes memory only for what is written"),
        "{err}"
    );
    // mlock beyond the locked-memory limit: as an unprivileged user (root
    // locks whatever it likes).
    if !have(&["prlimit"]) {
        return;
    }
    let mut cmd = if is_root() {
        if !have(&["setpriv"]) {
            return;
        }
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "prlimit",
        ]);
        c
    } else {
        Command::new("prlimit")
    };
    cmd.args(["--memlock=1048576:1048576", bin(), "-f", "-U", "-"])
        .args([
            "memory",
            "16M",
            "allocator=malloc,mlock=true",
            "--run",
            "true",
        ]);
    let out = run(&mut cmd, 60);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !err.starts_with("nbdlite: ") {
        // setpriv refused (no CAP_SETUID), or nobody cannot reach the binary.
        skip_part(&format!("nbdlite could not run as nobody: {}", err.trim()));
        return;
    }
    if out.status.success() {
        skip_part("this user may lock any amount (CAP_IPC_LOCK)");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("nbdlite: memory: mlock=true: cannot lock 16 MiB in RAM: ")
            && err.contains("the locked-memory limit (ulimit -l) is 1 MiB"),
        "{err}"
    );
}
