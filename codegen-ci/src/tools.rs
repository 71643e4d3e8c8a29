//! The external tools codegen-ci drives (buf, protoc-gen-es, grpcio-tools, twine,
//! cargo-http-registry): installed by `scripts/install-tools` into `.tools/` from
//! committed lockfiles, never by hand. Every path here is inside that folder.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A part of `scripts/install-tools`.
#[derive(Clone, Copy, Debug)]
pub enum Part {
    /// buf and protoc-gen-es (npm).
    Node,
    /// grpcio-tools, build, twine, pypiserver (a virtualenv).
    Python,
    /// cargo-http-registry.
    Registry,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Node => "node",
            Part::Python => "python",
            Part::Registry => "registry",
        }
    }
}

/// Runs the installer for `part` (a no-op when its lockfile has not changed).
pub fn ensure(root: &Path, part: Part) -> Result<()> {
    let script = root.join("scripts/install-tools");
    let out = Command::new(&script)
        .arg(part.name())
        .current_dir(root)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        bail!("scripts/install-tools {} failed: {last}", part.name());
    }
    Ok(())
}

/// `.tools/` of the repository at `root`.
pub fn dir(root: &Path) -> PathBuf {
    root.join(".tools")
}

/// An npm-installed binary (`buf`, `protoc-gen-es`).
pub fn node_bin(root: &Path, name: &str) -> PathBuf {
    dir(root).join("node/node_modules/.bin").join(name)
}

/// A binary of the tools virtualenv (`python`, `twine`, `pypi-server`).
pub fn venv_bin(root: &Path, name: &str) -> PathBuf {
    dir(root).join("venv/bin").join(name)
}

/// A cargo-installed binary.
pub fn cargo_bin(root: &Path, name: &str) -> PathBuf {
    dir(root).join("cargo/bin").join(name)
}
