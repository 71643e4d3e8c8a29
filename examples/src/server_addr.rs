//! Turns a server URL (`http://127.0.0.1:50051`) into the socket address a
//! TCP proxy in front of it must dial.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use tonic::transport::Uri;

/// The first socket address `url`'s host and port resolve to (port 80 when
/// the URL gives none, as for any `http://` URL).
pub async fn resolve(url: &str) -> anyhow::Result<SocketAddr> {
    let uri: Uri = url.parse().with_context(|| format!("the server URL {url:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        bail!("the server URL {url:?} must start with http:// (the simulator's proxy speaks plain TCP)");
    }
    let host = uri.host().with_context(|| format!("the server URL {url:?} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
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
        assert!(resolve("https://127.0.0.1:1").await.unwrap_err().to_string().contains("http://"));
        assert!(resolve("not a url").await.is_err());
    }
}
