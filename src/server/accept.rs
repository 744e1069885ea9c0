//! Accepting clients: every listener on the one Poll, in batches, within the
//! connection limit, backing off when descriptors run out.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use mio::{Interest, Registry, Token};

use crate::listen::{Listener, Peer};
use crate::sys;

/// Listener `i` has token `LISTENER_TOP - i`; the tokens above are the server's.
pub const LISTENER_TOP: usize = usize::MAX - 16;
const MAX_LISTENERS: usize = 4096;
/// Clients accepted from one listener before the loop serves others.
const BATCH: usize = 64;
/// How long to stop accepting after running out of file descriptors.
const BACKOFF: Duration = Duration::from_millis(100);
/// Descriptors kept free beyond those open at start-up when the connection
/// limit is derived from RLIMIT_NOFILE: for accepting a client only to refuse
/// it, `--run`, notifications, and the odd file the libraries open.
const FD_HEADROOM: usize = 16;
/// At most one "connection limit reached" message per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The listener a token belongs to, if it is a listener's.
pub fn listener_of(token: Token) -> Option<usize> {
    let i = LISTENER_TOP.checked_sub(token.0)?;
    (i < MAX_LISTENERS).then_some(i)
}

/// Clients refused for the connection limit, logged at most once per interval.
#[derive(Debug, Default)]
struct Refusals {
    /// Refused since the last message.
    unlogged: u64,
    last_logged: Option<Instant>,
}

pub struct Acceptor {
    listeners: Vec<Option<Listener>>,
    /// Listeners with clients still queued after a batch: accepted from again
    /// without an event (their edge has been consumed).
    pending: Vec<usize>,
    /// Clients accepted beyond the connection limit: the server makes room
    /// for them (`Server::make_room`) or refuses them (`refuse`).
    over: Vec<(OwnedFd, Peer)>,
    paused_until: Option<Instant>,
    /// accept() ran out of descriptors (logged once until one succeeds again).
    out_of_fds: bool,
    refusals: Refusals,
    max_connections: usize,
    /// What set it, for the message that says it was reached.
    limited_by: Limiter,
    /// `-s` on an inherited listening socket: stop listening after the first client.
    once: bool,
}

impl Acceptor {
    /// Registers every listener. `max_connections` None: as many as the
    /// descriptor limit leaves room for, `open_fds` being those open now, and
    /// the memory budget holds (`memory`); given, no more than the budget holds.
    pub fn new(
        listeners: Vec<Listener>,
        registry: &Registry,
        max_connections: Option<usize>,
        open_fds: io::Result<usize>,
        memory: usize,
        once: bool,
    ) -> io::Result<Acceptor> {
        let mut all = Vec::new();
        for (i, mut l) in listeners.into_iter().enumerate().take(MAX_LISTENERS) {
            registry.register(l.source(), Token(LISTENER_TOP - i), Interest::READABLE)?;
            log::debug!("listening on {}", l.describe());
            all.push(Some(l));
        }
        let (max_connections, limited_by) = connection_limit(max_connections, open_fds, memory);
        Ok(Acceptor {
            listeners: all,
            pending: Vec::new(),
            over: Vec::new(),
            paused_until: None,
            out_of_fds: false,
            refusals: Refusals::default(),
            max_connections,
            limited_by,
            once,
        })
    }

    /// The most connections open at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// `-s` on a listening socket: its one client is the whole point.
    pub fn once(&self) -> bool {
        self.once
    }

    pub fn is_listening(&self) -> bool {
        self.listeners.iter().any(Option::is_some)
    }

    /// Listeners with clients left over from a batch: the loop must not sleep.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// When accepting resumes after running out of descriptors.
    pub fn resume_at(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Ends a back-off that is over; true if accepting may resume now.
    pub fn resume_if_due(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|t| now >= t) {
            self.paused_until = None;
            return true;
        }
        false
    }

    /// A connection closed, freeing a descriptor: true if accepting was paused
    /// and may resume now.
    pub fn slot_freed(&mut self) -> bool {
        self.paused_until.take().is_some()
    }

    /// Accepts a batch of the clients pending on listener `i` into `out`, given
    /// `open` connections: a flood of connections must not keep the loop from
    /// serving the ones it has. False if `-s` will never get its client.
    pub fn accept(
        &mut self,
        i: usize,
        open: usize,
        registry: &Registry,
        out: &mut Vec<(OwnedFd, Peer)>,
    ) -> bool {
        if self.paused_until.is_some() {
            return true;
        }
        for _ in 0..BATCH {
            let Some(Some(l)) = self.listeners.get(i) else {
                return true;
            };
            match l.accept() {
                Ok(client) if open + out.len() >= self.max_connections => {
                    self.out_of_fds = false;
                    self.over.push(client);
                }
                Ok(client) => {
                    self.out_of_fds = false;
                    out.push(client);
                    if self.once {
                        self.close_all(registry);
                        return true;
                    }
                }
                Err(e) => match e.raw_os_error() {
                    _ if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO) => continue,
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        if !self.out_of_fds {
                            log::warn!("accept: {e}: pausing new connections");
                            self.out_of_fds = true;
                        }
                        self.paused_until = Some(Instant::now() + BACKOFF);
                        return true;
                    }
                    _ => {
                        // Not a listening socket after all, or broken: never spin on it.
                        log::error!("accept on {}: {e}: no longer listening there", l.describe());
                        self.close(i, registry);
                        return !self.once;
                    }
                },
            }
        }
        self.pending.push(i); // more may be queued: after the others' turn
        true
    }

    /// Clients the last batch accepted beyond the connection limit.
    pub fn take_over(&mut self) -> Vec<(OwnedFd, Peer)> {
        std::mem::take(&mut self.over)
    }

    /// Listeners whose last batch left clients queued, for another round of
    /// `accept`.
    pub fn take_pending(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.pending)
    }

    pub fn all(&self) -> std::ops::Range<usize> {
        0..self.listeners.len()
    }

    /// Stops listening everywhere (shutdown, or `-s` got its client).
    pub fn close_all(&mut self, registry: &Registry) {
        for i in 0..self.listeners.len() {
            self.close(i, registry);
        }
        self.pending.clear();
    }

    fn close(&mut self, i: usize, registry: &Registry) {
        if let Some(mut l) = self.listeners.get_mut(i).and_then(Option::take) {
            let _ = registry.deregister(l.source());
        }
    }

    /// A client was refused for the connection limit (closed at once: it sees
    /// EOF): say so, but at most once per interval, so that a flood of
    /// connections is not a flood of messages.
    pub fn refuse(&mut self, client: OwnedFd, open: usize) {
        self.say_refused(open);
        drop(client); // after the line: whoever sees the close finds it said
    }

    fn say_refused(&mut self, open: usize) {
        self.refusals.unlogged += 1;
        let now = Instant::now();
        if self
            .refusals
            .last_logged
            .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        let n = std::mem::take(&mut self.refusals.unlogged);
        self.refusals.last_logged = Some(now);
        log::warn!(
            "{open} connections open, the limit ({}): refused {n} new client(s){}",
            self.limited_by.describe(self.max_connections),
            if n > 1 { " since the last message" } else { "" }
        );
    }
}

/// What the connection limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limiter {
    Given,
    Descriptors,
    Memory,
}

impl Limiter {
    fn describe(self, n: usize) -> String {
        match self {
            Limiter::Given => format!("--max-connections {n}"),
            Limiter::Descriptors => format!("{n}, what the descriptor limit leaves room for"),
            Limiter::Memory => format!("{n}, what the memory budget holds"),
        }
    }
}

/// The connection limit: as given, or as many as the descriptor limit leaves
/// room for beyond the descriptors already open (listeners, the backend, the
/// Poll, the standard streams) and a little headroom; never more than the
/// memory budget holds at their worst (`memory`), so that no client behaviour
/// can take the server past it.
fn connection_limit(
    given: Option<usize>,
    open_fds: io::Result<usize>,
    memory: usize,
) -> (usize, Limiter) {
    let open = open_fds.unwrap_or(FD_HEADROOM);
    let limit = sys::nofile_limit().map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let room = limit.map(|l| l.saturating_sub(open + FD_HEADROOM).max(1));
    match (given, room) {
        (Some(n), _) if n > memory => {
            log::warn!(
                "--max-connections {n}: the memory budget holds {memory} connections at their \
                 worst; serving at most {memory} (a larger --memory-budget holds more)"
            );
            (memory, Limiter::Memory)
        }
        (Some(n), Ok(room)) if n > room => {
            log::warn!(
                "--max-connections {n}: the descriptor limit leaves room for about {room}; \
                 clients beyond that wait until others leave"
            );
            (n, Limiter::Given)
        }
        (Some(n), _) => (n, Limiter::Given),
        (None, Ok(room)) if room < memory => (room, Limiter::Descriptors),
        (None, Ok(_)) => (memory, Limiter::Memory),
        (None, Err(e)) => {
            log::warn!("RLIMIT_NOFILE: {e}: the memory budget's connection limit only");
            (memory, Limiter::Memory)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_back_to_listeners() {
        assert_eq!(listener_of(Token(LISTENER_TOP)), Some(0));
        assert_eq!(listener_of(Token(LISTENER_TOP - 5)), Some(5));
        assert_eq!(listener_of(Token(LISTENER_TOP + 1)), None);
        assert_eq!(listener_of(Token(7)), None);
    }
}
