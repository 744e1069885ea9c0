//! What a connection leaves behind when the server drops it (a timeout, a
//! place given up at the connection limit, an error): the replies its client
//! has not read yet, still queued in the kernel and charged to the server
//! (a Unix socket's queue lives until its client reads it or closes, whether
//! we close ours or not). Such a socket is kept as a ghost: shut for writing,
//! so that its client reads what is queued and then the end, and counted in
//! the memory budget's shared part until the queue is gone. An attacker that
//! has its connections dropped over and over, never reading, thus fills the
//! budget with what it left, not the host's memory behind the budget's back.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::budget::Budget;
use crate::sys;

/// How often ghosts are looked at.
pub const SWEEP_EVERY: Duration = Duration::from_millis(200);

struct Ghost {
    fd: OwnedFd,
    /// What the budget counts it for: its queue when last looked at.
    counted: usize,
}

/// How many ghosts may be kept, and how many bytes of queue in all.
#[derive(Debug, Clone, Copy)]
pub struct Room {
    pub count: usize,
    pub bytes: usize,
}

#[derive(Default)]
pub struct Ghosts {
    list: Vec<Ghost>,
    swept: Option<Instant>,
}

impl Ghosts {
    /// Keeps `fd`, whose queue still holds `unsent` bytes for its client,
    /// within `room`: past it, the oldest ghosts are let go (their queues no
    /// longer counted: the kernel frees them when their clients read or go).
    /// Bounded so that what attackers leave behind cannot take the shared
    /// part from the clients still served, nor their descriptors.
    pub fn add(&mut self, fd: OwnedFd, unsent: usize, room: Room, budget: &mut Budget) {
        let _ = sys::net::shutdown_write(fd.as_fd());
        if room.count == 0 || unsent > room.bytes {
            return; // let go at once
        }
        while self.list.len() >= room.count || self.counted() + unsent > room.bytes {
            let oldest = self.list.remove(0);
            budget.give(oldest.counted);
        }
        budget.take(unsent);
        self.list.push(Ghost {
            fd,
            counted: unsent,
        });
    }

    /// What the budget counts for them all.
    fn counted(&self) -> usize {
        self.list.iter().map(|g| g.counted).sum()
    }

    /// When the next look is due, if there are ghosts.
    pub fn next(&self) -> Option<Instant> {
        if self.list.is_empty() {
            return None;
        }
        Some(self.swept.map_or_else(Instant::now, |t| t + SWEEP_EVERY))
    }

    /// Looks at each ghost's queue if it is time: what its client read goes
    /// back to the budget, and a ghost whose queue is empty goes.
    pub fn sweep(&mut self, now: Instant, budget: &mut Budget) {
        if self.list.is_empty() || self.swept.is_some_and(|t| now < t + SWEEP_EVERY) {
            return;
        }
        self.swept = Some(now);
        self.list.retain_mut(|g| {
            let fd = g.fd.as_fd();
            // A peer gone (closed, reset) took what was queued for it with it.
            let left = match sys::net::hung_up(fd) {
                true => 0,
                false => sys::net::unsent_bytes(fd).unwrap_or(0),
            };
            budget.give(g.counted - left.min(g.counted));
            g.counted = left.min(g.counted);
            g.counted > 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn ghost() -> (OwnedFd, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("a socket pair");
        (ours.into(), theirs)
    }

    #[test]
    fn kept_within_their_room() {
        let mut budget = Budget::new(64 << 20);
        let mut ghosts = Ghosts::default();
        let mut peers = Vec::new();
        let room = Room {
            count: 3,
            bytes: 100,
        };
        for unsent in [40, 40, 40, 10, 10] {
            let (fd, peer) = ghost();
            peers.push(peer);
            ghosts.add(fd, unsent, room, &mut budget);
            assert!(ghosts.list.len() <= 3 && ghosts.counted() <= 100);
            assert_eq!(budget.used(), ghosts.counted());
        }
        assert_eq!(ghosts.counted(), 60, "40 + 10 + 10: the oldest went");
        // One larger than the room, or no room at all: not kept.
        let (fd, _peer) = ghost();
        ghosts.add(fd, 101, room, &mut budget);
        let (fd, _peer) = ghost();
        ghosts.add(
            fd,
            1,
            Room {
                count: 0,
                bytes: 100,
            },
            &mut budget,
        );
        assert_eq!((ghosts.list.len(), budget.used()), (3, 60));
    }
}
