//! The file backend on storage that fails: a filesystem that fills up (ENOSPC),
//! a device whose writeback fails (FLUSH gets EIO), and a file that cannot be
//! written at all (served read-only, as nbdkit does; writes get EPERM). In each
//! case the connection stays up, reads still work, and the log says what failed.
//!
//! The file's I/O goes through the engine (`src/aio/`): ENOSPC and EIO are
//! checked under both engines, io_uring and the synchronous fallback
//! (NBDLITE_IO_URING=0).
//!
//! These need root (mount, losetup); without it they print a SKIP line.

mod common;
#[path = "common/fileio.rs"]
mod fileio;
#[path = "common/wire.rs"]
mod wire;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{LoopDevice, Server, TempDir, is_root, sparse_file};
use fileio::ENGINES;
use wire::*;

const KIB: u64 = 1024;

/// A skip (`common::skip`). Not a failure even in CI: mounting and loop
/// devices are privileges of the machine (a container may refuse them to
/// root), not tools we could install.
fn skip(why: &str) {
    common::skip(why);
}

/// A tmpfs mounted on a fresh directory, unmounted (then the directory
/// removed) on drop.
struct Mount {
    at: PathBuf,
    _dir: TempDir,
}

impl Mount {
    /// A tmpfs with mount `options` (e.g. `size=1m`), or None (and a SKIP line)
    /// where this machine cannot mount one.
    fn tmpfs(options: &str) -> Option<Mount> {
        if !is_root() {
            skip("mounting a tmpfs needs root");
            return None;
        }
        let dir = TempDir::new();
        let at = dir.join("mnt");
        std::fs::create_dir(&at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&at)
            .status();
        if !st.is_ok_and(|s| s.success()) {
            skip("mount -t tmpfs failed");
            return None;
        }
        Some(Mount { at, _dir: dir })
    }

    fn join(&self, name: &str) -> PathBuf {
        self.at.join(name)
    }

    fn remount(&self, options: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.at)
            .status()
            .expect("mount");
        assert!(st.success(), "remount {options}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

#[test]
fn a_full_filesystem_gives_enospc_and_the_connection_stays_up() {
    let Some(mnt) = Mount::tmpfs("size=1m") else {
        return;
    };
    // An 8 MiB sparse file on a 1 MiB filesystem.
    let img = mnt.join("disk.img");
    sparse_file(&img, 8 << 20);
    for io in ENGINES {
        a_full_filesystem_under(io.serve(&img), &img);
    }
}

fn a_full_filesystem_under(mut srv: Server, img: &Path) {
    for (sr, eh) in [(false, false), (true, false), (false, true)] {
        sparse_file(img, 8 << 20); // truncated first: all space back
        let (mut c, _, _) = Client::ready(&srv.sock, sr, eh, false);
        let chunk = vec![0x5a; 64 * KIB as usize];
        let mut written = 0;
        let full = loop {
            match c.write(written, &chunk) {
                0 => written += chunk.len() as u64,
                ENOSPC => break true,
                e => panic!("write at {written}: errno {e}"),
            }
            if written >= 8 << 20 {
                break false;
            }
        };
        assert!(full, "8 MiB fitted on a 1 MiB tmpfs");
        assert!(written >= 512 * KIB, "only {written} bytes fitted");
        // Writes into unallocated space keep failing; the connection goes on.
        let flags = if eh { F_FUA | F_PAYLOAD_LEN } else { F_FUA };
        c.request(flags, CMD_WRITE, 7, 6 << 20, 4096, &[1; 4096]);
        let r = c.replies(None);
        assert_eq!(r.last().unwrap().errno(), ENOSPC, "FUA write");
        assert_eq!(c.cmd(F_NO_HOLE, CMD_ZERO, 7 << 20, 64 * KIB), ENOSPC);
        // What was written reads back; allocated space can still be rewritten.
        assert_eq!(c.read(0, 0, 8).unwrap(), [0x5a; 8]);
        assert_eq!(c.write(0, b"rewrite"), 0);
        assert_eq!(c.read(0, 0, 7).unwrap(), b"rewrite");
        assert_eq!(c.cmd(0, CMD_FLUSH, 0, 0), 0);
        // TRIM gives space back: a write that failed now succeeds.
        assert_eq!(c.cmd(0, CMD_TRIM, 0, 256 * KIB), 0);
        assert_eq!(c.write(6 << 20, &[2; 4096]), 0);
        assert_eq!(c.read(0, 6 << 20, 4).unwrap(), [2; 4]);
    }
    let log = srv.log_text();
    assert!(
        log.contains("WRITE offset") && log.contains("No space left on device"),
        "the log says what failed: {log}"
    );
    assert!(srv.alive());
    still_serves(&srv.sock);
}

#[test]
fn a_failing_flush_is_eio_and_the_connection_stays_up() {
    if !common::have(&["losetup"]) {
        return;
    }
    let Some(mnt) = Mount::tmpfs("size=1m") else {
        return;
    };
    // A 4 MiB loop device over a file on a 1 MiB tmpfs: writes land in the page
    // cache; writeback then fails, and fdatasync says so.
    let img = mnt.join("backing.img");
    sparse_file(&img, 4 << 20);
    let Some(dev) = LoopDevice::new(&img, None) else {
        return skip("losetup failed (no loop devices?)");
    };
    for io in ENGINES {
        let mut srv = io.serve(Path::new(&dev.0));
        let (mut c, _, _) = Client::ready(&srv.sock, true, false, false);
        let mb = vec![0x33; 1 << 20];
        for i in 0..3 {
            assert_eq!(c.write(i << 20, &mb), 0, "buffered write {i}");
        }
        assert_eq!(c.cmd(0, CMD_FLUSH, 0, 0), EIO, "{io:?}: FLUSH");
        // Still connected; the data is in the page cache.
        assert_eq!(c.read(0, 0, 512).unwrap(), vec![0x33; 512]);
        // A FUA write meets the same failure.
        c.request(F_FUA, CMD_WRITE, 7, 3 << 20, 4096, &[4; 4096]);
        let r = c.replies(None);
        assert_eq!(r.last().unwrap().errno(), EIO, "{io:?}: FUA write");
        let log = srv.log_text();
        assert!(
            log.contains("FLUSH") && log.contains("Input/output error"),
            "the log says what failed: {log}"
        );
        drop(c);
        assert!(srv.alive());
    }
}

#[test]
fn a_file_that_cannot_be_written_is_served_read_only() {
    let Some(mnt) = Mount::tmpfs("size=1m") else {
        return;
    };
    let img = mnt.join("disk.img");
    std::fs::write(&img, vec![0x42; 64 * KIB as usize]).unwrap();
    mnt.remount("ro");
    // Without -r, as nbdkit's file plugin does: read-only, with a warning.
    let srv = Server::start(&[OsStr::new("file"), img.as_os_str()]);
    assert!(
        srv.log_text().contains("serving read-only"),
        "{}",
        srv.log_text()
    );
    for (sr, eh) in [(false, false), (true, false), (false, true)] {
        let (mut c, _, flags) = Client::ready(&srv.sock, sr, eh, false);
        assert_ne!(flags & 2, 0, "READ_ONLY advertised");
        assert_eq!(c.write(0, b"no"), EPERM);
        assert_eq!(c.cmd(0, CMD_TRIM, 0, 512), EPERM);
        assert_eq!(c.cmd(0, CMD_ZERO, 0, 512), EPERM);
        assert_eq!(c.read(0, 0, 4).unwrap(), [0x42; 4]);
        assert_eq!(c.cmd(0, CMD_FLUSH, 0, 0), 0);
    }
    let mut srv = srv;
    assert!(srv.alive());
}

/// The log's own storage fails: stderr on a full disk (/dev/full) or a pipe
/// nobody reads any more. Log lines are lost; the server is not.
#[test]
fn a_failing_log_costs_lines_not_the_server() {
    use std::process::Stdio;
    for target in ["/dev/full", "a closed pipe"] {
        let dir = TempDir::new();
        let (sock, pidfile) = (dir.join("sock"), dir.join("pid"));
        let mut cmd = Command::new(common::bin());
        cmd.args(["-f", "-v", "-U"])
            .arg(&sock)
            .arg("-P")
            .arg(&pidfile)
            .args(["memory", "1M"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if target == "/dev/full" {
            cmd.stderr(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            );
        } else {
            cmd.stderr(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("spawn");
        drop(child.stderr.take()); // the reader goes away
        let mut srv = Server {
            child,
            log: dir.join("no-log"),
            dir,
            sock,
            pidfile,
            port: None,
        };
        common::wait_until(10, "the pidfile", || srv.pidfile.exists() || !srv.alive());
        // Clients that make the server log at every level.
        let mut c = Client::start(&srv.sock);
        c.send(b"NOTMAGIC\0\0\0\x07\0\0\0\0");
        assert!(c.closed_by_peer(5));
        let (mut c, _, _) = Client::ready(&srv.sock, true, false, false);
        assert_eq!(c.read(0, 1 << 20, 1), Err(EINVAL));
        assert!(srv.alive(), "stderr on {target} killed the server");
        still_serves(&srv.sock);
    }
}
