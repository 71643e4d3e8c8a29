//! `tether list`: every vehicle tetherd knows, a page at a time from the
//! server, one line per vehicle.

use std::time::SystemTime;

use tether_sdk::Client;
use tether_sdk::pb::app::v1::VehicleSummary;

use crate::output::{Output, Table};
use crate::when;

/// Arguments of `tether list`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Only vehicles with a live session.
    #[arg(long)]
    online: bool,
    /// Vehicles per request (0: the server's default; at most 1000).
    #[arg(long, value_name = "N", default_value_t = 0)]
    page_size: u32,
}

/// Reads every page and prints the vehicles.
pub(crate) async fn run(client: &Client, output: Output, args: Args) -> anyhow::Result<()> {
    let mut vehicles = Vec::new();
    let mut token = String::new();
    loop {
        let page = client.list_vehicles(args.page_size, token.clone(), args.online).await?;
        if output.is_json() {
            // Machines get each vehicle as soon as its page arrives.
            for v in &page.vehicles {
                output.emit(|| summary_json(v), String::new)?;
            }
        } else {
            vehicles.extend(page.vehicles);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        anyhow::ensure!(page.next_page_token != token, "tetherd returned the same page token twice");
        token = page.next_page_token;
    }
    if !output.is_json() {
        output.emit(serde_json::Value::default, || human(&vehicles, SystemTime::now()))?;
    }
    Ok(())
}

fn summary_json(v: &VehicleSummary) -> serde_json::Value {
    let presence = v.presence.as_ref();
    serde_json::json!({
        "vehicle_id": v.vehicle_id,
        "online": presence.is_some_and(|p| p.online),
        "session_id": presence.map(|p| p.session_id),
        "last_seen": when::json(when::from_pb(presence.and_then(|p| p.last_seen.as_ref()))),
        "generation": v.generation,
        "observed_generation": v.observed_generation,
        "unapplied_fields": v.unapplied_fields,
    })
}

fn human(vehicles: &[VehicleSummary], now: SystemTime) -> String {
    let mut table = Table::new(&["VEHICLE", "ONLINE", "GEN", "OBSERVED", "UNAPPLIED", "LAST SEEN"]);
    for v in vehicles {
        let presence = v.presence.as_ref();
        let last_seen = when::from_pb(presence.and_then(|p| p.last_seen.as_ref()));
        table.row(vec![
            v.vehicle_id.clone(),
            if presence.is_some_and(|p| p.online) { "yes" } else { "no" }.into(),
            v.generation.to_string(),
            v.observed_generation.to_string(),
            v.unapplied_fields.to_string(),
            last_seen.map_or("-".into(), |t| when::relative(t, now)),
        ]);
    }
    let online = vehicles.iter().filter(|v| v.presence.as_ref().is_some_and(|p| p.online)).count();
    let count = format!("{} vehicle{}, {online} online", vehicles.len(), if vehicles.len() == 1 { "" } else { "s" });
    if table.is_empty() { count } else { format!("{}\n{count}", table.render("")) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tether_sdk::pb::app::v1::Presence;

    use super::*;

    #[test]
    fn one_line_per_vehicle() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let vehicles = vec![
            VehicleSummary {
                vehicle_id: "car-1".into(),
                presence: Some(Presence {
                    online: true,
                    last_seen: Some((now - Duration::from_secs(2)).into()),
                    ..Default::default()
                }),
                generation: 7,
                observed_generation: 6,
                unapplied_fields: 1,
            },
            VehicleSummary { vehicle_id: "car-2".into(), ..Default::default() },
        ];
        let text = human(&vehicles, now);
        assert_eq!(
            text,
            "VEHICLE  ONLINE  GEN  OBSERVED  UNAPPLIED  LAST SEEN\n\
             car-1    yes     7    6         1          2s ago\n\
             car-2    no      0    0         0          -\n\
             2 vehicles, 1 online"
        );
        assert_eq!(human(&[], now), "0 vehicles, 0 online");
        assert_eq!(summary_json(&vehicles[0])["online"], true);
    }
}
