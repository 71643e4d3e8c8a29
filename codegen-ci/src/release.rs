//! `codegen-ci release`: cut a contract release — the descriptor set in
//! `proto/releases/`, a CHANGELOG entry computed from the descriptor diff, and the
//! SDK packages generated with the contract version.

use std::fs;
use std::path::Path;

use anyhow::{Result, bail};
use prost::Message;
use prost_types::FileDescriptorSet;

use crate::check;
use crate::contract;
use crate::diff::Diff;
use crate::lang::Context;
use crate::version::Version;

/// What a release wrote.
#[derive(Debug)]
pub struct Released {
    /// The version released.
    pub version: Version,
    /// The CHANGELOG entry (without its heading).
    pub changes: Vec<String>,
}

/// Cuts the release of `proto/VERSION`. Fails, changing nothing, when the contract
/// does not pass `check` or the version is released already.
pub fn release(cx: &Context) -> Result<Released> {
    let root = &cx.root;
    let new_bytes = contract::release_descriptor(root)?;
    let version = Version::read(root)?;
    let releases = contract::releases(root)?;
    if releases.contains(&version) {
        bail!(
            "proto/VERSION: {version} is released already (proto/releases/{version}.binpb): bump proto/VERSION to release changes"
        );
    }
    let new = FileDescriptorSet::decode(new_bytes.as_slice())?;
    let diff = if releases.is_empty() {
        Diff::between(&FileDescriptorSet::default(), &new)
    } else {
        let report = check::contract(root, &cx.tools)?;
        if !report.passed() {
            let first = report.failures().into_iter().next().map(|f| f.to_string()).unwrap_or_default();
            bail!("the contract does not pass `cargo codegen-ci check`: {first}");
        }
        report.diff
    };
    let changes = diff.changelog();
    write_changelog(root, version, &changes)?;
    let path = contract::release_path(root, version);
    fs::create_dir_all(path.parent().expect("releases dir"))?;
    fs::write(&path, new_bytes)?;
    Ok(Released { version, changes })
}

/// Inserts `## <version>` and the changes above the newest entry.
fn write_changelog(root: &Path, version: Version, changes: &[String]) -> Result<()> {
    let path = root.join("proto/CHANGELOG.md");
    let text = fs::read_to_string(&path).unwrap_or_else(|_| "# Contract changelog\n".into());
    let entry = format!("## {version}\n{}\n\n", changes.join("\n"));
    let at = text.find("\n## ").map(|i| i + 1).unwrap_or(text.len());
    let mut out = text[..at].to_string();
    if !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(&entry);
    out.push_str(&text[at..]);
    fs::write(&path, out.trim_end().to_string() + "\n")?;
    Ok(())
}
