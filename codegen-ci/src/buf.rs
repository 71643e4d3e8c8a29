//! buf, driven for lint and breaking-change detection. Its findings are read from
//! `--error-format=json` (one object per line), never from its human output.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::tools;

/// A finding about one element of the contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The file, relative to the repository root (`proto/tether/...`).
    pub file: String,
    /// The line of the element (1-based; 0 when not known).
    pub line: u32,
    /// The rule broken (a buf rule id, or codegen-ci's own: `SEMVER`, `DRIFT`).
    pub rule: String,
    /// What is wrong; names the element.
    pub message: String,
    /// The command or edit that fixes it.
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}: {} (fix: {})", self.file, self.line, self.rule, self.message, self.fix)
        } else {
            write!(f, "{}: {}: {} (fix: {})", self.file, self.rule, self.message, self.fix)
        }
    }
}

#[derive(Deserialize)]
struct JsonFinding {
    #[serde(default)]
    path: String,
    #[serde(default)]
    start_line: u32,
    #[serde(rename = "type")]
    rule: String,
    message: String,
}

#[derive(Deserialize)]
struct JsonRule {
    id: String,
    categories: Vec<String>,
}

/// Runs `buf <args>` in `proto_dir`; returns its findings (exit 0 or 100).
fn run(tools_root: &Path, proto_dir: &Path, args: &[&str]) -> Result<Vec<JsonFinding>> {
    tools::ensure(tools_root, tools::Part::Node)?;
    let out = Command::new(tools::node_bin(tools_root, "buf"))
        .args(args)
        .arg("--error-format=json")
        .current_dir(proto_dir)
        .output()
        .context("running buf")?;
    match out.status.code() {
        Some(0) | Some(100) => {}
        _ => {
            let err = String::from_utf8_lossy(&out.stderr);
            bail!("buf {} failed: {}", args[0], crate::contract::one_line(&err));
        }
    }
    let mut findings = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with('{')) {
        findings.push(serde_json::from_str(line).with_context(|| format!("reading buf output {line:?}"))?);
    }
    Ok(findings)
}

/// Lints the contract with the rules of `proto/buf.yaml` (STANDARD, with exceptions).
pub fn lint(tools_root: &Path, proto_dir: &Path) -> Result<Vec<Finding>> {
    Ok(run(tools_root, proto_dir, &["lint"])?
        .into_iter()
        .map(|f| Finding {
            file: format!("proto/{}", f.path),
            line: f.start_line,
            rule: f.rule,
            message: f.message,
            fix: "change the element as the rule asks, or add an `ignore_only` entry with a reason comment to proto/buf.yaml".into(),
        })
        .collect())
}

/// A breaking change, and whether it breaks peers on the wire (not only generated code).
#[derive(Clone, Debug)]
pub struct Breaking {
    /// The finding (its `fix` is filled in by the semver check).
    pub finding: Finding,
    /// The rule belongs to buf's WIRE or WIRE_JSON category.
    pub wire: bool,
}

/// Checks the contract against a release's descriptor set with the rules of
/// `proto/buf.yaml` (FILE and WIRE_JSON).
pub fn breaking(tools_root: &Path, proto_dir: &Path, against: &Path) -> Result<Vec<Breaking>> {
    let against = against.to_str().context("release path is not UTF-8")?;
    // The well-known types come from each compiler's own copy (buf's and protox's
    // differ by version); they are not ours to gate.
    let findings: Vec<_> = run(tools_root, proto_dir, &["breaking", "--against", against])?
        .into_iter()
        .filter(|f| !f.path.starts_with("google/protobuf/"))
        .collect();
    if findings.is_empty() {
        return Ok(Vec::new());
    }
    let wire = wire_rules(tools_root, proto_dir)?;
    Ok(findings
        .into_iter()
        .map(|f| Breaking {
            wire: wire.contains(&f.rule),
            finding: Finding {
                file: if f.path.is_empty() { "proto/".into() } else { format!("proto/{}", f.path) },
                line: f.start_line,
                rule: f.rule,
                message: f.message,
                fix: String::new(),
            },
        })
        .collect())
}

/// buf's breaking rules that are in a wire category.
fn wire_rules(tools_root: &Path, proto_dir: &Path) -> Result<BTreeSet<String>> {
    let out = Command::new(tools::node_bin(tools_root, "buf"))
        .args(["config", "ls-breaking-rules", "--format=json"])
        .current_dir(proto_dir)
        .output()
        .context("running buf config ls-breaking-rules")?;
    if !out.status.success() {
        bail!(
            "buf config ls-breaking-rules failed: {}",
            crate::contract::one_line(&String::from_utf8_lossy(&out.stderr))
        );
    }
    let mut wire = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with('{')) {
        let rule: JsonRule = serde_json::from_str(line)?;
        if rule.categories.iter().any(|c| c == "WIRE" || c == "WIRE_JSON") {
            wire.insert(rule.id);
        }
    }
    Ok(wire)
}
