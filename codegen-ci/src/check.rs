//! `codegen-ci check` on the contract: lint, breaking changes against the last
//! release, and semver on `proto/VERSION`. (Drift of the generated Rust is checked
//! by the Rust target.)

use std::fmt;
use std::path::Path;

use anyhow::Result;
use prost::Message;
use prost_types::FileDescriptorSet;

use crate::buf::{self, Breaking, Finding};
use crate::contract;
use crate::diff::Diff;
use crate::version::{Bump, Version};

/// What kind of change the contract made since its last release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// No element changed (comments, formatting): no bump needed.
    Unchanged,
    /// Elements changed in a way no rule calls breaking: at least a patch bump.
    Compatible,
    /// Elements added or deprecated: at least a minor bump.
    Addition,
    /// Breaks generated code or removes API surface (buf FILE rules), while messages
    /// still decode: a major bump.
    Breaking,
    /// Breaks message encoding, binary or JSON (buf WIRE_JSON rules): a major bump.
    WireBreaking,
}

impl Verdict {
    /// The smallest bump this change needs.
    pub fn bump(self) -> Bump {
        match self {
            Verdict::Unchanged => Bump::None,
            Verdict::Compatible => Bump::Patch,
            Verdict::Addition => Bump::Minor,
            Verdict::Breaking | Verdict::WireBreaking => Bump::Major,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Unchanged => "unchanged",
            Verdict::Compatible => "compatible",
            Verdict::Addition => "addition",
            Verdict::Breaking => "breaking",
            Verdict::WireBreaking => "breaking (wire encoding)",
        })
    }
}

/// The outcome of checking the contract.
#[derive(Debug)]
pub struct Report {
    /// `proto/VERSION`.
    pub version: Version,
    /// The last release in `proto/releases/`.
    pub last_release: Version,
    /// Lint findings (each a failure).
    pub lint: Vec<Finding>,
    /// Breaking changes since the last release (failures unless the major bump is there).
    pub breaking: Vec<Breaking>,
    /// Elements added, deprecated, removed, changed since the last release.
    pub diff: Diff,
    /// The kind of change.
    pub verdict: Verdict,
    /// Semver failures on `proto/VERSION`.
    pub semver: Vec<Finding>,
}

impl Report {
    /// Every failure, each naming file, element and rule, with its fix.
    pub fn failures(&self) -> Vec<Finding> {
        let mut out = self.lint.clone();
        if !self.semver.is_empty() {
            out.extend(self.breaking.iter().map(|b| b.finding.clone()));
        }
        out.extend(self.semver.iter().cloned());
        out
    }

    /// Whether the contract passes.
    pub fn passed(&self) -> bool {
        self.lint.is_empty() && self.semver.is_empty()
    }
}

/// Checks the contract under `root` (which holds `proto/`), with the tools of the
/// repository at `tools_root`.
pub fn contract(root: &Path, tools_root: &Path) -> Result<Report> {
    let proto = root.join(contract::PROTO_DIR);
    let new = FileDescriptorSet::decode(contract::release_descriptor(root)?.as_slice())?;
    let version = Version::read(root)?;
    let last_release = contract::last_release(root)?;
    let against = contract::release_path(root, last_release);
    let old = contract::read_descriptor(&against)?;

    let lint = buf::lint(tools_root, &proto)?;
    let mut breaking = buf::breaking(tools_root, &proto, &against)?;
    let diff = Diff::between(&old, &new);
    let verdict = if breaking.iter().any(|b| b.wire) {
        Verdict::WireBreaking
    } else if !breaking.is_empty() {
        Verdict::Breaking
    } else if !diff.added.is_empty() || !diff.deprecated.is_empty() {
        Verdict::Addition
    } else if !diff.is_empty() {
        Verdict::Compatible
    } else {
        Verdict::Unchanged
    };

    let needed = last_release.bumped(verdict.bump());
    let fix = format!("echo {needed} > proto/VERSION");
    let semver_finding = |message: String| Finding {
        file: "proto/VERSION".into(),
        line: 0,
        rule: "SEMVER".into(),
        message,
        fix: fix.clone(),
    };
    let mut semver = Vec::new();
    if version < last_release {
        semver.push(semver_finding(format!(
            "{version} is lower than the last release {last_release}: release numbers only grow"
        )));
    } else if version == last_release && verdict.bump() > Bump::None {
        semver.push(semver_finding(format!(
            "{version} is already released and the contract changed since ({verdict}): a release number is never reused"
        )));
    } else if version > last_release && last_release.bump_to(version) < verdict.bump() {
        semver.push(semver_finding(format!(
            "{version} is a {} bump from release {last_release}, but the change is {verdict} and needs a {} bump",
            last_release.bump_to(version),
            verdict.bump()
        )));
    }
    for b in &mut breaking {
        b.finding.fix = format!("undo the change, or make it a major release: {fix}");
    }
    Ok(Report { version, last_release, lint, breaking, diff, verdict, semver })
}
