//! The `silent-sockets` scenario: do real mTLS vehicles and real app calls
//! still get through while thousands of TCP sockets sit on tetherd's gRPC
//! port saying nothing? One tetherd, mutual TLS, two phases in one run:
//!
//! 1. *Quiet*: N applying lean vehicles (a certificate each) are connected;
//!    M new vehicles connect (each timed to its Welcome); then an app (SDK
//!    clients presenting a declared service certificate) writes at a fixed
//!    open-loop rate spread over the N vehicles, each write waiting for
//!    APPLIED, latency from the scheduled send time ([`load::open_loop`], as
//!    `write-rate` measures it).
//! 2. *Attacked*: S TCP sockets that never send a byte are opened to the
//!    gRPC port from several 127.0.0.x source addresses ([`SilentSockets`])
//!    and kept at S: tetherd closes each after its ClientHello did not come
//!    (`--preface-timeout`), and it is opened again at once. While they are
//!    held, M other new vehicles connect, then the same write load runs again.
//!
//! Reported: both phases' latency percentiles and the p99 ratio attacked ÷
//! quiet (target ≤ 2), the new vehicles connected and their time to Welcome,
//! the silent sockets held and re-opened, tetherd's `silent` and `evicted`
//! handshake-failure counters from its `/metrics`, and its CPU per phase.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use tether_sdk::{Tls, WaitLevel};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cpu::{self, CpuSample, CpuUsage};
use super::fleet::{ApplyingFleet, FleetOptions};
use super::idle_memory::Security;
use super::lean_vehicle::LeanVehicle;
use super::load::{self, LoadFigures, Server, Writes, ms, round};
use super::pki::{self, BenchPki};
use super::{Tetherd, TetherdOptions, metric_value};

/// The p99 of the attacked phase may be at most this many times the quiet one's.
pub const P99_TARGET: f64 = 2.0;
/// tetherd's counter of connections closed for saying nothing in time.
const SILENT_SERIES: &str = "tether_handshake_failures_total{reason=\"silent\"}";
/// tetherd's counter of silent connections closed at the connection cap.
const EVICTED_SERIES: &str = "tether_handshake_failures_total{reason=\"evicted\"}";
/// Files this process needs besides the sockets counted (the runtime, the
/// certificates' temporary files, the admin requests, slack).
const SPARE_FILES: u64 = 200;
/// Silent sockets being connected at once: enough to refill a wave of
/// closes within a few hundred milliseconds, few enough not to flood
/// tetherd's listen queue (128) by themselves.
const OPENING: usize = 256;
/// How long one silent connect may take (a SYN dropped at a full listen
/// queue is resent after 1 s, 3 s, ...).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a silent connect failed, so an exhausted resource (open
/// files, ports) is not retried in a spin.
const OPEN_BACKOFF: Duration = Duration::from_millis(100);
/// How long the silent sockets may take to be all open at first.
const RAMP_BOUND: Duration = Duration::from_secs(60);
/// How often the count of held silent sockets is sampled while the
/// attacked phase runs.
const HELD_SAMPLE: Duration = Duration::from_millis(50);
/// How long the held vehicles may take to close at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// The scenario's parameters.
#[derive(Debug, Clone)]
pub struct SilentSocketsConfig {
    /// Applying mTLS vehicles the writes go to (connected before either phase).
    pub vehicles: usize,
    /// New mTLS vehicles connected in each phase (other ones in each).
    pub new_vehicles: usize,
    /// New vehicles connecting at once.
    pub connect_concurrency: usize,
    /// Silent sockets held during the attacked phase.
    pub silent: usize,
    /// Source addresses (127.0.0.1 ..= .N) the silent sockets and the
    /// vehicles' connections are spread over.
    pub source_addresses: u8,
    /// Writes per second in each phase (open loop).
    pub rate: f64,
    /// Measured time of each phase's writes.
    pub duration: Duration,
    /// Unmeasured writes at the same rate before the quiet phase.
    pub warmup: Duration,
    /// App client connections (SDK clients over mTLS).
    pub channels: usize,
    /// tetherd's `--max-connections`; `None`: its default. Below the silent
    /// sockets plus the vehicles, new connections evict silent ones.
    pub max_connections: Option<usize>,
}

impl SilentSocketsConfig {
    /// Open files this process needs: every socket it holds at once.
    pub fn open_files(&self) -> u64 {
        (self.silent + self.vehicles + 2 * self.new_vehicles + self.channels) as u64 + SPARE_FILES
    }
}

/// What the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct SilentSocketsReport {
    /// Always `"silent-sockets"`.
    pub scenario: &'static str,
    /// Always `"mtls"`: vehicles, new vehicles and the app all present certificates.
    pub security: &'static str,
    /// Applying vehicles the writes go to.
    pub vehicles: usize,
    /// New vehicles connected per phase.
    pub new_vehicles: usize,
    /// Silent sockets wanted during the attacked phase.
    pub silent_sockets: usize,
    /// Writes per second (open loop), each phase.
    pub rate: f64,
    /// Measured seconds of writes, each phase.
    pub duration_seconds: f64,
    /// App client connections.
    pub channels: usize,
    /// The wait level of every write.
    pub wait: &'static str,
    /// tetherd's `--max-connections` if set (else its default).
    pub max_connections: Option<usize>,
    /// The applying vehicles' first connect to their last Welcome, seconds.
    pub connect_seconds: f64,
    /// Before any silent socket.
    pub quiet: PhaseFigures,
    /// With the silent sockets held.
    pub attacked: PhaseFigures,
    /// attacked p99 ÷ quiet p99.
    pub p99_ratio: f64,
    /// The most `p99_ratio` may be.
    pub p99_target: f64,
    /// Whether `p99_ratio` ≤ `p99_target`.
    pub p99_met: bool,
    /// What the attacker did.
    pub silent: SilentFigures,
    /// tetherd's `silent` handshake failures at the end (its `/metrics`).
    pub tetherd_silent_total: u64,
    /// tetherd's `evicted` handshake failures at the end (its `/metrics`).
    pub tetherd_evicted_total: u64,
    /// Open files this process needed at most (every socket it held at once).
    pub open_files_needed: u64,
    /// This process's open-files limit, if known.
    pub open_files_limit: Option<u64>,
    /// Cores of the machine (tetherd, vehicles, app and attacker share them).
    pub cores: usize,
}

/// One phase: new vehicles connecting, then the write load.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseFigures {
    /// The writes: latency from the scheduled send, counts.
    pub load: LoadFigures,
    /// The new vehicles of this phase.
    pub new_vehicles: Arrivals,
    /// tetherd's CPU over the whole phase (attacked: from the first silent
    /// socket on).
    pub server_cpu: CpuUsage,
    /// tetherd's CPU while the writes ran.
    pub server_cpu_writes: CpuUsage,
    /// This process's CPU over the whole phase (the attacker is the thread
    /// `bench-silent`).
    pub bench_cpu: CpuUsage,
    /// tetherd's RSS at the end of the phase, KiB.
    pub server_rss_kib: u64,
    /// The phase's length, seconds.
    pub seconds: f64,
    /// TCP listen-queue overflows on this host during the phase (each a SYN
    /// dropped and resent about 1 s later); `None` if unreadable.
    pub listen_overflows: Option<u64>,
    /// tetherd's `silent` handshake failures during the phase.
    pub tetherd_silent: u64,
    /// tetherd's `evicted` handshake failures during the phase.
    pub tetherd_evicted: u64,
}

/// New vehicles connecting, each on its own mTLS connection.
#[derive(Debug, Clone, Serialize)]
pub struct Arrivals {
    /// Vehicles that tried (one attempt each, as a vehicle's first try).
    pub attempted: usize,
    /// Vehicles that read their Welcome.
    pub connected: usize,
    /// Vehicles whose attempt failed (within 20 s).
    pub failed: usize,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Connect start → Welcome, median, ms.
    pub welcome_p50_ms: f64,
    /// Connect start → Welcome, 99th percentile, ms.
    pub welcome_p99_ms: f64,
    /// Connect start → Welcome, slowest, ms.
    pub welcome_max_ms: f64,
    /// The first attempt to the last outcome, seconds.
    pub seconds: f64,
}

/// What the attacker did during the attacked phase.
#[derive(Debug, Clone, Serialize)]
pub struct SilentFigures {
    /// Silent sockets wanted.
    pub target: usize,
    /// Source addresses they came from.
    pub source_addresses: u8,
    /// From the first connect until all were open at once, seconds (`None`:
    /// never within the bound).
    pub ramp_seconds: Option<f64>,
    /// Held when the attacked phase's new vehicles began to connect.
    pub held_at_start: usize,
    /// Fewest held at a sample (every 50 ms) from then to the end of the writes.
    pub held_min: usize,
    /// Mean held over those samples.
    pub held_mean: f64,
    /// Connects that succeeded, first ones and re-opens.
    pub opened: u64,
    /// Connects after tetherd closed the slot's previous socket.
    pub reopened: u64,
    /// Sockets tetherd closed (end of stream or reset while silent).
    pub closed_by_tetherd: u64,
    /// Connects that failed (each retried after 100 ms).
    pub open_failures: u64,
    /// The first connect failure, e.g. running out of open files.
    pub first_open_error: Option<String>,
    /// Open → closed by tetherd, median, ms (`None`: none closed).
    pub lifetime_p50_ms: Option<f64>,
    /// Open → closed by tetherd, slowest, ms.
    pub lifetime_max_ms: Option<f64>,
}

/// Runs the scenario against one tetherd started from `options` with mTLS.
pub async fn run(options: &TetherdOptions, config: &SilentSocketsConfig) -> anyhow::Result<SilentSocketsReport> {
    anyhow::ensure!(config.vehicles > 0, "connect at least one vehicle");
    anyhow::ensure!(config.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(config.source_addresses >= 1, "--source-addresses must be at least 1");
    let needed = config.open_files();
    let limit = super::rss::open_files_limit();
    if let Some(limit) = limit
        && needed > limit
    {
        bail!(
            "{} silent sockets, {} vehicles, 2 × {} new ones and {} clients need {needed} open files in this \
             process; its limit is {limit}",
            config.silent,
            config.vehicles,
            config.new_vehicles,
            config.channels
        );
    }
    let fleet = FleetOptions {
        vehicles: config.vehicles,
        per_connection: 1,
        source_addresses: config.source_addresses,
        concurrency: 200,
        prefix: "bench-s".into(),
    };
    // One certificate per vehicle: the fleet's first (vehicle i presents
    // certificate i), then each phase's new vehicles.
    let quiet_ids = new_vehicle_ids("bench-sq", config.new_vehicles);
    let attacked_ids = new_vehicle_ids("bench-sa", config.new_vehicles);
    let ids: Vec<String> =
        fleet.ids().into_iter().chain(quiet_ids.iter().cloned()).chain(attacked_ids.clone()).collect();
    let threads = super::cores();
    let pki = tokio::task::spawn_blocking(move || BenchPki::generate(&ids, threads))
        .await
        .context("the certificate generator panicked")??;
    tracing::info!(generation = ?pki.generation, certificates = pki.vehicles.len(), "certificates generated");
    let certs = tempfile::Builder::new().prefix("tether-bench-silent-").tempdir()?;
    let files = pki.write_server_files(certs.path())?;
    let mut options = options.clone();
    options.args.extend(files.tetherd_args());
    if let Some(max) = config.max_connections {
        options.args.extend(["--max-connections".into(), max.to_string()]);
    }
    let tetherd = Tetherd::start(&options).await?;
    let pki = Arc::new(pki);
    let outcome = measure(&tetherd, &pki, &fleet, &quiet_ids, &attacked_ids, config).await;
    tetherd.stop().await?;
    outcome
}

fn new_vehicle_ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i:05}")).collect()
}

/// Both phases against `tetherd`, which serves mTLS with `pki`'s files.
async fn measure(
    tetherd: &Tetherd,
    pki: &Arc<BenchPki>,
    fleet_options: &FleetOptions,
    quiet_ids: &[String],
    attacked_ids: &[String],
    config: &SilentSocketsConfig,
) -> anyhow::Result<SilentSocketsReport> {
    let url = format!("https://{}", tetherd.addr());
    let security = Security::Mtls(pki.clone());
    let fleet =
        ApplyingFleet::connect_secured(&url, fleet_options, &security).await.context("cannot connect the vehicles")?;
    // The new vehicles stay connected until the end, as arrivals would.
    let stop = CancellationToken::new();
    let held = TaskTracker::new();
    let outcome = async {
        let app_tls = Tls::new(&pki.ca_pem).identity(&pki.stats.cert_pem, &pki.stats.key_pem).domain(pki::SERVER_NAME);
        let ids: Arc<[String]> = fleet.ids().into();
        let writes = Writes::connect_tls(&url, config.channels, ids, WaitLevel::Applied, Server::Tetherd, &app_tls)
            .await?
            .with_arrivals(fleet.applied().clone());
        let warmup_writes = (config.rate * config.warmup.as_secs_f64()).round() as u64;
        if !config.warmup.is_zero() {
            tracing::info!(rate = config.rate, warmup = ?config.warmup, "warming up");
            load::open_loop(&writes, config.rate, config.warmup, 0).await?;
        }
        let phase_writes = (config.rate * config.duration.as_secs_f64()).round().max(1.0) as u64;
        let arrivals = NewVehicles {
            url: &url,
            security: &security,
            concurrency: config.connect_concurrency,
            source_addresses: config.source_addresses,
            stop: &stop,
            held: &held,
        };

        tracing::info!("quiet phase");
        let start = PhaseStart::now(tetherd).await?;
        let new_vehicles = arrivals.connect(quiet_ids, fleet_options.vehicles).await;
        let quiet = start.writes(tetherd, &writes, config, warmup_writes, new_vehicles).await?;

        tracing::info!(silent = config.silent, "attacked phase: opening the silent sockets");
        let start = PhaseStart::now(tetherd).await?;
        let attacker = SilentSockets::open(tetherd.addr(), config.silent, config.source_addresses)?;
        let ramp = attacker.wait_held(config.silent, RAMP_BOUND).await;
        match ramp {
            Some(took) => tracing::info!(held = config.silent, ?took, "every silent socket open"),
            None => tracing::warn!(
                held = attacker.held(),
                wanted = config.silent,
                error = attacker.first_error().as_deref().unwrap_or("-"),
                "not every silent socket opened within {RAMP_BOUND:?}; measuring with those held"
            ),
        }
        let held_at_start = attacker.held();
        let sampling = CancellationToken::new();
        let sampler = tokio::spawn(sample_held(attacker.stats.clone(), sampling.clone()));
        let new_vehicles = arrivals.connect(attacked_ids, fleet_options.vehicles + quiet_ids.len()).await;
        let first = warmup_writes + phase_writes;
        let attacked = start.writes(tetherd, &writes, config, first, new_vehicles).await;
        sampling.cancel();
        let (held_min, held_mean) = sampler.await.context("the held-socket sampler panicked")?;
        // Read while the sockets are still held: the counters as the attack left them.
        let metrics = tetherd.metrics().await;
        let silent = attacker.stop(config, ramp, held_at_start, held_min, held_mean).await;
        let attacked = attacked?;
        let metrics = metrics?;
        let counter = |series| metric_value(&metrics, series).map_or(0, |v| v as u64);
        let p99_ratio =
            round(attacked.load.percentiles.p99_us as f64 / (quiet.load.percentiles.p99_us as f64).max(1.0), 100.0);
        anyhow::Ok(SilentSocketsReport {
            scenario: "silent-sockets",
            security: "mtls",
            vehicles: config.vehicles,
            new_vehicles: config.new_vehicles,
            silent_sockets: config.silent,
            rate: config.rate,
            duration_seconds: config.duration.as_secs_f64(),
            channels: writes.channels(),
            wait: load::wait_name(WaitLevel::Applied),
            max_connections: config.max_connections,
            connect_seconds: round(fleet.connect_time().as_secs_f64(), 100.0),
            quiet,
            attacked,
            p99_ratio,
            p99_target: P99_TARGET,
            p99_met: p99_ratio <= P99_TARGET,
            silent,
            tetherd_silent_total: counter(SILENT_SERIES),
            tetherd_evicted_total: counter(EVICTED_SERIES),
            open_files_needed: config.open_files(),
            open_files_limit: super::rss::open_files_limit(),
            cores: super::cores(),
        })
    }
    .await;
    stop.cancel();
    held.close();
    if tokio::time::timeout(CLOSE_TIMEOUT, held.wait()).await.is_err() {
        tracing::warn!("new vehicles did not close within {CLOSE_TIMEOUT:?}");
    }
    fleet.close().await;
    outcome
}

/// What a phase's figures are counted from.
struct PhaseStart {
    at: Instant,
    server: CpuSample,
    bench: CpuSample,
    overflows: Option<u64>,
    silent: u64,
    evicted: u64,
}

impl PhaseStart {
    async fn now(tetherd: &Tetherd) -> anyhow::Result<PhaseStart> {
        let metrics = tetherd.metrics().await?;
        Ok(PhaseStart {
            at: Instant::now(),
            server: cpu::sample(tetherd.pid())?,
            bench: cpu::sample(std::process::id())?,
            overflows: super::rss::listen_overflows(),
            silent: metric_value(&metrics, SILENT_SERIES).map_or(0, |v| v as u64),
            evicted: metric_value(&metrics, EVICTED_SERIES).map_or(0, |v| v as u64),
        })
    }

    /// Runs the phase's writes (write numbers from `first`), then closes the
    /// phase's figures.
    async fn writes(
        self,
        tetherd: &Tetherd,
        writes: &Writes,
        config: &SilentSocketsConfig,
        first: u64,
        new_vehicles: Arrivals,
    ) -> anyhow::Result<PhaseFigures> {
        let pid = tetherd.pid();
        let before = cpu::sample(pid)?;
        let measured = load::open_loop(writes, config.rate, config.duration, first).await?;
        let server_after = cpu::sample(pid)?;
        let bench_after = cpu::sample(std::process::id())?;
        let metrics = tetherd.metrics().await?;
        let counter = |series, since: u64| metric_value(&metrics, series).map_or(0, |v| v as u64).saturating_sub(since);
        let load = measured.figures();
        tracing::info!(
            p50 = %ms(load.percentiles.p50_us),
            p99 = %ms(load.percentiles.p99_us),
            errors = load.errors + load.not_reached,
            "phase written"
        );
        Ok(PhaseFigures {
            load,
            new_vehicles,
            server_cpu: cpu::usage(&self.server, &server_after),
            server_cpu_writes: cpu::usage(&before, &server_after),
            bench_cpu: cpu::usage(&self.bench, &bench_after),
            server_rss_kib: tetherd.rss_kib()?,
            seconds: round(self.at.elapsed().as_secs_f64(), 100.0),
            listen_overflows: self.overflows.zip(super::rss::listen_overflows()).map(|(a, b)| b.saturating_sub(a)),
            tetherd_silent: counter(SILENT_SERIES, self.silent),
            tetherd_evicted: counter(EVICTED_SERIES, self.evicted),
        })
    }
}

/// How a phase's new vehicles connect.
struct NewVehicles<'a> {
    url: &'a str,
    /// Vehicle `i` of the PKI presents certificate `i`.
    security: &'a Security,
    concurrency: usize,
    source_addresses: u8,
    /// Ends the sessions of those that connected.
    stop: &'a CancellationToken,
    /// Where their sessions are held.
    held: &'a TaskTracker,
}

impl NewVehicles<'_> {
    /// Connects a lean vehicle per id, `concurrency` at once, one attempt
    /// each; vehicle `ids[k]` presents the PKI's certificate `offset + k`.
    /// Those that read their Welcome stay connected until `stop`.
    async fn connect(&self, ids: &[String], offset: usize) -> Arrivals {
        let welcomes = Arc::new(Mutex::new(load::histogram()));
        let failures = Arc::new(Mutex::new((0usize, None::<String>)));
        let permits = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let tasks = TaskTracker::new();
        let started = Instant::now();
        for (k, id) in ids.iter().enumerate() {
            let tls = self.security.tls(|pki| &pki.vehicles[offset + k]);
            let source = crate::loopback::source_address(offset + k, self.source_addresses);
            let (url, id, permits) = (self.url.to_string(), id.clone(), permits.clone());
            let (welcomes, failures, stop, held) =
                (welcomes.clone(), failures.clone(), self.stop.clone(), self.held.clone());
            tasks.spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else { return };
                // LeanVehicle bounds the attempt (20 s) and times it from its connect.
                match LeanVehicle::connect(&url, source, tls, id).await {
                    Ok(vehicle) => {
                        let micros = u64::try_from(vehicle.session_time().as_micros()).unwrap_or(u64::MAX);
                        welcomes.lock().unwrap_or_else(|p| p.into_inner()).saturating_record(micros.max(1));
                        held.spawn(vehicle.hold(stop));
                    }
                    Err(error) => {
                        let mut failures = failures.lock().unwrap_or_else(|p| p.into_inner());
                        failures.0 += 1;
                        if failures.1.is_none() {
                            tracing::warn!(error = format!("{error:#}"), "a new vehicle could not connect");
                            failures.1 = Some(format!("{error:#}"));
                        }
                    }
                }
            });
        }
        tasks.close();
        // Each attempt ends within its own bound, so this wait does too.
        tasks.wait().await;
        let seconds = started.elapsed().as_secs_f64();
        let welcomes = welcomes.lock().unwrap_or_else(|p| p.into_inner());
        let (failed, first_error) = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let at = |q: f64| round(welcomes.value_at_quantile(q) as f64 / 1000.0, 1000.0);
        let arrivals = Arrivals {
            attempted: ids.len(),
            connected: welcomes.len() as usize,
            failed,
            first_error,
            welcome_p50_ms: at(0.5),
            welcome_p99_ms: at(0.99),
            welcome_max_ms: round(welcomes.max() as f64 / 1000.0, 1000.0),
            seconds: round(seconds, 1000.0),
        };
        tracing::info!(
            connected = arrivals.connected,
            attempted = arrivals.attempted,
            p99_ms = arrivals.welcome_p99_ms,
            "new vehicles connected"
        );
        arrivals
    }
}

/// Samples how many silent sockets are held every [`HELD_SAMPLE`] until
/// `stop`; returns the fewest and the mean.
async fn sample_held(stats: Arc<SilentStats>, stop: CancellationToken) -> (usize, f64) {
    let mut ticks = tokio::time::interval(HELD_SAMPLE);
    let (mut fewest, mut sum, mut samples) = (usize::MAX, 0u64, 0u64);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let held = stats.held.load(Ordering::Acquire);
        fewest = fewest.min(held);
        sum += held as u64;
        samples += 1;
    }
    if samples == 0 {
        let held = stats.held.load(Ordering::Acquire);
        return (held, held as f64);
    }
    (fewest, round(sum as f64 / samples as f64, 10.0))
}

// ------------------------------------------------------------ the attacker

/// S TCP sockets to one address that never send a byte, each re-opened as
/// soon as the server closes it, on a runtime of their own (the thread
/// `bench-silent`): the attacker's tasks never queue ahead of the app's or
/// the vehicles' on the benchmark's own runtime, though all share the cores.
pub struct SilentSockets {
    stats: Arc<SilentStats>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    started: Instant,
}

/// The attacker's counts, shared with its thread.
struct SilentStats {
    held: AtomicUsize,
    opened: AtomicU64,
    reopened: AtomicU64,
    closed: AtomicU64,
    failures: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Open → closed by the server, µs.
    lifetimes: Mutex<Histogram<u64>>,
    /// Signalled whenever `held` changes.
    changed: tokio::sync::Notify,
}

impl SilentStats {
    fn failed(&self, error: &io::Error) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            tracing::warn!(%error, "a silent socket could not open");
            *first = Some(error.to_string());
        }
    }

    fn set_held(&self, up: bool) {
        if up {
            self.held.fetch_add(1, Ordering::AcqRel);
        } else {
            self.held.fetch_sub(1, Ordering::AcqRel);
        }
        self.changed.notify_waiters();
    }
}

impl fmt::Debug for SilentSockets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SilentSockets").field("held", &self.held()).finish_non_exhaustive()
    }
}

impl SilentSockets {
    /// Starts holding `count` silent sockets to `addr`, the `i`-th from
    /// source address `i mod source_addresses` (127.0.0.x, for a loopback
    /// IPv4 `addr`). Returns at once; see [`wait_held`](Self::wait_held).
    pub fn open(addr: SocketAddr, count: usize, source_addresses: u8) -> anyhow::Result<SilentSockets> {
        let stats = Arc::new(SilentStats {
            held: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
            reopened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            first_error: Mutex::new(None),
            lifetimes: Mutex::new(load::histogram()),
            changed: tokio::sync::Notify::new(),
        });
        let stop = CancellationToken::new();
        // 127.0.0.x sources reach only a loopback IPv4 address.
        let spread = if addr.ip().is_loopback() && addr.is_ipv4() { source_addresses } else { 1 };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot build the attacker's runtime")?;
        let thread = {
            let (stats, stop) = (stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name("bench-silent".into())
                .spawn(move || {
                    runtime.block_on(async move {
                        let permits = Arc::new(Semaphore::new(OPENING));
                        let tasks = TaskTracker::new();
                        for index in 0..count {
                            let source = crate::loopback::source_address(index, spread);
                            tasks.spawn(hold_slot(addr, source, stats.clone(), permits.clone(), stop.clone()));
                        }
                        tasks.close();
                        tasks.wait().await;
                    });
                })
                .context("cannot start the attacker's thread")?
        };
        Ok(SilentSockets { stats, stop, thread: Some(thread), started: Instant::now() })
    }

    /// Silent sockets open now.
    pub fn held(&self) -> usize {
        self.stats.held.load(Ordering::Acquire)
    }

    /// The first connect failure, if any.
    pub fn first_error(&self) -> Option<String> {
        self.stats.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `count` are open at once, at most `bound`; returns how
    /// long that took from the start, or `None`.
    pub async fn wait_held(&self, count: usize, bound: Duration) -> Option<Duration> {
        let wait = async {
            loop {
                let changed = self.stats.changed.notified();
                if self.held() >= count {
                    return self.started.elapsed();
                }
                changed.await;
            }
        };
        tokio::time::timeout(bound, wait).await.ok()
    }

    /// Closes every socket, waits for the attacker's thread, and returns what
    /// it did (with the caller's samples of what was held).
    async fn stop(
        mut self,
        config: &SilentSocketsConfig,
        ramp: Option<Duration>,
        held_at_start: usize,
        held_min: usize,
        held_mean: f64,
    ) -> SilentFigures {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            // Every slot ends at the cancel (a connect within its bound).
            if tokio::task::spawn_blocking(move || thread.join()).await.is_err() {
                tracing::warn!("the attacker's thread panicked");
            }
        }
        let s = &self.stats;
        let lifetimes = s.lifetimes.lock().unwrap_or_else(|p| p.into_inner());
        let lifetime = |us: u64| (!lifetimes.is_empty()).then(|| round(us as f64 / 1000.0, 10.0));
        SilentFigures {
            target: config.silent,
            source_addresses: config.source_addresses,
            ramp_seconds: ramp.map(|d| round(d.as_secs_f64(), 1000.0)),
            held_at_start,
            held_min,
            held_mean,
            opened: s.opened.load(Ordering::Acquire),
            reopened: s.reopened.load(Ordering::Acquire),
            closed_by_tetherd: s.closed.load(Ordering::Acquire),
            open_failures: s.failures.load(Ordering::Acquire),
            first_open_error: self.first_error(),
            lifetime_p50_ms: lifetime(lifetimes.value_at_quantile(0.5)),
            lifetime_max_ms: lifetime(lifetimes.max()),
        }
    }
}

impl Drop for SilentSockets {
    fn drop(&mut self) {
        // A scenario dropped midway (an error, Ctrl-C) still ends the thread.
        self.stop.cancel();
    }
}

/// One slot: a silent socket, opened again whenever the server closes it,
/// until `stop`.
async fn hold_slot(
    addr: SocketAddr,
    source: Option<IpAddr>,
    stats: Arc<SilentStats>,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let mut opened_before = false;
    loop {
        let opened = {
            let Ok(_permit) = permits.acquire().await else { return };
            tokio::select! {
                () = stop.cancelled() => return,
                opened = open_silent(addr, source) => opened,
            }
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(error) => {
                stats.failed(&error);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(OPEN_BACKOFF) => continue,
                }
            }
        };
        stats.opened.fetch_add(1, Ordering::Relaxed);
        if opened_before {
            stats.reopened.fetch_add(1, Ordering::Relaxed);
        }
        opened_before = true;
        stats.set_held(true);
        let since = Instant::now();
        let closed = tokio::select! {
            () = stop.cancelled() => false,
            () = until_closed(&mut stream) => true,
        };
        stats.set_held(false);
        if !closed {
            return;
        }
        stats.closed.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
        stats.lifetimes.lock().unwrap_or_else(|p| p.into_inner()).saturating_record(micros);
    }
}

/// A TCP connection to `addr` from `source` (port chosen by the kernel),
/// within [`OPEN_TIMEOUT`].
async fn open_silent(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    tokio::time::timeout(OPEN_TIMEOUT, socket.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("no connection within {OPEN_TIMEOUT:?}")))?
}

/// Returns when the server closed `stream` (end of stream or an error).
/// Whatever it sends meanwhile is read and ignored: the socket stays silent.
async fn until_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    while let Ok(1..) = stream.read(&mut buf).await {}
}

// ------------------------------------------------------------------ tables

impl fmt::Display for SilentSocketsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "silent-sockets: {} mTLS vehicles applying, {} writes/s open loop for {} s per phase, wait {}, {} client \
             channels (mTLS service certificate); attacked: {} silent sockets held from {} source addresses, {} new \
             mTLS vehicles per phase ({} cores)",
            self.vehicles,
            self.rate,
            self.duration_seconds,
            self.wait,
            self.channels,
            self.silent_sockets,
            self.silent.source_addresses,
            self.new_vehicles,
            self.cores
        )?;
        let (q, a) = (&self.quiet, &self.attacked);
        writeln!(f, "  {:<32} {:>16} {:>16}", "metric", "quiet", "attacked")?;
        let mut row = |name: &str, cell: &dyn Fn(&PhaseFigures) -> String| {
            writeln!(f, "  {name:<32} {:>16} {:>16}", cell(q), cell(a))
        };
        row("writes/s answered", &|p| format!("{:.0}", p.load.writes_per_second))?;
        row("write p50", &|p| ms(p.load.percentiles.p50_us))?;
        row("write p99", &|p| ms(p.load.percentiles.p99_us))?;
        row("write p99.9", &|p| ms(p.load.percentiles.p999_us))?;
        row("write max", &|p| ms(p.load.percentiles.max_us))?;
        row("writes failed / short", &|p| format!("{} / {}", p.load.errors, p.load.not_reached))?;
        row("new vehicles connected", &|p| format!("{}/{}", p.new_vehicles.connected, p.new_vehicles.attempted))?;
        row("new vehicle to Welcome p50", &|p| format!("{:.2} ms", p.new_vehicles.welcome_p50_ms))?;
        row("new vehicle to Welcome p99", &|p| format!("{:.2} ms", p.new_vehicles.welcome_p99_ms))?;
        row("new vehicle to Welcome max", &|p| format!("{:.2} ms", p.new_vehicles.welcome_max_ms))?;
        row("tetherd CPU, phase", &|p| format!("{:.0}%", p.server_cpu.percent))?;
        row("tetherd CPU, writes", &|p| format!("{:.0}%", p.server_cpu_writes.percent))?;
        row("bench CPU, phase", &|p| format!("{:.0}%", p.bench_cpu.percent))?;
        row("tetherd RSS at the end", &|p| format!("{} KiB", p.server_rss_kib))?;
        row("listen-queue overflows", &|p| p.listen_overflows.map_or_else(|| "?".into(), |n| n.to_string()))?;
        row("tetherd silent / evicted", &|p| format!("{} / {}", p.tetherd_silent, p.tetherd_evicted))?;
        let verdict = if self.p99_met { "met" } else { "NOT met" };
        writeln!(f, "  p99 attacked / quiet: {:.2} (target <= {:.1}: {verdict})", self.p99_ratio, self.p99_target)?;
        let s = &self.silent;
        let ramp = s.ramp_seconds.map_or_else(|| "never all at once".to_string(), |r| format!("all open in {r:.2} s"));
        writeln!(
            f,
            "  silent sockets: {} wanted, {ramp}; {} held when the new vehicles began, min {} / mean {:.0} until the \
             writes ended",
            s.target, s.held_at_start, s.held_min, s.held_mean
        )?;
        let lifetime = match (s.lifetime_p50_ms, s.lifetime_max_ms) {
            (Some(p50), Some(max)) => {
                format!("open {:.2} s median, {:.2} s max before tetherd closed them", p50 / 1e3, max / 1e3)
            }
            _ => "none closed by tetherd".to_string(),
        };
        writeln!(
            f,
            "  silent sockets: {} opened, {} re-opened after tetherd closed them ({} closed; {lifetime}); {} opens \
             failed{}",
            s.opened,
            s.reopened,
            s.closed_by_tetherd,
            s.open_failures,
            s.first_open_error.as_deref().map_or_else(String::new, |e| format!(" (first: {e})"))
        )?;
        writeln!(
            f,
            "  tetherd /metrics at the end: handshake failures silent {}, evicted {}",
            self.tetherd_silent_total, self.tetherd_evicted_total
        )?;
        for (name, p) in [("quiet", q), ("attacked", a)] {
            writeln!(
                f,
                "  {name:<9} tetherd CPU {} (writes {}); bench {}",
                p.server_cpu.summary(),
                p.server_cpu_writes.summary(),
                p.bench_cpu.summary()
            )?;
        }
        for (name, p) in [("quiet", q), ("attacked", a)] {
            if let Some(error) = p.new_vehicles.first_error.as_deref().or(p.load.first_error.as_deref()) {
                writeln!(f, "  {name:<9} first failure: {error}")?;
            }
        }
        write!(
            f,
            "  vehicles connected in {:.2} s; open files needed {} of {}",
            self.connect_seconds,
            self.open_files_needed,
            self.open_files_limit.map_or_else(|| "?".to_string(), |l| l.to_string())
        )
    }
}
