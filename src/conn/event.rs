//! What the server tells a connection (`Event`), and what it answers (`Step`).

use std::time::Duration;

use crate::aio::Done;
use crate::ctx::InFlight;

/// What the server tells a connection.
#[derive(Debug)]
pub enum Event {
    /// The kernel reported readiness on its socket.
    Ready(Readiness),
    /// Its turn again, without news from the kernel: it yielded, it was just
    /// accepted, or a shutdown is waiting for it to go quiet.
    Resume,
    /// The server is shutting down: look at the socket once more, so that
    /// requests already sent are answered (with ESHUTDOWN) before we hang up.
    Shutdown,
    /// The handshake deadline the server queued for connection `serial` (slab
    /// keys are reused: the serial tells whether it is still this one's), set
    /// `after` its start, has passed.
    Deadline { serial: u64, after: Duration },
    /// Connection `serial` has left a request half-sent, with nothing more
    /// for `after` (`--request-timeout`).
    Stalled { serial: u64, after: Duration },
    /// The memory budget has room for what connection `serial` waits for.
    Memory { serial: u64 },
    /// The server is done with it (the grace period after a shutdown is over).
    Close,
    /// One of its requests came back from the I/O engine (routed by slab key:
    /// the origin's serial says whether it is really this connection's). Its
    /// reply is queued, not sent: the server resumes every connection that got
    /// completions once all of a wake-up's are in, so that their replies leave
    /// together, many to a writev.
    Completed { flight: InFlight, done: Done },
    /// The I/O engine has room again for the request connection `serial` was
    /// holding.
    Room { serial: u64 },
}

/// Readiness as mio reports it; errors and hang-ups count as both, so the next
/// read or write finds them.
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    pub read_closed: bool,
}

impl From<&mio::event::Event> for Readiness {
    fn from(ev: &mio::event::Event) -> Readiness {
        Readiness {
            readable: ev.is_readable() || ev.is_read_closed() || ev.is_error(),
            writable: ev.is_writable() || ev.is_write_closed() || ev.is_error(),
            read_closed: ev.is_read_closed() || ev.is_error(),
        }
    }
}

/// What the server should do with a connection after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until the next readiness event.
    Wait,
    /// Its turn is over but it has more to do: resume it soon.
    Yield,
    /// Finished: deregister and drop it.
    Close,
}
