//! A request left half-sent (`--request-timeout`): the connection notes since
//! when it has waited for the rest of one, and the deadline the server queued
//! for it (`Server::arm_stall`). Only waiting for the client counts: a
//! connection the server holds back (no memory, no room in the I/O engine, too
//! many unsent replies) is not timed.

use std::time::Instant;

use super::Conn;

impl Conn {
    /// Since when it has left a request half-sent, with nothing more arriving
    /// while we wait for it; None if it has not.
    pub fn half_sent_since(&self) -> Option<Instant> {
        self.stalled_since
    }

    /// The `--request-timeout` deadline the server queued for the current
    /// half-sent request (it queues one when there is none).
    pub fn stall_deadline(&self) -> Option<Instant> {
        self.stall_deadline
    }

    pub fn set_stall_deadline(&mut self, at: Instant) {
        self.stall_deadline = Some(at);
    }

    /// Whether a half-sent deadline queued `at` for connection `serial` still
    /// counts: it is this one's, and the current one.
    pub fn stalled(&self, serial: u64, at: Instant) -> bool {
        self.id == serial && self.stall_deadline == Some(at)
    }

    /// After a turn: whether it now waits for the rest of a half-sent request
    /// (in transmission: the handshake has its own timeout), and since when.
    pub(super) fn note_stall(&mut self, now: Instant) {
        let stalled =
            self.awaiting_input && !self.driver.in_handshake() && self.driver.mid_message();
        self.stalled_since = match (stalled, self.stalled_since) {
            (false, _) => None,
            (true, Some(since)) if !self.got_input => Some(since),
            (true, _) => Some(now),
        };
        if self.stalled_since.is_none() {
            self.stall_deadline = None;
        }
    }
}
