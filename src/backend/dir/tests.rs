//! The directory backend driven as the server drives it: exports opened by
//! name for connections, their requests through the engine on a real mio
//! Poll, under io_uring and the synchronous engine.

use std::fs;
use std::io;
use std::os::unix::fs::{FileExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::{Events, Poll};

use super::*;

/// The token under which the first file's ring goes (as the server's).
const TOP: usize = usize::MAX - (1 << 20);

/// A fresh directory, removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("nbdlite-dir-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("a scratch directory");
        Tmp(p)
    }

    fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, data).expect("write a file");
        p
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The backend over a directory, its engine on a Poll.
struct Rig {
    dir: Dir,
    poll: Poll,
    events: Events,
}

impl Rig {
    fn new(path: &Path, sync: bool) -> Rig {
        let mut dir = Dir::open(path, false, sync, FileOptions::default()).expect("a directory");
        let poll = Poll::new().expect("poll");
        let Access::Engine(engine) = dir.access() else {
            panic!("files go through an engine")
        };
        engine.attach(poll.registry(), TOP).expect("attach");
        Rig {
            dir,
            poll,
            events: Events::with_capacity(8),
        }
    }

    fn engine(&mut self) -> &mut Engine {
        match self.dir.access() {
            Access::Engine(e) => e,
            Access::Now(_) => unreachable!("files go through an engine"),
        }
    }

    fn open(&mut self, name: &str, conn: u64) -> Found {
        let exports = self.dir.exports().expect("exports by name");
        exports.open(name.as_bytes(), conn).expect("a file")
    }

    fn open_files(&self) -> usize {
        self.dir.files().open_count()
    }

    /// Drives the engine until one operation comes back (bounded), asleep
    /// in the Poll while it is not busy, as the server's loop is.
    fn wait(&mut self) -> Done {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut out = Vec::new();
        loop {
            self.engine().run();
            self.engine().reap(&mut out);
            if let Some(d) = out.pop() {
                return d;
            }
            assert!(Instant::now() < deadline, "no completion in 30 s");
            if !self.engine().busy() {
                let timeout = Some(Duration::from_secs(20));
                self.poll.poll(&mut self.events, timeout).expect("poll");
                assert!(!self.events.is_empty(), "no wake-up with I/O in flight");
            }
        }
    }

    fn one(&mut self, op: Op, conn: u64) -> (io::Result<()>, Vec<u8>) {
        self.engine().submit_from(op, 5, conn).expect("room");
        let d = self.wait();
        assert_eq!(d.tag, 5);
        (d.result, d.buf)
    }

    fn read(&mut self, conn: u64, offset: u64, len: usize) -> Vec<u8> {
        let (r, buf) = self.one(
            Op::Read {
                offset,
                buf: vec![0; len],
            },
            conn,
        );
        r.expect("read");
        buf
    }

    fn write(&mut self, conn: u64, offset: u64, data: &[u8]) {
        let op = Op::Write {
            offset,
            buf: data.to_vec(),
            fua: false,
        };
        self.one(op, conn).0.expect("write");
    }
}

/// io_uring, then the synchronous engine.
const ENGINES: [bool; 2] = [false, true];

#[test]
fn each_connection_reaches_its_own_file() {
    for sync in ENGINES {
        let t = Tmp::new(&format!("own-{sync}"));
        let a = t.file("a", &[b'a'; 8192]);
        t.file("b", &[b'b'; 4096]);
        let mut rig = Rig::new(&t.0, sync);
        assert_eq!(rig.open("a", 1).size, 8192);
        assert_eq!(rig.open("b", 2).size, 4096);
        rig.write(1, 100, b"xyz");
        assert_eq!(rig.read(1, 99, 5), b"axyza");
        assert_eq!(rig.read(2, 99, 5), b"bbbbb", "b is not a");
        let mut on_disk = [0; 3];
        fs::File::open(&a)
            .unwrap()
            .read_exact_at(&mut on_disk, 100)
            .unwrap();
        assert_eq!(&on_disk, b"xyz");
        // A connection with no file open (cannot happen) gets an error.
        let (r, _) = rig.one(Op::Flush, 9);
        assert!(r.is_err());
    }
}

#[test]
fn a_file_is_opened_once_and_closed_after_its_last_user() {
    for sync in ENGINES {
        let t = Tmp::new(&format!("share-{sync}"));
        t.file("a", b"data");
        symlink("a", t.0.join("link")).unwrap();
        let mut rig = Rig::new(&t.0, sync);
        rig.open("a", 1);
        rig.open("a", 2);
        rig.open("link", 3);
        assert_eq!(rig.open_files(), 1, "three connections, one file");
        rig.open("a", 2); // a second open replaces the first (cannot happen)
        assert_eq!(rig.open_files(), 1);
        for conn in [1, 2] {
            rig.dir.closed(conn);
            assert_eq!(rig.open_files(), 1);
        }
        assert_eq!(rig.read(3, 0, 4), b"data");
        rig.dir.closed(3);
        assert_eq!(rig.open_files(), 0);
        rig.dir.closed(3); // twice: nothing more
    }
}

#[test]
fn a_file_stays_open_until_its_operations_are_back() {
    for sync in ENGINES {
        let t = Tmp::new(&format!("inflight-{sync}"));
        t.file("a", &[7; 1 << 20]);
        let mut rig = Rig::new(&t.0, sync);
        rig.open("a", 1);
        let op = Op::Read {
            offset: 0,
            buf: vec![0; 1 << 20],
        };
        rig.engine().submit_from(op, 5, 1).expect("room");
        rig.dir.closed(1);
        assert_eq!(rig.open_files(), 1, "its read is in flight");
        let d = rig.wait();
        assert!(d.result.is_ok() && d.buf.iter().all(|&b| b == 7));
        assert_eq!(rig.open_files(), 0, "closed once its read came back");
        assert_eq!(rig.engine().in_flight(), 0);
    }
}

#[test]
fn extents_are_those_of_the_connections_file() {
    let t = Tmp::new("extents");
    let sparse = t.0.join("sparse");
    let f = fs::File::create(&sparse).unwrap();
    f.set_len(4 << 20).unwrap();
    f.write_all_at(&[1; 4096], 2 << 20).unwrap();
    t.file("full", &[1; 8192]);
    let mut rig = Rig::new(&t.0, true);
    rig.open("sparse", 1);
    rig.open("full", 2);
    let mut out = Vec::new();
    rig.dir.extents_for(1, 0, 4 << 20, 8, &mut out).unwrap();
    assert_eq!(
        out[0].flags,
        crate::proto::STATE_HOLE | crate::proto::STATE_ZERO
    );
    assert_eq!(out.iter().map(|e| e.len).sum::<u64>(), 4 << 20);
    out.clear();
    rig.dir.extents_for(2, 0, 8192, 8, &mut out).unwrap();
    assert_eq!((out.len(), out[0].len, out[0].flags), (1, 8192, 0));
    assert!(
        rig.dir.extents_for(3, 0, 1, 1, &mut out).is_err(),
        "no file"
    );
}

#[test]
fn only_regular_files_and_block_devices_open() {
    let t = Tmp::new("kinds");
    t.file("a", b"1");
    fs::create_dir(t.0.join("sub")).unwrap();
    symlink(".", t.0.join("here")).unwrap();
    symlink("nowhere", t.0.join("dangling")).unwrap();
    symlink("/dev/null", t.0.join("null")).unwrap();
    std::os::unix::net::UnixListener::bind(t.0.join("socket")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(t.0.join("fifo"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(fifo, "mkfifo");
    let mut rig = Rig::new(&t.0, true);
    let exports = rig.dir.exports().expect("exports by name");
    for name in [
        "sub", "here", "dangling", "null", "socket", "fifo", "missing", "", ".", "..", "../a",
        "./a", "a/", "a\0",
    ] {
        let b = name.as_bytes();
        assert!(exports.probe(b).is_err(), "{name:?}");
        // A FIFO would hold the loop until a writer came: it is never opened.
        assert!(exports.open(b, 1).is_err(), "{name:?}");
    }
    assert_eq!(exports.probe(b"a").map(|f| f.size), Ok(1));
    assert_eq!(rig.open_files(), 0, "INFO keeps nothing open");
}

#[test]
fn a_directory_that_is_none_is_refused() {
    let t = Tmp::new("none");
    let file = t.file("a", b"1");
    let opts = FileOptions::default();
    assert!(Dir::open(&file, false, true, opts).is_err());
    assert!(Dir::open(&t.0.join("missing"), false, true, opts).is_err());
    let relative = Dir::open(Path::new("."), true, true, opts).expect("the working directory");
    assert!(relative.dir.is_absolute());
    assert!(relative.caps().read_only);
}
