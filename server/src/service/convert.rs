//! Conversions from the core's and the hub's types to the contract's messages.

use std::time::SystemTime;

use tether_proto::StateSchema;
use tether_proto::app::v1 as pb;

use crate::core::FieldOutcome;
use crate::hub::{Presence, VehicleInner};

/// A timestamp message.
pub(crate) fn ts(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// A field outcome message.
pub(crate) fn outcome(o: &FieldOutcome) -> pb::FieldOutcome {
    pb::FieldOutcome {
        path: o.path.to_string(),
        status: o.status as i32,
        generation: o.generation,
        expires_at: o.expires_at.map(ts),
        reason: o.reason.clone(),
        message: o.message.clone(),
    }
}

/// A presence message.
pub(crate) fn presence(p: &Presence, snapshot_pending: bool) -> pb::Presence {
    pb::Presence {
        online: p.online(),
        session_id: p.session_id,
        connected_at: p.connected_at.map(ts),
        last_seen: p.last_seen.map(ts),
        agent_version: p.agent_version.clone(),
        snapshot_pending,
        unacknowledged_generation: p.unacked.unwrap_or(0),
        snapshots_sent: p.snapshots_sent,
    }
}

/// The complete view of a vehicle.
pub(crate) fn vehicle(id: &str, inner: &VehicleInner, now: SystemTime) -> pb::Vehicle {
    let record = &inner.record;
    let live = record.desired.values().filter(|f| f.is_live(now)).map(|f| &f.value.encoded);
    let fields = record
        .desired
        .values()
        .map(|f| {
            let o = record.outcome(&f.value.path, f.generation, now);
            pb::DesiredField {
                path: f.value.path.to_string(),
                status: o.status as i32,
                generation: f.generation,
                expires_at: f.expires_at.map(ts),
                set_at: Some(ts(f.set_at)),
                set_by: f.origin.subject.to_string(),
                idempotency_key: f.origin.idempotency_key.to_string(),
                reason: f.reason.clone(),
                message: f.message.clone(),
            }
        })
        .collect();
    pb::Vehicle {
        vehicle_id: id.to_string(),
        generation: record.generation,
        observed_generation: record.observed_generation,
        desired: Some(StateSchema::join(live)),
        actual: Some(StateSchema::join(record.actual.values().map(|v| &v.encoded))),
        fields,
        presence: Some(presence(&inner.presence, inner.snapshot_pending())),
    }
}
