//! A token bucket that schedules rather than sleeps: `take` says when the
//! tokens asked for are there, and a request waits on a timer until then.
//! Tokens are bits; the bucket fills at `rate` a second up to `burst`
//! seconds' worth, and starts full. Taking more than it holds leaves it in
//! debt, so a request asked after another waits behind it (first come,
//! first served) and the rate holds however many are in flight.

use std::time::{Duration, Instant};

/// The longest wait a bucket gives (at one bit a second, 64 MiB is 17 years).
const MAX_WAIT: f64 = 1e9;

#[derive(Debug, Clone)]
pub struct Bucket {
    /// Bits a second; 0: no limit.
    rate: u64,
    /// Seconds of `rate` the bucket holds when full.
    burst: f64,
    /// Bits in the bucket at `at`; below zero, owed to requests already let go.
    level: f64,
    /// When `level` was brought up to date: never earlier than the last
    /// time `take` gave (a request's tokens may be taken for a time to come).
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: u64, burst: f64, now: Instant) -> Bucket {
        let mut b = Bucket {
            rate,
            burst,
            level: 0.0,
            at: now,
        };
        b.level = b.capacity();
        b
    }

    fn capacity(&self) -> f64 {
        self.rate as f64 * self.burst
    }

    /// Adds what flowed in up to `t`.
    fn fill(&mut self, t: Instant) {
        if t > self.at {
            let flowed = t.duration_since(self.at).as_secs_f64() * self.rate as f64;
            self.level = (self.level + flowed).min(self.capacity());
            self.at = t;
        }
    }

    /// Takes `bits`, from `t` on: when they are there (`t` if they are now).
    pub fn take(&mut self, bits: u64, t: Instant) -> Instant {
        if self.rate == 0 {
            return t;
        }
        self.fill(t);
        self.level -= bits as f64;
        if self.level >= 0.0 {
            return self.at;
        }
        let secs = (-self.level / self.rate as f64).min(MAX_WAIT);
        self.at + Duration::from_secs_f64(secs) // finite, 0..MAX_WAIT
    }

    /// Gives back `bits` taken for a request that will not run (its client
    /// went while it waited): later requests need not wait for it.
    pub fn refund(&mut self, bits: u64, now: Instant) {
        self.fill(now);
        self.level = (self.level + bits as f64).min(self.capacity());
    }

    /// From `now` on, fills at `rate` (0: no limit); returns the old rate.
    /// What is owed stays owed; a bucket that had no limit starts full.
    pub fn set_rate(&mut self, rate: u64, now: Instant) -> u64 {
        let old = self.rate;
        self.fill(now);
        self.rate = rate;
        self.level = match old {
            0 => self.capacity(),
            _ => self.level.min(self.capacity()),
        };
        old
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The wait, in ms, rounded.
    fn wait(at: Instant, t0: Instant) -> u128 {
        (at.duration_since(t0).as_micros() + 500) / 1000
    }

    #[test]
    fn a_full_bucket_lets_a_burst_go_then_paces() {
        let t0 = Instant::now();
        // 1000 bits a second, one second's worth held.
        let mut b = Bucket::new(1000, 1.0, t0);
        assert_eq!(b.take(600, t0), t0);
        assert_eq!(b.take(400, t0), t0);
        // Empty: each 100 bits waits 100 ms behind the one before.
        assert_eq!(wait(b.take(100, t0), t0), 100);
        assert_eq!(wait(b.take(100, t0), t0), 200);
        // A second later it has refilled what was owed and 800 more.
        let t1 = t0 + ms(1000);
        assert_eq!(b.take(800, t1), t1);
        assert_eq!(wait(b.take(100, t1), t1), 100);
    }

    #[test]
    fn it_never_holds_more_than_its_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 0.5, t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.take(500, later), later);
        assert_eq!(wait(b.take(100, later), later), 100);
        let mut none = Bucket::new(0, 2.0, t0);
        assert_eq!(none.take(u64::MAX, t0), t0, "rate 0: no limit");
    }

    #[test]
    fn tokens_taken_for_a_later_time() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 1.0, t0);
        assert_eq!(b.take(1000, t0), t0);
        // Taken for t0 + 1s: what flows in until then counts.
        let t1 = t0 + ms(1000);
        assert_eq!(b.take(1000, t1), t1);
        // Asked at t0 again: it waits behind the one taken for later.
        assert_eq!(wait(b.take(500, t0), t0), 1500);
    }

    #[test]
    fn a_new_rate_keeps_the_debt() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 1.0, t0);
        assert_eq!(wait(b.take(2000, t0), t0), 1000);
        assert_eq!(b.set_rate(4000, t0), 1000);
        // 1000 bits owed at 4000 a second: the next 1000 go after 500 ms.
        assert_eq!(wait(b.take(1000, t0), t0), 500);
        assert_eq!(b.set_rate(0, t0), 4000);
        assert_eq!(b.take(1 << 40, t0), t0);
        b.set_rate(1000, t0);
        assert_eq!(
            b.take(1000, t0),
            t0,
            "a bucket that had no limit starts full"
        );
    }

    #[test]
    fn a_refund_shortens_the_wait_of_later_requests() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 0.0, t0);
        assert_eq!(wait(b.take(5000, t0), t0), 5000);
        b.refund(5000, t0);
        assert_eq!(wait(b.take(100, t0), t0), 100);
        b.refund(1 << 20, t0);
        assert_eq!(wait(b.take(100, t0), t0), 100, "never above its capacity");
    }

    #[test]
    fn huge_requests_at_tiny_rates_wait_a_bounded_time() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1, 0.0, t0);
        let at = b.take(u64::MAX, t0);
        assert!(at > t0 + Duration::from_secs(1_000_000));
    }
}
