//! The loop's two timeouts, each one queue (`deadlines`): the handshake's,
//! counted from the accept, and a stalled client's (`--request-timeout`: a
//! request half-sent, or replies held unread), counted from its last progress.
//! Both are enforced only after a wake-up's input has been read (`Server::run`).

use std::time::Instant;

use super::{Server, negotiating};
use crate::conn::{Conn, Event};
use crate::origin::Origin;

impl Server {
    /// Drops clients whose handshake deadline had passed by `now`.
    pub(super) fn expire_handshakes(&mut self, now: Instant) {
        let after = self.deadlines.timeout().unwrap_or_default();
        loop {
            let conns = &self.conns;
            let live = |o, _| negotiating(conns, o);
            let Some(to) = self.deadlines.expired(now, live) else {
                return;
            };
            self.route(to, Event::Deadline { after });
        }
    }

    /// Drops clients stalled (a request half-sent, replies unread) for the
    /// timeout by `now`; one that made progress after its deadline was
    /// queued gets a new one, counted from then.
    pub(super) fn expire_stalls(&mut self, now: Instant) {
        let after = self.stalls.timeout().unwrap_or_default();
        loop {
            let conns = &self.conns;
            let live = |o, at| stalled(conns, o, at);
            let Some(to) = self.stalls.expired(now, live) else {
                return;
            };
            let since = self.conns.get(to.key).and_then(Conn::stalled_since);
            match since {
                Some(since) if since + after > now => self.queue_stall(to, since),
                _ => self.route(to, Event::Stalled { after }),
            }
        }
    }

    /// Queues the `--request-timeout` deadline of a connection that has just
    /// stalled (a request half-sent, replies unread).
    pub(super) fn arm_stall(&mut self, to: Origin) {
        let Some(conn) = self.conns.get(to.key) else {
            return;
        };
        if let Some(since) = conn.stalled_since()
            && conn.stall_deadline().is_none()
        {
            self.queue_stall(to, since);
        }
    }

    /// Queues connection `to`'s stall deadline, counted from `since`.
    pub(super) fn queue_stall(&mut self, to: Origin, since: Instant) {
        let (Some(t), Some(conn)) = (self.stalls.timeout(), self.conns.get_mut(to.key)) else {
            return;
        };
        conn.set_stall_deadline(since + t); // first: the queue checks entries against it
        let conns = &self.conns;
        let live = |o, at| stalled(conns, o, at);
        self.stalls.push(to, since, conns.len(), live);
    }
}

/// Whether a stall deadline queued `at` for `to` still counts: the
/// connection is there, and it is its current deadline.
fn stalled(conns: &slab::Slab<Conn>, to: Origin, at: Instant) -> bool {
    conns
        .get(to.key)
        .is_some_and(|c| c.origin() == to && c.stalled(at))
}
