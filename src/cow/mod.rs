//! `--filter=cow`: a writable overlay over a backend that is opened
//! read-only and never written. Writes, zeroing and trims go to blocks of an
//! overlay file (unnamed, in `$TMPDIR`); reads of blocks never written come
//! from below; block status says what is really there in either layer.
//!
//! It is a storage layer, not a stage: the backend's place is taken by
//! `Cow`, whose data goes through an engine of its own (`engine.rs`, an
//! `aio::Remote`) that drives two others, the overlay file's (io_uring, or
//! the synchronous fallback) and the layer below's (a file's ring, the curl
//! backend's connections, or data at hand), without ever waiting on either.
//!
//! One overlay for all connections (as nbdkit's), or with `cow-per-client`
//! one per connection, dropped when it goes (as nbd-server's copy-on-write).
//!
//! - `map.rs`: which blocks a view holds, and where; the file's slots;
//! - `plan.rs`: where a request's bytes are, in runs;
//! - `locks.rs`: blocks being changed, and who waits for them;
//! - `job.rs`, `stages.rs`: one request's way through the engine;
//! - `overlay.rs`: making the file.

mod engine;
mod job;
mod locks;
mod map;
mod overlay;
mod plan;
mod stages;
#[cfg(test)]
mod tests;

use std::cell::{RefCell, RefMut};
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use mio::Registry;

use crate::aio::{Done, Engine, Op, Remote, Tag};
use crate::backend::{Access, Backend, Below, Caps, Extent};
use engine::Core;

/// nbdkit's default block size.
pub const DEFAULT_BLOCK: u64 = 64 << 10;
/// The smallest block (nbdkit's), and the largest (a block is read whole
/// for a partial write: more would make small writes costly).
pub const MIN_BLOCK: u64 = 4 << 10;
pub const MAX_BLOCK: u64 = 32 << 20;

/// When reads copy what they read from below into the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnRead {
    Never,
    Always,
    /// While this file exists (looked at for each read).
    While(PathBuf),
}

/// The filter's parameters, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// A power of two from `MIN_BLOCK` to `MAX_BLOCK`.
    pub block_size: u64,
    pub on_read: OnRead,
    /// Cache requests copy blocks from below into the overlay.
    pub on_cache: bool,
    /// Each connection has an overlay of its own.
    pub per_client: bool,
}

/// The backend that serves in place of the one below.
pub struct Cow {
    core: Rc<RefCell<Core>>,
    engine: Engine,
    size: u64,
    caps: Caps,
}

impl Cow {
    /// The overlay over `below` (opened read-only), its file made in
    /// `$TMPDIR`. Err: one line for the user.
    pub fn new(settings: Settings, below: Box<dyn Backend>) -> Result<Cow, String> {
        let min = u64::from(below.caps().min_block);
        if !settings.block_size.is_multiple_of(min) {
            return Err(format!(
                "cow-block-size={} is not a multiple of the backend's block size ({min})",
                settings.block_size
            ));
        }
        let dir = overlay::dir();
        let file = overlay::create(&dir).map_err(|e| {
            let e = crate::error::plain(&e);
            format!("cannot make the overlay in {}: {e}", dir.display())
        })?;
        log::debug!(
            "cow: overlay in {}, blocks of {} KiB, {}",
            dir.display(),
            settings.block_size >> 10,
            if settings.per_client {
                "one per connection"
            } else {
                "shared by every connection"
            }
        );
        let caps = Caps {
            read_only: false,
            zero: true,
            fast_zero: true,
            extents: true,
            sparse_reads: false,
            min_block: below.caps().min_block,
            multi_conn: !settings.per_client,
        };
        let size = below.size();
        let overlay = Engine::new(Rc::new(file), crate::aio::sync_asked());
        let core = Rc::new(RefCell::new(Core::new(
            settings,
            Below::new(below),
            overlay,
        )));
        Ok(Cow {
            engine: Engine::remote(Box::new(Io(core.clone()))),
            core,
            size,
            caps,
        })
    }

    fn core(&self) -> RefMut<'_, Core> {
        // The loop calls one method at a time, and none calls another while
        // it holds the core: it is never borrowed twice.
        self.core.borrow_mut()
    }
}

impl Backend for Cow {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        self.caps
    }

    fn access(&mut self) -> Access<'_> {
        Access::Engine(&mut self.engine)
    }

    fn extents(
        &mut self,
        offset: u64,
        len: u64,
        max: usize,
        out: &mut Vec<Extent>,
    ) -> io::Result<()> {
        // No connection: as one that has written nothing sees it.
        self.core().extents(0, offset, len, max, out)
    }

    fn extents_for(
        &mut self,
        conn: u64,
        offset: u64,
        len: u64,
        max: usize,
        out: &mut Vec<Extent>,
    ) -> io::Result<()> {
        self.core().extents(conn, offset, len, max, out)
    }

    fn closed(&mut self, conn: u64) {
        let mut core = self.core();
        core.client_gone(conn);
        core.below.backend().closed(conn);
    }

    /// At start-up nothing is in the overlay yet: what is below is all there is.
    fn read_at_start(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.core().below.backend().read_at_start(buf, offset)
    }
}

/// The core as the I/O engine the server drives.
struct Io(Rc<RefCell<Core>>);

impl Io {
    fn core(&self) -> RefMut<'_, Core> {
        // As `Cow::core`: never borrowed twice.
        self.0.borrow_mut()
    }
}

impl Remote for Io {
    fn submit(&mut self, op: Op, tag: Tag) {
        self.core().submit(op, tag, 0);
    }

    fn submit_from(&mut self, op: Op, tag: Tag, conn: u64) {
        self.core().submit(op, tag, conn);
    }

    fn run(&mut self) {
        self.core().run();
    }

    fn reap(&mut self, out: &mut Vec<Done>) {
        self.core().reap(out);
    }

    fn busy(&self) -> bool {
        self.core().busy()
    }

    fn in_flight(&self) -> usize {
        self.core().in_flight()
    }

    fn attach(&mut self, registry: &Registry, top: usize) -> io::Result<()> {
        self.core().attach(registry, top)
    }

    fn ready(&mut self, source: usize) {
        self.core().ready_source(source);
    }

    fn deadline(&self) -> Option<Instant> {
        self.core().below.deadline()
    }
}
