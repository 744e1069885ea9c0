//! `--filter=cow` with real clients: a golden file that is never written
//! while qemu-io, qemu-img, nbdcopy and nbdsh write through the overlay (under
//! io_uring and the synchronous fallback); 16 clients writing into the same
//! blocks at once, each seeing every acknowledged write; overlays of their own
//! with `cow-per-client=true`, given back when clients go; block status of
//! both layers; copy-up on read and cache; and nothing left in `$TMPDIR`,
//! not even after kill -9.

mod common;
#[path = "common/fileio.rs"]
mod fileio;
#[path = "common/wire.rs"]
mod wire;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use common::{
    Server, TempDir, have, nbdinfo, nbdlite_in, nbdsh, nbdsh_command, qemu_img, qemu_io,
    qemu_io_command, run, run_ok, wait_exit, wait_until,
};
use fileio::{ENGINES, Io};
use wire::{Client, still_serves};

const MIB: usize = 1 << 20;

/// `len` bytes that differ everywhere (xorshift), so a misplaced byte shows.
fn golden_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A golden image in `dir`: its path, its bytes and its mtime.
fn golden(dir: &TempDir, len: usize) -> (PathBuf, Vec<u8>, SystemTime) {
    let path = dir.join("golden.img");
    let data = golden_bytes(len, 0x2545_f491_4f6c_dd1d);
    fs::write(&path, &data).unwrap();
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    (path, data, mtime)
}

/// The golden image is as it was: every byte, and its mtime.
#[track_caller]
fn untouched(path: &Path, data: &[u8], mtime: SystemTime) {
    assert!(fs::read(path).unwrap() == data, "the golden image changed");
    assert_eq!(fs::metadata(path).unwrap().modified().unwrap(), mtime);
}

/// nbdlite `--filter=cow ARGS…` under `io`, its overlay in `tmp`.
#[track_caller]
fn serve(io: Io, tmp: &Path, args: &[&OsStr]) -> Server {
    let mut cmd = io.command();
    cmd.env("TMPDIR", tmp);
    let mut all = vec![OsStr::new("--filter=cow")];
    all.extend_from_slice(args);
    Server::start_with(cmd, &all)
}

/// The overlay file the server holds: its /proc/PID/fd link (None: none).
fn overlay_fd(srv: &Server, tmp: &Path) -> Option<PathBuf> {
    let fds = fs::read_dir(format!("/proc/{}/fd", srv.pid())).ok()?;
    fds.flatten().map(|e| e.path()).find(|p| {
        fs::read_link(p)
            .is_ok_and(|t| t.starts_with(tmp) && t.to_string_lossy().ends_with("(deleted)"))
    })
}

#[test]
fn a_golden_file_is_never_written() {
    if !have(&["qemu-io", "qemu-img", "nbdcopy"]) {
        return;
    }
    for io in ENGINES {
        let dir = TempDir::new();
        let tmp = TempDir::new();
        let (path, data, mtime) = golden(&dir, 16 * MIB);
        let srv = serve(io, tmp.path(), &[OsStr::new("file"), path.as_os_str()]);
        let uri = srv.uri();
        qemu_io(
            &uri,
            &[
                "write -P 0xaa 100000 300000", // blocks in part, at both ends
                "write -P 0xbb 1M 1M",         // whole blocks
                "write -z 3M 200000",          // zeroing
                "discard 5M 128k",             // a trim: reads as zeroes (as nbdkit's)
                "write -f -P 0xcc 7M 4k",      // FUA
                "flush",
                "write -P 0xdd 1040000 10000", // into a block already in the overlay
            ],
        );
        let mut want = data.clone();
        want[100000..400000].fill(0xaa);
        want[MIB..2 * MIB].fill(0xbb);
        want[3 * MIB..3 * MIB + 200000].fill(0);
        want[5 * MIB..5 * MIB + (128 << 10)].fill(0);
        want[7 * MIB..7 * MIB + 4096].fill(0xcc);
        want[1040000..1050000].fill(0xdd);
        let out = dir.join("copy.img");
        run_ok(Command::new("nbdcopy").arg(&uri).arg(&out), 60);
        assert!(
            fs::read(&out).unwrap() == want,
            "{io:?}: nbdcopy read other data"
        );
        qemu_io(&uri, &["read -P 0xaa 100000 300000", "read -P 0 3M 200000"]);
        // What was written, as a qcow2 diff over the golden image (nbdkit's recipe).
        let diff = dir.join("diff.qcow2");
        let diff_s = diff.to_str().unwrap();
        qemu_img(&[
            "create", "-q", "-F", "raw", "-b", &uri, "-f", "qcow2", diff_s,
        ]);
        let base = path.to_str().unwrap();
        qemu_img(&[
            "rebase", "-q", "-F", "raw", "-b", base, "-f", "qcow2", diff_s,
        ]);
        qemu_img(&[
            "compare",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            diff_s,
            out.to_str().unwrap(),
        ]);
        untouched(&path, &data, mtime);
        drop(srv);
        untouched(&path, &data, mtime);
    }
}

/// nbdsh `script` on `uri`, run by `n` clients at once, each with `i` set
/// to its number.
#[track_caller]
fn clients(uri: &str, n: usize, script: &str) {
    std::thread::scope(|s| {
        let all: Vec<_> = (0..n)
            .map(|i| {
                let script = format!("i = {i}\n{script}");
                s.spawn(move || {
                    let out = run(nbdsh_command().args(["-u", uri, "-c", &script]), 120);
                    (i, out)
                })
            })
            .collect();
        for t in all {
            let (i, out) = t.join().unwrap();
            assert!(
                out.status.success(),
                "client {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

/// What the 16 clients write: 4 KiB pieces interleaved so that every 64 KiB
/// block takes a piece from each of them, and 100000-byte pieces end to end
/// from 4 MiB (neighbours share a block at each end).
const WRITERS: &str = r#"
def piece(c, k):
    return bytes([c, k]) * 2048
def long(c):
    return bytes([c + 100]) * 100000
pending = {h.aio_pwrite(piece(i, k), (k * 16 + i) * 4096) for k in range(32)}
pending.add(h.aio_pwrite(long(i), 4 * 1024 * 1024 + 7 + i * 100000))
while pending:
    h.poll(-1)
    pending = {c for c in pending if not h.aio_command_completed(c)}
"#;

/// Every client reads back what every client wrote.
const READERS: &str = r#"
for c in range(16):
    for k in range(32):
        assert h.pread(4096, (k * 16 + c) * 4096) == bytes([c, k]) * 2048, (c, k)
    assert h.pread(100000, 4 * 1024 * 1024 + 7 + c * 100000) == bytes([c + 100]) * 100000, c
"#;

#[test]
fn sixteen_clients_write_through_one_overlay() {
    if !have(&["nbdsh"]) {
        return;
    }
    for io in ENGINES {
        let dir = TempDir::new();
        let tmp = TempDir::new();
        let (path, data, mtime) = golden(&dir, 8 * MIB);
        let srv = serve(io, tmp.path(), &[OsStr::new("file"), path.as_os_str()]);
        clients(&srv.uri(), 16, WRITERS);
        clients(&srv.uri(), 16, READERS);
        // What nobody wrote is the golden image's.
        let end = 4 * MIB + 7 + 16 * 100000;
        let script = format!(
            "g = open('{}', 'rb').read()\nassert h.pread(7, {}) == g[{}:{}]\nassert h.pread(1000, {end}) == g[{end}:{end} + 1000]",
            path.display(),
            4 * MIB,
            4 * MIB,
            4 * MIB + 7
        );
        nbdsh(&srv.uri(), &script);
        untouched(&path, &data, mtime);
    }
}

#[test]
fn each_client_has_an_overlay_of_its_own() {
    if !have(&["nbdsh"]) {
        return;
    }
    let dir = TempDir::new();
    let tmp = TempDir::new();
    let (path, data, mtime) = golden(&dir, 8 * MIB);
    let args = [
        OsStr::new("file"),
        path.as_os_str(),
        OsStr::new("cow-per-client=true"),
    ];
    let srv = serve(Io::Uring, tmp.path(), &args);
    let uri = srv.uri();
    let script = format!(
        r#"
g = open('{}', 'rb').read()
assert not h.can_multi_conn()
h2 = nbd.NBD()
h2.connect_uri('{uri}')
h.pwrite(b'a' * 100000, 5000)
assert h.pread(100000, 5000) == b'a' * 100000
assert h2.pread(200000, 0) == g[:200000], 'the other sees nothing of it'
h2.pwrite(b'b' * 70000, 60000)
assert h.pread(100000, 5000) == b'a' * 100000
assert h2.pread(70000, 60000) == b'b' * 70000
h2.trim(1 << 20, 1 << 20)
assert h2.pread(4096, 1 << 20) == bytes(4096)
assert h.pread(4096, 1 << 20) == g[1 << 20:(1 << 20) + 4096]
h2.shutdown()
"#,
        path.display()
    );
    nbdsh(&uri, &script);
    // Gone with their clients: a new one sees the golden image.
    let fresh = format!(
        "g = open('{}', 'rb').read()\nassert h.pread(8 << 20, 0) == g",
        path.display()
    );
    nbdsh(&uri, &fresh);
    // Sixteen at once, each writing the same blocks: each reads its own.
    let own = r#"
for k in range(64):
    h.pwrite(bytes([i, k]) * 1000, k * 30000 + i)
for k in range(64):
    assert h.pread(2000, k * 30000 + i) == bytes([i, k]) * 1000, k
"#;
    clients(&uri, 16, own);
    // Their space is given back: the overlay file holds (almost) nothing.
    let fd = overlay_fd(&srv, tmp.path()).expect("the overlay is open");
    wait_until(10, "the overlays' space to be punched out", || {
        fs::metadata(&fd).is_ok_and(|m| m.blocks() * 512 < (1 << 20))
    });
    untouched(&path, &data, mtime);
}

#[test]
fn nothing_is_left_in_tmpdir_even_after_kill_9() {
    if !have(&["qemu-io"]) {
        return;
    }
    let tmp = TempDir::new();
    let mut srv = serve(
        Io::Uring,
        tmp.path(),
        &[OsStr::new("memory"), OsStr::new("64M")],
    );
    qemu_io(&srv.uri(), &["write -P 0x5a 0 8M"]);
    let fd = overlay_fd(&srv, tmp.path()).expect("an overlay in TMPDIR");
    assert!(
        fs::metadata(&fd).unwrap().blocks() * 512 >= 8 << 20,
        "it holds the data"
    );
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "it has no name"
    );
    srv.signal("KILL");
    assert!(wait_exit(&mut srv.child, 10).is_some());
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// `nbdinfo --map` of `uri`: (offset, length, type) per line.
fn map(uri: &str) -> Vec<(u64, u64, u32)> {
    nbdinfo(&["--map", uri])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn block_status_shows_both_layers() {
    if !have(&["nbdinfo", "nbdsh"]) {
        return;
    }
    let dir = TempDir::new();
    let tmp = TempDir::new();
    // 128 KiB of data, then a hole, to 4 MiB (nbdkit's test-cow-extents1).
    let path = dir.join("base.img");
    fs::write(&path, golden_bytes(128 << 10, 7)).unwrap();
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let srv = serve(
        Io::Uring,
        tmp.path(),
        &[OsStr::new("file"), path.as_os_str()],
    );
    let uri = srv.uri();
    assert_eq!(map(&uri), vec![(0, 131072, 0), (131072, 4063232, 3)]);
    let bs = 65536;
    nbdsh(
        &uri,
        "import errno\nbs = 65536\n\
         h.trim(bs, bs)\n\
         h.trim(bs + 2, 4 * bs - 1)\n\
         h.pwrite(b'1' * bs, 16 * bs)\n\
         h.trim(2 * bs, 32 * bs)\n\
         h.pwrite(b'2' * (2 * bs), 48 * bs)\n\
         h.zero(4 * bs, 56 * bs, nbd.CMD_FLAG_NO_HOLE)\n\
         h.zero(bs, 58 * bs)\n\
         h.zero(bs, 60 * bs, nbd.CMD_FLAG_FAST_ZERO)\n\
         try:\n    h.zero(100, 3 * bs + 10, nbd.CMD_FLAG_FAST_ZERO)\n    assert False\n\
         except nbd.Error as e:\n    assert e.errnum == errno.ENOTSUP, e\n",
    );
    let want = [
        (0, bs, 0),           // the backend's data
        (bs, 2 * bs, 3),      // trimmed, and the backend's hole
        (3 * bs, bs, 0),      // a partial trim: filled, zeroed in the overlay
        (4 * bs, bs, 3),      // trimmed
        (5 * bs, bs, 0),      // partly trimmed
        (6 * bs, 10 * bs, 3), // the backend's hole
        (16 * bs, bs, 0),     // written
        (17 * bs, 31 * bs, 3),
        (48 * bs, 2 * bs, 0), // written
        (50 * bs, 6 * bs, 3),
        (56 * bs, 2 * bs, 2), // zeroed with NO_HOLE: zeroes, not a hole
        (58 * bs, bs, 3),     // zeroed again, holes allowed
        (59 * bs, bs, 2),
        (60 * bs, bs, 3), // zeroed fast
        (61 * bs, 3 * bs, 3),
    ];
    let mut merged: Vec<(u64, u64, u32)> = Vec::new();
    for (o, l, t) in want {
        match merged.last_mut() {
            Some(m) if m.2 == t => m.1 += l,
            _ => merged.push((o, l, t)),
        }
    }
    assert_eq!(map(&uri), merged);
}

#[test]
fn reads_and_cache_requests_copy_up_when_asked() {
    if !have(&["nbdsh"]) {
        return;
    }
    let dir = TempDir::new();
    let tmp = TempDir::new();
    let (path, data, _) = golden(&dir, 4 * MIB);
    let flag = dir.join("copy-now");
    let args = [
        OsStr::new("file"),
        path.as_os_str(),
        OsStr::new("cow-on-cache=true"),
    ];
    let mut args = args.to_vec();
    let on_read = format!("cow-on-read={}", flag.display());
    args.push(OsStr::new(&on_read));
    let srv = serve(Io::Uring, tmp.path(), &args);
    let uri = srv.uri();
    // Read without the flag, with it, and a cache request; then the image
    // changes below (which a cow filter's backend never should: here it
    // shows what was copied up).
    nbdsh(&uri, "h.pread(100000, 0)");
    fs::write(&flag, "").unwrap();
    nbdsh(&uri, "h.pread(100000, 1 << 20)\nh.cache(100000, 2 << 20)");
    fs::remove_file(&flag).unwrap();
    fs::write(&path, golden_bytes(4 * MIB, 99)).unwrap();
    let script = format!(
        r#"
g = open('{}', 'rb').read()
assert h.pread(100000, 0) == g[:100000], 'not copied up: the file as it is now'
assert h.pread(100000, 3 << 20) == g[3 << 20:(3 << 20) + 100000]
"#,
        path.display()
    );
    nbdsh(&uri, &script);
    let want = |o: usize| data[o..o + 100000].to_vec();
    for o in [MIB, 2 * MIB] {
        let got = nbdsh(&uri, &format!("print(h.pread(100000, {o}).hex())"));
        assert!(
            got.trim() == hex(&want(o)),
            "copied up at {o}: the file as it was"
        );
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn a_memory_backend_under_cow() {
    if !have(&["nbdsh"]) {
        return;
    }
    let tmp = TempDir::new();
    // Unaligned size (nbdkit's test-cow-unaligned), and a null backend of none.
    let srv = serve(
        Io::Sync,
        tmp.path(),
        &[OsStr::new("memory"), OsStr::new("130000")],
    );
    nbdsh(
        &srv.uri(),
        "buf = b'abcdefghijklm' * 10000\nh.pwrite(buf, 0)\nassert h.pread(130000, 0) == buf\n\
         h.pwrite(b'z' * 10, 129990)\nassert h.pread(20, 129980) == buf[-20:-10] + b'z' * 10",
    );
    let srv = serve(Io::Uring, tmp.path(), &[OsStr::new("null")]);
    assert!(nbdinfo(&[&srv.uri()]).contains("export-size: 0"));
}

#[test]
fn read_only_with_r() {
    if !have(&["qemu-io"]) {
        return;
    }
    let tmp = TempDir::new();
    let srv = serve(
        Io::Uring,
        tmp.path(),
        &[OsStr::new("-r"), OsStr::new("memory"), OsStr::new("1M")],
    );
    let out = run(&mut qemu_io_command(&srv.uri(), &["write 0 4k"]), 60);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("ermission") || text.contains("read-only") || text.contains("failed"),
        "{text}"
    );
}

#[test]
fn mistakes_are_one_line() {
    let dir = TempDir::new();
    for (args, what) in [
        (
            vec!["--filter=cow", "memory", "1M", "cow-block-size=1000"],
            "cow-block-size: '1000' is not a power of two",
        ),
        (
            vec!["--filter=cow", "memory", "1M", "cow-on-read=maybe"],
            "cow-on-read: 'maybe' is not true, false or an absolute path",
        ),
    ] {
        let mut all = vec!["-U", "-"];
        all.extend(args);
        all.extend(["--run", "true"]);
        let (code, _, err) = nbdlite_in(dir.path(), &all);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(what), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // An overlay that cannot be made.
    let out = run(
        Command::new(common::bin())
            .args(["-U", "-", "--filter=cow", "memory", "1M", "--run", "true"])
            .env("TMPDIR", dir.join("nowhere")),
        30,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cow: cannot make the overlay in"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn filters_named_after_cow_run_below_it() {
    if !have(&["nbdsh"]) {
        return;
    }
    let tmp = TempDir::new();
    // nbdkit's test-cow-on-read-caches: the delay is on reads from below,
    // which the overlay then saves.
    let mut cmd = Io::Uring.command();
    cmd.env("TMPDIR", tmp.path());
    let args = [
        "--filter=cow",
        "--filter=delay",
        "memory",
        "64K",
        "cow-on-read=true",
        "rdelay=0.5",
    ];
    let srv = Server::start_with(cmd, &args);
    nbdsh(
        &srv.uri(),
        "import time\n\
         t = time.time(); assert h.pread(65536, 0) == bytes(65536); assert time.time() - t >= 0.5\n\
         t = time.time(); assert h.pread(65536, 0) == bytes(65536); assert time.time() - t < 0.5\n\
         h.pwrite(b'abcd' * 16384, 0)\n\
         t = time.time(); assert h.pread(65536, 0) == b'abcd' * 16384; assert time.time() - t < 0.5",
    );
    // Errors injected below: reads of what was written never fail.
    let dir = TempDir::new();
    let (path, _, _) = golden(&dir, MIB);
    let mut cmd = Io::Uring.command();
    cmd.env("TMPDIR", tmp.path());
    let args = [
        OsStr::new("--filter=cow"),
        OsStr::new("--filter=error"),
        OsStr::new("file"),
        path.as_os_str(),
        OsStr::new("error-pread-rate=100%"),
    ];
    let srv = Server::start_with(cmd, &args);
    nbdsh(
        &srv.uri(),
        "import errno\n\
         h.pwrite(b'x' * 65536, 0)\n\
         assert h.pread(65536, 0) == b'x' * 65536\n\
         for f in (lambda: h.pread(10, 100000), lambda: h.pwrite(b'y' * 10, 200000)):\n\
         \x20   try:\n\
         \x20       f()\n\
         \x20       assert False, 'from below, so failed'\n\
         \x20   except nbd.Error as e:\n\
         \x20       assert e.errnum == errno.EIO, e\n",
    );
}

/// nbdlite `--filter=cow --filter=FILTER ARGS…` (with `before` in front)
/// under `io` serves what `script` expects, given `d`, the bytes of `image`.
#[track_caller]
fn staged(io: Io, before: &[&str], filter: &str, image: &Path, args: &[&str], script: &str) {
    let tmp = TempDir::new();
    let mut all: Vec<&OsStr> = before.iter().map(OsStr::new).collect();
    let filter = format!("--filter={filter}");
    all.push(OsStr::new(&filter));
    all.extend([OsStr::new("file"), image.as_os_str()]);
    all.extend(args.iter().map(OsStr::new));
    let srv = serve(io, tmp.path(), &all);
    let load = format!("d = open({:?}, 'rb').read()\n", image.to_str().unwrap());
    nbdsh(&srv.uri(), &(load + script));
}

#[test]
fn filters_named_after_cow_are_prepared_at_start_up() {
    if !have(&["nbdsh"]) {
        return;
    }
    let dir = TempDir::new();
    let (path, data, _) = golden(&dir, MIB);
    let unaligned = dir.join("unaligned.img");
    fs::write(&unaligned, &data[..1_000_000]).unwrap();
    let mut data = data;
    // An MBR whose partition 1 is 512 KiB from 128 KiB on.
    let disk = dir.join("disk.img");
    data[0x1be + 4] = 0x83;
    data[0x1be + 8..0x1be + 12].copy_from_slice(&256u32.to_le_bytes());
    data[0x1be + 12..0x1be + 16].copy_from_slice(&1024u32.to_le_bytes());
    data[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    fs::write(&disk, &data).unwrap();
    // The same disk 64 KiB into a larger one, for an offset under a partition.
    let deeper = dir.join("deeper.img");
    fs::write(&deeper, [golden_bytes(65536, 7), data].concat()).unwrap();
    for io in ENGINES {
        staged(
            io,
            &[],
            "offset",
            &path,
            &["offset=256K"],
            "n = len(d) - 262144\nassert h.get_size() == n\n\
             assert h.pread(n, 0) == d[262144:]\n\
             h.pwrite(b'w' * 10, n - 10)\nassert h.pread(20, n - 20) == d[-20:-10] + b'w' * 10",
        );
        // Larger than the file, whose end is inside a block of the overlay:
        // past it zeroes, across it a read cut short.
        staged(
            io,
            &[],
            "truncate",
            &unaligned,
            &["truncate=1200000"],
            "assert h.get_size() == 1200000\n\
             assert h.pread(1200000, 0) == d + bytes(1200000 - len(d))\n\
             assert h.pread(8192, len(d) - 4096) == d[-4096:] + bytes(4096)\n\
             h.pwrite(b'q' * 100, len(d) - 50)\nassert h.pread(100, len(d) - 50) == b'q' * 100",
        );
        staged(
            io,
            &[],
            "truncate",
            &path,
            &["truncate=500000"],
            "assert h.get_size() == 500000\nassert h.pread(500000, 0) == d[:500000]",
        );
        let part = "assert h.get_size() == 524288\nassert h.pread(524288, 0) == d[131072:655360]";
        staged(io, &[], "partition", &disk, &["partition=1"], part);
        // Read at start-up through the cow layer and the offset below it.
        let part = "d = d[65536:]\n".to_string() + part;
        let above = ["--filter=partition"];
        let args = ["offset=64K", "partition=1"];
        staged(io, &above, "offset", &deeper, &args, &part);
    }
}

#[test]
fn a_filter_after_cow_that_cannot_start_is_one_line() {
    let dir = TempDir::new();
    let args = [
        "-U",
        "-",
        "--filter=cow",
        "--filter=offset",
        "memory",
        "1M",
        "offset=2M",
        "--run",
        "true",
    ];
    let (code, _, err) = nbdlite_in(dir.path(), &args);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.starts_with("nbdlite: offset filter: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn reads_past_the_end_over_malloc_fail_and_the_server_serves_on() {
    let tmp = TempDir::new();
    let args = [
        "--filter=offset",
        "memory",
        "1M",
        "allocator=malloc",
        "offset=512K",
    ]
    .map(OsStr::new);
    let srv = serve(Io::Sync, tmp.path(), &args);
    for sr in [false, true] {
        let (mut c, size, _) = Client::ready(&srv.sock, sr, false, false);
        assert_eq!(size, 512 << 10);
        assert!(c.read(0, size - 4096, 8192).is_err(), "past the end");
        assert!(c.read(0, size, 1).is_err(), "at the end");
        assert_eq!(c.write(size - 5, b"abcde"), 0);
        assert_eq!(c.read(0, size - 5, 5).unwrap(), b"abcde");
    }
    still_serves(&srv.sock);
}

#[test]
fn lifecycle_filters_after_cow_still_work() {
    let tmp = TempDir::new();
    // limit: a second client is turned away while the first is in.
    let args = ["--filter=limit", "memory", "1M", "limit=1"].map(OsStr::new);
    let srv = serve(Io::Sync, tmp.path(), &args);
    let (first, _, _) = Client::ready(&srv.sock, true, false, false);
    let mut second = Client::connect_raw(&srv.sock);
    let mut g = [0u8; 18];
    assert!(second.read_some(&mut g).map_or(true, |n| n == 0), "let in");
    drop(first);
    wait_until(10, "room for a client", || {
        let mut c = Client::connect_raw(&srv.sock);
        c.read_some(&mut g).unwrap_or(0) > 0
    });
    // exitlast: the server exits once its last client has gone.
    let args = ["--filter=exitlast", "memory", "1M"].map(OsStr::new);
    let mut srv = serve(Io::Sync, tmp.path(), &args);
    still_serves(&srv.sock);
    let status = wait_exit(&mut srv.child, 10);
    assert!(status.is_some_and(|s| s.success()), "{}", srv.log_text());
}
