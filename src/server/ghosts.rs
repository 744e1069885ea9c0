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

#[derive(Default)]
pub struct Ghosts {
    list: Vec<Ghost>,
    swept: Option<Instant>,
}

impl Ghosts {
    /// Keeps `fd`, whose queue still holds `unsent` bytes for its client, at
    /// most `max` ghosts in all: past that, the oldest is let go (its queue
    /// no longer counted: the kernel frees it when its client reads or goes).
    pub fn add(&mut self, fd: OwnedFd, unsent: usize, max: usize, budget: &mut Budget) {
        let _ = sys::net::shutdown_write(fd.as_fd());
        if self.list.len() >= max.max(1) {
            let oldest = self.list.remove(0);
            budget.give(oldest.counted);
        }
        budget.take(unsent);
        self.list.push(Ghost {
            fd,
            counted: unsent,
        });
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
