//! Link faults the fleet simulator injects ([`Faults`]), when they strike
//! ([`Faults::next_after`]), and counts of what was injected
//! ([`FaultCounters`]).
//!
//! Cuts and stalls strike each connection as independent Poisson processes:
//! the time to the next one is exponentially distributed, so "0.2 per minute"
//! means one cut every five minutes on average, at no predictable moment.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;

/// How flaky a simulated cellular link is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Cuts per connection per minute (the TCP connection is reset, as when
    /// a car enters a tunnel).
    pub drop_per_minute: f64,
    /// Stalls per connection per minute (nothing is forwarded in either
    /// direction for [`stall_for`](Self::stall_for), as during a handover).
    pub stall_per_minute: f64,
    /// How long a stall lasts.
    pub stall_for: Duration,
    /// Latency added to every chunk, one way.
    pub delay: Duration,
}

impl Faults {
    /// A perfect link.
    pub const NONE: Faults =
        Faults { drop_per_minute: 0.0, stall_per_minute: 0.0, stall_for: Duration::ZERO, delay: Duration::ZERO };

    /// Whether this link has no fault at all.
    pub fn is_none(&self) -> bool {
        self.drop_per_minute <= 0.0
            && (self.stall_per_minute <= 0.0 || self.stall_for.is_zero())
            && self.delay.is_zero()
    }

    /// The time until the next event of a Poisson process of `per_minute`
    /// events per minute; `None` when the rate is zero (never).
    pub fn next_after(per_minute: f64, rng: &mut impl Rng) -> Option<Duration> {
        if per_minute <= 0.0 || !per_minute.is_finite() {
            return None;
        }
        // Inverse transform sampling; 1 - u lies in (0, 1], so ln is finite.
        let u: f64 = rng.random();
        let minutes = -(1.0 - u).ln() / per_minute;
        Some(Duration::from_secs_f64((minutes * 60.0).min(Duration::MAX.as_secs_f64() / 2.0)))
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            return f.write_str("no faults");
        }
        write!(
            f,
            "cut {}/min, stall {}/min for {:?}, delay {:?} one way",
            self.drop_per_minute, self.stall_per_minute, self.stall_for, self.delay
        )
    }
}

/// What the proxies have done so far (shared by all of a fleet's proxies).
#[derive(Debug, Default)]
pub struct FaultCounters {
    connections: AtomicU64,
    drops: AtomicU64,
    stalls: AtomicU64,
}

/// A reading of [`FaultCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCount {
    /// Client connections accepted by the proxies.
    pub connections: u64,
    /// Connections cut.
    pub drops: u64,
    /// Stalls begun.
    pub stalls: u64,
}

impl FaultCounters {
    /// Counts an accepted connection.
    pub fn add_connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a cut.
    pub fn add_drop(&self) {
        self.drops.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a stall.
    pub fn add_stall(&self) {
        self.stalls.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn read(&self) -> FaultCount {
        FaultCount {
            connections: self.connections.load(Ordering::Relaxed),
            drops: self.drops.load(Ordering::Relaxed),
            stalls: self.stalls.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_rate_never_strikes() {
        assert_eq!(Faults::next_after(0.0, &mut rand::rng()), None);
        assert_eq!(Faults::next_after(-1.0, &mut rand::rng()), None);
        assert_eq!(Faults::next_after(f64::NAN, &mut rand::rng()), None);
        assert!(Faults::NONE.is_none());
        assert_eq!(Faults::NONE.to_string(), "no faults");
    }

    #[test]
    fn intervals_average_to_the_rate() {
        let mut rng = rand::rng();
        let n = 20_000;
        let total: f64 = (0..n).map(|_| Faults::next_after(2.0, &mut rng).unwrap().as_secs_f64()).sum();
        let mean = total / f64::from(n);
        // Two per minute: 30 s apart on average.
        assert!((27.0..33.0).contains(&mean), "mean {mean}");
    }
}
