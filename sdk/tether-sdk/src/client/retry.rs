//! [`RetryPolicy`]: when and how long the app client waits before retrying a
//! write.
//!
//! Only UNAVAILABLE is retried: it means the request did not take effect (the
//! server or the connection was not there). Every other code is an answer —
//! DEADLINE_EXCEEDED (the write is stored, the wait ran out), ABORTED (the
//! generation moved) — and repeating the call would not change it.

use std::time::Duration;

use rand::Rng;
use tonic::Code;

use crate::backoff;

/// How the app client retries a write that found tetherd unavailable.
///
/// Every attempt carries the same idempotency key, so a retry of a write that
/// did reach tetherd returns the first outcome and changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (0 is treated as 1). Default 4.
    pub max_attempts: u32,
    /// The backoff ceiling after the first failure. Default 100 ms.
    pub initial_backoff: Duration,
    /// The largest backoff ceiling. Default 2 s.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn never() -> Self {
        RetryPolicy { max_attempts: 1, ..Self::default() }
    }

    /// How long to wait before the next attempt, or `None` to give up.
    ///
    /// `failed` counts the attempts made so far (1 after the first);
    /// `time_left` is what remains of the call's timeout, if it has one.
    pub(crate) fn next_delay(
        &self,
        failed: u32,
        code: Code,
        require_online: bool,
        time_left: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        // With require_online the caller asked to fail fast on an offline
        // vehicle, which tetherd reports as UNAVAILABLE too.
        if code != Code::Unavailable || require_online || failed >= self.max_attempts.max(1) {
            return None;
        }
        let ceiling = backoff::ceiling(self.initial_backoff, self.max_backoff, failed - 1);
        let delay = backoff::equal_jitter(ceiling, rng);
        // Never retry past the call's timeout: an attempt needs some time too.
        match time_left {
            Some(left) if delay >= left => None,
            _ => Some(delay),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn retries_only_unavailable_and_only_so_often() {
        let policy = RetryPolicy::default();
        let mut rng = rand::rng();
        for code in [Code::DeadlineExceeded, Code::Aborted, Code::InvalidArgument, Code::Cancelled] {
            assert_eq!(policy.next_delay(1, code, false, None, &mut rng), None, "{code:?}");
        }
        assert_eq!(policy.next_delay(1, Code::Unavailable, true, None, &mut rng), None);
        for failed in 1..4 {
            assert!(policy.next_delay(failed, Code::Unavailable, false, None, &mut rng).is_some());
        }
        assert_eq!(policy.next_delay(4, Code::Unavailable, false, None, &mut rng), None);
        assert_eq!(RetryPolicy::never().next_delay(1, Code::Unavailable, false, None, &mut rng), None);
        let zero = RetryPolicy { max_attempts: 0, ..RetryPolicy::default() };
        assert_eq!(zero.next_delay(1, Code::Unavailable, false, None, &mut rng), None);
    }

    #[test]
    fn backoff_grows_within_bounds() {
        let policy = RetryPolicy { max_attempts: 10, ..RetryPolicy::default() };
        let mut rng = rand::rng();
        for _ in 0..200 {
            for (failed, ceiling) in [(1, 100), (2, 200), (3, 400), (5, 1600), (6, 2000), (9, 2000)] {
                let d = policy.next_delay(failed, Code::Unavailable, false, None, &mut rng).unwrap();
                assert!(d >= ceiling * MS / 2 && d <= ceiling * MS, "attempt {failed}: {d:?}");
            }
        }
    }

    #[test]
    fn never_sleeps_past_the_timeout() {
        let policy = RetryPolicy::default();
        let mut rng = rand::rng();
        // The first backoff is 50..=100 ms: 40 ms left is never enough.
        assert_eq!(policy.next_delay(1, Code::Unavailable, false, Some(40 * MS), &mut rng), None);
        assert!(policy.next_delay(1, Code::Unavailable, false, Some(5000 * MS), &mut rng).is_some());
    }
}
