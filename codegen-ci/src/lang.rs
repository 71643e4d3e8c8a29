//! The target languages. Each is one module behind [`Target`]; adding a language
//! (Go, Java) is a new module and one line in [`all`], and touches no other target.

pub mod python;
pub mod rust;
pub mod typescript;

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::buf::Finding;
use crate::version::Version;

/// What every target needs to generate, build and publish a package.
#[derive(Clone, Debug)]
pub struct Context {
    /// The repository root (holds `proto/`, `sdk/`, `target/`).
    pub root: PathBuf,
    /// The repository whose `.tools/` and `scripts/` are used (normally `root`).
    pub tools: PathBuf,
    /// The contract version: every package gets it.
    pub version: Version,
    /// The build folder: each target writes `<out>/<name>/`.
    pub out: PathBuf,
    /// `codegen-ci <version>`, recorded in package metadata.
    pub generator: String,
    /// The contract's git commit (or `unknown`), recorded in package metadata.
    pub commit: String,
}

impl Context {
    /// The build folder of one target, emptied.
    pub fn fresh_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.out.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

/// One target language.
pub trait Target {
    /// Its name: the build sub-folder and the key of `--to <name>=<destination>`.
    fn name(&self) -> &'static str;
    /// Generates the package's sources; returns the package folder.
    fn generate(&self, cx: &Context) -> Result<PathBuf>;
    /// Checks checked-in generated code, if this target keeps any (drift).
    fn check(&self, _cx: &Context) -> Result<Vec<Finding>> {
        Ok(Vec::new())
    }
    /// Builds the publishable artifact from a generated package folder (proving it
    /// builds); returns the artifact's path.
    fn build(&self, cx: &Context, package: &Path) -> Result<PathBuf>;
    /// Fails, with one line, unless `destination` is usable: well-formed, reachable,
    /// with credentials in the environment. Runs before anything is built or uploaded.
    fn preflight(&self, destination: &str) -> Result<()>;
    /// Whether `destination` already holds this package at `version` (asked before
    /// anything is built or uploaded: a release number is never reused). `false`
    /// when the destination cannot be asked cheaply; its own refusal then stands.
    fn published(&self, version: Version, destination: &str) -> Result<bool>;
    /// Uploads a built artifact; returns what was published (for the log).
    fn upload(&self, cx: &Context, artifact: &Path, destination: &str) -> Result<String>;
}

/// Every target, in publishing order.
pub fn all() -> Vec<Box<dyn Target>> {
    vec![Box::new(rust::Rust), Box::new(python::Python), Box::new(typescript::TypeScript)]
}
