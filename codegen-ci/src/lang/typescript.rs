//! TypeScript: protoc-gen-es (driven by buf, no protoc) generates JavaScript with
//! type declarations and service descriptors into the npm package `tether-proto`.
//! gRPC clients come from Connect pinned to 2.1.x (2.2 needs Node 22):
//! `createClient(ControlService, createGrpcTransport({ baseUrl }))`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::{Context, Target};
use crate::version::Version;
use crate::{contract, dest, tools};

/// Runtime dependencies of the generated package (versions that work on Node 20).
const DEPENDENCIES: &[(&str, &str)] =
    &[("@bufbuild/protobuf", "^2.17.0"), ("@connectrpc/connect", "~2.1.1"), ("@connectrpc/connect-node", "~2.1.1")];

/// The TypeScript target.
pub struct TypeScript;

impl Target for TypeScript {
    fn name(&self) -> &'static str {
        "typescript"
    }

    fn generate(&self, cx: &Context) -> Result<PathBuf> {
        tools::ensure(&cx.tools, tools::Part::Node)?;
        let dir = cx.fresh_dir("typescript")?;
        let plugin = tools::node_bin(&cx.tools, "protoc-gen-es");
        // js+dts: plain JavaScript with declarations, so the package needs no
        // TypeScript compiler to build or to use.
        let template = serde_json::json!({
            "version": "v2",
            "plugins": [{
                "local": plugin.to_str().context("non-UTF-8 path")?,
                "out": dir.to_str().context("non-UTF-8 path")?,
                "opt": ["target=js+dts", "import_extension=js"],
            }],
        });
        dest::run(
            Command::new(tools::node_bin(&cx.tools, "buf"))
                .args(["generate", "--template", &template.to_string()])
                .current_dir(cx.root.join(contract::PROTO_DIR)),
            "buf generate (protoc-gen-es)",
        )?;
        let deps: serde_json::Map<String, serde_json::Value> =
            DEPENDENCIES.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
        let manifest = serde_json::json!({
            "name": "tether-proto",
            "version": cx.version.to_string(),
            "description": "Generated TypeScript messages and service descriptors for the tether contract (tether.*.v1), with Connect gRPC clients",
            "license": "Apache-2.0",
            "type": "module",
            "engines": { "node": ">=20" },
            "exports": { "./*": "./*" },
            "files": ["tether/"],
            "dependencies": deps,
            "tether": {
                "contractVersion": cx.version.to_string(),
                "generator": cx.generator,
                "contractCommit": cx.commit,
            },
        });
        fs::write(dir.join("package.json"), serde_json::to_string_pretty(&manifest)? + "\n")?;
        Ok(dir)
    }

    fn build(&self, cx: &Context, package: &Path) -> Result<PathBuf> {
        // The generated modules must load: resolve @bufbuild/protobuf from the
        // tools folder through a temporary node_modules link (npm pack skips it).
        let link = package.join("node_modules");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(tools::dir(&cx.tools).join("node/node_modules"), &link)?;
        let loaded = dest::run(
            Command::new("node")
                .args(["--input-type=module", "-e"])
                .arg("await import('./tether/app/v1/app_pb.js'); await import('./tether/vehicle/v1/vehicle_pb.js'); await import('./tether/admin/v1/admin_pb.js');")
                .current_dir(package),
            "node: importing the generated package",
        );
        fs::remove_file(&link)?;
        loaded?;
        let out =
            dest::run(Command::new("npm").args(["pack", "--silent"]).current_dir(package), "npm pack (tether-proto)")?;
        let name = out.lines().rfind(|l| l.ends_with(".tgz")).context("npm pack named no tarball")?;
        let tarball = package.join(name.trim());
        if !tarball.is_file() {
            bail!("npm pack did not produce {}", tarball.display());
        }
        Ok(tarball)
    }

    fn preflight(&self, destination: &str) -> Result<()> {
        if let Some(dir) = destination.strip_prefix("dir:") {
            if !Path::new(dir).is_dir() {
                bail!("typescript: tarball folder {dir} does not exist");
            }
            return Ok(());
        }
        if !destination.starts_with("http://") && !destination.starts_with("https://") {
            bail!("typescript: {destination:?} is neither an npm registry URL nor dir:<folder>");
        }
        dest::require_env("NPM_TOKEN", "typescript: the npm registry token")?;
        dest::reachable("typescript: npm registry", destination)
    }

    fn published(&self, version: Version, destination: &str) -> Result<bool> {
        if let Some(dir) = destination.strip_prefix("dir:") {
            return Ok(Path::new(dir).join(format!("tether-proto-{version}.tgz")).exists());
        }
        // The registry's packument lists every published version.
        let packument =
            dest::http_get("typescript: npm registry", &format!("{}/tether-proto", destination.trim_end_matches('/')))?;
        let versions = packument
            .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
            .and_then(|p| p.get("versions").cloned());
        Ok(versions.is_some_and(|v| v.get(version.to_string()).is_some()))
    }

    fn upload(&self, cx: &Context, tarball: &Path, destination: &str) -> Result<String> {
        if let Some(dir) = destination.strip_prefix("dir:") {
            let target = Path::new(dir).join(tarball.file_name().context("tarball name")?);
            fs::copy(tarball, &target)?;
            return Ok(format!("tether-proto {} to {}", cx.version, target.display()));
        }
        // The token stays in the environment: the npmrc names the variable.
        let host = destination.split_once("://").map(|(_, r)| r).unwrap_or(destination);
        let npmrc = tempfile::NamedTempFile::new()?;
        fs::write(npmrc.path(), format!("//{}/:_authToken=${{NPM_TOKEN}}\n", host.trim_end_matches('/')))?;
        dest::run(
            Command::new("npm")
                .args(["publish", "--registry", destination, "--userconfig"])
                .arg(npmrc.path())
                .arg(tarball),
            "npm publish (tether-proto)",
        )?;
        Ok(format!("tether-proto {} to {destination}", cx.version))
    }
}
