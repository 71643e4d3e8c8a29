//! The `idle-memory` scenario: what an idle vehicle costs tetherd. Measures
//! the server's resident memory before any vehicle, then with N lean
//! vehicles connected and idle, each on a TCP connection of its own (so the
//! figure is per connection, not shared by multiplexing), in plaintext or
//! over mutual TLS with a certificate per vehicle ([`Security`]). Also times
//! every connection and session opening (the `tls` scenario's handshake
//! figures). [`run_baseline`] measures the same fleet on the raw tonic
//! baseline's bidi echo, which answers Hello with Welcome and holds the
//! stream: what a bare tonic server pays for an idle stream per connection.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use tether_sdk::Client;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::Tetherd;
use super::baseline::Baseline;
use super::lean_vehicle::LeanVehicle;
use super::load::round;
use super::pki::{self, BenchPki, Issued};

/// Connect attempts per vehicle.
const ATTEMPTS: u32 = 3;
/// File descriptors the benchmark needs besides the vehicles' sockets.
const SPARE_FILES: u64 = 100;
/// How long the vehicles' sessions may take to close at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// The scenario's parameters.
#[derive(Debug, Clone)]
pub struct IdleMemoryConfig {
    /// Vehicles to connect.
    pub vehicles: usize,
    /// Connects in flight at once.
    pub concurrency: usize,
    /// Source addresses to spread connections over (127.0.0.1, .2, ...);
    /// 1 lets the kernel choose.
    pub source_addresses: u8,
    /// How long to let the server settle once all are connected.
    pub settle: Duration,
    /// Plaintext or mutual TLS; tetherd must have been started to match.
    pub security: Security,
}

/// How the vehicles and the stats client reach tetherd.
#[derive(Debug, Clone)]
pub enum Security {
    /// Plaintext HTTP/2 (tetherd serves it on loopback only).
    Plaintext,
    /// Mutual TLS: vehicle `i` presents `pki.vehicles[i]` (naming
    /// [`vehicle_id`]`(i)`), the stats client the certificate of service
    /// [`pki::STATS_SERVICE`], which tetherd must grant `admin:read`.
    Mtls(Arc<BenchPki>),
}

impl Security {
    /// `"plaintext"` or `"mtls"`.
    pub fn name(&self) -> &'static str {
        match self {
            Security::Plaintext => "plaintext",
            Security::Mtls(_) => "mtls",
        }
    }

    /// The client TLS settings presenting `identity`, if TLS.
    pub(crate) fn tls(&self, identity: impl FnOnce(&BenchPki) -> &Issued) -> Option<ClientTlsConfig> {
        match self {
            Security::Plaintext => None,
            Security::Mtls(pki) => {
                let issued = identity(pki);
                Some(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
                        .identity(Identity::from_pem(&issued.cert_pem, &issued.key_pem))
                        .domain_name(pki::SERVER_NAME),
                )
            }
        }
    }
}

/// The id of the `index`-th vehicle (what its certificate names).
pub fn vehicle_id(index: usize) -> String {
    format!("bench-idle-{index:05}")
}

/// What the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct IdleMemoryReport {
    /// Always `"idle-memory"`.
    pub scenario: &'static str,
    /// `"tetherd"`, or `"baseline"` (the raw tonic bidi echo).
    pub server: &'static str,
    /// `"plaintext"` or `"mtls"`.
    pub security: &'static str,
    /// Vehicles connected.
    pub vehicles: usize,
    /// The server's RSS before any vehicle, KiB.
    pub rss_before_kib: u64,
    /// The server's RSS with every vehicle connected and idle, KiB.
    pub rss_after_kib: u64,
    /// The growth, KiB.
    pub rss_delta_kib: u64,
    /// The growth per vehicle, KiB.
    pub per_vehicle_kib: f64,
    /// Live sessions: as tetherd reported them; for the baseline, which
    /// keeps no count, the vehicles that read their Welcome.
    pub sessions: u64,
    /// Open TCP connections tetherd reported (the vehicles' and the stats
    /// client's); `None` for the baseline.
    pub connections: Option<u64>,
    /// Time from the first connect to the last vehicle's Welcome, seconds.
    pub connect_seconds: f64,
    /// Vehicles per second over `connect_seconds` (for mTLS: full handshakes
    /// per second, each ending in Welcome).
    pub sessions_per_second: f64,
    /// Per vehicle, TCP connect (and TLS handshake): median, ms.
    pub connect_p50_ms: f64,
    /// Per vehicle, TCP connect (and TLS handshake): 99th percentile, ms.
    pub connect_p99_ms: f64,
    /// Per vehicle, connect until Welcome: median, ms.
    pub session_p50_ms: f64,
    /// Per vehicle, connect until Welcome: 99th percentile, ms.
    pub session_p99_ms: f64,
    /// Per vehicle, connect until Welcome: slowest, ms.
    pub session_max_ms: f64,
    /// Connect attempts that failed and were retried.
    pub retries: usize,
    /// TCP listen-queue overflows on this host while connecting (each is a
    /// SYN dropped and resent about 1 s later); `None` if unreadable.
    pub listen_overflows: Option<u64>,
    /// The benchmark's own RSS with every vehicle connected (client side), KiB.
    pub bench_rss_kib: u64,
    /// Cores of the machine (server and clients share them).
    pub cores: usize,
}

/// The server a fleet is measured on.
enum Server<'a> {
    Tetherd(&'a Tetherd),
    Baseline(&'a Baseline),
}

impl Server<'_> {
    fn name(&self) -> &'static str {
        match self {
            Server::Tetherd(_) => "tetherd",
            Server::Baseline(_) => "baseline",
        }
    }

    /// Its URL for `security` (the baseline knows its own).
    fn url(&self, security: &Security) -> String {
        match (self, security) {
            (Server::Tetherd(server), Security::Plaintext) => server.url(),
            (Server::Tetherd(server), Security::Mtls(_)) => format!("https://{}", server.addr()),
            (Server::Baseline(server), _) => server.url(),
        }
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        match self {
            Server::Tetherd(server) => server.rss_kib(),
            Server::Baseline(server) => server.rss_kib(),
        }
    }
}

/// How the run counts open sessions: tetherd's own stats, or (for the
/// baseline, which counts nothing) the vehicles that read their Welcome.
enum Sessions {
    Stats(Client),
    Welcomes(Arc<Timings>),
}

impl Sessions {
    async fn open(&self) -> anyhow::Result<u64> {
        Ok(match self {
            Sessions::Stats(client) => client.server_stats().await?.sessions,
            Sessions::Welcomes(timings) => timings.count.load(Ordering::Acquire) as u64,
        })
    }

    async fn connections(&self) -> anyhow::Result<Option<u64>> {
        Ok(match self {
            Sessions::Stats(client) => Some(client.server_stats().await?.connections),
            Sessions::Welcomes(_) => None,
        })
    }
}

/// Runs the scenario against `server`.
pub async fn run(server: &Tetherd, config: &IdleMemoryConfig) -> anyhow::Result<IdleMemoryReport> {
    measure(Server::Tetherd(server), config).await
}

/// Runs the scenario against the raw tonic baseline `server`, which must
/// have been started to match `config.security` ([`Baseline::start_tls`]
/// with the same PKI's server files for mTLS).
pub async fn run_baseline(server: &Baseline, config: &IdleMemoryConfig) -> anyhow::Result<IdleMemoryReport> {
    measure(Server::Baseline(server), config).await
}

async fn measure(server: Server<'_>, config: &IdleMemoryConfig) -> anyhow::Result<IdleMemoryReport> {
    anyhow::ensure!(config.vehicles > 0, "connect at least one vehicle");
    anyhow::ensure!(config.source_addresses >= 1, "--source-addresses must be at least 1");
    if let Some(limit) = super::rss::open_files_limit()
        && config.vehicles as u64 + SPARE_FILES > limit
    {
        bail!(
            "{} vehicles need {} open files in this process; its limit is {limit}",
            config.vehicles,
            config.vehicles as u64 + SPARE_FILES
        );
    }
    if let Security::Mtls(pki) = &config.security {
        anyhow::ensure!(
            pki.vehicles.len() >= config.vehicles,
            "{} vehicles need as many certificates; the PKI has {}",
            config.vehicles,
            pki.vehicles.len()
        );
    }
    let url = server.url(&config.security);
    let timings = Arc::new(Timings::new()?);
    let sessions = match server {
        Server::Tetherd(_) => {
            Sessions::Stats(stats_client(&url, &config.security).await.context("cannot connect the stats client")?)
        }
        Server::Baseline(_) => Sessions::Welcomes(timings.clone()),
    };
    let before = sessions.open().await?;
    anyhow::ensure!(before == 0, "the {} server already holds {before} sessions", server.name());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = server.rss_kib()?;
    tracing::info!(server = server.name(), rss_before_kib, vehicles = config.vehicles, "connecting vehicles");

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let failed = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let overflows_before = super::rss::listen_overflows();
    let started = Instant::now();
    for index in 0..config.vehicles {
        let local_address = crate::loopback::source_address(index, config.source_addresses);
        let (url, stop, permits) = (url.clone(), stop.clone(), permits.clone());
        let (failed, retries, timings) = (failed.clone(), retries.clone(), timings.clone());
        let security = config.security.clone();
        tasks.spawn(async move {
            let vehicle = {
                let Ok(_permit) = permits.acquire_owned().await else { return };
                let mut attempt = 1;
                loop {
                    let tls = security.tls(|pki| &pki.vehicles[index]);
                    match LeanVehicle::connect(&url, local_address, tls, vehicle_id(index)).await {
                        Ok(vehicle) => break vehicle,
                        Err(error) if attempt < ATTEMPTS => {
                            tracing::debug!(index, attempt, error = format!("{error:#}"), "connect failed; retrying");
                            retries.fetch_add(1, Ordering::Relaxed);
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                        }
                        Err(error) => {
                            tracing::warn!(index, error = format!("{error:#}"), "vehicle could not connect");
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            };
            timings.record(&vehicle, started);
            tracing::trace!(index, session_id = vehicle.session_id(), "connected");
            vehicle.hold(stop).await;
        });
    }
    tasks.close();

    let outcome = wait_for_sessions(&sessions, config.vehicles as u64, &failed, started).await;
    let report = match outcome {
        Ok(()) => {
            // tetherd may count a session before its vehicle has read the
            // Welcome: wait (bounded) until every vehicle recorded its own.
            timings.wait_for(config.vehicles, CLOSE_TIMEOUT).await?;
            let connect_seconds = timings.last_welcome().as_secs_f64();
            let listen_overflows =
                overflows_before.zip(super::rss::listen_overflows()).map(|(a, b)| b.saturating_sub(a));
            tracing::info!(connect_seconds, settle = ?config.settle, "all connected; settling");
            tokio::time::sleep(config.settle).await;
            let rss_after_kib = server.rss_kib()?;
            let open = sessions.open().await?;
            let connections = sessions.connections().await?;
            let rss_delta_kib = rss_after_kib.saturating_sub(rss_before_kib);
            let (connects, sessions) = timings.histograms();
            let ms = |h: &Histogram<u64>, q: f64| round(h.value_at_quantile(q) as f64 / 1000.0, 1000.0);
            Ok(IdleMemoryReport {
                scenario: "idle-memory",
                server: server.name(),
                security: config.security.name(),
                vehicles: config.vehicles,
                rss_before_kib,
                rss_after_kib,
                rss_delta_kib,
                per_vehicle_kib: round(rss_delta_kib as f64 / config.vehicles as f64, 10.0),
                sessions: open,
                connections,
                connect_seconds: round(connect_seconds, 100.0),
                sessions_per_second: round(config.vehicles as f64 / connect_seconds.max(1e-6), 1.0),
                connect_p50_ms: ms(&connects, 0.5),
                connect_p99_ms: ms(&connects, 0.99),
                session_p50_ms: ms(&sessions, 0.5),
                session_p99_ms: ms(&sessions, 0.99),
                session_max_ms: ms(&sessions, 1.0),
                retries: retries.load(Ordering::Relaxed),
                listen_overflows,
                bench_rss_kib: super::rss::own_rss_kib().unwrap_or(0),
                cores: super::cores(),
            })
        }
        Err(error) => Err(error),
    };

    stop.cancel();
    if tokio::time::timeout(CLOSE_TIMEOUT, tasks.wait()).await.is_err() {
        tracing::warn!("vehicles did not close within {CLOSE_TIMEOUT:?}");
    }
    report
}

/// The stats client: plaintext, or over mTLS as the stats service.
async fn stats_client(url: &str, security: &Security) -> anyhow::Result<Client> {
    match security.tls(|pki| &pki.stats) {
        None => Ok(Client::connect(url.to_string()).await?),
        Some(tls) => {
            let channel = Endpoint::from_shared(url.to_string())?.tls_config(tls)?.connect().await?;
            Ok(Client::from_channel(channel))
        }
    }
}

/// Every vehicle's connect and session times, and when the last Welcome came.
struct Timings {
    /// (TCP + TLS, connect until Welcome), microseconds.
    histograms: Mutex<(Histogram<u64>, Histogram<u64>)>,
    /// Vehicles recorded.
    count: AtomicUsize,
    /// The latest Welcome, microseconds after the first connect began.
    last_welcome_us: AtomicU64,
    /// Signalled whenever a vehicle is recorded.
    recorded: tokio::sync::Notify,
}

impl Timings {
    fn new() -> anyhow::Result<Self> {
        // 1 µs to 10 min, 3 significant digits.
        let histogram = || Histogram::new_with_bounds(1, 600_000_000, 3);
        Ok(Timings {
            histograms: Mutex::new((histogram()?, histogram()?)),
            count: AtomicUsize::new(0),
            last_welcome_us: AtomicU64::new(0),
            recorded: tokio::sync::Notify::new(),
        })
    }

    fn record(&self, vehicle: &LeanVehicle, started: Instant) {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.last_welcome_us.fetch_max(micros(started.elapsed()), Ordering::Relaxed);
        {
            let mut histograms = self.histograms.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            histograms.0.saturating_record(micros(vehicle.connect_time()));
            histograms.1.saturating_record(micros(vehicle.session_time()));
        }
        self.count.fetch_add(1, Ordering::Release);
        self.recorded.notify_waiters();
    }

    /// Waits until `expected` vehicles were recorded, at most `timeout`.
    async fn wait_for(&self, expected: usize, timeout: Duration) -> anyhow::Result<()> {
        let wait = async {
            loop {
                let notified = self.recorded.notified();
                if self.count.load(Ordering::Acquire) >= expected {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            anyhow::anyhow!(
                "only {} of {expected} vehicles read their Welcome within {timeout:?}",
                self.count.load(Ordering::Acquire)
            )
        })
    }

    fn last_welcome(&self) -> Duration {
        Duration::from_micros(self.last_welcome_us.load(Ordering::Relaxed))
    }

    fn histograms(&self) -> (Histogram<u64>, Histogram<u64>) {
        self.histograms.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// Polls until the server holds `expected` sessions; fails when vehicles
/// gave up, or when progress stops for long.
async fn wait_for_sessions(
    sessions: &Sessions,
    expected: u64,
    failed: &AtomicUsize,
    started: Instant,
) -> anyhow::Result<()> {
    const POLL: Duration = Duration::from_millis(250);
    const STUCK: Duration = Duration::from_secs(60);
    let mut last = (0, Instant::now());
    let mut logged = Instant::now();
    loop {
        let sessions = sessions.open().await?;
        if sessions >= expected {
            return Ok(());
        }
        let failed = failed.load(Ordering::Relaxed);
        if failed > 0 {
            bail!("{failed} vehicles could not connect ({sessions} of {expected} sessions open)");
        }
        if sessions > last.0 {
            last = (sessions, Instant::now());
        } else if last.1.elapsed() > STUCK {
            bail!("stuck at {sessions} of {expected} sessions for {STUCK:?}");
        }
        if logged.elapsed() >= Duration::from_secs(2) {
            tracing::info!(sessions, expected, elapsed = ?started.elapsed(), "connecting");
            logged = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
}

impl fmt::Display for IdleMemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "idle-memory: {} idle vehicles on {}, one TCP connection each, {} ({} cores)",
            self.vehicles, self.server, self.security, self.cores
        )?;
        writeln!(f, "  {:<28} {:>12}", "metric", "value")?;
        writeln!(f, "  {:<28} {:>8} KiB", "server RSS before", self.rss_before_kib)?;
        writeln!(f, "  {:<28} {:>8} KiB", "server RSS after", self.rss_after_kib)?;
        writeln!(f, "  {:<28} {:>8} KiB", "growth", self.rss_delta_kib)?;
        writeln!(f, "  {:<28} {:>8.1} KiB", "per idle vehicle", self.per_vehicle_kib)?;
        writeln!(f, "  {:<28} {:>12}", "sessions / connections", sessions_connections(self))?;
        writeln!(f, "  {:<28} {:>10.2} s", "connect time (all)", self.connect_seconds)?;
        writeln!(f, "  {:<28} {:>12.0}", "sessions per second", self.sessions_per_second)?;
        writeln!(
            f,
            "  {:<28} {:>12}",
            "connect p50 / p99",
            format!("{:.2} / {:.2} ms", self.connect_p50_ms, self.connect_p99_ms)
        )?;
        writeln!(
            f,
            "  {:<28} {:>12}",
            "to Welcome p50 / p99 / max",
            format!("{:.2} / {:.2} / {:.1} ms", self.session_p50_ms, self.session_p99_ms, self.session_max_ms)
        )?;
        writeln!(f, "  {:<28} {:>12}", "connect retries", self.retries)?;
        writeln!(f, "  {:<28} {:>12}", "listen-queue overflows", overflows(self.listen_overflows))?;
        write!(f, "  {:<28} {:>8} KiB", "bench RSS (client side)", self.bench_rss_kib)
    }
}

/// "sessions / connections" for a table (`?` where the server counts none).
pub(crate) fn sessions_connections(report: &IdleMemoryReport) -> String {
    let connections = report.connections.map_or_else(|| "?".to_string(), |n| n.to_string());
    format!("{} / {connections}", report.sessions)
}

/// A listen-overflow count for a table.
pub(crate) fn overflows(count: Option<u64>) -> String {
    count.map_or_else(|| "?".to_string(), |n| n.to_string())
}
