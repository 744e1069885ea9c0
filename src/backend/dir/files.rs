//! The directory's files that connections have open: each opened once (two
//! connections on one file share it, its descriptor and its I/O engine),
//! kept while a connection uses it or its engine has operations in flight,
//! closed after.
//!
//! One engine per open file, as the `file` backend has for its one: its own
//! ring (the file registered as the ring's fixed file 0), or the synchronous
//! fallback. A ring's descriptor goes on the server's Poll under a token of
//! its own (`top - key`, the file's key here), registered as the file opens
//! and deregistered as it closes, through the registry `attach` lent.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::name::file_name;
use crate::aio::{self, Done, Engine, Op, Tag};
use crate::backend::file::{FileOptions, Image, Layout};
use crate::backend::{Extent, Found};

/// One open file.
struct Open {
    /// Shared with its engine, whose operations keep it open.
    file: Rc<fs::File>,
    engine: Engine,
    block_device: bool,
    /// Which file (device, inode), and whether opened read-only: the key
    /// a second connection finds it by.
    id: Id,
    /// Connections using it.
    users: u32,
    /// In `Files::active`.
    active: bool,
}

type Id = (u64, u64, bool);

/// What a connection has open: which file, and its size as that connection
/// was told it (the file may have grown since another opened it).
#[derive(Debug, Clone, Copy)]
struct Use {
    key: usize,
    size: u64,
}

pub struct Files {
    dir: PathBuf,
    /// `-r`: every file opened read-only.
    read_only: bool,
    options: FileOptions,
    /// Synchronous I/O for every file: asked for (NBDLITE_IO_URING=0), or
    /// io_uring failed for a file already (said once, then not tried again).
    sync_io: bool,
    open: Slab<Open>,
    by_id: HashMap<Id, usize>,
    conns: HashMap<u64, Use>,
    /// Files whose engines have operations in flight: the only ones `run`
    /// and `reap` look at.
    active: Vec<usize>,
    /// Where the rings' descriptors go, once `attach`ed: a registry of the
    /// server's Poll, and the token under which file 0's goes.
    registry: Option<(Registry, usize)>,
    /// Completions of operations that found no file (cannot happen: a
    /// connection's requests come after its open and before its close).
    orphans: Vec<Done>,
}

impl Files {
    pub fn new(dir: PathBuf, read_only: bool, options: FileOptions, sync_io: bool) -> Files {
        Files {
            dir,
            read_only,
            options,
            sync_io,
            open: Slab::new(),
            by_id: HashMap::new(),
            conns: HashMap::new(),
            active: Vec::new(),
            registry: None,
            orphans: Vec::new(),
        }
    }

    /// Opens the file `name` names (a synchronous open and fstat, on the
    /// loop: no read or write) and closes it again.
    pub fn probe(&self, name: &[u8]) -> Result<Found, String> {
        self.image(name).map(|image| found(&image))
    }

    /// Opens the file `name` names for connection `conn` (see `probe`), or
    /// takes the one already open.
    pub fn open(&mut self, name: &[u8], conn: u64) -> Result<Found, String> {
        self.closed(conn); // one file per connection (a second open cannot happen)
        let image = self.image(name)?;
        let found = found(&image);
        let id = (image.id.0, image.id.1, image.read_only);
        let key = match self.by_id.get(&id) {
            Some(&key) => key, // the new descriptor is closed as `image` drops
            None => self.add(image, id)?,
        };
        // Live: `by_id` names exactly the files in `open` (`add`, `close`).
        self.open[key].users += 1;
        let size = found.size;
        self.conns.insert(conn, Use { key, size });
        Ok(found)
    }

    fn image(&self, name: &[u8]) -> Result<Image, String> {
        let name = file_name(name)?;
        let path = self.dir.join(name);
        Image::open(&path, self.read_only, self.options).map_err(|e| crate::error::plain(&e))
    }

    /// Takes `image` in, with an engine of its own on the Poll.
    fn add(&mut self, image: Image, id: Id) -> Result<usize, String> {
        let entry = self.open.vacant_entry();
        let key = entry.key();
        if key >= aio::MAX_SOURCES {
            return Err(format!("{} files are open already", aio::MAX_SOURCES));
        }
        let file = Rc::new(image.file);
        let engine = Engine::with_cache(file.clone(), self.sync_io, self.options.cache);
        if !self.sync_io && engine.fd().is_none() {
            self.sync_io = true; // its warning said why: once is enough
        }
        if let (Some(fd), Some((registry, top))) = (engine.fd(), &self.registry) {
            let fd = fd.as_raw_fd();
            registry
                .register(&mut SourceFd(&fd), Token(top - key), Interest::READABLE)
                .map_err(|e| format!("its ring cannot go on the Poll: {e}"))?;
        }
        entry.insert(Open {
            file,
            engine,
            block_device: image.block_device,
            id,
            users: 0,
            active: false,
        });
        self.by_id.insert(id, key);
        Ok(key)
    }

    /// Connection `conn` has gone: its file closes if nobody else uses it
    /// and nothing of it is in flight (else once its last operation is
    /// reaped).
    pub fn closed(&mut self, conn: u64) {
        let Some(u) = self.conns.remove(&conn) else {
            return;
        };
        let Some(open) = self.open.get_mut(u.key) else {
            return; // a use names an open file: cannot happen
        };
        open.users -= 1;
        if open.users == 0 && !open.active {
            self.close(u.key);
        }
    }

    /// Closes a file: its ring leaves the Poll, and the descriptors close.
    fn close(&mut self, key: usize) {
        // Callers found `key` in `open` just before.
        let open = self.open.remove(key);
        self.by_id.remove(&open.id);
        if let (Some(fd), Some((registry, _))) = (open.engine.fd(), &self.registry) {
            let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
    }

    /// Where the rings go: `registry` (a clone is kept), file `key`'s under
    /// token `top - key`.
    pub fn attach(&mut self, registry: &Registry, top: usize) -> io::Result<()> {
        let registry = registry.try_clone()?;
        for (key, open) in &self.open {
            if let Some(fd) = open.engine.fd() {
                let fd = fd.as_raw_fd();
                registry.register(&mut SourceFd(&fd), Token(top - key), Interest::READABLE)?;
            }
        }
        self.registry = Some((registry, top));
        Ok(())
    }

    /// `extents`, from the file connection `conn` has open, as large as it
    /// was told the file is.
    pub fn extents(
        &self,
        conn: u64,
        offset: u64,
        len: u64,
        max: usize,
        out: &mut Vec<Extent>,
    ) -> io::Result<()> {
        let Some((u, open)) = self.of(conn) else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        let layout = Layout {
            file: &open.file,
            block_device: open.block_device,
            size: u.size,
        };
        layout.extents(offset, len, max, out)
    }

    fn of(&self, conn: u64) -> Option<(Use, &Open)> {
        let u = *self.conns.get(&conn)?;
        Some((u, self.open.get(u.key)?))
    }

    /// Hands `op` to the engine of the file connection `conn` has open.
    pub fn submit(&mut self, op: Op, tag: Tag, conn: u64) {
        let Some(u) = self.conns.get(&conn) else {
            return self.orphan(op, tag);
        };
        let key = u.key;
        let Some(open) = self.open.get_mut(key) else {
            return self.orphan(op, tag);
        };
        // The engine above allows what one of these has room for.
        if let Err((op, tag)) = open.engine.submit(op, tag) {
            return self.orphan(op, tag);
        }
        if !open.active {
            open.active = true;
            self.active.push(key);
        }
    }

    /// An operation with nowhere to go: it fails (EIO), its buffer back.
    fn orphan(&mut self, op: Op, tag: Tag) {
        let buf = match op {
            Op::Read { buf, .. } | Op::Write { buf, .. } => buf,
            _ => Vec::new(),
        };
        let result = Err(io::Error::from_raw_os_error(libc::EIO));
        self.orphans.push(Done { tag, result, buf });
    }

    pub fn run(&mut self) {
        for &key in &self.active {
            if let Some(open) = self.open.get_mut(key) {
                open.engine.run();
            }
        }
    }

    /// Every active file's completions; files with nothing left in flight
    /// leave the active list, and close if nobody uses them.
    pub fn reap(&mut self, out: &mut Vec<Done>) {
        out.append(&mut self.orphans);
        let mut idle = Vec::new();
        for &key in &self.active {
            let Some(open) = self.open.get_mut(key) else {
                continue;
            };
            open.engine.reap(out);
            if open.engine.in_flight() == 0 {
                open.active = false;
                idle.push(key);
            }
        }
        if idle.is_empty() {
            return;
        }
        self.active.retain(|k| !idle.contains(k));
        for key in idle {
            if self.open.get(key).is_some_and(|o| o.users == 0) {
                self.close(key);
            }
        }
    }

    pub fn busy(&self) -> bool {
        !self.orphans.is_empty()
            || self
                .active
                .iter()
                .any(|&k| self.open.get(k).is_some_and(|o| o.engine.busy()))
    }

    pub fn in_flight(&self) -> usize {
        let files: usize = (self.active.iter())
            .filter_map(|&k| self.open.get(k))
            .map(|o| o.engine.in_flight())
            .sum();
        files + self.orphans.len()
    }

    /// Files open now (for tests).
    #[cfg(test)]
    pub fn open_count(&self) -> usize {
        self.open.len()
    }
}

/// What a client is told of an image.
fn found(image: &Image) -> Found {
    Found {
        size: image.size,
        read_only: image.read_only,
        min_block: image.min_block,
    }
}
