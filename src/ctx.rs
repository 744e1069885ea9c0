//! What every connection shares: the one context type, owned by the server and
//! lent to a connection for each of its turns (and to the fuzz harness, which
//! drives the same code without sockets).

use std::collections::VecDeque;
use std::time::Instant;

use slab::Slab;

use crate::backend::{Backend, Extent};
use crate::budget::Budget;
use crate::buf::Pool;
use crate::export::Export;
use crate::lifecycle::Lifecycle;
use crate::origin::Origin;
use crate::proto::request::Request;
use crate::session::Session;

/// A request the engine is working on: who asked, and what its reply needs.
#[derive(Debug, Clone, Copy)]
pub struct InFlight {
    pub origin: Origin,
    pub session: Session,
    pub req: Request,
    /// The length it acts on.
    pub effect: u64,
}

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
    /// Requests handed to the backend's I/O engine, by the tag their completion
    /// carries: the reply is built when it comes back, whoever asked is still there.
    pub inflight: Slab<InFlight>,
    /// Connections holding a request the engine had no room for, in the order
    /// they asked: resumed in that order as room frees, so none starves.
    pub waiting: VecDeque<Origin>,
    /// The connection whose turn it is.
    pub serving: Origin,
    /// What connections hold in buffers, against `--memory-budget`, and who
    /// waits for memory to free.
    pub budget: Budget,
    /// The TLS configuration STARTTLS begins sessions with (`--tls=on|require`).
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
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
            inflight: Slab::new(),
            waiting: VecDeque::new(),
            serving: Origin { key: 0, serial: 0 },
            budget: Budget::unlimited(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// New options and requests are refused (see `Lifecycle`).
    pub fn shutting_down(&self) -> bool {
        self.lifecycle.shutting_down()
    }
}
