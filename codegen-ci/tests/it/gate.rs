//! Test 3: a breaking change without a major bump fails `check`, naming the
//! element; with the bump it passes. Additions need at least a minor bump.

use std::path::Path;

use codegen_ci::Bump;

use crate::support::{after_release, codegen_ci, edit, released, scratch, set_version, text};

/// What the author does after editing the contract (check also gates drift).
fn regenerate(root: &Path) {
    let out = codegen_ci(root, &["generate"]);
    assert!(out.status.success(), "generate: {}", text(&out));
}

const STATE: &str = "proto/tether/state/v1/state.proto";

#[test]
fn a_breaking_change_needs_a_major_bump() {
    let dir = scratch();
    edit(
        dir.path(),
        STATE,
        "  // Sunroof.\n  optional uint32 sunroof = 5 [(tether.options.v1.rules) = {min: 0, max: 100}];\n",
        "",
    );
    let major = after_release(Bump::Major);
    for version in [released().to_string(), after_release(Bump::Minor), after_release(Bump::Patch)] {
        set_version(dir.path(), &version);
        let out = codegen_ci(dir.path(), &["check"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{version}: {}", text(&out));
        assert!(
            stderr.contains("proto/tether/state/v1/state.proto:")
                && stderr.contains("FIELD_NO_DELETE")
                && stderr.contains("\"sunroof\"")
                && stderr.contains("\"Windows\""),
            "{version}: the failure names file, element and rule:\n{stderr}"
        );
        assert!(
            stderr.contains("SEMVER") && stderr.contains(&format!("echo {major} > proto/VERSION")),
            "{version}: fix given:\n{stderr}"
        );
    }
    set_version(dir.path(), &major);
    regenerate(dir.path());
    let out = codegen_ci(dir.path(), &["check"]);
    assert!(out.status.success(), "with the major bump check passes:\n{}", text(&out));
}

#[test]
fn an_addition_needs_a_minor_bump() {
    let dir = scratch();
    edit(
        dir.path(),
        STATE,
        "  LOCK_STATE_UNLOCKED = 2;\n",
        "  LOCK_STATE_UNLOCKED = 2;\n  // Double-locked.\n  LOCK_STATE_DOUBLE_LOCKED = 3;\n",
    );
    set_version(dir.path(), &after_release(Bump::Patch));
    let out = codegen_ci(dir.path(), &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let minor = after_release(Bump::Minor);
    assert!(text(&out).contains(&format!("echo {minor} > proto/VERSION")), "{}", text(&out));
    set_version(dir.path(), &minor);
    regenerate(dir.path());
    let out = codegen_ci(dir.path(), &["check"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_version_lower_than_the_last_release_fails() {
    let dir = scratch();
    set_version(dir.path(), "0.9.0");
    let out = codegen_ci(dir.path(), &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let last = released();
    assert!(text(&out).contains(&format!("lower than the last release {last}")), "{}", text(&out));
}
