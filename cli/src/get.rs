//! `tether get`: everything tetherd knows of one vehicle — generations,
//! presence, the desired fields with their status, and the actual state.

use std::collections::BTreeMap;
use std::time::SystemTime;

use tether_sdk::Client;
use tether_sdk::pb::StateSchema;
use tether_sdk::pb::app::v1::{Presence, Vehicle};

use crate::outcome::{expiry, reason};
use crate::output::{Output, Table, status_name};
use crate::{values, when};

/// Arguments of `tether get`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The vehicle id.
    vehicle: String,
}

/// Reads the vehicle and prints it.
pub(crate) async fn run(client: &Client, schema: &StateSchema, output: Output, args: Args) -> anyhow::Result<()> {
    let vehicle = client.get_vehicle(&args.vehicle).await?;
    let now = SystemTime::now();
    output.emit(|| vehicle_json(schema, &vehicle), || human(schema, &vehicle, now))?;
    Ok(())
}

/// A vehicle's desired and actual values, decoded (the error of a state this
/// CLI's contract cannot read is kept as a note).
struct Decoded {
    desired: BTreeMap<String, (String, serde_json::Value)>,
    actual: Vec<(String, String, serde_json::Value)>,
    notes: Vec<String>,
}

fn decode(schema: &StateSchema, vehicle: &Vehicle, now: SystemTime) -> Decoded {
    let mut decoded = Decoded { desired: BTreeMap::new(), actual: Vec::new(), notes: Vec::new() };
    match values::leaves(schema, vehicle.desired.as_ref()) {
        Ok(fields) => {
            for f in &fields {
                let value = (values::render(schema, f, now), values::to_json(schema, f));
                decoded.desired.insert(f.path.to_string(), value);
            }
        }
        Err(e) => decoded.notes.push(format!("desired state not shown: {e}")),
    }
    match values::leaves(schema, vehicle.actual.as_ref()) {
        Ok(fields) => {
            decoded.actual = fields
                .iter()
                .map(|f| (f.path.to_string(), values::render(schema, f, now), values::to_json(schema, f)))
                .collect();
        }
        Err(e) => decoded.notes.push(format!("actual state not shown: {e}")),
    }
    decoded
}

/// The vehicle as one JSON object (also the `vehicle` of watch events).
pub(crate) fn vehicle_json(schema: &StateSchema, vehicle: &Vehicle) -> serde_json::Value {
    let decoded = decode(schema, vehicle, SystemTime::now());
    let desired: Vec<serde_json::Value> = vehicle
        .fields
        .iter()
        .map(|f| {
            serde_json::json!({
                "path": f.path,
                "value": decoded.desired.get(&f.path).map(|(_, json)| json.clone()),
                "status": status_name(f.status),
                "generation": f.generation,
                "expires_at": when::json(when::from_pb(f.expires_at.as_ref())),
                "set_at": when::json(when::from_pb(f.set_at.as_ref())),
                "set_by": f.set_by,
                "idempotency_key": f.idempotency_key,
                "reason": f.reason,
                "message": f.message,
            })
        })
        .collect();
    let actual: serde_json::Map<String, serde_json::Value> =
        decoded.actual.into_iter().map(|(path, _, json)| (path, json)).collect();
    let mut json = serde_json::json!({
        "vehicle_id": vehicle.vehicle_id,
        "generation": vehicle.generation,
        "observed_generation": vehicle.observed_generation,
        "presence": vehicle.presence.as_ref().map(presence_json),
        "desired": desired,
        "actual": actual,
    });
    if !decoded.notes.is_empty() {
        json["notes"] = decoded.notes.into();
    }
    json
}

fn presence_json(p: &Presence) -> serde_json::Value {
    serde_json::json!({
        "online": p.online,
        "session_id": p.session_id,
        "connected_at": when::json(when::from_pb(p.connected_at.as_ref())),
        "last_seen": when::json(when::from_pb(p.last_seen.as_ref())),
        "agent_version": p.agent_version,
        "snapshot_pending": p.snapshot_pending,
        "unacknowledged_generation": p.unacknowledged_generation,
        "snapshots_sent": p.snapshots_sent,
    })
}

/// The vehicle for people.
fn human(schema: &StateSchema, vehicle: &Vehicle, now: SystemTime) -> String {
    let decoded = decode(schema, vehicle, now);
    let mut head = Table::default();
    head.row(vec!["vehicle".into(), vehicle.vehicle_id.clone()]);
    head.row(vec!["generation".into(), format!("{} (observed {})", vehicle.generation, vehicle.observed_generation)]);
    if let Some(p) = &vehicle.presence {
        for (key, value) in presence_lines(p, now) {
            head.row(vec![key.into(), value]);
        }
    }
    let mut out = head.render("");

    out.push_str("\ndesired");
    let mut desired = Table::new(&["PATH", "VALUE", "STATUS", "GEN", "EXPIRES", "SET BY", "REASON"]);
    for f in &vehicle.fields {
        let value = decoded.desired.get(&f.path).map_or("-".to_string(), |(text, _)| text.clone());
        desired.row(vec![
            f.path.clone(),
            value,
            status_name(f.status),
            f.generation.to_string(),
            expiry(when::from_pb(f.expires_at.as_ref()), now),
            f.set_by.clone(),
            reason(&f.reason, &f.message),
        ]);
    }
    out.push('\n');
    out.push_str(&if desired.is_empty() { "  (none)".to_string() } else { desired.render("  ") });

    out.push_str("\nactual");
    if decoded.actual.is_empty() {
        out.push_str("\n  (none reported)");
    }
    for (path, text, _) in &decoded.actual {
        out.push_str(&format!("\n  {path} = {text}"));
    }
    for note in &decoded.notes {
        out.push_str(&format!("\nnote: {note}"));
    }
    out
}

/// Presence as `key, value` lines for people.
fn presence_lines(p: &Presence, now: SystemTime) -> Vec<(&'static str, String)> {
    let at = |t: Option<&prost_types::Timestamp>| {
        when::from_pb(t).map_or("-".to_string(), |t| when::absolute_and_relative(t, now))
    };
    let presence = match (p.online, p.session_id) {
        (true, id) => format!("online (session {id})"),
        (false, 0) => "offline (never connected)".to_string(),
        (false, id) => format!("offline (last session {id})"),
    };
    let mut lines = vec![("presence", presence)];
    if p.connected_at.is_some() {
        lines.push(("connected", at(p.connected_at.as_ref())));
    }
    if p.last_seen.is_some() {
        lines.push(("last seen", at(p.last_seen.as_ref())));
    }
    if !p.agent_version.is_empty() {
        lines.push(("agent", p.agent_version.clone()));
    }
    let pending = if p.snapshot_pending { "pending" } else { "none pending" };
    let unacked = match p.unacknowledged_generation {
        0 => String::new(),
        g => format!(", generation {g} unacknowledged"),
    };
    lines.push(("snapshot", format!("{pending}{unacked}, {} sent in this session", p.snapshots_sent)));
    lines
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tether_sdk::FieldStatus;
    use tether_sdk::pb::app::v1::DesiredField;

    use super::*;

    #[test]
    fn renders_a_vehicle() {
        let schema = StateSchema::contract();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let state = |args: &[&str]| {
            let fields: Vec<_> = args.iter().map(|a| values::parse_assignment(&schema, a, now).unwrap()).collect();
            StateSchema::join(fields.iter().map(|f| &f.encoded))
        };
        let vehicle = Vehicle {
            vehicle_id: "car-1".into(),
            generation: 7,
            observed_generation: 6,
            desired: Some(state(&["doors.lock=locked"])),
            actual: Some(state(&["doors.lock=unlocked", "windows.front_left=30"])),
            fields: vec![DesiredField {
                path: "doors.lock".into(),
                status: FieldStatus::Delivered as i32,
                generation: 7,
                expires_at: Some((now + Duration::from_secs(60)).into()),
                set_by: "ops".into(),
                ..Default::default()
            }],
            presence: Some(Presence { online: true, session_id: 3, ..Default::default() }),
        };
        let text = human(&schema, &vehicle, now);
        assert!(text.contains("generation  7 (observed 6)"), "{text}");
        assert!(text.contains("presence    online (session 3)"), "{text}");
        assert!(text.contains("doors.lock  LOCKED  DELIVERED  7    in 1m    ops"), "{text}");
        assert!(text.contains("windows.front_left = 30"), "{text}");
        let json = vehicle_json(&schema, &vehicle);
        assert_eq!(json["desired"][0]["value"], "LOCKED");
        assert_eq!(json["actual"]["doors.lock"], "UNLOCKED");
        assert_eq!(json["presence"]["online"], true);
    }
}
