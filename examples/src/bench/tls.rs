//! The `tls` scenario: what an idle vehicle costs, plaintext and with mutual
//! TLS, against raw tonic, in one run. Generates a certificate per vehicle
//! (timed on its own), then runs [`idle_memory`] four times, each on a fresh
//! server: the raw tonic baseline's bidi echo and tetherd in plaintext, then
//! both again over mTLS with each vehicle presenting its own certificate. It
//! reports every run, tetherd's memory per vehicle as a ratio to the
//! baseline's (issue 6, target 7) and to its own plaintext figure, and the mTLS
//! handshake rate (TCP connect + TLS handshake + Hello answered with Welcome,
//! for all N vehicles).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use super::baseline::{Baseline, BaselineOptions};
use super::idle_memory::{self, IdleMemoryConfig, IdleMemoryReport, Security, overflows, sessions_connections};
use super::load::round;
use super::pki::{self, BenchPki, ServerFiles};
use super::{Tetherd, TetherdOptions};

/// Connections tetherd may hold beyond the vehicles (the stats client, slack).
const EXTRA_CONNECTIONS: usize = 100;

/// The scenario's parameters.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Vehicles to connect in each run.
    pub vehicles: usize,
    /// Connects in flight at once.
    pub concurrency: usize,
    /// Source addresses to spread connections over (127.0.0.1, .2, ...).
    pub source_addresses: u8,
    /// How long to let the server settle once all are connected.
    pub settle: Duration,
    /// How to run the raw tonic baseline.
    pub baseline: BaselineOptions,
}

/// What the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct TlsReport {
    /// Always `"tls"`.
    pub scenario: &'static str,
    /// Vehicles connected in each run.
    pub vehicles: usize,
    /// Certificates issued: one per vehicle, the server's and the stats
    /// client's (besides the CA's own).
    pub certificates: usize,
    /// Time to generate them, seconds (before any connection; not part of
    /// any handshake figure).
    pub cert_generation_seconds: f64,
    /// Threads that generated them.
    pub cert_generation_threads: usize,
    /// mTLS: vehicles per second from the first connect to the last Welcome.
    pub handshakes_per_second: f64,
    /// Plaintext: the same rate, for comparison.
    pub plaintext_sessions_per_second: f64,
    /// tetherd's memory per idle vehicle, plaintext, KiB.
    pub plaintext_kib_per_vehicle: f64,
    /// tetherd's memory per idle vehicle, mTLS, KiB.
    pub mtls_kib_per_vehicle: f64,
    /// mTLS over plaintext memory per vehicle.
    pub memory_ratio: f64,
    /// The raw tonic baseline's memory per idle stream (one per connection),
    /// plaintext, KiB.
    pub baseline_plaintext_kib_per_vehicle: f64,
    /// The same over mTLS, KiB.
    pub baseline_mtls_kib_per_vehicle: f64,
    /// tetherd's memory per vehicle over the baseline's, plaintext.
    pub plaintext_ratio_to_baseline: f64,
    /// tetherd's memory per vehicle over the baseline's, mTLS.
    pub mtls_ratio_to_baseline: f64,
    /// The plaintext run, in full.
    pub plaintext: IdleMemoryReport,
    /// The mTLS run, in full.
    pub mtls: IdleMemoryReport,
    /// The baseline's plaintext run, in full.
    pub baseline_plaintext: IdleMemoryReport,
    /// The baseline's mTLS run, in full.
    pub baseline_mtls: IdleMemoryReport,
    /// Cores of the machine (server and clients share them).
    pub cores: usize,
}

/// Runs the scenario, starting a tetherd per run from `options`.
pub async fn run(options: &TetherdOptions, config: &TlsConfig) -> anyhow::Result<TlsReport> {
    anyhow::ensure!(config.vehicles > 0, "connect at least one vehicle");
    let threads = super::cores();
    let ids: Vec<String> = (0..config.vehicles).map(idle_memory::vehicle_id).collect();
    tracing::info!(vehicles = config.vehicles, threads, "generating certificates");
    let pki = tokio::task::spawn_blocking(move || BenchPki::generate(&ids, threads))
        .await
        .context("the certificate generator panicked")??;
    let generation = pki.generation;
    tracing::info!(?generation, "certificates generated");
    let certs_dir = tempfile::Builder::new().prefix("tether-bench-certs-").tempdir()?;
    let files = pki.write_server_files(certs_dir.path())?;
    let pki = Arc::new(pki);

    let max_connections = (config.vehicles + EXTRA_CONNECTIONS).to_string();
    let idle = |security| IdleMemoryConfig {
        vehicles: config.vehicles,
        concurrency: config.concurrency,
        source_addresses: config.source_addresses,
        settle: config.settle,
        security,
    };

    let baseline_plaintext =
        measure_baseline(&config.baseline, None, &idle(Security::Plaintext)).await.context("baseline plaintext run")?;
    let plain_options = with_args(options, ["--max-connections", &max_connections]);
    let plaintext = measure(&plain_options, &idle(Security::Plaintext)).await.context("plaintext run")?;

    let baseline_mtls = measure_baseline(&config.baseline, Some(&files), &idle(Security::Mtls(pki.clone())))
        .await
        .context("baseline mTLS run")?;

    let path = |p: &std::path::Path| p.display().to_string();
    let mtls_options = with_args(
        options,
        [
            "--max-connections",
            &max_connections,
            "--tls-cert",
            &path(&files.cert),
            "--tls-key",
            &path(&files.key),
            "--client-ca",
            &path(&files.client_ca),
            "--service",
            &format!("{}=admin:read", pki::STATS_SERVICE),
        ],
    );
    let mtls = measure(&mtls_options, &idle(Security::Mtls(pki.clone()))).await.context("mTLS run")?;

    Ok(TlsReport {
        scenario: "tls",
        vehicles: config.vehicles,
        certificates: pki.vehicles.len() + 2,
        cert_generation_seconds: round(generation.as_secs_f64(), 1000.0),
        cert_generation_threads: threads,
        handshakes_per_second: mtls.sessions_per_second,
        plaintext_sessions_per_second: plaintext.sessions_per_second,
        plaintext_kib_per_vehicle: plaintext.per_vehicle_kib,
        mtls_kib_per_vehicle: mtls.per_vehicle_kib,
        memory_ratio: ratio(&mtls, &plaintext),
        baseline_plaintext_kib_per_vehicle: baseline_plaintext.per_vehicle_kib,
        baseline_mtls_kib_per_vehicle: baseline_mtls.per_vehicle_kib,
        plaintext_ratio_to_baseline: ratio(&plaintext, &baseline_plaintext),
        mtls_ratio_to_baseline: ratio(&mtls, &baseline_mtls),
        plaintext,
        mtls,
        baseline_plaintext,
        baseline_mtls,
        cores: super::cores(),
    })
}

/// `a`'s memory growth over `b`'s (same vehicle count), to two decimals.
fn ratio(a: &IdleMemoryReport, b: &IdleMemoryReport) -> f64 {
    round(a.rss_delta_kib as f64 / b.rss_delta_kib.max(1) as f64, 100.0)
}

/// `options` with `args` appended.
fn with_args<'a>(options: &TetherdOptions, args: impl IntoIterator<Item = &'a str>) -> TetherdOptions {
    let mut options = options.clone();
    options.args.extend(args.into_iter().map(str::to_string));
    options
}

/// One idle-memory run on a fresh tetherd, which is stopped afterwards
/// whatever the outcome.
async fn measure(options: &TetherdOptions, config: &IdleMemoryConfig) -> anyhow::Result<IdleMemoryReport> {
    let server = Tetherd::start(options).await?;
    let outcome = idle_memory::run(&server, config).await;
    server.stop().await?;
    let report = outcome?;
    tracing::info!(
        security = report.security,
        per_vehicle_kib = report.per_vehicle_kib,
        sessions_per_second = report.sessions_per_second,
        "run done"
    );
    Ok(report)
}

/// One idle-memory run on a fresh baseline server (mTLS with `tls`), which
/// is stopped afterwards whatever the outcome.
async fn measure_baseline(
    options: &BaselineOptions,
    tls: Option<&ServerFiles>,
    config: &IdleMemoryConfig,
) -> anyhow::Result<IdleMemoryReport> {
    let server = match tls {
        None => Baseline::start(options).await?,
        Some(files) => Baseline::start_tls(options, files).await?,
    };
    if !server.is_child() {
        tracing::warn!("the baseline runs in this process: its memory figure includes the vehicles' side");
    }
    let outcome = idle_memory::run_baseline(&server, config).await;
    server.stop().await?;
    let report = outcome?;
    tracing::info!(security = report.security, per_vehicle_kib = report.per_vehicle_kib, "baseline run done");
    Ok(report)
}

impl fmt::Display for TlsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let runs = [&self.plaintext, &self.baseline_plaintext, &self.mtls, &self.baseline_mtls];
        writeln!(
            f,
            "tls: {} idle vehicles, one TCP connection each; tetherd and the raw tonic baseline, plaintext then mTLS, \
             each on a fresh server ({} cores)",
            self.vehicles, self.cores
        )?;
        writeln!(
            f,
            "  certificates: {} generated in {:.2} s on {} threads (not part of any figure below)",
            self.certificates, self.cert_generation_seconds, self.cert_generation_threads
        )?;
        writeln!(
            f,
            "  {:<26} {:>14} {:>14} {:>14} {:>14}",
            "metric", "plain tetherd", "plain tonic", "mTLS tetherd", "mTLS tonic"
        )?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, cell: &dyn Fn(&IdleMemoryReport) -> String| {
            let [a, b, c, d] = runs.map(cell);
            writeln!(f, "  {name:<26} {a:>14} {b:>14} {c:>14} {d:>14}")
        };
        row(f, "server RSS before", &|r| format!("{} KiB", r.rss_before_kib))?;
        row(f, "server RSS after", &|r| format!("{} KiB", r.rss_after_kib))?;
        row(f, "per idle vehicle", &|r| format!("{:.1} KiB", r.per_vehicle_kib))?;
        row(f, "sessions / connections", &sessions_connections)?;
        row(f, "all connected in", &|r| format!("{:.2} s", r.connect_seconds))?;
        row(f, "sessions per second", &|r| format!("{:.0}", r.sessions_per_second))?;
        row(f, "connect p50", &|r| format!("{:.2} ms", r.connect_p50_ms))?;
        row(f, "connect p99", &|r| format!("{:.2} ms", r.connect_p99_ms))?;
        row(f, "to Welcome p50", &|r| format!("{:.2} ms", r.session_p50_ms))?;
        row(f, "to Welcome p99", &|r| format!("{:.2} ms", r.session_p99_ms))?;
        row(f, "to Welcome max", &|r| format!("{:.1} ms", r.session_max_ms))?;
        row(f, "connect retries", &|r| r.retries.to_string())?;
        row(f, "listen-queue overflows", &|r| overflows(r.listen_overflows))?;
        row(f, "bench RSS (client side)", &|r| format!("{} KiB", r.bench_rss_kib))?;
        writeln!(f, "  mTLS handshakes per second (connect + TLS + Welcome): {:.0}", self.handshakes_per_second)?;
        writeln!(
            f,
            "  memory per vehicle, tetherd / raw tonic: {:.2} plaintext, {:.2} mTLS",
            self.plaintext_ratio_to_baseline, self.mtls_ratio_to_baseline
        )?;
        write!(f, "  memory per vehicle, mTLS / plaintext (tetherd): {:.2}", self.memory_ratio)
    }
}
