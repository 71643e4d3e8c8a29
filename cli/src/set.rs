//! `tether set`: writes desired state from `PATH=VALUE` arguments, waits for
//! an acknowledgement level while showing each field's progress, and reports
//! the outcome per field.

mod progress;

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tether_sdk::pb::{FieldValue, StateSchema};
use tether_sdk::{Patch, WaitLevel, WriteOutcome};
use tokio::time::Instant;

use crate::output::{Output, is_failure, status_name};
use crate::values::{self, ValueError};
use crate::{Server, outcome, when};

use progress::Progress;

/// How long `set` waits before it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Wait {
    /// Until tetherd stored the write.
    None,
    /// Until the vehicle acknowledged receipt (or a final outcome).
    Delivered,
    /// Until the vehicle applied every field (or a final outcome).
    Applied,
}

impl From<Wait> for WaitLevel {
    fn from(wait: Wait) -> Self {
        match wait {
            Wait::None => WaitLevel::None,
            Wait::Delivered => WaitLevel::Delivered,
            Wait::Applied => WaitLevel::Applied,
        }
    }
}

/// Arguments of `tether set`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Values: true/false/on/off; integers and numbers within the field's range; enum values by \
    name (LOCK_STATE_LOCKED, LOCKED, locked) or number; timestamps as +10s (from now) or RFC 3339.\n\
    Exit status: 0 success; 3 the write was stored but a field ended REJECTED, FAILED, EXPIRED or CANCELLED; \
    1 an error such as DEADLINE_EXCEEDED (the write may still be stored: see `tether get`); 2 bad arguments.")]
pub(crate) struct Args {
    /// The vehicle id.
    vehicle: String,
    /// The fields to change, e.g. windows.front_left=0 doors.lock=locked horn.sound_until=+2s.
    #[arg(value_name = "PATH=VALUE", required = true)]
    assignments: Vec<String>,
    /// How long to wait before reporting.
    #[arg(long, value_enum, default_value_t = Wait::Applied)]
    wait: Wait,
    /// The call's deadline (tetherd's wait is bounded by it).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// How long the fields stay desired (default: the server's TTL).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "no_expiry")]
    ttl: Option<Duration>,
    /// The fields never expire (a standing state).
    #[arg(long)]
    no_expiry: bool,
    /// Write only if the vehicle's desired generation is N (else ABORTED).
    #[arg(long, value_name = "N")]
    expected_generation: Option<u64>,
    /// Fail with UNAVAILABLE, changing nothing, if the vehicle is offline.
    #[arg(long)]
    require_online: bool,
    /// The idempotency key (default: a fresh one); a retry with the same key
    /// returns the first outcome and changes nothing.
    #[arg(long)]
    key: Option<String>,
}

/// Fields of the write that ended REJECTED, FAILED, EXPIRED or CANCELLED.
#[derive(Debug)]
pub(crate) struct NotApplied {
    /// `path STATUS (reason)` of each such field.
    fields: Vec<String>,
}

impl fmt::Display for NotApplied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.fields.len();
        write!(f, "{n} field{} did not take effect: {}", if n == 1 { "" } else { "s" }, self.fields.join(", "))
    }
}

impl std::error::Error for NotApplied {}

/// Parses, sends and reports the write.
pub(crate) async fn run(server: &Server, schema: &StateSchema, output: Output, args: Args) -> anyhow::Result<()> {
    let fields = parse_all(schema, &args.assignments, SystemTime::now())?;
    let client = &server.connect().await?;
    let patch = Patch::from_raw(StateSchema::join(fields.iter().map(|f| &f.encoded)));
    // The key is ours (not the SDK's) so that progress can tell this write's
    // fields from earlier ones.
    let key = args.key.clone().unwrap_or_else(fresh_key);
    let mut write = client
        .set_desired(&args.vehicle, patch)
        .wait(args.wait.into())
        .timeout(args.timeout)
        .idempotency_key(key.clone());
    if let Some(ttl) = args.ttl {
        write = write.ttl(ttl);
    }
    if args.no_expiry {
        write = write.no_expiry();
    }
    if let Some(generation) = args.expected_generation {
        write = write.expected_generation(generation);
    }
    if args.require_online {
        write = write.require_online();
    }

    let started = Instant::now();
    let written = if output.is_json() || args.wait == Wait::None {
        write.send().await?
    } else {
        let mut progress = Progress::new(key.clone(), fields.iter().map(|f| f.path.to_string()));
        let result = tokio::select! {
            // Biased: once the write answered, its outcome is what counts.
            biased;
            result = write.send() => result,
            never = progress::follow(client, &args.vehicle, &mut progress, started, output) => match never {},
        };
        let written = result?;
        for line in progress.finish(&written.fields, started.elapsed()) {
            output.progress(&line);
        }
        written
    };
    report(output, &args.vehicle, &key, &written, started.elapsed())?;

    let failed: Vec<String> = written
        .fields
        .iter()
        .filter(|f| is_failure(f.status))
        .map(|f| match outcome::reason(&f.reason, &f.message) {
            r if r.is_empty() => format!("{} {}", f.path, status_name(f.status as i32)),
            r => format!("{} {} ({r})", f.path, status_name(f.status as i32)),
        })
        .collect();
    if failed.is_empty() { Ok(()) } else { Err(NotApplied { fields: failed }.into()) }
}

/// Parses every argument; a path may appear once.
fn parse_all(schema: &StateSchema, args: &[String], now: SystemTime) -> Result<Vec<FieldValue>, ValueError> {
    let mut seen = BTreeSet::new();
    let mut fields = Vec::with_capacity(args.len());
    for arg in args {
        let field = values::parse_assignment(schema, arg, now)?;
        if !seen.insert(field.path.clone()) {
            return Err(ValueError::duplicate(&field.path));
        }
        fields.push(field);
    }
    Ok(fields)
}

/// A fresh idempotency key: unique per process and instant.
fn fresh_key() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("tether-cli-{}-{nanos}", std::process::id())
}

fn report(output: Output, vehicle: &str, key: &str, written: &WriteOutcome, took: Duration) -> std::io::Result<()> {
    output.emit(
        || {
            serde_json::json!({
                "vehicle_id": vehicle,
                "generation": written.generation,
                "replayed": written.replayed,
                "idempotency_key": key,
                "elapsed_ms": took.as_millis() as u64,
                "fields": outcome::json(&written.fields),
            })
        },
        || {
            let replayed =
                if written.replayed { ", replayed: the outcome of an earlier write with this key" } else { "" };
            format!(
                "{vehicle}: generation {} in {}{replayed}\n{}",
                written.generation,
                when::span(took),
                outcome::table(&written.fields, SystemTime::now())
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_argument_once() {
        let schema = StateSchema::contract();
        let now = SystemTime::now();
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let fields = parse_all(&schema, &args(&["windows.front_left=0", "doors.lock=locked"]), now).unwrap();
        assert_eq!(fields.len(), 2);
        let err = parse_all(&schema, &args(&["doors.lock=locked", "doors.lock=unlocked"]), now).unwrap_err();
        assert_eq!(err.to_string(), "doors.lock: given more than once; expected each path once");
        let key = fresh_key();
        assert!(key.starts_with("tether-cli-") && key.len() <= 128, "{key}");
    }

    #[test]
    fn names_the_fields_that_did_not_take_effect() {
        let err = NotApplied { fields: vec!["doors.lock REJECTED (precondition)".into()] };
        assert_eq!(err.to_string(), "1 field did not take effect: doors.lock REJECTED (precondition)");
    }
}
