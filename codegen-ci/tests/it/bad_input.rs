//! Bad input: each a clear one-line error and a non-zero exit, with nothing
//! published (publish checks every destination before it builds anything).

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::support::{edit, released, repo, scratch, set_version, text};

/// Runs codegen-ci with a clean publishing environment plus `env`.
fn run(root: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_codegen-ci"));
    cmd.arg("--root").arg(root).arg("--tools").arg(repo()).args(args);
    for var in [
        "CARGO_REGISTRIES_LOCAL_INDEX",
        "CARGO_REGISTRIES_LOCAL_TOKEN",
        "TWINE_USERNAME",
        "TWINE_PASSWORD",
        "NPM_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    for var in ["TETHER_PUBLISH_RUST", "TETHER_PUBLISH_PYTHON", "TETHER_PUBLISH_TYPESCRIPT"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "one line expected:\n{}", text(&out));
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn a_contract_that_does_not_compile() {
    let dir = scratch();
    edit(dir.path(), "proto/tether/state/v1/state.proto", "message Doors {", "message Doors {{");
    for cmd in ["check", "generate", "release"] {
        let (code, err) = run(dir.path(), &[cmd], &[]);
        assert_eq!(code, 2, "{cmd}: {err}");
        assert!(err.contains("the contract does not compile") && err.contains("state.proto"), "{cmd}: {err}");
    }
}

#[test]
fn a_version_that_is_not_semver() {
    let dir = scratch();
    set_version(dir.path(), "1.1");
    for cmd in ["check", "generate", "release"] {
        let (code, err) = run(dir.path(), &[cmd], &[]);
        assert_eq!(code, 2, "{cmd}: {err}");
        assert!(err.contains("proto/VERSION: \"1.1\" is not a semantic version"), "{cmd}: {err}");
    }
}

#[test]
fn a_missing_release_descriptor() {
    let dir = scratch();
    fs::remove_dir_all(dir.path().join("proto/releases")).unwrap();
    let (code, err) = run(dir.path(), &["check"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("proto/releases/ holds no release descriptor"), "{err}");
    let (code, err) = run(dir.path(), &["publish", "--dry-run"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("{} is not released", released())), "{err}");
}

const ALL: &[&str] = &["publish", "--to", "rust=local", "--to", "python=http://127.0.0.1:1/", "--to"];

#[test]
fn an_unreachable_registry() {
    let dir = scratch();
    let npm = dir.path().join("npm");
    fs::create_dir_all(&npm).unwrap();
    let npm = format!("typescript=dir:{}", npm.display());
    let creds = [("TWINE_USERNAME", "u"), ("TWINE_PASSWORD", "p"), ("CARGO_REGISTRIES_LOCAL_TOKEN", "t")];
    // The cargo registry does not answer.
    let mut env = creds.to_vec();
    env.push(("CARGO_REGISTRIES_LOCAL_INDEX", "sparse+http://127.0.0.1:1/index/"));
    let (code, err) = run(dir.path(), &[ALL, &[npm.as_str()]].concat(), &env);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("rust: cargo registry \"local\" is unreachable"), "{err}");
    assert!(!dir.path().join("target/sdk").exists(), "nothing was built or published");
}

#[test]
fn missing_credentials() {
    let dir = scratch();
    let npm = dir.path().join("npm");
    fs::create_dir_all(&npm).unwrap();
    let npm = format!("typescript=dir:{}", npm.display());
    let args = [ALL, &[npm.as_str()]].concat();
    let (code, err) = run(dir.path(), &args, &[("CARGO_REGISTRIES_LOCAL_INDEX", "sparse+http://127.0.0.1:1/index/")]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("the token of cargo registry \"local\" is missing: set CARGO_REGISTRIES_LOCAL_TOKEN"),
        "{err}"
    );
    let (code, err) = run(
        dir.path(),
        &args,
        &[
            ("CARGO_REGISTRIES_LOCAL_INDEX", "sparse+http://127.0.0.1:1/index/"),
            ("CARGO_REGISTRIES_LOCAL_TOKEN", "secret-token"),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("secret-token"), "a credential is never printed: {err}");
    assert!(!dir.path().join("target/sdk").exists(), "nothing was built or published");
}
