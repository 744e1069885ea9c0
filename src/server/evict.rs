//! At the connection limit (which the memory budget sets, see
//! `crate::budget`), a new client is not turned away while a connection
//! keeps the server waiting: the one that has kept it waiting longest (a
//! request left half-sent, replies held unread), for at least `EVICT_AFTER`,
//! is dropped to make room. A crowd that holds every slot without reading
//! thus never locks fresh clients out, while clients that read their replies
//! keep theirs.

use std::time::{Duration, Instant};

use super::Server;

/// How long a connection must have kept the server waiting before a new
/// client may take its place.
const EVICT_AFTER: Duration = Duration::from_millis(500);
/// At most one line per this interval about clients dropped.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Clients dropped to make room, logged at most once per interval.
#[derive(Debug, Default)]
pub struct Evictions {
    unlogged: u64,
    last_logged: Option<Instant>,
}

impl Evictions {
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
             (the last, conn {id}, for {:.1}s: a request half-sent or replies unread) \
             to make room for new ones",
            waited.as_secs_f64()
        );
    }
}

impl Server {
    /// Drops the connection that has kept us waiting longest, if one has for
    /// `EVICT_AFTER`; true if it did (a new client may take its place).
    pub(super) fn make_room(&mut self) -> bool {
        let now = Instant::now();
        let victim = self
            .conns
            .iter()
            .filter_map(|(key, c)| c.stalled_since().map(|since| (since, key, c.id())))
            .filter(|&(since, _, _)| since + EVICT_AFTER <= now)
            .min();
        let Some((since, key, id)) = victim else {
            return false;
        };
        self.evictions.note(id, now.duration_since(since));
        self.close(key);
        true
    }
}
