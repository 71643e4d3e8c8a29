//! The [`Worker`]: runs the [`Applier`] on one snapshot at a time while the
//! session loop keeps reading the stream and answering heartbeats.
//!
//! The applier is moved into the future that handles a snapshot and comes
//! back with its Report, so a slow capability never blocks the session loop.
//! Snapshots that arrive meanwhile are coalesced: only the latest waits (each
//! is the complete desired state, so an older one has nothing the latest
//! lacks).

use futures::future::BoxFuture;
use tether_proto::vehicle::v1::{DesiredState, Report};

use super::applier::Applier;

/// Holds the applier, idle or busy with a snapshot.
pub(crate) struct Worker {
    idle: Option<Applier>,
    busy: Option<BoxFuture<'static, (Applier, Report)>>,
    queued: Option<DesiredState>,
}

impl Worker {
    pub(crate) fn new(applier: Applier) -> Self {
        Worker { idle: Some(applier), busy: None, queued: None }
    }

    /// The applier, when no snapshot is being handled.
    pub(crate) fn idle(&self) -> Option<&Applier> {
        self.idle.as_ref()
    }

    /// Starts handling `desired`, or queues it (replacing an older queued one)
    /// while another is being handled.
    pub(crate) fn submit(&mut self, desired: DesiredState) {
        match self.idle.take() {
            Some(applier) => self.busy = Some(Box::pin(applier.handle(desired))),
            None => {
                if let Some(older) = self.queued.replace(desired) {
                    tracing::debug!(generation = older.generation, "snapshot coalesced into a newer one");
                }
            }
        }
    }

    /// The Report of the snapshot being handled, when done; pending forever
    /// when idle. Cancel-safe: dropping this future leaves the work in place.
    pub(crate) async fn next(&mut self) -> Report {
        let Some(busy) = self.busy.as_mut() else { return std::future::pending().await };
        let (applier, report) = busy.await;
        self.busy = None;
        self.idle = Some(applier);
        if let Some(queued) = self.queued.take() {
            self.submit(queued);
        }
        report
    }

    /// Finishes the snapshot being handled (its Report can no longer be sent)
    /// and drops a queued one: after a reconnect, the server sends the current
    /// desired state again.
    pub(crate) async fn settle(&mut self) {
        self.queued = None;
        if self.busy.is_some() {
            let report = self.next().await;
            tracing::debug!(
                observed_generation = report.observed_generation,
                "snapshot finished after the session ended"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tether_proto::RawState;
    use tether_proto::state::v1::{VehicleState, Windows};
    use tether_proto::vehicle::v1::FieldMeta;

    use super::*;
    use crate::agent::RecordingCapability;
    use crate::agent::applier::test_applier;

    fn snapshot(generation: u64, percent: u32) -> DesiredState {
        let state = VehicleState {
            windows: Some(Windows { front_left: Some(percent), ..Default::default() }),
            ..Default::default()
        };
        DesiredState {
            generation,
            state: Some(RawState::from_typed(&state)),
            fields: vec![FieldMeta { path: "windows.front_left".into(), generation, ..Default::default() }],
            server_time: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn handles_one_at_a_time_and_coalesces_the_rest() {
        let windows = RecordingCapability::new("windows").with_delay(Duration::from_secs(1));
        let applied = windows.applied();
        let mut worker = Worker::new(test_applier(vec![Box::new(windows)]));
        assert!(worker.idle().is_some());

        worker.submit(snapshot(1, 10));
        assert!(worker.idle().is_none());
        // Two more arrive while the first is applied: only the latest waits.
        worker.submit(snapshot(2, 20));
        worker.submit(snapshot(3, 30));

        assert_eq!(worker.next().await.observed_generation, 1);
        assert_eq!(worker.next().await.observed_generation, 3);
        let generations: Vec<u64> = applied.lock().unwrap().iter().map(|c| c.generation).collect();
        assert_eq!(generations, [1, 3]);
        // Idle: next() waits forever.
        assert!(tokio::time::timeout(Duration::from_secs(60), worker.next()).await.is_err());
        assert_eq!(worker.idle().map(|a| a.last_applied()), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn next_is_cancel_safe_and_settle_finishes_the_work() {
        let windows = RecordingCapability::new("windows").with_delay(Duration::from_secs(5));
        let mut worker = Worker::new(test_applier(vec![Box::new(windows)]));
        worker.submit(snapshot(1, 10));
        worker.submit(snapshot(2, 20));
        // Give up on the report halfway (as the session loop's select does).
        assert!(tokio::time::timeout(Duration::from_secs(1), worker.next()).await.is_err());
        // The session ended: the apply in flight finishes, the queued one is dropped.
        worker.settle().await;
        assert_eq!(worker.idle().map(|a| a.last_applied()), Some(1));
    }
}
