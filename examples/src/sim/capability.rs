//! [`SimCapability`]: a simulated actuator (window motor, door locks, ...)
//! that takes a random, realistic time to reach each desired value.

use std::time::Duration;

use rand::Rng;
use tether_sdk::{BoxFuture, Capability, FieldChange, Refusal};

/// Owns one top-level state field and applies each change after a delay
/// drawn uniformly from `min..=max`. It never refuses: refusals in the
/// simulator come from the agent's guards (preconditions, rate limits,
/// expiry), as they would in a car.
#[derive(Debug, Clone)]
pub struct SimCapability {
    name: &'static str,
    min: Duration,
    max: Duration,
}

impl SimCapability {
    /// An actuator for the field `name` taking `min..=max` per change.
    pub fn new(name: &'static str, min: Duration, max: Duration) -> Self {
        SimCapability { name, min: min.min(max), max: max.max(min) }
    }

    fn delay(&self) -> Duration {
        if self.min == self.max {
            return self.min;
        }
        rand::rng().random_range(self.min..=self.max)
    }
}

impl Capability for SimCapability {
    fn name(&self) -> &str {
        self.name
    }

    fn apply<'a>(&'a mut self, change: &'a FieldChange) -> BoxFuture<'a, Result<(), Refusal>> {
        // Drawn here: the thread-local generator must not live across an await.
        let delay = self.delay();
        Box::pin(async move {
            tracing::trace!(path = %change.path, ?delay, "actuating");
            tokio::time::sleep(delay).await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn takes_a_delay_within_its_bounds() {
        let (min, max) = (Duration::from_millis(200), Duration::from_millis(1500));
        let mut capability = SimCapability::new("windows", min, max);
        let change = FieldChange {
            path: "windows.front_left".into(),
            value: prost_reflect::Value::U32(40),
            generation: 1,
            expires_at: None,
            traceparent: String::new(),
        };
        for _ in 0..20 {
            let start = tokio::time::Instant::now();
            capability.apply(&change).await.unwrap();
            assert!((min..=max).contains(&start.elapsed()), "{:?}", start.elapsed());
        }
        assert_eq!(capability.name(), "windows");
        // Bounds given the wrong way round are put right.
        let swapped = SimCapability::new("horn", max, min);
        assert_eq!((swapped.min, swapped.max), (min, max));
    }
}
