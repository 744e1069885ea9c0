//! The file backend's I/O through the engine (`src/aio/`), end to end: replies
//! in completion order, clients that leave or reset with I/O in flight, a
//! shutdown with I/O in flight, real clients copying in and out, and how long a
//! small READ waits beside a long WRITE_ZEROES or a big FLUSH.
//!
//! Every test runs under both engines: io_uring (the default) and the
//! synchronous fallback, which NBDLITE_IO_URING=0 forces and which a kernel
//! without io_uring gets. Speeds are printed, never asserted; the latency
//! bounds asserted are generous ones a loaded 2-core machine keeps (README,
//! "How file I/O works", has the measured figures).

mod common;
#[path = "common/fileio.rs"]
mod fileio;
#[path = "common/pipeline.rs"]
mod pipeline;
#[path = "common/wire.rs"]
mod wire;

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, TempDir, have, run_ok, sparse_file, wait_exit, wait_until};
use fileio::*;
use pipeline::*;
use wire::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Descriptors the server holds open: back where they started once the
/// connections that left are gone, whatever they had in flight.
fn open_fds(srv: &Server) -> usize {
    fs::read_dir(format!("/proc/{}/fd", srv.pid()))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn the_fallback_is_forced_and_the_default_says_why_it_falls_back() {
    let dir = TempDir::new();
    let img = dir.join("disk.img");
    sparse_file(&img, MIB);
    let args = [OsStr::new("-v"), OsStr::new("file"), img.as_os_str()];
    let srv = Server::start_with(Io::Sync.command(), &args);
    let log = srv.log_text();
    assert!(log.contains("file I/O: synchronous, as asked"), "{log}");
    assert!(!log.contains("io_uring unavailable"), "{log}");
    still_serves(&srv.sock);
    let srv = Server::start_with(Io::Uring.command(), &args);
    let log = srv.log_text();
    assert!(!log.contains("as asked"), "{log}");
    // Where the kernel refuses io_uring: one warning line, with its reason.
    assert!(log.matches("io_uring unavailable (").count() <= 1, "{log}");
    still_serves(&srv.sock);
}

/// One connection: a WRITE_ZEROES (NO_HOLE) over 1 GiB of a tmpfs file, which
/// allocates and clears every page, then a 4 KiB READ elsewhere. With io_uring
/// the READ's reply must come first; with the fallback it usually does (its
/// piece is taken in the zeroing's first slice). Either way both replies come,
/// whole, well formed for the style, each under its own cookie.
#[test]
fn a_slow_request_does_not_hold_up_a_later_one() {
    let Some(shm) = Scratch::tmpfs(GIB + 64 * MIB) else {
        return;
    };
    let img = shm.join("disk.img");
    sparse_file(&img, GIB + MIB);
    let marker = block_data(1, 1, 4096);
    write_at(&img, GIB, &marker);
    for io in ENGINES {
        let srv = io.serve(&img);
        let ring = has_ring(io, &srv);
        for style in STYLES {
            let mut s = unix(&srv.sock, style);
            let mut b = Batch::new(style);
            b.cmd(F_NO_HOLE, CMD_ZERO, 1, 0, GIB);
            b.cmd(0, CMD_READ, 2, GIB, 4096);
            let t0 = Instant::now();
            std::io::Write::write_all(&mut s, &b.bytes).unwrap();
            let got = Inbox::new(style, &b.sent).rest(&mut s);
            for f in &got {
                assert_eq!(f.errno, 0, "cookie {}", f.cookie);
            }
            let read = got.iter().find(|f| f.cookie == 2).unwrap();
            assert!(read.data == marker, "READ data");
            let order: Vec<_> = got
                .iter()
                .map(|f| format!("cookie {} after {:?}", f.cookie, f.at - t0))
                .collect();
            let reordered = got[0].cookie == 2;
            eprintln!(
                "{io:?} {style:?}: {} ({})",
                order.join(", "),
                if reordered {
                    "out of order"
                } else {
                    "in order"
                }
            );
            if ring {
                assert!(reordered, "with io_uring the READ must overtake: {order:?}");
            }
        }
    }
}

/// One connection: a 4 MiB READ of a disk file whose pages were just evicted,
/// then a 4 KiB READ of a cached page. The cached one may be answered first;
/// nothing forces it, so the order is printed, and what must hold is checked.
#[test]
fn a_cold_read_and_a_cached_one() {
    let dir = TempDir::new();
    let img = dir.join("disk.img");
    let size = 16 * MIB;
    let data = block_data(2, 2, size as usize);
    fs::write(&img, &data).unwrap();
    for io in ENGINES {
        let srv = io.serve(&img);
        for style in [Style::Structured, Style::Simple] {
            // Evict every page, then bring the last one back.
            let f = File::open(&img).unwrap();
            f.sync_all().unwrap();
            nbdlite::os::fadvise_dontneed(f.as_fd(), 0, 0).unwrap();
            read_at(&img, size - 4096, 4096);
            let mut s = unix(&srv.sock, style);
            let mut b = Batch::new(style);
            b.cmd(0, CMD_READ, 1, 0, 4 * MIB);
            b.cmd(0, CMD_READ, 2, size - 4096, 4096);
            std::io::Write::write_all(&mut s, &b.bytes).unwrap();
            let got = Inbox::new(style, &b.sent).rest(&mut s);
            for f in &got {
                assert_eq!(f.errno, 0);
                let at = b.sent[&f.cookie].offset as usize;
                assert!(f.data == data[at..at + f.data.len()], "cookie {}", f.cookie);
            }
            let reordered = got[0].cookie == 2;
            eprintln!(
                "{io:?} {style:?}: cold 4 MiB READ then cached 4 KiB READ: {}",
                if reordered {
                    "out of order"
                } else {
                    "in order"
                }
            );
        }
    }
}

/// How a client goes away in `leaving_with_io_in_flight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// shutdown(SHUT_WR) after its last request: it still reads every reply.
    HalfClose,
    /// NBD_CMD_DISC after its last request.
    Disc,
    /// Closes with replies unread: TCP answers with a reset, Unix with ECONNRESET.
    Reset,
}

/// Blocks each batch writes: 1 MiB each, from 1 MiB on (the first MiB is
/// `still_serves`'s).
const BLOCKS: u64 = 24;

/// A batch of 1 MiB WRITEs (every third with FUA) and 1 MiB READs, sent in
/// one go while replies are read; then the client leaves as `leave` says.
/// Returns the blocks whose WRITE was acknowledged.
fn leave_with_io<S: Stream>(mut s: S, style: Style, leave: Leave, round: u64) -> Vec<u64> {
    let mut b = Batch::new(style);
    for i in 0..BLOCKS {
        let fua = if i % 3 == 0 { F_FUA } else { 0 };
        b.write(
            fua,
            2 * i,
            (1 + i) * MIB,
            &block_data(i, round, MIB as usize),
        );
        let other = (i + BLOCKS / 2) % BLOCKS;
        b.cmd(0, CMD_READ, 2 * i + 1, (1 + other) * MIB, MIB);
    }
    let mut w = s.duplicate();
    let bytes = std::mem::take(&mut b.bytes);
    let disc = b.disc();
    let writer = std::thread::spawn(move || {
        // A reset may cut this short: that is the point.
        let sent = std::io::Write::write_all(&mut w, &bytes);
        match leave {
            Leave::Disc => drop(std::io::Write::write_all(&mut w, &disc)),
            Leave::HalfClose => w.shut(Shutdown::Write),
            Leave::Reset => {}
        }
        sent.is_ok()
    });
    let mut inbox = Inbox::new(style, &b.sent);
    let mut acked = Vec::new();
    let mut note = |f: &Finished| {
        if f.cookie.is_multiple_of(2) && f.errno == 0 {
            acked.push(f.cookie / 2);
        }
        assert_eq!(f.errno, 0, "cookie {}", f.cookie);
    };
    if leave == Leave::Reset {
        // A few replies, then gone with the rest unread and more in flight.
        for _ in 0..3 {
            note(&inbox.next(&mut s));
        }
        s.shut(Shutdown::Both);
        let _ = writer.join();
        drop(s);
    } else {
        for f in inbox.rest(&mut s) {
            note(&f);
        }
        expect_closed(&mut s);
        assert!(writer.join().unwrap(), "the batch was sent");
        assert_eq!(acked.len() as u64, BLOCKS, "every WRITE answered");
    }
    acked
}

/// Reads back every acknowledged block through a fresh connection.
#[track_caller]
fn check_blocks<S: Stream>(mut s: S, acked: &[u64], round: u64) {
    let mut b = Batch::new(Style::Structured);
    for &i in acked {
        b.cmd(0, CMD_READ, i, (1 + i) * MIB, MIB);
    }
    std::io::Write::write_all(&mut s, &b.bytes).unwrap();
    for f in Inbox::new(Style::Structured, &b.sent).rest(&mut s) {
        assert_eq!(f.errno, 0);
        let want = block_data(f.cookie, round, MIB as usize);
        assert!(f.data == want, "acknowledged block {} lost", f.cookie);
    }
}

/// Clients leave with many large WRITEs and READs in flight: half-closed,
/// after DISC (both still get every reply, then the server closes), or by a
/// reset with replies unread, over Unix and TCP. The server lives on, serves a
/// fresh client, every acknowledged block reads back as written, and the
/// connections' descriptors are all closed once their I/O has completed.
#[test]
fn leaving_with_io_in_flight() {
    let dir = TempDir::new();
    let img = dir.join("disk.img");
    sparse_file(&img, (BLOCKS + 2) * MIB);
    let mut round = 0;
    for io in ENGINES {
        for tcp in [false, true] {
            let mut srv = if tcp {
                io.serve_tcp(&img)
            } else {
                io.serve(&img)
            };
            let baseline = open_fds(&srv);
            for leave in [Leave::HalfClose, Leave::Disc, Leave::Reset] {
                let style = [Style::Simple, Style::Structured, Style::Extended][round % 3];
                round += 1;
                let r = round as u64;
                let acked = match tcp {
                    false => leave_with_io(unix(&srv.sock, style), style, leave, r),
                    true => leave_with_io(pipeline::tcp(srv.tcp_port(), style), style, leave, r),
                };
                assert!(srv.alive(), "{io:?} {leave:?}: {}", srv.log_text());
                match tcp {
                    false => check_blocks(unix(&srv.sock, Style::Structured), &acked, r),
                    true => {
                        check_blocks(pipeline::tcp(srv.tcp_port(), Style::Structured), &acked, r)
                    }
                }
                eprintln!(
                    "{io:?} {} {leave:?} ({style:?}): {} of {BLOCKS} WRITEs acknowledged, all read back",
                    if tcp { "TCP" } else { "Unix" },
                    acked.len()
                );
            }
            if !tcp {
                still_serves(&srv.sock);
            }
            wait_until(10, "the connections' descriptors to close", || {
                open_fds(&srv) <= baseline
            });
        }
    }
}

/// SIGTERM while a client's batch of WRITEs is in flight: every request gets
/// its reply (done, or ESHUTDOWN for those read after the signal), the
/// connection closes after the DISC the client sends last, the server exits
/// 0, and every acknowledged WRITE is in the file.
#[test]
fn shutdown_waits_for_io_in_flight() {
    let dir = TempDir::new();
    let img = dir.join("disk.img");
    let blocks = 32u64;
    for (round, io) in ENGINES.into_iter().enumerate() {
        sparse_file(&img, blocks * MIB);
        let mut srv = io.serve(&img);
        let style = Style::Structured;
        let mut s = unix(&srv.sock, style);
        let mut b = Batch::new(style);
        for i in 0..blocks {
            let fua = if i % 2 == 0 { F_FUA } else { 0 };
            b.write(fua, i, i * MIB, &block_data(i, round as u64, MIB as usize));
        }
        let mut w = s.duplicate();
        let bytes = std::mem::take(&mut b.bytes);
        let disc = b.disc();
        let writer = std::thread::spawn(move || {
            std::io::Write::write_all(&mut w, &bytes).is_ok()
                && std::io::Write::write_all(&mut w, &disc).is_ok()
        });
        let mut inbox = Inbox::new(style, &b.sent);
        let first = inbox.next(&mut s);
        srv.signal("TERM");
        let mut got = vec![first];
        got.extend(inbox.rest(&mut s));
        expect_closed(&mut s);
        let _ = writer.join();
        let status = wait_exit(&mut srv.child, 10).expect("the server exits");
        assert!(status.success(), "{status}: {}", srv.log_text());
        let mut done = 0;
        for f in &got {
            assert!(
                f.errno == 0 || f.errno == ESHUTDOWN,
                "cookie {}: errno {}",
                f.cookie,
                f.errno
            );
            if f.errno == 0 {
                done += 1;
                let want = block_data(f.cookie, round as u64, MIB as usize);
                let have = read_at(&img, f.cookie * MIB, MIB as usize);
                assert!(have == want, "acknowledged block {} lost", f.cookie);
            }
        }
        eprintln!(
            "{io:?}: SIGTERM after the first reply: {done} of {blocks} WRITEs done, {} refused",
            blocks as usize - done
        );
    }
}

/// qemu-img and nbdcopy copy a sparse image into a file export and back out,
/// byte for byte, crossing over (in with one, out with the other).
#[test]
fn qemu_img_and_nbdcopy_round_trips() {
    if !have(&["qemu-img", "nbdcopy"]) {
        return;
    }
    let dir = TempDir::new();
    let src = dir.join("src.raw");
    let size = 24 * MIB;
    sparse_file(&src, size);
    // Data in some places, holes in others, zeroes written in one.
    for (i, at) in [0, 3 * MIB + 512, 8 * MIB, 20 * MIB - 4096]
        .into_iter()
        .enumerate()
    {
        write_at(&src, at, &block_data(i as u64, 9, (MIB + 4096) as usize));
    }
    write_at(&src, 12 * MIB, &vec![0; MIB as usize]);
    let want = fs::read(&src).unwrap();
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    for io in ENGINES {
        let export = dir.join("export.img");
        sparse_file(&export, size);
        let srv = io.serve(&export);
        let uri = srv.uri();
        let back = dir.join("back.raw");
        // In with qemu-img (into the existing export), out with nbdcopy.
        let convert = ["convert", "-n", "-f", "raw", "-O", "raw"];
        run_ok(
            Command::new("qemu-img")
                .args(convert)
                .args([&path(&src), &uri]),
            120,
        );
        let _ = fs::remove_file(&back);
        run_ok(
            Command::new("nbdcopy").args(["--connections=4", &uri, &path(&back)]),
            120,
        );
        assert!(
            fs::read(&back).unwrap() == want,
            "{io:?}: qemu-img in, nbdcopy out"
        );
        // In with nbdcopy over a fresh export, out with qemu-img.
        drop(srv);
        sparse_file(&export, size); // emptied
        let srv = io.serve(&export);
        let uri = srv.uri();
        run_ok(
            Command::new("nbdcopy").args(["--connections=4", "--flush", &path(&src), &uri]),
            120,
        );
        let _ = fs::remove_file(&back);
        let convert = ["convert", "-f", "raw", "-O", "raw"];
        run_ok(
            Command::new("qemu-img")
                .args(convert)
                .args([&uri, &path(&back)]),
            120,
        );
        assert!(
            fs::read(&back).unwrap() == want,
            "{io:?}: nbdcopy in, qemu-img out"
        );
        assert!(
            fs::read(&export).unwrap() == want,
            "{io:?}: the export file"
        );
        run_ok(
            Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw", &uri, &path(&src)]),
            120,
        );
    }
}

/// The longest a 4 KiB READ of cached data may wait beside a long request: far
/// above what is measured (README), so that a loaded machine keeps it. The
/// fallback does a bounded slice (a few MiB of work) per turn, so it may wait
/// several slices.
fn bound(io: Io) -> Duration {
    match io {
        Io::Uring => Duration::from_millis(500),
        Io::Sync => Duration::from_millis(1500),
    }
}

/// Sends one request on a fresh connection and waits for its reply, after
/// calling `sent` (for `reads_beside`).
fn busy_request(sock: PathBuf, flags: u16, kind: u16, len: u64) -> impl FnOnce(&dyn Fn()) + Send {
    move |sent: &dyn Fn()| {
        let style = Style::Structured;
        let mut s = unix(&sock, style);
        let mut b = Batch::new(style);
        b.cmd(flags, kind, 1, 0, len);
        std::io::Write::write_all(&mut s, &b.bytes).unwrap();
        sent();
        let f = Inbox::new(style, &b.sent).next(&mut s);
        assert_eq!(f.errno, 0, "the long request failed");
    }
}

/// A second client's 4 KiB READs stay quick while one WRITE_ZEROES (NO_HOLE)
/// clears 1 GiB of a tmpfs file, where no fallocate mode zeroes in place and
/// every page is allocated and cleared.
#[test]
fn a_read_beside_a_long_write_zeroes() {
    let Some(shm) = Scratch::tmpfs(GIB + 64 * MIB) else {
        return;
    };
    let img = shm.join("disk.img");
    sparse_file(&img, GIB + MIB);
    let marker = block_data(3, 3, 4096);
    write_at(&img, GIB, &marker);
    for io in ENGINES {
        let srv = io.serve(&img);
        let mut reader = unix(&srv.sock, Style::Structured);
        let zero = busy_request(srv.sock.clone(), F_NO_HOLE, CMD_ZERO, GIB);
        let (lat, took) = reads_beside(&mut reader, Style::Structured, GIB, &marker, zero);
        eprintln!(
            "{io:?}: WRITE_ZEROES NO_HOLE 1 GiB on tmpfs took {took:?}; beside it: {}",
            summary(&lat)
        );
        if let Some(worst) = lat.iter().max() {
            assert!(*worst < bound(io), "{io:?}: a READ waited {worst:?}");
        }
    }
}

/// A second client's 4 KiB READs stay quick while a FLUSH writes back 256 MiB
/// of dirty data to a file on the local disk. The fallback's fdatasync is one
/// call that cannot be cut into slices: it is measured, and bounded only by
/// how long the whole write-back takes.
#[test]
fn a_read_beside_a_big_flush() {
    let dirty = 256 * MIB;
    let Some(disk) = Scratch::disk(dirty + 64 * MIB) else {
        return;
    };
    let img = disk.join("disk.img");
    sparse_file(&img, dirty + MIB);
    let marker = block_data(4, 4, 4096);
    write_at(&img, dirty, &marker);
    File::open(&img).unwrap().sync_all().unwrap();
    let chunk = block_data(5, 5, (4 * MIB) as usize);
    for io in ENGINES {
        let srv = io.serve(&img);
        let mut reader = unix(&srv.sock, Style::Structured);
        // The dirty data: written here (the page cache is the file's, whoever
        // wrote it), left for the server's fdatasync to write back.
        let f = OpenOptions::new().write(true).open(&img).unwrap();
        for at in (0..dirty).step_by(chunk.len()) {
            f.write_all_at(&chunk, at).unwrap();
        }
        let flush = busy_request(srv.sock.clone(), 0, CMD_FLUSH, 0);
        let (lat, took) = reads_beside(&mut reader, Style::Structured, dirty, &marker, flush);
        eprintln!(
            "{io:?}: FLUSH of {} MiB dirty took {took:?}; beside it: {}",
            dirty >> 20,
            summary(&lat)
        );
        let limit = match io {
            Io::Uring => bound(io),
            Io::Sync => bound(io).max(took + Duration::from_millis(500)),
        };
        if let Some(worst) = lat.iter().max() {
            assert!(*worst < limit, "{io:?}: a READ waited {worst:?}");
        }
    }
}

/// Runs a command with io_uring_setup refused by a seccomp filter (ENOSYS, or
/// the errno given as ERRNO), as a container's default profile does.
const REFUSE_IO_URING: &str = r#"
import ctypes, os, struct, sys
errno = int(os.environ.get("ERRNO", "38"))
def ins(code, jt, jf, k): return struct.pack("HBBI", code, jt, jf, k)
prog = b"".join([ins(0x20, 0, 0, 0),                     # load the syscall number
                 ins(0x15, 0, 1, 425),                   # io_uring_setup?
                 ins(0x06, 0, 0, 0x00050000 | errno),    # refuse it with errno
                 ins(0x06, 0, 0, 0x7fff0000)])           # allow the rest
buf = ctypes.create_string_buffer(prog)
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fp = Fprog(len(prog) // 8, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0                   # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(fp), 0, 0) == 0    # PR_SET_SECCOMP, filter
os.execvp(sys.argv[1], sys.argv[1:])
"#;

/// Where the kernel refuses io_uring, the default engine says so in one
/// warning line naming the cause, then serves the file synchronously.
#[test]
fn a_refused_io_uring_is_one_warning_line_then_the_fallback() {
    if !have(&["python3", "nbdsh"]) {
        return;
    }
    let dir = TempDir::new();
    let (img, script) = (dir.join("disk.img"), dir.join("refuse.py"));
    sparse_file(&img, MIB);
    fs::write(&script, REFUSE_IO_URING).unwrap();
    let check = "nbdsh -u \"$uri\" -c 'h.pwrite(b\"x\" * 4096, 8192)' \
                 -c 'assert h.pread(4096, 8192) == b\"x\" * 4096'";
    for (errno, cause) in [("38", "seccomp filter refuses it"), ("1", "refuses it")] {
        let out = common::run(
            Command::new("python3")
                .arg(&script)
                .args([common::bin(), "-U", "-", "file"])
                .arg(&img)
                .args(["--run", check])
                .env("ERRNO", errno)
                .env("PATH", common::system_path()),
            60,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {err}", out.status);
        let warnings: Vec<&str> = err.lines().filter(|l| l.contains("io_uring")).collect();
        assert_eq!(warnings.len(), 1, "{err}");
        assert!(
            warnings[0].starts_with("nbdlite: warning: io_uring unavailable (io_uring_setup: ")
                && warnings[0].contains(cause)
                && warnings[0].ends_with("): serving file I/O synchronously"),
            "{err}"
        );
    }
    assert_eq!(read_at(&img, 8192, 4096), vec![b'x'; 4096]);
}
