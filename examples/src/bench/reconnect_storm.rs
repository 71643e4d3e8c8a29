//! The `reconnect-storm` scenario: N real SDK agents (the fleet simulator's,
//! one connection each, over mTLS by default) hold sessions to a tetherd; the
//! node is killed (or drained) and started again on the same port and data;
//! the app writes a new desired value for every vehicle as soon as the node
//! answers. Measured from the stop: when every vehicle has a session again,
//! and when every vehicle has applied its new value (resynced). The agents'
//! own reconnect backoff (jittered, exponential) is part of the figure.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use serde::Serialize;
use tether_sdk::{Client, Patch, Tls, Window};
use tokio::time::Instant;

use super::pki::{self, BenchPki};
use super::{Restart, Tetherd, TetherdOptions};
use crate::faults::Faults;
use crate::sim::{Fleet, FleetConfig, FleetTls, vehicle_id};

/// How long the fleet may take to connect, and to come back.
const BOUND: Duration = Duration::from_secs(180);
/// How often progress is polled: reading every agent's session is a walk
/// over 18,000 agents' state (5% of the simulator's CPU in a storm at 20 ms),
/// and the times measured are tens of seconds.
const POLL: Duration = Duration::from_millis(100);
/// How often progress is logged while waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Writes in flight while the app re-sets every vehicle.
const WRITES_IN_FLIGHT: usize = 64;

/// The scenario's parameters.
#[derive(Debug, Clone)]
pub struct ReconnectStormConfig {
    /// Vehicles (SDK agents, one connection each).
    pub vehicles: usize,
    /// Mutual TLS (each agent presents its own certificate), else plaintext.
    pub tls: bool,
    /// How the node is stopped.
    pub restart: Restart,
    /// The agents' connections leave from 127.0.0.1 .. 127.0.0.N.
    pub source_addresses: u8,
}

/// What the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct ReconnectStormReport {
    /// Always `"reconnect-storm"`.
    pub scenario: &'static str,
    /// Vehicles.
    pub vehicles: usize,
    /// `"mtls"` or `"plaintext"`.
    pub security: &'static str,
    /// How the node was stopped.
    pub restart: Restart,
    /// The first connect of the whole fleet, seconds (before the restart).
    pub initial_connect_seconds: f64,
    /// From the stop until the new process listened, seconds.
    pub down_seconds: f64,
    /// From the stop until every vehicle had a session again, seconds.
    pub reconnected_seconds: f64,
    /// From the stop until every vehicle applied its new value, seconds.
    pub resynced_seconds: f64,
    /// The app's writes (one per vehicle), and how long they took from the
    /// stop, seconds.
    pub writes: usize,
    /// From the stop until the last write was stored, seconds.
    pub writes_done_seconds: f64,
    /// Sessions the agents opened after the restart (≥ vehicles: a session
    /// that failed early counts again).
    pub sessions_after_restart: u64,
    /// Failed connection attempts and lost sessions the agents saw after the
    /// restart.
    pub disconnects_after_restart: u64,
    /// tetherd's RSS with every vehicle back, KiB.
    pub server_rss_kib: u64,
    /// Cores of the machine (server, agents and app share them).
    pub cores: usize,
}

/// Runs the scenario with a tetherd started from `options`.
pub async fn run(options: &TetherdOptions, config: &ReconnectStormConfig) -> anyhow::Result<ReconnectStormReport> {
    anyhow::ensure!(config.vehicles > 0, "connect at least one vehicle");
    let certs = tempfile::Builder::new().prefix("tether-bench-storm-").tempdir()?;
    let mut options = options.clone();
    options.args.extend(["--max-connections".into(), (config.vehicles + 100).to_string()]);
    let (fleet_tls, app_tls) = if config.tls {
        let ids: Vec<String> = (0..config.vehicles).map(vehicle_id).collect();
        let threads = super::cores();
        let pki = tokio::task::spawn_blocking(move || BenchPki::generate(&ids, threads))
            .await
            .context("the certificate generator panicked")??;
        tracing::info!(generation = ?pki.generation, "certificates generated");
        let files = pki.write_server_files(certs.path())?;
        for (index, issued) in pki.vehicles.iter().enumerate() {
            let id = vehicle_id(index);
            std::fs::write(certs.path().join(format!("{id}.pem")), &issued.cert_pem)?;
            std::fs::write(certs.path().join(format!("{id}.key")), &issued.key_pem)?;
        }
        options.args.extend(files.tetherd_args());
        let fleet_tls = FleetTls {
            ca: files.client_ca.clone(),
            cert_dir: certs.path().to_path_buf(),
            domain: Some(pki::SERVER_NAME.into()),
        };
        let app_tls = Tls::new(&pki.ca_pem).identity(&pki.stats.cert_pem, &pki.stats.key_pem).domain(pki::SERVER_NAME);
        (Some(fleet_tls), Some(app_tls))
    } else {
        (None, None)
    };

    let server = Tetherd::start(&options).await?;
    let scheme = if config.tls { "https" } else { "http" };
    let url = format!("{scheme}://{}", server.addr());
    let fleet_config = FleetConfig {
        server: url.clone(),
        vehicles: config.vehicles,
        per_connection: 1,
        apply_min: Duration::ZERO,
        apply_max: Duration::ZERO,
        unparked_share: 0.0,
        faults: Faults::NONE,
        state_dir: None,
        tls: fleet_tls,
        source_addresses: config.source_addresses,
    };
    let started = Instant::now();
    let fleet = Fleet::start(&fleet_config).await?;
    let outcome = storm(server, &fleet, &url, app_tls.as_ref(), config, started).await;
    // Stop the agents whatever happened (the server went with `storm`).
    fleet.shutdown().await;
    outcome
}

async fn storm(
    server: Tetherd,
    fleet: &Fleet,
    url: &str,
    app_tls: Option<&Tls>,
    config: &ReconnectStormConfig,
    started: Instant,
) -> anyhow::Result<ReconnectStormReport> {
    let n = config.vehicles;
    until("the fleet connects", started, fleet, || fleet.status().connected == n).await?;
    let initial_connect = started.elapsed();
    tracing::info!(vehicles = n, seconds = initial_connect.as_secs_f64(), "fleet connected; restarting tetherd");
    let before = fleet.status();

    let stopped = Instant::now();
    let (server, down) = server.restart(config.restart).await?;
    tracing::info!(down = ?down, "tetherd listens again");

    // The app comes back too, and re-sets every vehicle: stored at once,
    // delivered when the vehicle is back. The fleet is watched meanwhile, so
    // the vehicles' return is timed apart from the writes.
    let writes = async {
        let client = match app_tls {
            Some(tls) => Client::connect_tls(url, tls).await,
            None => Client::connect(url).await,
        }?;
        let client = Arc::new(client.with_debounce(Duration::ZERO));
        let written = futures::stream::iter(0..n)
            .map(|index| {
                let client = client.clone();
                async move {
                    client
                        .set_desired(vehicle_id(index), Patch::new().window(Window::FrontLeft, 50))
                        .timeout(Duration::from_secs(30))
                        .await
                        .with_context(|| format!("the write to {} failed", vehicle_id(index)))
                }
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .fold(Ok::<usize, anyhow::Error>(0), |count, result| async move { Ok(count? + result.map(|_| 1)?) })
            .await?;
        let done = stopped.elapsed();
        tracing::info!(written, seconds = done.as_secs_f64(), "every vehicle re-set");
        anyhow::Ok((written, done))
    };
    let watch = async {
        let mut reconnected = None;
        let mut logged = Instant::now();
        loop {
            let status = fleet.status();
            if reconnected.is_none() && status.connected == n && status.sessions >= before.sessions + n as u64 {
                reconnected = Some(stopped.elapsed());
                tracing::info!(seconds = stopped.elapsed().as_secs_f64(), "every vehicle has a session again");
            }
            if let Some(reconnected) = reconnected.filter(|_| status.applied >= before.applied + n as u64) {
                return anyhow::Ok((reconnected, stopped.elapsed()));
            }
            if logged.elapsed() >= PROGRESS_EVERY {
                logged = Instant::now();
                tracing::info!(%status, applied = status.applied - before.applied, "resyncing");
            }
            if stopped.elapsed() > BOUND {
                bail!(
                    "not resynced within {BOUND:?}: {} of {n} connected, {} of {n} applied",
                    status.connected,
                    status.applied - before.applied
                );
            }
            tokio::time::sleep(POLL).await;
        }
    };
    let (writes, watched) = tokio::join!(writes, watch);
    let ((written, writes_done), (reconnected, resynced)) = (writes?, watched?);
    let after = fleet.status();
    let server_rss_kib = server.rss_kib()?;
    server.stop().await?;
    Ok(ReconnectStormReport {
        scenario: "reconnect-storm",
        vehicles: n,
        security: if config.tls { "mtls" } else { "plaintext" },
        restart: config.restart,
        initial_connect_seconds: secs(initial_connect),
        down_seconds: secs(down),
        reconnected_seconds: secs(reconnected),
        resynced_seconds: secs(resynced),
        writes: written,
        writes_done_seconds: secs(writes_done),
        sessions_after_restart: after.sessions - before.sessions,
        disconnects_after_restart: after.disconnects - before.disconnects,
        server_rss_kib,
        cores: super::cores(),
    })
}

/// Polls `done` until it holds, at most [`BOUND`] from `since`, logging the
/// fleet's progress every few seconds.
async fn until(what: &str, since: Instant, fleet: &Fleet, done: impl Fn() -> bool) -> anyhow::Result<()> {
    let mut logged = Instant::now();
    while !done() {
        if since.elapsed() > BOUND {
            bail!("{what}: not within {BOUND:?}; {}", fleet.status());
        }
        if logged.elapsed() >= PROGRESS_EVERY {
            logged = Instant::now();
            tracing::info!(status = %fleet.status(), "{what}");
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

impl fmt::Display for ReconnectStormReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "reconnect-storm: {} SDK agents ({}), one connection each; tetherd restarted by {:?} ({} cores)",
            self.vehicles, self.security, self.restart, self.cores
        )?;
        writeln!(f, "  first connect of the fleet        {:>9.3} s", self.initial_connect_seconds)?;
        writeln!(f, "  node away (stop -> listening)      {:>9.3} s", self.down_seconds)?;
        writeln!(f, "  every vehicle has a session again  {:>9.3} s after the stop", self.reconnected_seconds)?;
        writeln!(f, "  every vehicle re-set by the app    {:>9.3} s after the stop", self.writes_done_seconds)?;
        writeln!(f, "  every vehicle applied (resynced)   {:>9.3} s after the stop", self.resynced_seconds)?;
        writeln!(
            f,
            "  sessions / disconnects after       {} / {}",
            self.sessions_after_restart, self.disconnects_after_restart
        )?;
        write!(f, "  tetherd RSS, all back              {} KiB", self.server_rss_kib)
    }
}
