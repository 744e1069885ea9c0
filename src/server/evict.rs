//! At the connection limit (which the memory budget sets, see
//! `crate::budget`), a new client is not turned away while a connection
//! keeps the server waiting: the one that has kept it waiting longest (a
//! request left half-sent, replies held unread), for at least `EVICT_AFTER`,
//! is dropped to make room. A client that finds no such connection waits at
//! the door (`Door`) for up to `PARK_FOR`, accepted but not yet served, and
//! comes in as soon as a place frees or a connection has waited long enough
//! to give it up; only then is it refused. A crowd that holds every place
//! without reading thus never locks fresh clients out, while clients that
//! read their replies keep theirs.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::Server;
use crate::listen::Peer;

/// How long a connection must have kept the server waiting before a new
/// client may take its place: long enough that a client reading a large
/// reply, its socket full for a moment, is not taken for one that stopped.
/// (The longest waiting goes first, and a reading client's wait starts over
/// with every reply it reads.)
const EVICT_AFTER: Duration = Duration::from_millis(100);
/// The stuck connections looked at, oldest first, for one that can go.
const CANDIDATES: usize = 16;
/// How long a client beyond the limit may wait at the door for a place.
const PARK_FOR: Duration = Duration::from_secs(1);
/// Clients waiting at the door at most (each holds a descriptor).
const PARK_MAX: usize = 8;
/// How often the door is looked at while clients wait there.
pub const DOOR_TICK: Duration = Duration::from_millis(20);
/// At most one line per this interval about clients dropped.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// A client accepted beyond the limit, waiting for a place.
struct Parked {
    fd: OwnedFd,
    peer: Peer,
    since: Instant,
}

/// Clients waiting for a place, and those dropped to make room (for the log).
#[derive(Default)]
pub struct Door {
    parked: VecDeque<Parked>,
    unlogged: u64,
    last_logged: Option<Instant>,
}

impl Door {
    /// Clients wait at the door: the loop looks again within `DOOR_TICK`.
    pub fn busy(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Says that connection `id` was dropped after keeping the server
    /// waiting `waited`; at most one line per interval.
    fn note(&mut self, id: u64, waited: Duration) {
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|t| now.duration_since(t) < LOG_INTERVAL)
        {
            return;
        }
        let n = std::mem::take(&mut self.unlogged);
        self.last_logged = Some(now);
        log::warn!(
            "at the connection limit: dropped {n} client(s) that kept the server waiting \
             (the last, conn {id}, for {:.1}s: a request half-sent, replies unread, \
             or waiting for memory others hold) \
             to make room for new ones",
            waited.as_secs_f64()
        );
    }
}

impl Server {
    /// A client beyond the connection limit: in, if a connection can make
    /// room for it; else it waits at the door, or is refused if the door is
    /// full.
    pub(super) fn at_the_limit(&mut self, fd: OwnedFd, peer: Peer, open: usize) {
        if self.make_room() {
            return self.admit(fd, &peer);
        }
        match self.door.parked.len() < PARK_MAX {
            true => self.door.parked.push_back(Parked {
                fd,
                peer,
                since: Instant::now(),
            }),
            false => self.acceptor.refuse(fd, open),
        }
    }

    /// Clients at the door come in while there is room or a connection can
    /// make it; those that waited `PARK_FOR` are refused.
    pub(super) fn open_the_door(&mut self) {
        let now = Instant::now();
        while let Some(since) = self.door.parked.front().map(|p| p.since) {
            let room = self.conns.len() < self.acceptor.max_connections() || self.make_room();
            if !room && now.duration_since(since) < PARK_FOR {
                return;
            }
            let Some(p) = self.door.parked.pop_front() else {
                return;
            };
            match room {
                true => self.admit(p.fd, &p.peer),
                false => self.acceptor.refuse(p.fd, self.conns.len()),
            }
        }
    }

    /// Drops the connection that has been stuck longest (its client keeps us
    /// waiting, or it waits for memory), if one has for `EVICT_AFTER`; true
    /// if it did (a new client may take its place). Only one whose replies
    /// left in the kernel (see `ghosts`) fit in the budget once what it held
    /// is given back: its place is taken at once, so what it leaves must be
    /// counted elsewhere. The oldest few are looked at (a system call each).
    fn make_room(&mut self) -> bool {
        let now = Instant::now();
        let budget = &self.shared.budget;
        let free = budget.shared().saturating_sub(budget.used());
        let mut stuck: Vec<(Instant, usize)> = self
            .conns
            .iter()
            .filter_map(|(key, c)| c.stuck_since().map(|since| (since, key)))
            .filter(|&(since, _)| since + EVICT_AFTER <= now)
            .collect();
        stuck.sort_unstable();
        let victim = stuck.iter().take(CANDIDATES).find(|&&(_, key)| {
            let c = &self.conns[key];
            free + c.counted() >= c.unsent_in_kernel()
        });
        let Some(&(since, key)) = victim else {
            return false;
        };
        self.door
            .note(self.conns[key].id(), now.duration_since(since));
        self.close(key);
        true
    }
}
