//! The agent's guards, checked before a capability is asked to apply a change:
//! expiry (with a clock-skew allowance), declared preconditions, and a rate
//! limit per capability. Pure: the caller passes the clocks.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::capability::{FieldChange, Refusal};

/// A precondition's check: true when the change may be applied.
pub(crate) type Check = Arc<dyn Fn(&FieldChange) -> bool + Send + Sync>;

/// A declared precondition of a capability, e.g. "parked".
#[derive(Clone)]
pub(crate) struct Precondition {
    pub(crate) name: String,
    pub(crate) check: Check,
}

impl fmt::Debug for Precondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Precondition").field("name", &self.name).finish_non_exhaustive()
    }
}

/// The agent's clock: the system clock shifted by a configured offset (a
/// vehicle whose clock runs ahead has a positive offset).
pub(crate) fn shifted(now: SystemTime, offset_millis: i64) -> SystemTime {
    let offset = Duration::from_millis(offset_millis.unsigned_abs());
    let shifted = if offset_millis >= 0 { now.checked_add(offset) } else { now.checked_sub(offset) };
    shifted.unwrap_or(now)
}

/// The guards of one agent.
#[derive(Debug)]
pub(crate) struct Guards {
    skew_allowance: Duration,
    clock_offset_millis: i64,
    default_rate_limit: Duration,
    rate_limits: HashMap<String, Duration>,
    preconditions: HashMap<String, Vec<Precondition>>,
    /// Per capability: when it was last asked to apply, and in which snapshot.
    last_apply: HashMap<String, (Instant, u64)>,
}

impl Guards {
    pub(crate) fn new(
        skew_allowance: Duration,
        clock_offset_millis: i64,
        default_rate_limit: Duration,
        rate_limits: HashMap<String, Duration>,
        preconditions: HashMap<String, Vec<Precondition>>,
    ) -> Self {
        Guards {
            skew_allowance,
            clock_offset_millis,
            default_rate_limit,
            rate_limits,
            preconditions,
            last_apply: HashMap::new(),
        }
    }

    /// The agent's clock at system time `now`.
    pub(crate) fn vehicle_now(&self, now: SystemTime) -> SystemTime {
        shifted(now, self.clock_offset_millis)
    }

    /// EXPIRED (`expired_on_arrival`) if the field's expiry, plus the skew
    /// allowance, lies before the agent's clock at system time `now`.
    pub(crate) fn check_expiry(&self, expires_at: Option<SystemTime>, now: SystemTime) -> Result<(), Refusal> {
        let Some(expires_at) = expires_at else { return Ok(()) };
        let vehicle_now = self.vehicle_now(now);
        // An expiry too far in the future to add the allowance never passes.
        let Some(limit) = expires_at.checked_add(self.skew_allowance) else { return Ok(()) };
        if limit < vehicle_now {
            let late = vehicle_now.duration_since(expires_at).unwrap_or_default();
            return Err(Refusal::expired(
                "expired_on_arrival",
                format!(
                    "expired {} ms before it could be applied (skew allowance {} ms)",
                    late.as_millis(),
                    self.skew_allowance.as_millis()
                ),
            ));
        }
        Ok(())
    }

    /// REJECTED (`precondition:<name>`) at the first declared precondition of
    /// `capability` that `change` fails.
    pub(crate) fn check_preconditions(&self, capability: &str, change: &FieldChange) -> Result<(), Refusal> {
        let declared = self.preconditions.get(capability).map(Vec::as_slice).unwrap_or_default();
        match declared.iter().find(|p| !(p.check)(change)) {
            Some(failed) => Err(Refusal::rejected(
                format!("precondition:{}", failed.name),
                format!("precondition `{}` of {capability} does not hold", failed.name),
            )),
            None => Ok(()),
        }
    }

    /// REJECTED (`rate_limited`) if `capability` was asked to apply less than
    /// its rate limit before `now`, in an earlier snapshot. Fields of one
    /// snapshot do not limit each other: a patch setting two windows at once
    /// is one command to the capability.
    pub(crate) fn check_rate(&self, capability: &str, now: Instant, snapshot: u64) -> Result<(), Refusal> {
        let limit = self.rate_limit(capability);
        match self.last_apply.get(capability) {
            Some(&(at, in_snapshot)) if in_snapshot != snapshot => {
                let since = now.saturating_duration_since(at);
                if since < limit {
                    return Err(Refusal::rejected(
                        "rate_limited",
                        format!(
                            "{capability} applied {} ms ago; at most once per {} ms",
                            since.as_millis(),
                            limit.as_millis()
                        ),
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Notes that `capability` is being asked to apply a change of `snapshot`.
    pub(crate) fn record_apply(&mut self, capability: &str, now: Instant, snapshot: u64) {
        match self.last_apply.get_mut(capability) {
            // The first apply of a snapshot sets the time the next one counts from.
            Some(entry) if entry.1 == snapshot => {}
            Some(entry) => *entry = (now, snapshot),
            None => {
                self.last_apply.insert(capability.to_string(), (now, snapshot));
            }
        }
    }

    fn rate_limit(&self, capability: &str) -> Duration {
        self.rate_limits.get(capability).copied().unwrap_or(self.default_rate_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::common::v1::FieldStatus;

    const MS: Duration = Duration::from_millis(1);

    fn guards(skew: Duration, offset: i64) -> Guards {
        let mut rates = HashMap::new();
        rates.insert("horn".to_string(), Duration::ZERO);
        let parked: Check = Arc::new(|c: &FieldChange| c.value.as_u32() != Some(100));
        let preconditions = HashMap::from([(
            "windows".to_string(),
            vec![Precondition { name: "not_fully_open".into(), check: parked }],
        )]);
        Guards::new(skew, offset, 500 * MS, rates, preconditions)
    }

    fn change(percent: u32) -> FieldChange {
        FieldChange {
            path: "windows.front_left".into(),
            value: prost_reflect::Value::U32(percent),
            generation: 1,
            expires_at: None,
            traceparent: String::new(),
        }
    }

    #[test]
    fn expiry_allows_for_skew() {
        let g = guards(2000 * MS, 0);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert!(g.check_expiry(None, now).is_ok());
        assert!(g.check_expiry(Some(now + MS), now).is_ok());
        // Expired 1.5 s ago: within the 2 s allowance.
        assert!(g.check_expiry(Some(now - 1500 * MS), now).is_ok());
        assert!(g.check_expiry(Some(now - 2000 * MS), now).is_ok());
        let refusal = g.check_expiry(Some(now - 2001 * MS), now).unwrap_err();
        assert_eq!(refusal.status, FieldStatus::Expired);
        assert_eq!(refusal.reason, "expired_on_arrival");
        assert!(g.check_expiry(Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX / 2)), now).is_ok());
    }

    #[test]
    fn a_clock_running_ahead_expires_fields_sooner() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let expires = Some(now + 5000 * MS);
        assert!(guards(2000 * MS, 0).check_expiry(expires, now).is_ok());
        assert!(guards(2000 * MS, 6000).check_expiry(expires, now).is_ok());
        assert!(guards(2000 * MS, 7001).check_expiry(expires, now).is_err());
        // A clock running behind never expires it sooner.
        assert!(guards(Duration::ZERO, -60_000).check_expiry(Some(now - 30_000 * MS), now).is_ok());
        assert_eq!(shifted(now, -1000), now - 1000 * MS);
    }

    #[test]
    fn preconditions_name_themselves() {
        let g = guards(Duration::ZERO, 0);
        assert!(g.check_preconditions("windows", &change(50)).is_ok());
        let refusal = g.check_preconditions("windows", &change(100)).unwrap_err();
        assert_eq!(refusal.status, FieldStatus::Rejected);
        assert_eq!(refusal.reason, "precondition:not_fully_open");
        // Other capabilities have none.
        assert!(g.check_preconditions("doors", &change(100)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_per_capability_across_snapshots() {
        let mut g = guards(Duration::ZERO, 0);
        let t0 = Instant::now();
        assert!(g.check_rate("windows", t0, 1).is_ok());
        g.record_apply("windows", t0, 1);
        // Another field of the same snapshot is not limited.
        assert!(g.check_rate("windows", t0 + 10 * MS, 1).is_ok());
        g.record_apply("windows", t0 + 10 * MS, 1);
        // The next snapshot, 499 ms after the first apply, is.
        let refusal = g.check_rate("windows", t0 + 499 * MS, 2).unwrap_err();
        assert_eq!((refusal.status, refusal.reason.as_str()), (FieldStatus::Rejected, "rate_limited"));
        assert!(g.check_rate("windows", t0 + 500 * MS, 2).is_ok());
        // Other capabilities are independent; a zero limit never limits.
        assert!(g.check_rate("doors", t0, 2).is_ok());
        g.record_apply("horn", t0, 1);
        assert!(g.check_rate("horn", t0, 2).is_ok());
    }
}
