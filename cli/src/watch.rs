//! `tether watch`: one line per change of a vehicle (desired, actual, field
//! status, presence) until Ctrl-C.

use std::collections::BTreeMap;
use std::time::SystemTime;

use futures::StreamExt;
use prost_reflect::Value;
use tether_sdk::Client;
use tether_sdk::pb::StateSchema;
use tether_sdk::pb::app::v1::{ChangeKind, Vehicle, VehicleEvent};

use crate::get::vehicle_json;
use crate::output::{Output, status_name};
use crate::{values, when};

/// Arguments of `tether watch`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The vehicle id.
    vehicle: String,
    /// The last generation seen (0: none); the first event says whether
    /// anything changed since.
    #[arg(long, value_name = "N", default_value_t = 0)]
    from_generation: u64,
}

/// Prints the vehicle's events until Ctrl-C or an error.
pub(crate) async fn run(client: &Client, schema: &StateSchema, output: Output, args: Args) -> anyhow::Result<()> {
    let mut events = client.watch(&args.vehicle, args.from_generation).await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut seen = Seen::default();
    let mut last_generation = args.from_generation;
    let mut first = true;
    loop {
        let event = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            event = events.next() => event,
        };
        let resume = || format!("resume with: tether watch {} --from-generation {last_generation}", args.vehicle);
        let event = match event {
            Some(Ok(event)) => event,
            Some(Err(e)) => return Err(anyhow::Error::new(e).context(resume())),
            None => anyhow::bail!("tetherd ended the watch; {}", resume()),
        };
        let Some(vehicle) = &event.vehicle else { continue };
        let diff = seen.update(schema, vehicle);
        let line = Line { event: &event, vehicle, diff: &diff, first, from_generation: args.from_generation };
        output.emit(|| line.json(schema), || line.human(schema, SystemTime::now()))?;
        last_generation = vehicle.generation;
        first = false;
    }
}

/// What this watch has seen of the vehicle, to tell what changed.
#[derive(Debug, Default)]
struct Seen {
    statuses: BTreeMap<String, i32>,
    actual: BTreeMap<String, Value>,
}

/// What changed in one event.
#[derive(Debug, Default)]
struct Diff {
    /// `(path, previous status, status)` of fields whose status changed.
    statuses: Vec<(String, Option<i32>, i32)>,
    /// Actual values that changed (`None`: no longer reported).
    actual: Vec<(String, Option<tether_sdk::pb::FieldValue>)>,
}

impl Seen {
    fn update(&mut self, schema: &StateSchema, vehicle: &Vehicle) -> Diff {
        let mut diff = Diff::default();
        for field in &vehicle.fields {
            let before = self.statuses.insert(field.path.clone(), field.status);
            if before != Some(field.status) {
                diff.statuses.push((field.path.clone(), before, field.status));
            }
        }
        // An undecodable actual state (a newer contract's) shows as unchanged.
        let Ok(actual) = values::leaves(schema, vehicle.actual.as_ref()) else { return diff };
        let mut now: BTreeMap<String, Value> = BTreeMap::new();
        for field in actual {
            if self.actual.get(&*field.path) != Some(&field.value) {
                diff.actual.push((field.path.to_string(), Some(field.clone())));
            }
            now.insert(field.path.to_string(), field.value);
        }
        for gone in self.actual.keys().filter(|p| !now.contains_key(*p)) {
            diff.actual.push((gone.clone(), None));
        }
        self.actual = now;
        diff
    }
}

/// One event, ready to print.
struct Line<'a> {
    event: &'a VehicleEvent,
    vehicle: &'a Vehicle,
    diff: &'a Diff,
    first: bool,
    from_generation: u64,
}

impl Line<'_> {
    fn changes(&self) -> Vec<String> {
        self.event.changes.iter().map(|c| change_name(*c)).collect()
    }

    fn human(&self, schema: &StateSchema, now: SystemTime) -> String {
        let mut parts = vec![
            humantime::format_rfc3339_millis(now).to_string(),
            format!("gen {}/{}", self.vehicle.generation, self.vehicle.observed_generation),
            self.changes().join(","),
        ];
        if self.first && self.from_generation > 0 {
            parts.push(match self.event.resumed {
                true => "resumed: nothing missed".into(),
                false => format!("changed since generation {}", self.from_generation),
            });
        }
        let presence_changed = self.event.changes.contains(&(ChangeKind::Presence as i32));
        if let Some(p) = &self.vehicle.presence
            && (presence_changed || self.first)
        {
            parts.push(match p.online {
                true => format!("online (session {})", p.session_id),
                false => "offline".into(),
            });
        }
        for (path, before, after) in &self.diff.statuses {
            parts.push(match before {
                Some(before) => format!("{path}: {} → {}", status_name(*before), status_name(*after)),
                None => format!("{path}: {}", status_name(*after)),
            });
        }
        for (path, value) in &self.diff.actual {
            let text = value.as_ref().map_or("(none)".into(), |v| values::render(schema, v, now));
            parts.push(format!("actual {path}={text}"));
        }
        parts.join("  ")
    }

    fn json(&self, schema: &StateSchema) -> serde_json::Value {
        let statuses: Vec<serde_json::Value> = self
            .diff
            .statuses
            .iter()
            .map(|(path, before, after)| {
                serde_json::json!({ "path": path, "from": before.map(status_name), "to": status_name(*after) })
            })
            .collect();
        let actual: serde_json::Map<String, serde_json::Value> = self
            .diff
            .actual
            .iter()
            .map(|(path, v)| (path.clone(), v.as_ref().map_or(serde_json::Value::Null, |v| values::to_json(schema, v))))
            .collect();
        serde_json::json!({
            "time": when::json(Some(SystemTime::now())),
            "changes": self.changes(),
            "resumed": self.event.resumed,
            "generation": self.vehicle.generation,
            "observed_generation": self.vehicle.observed_generation,
            "status_changes": statuses,
            "actual_changes": actual,
            "vehicle": vehicle_json(schema, self.vehicle),
        })
    }
}

/// A change kind as printed: `desired`, `actual`, `status` or `presence`.
fn change_name(kind: i32) -> String {
    match ChangeKind::try_from(kind) {
        Ok(ChangeKind::FieldStatus) => "status".into(),
        Ok(k) => k.as_str_name().trim_start_matches("CHANGE_KIND_").to_ascii_lowercase(),
        Err(_) => format!("#{kind}"),
    }
}

#[cfg(test)]
mod tests {
    use tether_sdk::FieldStatus;
    use tether_sdk::pb::app::v1::{DesiredField, Presence};

    use super::*;

    #[test]
    fn reports_what_changed() {
        let schema = StateSchema::contract();
        let now = SystemTime::now();
        let state = |arg: &str| {
            let f = values::parse_assignment(&schema, arg, now).unwrap();
            StateSchema::join([&f.encoded])
        };
        let field = |status: FieldStatus| DesiredField {
            path: "windows.front_left".into(),
            status: status as i32,
            ..Default::default()
        };
        let mut seen = Seen::default();
        let v1 = Vehicle {
            generation: 3,
            fields: vec![field(FieldStatus::Pending)],
            actual: Some(state("windows.front_left=100")),
            presence: Some(Presence { online: true, session_id: 9, ..Default::default() }),
            ..Default::default()
        };
        let diff = seen.update(&schema, &v1);
        assert_eq!(diff.statuses, [("windows.front_left".to_string(), None, FieldStatus::Pending as i32)]);
        let event = VehicleEvent { vehicle: Some(v1.clone()), changes: vec![1, 2, 3, 4], resumed: false };
        let line = Line { event: &event, vehicle: &v1, diff: &diff, first: true, from_generation: 2 };
        let text = line.human(&schema, now);
        assert!(text.contains("gen 3/0  desired,actual,status,presence  changed since generation 2"), "{text}");
        assert!(
            text.contains("online (session 9)  windows.front_left: PENDING  actual windows.front_left=100"),
            "{text}"
        );

        let v2 =
            Vehicle { fields: vec![field(FieldStatus::Applied)], actual: Some(state("windows.front_left=0")), ..v1 };
        let diff = seen.update(&schema, &v2);
        let event = VehicleEvent { vehicle: Some(v2.clone()), changes: vec![2, 3], resumed: false };
        let line = Line { event: &event, vehicle: &v2, diff: &diff, first: false, from_generation: 2 };
        let text = line.human(&schema, now);
        assert!(
            text.ends_with("actual,status  windows.front_left: PENDING → APPLIED  actual windows.front_left=0"),
            "{text}"
        );
        let json = line.json(&schema);
        assert_eq!(json["status_changes"][0]["to"], "APPLIED");
        assert_eq!(json["actual_changes"]["windows.front_left"], 0);
        assert_eq!(json["changes"], serde_json::json!(["actual", "status"]));
        assert!(seen.update(&schema, &v2).statuses.is_empty());
    }
}
