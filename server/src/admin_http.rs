//! The admin HTTP endpoint (HTTP/1.1, loopback by default): `GET /metrics`
//! in the Prometheus text format. For operators who scrape; everything else
//! about the node is gRPC. Off loopback it needs a bearer token (or an
//! explicit opt-out, see `Config::validate`); with a token configured, every
//! request must carry it, on any address.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::Hub;

/// The admin endpoint's bearer token.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8]>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Shortest admin token accepted.
const MIN_TOKEN_LEN: usize = 16;

impl AdminToken {
    /// Reads the token from `path` (surrounding whitespace ignored); the
    /// message names the file and what is wrong.
    pub fn read(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let token = text.trim();
        if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{}: the admin token must be at least {MIN_TOKEN_LEN} printable characters without spaces",
                path.display()
            ));
        }
        Ok(AdminToken(Arc::from(token.as_bytes())))
    }

    /// Whether `req` carries the token, compared in constant time.
    fn admits<B>(&self, req: &Request<B>) -> bool {
        let Some(sent) = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer ").or_else(|| v.as_bytes().strip_prefix(b"bearer ")))
        else {
            return false;
        };
        sent.len() == self.0.len() && sent.iter().zip(self.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// Serves the admin endpoint until `shutdown`, to requests carrying `token`
/// if there is one. Each connection runs on `tasks`.
pub async fn serve_admin(
    listener: TcpListener,
    hub: Arc<Hub>,
    token: Option<AdminToken>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(ok) => ok,
                Err(e) => {
                    // Out of files or a peer gone: back off briefly rather than spin.
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let hub = hub.clone();
        let tasks_for_metrics = tasks.clone();
        let shutdown = shutdown.clone();
        let token = token.clone();
        tasks.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = match &token {
                    Some(token) if !token.admits(&req) => unauthorized(),
                    _ => answer(&req, &hub, &tasks_for_metrics),
                };
                async move { Ok::<_, Infallible>(response) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
        });
    }
}

fn answer(req: &Request<Incoming>, hub: &Hub, tasks: &TaskTracker) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", crate::metrics::render(hub, tasks))
        }
        (_, "/metrics") => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".to_string()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found; metrics are at /metrics\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

/// 401 with the scheme to use; says nothing about the token.
fn unauthorized() -> Response<Full<Bytes>> {
    let body = "this endpoint needs `Authorization: Bearer <token>` (the token in tetherd's --admin-token-file)\n";
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    headers.insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    response
}
