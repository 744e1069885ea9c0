//! A file served under either I/O engine, and scratch space for large files on
//! tmpfs or on a disk: what the tests of the file backend (`async_io.rs`,
//! `durability.rs`, `failing_storage.rs`) and the measurements (`measure.rs`)
//! share. Include it as `mod fileio` beside `mod common`.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::common::{Server, bin};

/// The I/O engine a server is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// The default: io_uring where the kernel allows it.
    Uring,
    /// NBDLITE_IO_URING=0: the synchronous engine, in bounded slices.
    Sync,
}

pub const ENGINES: [Io; 2] = [Io::Uring, Io::Sync];

impl Io {
    pub fn command(self) -> Command {
        let mut c = Command::new(bin());
        if self == Io::Sync {
            c.env("NBDLITE_IO_URING", "0");
        }
        c
    }

    /// `nbdlite file PATH` on a Unix socket.
    #[track_caller]
    pub fn serve(self, path: &Path) -> Server {
        Server::start_with(self.command(), &[OsStr::new("file"), path.as_os_str()])
    }

    /// `nbdlite file PATH` on a TCP port of the kernel's choosing.
    #[track_caller]
    pub fn serve_tcp(self, path: &Path) -> Server {
        Server::start_tcp_with(self.command(), &[OsStr::new("file"), path.as_os_str()])
    }
}

/// Whether a server started with `io` has a ring. Where io_uring is missing or
/// refused (old kernels, a container's seccomp filter) the default engine is
/// the fallback too, which says so in one warning line; what only io_uring
/// promises cannot be checked then, and a loud line says so.
pub fn has_ring(io: Io, srv: &Server) -> bool {
    if io == Io::Sync {
        return false;
    }
    let log = srv.log_text();
    if log.contains("io_uring unavailable") {
        crate::common::skip_part(&format!(
            "no io_uring here, the default engine is the fallback: what only io_uring promises was not checked ({})",
            log.trim()
        ));
        return false;
    }
    true
}

/// A fresh directory for large scratch files, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// On tmpfs (/dev/shm), with `need` bytes free; None and a loud SKIP line
    /// otherwise.
    pub fn tmpfs(need: u64) -> Option<Scratch> {
        Scratch::under("/dev/shm", need, true)
    }

    /// On a disk (/var/tmp, not tmpfs), with `need` bytes free; None and a
    /// loud SKIP line otherwise.
    pub fn disk(need: u64) -> Option<Scratch> {
        Scratch::under("/var/tmp", need, false)
    }

    fn under(root: &str, need: u64, tmpfs: bool) -> Option<Scratch> {
        let out = Command::new("df")
            .args(["-B1", "--output=fstype,avail", root])
            .output();
        let text = out.map_or(String::new(), |o| {
            String::from_utf8_lossy(&o.stdout).into_owned()
        });
        let row: Vec<&str> = text
            .lines()
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let (fstype, avail) = match row[..] {
            [t, a] => (t, a.parse::<u64>().unwrap_or(0)),
            _ => ("?", 0),
        };
        if (fstype == "tmpfs") != tmpfs || avail < need {
            let want = if tmpfs { "a tmpfs" } else { "a disk" };
            crate::common::skip(&format!(
                "{root} is {fstype} with {} MiB free; this test needs {want} with {} MiB",
                avail >> 20,
                need >> 20
            ));
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("{root}/nbdlite-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        Some(Scratch(dir))
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).expect("open");
    f.write_all_at(data, offset).expect("write");
}

pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut v, offset))
        .expect("read");
    v
}
