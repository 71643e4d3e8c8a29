//! Write rate limits, so one app cannot flood the node or a vehicle: a token
//! bucket per subject and one per vehicle (governor's keyed GCRA). A refused
//! write is answered RESOURCE_EXHAUSTED with how long to wait, and changes
//! nothing.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A rate: so many writes per second, with a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained writes per second.
    pub per_second: u32,
    /// Writes allowed at once.
    pub burst: u32,
}

impl Rate {
    fn quota(self) -> Option<Quota> {
        let per_second = NonZeroU32::new(self.per_second)?;
        let burst = NonZeroU32::new(self.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        Some(Quota::per_second(per_second).allow_burst(burst))
    }
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// Which limit: "subject \"app\"" or "vehicle \"car-1\"".
    pub what: String,
    /// The limit's rate.
    pub rate: Rate,
    /// How long until a write would be allowed.
    pub retry_after: Duration,
}

/// The write limits of the node.
pub struct WriteLimits {
    subjects: Option<(DefaultKeyedRateLimiter<Arc<str>>, Rate)>,
    vehicles: Option<(DefaultKeyedRateLimiter<Arc<str>>, Rate)>,
    clock: DefaultClock,
}

impl std::fmt::Debug for WriteLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteLimits")
            .field("subjects", &self.subjects.as_ref().map(|s| s.1))
            .field("vehicles", &self.vehicles.as_ref().map(|v| v.1))
            .finish()
    }
}

impl WriteLimits {
    /// Limits per subject and per vehicle; a rate of 0 per second is no limit.
    pub fn new(subject: Rate, vehicle: Rate) -> Self {
        let keyed = |rate: Rate| rate.quota().map(|q| (RateLimiter::keyed(q), rate));
        WriteLimits { subjects: keyed(subject), vehicles: keyed(vehicle), clock: DefaultClock::default() }
    }

    /// Takes one write of `subject` to `vehicle`, or says how long to wait.
    /// The subject's bucket is checked first; a write refused by the vehicle's
    /// bucket still costs the subject (a flood stays a flood).
    pub fn check(&self, subject: &Arc<str>, vehicle: &Arc<str>) -> Result<(), Limited> {
        let now = self.clock.now();
        let buckets = [(&self.subjects, "subject", subject), (&self.vehicles, "vehicle", vehicle)];
        for (bucket, kind, key) in buckets {
            let Some((limiter, rate)) = bucket else { continue };
            if let Err(not_until) = limiter.check_key(key) {
                let what = format!("{kind} {key:?}");
                return Err(Limited { what, rate: *rate, retry_after: not_until.wait_time_from(now) });
            }
        }
        Ok(())
    }

    /// Forgets buckets that are full again (bounded memory whatever the
    /// number of subjects and vehicles seen).
    pub fn forget_idle(&self) {
        for (limiter, _) in [&self.subjects, &self.vehicles].into_iter().flatten() {
            limiter.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_is_limited_and_another_is_not() {
        let limits = WriteLimits::new(Rate { per_second: 1, burst: 3 }, Rate { per_second: 0, burst: 0 });
        let (a, b, car): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "car".into());
        for _ in 0..3 {
            limits.check(&a, &car).unwrap();
        }
        let limited = limits.check(&a, &car).unwrap_err();
        assert!(limited.what.contains(r#""a""#) && limited.retry_after > Duration::ZERO, "{limited:?}");
        limits.check(&b, &car).unwrap();
    }

    #[test]
    fn a_vehicle_is_limited_across_subjects() {
        let limits = WriteLimits::new(Rate { per_second: 0, burst: 0 }, Rate { per_second: 1, burst: 2 });
        let car: Arc<str> = "car".into();
        limits.check(&"a".into(), &car).unwrap();
        limits.check(&"b".into(), &car).unwrap();
        assert!(limits.check(&"c".into(), &car).unwrap_err().what.contains("vehicle"));
        limits.check(&"c".into(), &"other".into()).unwrap();
    }
}
