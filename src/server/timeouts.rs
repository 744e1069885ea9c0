//! The loop's two timeouts, each one queue (`deadlines`): the handshake's,
//! counted from the accept, and a half-sent request's (`--request-timeout`),
//! counted from the last byte that came while the server waited for the rest.
//! Both are enforced only after a wake-up's input has been read (`Server::run`).

use std::time::Instant;

use super::Server;
use crate::conn::{Conn, Event};

impl Server {
    /// Drops clients whose handshake deadline had passed by `now`.
    pub(super) fn expire_handshakes(&mut self, now: Instant) {
        let after = self.deadlines.timeout().unwrap_or_default();
        loop {
            let conns = &self.conns;
            let live = |k, s, _| conns.get(k).is_some_and(|c: &Conn| c.negotiating(s));
            let Some((key, serial)) = self.deadlines.expired(now, live) else {
                return;
            };
            self.serve(key, Event::Deadline { serial, after });
        }
    }

    /// Drops clients that left a request half-sent, with nothing more for
    /// the timeout by `now`; one whose last byte came after its deadline was
    /// queued gets a new one, counted from that byte.
    pub(super) fn expire_stalls(&mut self, now: Instant) {
        let after = self.stalls.timeout().unwrap_or_default();
        loop {
            let conns = &self.conns;
            let live = |k, s, at| conns.get(k).is_some_and(|c: &Conn| c.stalled(s, at));
            let Some((key, serial)) = self.stalls.expired(now, live) else {
                return;
            };
            let since = self.conns.get(key).and_then(Conn::half_sent_since);
            match since {
                Some(since) if since + after > now => self.queue_stall(key, since),
                _ => self.serve(key, Event::Stalled { serial, after }),
            }
        }
    }

    /// Queues the `--request-timeout` deadline of a connection that has just
    /// begun to wait for the rest of a half-sent request.
    pub(super) fn arm_stall(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if let Some(since) = conn.half_sent_since()
            && conn.stall_deadline().is_none()
        {
            self.queue_stall(key, since);
        }
    }

    /// Queues connection `key`'s half-sent deadline, counted from `since`.
    pub(super) fn queue_stall(&mut self, key: usize, since: Instant) {
        let (Some(t), Some(conn)) = (self.stalls.timeout(), self.conns.get_mut(key)) else {
            return;
        };
        conn.set_stall_deadline(since + t); // first: the queue checks entries against it
        let serial = conn.serial();
        let conns = &self.conns;
        let live = |k, s, at| conns.get(k).is_some_and(|c: &Conn| c.stalled(s, at));
        self.stalls.push(key, serial, since, conns.len(), live);
    }
}
