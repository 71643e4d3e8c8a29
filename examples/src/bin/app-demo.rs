//! `app-demo`: an app back end using only the tether SDK's public API —
//! writes of desired state with per-field outcomes, an idempotent retry, a
//! deadline, and a watch. Run `fleet-sim` first so the vehicle exists.
//!
//! ```text
//! app-demo --server http://127.0.0.1:50051 --vehicle sim-0000
//! app-demo --vehicle sim-0009     # a car that is not parked: windows refuse
//! ```

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use tether_sdk::pb::app::v1::{ChangeKind, Vehicle, VehicleEvent};
use tether_sdk::{Client, Error, FieldStatus, LockState, OpenState, Patch, WaitLevel, Window, WriteOutcome};
use tokio::time::Instant;

/// Drives one vehicle through the SDK and prints what happens.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// tetherd's URL.
    #[arg(long, env = "TETHER_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// The vehicle to drive.
    #[arg(long, default_value = "sim-0000")]
    vehicle: String,
}

/// The deadline of the writes that wait for APPLIED.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// A deadline too short for a simulated actuator (they take 200 ms or more).
const SHORT_TIMEOUT: Duration = Duration::from_millis(100);
/// How many watch events to print, and for how long at most.
const WATCH_EVENTS: usize = 8;
const WATCH_FOR: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tether_examples::logging::init("warn");
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("app-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let client = Client::connect(args.server.clone())
        .await
        .with_context(|| format!("cannot reach tetherd at {} (is it running?)", args.server))?;
    let id = args.vehicle.as_str();
    let vehicle = match client.get_vehicle(id).await {
        Ok(vehicle) => vehicle,
        Err(e) if e.code() == Some(tonic::Code::NotFound) => {
            anyhow::bail!("tetherd does not know {id}: start `fleet-sim` first (vehicles sim-0000, sim-0001, ...)")
        }
        Err(e) => return Err(e.into()),
    };
    let online = vehicle.presence.as_ref().is_some_and(|p| p.online);
    println!("{id}: {}, desired generation {}", if online { "online" } else { "OFFLINE" }, vehicle.generation);
    if !online {
        println!("  (writes below wait for a vehicle that is away: expect their deadlines to pass)");
    }

    println!("\n1. Open the front-left window fully; wait until APPLIED (deadline {APPLY_TIMEOUT:?})");
    let started = Instant::now();
    let write = client.set_desired(id, Patch::new().window(Window::FrontLeft, 100));
    show(write.wait(WaitLevel::Applied).timeout(APPLY_TIMEOUT).await, started);

    println!("\n2. Lock the doors and set the cabin to 21.5 °C, in one patch");
    let patch = Patch::new().lock(LockState::Locked).climate_on(true).target_temperature(21.5);
    let started = Instant::now();
    show(client.set_desired(id, patch).wait(WaitLevel::Applied).timeout(APPLY_TIMEOUT).await, started);

    println!("\n3. An idempotent retry: the same write twice with one idempotency key");
    let key = format!("app-demo-{:016x}", rand::random::<u64>());
    let limit = [60, 70, 80, 90][rand::random_range(0..4)];
    let charge = || Patch::new().charge_limit(limit);
    for attempt in ["first call", "retry"] {
        println!("   {attempt} (key {key}, charge limit {limit} %):");
        let started = Instant::now();
        let write = client.set_desired(id, charge()).idempotency_key(&key).wait(WaitLevel::Applied);
        show(write.timeout(APPLY_TIMEOUT).await, started);
    }
    println!("   the same key with a different patch:");
    let started = Instant::now();
    show(client.set_desired(id, Patch::new().charge_limit(limit / 2 + 50)).idempotency_key(&key).await, started);

    println!("\n4. A deadline: open the trunk, waiting for APPLIED at most {SHORT_TIMEOUT:?}");
    let started = Instant::now();
    let write = client.set_desired(id, Patch::new().trunk(OpenState::Open)).wait(WaitLevel::Applied);
    show(write.timeout(SHORT_TIMEOUT).await, started);
    let vehicle = client.get_vehicle(id).await?;
    println!("   the desired state stays stored: {}", fields(&vehicle, &["trunk.lid"]));

    println!("\n5. Watch the vehicle while closing the window and the trunk (no wait)");
    let mut events = client.watch(id, vehicle.generation).await?;
    let deadline = Instant::now() + WATCH_FOR;
    let close = Patch::new().window(Window::FrontLeft, 0).trunk(OpenState::Closed);
    let mut closed = false;
    for n in 1..=WATCH_EVENTS {
        let event = match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(Ok(event))) => event,
            Ok(Some(Err(e))) => {
                println!("   the watch failed: {e}");
                break;
            }
            Ok(None) => {
                println!("   the watch ended");
                break;
            }
            Err(_) => {
                println!("   (no more events within {WATCH_FOR:?})");
                break;
            }
        };
        println!("   event {n}: {}", describe(&event));
        if !closed {
            let outcome = client.set_desired(id, close.clone()).await?;
            println!("   (wrote the close: generation {})", outcome.generation);
            closed = true;
        }
        let done = event.vehicle.as_ref().is_some_and(|v| {
            ["windows.front_left", "trunk.lid"].iter().all(|p| {
                v.fields.iter().any(|f| {
                    f.path == *p && f.status != FieldStatus::Pending as i32 && f.status != FieldStatus::Delivered as i32
                })
            }) && v.observed_generation >= v.generation
        });
        if closed && n > 1 && done {
            break;
        }
    }
    // Dropping the stream ends the watch.
    Ok(())
}

/// Prints a write's outcome, field by field, or its error.
fn show(result: Result<WriteOutcome, Error>, started: Instant) {
    let took = started.elapsed();
    match result {
        Ok(outcome) => {
            println!(
                "   -> generation {}, {}in {}",
                outcome.generation,
                if outcome.replayed { "REPLAYED (nothing changed) " } else { "" },
                human(took)
            );
            for field in &outcome.fields {
                let why = if field.reason.is_empty() {
                    String::new()
                } else {
                    format!("  {}: {}", field.reason, field.message)
                };
                println!("      {:<38} {:<10}{why}", field.path, status_name(field.status));
            }
        }
        Err(e) => {
            let code = e.code().map_or_else(|| "transport error".to_string(), |c| format!("{c:?}"));
            let message = e.status().map_or_else(|| e.to_string(), |s| s.message().to_string());
            println!("   -> {code} after {}: {message}", human(took));
        }
    }
}

/// One watch event in a line: what changed, and where the demo's fields stand.
fn describe(event: &VehicleEvent) -> String {
    let changes: Vec<&str> = event
        .changes
        .iter()
        .map(|c| ChangeKind::try_from(*c).map_or("?", |k| k.as_str_name().trim_start_matches("CHANGE_KIND_")))
        .collect();
    let Some(vehicle) = &event.vehicle else { return format!("[{}] (no view)", changes.join(",")) };
    let online = vehicle.presence.as_ref().is_some_and(|p| p.online);
    format!(
        "[{}] generation {} observed {} {} | {}",
        changes.join(","),
        vehicle.generation,
        vehicle.observed_generation,
        if online { "online" } else { "offline" },
        fields(vehicle, &["windows.front_left", "trunk.lid"])
    )
}

/// `path=STATUS@generation` for each of `paths` the vehicle has.
fn fields(vehicle: &Vehicle, paths: &[&str]) -> String {
    let shown: Vec<String> = paths
        .iter()
        .filter_map(|p| vehicle.fields.iter().find(|f| f.path == *p))
        .map(|f| {
            let status = FieldStatus::try_from(f.status).unwrap_or(FieldStatus::Unspecified);
            format!("{}={}@{}", f.path, status_name(status), f.generation)
        })
        .collect();
    if shown.is_empty() { "(none of the demo's fields)".into() } else { shown.join(" ") }
}

/// A duration for people: `450 µs`, `812 ms`, `12.3 s`.
fn human(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else if d < Duration::from_secs(10) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn status_name(status: FieldStatus) -> &'static str {
    status.as_str_name().trim_start_matches("FIELD_STATUS_")
}
