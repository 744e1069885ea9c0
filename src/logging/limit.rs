//! How many warnings a client may cause: a fixed window per connection and
//! one for them all, so that no client (nor a crowd of them) can fill the log
//! or spend the loop's time writing it. Lines over the limit are counted, and
//! the count is said with the next line let through.

use std::time::{Duration, Instant};

/// The window the limits count in.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Warnings one connection may cause per window.
pub const PER_CONN: u32 = 5;
/// Warnings all connections together may cause per window.
pub const TOTAL: u32 = 50;

/// Lines let through in the current window, and those held back.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quota {
    start: Option<Instant>,
    passed: u32,
    dropped: u32,
    /// Held back in earlier windows, not yet said.
    unsaid: u32,
}

impl Quota {
    /// Whether one more line may go at `now`, `max` per window: if so, how
    /// many were held back since the last one that went (to say so).
    pub fn pass(&mut self, now: Instant, max: u32) -> Option<u32> {
        if self.start.is_none_or(|s| now.duration_since(s) >= WINDOW) {
            self.unsaid += self.dropped;
            *self = Quota {
                start: Some(now),
                unsaid: self.unsaid,
                ..Quota::default()
            };
        }
        if self.passed >= max {
            self.dropped += 1;
            return None;
        }
        self.passed += 1;
        Some(std::mem::take(&mut self.unsaid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_let_some_through_and_count_the_rest() {
        let t = Instant::now();
        let mut q = Quota::default();
        assert_eq!(q.pass(t, 2), Some(0));
        assert_eq!(q.pass(t, 2), Some(0));
        assert_eq!(q.pass(t, 2), None);
        assert_eq!(q.pass(t + WINDOW / 2, 2), None);
        let next = t + WINDOW;
        assert_eq!(q.pass(next, 2), Some(2), "the two held back are said");
        assert_eq!(q.pass(next, 2), Some(0));
        assert_eq!(q.pass(next, 2), None);
        // A quiet spell: the window that held one back passes without a line.
        assert_eq!(q.pass(next + 3 * WINDOW, 2), Some(1));
    }
}
