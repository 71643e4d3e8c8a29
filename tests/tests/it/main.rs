//! End-to-end tests: a real tetherd on 127.0.0.1:0 and real gRPC clients.

mod audit;
mod auth;
mod bad_input;
mod bench_smoke;
mod cli;
mod cluster;
mod command_path;
mod config;
mod drain;
mod durability;
mod expiry;
mod generic_state;
mod metrics;
mod otlp_metrics;
mod raw_writes;
mod sessions;
mod simulator;
mod slow_reader;
mod storage;
mod surface;
mod tidy;
mod tls;
mod traces;
mod transport;

use tether_proto::RawState;
use tether_proto::app::v1::{SetDesiredRequest, WaitLevel};
use tether_proto::state::v1::{VehicleState, Windows};

/// Runs the real tetherd with `args` (a fresh data directory added), which
/// must refuse to start; returns its stderr, checked to be one line.
pub(crate) async fn refused_start(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tetherd-under-test"))
        .args(args)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "tetherd {args:?} started");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
    stderr
}

/// A patch setting the front-left window.
pub(crate) fn window(pct: u32) -> VehicleState {
    VehicleState { windows: Some(Windows { front_left: Some(pct), ..Default::default() }), ..Default::default() }
}

/// A SetDesired request with defaults a test can change.
pub(crate) fn set(vehicle: &str, key: &str, patch: VehicleState) -> SetDesiredRequest {
    SetDesiredRequest {
        vehicle_id: vehicle.into(),
        patch: Some(RawState::from_typed(&patch)),
        idempotency_key: key.into(),
        wait: WaitLevel::None as i32,
        ..Default::default()
    }
}
