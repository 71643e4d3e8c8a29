//! Progress of a write while `tether set` waits: watches the vehicle and
//! prints a line each time one of the write's fields changes status, e.g.
//! `windows.front_left: PENDING → DELIVERED → APPLIED (312 ms)`.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::Duration;

use futures::StreamExt;
use tether_sdk::pb::app::v1::Vehicle;
use tether_sdk::{Client, FieldOutcome};
use tokio::time::Instant;

use crate::output::{Output, status_name};

/// First and largest pause before watching again (the vehicle may not exist
/// until the write is stored, or the stream may drop).
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The statuses seen so far of the fields of one write.
///
/// A field belongs to the write when its path is in the patch and tetherd
/// records the write's idempotency key for it; a field whose value did not
/// change (a no-op write) keeps an older key and is reported only by the
/// outcome.
#[derive(Debug)]
pub(super) struct Progress {
    key: String,
    paths: BTreeSet<String>,
    chains: BTreeMap<String, Vec<i32>>,
}

impl Progress {
    /// Follows the fields `paths` of the write with idempotency key `key`.
    pub(super) fn new(key: String, paths: impl IntoIterator<Item = String>) -> Self {
        Progress { key, paths: paths.into_iter().collect(), chains: BTreeMap::new() }
    }

    /// One line per field of the write whose status changed in `vehicle`,
    /// with `elapsed` since the write was sent.
    pub(super) fn observe(&mut self, vehicle: &Vehicle, elapsed: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        for field in &vehicle.fields {
            if field.idempotency_key != self.key || !self.paths.contains(&field.path) {
                continue;
            }
            let chain = self.chains.entry(field.path.clone()).or_default();
            if chain.last() == Some(&field.status) {
                continue;
            }
            chain.push(field.status);
            lines.push(line(&field.path, chain, elapsed));
        }
        lines
    }

    /// Lines that complete the chains seen so far with the write's final
    /// statuses (the last watch event may trail the write's answer). Fields
    /// never seen are left to the outcome.
    pub(super) fn finish(&mut self, outcome: &[FieldOutcome], elapsed: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        for field in outcome {
            let status = field.status as i32;
            // A field whose transitions the watch missed (a fast loopback
            // round trip) still gets its final line.
            let chain = self.chains.entry(field.path.clone()).or_default();
            if chain.last() != Some(&status) {
                chain.push(status);
                lines.push(line(&field.path, chain, elapsed));
            }
        }
        lines
    }
}

/// `path: PENDING → DELIVERED (120 ms)`.
fn line(path: &str, chain: &[i32], elapsed: Duration) -> String {
    let statuses: Vec<String> = chain.iter().map(|s| status_name(*s)).collect();
    format!("{path}: {} ({} ms)", statuses.join(" → "), elapsed.as_millis())
}

/// Watches `vehicle_id` and prints progress lines on stderr; never returns
/// (the caller drops it once the write has answered).
pub(super) async fn follow(
    client: &Client,
    vehicle_id: &str,
    progress: &mut Progress,
    started: Instant,
    output: Output,
) -> Infallible {
    let mut retry = RETRY_FIRST;
    loop {
        // Progress is a courtesy: a watch that fails (NOT_FOUND before the
        // write is stored, a dropped stream) is retried, never reported.
        if let Ok(mut events) = client.watch(vehicle_id, 0).await {
            while let Some(Ok(event)) = events.next().await {
                retry = RETRY_FIRST;
                if let Some(vehicle) = &event.vehicle {
                    for line in progress.observe(vehicle, started.elapsed()) {
                        output.progress(&line);
                    }
                }
            }
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use tether_sdk::FieldStatus;
    use tether_sdk::pb::app::v1::DesiredField;

    use super::*;

    fn vehicle(fields: &[(&str, FieldStatus, &str)]) -> Vehicle {
        Vehicle {
            fields: fields
                .iter()
                .map(|(path, status, key)| DesiredField {
                    path: path.to_string(),
                    status: *status as i32,
                    idempotency_key: key.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn prints_each_change_of_the_writes_fields() {
        let mut p = Progress::new("k1".into(), ["windows.front_left".to_string(), "doors.lock".to_string()]);
        let ms = Duration::from_millis;
        // Before the write: an older key; another path.
        let before =
            vehicle(&[("windows.front_left", FieldStatus::Applied, "k0"), ("trunk.lid", FieldStatus::Pending, "k1")]);
        assert!(p.observe(&before, ms(1)).is_empty());
        let stored =
            vehicle(&[("windows.front_left", FieldStatus::Pending, "k1"), ("doors.lock", FieldStatus::Pending, "k1")]);
        assert_eq!(p.observe(&stored, ms(5)), ["windows.front_left: PENDING (5 ms)", "doors.lock: PENDING (5 ms)"]);
        assert!(p.observe(&stored, ms(6)).is_empty());
        let delivered = vehicle(&[
            ("windows.front_left", FieldStatus::Delivered, "k1"),
            ("doors.lock", FieldStatus::Rejected, "k1"),
        ]);
        assert_eq!(
            p.observe(&delivered, ms(120)),
            ["windows.front_left: PENDING → DELIVERED (120 ms)", "doors.lock: PENDING → REJECTED (120 ms)"]
        );
        let applied = vehicle(&[("windows.front_left", FieldStatus::Applied, "k1")]);
        assert_eq!(p.observe(&applied, ms(312)), ["windows.front_left: PENDING → DELIVERED → APPLIED (312 ms)"]);

        // The write answered before the watch showed the last change.
        let outcome = |path: &str, status| FieldOutcome {
            path: path.into(),
            status,
            generation: 1,
            expires_at: None,
            reason: String::new(),
            message: String::new(),
        };
        let mut p = Progress::new("k1".into(), ["windows.front_left".to_string(), "doors.lock".to_string()]);
        p.observe(&vehicle(&[("windows.front_left", FieldStatus::Delivered, "k1")]), ms(8));
        let fields = [outcome("windows.front_left", FieldStatus::Applied), outcome("doors.lock", FieldStatus::Applied)];
        // doors.lock was never seen by the watch: it still gets its final line.
        assert_eq!(
            p.finish(&fields, ms(919)),
            ["windows.front_left: DELIVERED → APPLIED (919 ms)", "doors.lock: APPLIED (919 ms)"]
        );
        assert!(p.finish(&fields, ms(920)).is_empty());
    }
}
