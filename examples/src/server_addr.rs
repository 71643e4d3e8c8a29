//! Turns a server URL (`http://127.0.0.1:50051`) into the socket address a
//! TCP proxy in front of it must dial (TLS passes through the proxy
//! untouched, so `https://` works too), and its host name.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use tonic::transport::Uri;

fn parse(url: &str) -> anyhow::Result<Uri> {
    let uri: Uri = url.parse().with_context(|| format!("the server URL {url:?} is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        bail!("the server URL {url:?} must start with http:// or https://");
    }
    Ok(uri)
}

/// The URL's host (without brackets for IPv6), which tetherd's certificate
/// must name when the simulator reaches it through a proxy.
pub fn host(url: &str) -> anyhow::Result<String> {
    let uri = parse(url)?;
    let host = uri.host().with_context(|| format!("the server URL {url:?} has no host"))?;
    Ok(host.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// The first socket address `url`'s host and port resolve to (port 80 or 443
/// when the URL gives none).
pub async fn resolve(url: &str) -> anyhow::Result<SocketAddr> {
    let uri = parse(url)?;
    let host = host(url)?;
    let host = host.as_str();
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    let mut addrs =
        tokio::net::lookup_host((host, port)).await.with_context(|| format!("cannot resolve {host}:{port}"))?;
    addrs.next().with_context(|| format!("{host}:{port} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_loopback_urls_and_refuses_others() {
        let addr = resolve("http://127.0.0.1:50051").await.unwrap();
        assert_eq!(addr, "127.0.0.1:50051".parse().unwrap());
        let addr = resolve("http://[::1]:7000/").await.unwrap();
        assert_eq!(addr, "[::1]:7000".parse().unwrap());
        assert_eq!(resolve("https://127.0.0.1:1").await.unwrap(), "127.0.0.1:1".parse().unwrap());
        assert!(resolve("ftp://127.0.0.1:1").await.unwrap_err().to_string().contains("http://"));
        assert!(resolve("not a url").await.is_err());
        assert_eq!(host("https://[::1]:7000").unwrap(), "::1");
    }
}
