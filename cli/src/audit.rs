//! `tether audit`: a vehicle's audit trail, newest first — who wrote or
//! cancelled what, when, with which idempotency key, and what became of it.

use std::time::SystemTime;

use tether_sdk::Client;
use tether_sdk::pb::StateSchema;
use tether_sdk::pb::app::v1::{AuditAction, AuditOutcome, AuditRecord};

use crate::output::{Output, Table, code_name};
use crate::{values, when};

/// Arguments of `tether audit`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The vehicle id.
    vehicle: String,
    /// Show at most this many records (newest first; 0: all the server keeps).
    #[arg(long, value_name = "N", default_value_t = 50)]
    limit: usize,
}

/// Records per request.
const PAGE: u32 = 500;

/// Reads pages until `limit` records (or the end) and prints them.
pub(crate) async fn run(client: &Client, schema: &StateSchema, output: Output, args: Args) -> anyhow::Result<()> {
    let mut records = Vec::new();
    let mut token = String::new();
    loop {
        let want = if args.limit == 0 { PAGE } else { PAGE.min(u32::try_from(args.limit - records.len())?) };
        let page = client.audit_records(&args.vehicle, want, token.clone()).await?;
        for record in page.records {
            if output.is_json() {
                output.emit(|| record_json(schema, &record), String::new)?;
            }
            records.push(record);
        }
        if page.next_page_token.is_empty() || (args.limit != 0 && records.len() >= args.limit) {
            break;
        }
        anyhow::ensure!(page.next_page_token != token, "tetherd returned the same page token twice");
        token = page.next_page_token;
    }
    if !output.is_json() {
        output.emit(serde_json::Value::default, || human(schema, &args.vehicle, &records, SystemTime::now()))?;
    }
    Ok(())
}

fn action(record: &AuditRecord) -> &'static str {
    match AuditAction::try_from(record.action) {
        Ok(AuditAction::SetDesired) => "set",
        Ok(AuditAction::CancelDesired) => "cancel",
        _ => "?",
    }
}

fn outcome(record: &AuditRecord) -> String {
    match AuditOutcome::try_from(record.outcome) {
        Ok(AuditOutcome::Accepted) => "ACCEPTED".into(),
        Ok(AuditOutcome::Replayed) => "REPLAYED".into(),
        Ok(AuditOutcome::Refused) => format!("REFUSED {}", code_name(tonic::Code::from_i32(record.code))),
        _ => "?".into(),
    }
}

/// What the call asked for: `path=value` for a write (paths alone if the
/// patch does not decode), the paths (or `all`) for a cancel.
fn what(schema: &StateSchema, record: &AuditRecord, now: SystemTime) -> String {
    if record.action == AuditAction::CancelDesired as i32 {
        return if record.paths.is_empty() { "all unapplied fields".into() } else { record.paths.join(" ") };
    }
    match values::leaves(schema, record.patch.as_ref()) {
        Ok(leaves) if !leaves.is_empty() => leaves
            .iter()
            .map(|f| format!("{}={}", f.path, values::render(schema, f, now)))
            .collect::<Vec<_>>()
            .join(" "),
        _ => record.paths.join(" "),
    }
}

fn human(schema: &StateSchema, vehicle: &str, records: &[AuditRecord], now: SystemTime) -> String {
    if records.is_empty() {
        return format!("{vehicle}: no audit records");
    }
    let mut table = Table::new(&["WHEN", "WHO", "ACTION", "WHAT", "KEY", "OUTCOME", "GENERATION", "MESSAGE"]);
    for r in records {
        let at = when::from_pb(r.recorded_at.as_ref()).map_or_else(|| "?".into(), when::rfc3339);
        let generation = if r.outcome == AuditOutcome::Refused as i32 { "-".into() } else { r.generation.to_string() };
        table.row(vec![
            at,
            r.subject.clone(),
            action(r).into(),
            what(schema, r, now),
            r.idempotency_key.clone(),
            outcome(r),
            generation,
            r.message.clone(),
        ]);
    }
    format!(
        "{vehicle}: {} audit record{}, newest first\n{}",
        records.len(),
        if records.len() == 1 { "" } else { "s" },
        table.render("  ")
    )
}

fn record_json(schema: &StateSchema, r: &AuditRecord) -> serde_json::Value {
    let values: serde_json::Map<String, serde_json::Value> = values::leaves(schema, r.patch.as_ref())
        .unwrap_or_default()
        .iter()
        .map(|f| (f.path.to_string(), values::to_json(schema, f)))
        .collect();
    serde_json::json!({
        "sequence": r.sequence,
        "recorded_at": when::json(when::from_pb(r.recorded_at.as_ref())),
        "vehicle_id": r.vehicle_id,
        "subject": r.subject,
        "action": action(r),
        "idempotency_key": r.idempotency_key,
        "values": values,
        "paths": r.paths,
        "outcome": AuditOutcome::try_from(r.outcome).map_or("UNSPECIFIED", |o| o.as_str_name().trim_start_matches("AUDIT_OUTCOME_")),
        "code": code_name(tonic::Code::from_i32(r.code)),
        "message": r.message,
        "generation": r.generation,
        "ttl": r.ttl.and_then(|d| std::time::Duration::try_from(d).ok()).map(|d| humantime::format_duration(d).to_string()),
        "no_expiry": r.no_expiry,
        "expected_generation": r.expected_generation,
        "require_online": r.require_online,
    })
}
