//! The transport: our own accept loop and HTTP connections (hyper), instead
//! of tonic's `Server`, for four reasons:
//! - at the open-files limit (EMFILE) tonic's accept loop retries at once and
//!   spins a core; ours backs off;
//! - a connection cap with a clear refusal (UNAVAILABLE with a message);
//! - every HTTP/2 setting is ours to choose (see [`connection_builder`]);
//! - tonic's server-side `grpc-timeout` layer would end a waiting call as
//!   CANCELLED; tetherd reads the deadline itself and answers
//!   DEADLINE_EXCEEDED with the state still stored;
//! - a connection must earn its place (`admission`, `preface`, `idle`):
//!   hyper waits for a preface without a bound and never closes an idle
//!   HTTP/2 connection.
//!
//! A connection speaks HTTP/2 (gRPC) or HTTP/1.1 (gRPC-Web from browsers,
//! which cannot speak HTTP/2 without TLS): hyper-util's auto builder reads
//! the client's preface and picks one, on the same port.
//!
//! Every connection and every request runs on the server's `TaskTracker`, so
//! the task count is observable and shutdown can wait for all of them.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::body::Body;
use tower::Service;

use crate::config::Config;
use crate::stats::{self, Gauge, HandshakeFailure, Stats};

mod admission;
mod idle;
mod preface;

use admission::Unproven;
use idle::{Active, Activity, tracked};
use preface::{Prefixed, Silent, read_preface};

/// The connection builder type (HTTP/1.1 and HTTP/2 on one port).
pub type Builder = hyper_util::server::conn::auto::Builder<TrackedExecutor>;

/// Runs hyper's per-request futures on the server's task tracker.
#[derive(Clone)]
pub struct TrackedExecutor(pub TaskTracker);

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// The connection builder: HTTP/2 with the settings below, or HTTP/1.1 for
/// gRPC-Web. The HTTP/2 settings are chosen, not inherited:
/// - keepalive PINGs detect peers that vanished without a FIN (a car in a
///   tunnel): interval and timeout from the config (30 s / 10 s);
/// - a 64 KiB stream window fits the largest message; the 1 MiB connection
///   window lets many vehicle streams share a connection;
/// - at most 1,000 concurrent streams per connection;
/// - local-error resets are capped (hyper's `None` would disable h2's guard);
/// - a 64 KiB send buffer per stream bounds memory held for slow readers.
///
/// HTTP/1.1 gets a header read timeout (the handshake timeout), so a peer
/// that opens a connection and says nothing does not hold it.
pub fn connection_builder(config: &Config, tasks: &TaskTracker) -> Builder {
    let mut b = Builder::new(TrackedExecutor(tasks.clone()));
    b.http1().timer(TokioTimer::new()).header_read_timeout(config.handshake_timeout).max_buf_size(64 * 1024);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(config.h2_keepalive_interval)
        .keep_alive_timeout(config.h2_keepalive_timeout)
        .initial_stream_window_size(config.h2_stream_window)
        .initial_connection_window_size(config.h2_connection_window)
        .max_concurrent_streams(config.h2_max_concurrent_streams)
        .max_local_error_reset_streams(Some(config.h2_max_local_error_resets))
        .max_pending_accept_reset_streams(Some(20))
        .max_send_buf_size(64 * 1024)
        .max_header_list_size(16 * 1024);
    b
}

/// Whether an accept error means the process is out of a resource (files,
/// memory, buffers): retrying at once would spin.
fn is_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

fn configure_socket(stream: &TcpStream, config: &Config) {
    let _ = stream.set_nodelay(true);
    let keepalive =
        TcpKeepalive::new().with_time(config.tcp_keepalive).with_interval(Duration::from_secs(10)).with_retries(3);
    if let Err(e) = SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "could not set TCP keepalive");
    }
}

/// Accepts connections until `shutdown`, serving each with `service`.
///
/// A connection must earn its place: until it has said something (over TLS
/// its ClientHello within `--preface-timeout`, its handshake within
/// `--tls-handshake-timeout`; then its HTTP preface within
/// `--preface-timeout`) it holds no handshake slot, is closed when the time
/// runs out, and at the connection cap the oldest such connection is closed
/// to make room for a new one. Once serving, a connection with no stream
/// for `--max-connection-idle` is closed.
#[allow(clippy::too_many_arguments)]
pub async fn accept_loop<S>(
    listener: TcpListener,
    service: S,
    tls: Option<TlsTermination>,
    config: Arc<Config>,
    stats: Arc<Stats>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let builder = Arc::new(connection_builder(&config, &tasks));
    let unproven = Arc::new(Unproven::default());
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            // Stop accepting first; open connections drain separately.
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(ok) => {
                backoff = Duration::from_millis(10);
                ok
            }
            Err(e) if is_exhaustion(&e) => {
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept: out of resources; backing off");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            Err(e) => {
                // ECONNABORTED and friends concern one peer only.
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        configure_socket(&stream, &config);
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        let at_cap = stats::get(&stats.connections) as usize >= config.max_connections;
        // At the cap, a connection that has said nothing yet makes room: the
        // oldest such one is closed (it is on its way out; the count may run
        // over the cap by the few that are closing).
        if at_cap && unproven.evict_oldest() {
            stats.handshake_failed(HandshakeFailure::Evicted);
            tracing::info!(%peer, "at the connection limit: closed the oldest connection that had not spoken yet");
        } else if at_cap {
            stats::bump(&stats.connections_refused);
            let limit = config.max_connections;
            match &tls {
                None => {
                    tasks.spawn(refuse(stream, peer, limit, builder));
                }
                // Over TLS the refusal must come through TLS too, or the
                // client sees a handshake error instead of the reason.
                Some(tls) => {
                    let (tls, stats) = (tls.clone(), stats.clone());
                    tasks.spawn(async move {
                        if let Some(stream) = tls.handshake(stream, peer, &stats, &shutdown).await {
                            refuse(stream, peer, limit, builder).await;
                        }
                    });
                }
            }
            continue;
        }
        let gauge = Gauge::new(&stats, |s| &s.connections);
        let pending = unproven.enter();
        let service = service.clone();
        // Bytes are counted on the TCP stream, beneath TLS when there is TLS.
        let stream = Counted { inner: stream, stats: stats.clone() };
        let (preface, idle, grace) = (config.preface_timeout, config.max_connection_idle, config.shutdown_grace);
        let serving = tasks.clone();
        let stats = stats.clone();
        let tls = tls.clone();
        // Admission has a task of its own, which hands the stream to a new
        // task that only serves: a task is allocated at the size of its
        // largest state, and one that did both held the handshake's state
        // beside the connection's for the connection's whole life (6.4 KiB
        // against 3.3 KiB over TLS).
        tasks.spawn(async move {
            let admitted = async {
                // Jittered, so that sockets opened together (a flood) are not
                // all closed, and re-opened, in one burst.
                let silence = preface.mul_f64(rand::random_range(0.75..=1.0));
                match &tls {
                    None => Some((Transport::Plain(said_preface(stream, peer, silence, &stats).await?), None)),
                    Some(tls) => {
                        // Until its first byte a socket costs this small state
                        // only: the TLS handshake's (several KiB) is boxed, and
                        // made once a ClientHello starts.
                        if !first_byte(&stream, tokio::time::Instant::now() + silence, peer, &stats).await {
                            return None;
                        }
                        Box::pin(async {
                            let hello_by = tokio::time::Instant::now() + tls.client_hello_timeout;
                            let spoke = || pending.spoke();
                            let stream = tls.handshake_spoken(stream, hello_by, peer, &stats, &shutdown, spoke).await?;
                            let identity = tls.admit(&stream, peer, &stats)?;
                            let stream = said_preface(stream, peer, preface, &stats).await?;
                            Some((Transport::Tls(Box::new(stream)), Some(Arc::new(identity))))
                        })
                        .await
                    }
                }
            };
            let (stream, identity) = tokio::select! {
                admitted = admitted => match admitted {
                    Some(admitted) => admitted,
                    None => return,
                },
                () = pending.evicted() => return,
            };
            // Proven: no longer among those the cap may evict.
            drop(pending);
            let activity = Arc::new(Activity::default());
            let service = WithPeer { inner: service, identity, activity: activity.clone() };
            let idle = (!idle.is_zero()).then_some((activity, idle));
            let connection = Connection { peer, builder, shutdown, grace, gauge, idle };
            match stream {
                Transport::Plain(stream) => serving.spawn(serve(Box::new((stream, service)), connection)),
                Transport::Tls(stream) => serving.spawn(serve(Box::new((*stream, service)), connection)),
            };
        });
    }
}

/// A connection that said its preface, with or without TLS.
enum Transport {
    Plain(Prefixed<Counted>),
    Tls(Box<Prefixed<tokio_rustls::server::TlsStream<Counted>>>),
}

/// The stream once its HTTP preface arrived within `bound`, or `None` (and
/// it is closed) when it did not.
async fn said_preface<I>(stream: I, peer: SocketAddr, bound: Duration, stats: &Stats) -> Option<Prefixed<I>>
where
    I: AsyncRead + Unpin,
{
    match read_preface(stream, bound).await {
        Ok(stream) => Some(stream),
        Err(e @ Silent::TimedOut(_)) => {
            stats.handshake_failed(HandshakeFailure::Silent);
            tracing::info!(%peer, error = %e, "closed a silent connection");
            None
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection closed before its preface");
            None
        }
    }
}

/// Whether the connection's first byte (or its end) arrived by `deadline`;
/// a silent one is counted and logged.
async fn first_byte(stream: &impl Readable, deadline: tokio::time::Instant, peer: SocketAddr, stats: &Stats) -> bool {
    if tokio::time::timeout_at(deadline, stream.readable()).await.is_ok() {
        return true;
    }
    stats.handshake_failed(HandshakeFailure::Silent);
    tracing::info!(%peer, "closed a connection that sent no TLS ClientHello");
    false
}

/// TLS termination for the accept loop: at most `handshakes` in flight, each
/// bounded by `timeout`, so a reconnect storm queues instead of starving
/// established sessions of CPU.
#[derive(Clone)]
pub struct TlsTermination {
    /// The reloadable TLS configuration (client certificates required).
    pub state: Arc<crate::tls::TlsState>,
    /// Handshakes allowed in flight.
    pub handshakes: Arc<tokio::sync::Semaphore>,
    /// Longest a handshake may wait for a slot, and then take.
    pub timeout: Duration,
    /// Longest a client may take to send its ClientHello.
    pub client_hello_timeout: Duration,
    /// Where the peer's name comes from.
    pub identity_from: crate::tls::IdentityFrom,
}

impl TlsTermination {
    /// [`handshake_spoken`](Self::handshake_spoken) for a connection no one
    /// waited on: its first byte first (within `client_hello_timeout`), so a
    /// silent one never gets TLS state; and no one to tell.
    async fn handshake<I>(
        &self,
        stream: I,
        peer: SocketAddr,
        stats: &Stats,
        shutdown: &CancellationToken,
    ) -> Option<tokio_rustls::server::TlsStream<I>>
    where
        I: AsyncRead + AsyncWrite + Readable + Unpin,
    {
        let hello_by = tokio::time::Instant::now() + self.client_hello_timeout;
        if !first_byte(&stream, hello_by, peer, stats).await {
            return None;
        }
        self.handshake_spoken(stream, hello_by, peer, stats, shutdown, || {}).await
    }

    /// The handshake of a connection whose first byte arrived: the
    /// ClientHello, by `hello_by` and without a slot; `spoke` is called once
    /// it is in; then a slot, waited for at most `timeout`; then the rest of
    /// the handshake, within `timeout`.
    async fn handshake_spoken<I>(
        &self,
        stream: I,
        hello_by: tokio::time::Instant,
        peer: SocketAddr,
        stats: &Stats,
        shutdown: &CancellationToken,
        spoke: impl FnOnce(),
    ) -> Option<tokio_rustls::server::TlsStream<I>>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let hello = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let start = tokio::select! {
            () = shutdown.cancelled() => return None,
            start = tokio::time::timeout_at(hello_by, hello) => start,
        };
        let start = match start {
            Ok(Ok(start)) => {
                spoke();
                start
            }
            Ok(Err(e)) => {
                stats.handshake_failed(HandshakeFailure::TlsRefused);
                tracing::info!(%peer, error = %e, "TLS ClientHello refused");
                return None;
            }
            Err(_) => {
                stats.handshake_failed(HandshakeFailure::Silent);
                tracing::info!(%peer, timeout = ?self.client_hello_timeout, "closed a connection whose TLS ClientHello did not complete in time");
                return None;
            }
        };
        let _permit = tokio::select! {
            () = shutdown.cancelled() => return None,
            permit = tokio::time::timeout(self.timeout, self.handshakes.clone().acquire_owned()) => match permit {
                Ok(permit) => permit.ok()?,
                Err(_) => {
                    stats.handshake_failed(HandshakeFailure::TlsTimeout);
                    tracing::info!(%peer, timeout = ?self.timeout, "no TLS handshake slot came free in time");
                    return None;
                }
            },
        };
        match tokio::time::timeout(self.timeout, start.into_stream(self.state.config())).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                stats.handshake_failed(HandshakeFailure::TlsRefused);
                tracing::info!(%peer, error = %e, "TLS handshake refused");
                None
            }
            Err(_) => {
                stats.handshake_failed(HandshakeFailure::TlsTimeout);
                tracing::info!(%peer, timeout = ?self.timeout, "TLS handshake timed out");
                None
            }
        }
    }

    /// The identity of a connection whose handshake finished, or `None` (and
    /// the connection is dropped) when its certificate has expired, is
    /// revoked, or cannot be read. rustls verified the certificate if the
    /// handshake was full; a resumed one brings the certificate verified
    /// when its ticket was issued, so expiry and revocation are checked here
    /// for both. A certificate that names no one is admitted with that
    /// verdict (it may carry a token for the app API); the vehicle service
    /// refuses its sessions.
    fn admit<I>(
        &self,
        stream: &tokio_rustls::server::TlsStream<I>,
        peer: SocketAddr,
        stats: &Stats,
    ) -> Option<crate::tls::PeerIdentity> {
        let conn = stream.get_ref().1;
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        // Counted as completed whether or not the certificate is admitted.
        stats::bump(if resumed { &stats.tls_resumed_handshakes } else { &stats.tls_full_handshakes });
        let identity = match conn.peer_certificates().and_then(|chain| chain.first()) {
            Some(cert) => crate::tls::identity(cert, self.identity_from).map_err(|e| e.to_string()),
            // Client certificates are required: rustls never lets this through.
            None => Err("no client certificate".to_string()),
        };
        let refusal = match &identity {
            Err(why) => Some(why.as_str()),
            Ok(id) if id.not_after <= std::time::SystemTime::now() => Some("the client certificate has expired"),
            Ok(id) if self.state.is_revoked(&id.serial) => Some("the client certificate is revoked"),
            Ok(_) => None,
        };
        if let Some(reason) = refusal {
            stats.handshake_failed(HandshakeFailure::TlsRefused);
            tracing::info!(%peer, resumed, reason, "TLS connection refused after the handshake");
            return None;
        }
        identity.ok()
    }
}

/// What [`serve`] needs besides the stream and the service.
struct Connection {
    peer: SocketAddr,
    builder: Arc<Builder>,
    shutdown: CancellationToken,
    grace: Duration,
    gauge: Gauge,
    /// The connection's streams, and how long it may have none.
    idle: Option<(Arc<Activity>, Duration)>,
}

/// Serves one connection until it ends, shutdown drains it, or it has had
/// no stream for its idle limit.
///
/// The stream and the service come boxed, and are moved out of the box into
/// the connection at once: an `async fn`'s arguments keep their own slots in
/// its future for its whole life, beside the connection made from them, so
/// passed by value they were held twice (for a TLS stream, 1.2 KiB more per
/// connection).
async fn serve<I, S>(parts: Box<(I, S)>, connection: Connection)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let Connection { peer, builder, shutdown, grace, gauge, idle } = connection;
    let _gauge = gauge;
    let (io, service) = *parts;
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let idle = async {
        match &idle {
            Some((activity, limit)) => activity.idle_for(*limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, %e, "connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            // GOAWAY: no new streams; in-flight ones get the grace period.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(grace, conn).await;
        }
        () = idle => {
            tracing::debug!(%peer, "closing a connection that had no stream for its idle limit");
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(grace, conn).await;
        }
    }
}

/// Puts the connection's verified identity (over TLS) into every request,
/// and counts its streams: each lasts until its response body ends.
#[derive(Clone)]
pub struct WithPeer<S> {
    inner: S,
    identity: Option<Arc<crate::tls::PeerIdentity>>,
    activity: Arc<Activity>,
}

impl<S, B> Service<Request<B>> for WithPeer<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Tracked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(identity) = &self.identity {
            req.extensions_mut().insert(identity.clone());
        }
        Tracked { inner: self.inner.call(req), active: Some(self.activity.begin()) }
    }
}

pin_project_lite::pin_project! {
    /// A response future that hands its stream's [`Active`] to the body.
    pub struct Tracked<F> {
        #[pin]
        inner: F,
        active: Option<Active>,
    }
}

impl<F, E> Future for Tracked<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx));
        Poll::Ready(response.map(|r| match this.active.take() {
            Some(active) => tracked(r, active),
            None => r,
        }))
    }
}

/// A stream that can wait until it has something to read (a byte or its
/// end) without reading it.
pub trait Readable {
    /// Resolves once a byte (or the end) arrived. A peek, not tokio's
    /// `readable()`, which resolves at once on a new socket (its readiness
    /// starts set, to be cleared by a read that would block).
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
}

impl Readable for TcpStream {
    async fn readable(&self) -> io::Result<()> {
        let mut byte = [0u8; 1];
        self.peek(&mut byte).await.map(drop)
    }
}

impl Readable for Counted {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        Readable::readable(&self.inner)
    }
}

/// A connection that counts the bytes it reads and writes (two relaxed
/// atomic adds per I/O call).
struct Counted {
    inner: TcpStream,
    stats: Arc<Stats>,
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            stats::add(&self.stats.bytes_in, (buf.filled().len() - before) as u64);
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            stats::add(&self.stats.bytes_out, n as u64);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            stats::add(&self.stats.bytes_out, n as u64);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves an over-cap connection just long enough to tell the client why.
async fn refuse<I>(stream: I, peer: SocketAddr, limit: usize, builder: Arc<Builder>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tracing::warn!(%peer, limit, "refusing a connection: at the connection limit");
    let refuser = tower::service_fn(move |_req: Request<Incoming>| async move {
        let status = tonic::Status::unavailable(format!(
            "tetherd is at its connection limit ({limit}); retry later or connect to another node"
        ));
        Ok::<_, Infallible>(status.into_http::<Body>())
    });
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(refuser));
    tokio::pin!(conn);
    if tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await.is_err() {
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
    }
}

/// CORS for browsers only. A request without an `Origin` header (every
/// native gRPC client and every vehicle) goes straight to the service: CORS
/// would only add `Vary` headers to its answer, and hyper clones the service
/// for each request, which for the CORS layer means allocating its header
/// lists each time. A request with one (gRPC-Web from a page, a preflight)
/// goes through the CORS layer.
#[derive(Clone)]
pub struct CorsForBrowsers<S> {
    cors: Arc<tower_http::cors::Cors<S>>,
    inner: S,
}

impl<S: Clone> CorsForBrowsers<S> {
    /// `inner` behind `cors` for requests from browsers.
    pub fn new(cors: tower_http::cors::CorsLayer, inner: S) -> Self {
        use tower::Layer;
        CorsForBrowsers { cors: Arc::new(cors.layer(inner.clone())), inner }
    }
}

impl<S, B> Service<Request<B>> for CorsForBrowsers<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future =
        futures::future::Either<Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !req.headers().contains_key(http::header::ORIGIN) {
            return futures::future::Either::Right(self.inner.call(req));
        }
        let cors = tower_http::cors::Cors::clone(&self.cors);
        futures::future::Either::Left(Box::pin(tower::ServiceExt::oneshot(cors, req)))
    }
}

/// Wraps the gRPC routes so an oversized request is RESOURCE_EXHAUSTED (as
/// the gRPC spec says) rather than tonic's OUT_OF_RANGE.
#[derive(Clone)]
pub struct OversizeAsResourceExhausted<S>(pub S);

impl<S, B> Service<Request<B>> for OversizeAsResourceExhausted<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let fut = self.0.call(req);
        Box::pin(async move {
            let mut response = fut.await?;
            let headers = response.headers_mut();
            let oversized = headers.get("grpc-status").is_some_and(|s| s == "11")
                && headers
                    .get("grpc-message")
                    .and_then(|m| m.to_str().ok())
                    .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
            if oversized {
                headers.insert("grpc-status", HeaderValue::from_static("8"));
            }
            Ok(response)
        })
    }
}
