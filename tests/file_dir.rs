//! `file dir=DIR`: an export for each regular file and block device in a
//! directory, with real clients (nbdinfo, nbdsh, nbdcopy, qemu-img, qemu-io)
//! and, for names real clients never send, the raw client. The tests that
//! move data run under both I/O engines.

mod common;
#[path = "common/fileio.rs"]
mod fileio;
#[path = "common/wire.rs"]
mod wire;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, TempDir, have, is_root, nbdinfo, nbdlite_in, run, run_ok, wait_exit};
use fileio::{ENGINES, Io};
use wire::*;

const MIB: usize = 1 << 20;

/// Bytes of a file that differ from every other file's (`seed`) and at
/// every offset.
fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// `DIR/exports`, made with `files` (name, contents) in it.
fn exports(dir: &TempDir, files: &[(&str, &[u8])]) -> PathBuf {
    let d = dir.join("exports");
    fs::create_dir(&d).expect("the exports directory");
    for (name, contents) in files {
        fs::write(d.join(name), contents).expect("an image");
    }
    d
}

/// `nbdlite [ARGS…] file dir=DIR` under engine `io`.
fn serve(io: Io, d: &Path, args: &[&str]) -> Server {
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let dir_arg = format!("dir={}", d.display());
    all.extend([OsStr::new("file"), OsStr::new(&dir_arg)]);
    Server::start_with(io.command(), &all)
}

/// The export names `nbdinfo --list --json` shows, in its order.
fn listed(srv: &Server) -> Vec<String> {
    let json = nbdinfo(&["--list", "--json", &srv.uri()]);
    let key = "\"export-name\": \"";
    json.match_indices(key)
        .map(|(at, _)| {
            let rest = &json[at + key.len()..];
            rest[..rest.find('"').expect("a closing quote")].to_string()
        })
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// `nbdinfo --size` of one export.
fn size_of(srv: &Server, name: &str) -> u64 {
    let out = nbdinfo(&["--size", &srv.uri_export(name)]);
    out.trim().parse().expect("a size")
}

/// GO `name` on a fresh raw connection: its size and transmission flags.
fn go(srv: &Server, name: &[u8]) -> (Client, u64, u16) {
    let mut c = Client::start(&srv.sock);
    let (size, flags) = c.go(name);
    (c, size, flags)
}

#[test]
fn nbdinfo_lists_the_directory_and_files_added_later_are_served() {
    if !have(&["nbdinfo"]) {
        return;
    }
    let dir = TempDir::new();
    let d = exports(&dir, &[("a.img", &[1; 4096]), ("b.img", &[2; 8192])]);
    symlink("a.img", d.join("c")).unwrap();
    symlink(".", d.join("here")).unwrap();
    symlink("/dev/null", d.join("null")).unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    let srv = serve(Io::Uring, &d, &[]);
    assert_eq!(sorted(listed(&srv)), ["a.img", "b.img", "c"]);
    assert_eq!(size_of(&srv, "b.img"), 8192);
    assert_eq!(size_of(&srv, "c"), 4096, "a link to a.img");
    // The directory is read when a client asks: what came since is served,
    // what went is no longer listed.
    fs::write(d.join("later.img"), [3; 512]).unwrap();
    fs::remove_file(d.join("b.img")).unwrap();
    assert_eq!(sorted(listed(&srv)), ["a.img", "c", "later.img"]);
    assert_eq!(size_of(&srv, "later.img"), 512);
    let gone = run(
        Command::new("nbdinfo").args(["--size", &srv.uri_export("b.img")]),
        60,
    );
    assert!(!gone.status.success());
    // An empty directory lists nothing.
    let empty = dir.join("empty");
    fs::create_dir(&empty).unwrap();
    let srv = serve(Io::Uring, &empty, &[]);
    assert!(listed(&srv).is_empty());
}

#[test]
fn each_export_serves_its_own_file() {
    if !have(&["qemu-img", "nbdcopy", "qemu-io"]) {
        return;
    }
    for io in ENGINES {
        let dir = TempDir::new();
        let (a, b) = (data(4 * MIB, 0x11), data(3 * MIB + 512, 0x22));
        let d = exports(&dir, &[("a.img", &a), ("b.img", &b)]);
        let srv = serve(io, &d, &[]);
        for name in ["a.img", "b.img"] {
            let file = d.join(name);
            let out = common::qemu_img(&[
                "compare",
                "-f",
                "raw",
                "-F",
                "raw",
                file.to_str().unwrap(),
                &srv.uri_export(name),
            ]);
            assert!(out.contains("identical"), "{io:?} {name}: {out}");
            let copy = dir.join(&format!("{name}.copy"));
            run_ok(
                Command::new("nbdcopy").arg(srv.uri_export(name)).arg(&copy),
                60,
            );
            assert!(
                fs::read(&copy).unwrap() == fs::read(&file).unwrap(),
                "{name}"
            );
        }
        // A write through one export reaches its file, and no other.
        common::qemu_io(&srv.uri_export("a.img"), &["write -P 0x55 64k 64k"]);
        let now = fs::read(d.join("a.img")).unwrap();
        assert!(
            now[64 << 10..128 << 10].iter().all(|&x| x == 0x55),
            "{io:?}"
        );
        assert!(now[..64 << 10] == a[..64 << 10] && now[128 << 10..] == a[128 << 10..]);
        assert!(
            fs::read(d.join("b.img")).unwrap() == b,
            "{io:?}: b is untouched"
        );
    }
}

#[test]
fn several_clients_on_different_exports_at_once() {
    if !have(&["nbdcopy", "qemu-img"]) {
        return;
    }
    for io in ENGINES {
        let dir = TempDir::new();
        let zeroes = vec![0; 8 * MIB];
        let names = ["e0", "e1", "e2", "e3"];
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (*n, &zeroes[..])).collect();
        let d = exports(&dir, &files);
        let srv = serve(io, &d, &[]);
        let sources: Vec<PathBuf> = (0..names.len())
            .map(|i| {
                let p = dir.join(&format!("src{i}"));
                fs::write(&p, data(8 * MIB, i as u8 + 1)).unwrap();
                p
            })
            .collect();
        // Four copies at once, each into its own export over two connections.
        let mut copies: Vec<_> = names
            .iter()
            .zip(&sources)
            .map(|(name, src)| {
                Command::new("nbdcopy")
                    .args(["--connections=2", "--flush"])
                    .arg(src)
                    .arg(srv.uri_export(name))
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("nbdcopy")
            })
            .collect();
        for c in &mut copies {
            let st = wait_exit(c, 120).expect("nbdcopy finishes");
            assert!(st.success(), "{io:?}: nbdcopy: {st}");
        }
        for (name, src) in names.iter().zip(&sources) {
            let on_disk = fs::read(d.join(name)).unwrap();
            assert!(
                on_disk == fs::read(src).unwrap(),
                "{io:?}: {name} holds its own copy"
            );
            let out = common::qemu_img(&[
                "compare",
                "-f",
                "raw",
                "-F",
                "raw",
                src.to_str().unwrap(),
                &srv.uri_export(name),
            ]);
            assert!(out.contains("identical"), "{io:?} {name}: {out}");
        }
        // Every file closed once its clients have gone.
        common::wait_until(10, "the files to close", || {
            let fds = fs::read_dir(format!("/proc/{}/fd", srv.pid())).unwrap();
            !fds.flatten()
                .any(|e| fs::read_link(e.path()).is_ok_and(|t| t.starts_with(&d)))
        });
    }
}

#[test]
fn a_file_without_write_permission_is_served_read_only() {
    for io in ENGINES {
        let dir = TempDir::new();
        let d = exports(&dir, &[("ro.img", &[7; 4096]), ("rw.img", &[8; 4096])]);
        fs::set_permissions(d.join("ro.img"), fs::Permissions::from_mode(0o444)).unwrap();
        fs::set_permissions(d.join("rw.img"), fs::Permissions::from_mode(0o666)).unwrap();
        // Root writes any file: the server then runs as nobody, as a
        // service would, and the permissions count.
        let as_nobody = ["-u", "65534", "-g", "65534"];
        let srv = serve(io, &d, if is_root() { &as_nobody } else { &[] });
        let (mut c, size, flags) = go(&srv, b"ro.img");
        assert_eq!(size, 4096);
        assert_ne!(flags & TF_READ_ONLY, 0, "{io:?}: ro.img is read-only");
        assert_eq!(c.write(0, b"x"), EPERM);
        assert_eq!(c.read(0, 0, 4).unwrap(), [7; 4]);
        let (mut c, _, flags) = go(&srv, b"rw.img");
        assert_eq!(flags & TF_READ_ONLY, 0, "{io:?}: rw.img is writable");
        assert_eq!(c.write(0, b"x"), 0);
        drop(c);
        assert_eq!(fs::read(d.join("ro.img")).unwrap(), [7; 4096]);
        assert_eq!(fs::read(d.join("rw.img")).unwrap()[0], b'x');
        // -r: every file read-only.
        let srv = serve(io, &d, &["-r"]);
        let (mut c, _, flags) = go(&srv, b"rw.img");
        assert_ne!(flags & TF_READ_ONLY, 0);
        assert_eq!(c.write(0, b"y"), EPERM);
    }
}

/// Names real clients never send, and names of what is no file: refused
/// with ERR_UNKNOWN (INFO and GO, after which the client may choose
/// again) or a hang-up (EXPORT_NAME, which cannot be refused), said in the
/// log, never opened; the server goes on serving.
#[test]
fn hostile_names_are_refused_and_logged() {
    let dir = TempDir::new();
    fs::write(dir.join("outside.img"), [9; 512]).unwrap();
    let d = exports(&dir, &[("a.img", &[1; 4096])]);
    fs::create_dir(d.join("sub")).unwrap();
    symlink(".", d.join("here")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
    let fifo = Command::new("mkfifo").arg(d.join("fifo")).status();
    assert!(fifo.is_ok_and(|s| s.success()), "mkfifo");
    let long = vec![b'a'; MAX_STRING];
    let names: [&[u8]; 15] = [
        b"../outside.img",
        b"a/b",
        b"sub/../a.img",
        b"/etc/passwd",
        &long,
        b"sock",
        b"fifo",
        b"sub",
        b"here",
        b"",
        b"a.img\0",
        b"\0",
        b"..",
        b".",
        b"missing.img",
    ];
    // -r as well: a FIFO opened for reading would wait for a writer, and
    // hold the whole server.
    for (io, args) in [(Io::Uring, &[][..]), (Io::Sync, &[]), (Io::Uring, &["-r"])] {
        let srv = serve(io, &d, args);
        for name in names {
            let mut c = Client::start(&srv.sock);
            for opt in [OPT_INFO, OPT_GO] {
                let r = c.opt(opt, &info_data(name, &[]));
                assert_eq!(r.len(), 1, "{name:?}: {r:?}");
                assert_eq!(r[0].kind, ERR_UNKNOWN, "{opt} {name:?}");
            }
            // The same connection may still choose a file.
            let (size, _) = c.go(b"a.img");
            assert_eq!(size, 4096);
            assert_eq!(c.read(0, 0, 4).unwrap(), [1; 4]);
        }
        // Said in the log (warnings are rate-limited: 50 in 10 s, which
        // these 30 stay under).
        let log = srv.log_text();
        for shown in [
            "export \"../outside.img\": a name with '/'",
            "export \"fifo\": not a regular file or block device: refused",
            "export \"sock\": not a regular file or block device: refused",
            "export \"sub\": Is a directory: refused",
            "export \"here\": Is a directory: refused",
            "export \"\": the default export (an empty name) names no file: refused",
            "export \"a.img\\0\": a name with a NUL byte",
            "\"... (4096 bytes): longer than any file name: refused",
            "export \"missing.img\": No such file or directory: refused",
        ] {
            assert!(log.contains(shown), "{shown} in {log}");
        }
        for name in [&b"../outside.img"[..], b"fifo", b"", &long] {
            let mut c = Client::start(&srv.sock);
            c.send_opt(OPT_EXPORT_NAME, name);
            assert!(c.closed_by_peer(10), "EXPORT_NAME {name:?}");
        }
        let (mut c, _, _) = go(&srv, b"a.img");
        assert_eq!(c.read(0, 0, 2).unwrap(), [1; 2], "the server goes on");
        assert!(fs::read(dir.join("outside.img")).unwrap() == [9; 512]);
    }
}

#[test]
fn mistakes_on_the_command_line_are_one_line() {
    let dir = TempDir::new();
    let d = exports(&dir, &[("a.img", b"1")]);
    let dir_arg = format!("dir={}", d.display());
    let file_arg = format!("dir={}", d.join("a.img").display());
    for (args, says) in [
        (vec!["file", "dri=/srv"], "file: unknown parameter 'dri'"),
        (
            vec!["file", "dir=/nonexistent"],
            "file: dir=/nonexistent: No such file or directory",
        ),
        (vec!["file", &file_arg], "Not a directory"),
        (
            vec!["file", &dir_arg, "cache=off"],
            "unknown cache mode 'off'",
        ),
        (
            vec!["file", &dir_arg, "fadvise=fast"],
            "unknown fadvise mode 'fast'",
        ),
        (
            vec!["file", "a.img", &dir_arg],
            "file= and dir= cannot be used together",
        ),
        (vec!["-o", "file", &dir_arg], "-o cannot be used"),
        (
            vec!["--filter=truncate", "file", &dir_arg, "truncate=1M"],
            "the truncate filter cannot be used",
        ),
        (
            vec!["--filter=cow", "file", &dir_arg],
            "the cow filter cannot be used",
        ),
        (
            vec!["file", d.to_str().unwrap()],
            "is a directory: give a file or block device, or dir=",
        ),
    ] {
        let (code, _, err) = nbdlite_in(dir.path(), &args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("nbdlite: ") && err.contains(says),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn filters_stand_in_front_of_every_export() {
    if !have(&["qemu-io", "nbdinfo"]) {
        return;
    }
    let dir = TempDir::new();
    let d = exports(&dir, &[("a.img", &[1; 65536]), ("b.img", &[2; 65536])]);
    let srv = Server::start(&[
        "--filter=delay",
        "--filter=noextents",
        "file",
        &format!("dir={}", d.display()),
        "rdelay=300ms",
    ]);
    assert_eq!(sorted(listed(&srv)), ["a.img", "b.img"]);
    for name in ["a.img", "b.img"] {
        let start = Instant::now();
        let out = common::qemu_io(&srv.uri_export(name), &["read -P 0x0 0 0", "read 0 4k"]);
        assert!(
            start.elapsed() >= Duration::from_millis(300),
            "{name}: {out}"
        );
    }
    let json = nbdinfo(&["--json", &srv.uri_export("b.img")]);
    assert!(json.contains("\"export-size\": 65536"), "{json}");
}

/// Bytes of `path` in the page cache (fincore).
fn cached(path: &Path) -> u64 {
    let out = run_ok(
        Command::new("fincore")
            .args(["-b", "-n", "-o", "RES"])
            .arg(path),
        10,
    );
    out.trim().parse().expect("a byte count")
}

/// A file of `len` bytes of data on the disk (not tmpfs, whose pages are
/// the file), none of it in the page cache.
fn cold_file(path: &Path, len: usize) {
    fs::write(path, data(len, 0x33)).unwrap();
    let f = fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    nbdlite::os::fadvise_dontneed(std::os::fd::AsFd::as_fd(&f), 0, 0).unwrap();
}

/// `cache=none` (on `file dir=` and on one `file`): what clients read, and
/// what they write once it is written back, leaves the page cache; without
/// it, all of it stays (which shows that the measure measures). With
/// `fadvise=random`: pages the kernel reads ahead, past what was asked, may
/// stay (as with nbdkit, whose cache=none is the same per request).
#[test]
fn cache_none_leaves_little_in_the_page_cache() {
    if !have(&["nbdcopy", "fincore"]) {
        return;
    }
    const LEN: usize = 8 * MIB;
    let Some(disk) = fileio::Scratch::disk(4 * LEN as u64) else {
        return;
    };
    let d = disk.join("exports");
    fs::create_dir(&d).unwrap();
    let (img, src) = (d.join("a.img"), disk.join("src"));
    fs::write(&src, data(LEN, 0x44)).unwrap();
    for io in ENGINES {
        for cache in ["cache=none", "cache=default"] {
            for one_file in [false, true] {
                let what = format!("{io:?} {cache} one file: {one_file}");
                let target = match one_file {
                    true => img.to_str().unwrap().to_string(),
                    false => format!("dir={}", d.display()),
                };
                let args = ["file", &target, cache, "fadvise=random"].map(OsStr::new);
                let srv = Server::start_with(io.command(), &args);
                let uri = match one_file {
                    true => srv.uri(),
                    false => srv.uri_export("a.img"),
                };
                cold_file(&img, LEN);
                run_ok(Command::new("nbdcopy").arg(&uri).arg("null:"), 60);
                let after_read = cached(&img);
                run_ok(Command::new("nbdcopy").arg(&src).arg(&uri), 60);
                let after_write = cached(&img);
                drop(srv);
                assert!(fs::read(&img).unwrap() == fs::read(&src).unwrap(), "{what}");
                match cache {
                    "cache=none" => {
                        assert!(
                            after_read <= MIB as u64 && after_write <= MIB as u64,
                            "{what}: {after_read} {after_write}"
                        );
                    }
                    _ => assert_eq!(
                        (after_read, after_write),
                        (LEN as u64, LEN as u64),
                        "{what}"
                    ),
                }
            }
        }
    }
}

/// Clients that LIST a large directory over and over and never read the
/// replies hold no more than the memory budget lets them (a listing is
/// admitted before it is queued, as a large READ's data is), and a new
/// client is still served.
#[test]
fn listing_clients_that_never_read_stay_within_the_budget() {
    let dir = TempDir::new();
    let d = dir.join("exports");
    fs::create_dir(&d).expect("the exports directory");
    // 1500 names of 200 bytes: a listing of about 330 KB.
    for i in 0..1500 {
        fs::write(d.join(format!("{i:0>200}")), b"x").expect("an image");
    }
    let srv = serve(Io::Uring, &d, &["--memory-budget", "16M"]);
    let before = common::rss_kib(srv.pid());
    let mut listers = Vec::new();
    for _ in 0..4 {
        let mut c = Client::start(&srv.sock);
        for _ in 0..200 {
            c.send_lossy(&option(OPT_LIST, &[]));
        }
        listers.push(c);
    }
    // Unbounded, the four would queue 64 MiB each within a second.
    let limit = 48 << 10;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let grown = common::rss_kib(srv.pid()).saturating_sub(before);
        assert!(grown < limit, "the server grew by {grown} KiB");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Small requests fit a connection's floor: no waiting for the listers.
    let t = Instant::now();
    let mut fresh = Client::start(&srv.sock);
    fresh.go(format!("{:0>200}", 7).as_bytes());
    assert_eq!(fresh.read(0, 0, 1), Ok(b"x".to_vec()));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    drop(listers);
}
