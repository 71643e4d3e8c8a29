//! Test 4: generated-code drift. The checked-in Rust matches the contract, and a
//! hand edit of a generated file makes `check` fail, naming the file.

use std::fs;

use crate::support::{codegen_ci, repo, scratch, text};

#[test]
fn checked_in_generated_code_matches_the_contract() {
    let out = codegen_ci(&repo(), &["check"]);
    assert!(out.status.success(), "`cargo codegen-ci check` fails on the repository:\n{}", text(&out));
}

#[test]
fn a_hand_edit_of_generated_code_fails_check() {
    let dir = scratch();
    let file = dir.path().join("sdk/tether-proto/src/generated/tether.state.v1.rs");
    let mut body = fs::read_to_string(&file).unwrap();
    body.push_str("\n// a hand edit\n");
    fs::write(&file, body).unwrap();
    let out = codegen_ci(dir.path(), &["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr.contains("sdk/tether-proto/src/generated/tether.state.v1.rs: DRIFT")
            && stderr.contains("cargo codegen-ci generate"),
        "the failure names the file, the rule and the fix:\n{stderr}"
    );
}
