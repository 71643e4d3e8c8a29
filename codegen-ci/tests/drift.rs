//! The checked-in generated Rust matches `proto/`: runs `codegen-ci check`.

use std::process::Command;

#[test]
fn checked_in_generated_code_matches_the_contract() {
    let out = Command::new(env!("CARGO_BIN_EXE_codegen-ci")).arg("check").output().expect("codegen-ci runs");
    assert!(
        out.status.success(),
        "generated code drifted from proto/:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
