//! Helpers for targets talking to the outside: running a tool with a one-line
//! error, credentials from the environment (never printed), reachability of a URL.

use std::net::{TcpStream, ToSocketAddrs};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Runs a command; on failure, the error is `what` and the last line it printed.
pub fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{what}: could not start"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = err
            .lines()
            .chain(stdout.lines())
            .filter(|l| !l.trim().is_empty())
            .rfind(|l| l.to_ascii_lowercase().contains("error"))
            .or_else(|| err.lines().rfind(|l| !l.trim().is_empty()))
            .unwrap_or("(no output)");
        bail!("{what} failed: {}", last.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails unless the environment variable is set and not empty. Its value is never
/// read into a message.
pub fn require_env(var: &str, what: &str) -> Result<()> {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => Ok(()),
        _ => bail!("{what} is missing: set {var} in the environment"),
    }
}

/// Fails unless a TCP connection to the URL's host and port opens within 3 s
/// (`file:` URLs and plain paths: the path must exist).
pub fn reachable(what: &str, url: &str) -> Result<()> {
    let url = url.strip_prefix("sparse+").unwrap_or(url);
    if let Some(path) = url.strip_prefix("file://") {
        if std::path::Path::new(path).exists() {
            return Ok(());
        }
        bail!("{what} is unreachable: {path} does not exist");
    }
    let (scheme, rest) = url.split_once("://").with_context(|| format!("{what}: {url:?} is not a URL"))?;
    let host_port = rest.split('/').next().unwrap_or("");
    let host_port = host_port.rsplit('@').next().unwrap_or(host_port);
    let default_port = if scheme == "https" { 443 } else { 80 };
    let addr = if host_port.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        host_port.to_string()
    } else {
        format!("{host_port}:{default_port}")
    };
    let addrs: Vec<_> =
        addr.to_socket_addrs().map_err(|e| anyhow::anyhow!("{what} is unreachable: {addr}: {e}"))?.collect();
    for a in &addrs {
        if TcpStream::connect_timeout(a, Duration::from_secs(3)).is_ok() {
            return Ok(());
        }
    }
    bail!("{what} is unreachable: nothing answers at {addr}")
}
