//! What a person needs to hear of the budget: that it is full (clients are
//! kept waiting for memory), and that it has room again; one line each, not
//! one per request. The clock is read only when the state changes.

use std::time::{Duration, Instant};

/// At most one "full" line per this interval: a budget that fills and frees
/// over and over says so once in a while, not at every turn.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct Pressure {
    /// Since when connections have been waiting, if they are.
    since: Option<Instant>,
    /// Whether the line saying so was written (the next says it is over).
    logged: bool,
    /// Requests kept waiting since then.
    refused: u64,
    last_logged: Option<Instant>,
}

impl Pressure {
    /// A connection was refused memory: `used` of `shared` bytes held, and
    /// `waiting` connections wait.
    pub fn refused(&mut self, used: usize, shared: usize, waiting: usize) {
        self.refused += 1;
        if self.since.is_some() {
            return;
        }
        let now = Instant::now();
        self.since = Some(now);
        self.logged = self
            .last_logged
            .is_none_or(|t| now.duration_since(t) >= LOG_INTERVAL);
        if self.logged {
            self.last_logged = Some(now);
            log::warn!(
                "memory budget full: {} of {} MiB held beyond the connections' own share; \
                 {waiting} client(s) wait for memory",
                used >> 20,
                shared >> 20
            );
        }
    }

    /// Nobody waits for memory any more.
    pub fn relieved(&mut self) {
        let Some(since) = self.since.take() else {
            return;
        };
        let refused = std::mem::take(&mut self.refused);
        if std::mem::take(&mut self.logged) {
            log::warn!(
                "memory budget: room again after {:.1}s; {refused} request(s) waited",
                since.elapsed().as_secs_f64()
            );
        }
    }
}
