//! [`FleetStats`]: what the simulated vehicles did, counted from their agents'
//! events, and [`FleetStatus`], the status line the simulator prints.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use tether_sdk::AgentEvent;

use crate::faults::FaultCount;

/// Counters shared by the observers of every agent of a fleet.
#[derive(Debug, Default)]
pub struct FleetStats {
    sessions: AtomicU64,
    snapshots: AtomicU64,
    applied: AtomicU64,
    refused_precondition: AtomicU64,
    refused_rate_limited: AtomicU64,
    refused_other: AtomicU64,
    disconnects: AtomicU64,
}

impl FleetStats {
    /// Counts one agent event.
    pub fn record(&self, event: &AgentEvent) {
        let counter = match event {
            AgentEvent::Connected { .. } => &self.sessions,
            AgentEvent::Snapshot { .. } => &self.snapshots,
            AgentEvent::Applied { .. } => &self.applied,
            AgentEvent::Refused { reason, .. } if reason.starts_with("precondition:") => &self.refused_precondition,
            AgentEvent::Refused { reason, .. } if reason == "rate_limited" => &self.refused_rate_limited,
            AgentEvent::Refused { .. } => &self.refused_other,
            AgentEvent::Goodbye { .. } | AgentEvent::Disconnected { .. } => &self.disconnects,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A status with these counts.
    pub fn status(&self, connected: usize, vehicles: usize, faults: FaultCount) -> FleetStatus {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FleetStatus {
            connected,
            vehicles,
            sessions: read(&self.sessions),
            snapshots: read(&self.snapshots),
            applied: read(&self.applied),
            refused_precondition: read(&self.refused_precondition),
            refused_rate_limited: read(&self.refused_rate_limited),
            refused_other: read(&self.refused_other),
            disconnects: read(&self.disconnects),
            faults,
        }
    }
}

/// The fleet at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetStatus {
    /// Vehicles with a live session now.
    pub connected: usize,
    /// Vehicles simulated.
    pub vehicles: usize,
    /// Sessions opened (Welcome received) since start.
    pub sessions: u64,
    /// Desired-state snapshots received.
    pub snapshots: u64,
    /// Fields applied.
    pub applied: u64,
    /// Fields refused by a precondition (e.g. `precondition:parked`).
    pub refused_precondition: u64,
    /// Fields refused by a rate limit.
    pub refused_rate_limited: u64,
    /// Fields refused otherwise (expired on arrival, unsupported, failed).
    pub refused_other: u64,
    /// Sessions that ended (lost, or ended by tetherd's Goodbye).
    pub disconnects: u64,
    /// What the link proxies did.
    pub faults: FaultCount,
}

impl FleetStatus {
    /// All fields refused.
    pub fn refused(&self) -> u64 {
        self.refused_precondition + self.refused_rate_limited + self.refused_other
    }
}

impl fmt::Display for FleetStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connected {}/{} | sessions {} | snapshots {} | applied {} refused {} (precondition {}, rate-limited {}, other {}) \
             | disconnects {} | faults: cuts {} stalls {} (links {})",
            self.connected,
            self.vehicles,
            self.sessions,
            self.snapshots,
            self.applied,
            self.refused(),
            self.refused_precondition,
            self.refused_rate_limited,
            self.refused_other,
            self.disconnects,
            self.faults.drops,
            self.faults.stalls,
            self.faults.connections,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_sdk::FieldStatus;

    #[test]
    fn counts_events_by_kind_and_reason() {
        let stats = FleetStats::default();
        let refused = |reason: &str| AgentEvent::Refused {
            path: "windows.front_left".into(),
            generation: 2,
            status: FieldStatus::Rejected,
            reason: reason.into(),
        };
        stats.record(&AgentEvent::Connected { session_id: 1 });
        stats.record(&AgentEvent::Snapshot { generation: 2, fields: 1 });
        stats.record(&AgentEvent::Applied { path: "doors.lock".into(), generation: 2 });
        stats.record(&refused("precondition:parked"));
        stats.record(&refused("rate_limited"));
        stats.record(&refused("expired_on_arrival"));
        stats.record(&AgentEvent::Disconnected { error: "reset".into() });
        let status = stats.status(1, 2, FaultCount::default());
        assert_eq!((status.sessions, status.snapshots, status.applied, status.refused()), (1, 1, 1, 3));
        assert_eq!((status.refused_precondition, status.refused_rate_limited, status.refused_other), (1, 1, 1));
        assert_eq!(status.disconnects, 1);
        assert!(status.to_string().starts_with("connected 1/2 |"), "{status}");
    }
}
