//! Architecture invariants read from the manifests: dependencies point one way.
//! proto -> tether-proto -> (tether-sdk | tetherd); nothing depends on
//! codegen-ci; the server never depends on the SDK, nor the SDK on the server;
//! the CLI and examples use only the SDK's public API. codegen-ci's end-to-end
//! test runs a real tetherd, so only its shipped dependencies are checked.

use std::collections::BTreeSet;
use std::path::Path;

/// Every dependency of `manifest` (normal, dev and build).
fn deps(manifest: &str) -> BTreeSet<String> {
    deps_in(manifest, &["dependencies", "dev-dependencies", "build-dependencies"])
}

/// The dependencies of `manifest` listed in `tables`.
fn deps_in(manifest: &str, tables: &[&str]) -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(root.join(manifest)).unwrap_or_else(|e| panic!("{manifest}: {e}"));
    let doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("{manifest}: {e}"));
    let mut out = BTreeSet::new();
    for table in tables {
        if let Some(t) = doc.get(*table).and_then(|t| t.as_table()) {
            out.extend(t.keys().cloned());
        }
    }
    out
}

fn assert_none(manifest: &str, forbidden: &[&str]) {
    let deps = deps(manifest);
    for f in forbidden {
        assert!(!deps.contains(*f), "{manifest} must not depend on {f} (see ARCHITECTURE.md)");
    }
}

#[test]
fn dependencies_point_one_way() {
    assert_none("sdk/tether-proto/Cargo.toml", &["tether-sdk", "tetherd", "codegen-ci", "tether-cli"]);
    assert_none("server/Cargo.toml", &["tether-sdk", "codegen-ci", "tether-cli", "tether-examples"]);
    assert_none("sdk/tether-sdk/Cargo.toml", &["tetherd", "codegen-ci", "tether-cli", "tether-tests"]);
    assert_none("cli/Cargo.toml", &["tetherd", "codegen-ci"]);
    assert_none("examples/Cargo.toml", &["tetherd", "codegen-ci", "tether-tests"]);
    // codegen-ci's end-to-end test starts a real tetherd (through tether-tests, a
    // dev-dependency); the tool itself stays free of the server and the SDK.
    let shipped = deps_in("codegen-ci/Cargo.toml", &["dependencies", "build-dependencies"]);
    for f in ["tetherd", "tether-sdk", "tether-tests"] {
        assert!(
            !shipped.contains(f),
            "codegen-ci/Cargo.toml [dependencies] must not include {f} (see ARCHITECTURE.md)"
        );
    }
    assert!(deps("server/Cargo.toml").contains("tether-proto"), "the server uses the generated types");
}
