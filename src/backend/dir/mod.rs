//! `file dir=DIR`: an export for each regular file and block device directly
//! in a directory (following symbolic links), chosen by the name a client
//! gives, as nbdkit's file plugin serves a directory.
//!
//! The directory is read when a client asks (LIST), so files added later
//! are served; a name is checked (`name.rs`) before it is ever made a path.
//! A file is opened when a client enters it (GO, EXPORT_NAME): a synchronous
//! open(2) and fstat(2) on the loop's thread, never a read or a write; two
//! connections on one file share it, and it closes when the last has gone
//! (`files.rs`). Each open file has its own I/O engine, driven together as
//! one `aio::Remote` (`Io`), which routes each request to its connection's
//! file.
//!
//! - `name.rs`: which names may be files of the directory;
//! - `listing.rs`: what LIST shows;
//! - `files.rs`: the open files, their engines and their rings on the Poll.

mod files;
mod listing;
mod name;
#[cfg(test)]
mod tests;

use std::cell::{RefCell, RefMut};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use mio::Registry;

use super::file::FileOptions;
use super::{Access, Backend, Caps, Exports, Extent, Found};
use crate::aio::{Done, Engine, Op, Remote, Tag};
use files::Files;

pub struct Dir {
    dir: PathBuf,
    read_only: bool,
    files: Rc<RefCell<Files>>,
    /// `Io`, over `files`.
    engine: Engine,
}

impl Dir {
    /// Serves the files of `dir` (absolute, so that it stays the same
    /// directory whatever the server's working directory becomes), opening
    /// each read-only with `read_only`. Err: `dir` is not a directory. One
    /// that cannot be read (mode 0711) is served all the same, as nbdkit
    /// serves it: files are opened by name, and only LIST fails.
    pub fn open(
        dir: &Path,
        read_only: bool,
        sync_io: bool,
        options: FileOptions,
    ) -> io::Result<Dir> {
        let dir = std::path::absolute(dir)?;
        if !std::fs::metadata(&dir)?.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let files = Rc::new(RefCell::new(Files::new(
            dir.clone(),
            read_only,
            options,
            sync_io,
        )));
        Ok(Dir {
            dir,
            read_only,
            engine: Engine::remote(Box::new(Io(files.clone()))),
            files,
        })
    }

    fn files(&self) -> RefMut<'_, Files> {
        // The loop calls one method at a time, and none calls another while
        // it holds the files: they are never borrowed twice.
        self.files.borrow_mut()
    }
}

impl Backend for Dir {
    /// Nothing: each export has a size of its own (`Exports`).
    fn size(&self) -> u64 {
        0
    }

    /// What every file's export can do (each is read-only where it cannot
    /// be written, and has its own block size).
    fn caps(&self) -> Caps {
        Caps {
            read_only: self.read_only,
            zero: true,
            fast_zero: true,
            extents: true,
            sparse_reads: false,
            min_block: 1,
            multi_conn: true,
        }
    }

    fn access(&mut self) -> Access<'_> {
        Access::Engine(&mut self.engine)
    }

    /// No connection names no file: all data.
    fn extents(&mut self, _: u64, len: u64, _: usize, out: &mut Vec<Extent>) -> io::Result<()> {
        out.push(Extent {
            len: len.max(1),
            flags: 0,
        });
        Ok(())
    }

    fn extents_for(
        &mut self,
        conn: u64,
        offset: u64,
        len: u64,
        max: usize,
        out: &mut Vec<Extent>,
    ) -> io::Result<()> {
        self.files().extents(conn, offset, len, max, out)
    }

    fn closed(&mut self, conn: u64) {
        self.files().closed(conn);
    }

    fn exports(&mut self) -> Option<&mut dyn Exports> {
        Some(self)
    }
}

impl Exports for Dir {
    fn names(&mut self) -> io::Result<Vec<Vec<u8>>> {
        listing::names(&self.dir)
    }

    fn probe(&mut self, name: &[u8]) -> Result<Found, String> {
        self.files().probe(name)
    }

    fn open(&mut self, name: &[u8], conn: u64) -> Result<Found, String> {
        self.files().open(name, conn)
    }
}

/// The open files' engines as the one the server drives.
struct Io(Rc<RefCell<Files>>);

impl Io {
    fn files(&self) -> RefMut<'_, Files> {
        // As `Dir::files`: never borrowed twice.
        self.0.borrow_mut()
    }
}

impl Remote for Io {
    /// Without a connection there is no file: it fails.
    fn submit(&mut self, op: Op, tag: Tag) {
        self.files().submit(op, tag, u64::MAX);
    }

    fn submit_from(&mut self, op: Op, tag: Tag, conn: u64) {
        self.files().submit(op, tag, conn);
    }

    fn run(&mut self) {
        self.files().run();
    }

    fn reap(&mut self, out: &mut Vec<Done>) {
        self.files().reap(out);
    }

    fn busy(&self) -> bool {
        self.files().busy()
    }

    fn in_flight(&self) -> usize {
        self.files().in_flight()
    }

    fn attach(&mut self, registry: &Registry, top: usize) -> io::Result<()> {
        self.files().attach(registry, top)
    }

    /// A ring has completions: every active file's are reaped each turn.
    fn ready(&mut self, _source: usize) {}

    fn deadline(&self) -> Option<Instant> {
        None
    }
}
