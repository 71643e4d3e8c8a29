//! The contract in `proto/`: its files, its compilation (protox, no protoc) and its
//! releases (`proto/releases/<version>.binpb`, one descriptor set per release).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use prost::Message;
use prost_types::FileDescriptorSet;

use crate::version::Version;

/// The contract's folder, relative to the repository root.
pub const PROTO_DIR: &str = "proto";
/// Where release descriptor sets live, relative to the repository root.
pub const RELEASES_DIR: &str = "proto/releases";

/// Every `.proto` file under `proto/`, relative to it, sorted (`/` separators).
pub fn files(root: &Path) -> Result<Vec<String>> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, base, out)?;
            } else if path.extension().is_some_and(|e| e == "proto") {
                let rel = path.strip_prefix(base).expect("under base");
                out.push(rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"));
            }
        }
        Ok(())
    }
    let proto = root.join(PROTO_DIR);
    let mut out = Vec::new();
    walk(&proto, &proto, &mut out)?;
    if out.is_empty() {
        bail!("proto/: no .proto files found");
    }
    out.sort();
    Ok(out)
}

/// Compiles the whole contract. `source_info` keeps comments (for generated code);
/// release descriptors leave them out, so a comment change is not a contract change.
pub fn compile(root: &Path, source_info: bool) -> Result<protox::Compiler> {
    let files = files(root)?;
    let mut compiler = protox::Compiler::new([root.join(PROTO_DIR)])?;
    compiler.include_imports(true).include_source_info(source_info);
    // protox's error already names the file and line; keep it on one line.
    compiler.open_files(&files).map_err(|e| {
        let file = e.file().map(|f| format!("proto/{f}: ")).unwrap_or_default();
        anyhow!("the contract does not compile: {file}{}", one_line(&e.to_string()))
    })?;
    Ok(compiler)
}

/// The encoded descriptor set of a release: protox's own encoding keeps custom
/// options (prost_types would drop them), and records no absolute paths.
pub fn release_descriptor(root: &Path) -> Result<Vec<u8>> {
    Ok(compile(root, false)?.encode_file_descriptor_set())
}

/// The released versions found in `proto/releases/`, ascending.
pub fn releases(root: &Path) -> Result<Vec<Version>> {
    let dir = root.join(RELEASES_DIR);
    let mut out = Vec::new();
    if dir.is_dir() {
        for entry in fs::read_dir(&dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".binpb") {
                match Version::parse(stem) {
                    Some(v) => out.push(v),
                    None => bail!("{RELEASES_DIR}/{name}: not named <MAJOR.MINOR.PATCH>.binpb"),
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The path of a release's descriptor set.
pub fn release_path(root: &Path, version: Version) -> PathBuf {
    root.join(RELEASES_DIR).join(format!("{version}.binpb"))
}

/// The last release, or an error saying how to make one.
pub fn last_release(root: &Path) -> Result<Version> {
    releases(root)?.pop().ok_or_else(|| {
        anyhow!("{RELEASES_DIR}/ holds no release descriptor (<version>.binpb): restore it from git, or cut the first release with `cargo codegen-ci release`")
    })
}

/// Decodes a descriptor set file.
pub fn read_descriptor(path: &Path) -> Result<FileDescriptorSet> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    FileDescriptorSet::decode(bytes.as_slice()).with_context(|| format!("{}: not a descriptor set", path.display()))
}

/// Joins a multi-line message into one line.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
