//! The operator CLI as a process against a real tetherd and a real agent.

use std::process::Output;
use std::time::Duration;

use tether_sdk::{Agent, AgentEvent, RecordingCapability};
use tether_tests::TestServer;

use crate::command_path::event;

pub(crate) async fn tether(server: &TestServer, args: &[&str]) -> Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether-cli-under-test"))
        .arg("--server")
        .arg(server.url())
        .args(args)
        .output();
    tokio::time::timeout(Duration::from_secs(30), out).await.expect("the CLI finishes").expect("the CLI runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stdout(out).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

#[tokio::test]
async fn set_get_list_cancel_through_the_cli() {
    let server = TestServer::start().await;
    let agent = Agent::builder(server.url(), "car-cli")
        .capability(RecordingCapability::new("windows"))
        .capability(RecordingCapability::new("doors"))
        .capability(RecordingCapability::new("climate"))
        .default_rate_limit(Duration::ZERO)
        .spawn();
    let mut events = agent.events();
    event(&mut events, |e| matches!(e, AgentEvent::Connected { .. })).await;

    // A readable write with progress, waiting for APPLIED.
    let out = tether(&server, &["set", "car-cli", "windows.front_left=100", "doors.lock=locked"]).await;
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("APPLIED"), "{}", stdout(&out));
    let progress = stderr(&out);
    assert!(progress.contains("windows.front_left:") && progress.contains("APPLIED"), "progress: {progress}");

    // The same in JSON.
    let out = tether(&server, &["--json", "set", "car-cli", "climate.target_temperature_celsius=21.5"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert!(lines.iter().any(|l| l.to_string().contains("APPLIED")), "{lines:?}");

    // get shows desired values by name and the presence.
    let out = tether(&server, &["get", "car-cli"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in ["windows.front_left", "doors.lock", "LOCKED", "21.5", "online"] {
        assert!(text.contains(needle), "`get` lacks {needle}:\n{text}");
    }

    let out = tether(&server, &["--json", "list"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("car-cli"), "{}", stdout(&out));

    // A write that cannot be applied now, then cancelled.
    agent.shutdown().await;
    let out = tether(&server, &["set", "car-cli", "--wait", "none", "windows.sunroof=50"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tether(&server, &["--json", "cancel", "car-cli"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("windows.sunroof"), "{}", stdout(&out));
}

#[tokio::test]
async fn the_cli_reports_bad_input_and_deadlines_clearly() {
    let server = TestServer::start().await;
    // Refused before any network call: exit 2, names the path and the accepted values.
    let out = tether(&server, &["set", "car-x", "doors.lock=ajar"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("doors.lock") && stderr(&out).contains("LOCKED"), "{}", stderr(&out));

    // No vehicle connected: the wait ends at the deadline, the state stays stored.
    let out = tether(&server, &["set", "car-x", "--timeout", "300ms", "windows.rear_left=20"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("DEADLINE_EXCEEDED"), "{}", stderr(&out));
    let out = tether(&server, &["--json", "get", "car-x"]).await;
    assert!(stdout(&out).contains("windows.rear_left"), "{}", stdout(&out));

    let out = tether(&server, &["get", "nobody"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("NOT_FOUND"), "{}", stderr(&out));
}
