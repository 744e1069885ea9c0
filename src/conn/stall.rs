//! A request left half-sent (`--request-timeout`): the connection notes since
//! when it has waited for the rest of one, and the deadline the server queued
//! for it (`Server::arm_stall`). Only waiting for the client counts: a
//! connection the server holds back (no memory, no room in the I/O engine, too
//! many unsent replies) is not timed.

use std::time::Instant;

use super::Conn;

/// Whether, and since when, a connection waits for the rest of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// Not waiting for the client in the middle of a request.
    No,
    /// Waiting since `since` (its last byte, or the turn that found it
    /// waiting); `deadline` is the one the server queued, once it has.
    Since {
        since: Instant,
        deadline: Option<Instant>,
    },
}

impl Stall {
    /// After a turn that ended `awaiting` the client's bytes (or not) with
    /// part of a request pending (or not), having had input (`got_input`) or not.
    pub fn after_turn(self, half_sent: bool, got_input: bool, now: Instant) -> Stall {
        match (half_sent, self) {
            (false, _) => Stall::No,
            (true, Stall::Since { since, deadline }) if !got_input => {
                Stall::Since { since, deadline }
            }
            // A new byte: counted from now; the deadline queued stays, and is
            // looked at again when it falls (`Server::expire_stalls`).
            (true, Stall::Since { deadline, .. }) => Stall::Since {
                since: now,
                deadline,
            },
            (true, Stall::No) => Stall::Since {
                since: now,
                deadline: None,
            },
        }
    }
}

impl Conn {
    /// Since when it has left a request half-sent, with nothing more arriving
    /// while we wait for it; None if it has not.
    pub fn half_sent_since(&self) -> Option<Instant> {
        match self.stall {
            Stall::Since { since, .. } => Some(since),
            Stall::No => None,
        }
    }

    /// The `--request-timeout` deadline the server queued for the current
    /// half-sent request (it queues one when there is none).
    pub fn stall_deadline(&self) -> Option<Instant> {
        match self.stall {
            Stall::Since { deadline, .. } => deadline,
            Stall::No => None,
        }
    }

    pub fn set_stall_deadline(&mut self, at: Instant) {
        if let Stall::Since { deadline, .. } = &mut self.stall {
            *deadline = Some(at);
        }
    }

    /// Whether a half-sent deadline queued `at` still counts: it is the
    /// current one.
    pub fn stalled(&self, at: Instant) -> bool {
        self.stall_deadline() == Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stall_follows_the_turns() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let s = Stall::No.after_turn(true, true, t0);
        assert_eq!(
            s,
            Stall::Since {
                since: t0,
                deadline: None
            }
        );
        let armed = Stall::Since {
            since: t0,
            deadline: Some(t1),
        };
        assert_eq!(armed.after_turn(true, false, t1), armed, "nothing new");
        let moved = armed.after_turn(true, true, t1);
        assert_eq!(
            moved,
            Stall::Since {
                since: t1,
                deadline: Some(t1)
            }
        );
        assert_eq!(armed.after_turn(false, true, t1), Stall::No);
    }
}
