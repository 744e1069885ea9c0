//! What every connection shares: the one context type, owned by the server and
//! lent to a connection for each of its turns (and to the fuzz harness, which
//! drives the same code without sockets).

use std::time::Instant;

use crate::backend::{Backend, Extent};
use crate::buf::Pool;
use crate::export::Export;
use crate::lifecycle::Lifecycle;

pub struct Ctx {
    /// The storage; single-threaded, so `&mut` is all the locking there is.
    pub backend: Box<dyn Backend>,
    pub export: Export,
    /// Scratch space for extents, reused by every request.
    pub extents: Vec<Extent>,
    /// Buffers lent to connections while they have bytes in flight.
    pub pool: Pool,
    /// The loop's clock, read once per wake-up.
    pub now: Instant,
    pub lifecycle: Lifecycle,
}

impl Ctx {
    pub fn new(backend: Box<dyn Backend>, export: Export, lifecycle: Lifecycle) -> Ctx {
        Ctx {
            backend,
            export,
            extents: Vec::new(),
            pool: Pool::default(),
            now: Instant::now(),
            lifecycle,
        }
    }

    /// New options and requests are refused (see `Lifecycle`).
    pub fn shutting_down(&self) -> bool {
        self.lifecycle.shutting_down()
    }
}
