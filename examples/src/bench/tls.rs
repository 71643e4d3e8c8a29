//! The `tls` scenario: what mutual TLS costs, in one run. Generates a
//! certificate per vehicle (timed on its own), then runs [`idle_memory`]
//! twice on fresh tetherds — plaintext, then mTLS with each vehicle
//! presenting its own certificate — and reports both, their memory ratio and
//! the mTLS handshake rate (TCP connect + TLS handshake + Hello answered with
//! Welcome, for all N vehicles).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use super::idle_memory::{self, IdleMemoryConfig, IdleMemoryReport, Security, overflows, round};
use super::pki::{self, BenchPki};
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
    /// The plaintext run, in full.
    pub plaintext: IdleMemoryReport,
    /// The mTLS run, in full.
    pub mtls: IdleMemoryReport,
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

    let plain_options = with_args(options, ["--max-connections", &max_connections]);
    let plaintext = measure(&plain_options, &idle(Security::Plaintext)).await.context("plaintext run")?;

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
        memory_ratio: round(mtls.rss_delta_kib as f64 / plaintext.rss_delta_kib.max(1) as f64, 100.0),
        plaintext,
        mtls,
        cores: super::cores(),
    })
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

impl fmt::Display for TlsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, m) = (&self.plaintext, &self.mtls);
        writeln!(
            f,
            "tls: {} idle vehicles, one TCP connection each, plaintext then mTLS on fresh tetherds ({} cores)",
            self.vehicles, self.cores
        )?;
        writeln!(
            f,
            "  certificates: {} generated in {:.2} s on {} threads (not part of any figure below)",
            self.certificates, self.cert_generation_seconds, self.cert_generation_threads
        )?;
        writeln!(f, "  {:<30} {:>14} {:>14}", "metric", "plaintext", "mTLS")?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, a: String, b: String| {
            writeln!(f, "  {:<30} {:>14} {:>14}", name, a, b)
        };
        row(f, "tetherd RSS before", format!("{} KiB", p.rss_before_kib), format!("{} KiB", m.rss_before_kib))?;
        row(f, "tetherd RSS after", format!("{} KiB", p.rss_after_kib), format!("{} KiB", m.rss_after_kib))?;
        row(f, "per idle vehicle", format!("{:.1} KiB", p.per_vehicle_kib), format!("{:.1} KiB", m.per_vehicle_kib))?;
        row(f, "sessions / connections", format!("{} / {}", p.sessions, p.connections), {
            format!("{} / {}", m.sessions, m.connections)
        })?;
        row(f, "all connected in", format!("{:.2} s", p.connect_seconds), format!("{:.2} s", m.connect_seconds))?;
        row(
            f,
            "sessions per second",
            format!("{:.0}", p.sessions_per_second),
            format!("{:.0}", m.sessions_per_second),
        )?;
        row(f, "connect p50", format!("{:.2} ms", p.connect_p50_ms), format!("{:.2} ms", m.connect_p50_ms))?;
        row(f, "connect p99", format!("{:.2} ms", p.connect_p99_ms), format!("{:.2} ms", m.connect_p99_ms))?;
        row(f, "to Welcome p50", format!("{:.2} ms", p.session_p50_ms), format!("{:.2} ms", m.session_p50_ms))?;
        row(f, "to Welcome p99", format!("{:.2} ms", p.session_p99_ms), format!("{:.2} ms", m.session_p99_ms))?;
        row(f, "to Welcome max", format!("{:.1} ms", p.session_max_ms), format!("{:.1} ms", m.session_max_ms))?;
        row(f, "connect retries", p.retries.to_string(), m.retries.to_string())?;
        row(f, "listen-queue overflows", overflows(p.listen_overflows), overflows(m.listen_overflows))?;
        row(f, "bench RSS (client side)", format!("{} KiB", p.bench_rss_kib), format!("{} KiB", m.bench_rss_kib))?;
        writeln!(f, "  mTLS handshakes per second (connect + TLS + Welcome): {:.0}", self.handshakes_per_second)?;
        write!(f, "  memory per vehicle, mTLS / plaintext: {:.2}", self.memory_ratio)
    }
}
