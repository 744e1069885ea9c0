//! What the server tells a connection (`Event`), and what it answers (`Step`).

use std::time::Duration;

use std::time::Instant;

use crate::aio::Done;
use crate::filter::Held;
use crate::storage::Flight;

/// What the server tells a connection. Each was addressed by an `Origin`, and
/// the server checked it still names this connection before handing it over:
/// nothing here is for a predecessor in the same slab slot.
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
    /// The handshake deadline the server queued, set `after` the connection
    /// began, has passed (it counts only while the handshake goes on).
    Deadline { after: Duration },
    /// The `--request-timeout` deadline queued for a stall (a half-sent
    /// request, replies unread) has passed: no progress for `after`.
    Stalled { after: Duration },
    /// The memory budget has room for what the connection waits for.
    Memory,
    /// The server is done with it (the grace period after a shutdown is over).
    Close,
    /// One of its requests came back from the I/O engine. Its reply is
    /// queued, not sent: the server resumes every connection that got
    /// completions once all of a wake-up's are in, so that their replies leave
    /// together, many to a writev.
    Completed { flight: Flight, done: Done },
    /// The I/O engine has room again for the request it was holding; it is
    /// out of the server's queue for room.
    Room,
    /// A request a filter held is due. Like a completion, its reply (if it
    /// gets one now) is sent at the server's next Resume.
    Released(Held),
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
    /// Nothing to do until the next event.
    Wait,
    /// As `Wait`, and it now holds a request the I/O engine has no room for:
    /// the server queues it, and sends `Room` in turn.
    WaitForRoom,
    /// As `Wait`, and it wants a `Resume` at this time too (a filter holds it).
    Sleep(Instant),
    /// Its turn is over but it has more to do: resume it soon.
    Yield,
    /// Finished: deregister and drop it.
    Close,
}
