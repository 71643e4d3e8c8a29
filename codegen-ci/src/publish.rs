//! `codegen-ci publish`: every SDK of the released contract to its destination.
//! Order matters for "nothing half-published": check every destination (address,
//! reachability, credentials, and that none holds this version already), then
//! generate and build every package, and only then upload any.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use crate::contract;
use crate::lang::{self, Context};
use crate::version::Version;

/// Publishes (or, with `dry_run`, shows) the SDKs of `proto/VERSION`.
/// `destinations` maps a target name to its destination; a target without one is
/// an error (a dry run shows it as missing).
pub fn publish(cx: &Context, destinations: &BTreeMap<String, String>, dry_run: bool) -> Result<Vec<String>> {
    let version = Version::read(&cx.root)?;
    if !contract::release_path(&cx.root, version).is_file() {
        bail!(
            "proto/VERSION {version} is not released (no proto/releases/{version}.binpb): run `cargo codegen-ci release` first"
        );
    }
    let targets = lang::all();
    for name in destinations.keys() {
        if !targets.iter().any(|t| t.name() == name) {
            bail!("--to {name}=…: no such target (targets: rust, python, typescript)");
        }
    }
    if !dry_run {
        for t in &targets {
            let Some(dest) = destinations.get(t.name()) else {
                bail!(
                    "{}: no destination: pass --to {}=<destination> or set TETHER_PUBLISH_{}",
                    t.name(),
                    t.name(),
                    t.name().to_ascii_uppercase()
                );
            };
            t.preflight(dest)?;
        }
        for t in &targets {
            let dest = &destinations[t.name()];
            if t.published(version, dest)? {
                bail!(
                    "{}: tether-proto {version} is already published to {dest}: a release number is never reused; bump proto/VERSION and release",
                    t.name()
                );
            }
        }
    }
    let mut built = Vec::new();
    for t in &targets {
        let package = t.generate(cx)?;
        built.push(t.build(cx, &package)?);
    }
    let mut log = Vec::new();
    for (t, artifact) in targets.iter().zip(&built) {
        let dest = destinations.get(t.name()).map(String::as_str).unwrap_or("(no destination)");
        if dry_run {
            log.push(format!("would publish {} to {}: {}", t.name(), dest, artifact.display()));
        } else {
            log.push(t.upload(cx, artifact, dest)?);
        }
    }
    Ok(log)
}
