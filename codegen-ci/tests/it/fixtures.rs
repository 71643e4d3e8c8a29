//! Test 1: the fixture suite. Each case applies one contract change to a scratch
//! copy of `proto/` and runs the check logic; the verdict and the bump it needs must
//! be the expected ones, and the changed contract must still pass lint (so each
//! case tests the gate, not a typo).

use std::fs;
use std::path::Path;

use codegen_ci::{Bump, Verdict, check};

use crate::support::{edit, repo, scratch};

const STATE: &str = "proto/tether/state/v1/state.proto";
const APP: &str = "proto/tether/app/v1/app.proto";
const SUNROOF: &str =
    "  // Sunroof.\n  optional uint32 sunroof = 5 [(tether.options.v1.rules) = {min: 0, max: 100}];\n";

struct Case {
    name: &'static str,
    change: fn(&Path),
    verdict: Verdict,
    /// A rule that must be among the breaking findings (None: no findings at all).
    rule: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "delete a field",
            change: |r| edit(r, STATE, SUNROOF, ""),
            verdict: Verdict::WireBreaking,
            rule: Some("FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED"),
        },
        Case {
            name: "delete a field, reserving its number and name",
            change: |r| edit(r, STATE, SUNROOF, "  reserved 5;\n  reserved \"sunroof\";\n"),
            verdict: Verdict::Breaking,
            rule: Some("FIELD_NO_DELETE"),
        },
        Case {
            name: "rename a field",
            change: |r| edit(r, STATE, "optional uint32 sunroof = 5", "optional uint32 roof = 5"),
            verdict: Verdict::WireBreaking,
            rule: Some("FIELD_SAME_JSON_NAME"),
        },
        Case {
            name: "change a scalar type",
            change: |r| edit(r, STATE, "optional bool on = 1;", "optional string on = 1;"),
            verdict: Verdict::WireBreaking,
            rule: Some("FIELD_SAME_TYPE"),
        },
        Case {
            name: "renumber a field",
            change: |r| edit(r, STATE, "optional LockState lock = 1;", "optional LockState lock = 3;"),
            verdict: Verdict::WireBreaking,
            rule: Some("FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED"),
        },
        Case {
            name: "delete an enum value",
            change: |r| edit(r, STATE, "  // Unlocked.\n  LOCK_STATE_UNLOCKED = 2;\n", ""),
            verdict: Verdict::WireBreaking,
            rule: Some("ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED"),
        },
        Case {
            name: "add an enum value",
            change: |r| {
                edit(
                    r,
                    STATE,
                    "  LOCK_STATE_UNLOCKED = 2;\n",
                    "  LOCK_STATE_UNLOCKED = 2;\n  // Double-locked.\n  LOCK_STATE_DOUBLE_LOCKED = 3;\n",
                )
            },
            verdict: Verdict::Addition,
            rule: None,
        },
        Case {
            name: "delete an RPC",
            change: |r| {
                edit(r, APP, "  rpc CancelDesired(CancelDesiredRequest) returns (CancelDesiredResponse);\n", "")
            },
            verdict: Verdict::Breaking,
            rule: Some("RPC_NO_DELETE"),
        },
        Case {
            name: "change an RPC's streaming mode",
            change: |r| {
                edit(r, APP, "returns (stream VehicleEvent);", "returns (VehicleEvent);");
            },
            verdict: Verdict::WireBreaking,
            rule: Some("RPC_SAME_SERVER_STREAMING"),
        },
        Case {
            name: "move a message to another file of its package",
            change: |r| {
                let lights = "// Exterior lights.\nmessage Lights {\n  // Flash the lights until this time (momentary, at most 60 s ahead).\n  google.protobuf.Timestamp flash_until = 1 [(tether.options.v1.rules) = {momentary: true, max_momentary_seconds: 60}];\n}\n";
                edit(r, STATE, lights, "");
                edit(
                    r,
                    STATE,
                    "import \"tether/options/v1/options.proto\";\n",
                    "import \"tether/options/v1/options.proto\";\nimport \"tether/state/v1/lights.proto\";\n",
                );
                let header = "// Exterior lights of the vehicle state.\nsyntax = \"proto3\";\n\npackage tether.state.v1;\n\nimport \"google/protobuf/timestamp.proto\";\nimport \"tether/options/v1/options.proto\";\n\noption go_package = \"example.invalid/tether/gen/go/tether/state/v1;statev1\";\noption java_multiple_files = true;\noption java_package = \"dev.tether.state.v1\";\n\n";
                fs::write(r.join("proto/tether/state/v1/lights.proto"), format!("{header}{lights}")).unwrap();
            },
            verdict: Verdict::Breaking,
            rule: Some("MESSAGE_NO_DELETE"),
        },
        Case {
            name: "change a package",
            change: |r| {
                let (old, new) = (r.join("proto/tether/admin/v1"), r.join("proto/tether/admin/v2"));
                fs::rename(&old, &new).unwrap();
                let file = "proto/tether/admin/v2/admin.proto";
                edit(r, file, "package tether.admin.v1;", "package tether.admin.v2;");
                edit(r, "proto/buf.yaml", "tether/admin/v1/admin.proto", "tether/admin/v2/admin.proto");
            },
            verdict: Verdict::Breaking,
            rule: Some("FILE_NO_DELETE"),
        },
        Case {
            name: "add a field",
            change: |r| {
                edit(
                    r,
                    STATE,
                    SUNROOF,
                    &format!(
                        "{SUNROOF}  // Tailgate window.\n  optional uint32 tailgate = 6 [(tether.options.v1.rules) = {{min: 0, max: 100}}];\n"
                    ),
                )
            },
            verdict: Verdict::Addition,
            rule: None,
        },
        Case {
            name: "add an RPC",
            change: |r| {
                edit(
                    r,
                    APP,
                    "  rpc CancelDesired(CancelDesiredRequest) returns (CancelDesiredResponse);\n",
                    "  rpc CancelDesired(CancelDesiredRequest) returns (CancelDesiredResponse);\n\n  // Checks the service answers.\n  rpc Ping(PingRequest) returns (PingResponse);\n",
                );
                let mut text = fs::read_to_string(r.join(APP)).unwrap();
                text.push_str(
                    "\n// Asks for a pong.\nmessage PingRequest {}\n\n// The pong.\nmessage PingResponse {}\n",
                );
                fs::write(r.join(APP), text).unwrap();
            },
            verdict: Verdict::Addition,
            rule: None,
        },
        Case {
            name: "change only comments",
            change: |r| edit(r, STATE, "  // Sunroof.\n", "  // The sunroof, or the panoramic roof's opening part.\n"),
            verdict: Verdict::Unchanged,
            rule: None,
        },
        Case {
            name: "deprecate a field",
            change: |r| {
                edit(r, STATE, "optional uint32 sunroof = 5 [", "optional uint32 sunroof = 5 [deprecated = true, ")
            },
            verdict: Verdict::Addition,
            rule: None,
        },
        Case {
            name: "add a message",
            change: |r| {
                let mut text = fs::read_to_string(r.join(STATE)).unwrap();
                text.push_str("\n// Seat heating.\nmessage Seats {\n  // Driver seat heating level, 0 to 3.\n  optional uint32 driver_heat = 1;\n}\n");
                fs::write(r.join(STATE), text).unwrap();
            },
            verdict: Verdict::Addition,
            rule: None,
        },
    ]
}

#[test]
fn every_contract_change_gets_its_verdict_and_bump() {
    let cases = cases();
    assert!(cases.len() >= 14);
    let mut wrong = Vec::new();
    for case in cases {
        let dir = scratch();
        (case.change)(dir.path());
        let report = match check::contract(dir.path(), &repo()) {
            Ok(r) => r,
            Err(e) => {
                wrong.push(format!("{}: check failed to run: {e:#}", case.name));
                continue;
            }
        };
        let rules: Vec<&str> = report.breaking.iter().map(|b| b.finding.rule.as_str()).collect();
        let expected_bump = case.verdict.bump();
        if report.verdict != case.verdict || report.verdict.bump() != expected_bump {
            wrong.push(format!(
                "{}: verdict {} ({} bump), expected {}; rules {rules:?}",
                case.name,
                report.verdict,
                report.verdict.bump(),
                case.verdict
            ));
        }
        match case.rule {
            Some(rule) if !rules.contains(&rule) => {
                wrong.push(format!("{}: rule {rule} not among {rules:?}", case.name))
            }
            None if !rules.is_empty() => wrong.push(format!("{}: unexpected breaking findings {rules:?}", case.name)),
            _ => {}
        }
        if !report.lint.is_empty() {
            wrong.push(format!("{}: lint findings {:?}", case.name, report.lint));
        }
        // VERSION is still the released one: any change that needs a bump fails.
        if report.passed() != (expected_bump == Bump::None) {
            wrong.push(format!("{}: passed = {} with VERSION unchanged", case.name, report.passed()));
        }
    }
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
}
