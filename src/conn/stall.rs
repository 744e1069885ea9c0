//! A connection that keeps the server waiting (`--request-timeout`): it left
//! a request half-sent, or it holds replies it does not read (its socket is
//! full, and our buffers hold the rest). It notes since when, and the deadline
//! the server queued for it (`Server::arm_stall`). Only waiting for the client
//! counts: a connection the server holds back (no memory, no room in the I/O
//! engine) is not timed; one that holds memory without reading its replies
//! is, whatever its requests' sizes, since the memory it holds is others'.

use std::time::Instant;

use super::Conn;

/// What the client keeps the server waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Await {
    /// The rest of a half-sent request.
    Input,
    /// Room in its socket for replies we hold: the least of them still
    /// unsent since it began to wait (less means it read some).
    Reader { unsent: usize },
}

/// What a turn ended waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waits {
    Nothing,
    /// The rest of a request; whether any of it came this turn.
    Input {
        got: bool,
    },
    /// The client to read `unsent` bytes of replies.
    Reader {
        unsent: usize,
    },
}

/// Whether, and since when, the client keeps us waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    No,
    /// Waiting since `since` (its last progress, or the turn that found it
    /// waiting); `deadline` is the one the server queued, once it has.
    Since {
        on: Await,
        since: Instant,
        deadline: Option<Instant>,
    },
}

impl Stall {
    /// After a turn that ended as `waits` says.
    pub fn after_turn(self, waits: Waits, now: Instant) -> Stall {
        let fresh = |on| Stall::Since {
            on,
            since: now,
            deadline: None,
        };
        let Stall::Since {
            on,
            since,
            deadline,
        } = self
        else {
            return match waits {
                Waits::Nothing => Stall::No,
                Waits::Input { .. } => fresh(Await::Input),
                Waits::Reader { unsent } => fresh(Await::Reader { unsent }),
            };
        };
        // Progress counts from now; the deadline queued stays, and is looked
        // at again when it falls (`Server::expire_stalls`).
        let (on, progress) = match (on, waits) {
            (_, Waits::Nothing) => return Stall::No,
            (Await::Input, Waits::Input { got }) => (on, got),
            (Await::Reader { unsent: least }, Waits::Reader { unsent }) => {
                let on = Await::Reader {
                    unsent: least.min(unsent),
                };
                (on, unsent < least)
            }
            (_, Waits::Input { .. }) => return fresh(Await::Input),
            (_, Waits::Reader { unsent }) => return fresh(Await::Reader { unsent }),
        };
        let since = if progress { now } else { since };
        Stall::Since {
            on,
            since,
            deadline,
        }
    }
}

impl Conn {
    /// Since when it has kept us waiting (a request half-sent, or replies
    /// unread), with no progress; None if it has not.
    pub fn stalled_since(&self) -> Option<Instant> {
        match self.stall {
            Stall::Since { since, .. } => Some(since),
            Stall::No => None,
        }
    }

    /// Since when it has left a request half-sent, with nothing more arriving
    /// while we wait for it; None if it has not (what the tests look at).
    #[cfg(test)]
    pub fn half_sent_since(&self) -> Option<Instant> {
        match self.stall {
            Stall::Since {
                on: Await::Input,
                since,
                ..
            } => Some(since),
            _ => None,
        }
    }

    /// The `--request-timeout` deadline the server queued for the current
    /// wait (it queues one when there is none).
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

    /// Whether a deadline queued `at` still counts: it is the current one.
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
        let s = Stall::No.after_turn(Waits::Input { got: true }, t0);
        let waiting = Stall::Since {
            on: Await::Input,
            since: t0,
            deadline: None,
        };
        assert_eq!(s, waiting);
        let armed = Stall::Since {
            on: Await::Input,
            since: t0,
            deadline: Some(t1),
        };
        assert_eq!(armed.after_turn(Waits::Input { got: false }, t1), armed);
        let moved = armed.after_turn(Waits::Input { got: true }, t1);
        let expect = Stall::Since {
            on: Await::Input,
            since: t1,
            deadline: Some(t1),
        };
        assert_eq!(moved, expect);
        assert_eq!(armed.after_turn(Waits::Nothing, t1), Stall::No);
    }

    #[test]
    fn unread_replies_count_until_some_are_read() {
        let t0 = Instant::now();
        let (t1, t2) = (t0 + Duration::from_secs(1), t0 + Duration::from_secs(2));
        let s = Stall::No.after_turn(Waits::Reader { unsent: 100 }, t0);
        // More replies queued, none read: still waiting since t0.
        let s = s.after_turn(Waits::Reader { unsent: 300 }, t1);
        assert_eq!(
            s,
            Stall::Since {
                on: Await::Reader { unsent: 100 },
                since: t0,
                deadline: None
            }
        );
        // Some read: counted from now.
        let s = s.after_turn(Waits::Reader { unsent: 50 }, t2);
        assert!(matches!(s, Stall::Since { since, .. } if since == t2));
        // A half-sent request next: a new wait.
        let s = s.after_turn(Waits::Input { got: false }, t2);
        assert!(matches!(
            s,
            Stall::Since {
                on: Await::Input,
                deadline: None,
                ..
            }
        ));
    }
}
