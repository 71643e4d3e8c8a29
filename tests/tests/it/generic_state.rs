//! The server treats the state generically: a capability added in a test-only
//! contract flows end to end with no server code change, validated by the
//! rules in its descriptor.

use std::path::Path;

use prost_reflect::Value;
use tether_proto::StateSchema;
use tether_sdk::{Agent, AgentEvent, Client, FieldStatus, Patch, RecordingCapability, WaitLevel};
use tether_tests::TestServer;
use tonic::Code;

use crate::command_path::event;

/// The contract's proto tree with `VehicleState.seats` added (a new capability).
fn extended_contract(dir: &Path) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("proto");
    let copy = dir.join("proto");
    for entry in walk(&root) {
        let rel = entry.strip_prefix(&root).unwrap();
        let dst = copy.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &dst).unwrap();
    }
    let state = copy.join("tether/state/v1/state.proto");
    let text = std::fs::read_to_string(&state).unwrap();
    let text = text.replacen(
        "  Horn horn = 7;\n}",
        "  Horn horn = 7;\n  // Seats (test-only capability).\n  Seats seats = 50;\n}\n\n\
         // Seats.\nmessage Seats {\n  // Heater level, 0 to 3.\n  \
         optional uint32 heater_level = 1 [(tether.options.v1.rules) = {min: 0, max: 3}];\n}",
        1,
    );
    assert!(text.contains("Seats seats = 50"), "the test contract was extended");
    std::fs::write(&state, text).unwrap();
    let mut compiler = protox::Compiler::new([&copy]).unwrap();
    compiler.include_imports(true);
    compiler.open_files(["tether/state/v1/state.proto"]).unwrap();
    compiler.encode_file_descriptor_set()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn a_field_from_a_newer_contract_flows_end_to_end() {
    let scratch = tempfile::tempdir().unwrap();
    let fds = extended_contract(scratch.path());
    let fds_path = scratch.path().join("extended.binpb");
    std::fs::write(&fds_path, &fds).unwrap();
    let schema = StateSchema::from_descriptor_set(&fds, tether_proto::VEHICLE_STATE).unwrap();

    let server = TestServer::start_with(|c| c.state_descriptor = Some(fds_path.clone())).await;
    let client = Client::connect(server.url()).await.unwrap();
    let seats = RecordingCapability::new("seats");
    let applied = seats.applied();
    let agent = Agent::builder(server.url(), "car-x").schema(schema.clone()).capability(seats).spawn();
    let mut events = agent.events();
    event(&mut events, |e| matches!(e, AgentEvent::Connected { .. })).await;

    let heater = |level: u32| {
        let field = schema.field_value("seats.heater_level", Value::U32(level)).unwrap();
        Patch::from_raw(StateSchema::join([&field.encoded]))
    };
    let out = client.set_desired("car-x", heater(2)).wait(WaitLevel::Applied).await.unwrap();
    assert_eq!(out.fields[0].path, "seats.heater_level");
    assert_eq!(out.fields[0].status, FieldStatus::Applied);
    let got = applied.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!((&*got[0].path, &got[0].value), ("seats.heater_level", &Value::U32(2)));

    // The rules in the new descriptor are enforced too.
    let err = client.set_desired("car-x", heater(7)).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    assert!(err.to_string().contains("seats.heater_level"), "{err}");

    // The stored desired and actual state carry it, readable through the schema.
    let v = client.get_vehicle("car-x").await.unwrap();
    let desired = schema.split(v.desired.unwrap().as_bytes()).unwrap();
    assert_eq!(desired[0].value, Value::U32(2));
    let actual = schema.split(v.actual.unwrap().as_bytes()).unwrap();
    assert_eq!(actual[0].path.as_ref(), "seats.heater_level");
    agent.shutdown().await;

    // A server on the compiled-in contract refuses the unknown field clearly.
    let old = TestServer::start().await;
    let client = Client::connect(old.url()).await.unwrap();
    let err = client.set_desired("car-x", heater(1)).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    assert!(err.to_string().contains("field number 50"), "{err}");
}
