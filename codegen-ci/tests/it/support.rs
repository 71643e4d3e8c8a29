//! Shared helpers: a scratch copy of the repository, edits, running the binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use codegen_ci::{Bump, Version};

/// The repository root.
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A scratch copy of the parts of the repository codegen-ci reads: `proto/`, the
/// root manifest and `sdk/tether-proto` (manifest and sources).
pub(crate) fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy(&repo().join("proto"), &dir.path().join("proto"));
    copy(&repo().join("sdk/tether-proto/src"), &dir.path().join("sdk/tether-proto/src"));
    fs::copy(repo().join("sdk/tether-proto/Cargo.toml"), dir.path().join("sdk/tether-proto/Cargo.toml")).unwrap();
    fs::copy(repo().join("Cargo.toml"), dir.path().join("Cargo.toml")).unwrap();
    dir
}

/// Copies a folder recursively.
pub(crate) fn copy(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy(&path, &target);
        } else {
            fs::copy(&path, &target).unwrap();
        }
    }
}

/// Replaces `from` (which must occur exactly once) by `to` in `root/file`.
pub(crate) fn edit(root: &Path, file: &str, from: &str, to: &str) {
    let path = root.join(file);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(text.matches(from).count(), 1, "{file}: {from:?} must occur once");
    fs::write(&path, text.replace(from, to)).unwrap();
}

/// The contract version the repository is at: released, so
/// `proto/releases/<it>.binpb` exists. Tests derive every version from it, so they
/// keep working when the real contract moves on.
pub(crate) fn released() -> Version {
    Version::read(&repo()).expect("proto/VERSION")
}

/// The released version bumped by `bump`, as text.
pub(crate) fn after_release(bump: Bump) -> String {
    released().bumped(bump).to_string()
}

/// Writes `proto/VERSION`.
pub(crate) fn set_version(root: &Path, version: &str) {
    fs::write(root.join("proto/VERSION"), format!("{version}\n")).unwrap();
}

/// Runs `codegen-ci --root <root> --tools <repo> <args>`.
pub(crate) fn codegen_ci(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_codegen-ci"))
        .arg("--root")
        .arg(root)
        .arg("--tools")
        .arg(repo())
        .args(args)
        .output()
        .expect("codegen-ci runs")
}

/// stdout and stderr of a run, for assertion messages.
pub(crate) fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
