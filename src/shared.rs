//! What every connection shares, owned by the server and lent to a connection
//! for each of its turns (and to the fuzz harness, which drives the same code
//! without sockets). Split by what it is for, so that each step borrows only
//! what it uses: a request's pipeline the storage and the output's pool, the
//! handshake the export and the lifecycle, the memory accounting the budget.
//! Who is being served is never in here: it is passed along as an `Origin`.

use std::time::Instant;

use crate::backend::Backend;
use crate::budget::Budget;
use crate::buf::Pool;
use crate::export::Export;
use crate::lifecycle::Lifecycle;
use crate::storage::Storage;

pub struct Shared {
    /// The export, its backend and the requests in its I/O engine.
    pub storage: Storage,
    /// Buffers lent to connections while they have bytes in flight.
    pub pool: Pool,
    /// What connections hold in buffers, against `--memory-budget`, and who
    /// waits for memory to free.
    pub budget: Budget,
    /// When the server ends, and whether new options and requests are refused.
    pub lifecycle: Lifecycle,
    /// The loop's clock, read once per wake-up.
    pub now: Instant,
    /// The TLS configuration STARTTLS begins sessions with (`--tls=on|require`).
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl Shared {
    /// A server's shared state with an unlimited memory budget and no TLS:
    /// what the fuzz harness and the unit tests start from.
    pub fn new(backend: Box<dyn Backend>, export: Export, lifecycle: Lifecycle) -> Shared {
        Shared {
            storage: Storage::new(backend, export),
            pool: Pool::default(),
            budget: Budget::unlimited(),
            lifecycle,
            now: Instant::now(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}
