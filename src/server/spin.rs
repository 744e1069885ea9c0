//! Busy-polling before sleeping, adapted to the traffic (as qemu's AioContext
//! polling is).
//!
//! A client that sends its next request a few microseconds after our reply finds
//! us awake: putting a thread to sleep and waking it again (an IPI, a VM exit
//! under virtualisation) costs more than such a spin, in latency and often in CPU
//! too. The window follows how long the loop had to wait for its next event after
//! work (the wake-up latency included): waits of a few windows keep it, or grow it
//! back to the maximum; long waits (sparse traffic) halve it, down to no spinning
//! at all. An idle server never spins.

use std::time::{Duration, Instant};

use mio::{Events, Poll};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spin {
    max: Duration,
    window: Duration,
}

impl Spin {
    /// Below this, a window is not worth spinning: none at all.
    const FLOOR: Duration = Duration::from_micros(2);

    /// `--busy-poll`: the longest window (zero: never spin).
    pub fn new(max: Duration) -> Spin {
        Spin { max, window: max }
    }

    /// Polls without sleeping for up to the window; true if events came.
    pub fn spin(&self, poll: &mut Poll, events: &mut Events) -> bool {
        if self.window.is_zero() {
            return false;
        }
        let start = Instant::now();
        loop {
            if poll.poll(events, Some(Duration::ZERO)).is_ok() && !events.is_empty() {
                return true;
            }
            if start.elapsed() >= self.window {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// The loop waited `wait` for an event after work, spinning first or not.
    pub fn waited(&mut self, wait: Duration) {
        if wait <= self.window {
            return; // the spin caught it
        }
        if wait < 2 * self.max {
            self.window = (self.window * 2).max(Self::FLOOR).min(self.max);
        } else if wait > 4 * self.max {
            self.window /= 2;
            if self.window < Self::FLOOR {
                self.window = Duration::ZERO;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_window_adapts() {
        let max = Duration::from_micros(50);
        let us = Duration::from_micros;
        let mut s = Spin::new(max);
        s.waited(us(20)); // caught by the spin
        assert_eq!(s.window, max);
        s.waited(us(90)); // missed, but the traffic is still dense
        assert_eq!(s.window, max);
        for _ in 0..6 {
            s.waited(us(600)); // sparse traffic
        }
        assert_eq!(s.window, Duration::ZERO, "no spinning for sparse traffic");
        s.waited(us(150)); // neither dense nor sparse: no change
        assert_eq!(s.window, Duration::ZERO);
        s.waited(us(60)); // dense again (wake-up latency included)
        assert_eq!(s.window, Spin::FLOOR);
        for _ in 0..10 {
            s.waited(us(60));
        }
        assert_eq!(s.window, max);
        let mut off = Spin::new(Duration::ZERO);
        off.waited(us(1));
        assert_eq!(off.window, Duration::ZERO, "--busy-poll 0 never spins");
    }
}
