//! Helpers for targets talking to the outside: running a tool with a one-line
//! error, credentials from the environment (never printed), reachability of a URL,
//! and a plain-HTTP GET for asking a registry what it already holds.

use std::io::{Read as _, Write as _};
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

/// `GET url` over plain HTTP/1.0 (no TLS), bounded by 10 s: the body of a 200;
/// `None` for a 404 or a redirect (pypiserver sends unknown projects on to PyPI),
/// and for `https://` URLs, which this cannot ask: there the registry's own
/// refusal of a duplicate upload still stands.
pub fn http_get(what: &str, url: &str) -> Result<Option<String>> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Ok(None);
    };
    let (host_port, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let addr = if host_port.contains(':') { host_port.to_string() } else { format!("{host_port}:80") };
    let bound = Duration::from_secs(10);
    let io = |e: std::io::Error| anyhow::anyhow!("{what}: asking {addr}: {e}");
    let sock = addr.to_socket_addrs().map_err(io)?.next().with_context(|| format!("{what}: {addr} has no address"))?;
    let mut conn = TcpStream::connect_timeout(&sock, bound).map_err(io)?;
    conn.set_read_timeout(Some(bound)).map_err(io)?;
    conn.set_write_timeout(Some(bound)).map_err(io)?;
    // HTTP/1.0: the answer is not chunked and ends when the server closes.
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {host_port}\r\nAccept: */*\r\n\r\n").map_err(io)?;
    let mut raw = Vec::new();
    conn.take(16 << 20).read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text.split_whitespace().nth(1).unwrap_or("");
    match status {
        "200" => Ok(Some(text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())),
        "404" | "410" | "301" | "302" | "303" | "307" | "308" => Ok(None),
        _ => bail!("{what}: {url} answered HTTP {status}"),
    }
}
