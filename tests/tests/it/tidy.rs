//! Architecture invariants read from the manifests: dependencies point one way.
//! proto -> tether-proto -> (tether-sdk | tetherd); nothing depends on
//! codegen-ci; the server never depends on the SDK, nor the SDK on the server;
//! the CLI and examples use only the SDK's public API.

use std::collections::BTreeSet;
use std::path::Path;

fn deps(manifest: &str) -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(root.join(manifest)).unwrap_or_else(|e| panic!("{manifest}: {e}"));
    let doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("{manifest}: {e}"));
    let mut out = BTreeSet::new();
    for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(t) = doc.get(table).and_then(|t| t.as_table()) {
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
    assert_none("codegen-ci/Cargo.toml", &["tetherd", "tether-sdk"]);
    assert!(deps("server/Cargo.toml").contains("tether-proto"), "the server uses the generated types");
}
