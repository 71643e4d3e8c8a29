//! The `idle-memory` scenario: what an idle vehicle costs tetherd. Measures
//! the server's resident memory before any vehicle, then with N lean
//! vehicles connected and idle, each on a TCP connection of its own (so the
//! figure is per connection, not shared by multiplexing).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tether_sdk::Client;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Tetherd;
use super::lean_vehicle::LeanVehicle;

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
}

/// What the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct IdleMemoryReport {
    /// Always `"idle-memory"`.
    pub scenario: &'static str,
    /// Vehicles connected.
    pub vehicles: usize,
    /// tetherd's RSS before any vehicle, KiB.
    pub rss_before_kib: u64,
    /// tetherd's RSS with every vehicle connected and idle, KiB.
    pub rss_after_kib: u64,
    /// The growth, KiB.
    pub rss_delta_kib: u64,
    /// The growth per vehicle, KiB.
    pub per_vehicle_kib: f64,
    /// Live sessions tetherd reported.
    pub sessions: u64,
    /// Open TCP connections tetherd reported (the vehicles' and the stats client's).
    pub connections: u64,
    /// Time to connect every vehicle, seconds.
    pub connect_seconds: f64,
    /// Connect attempts that failed and were retried.
    pub retries: usize,
    /// The benchmark's own RSS with every vehicle connected (client side), KiB.
    pub bench_rss_kib: u64,
    /// Cores of the machine (server and clients share them).
    pub cores: usize,
}

/// Runs the scenario against `server`.
pub async fn run(server: &Tetherd, config: &IdleMemoryConfig) -> anyhow::Result<IdleMemoryReport> {
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
    let url = server.url();
    let client = Client::connect(url.clone()).await.context("cannot connect the stats client")?;
    let baseline = client.server_stats().await?;
    anyhow::ensure!(baseline.sessions == 0, "tetherd already holds {} sessions", baseline.sessions);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = server.rss_kib()?;
    tracing::info!(rss_before_kib, vehicles = config.vehicles, "connecting vehicles");

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let failed = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    for index in 0..config.vehicles {
        let local_address = source_address(index, config.source_addresses);
        let (url, stop, permits) = (url.clone(), stop.clone(), permits.clone());
        let (failed, retries) = (failed.clone(), retries.clone());
        tasks.spawn(async move {
            let vehicle = {
                let Ok(_permit) = permits.acquire_owned().await else { return };
                let mut attempt = 1;
                loop {
                    let id = format!("bench-idle-{index:05}");
                    match LeanVehicle::connect(&url, local_address, id).await {
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
            tracing::trace!(index, session_id = vehicle.session_id(), "connected");
            vehicle.hold(stop).await;
        });
    }
    tasks.close();

    let outcome = wait_for_sessions(&client, config.vehicles as u64, &failed, started).await;
    let connect_seconds = started.elapsed().as_secs_f64();
    let report = match outcome {
        Ok(()) => {
            tracing::info!(connect_seconds, settle = ?config.settle, "all connected; settling");
            tokio::time::sleep(config.settle).await;
            let rss_after_kib = server.rss_kib()?;
            let stats = client.server_stats().await?;
            let rss_delta_kib = rss_after_kib.saturating_sub(rss_before_kib);
            Ok(IdleMemoryReport {
                scenario: "idle-memory",
                vehicles: config.vehicles,
                rss_before_kib,
                rss_after_kib,
                rss_delta_kib,
                per_vehicle_kib: round(rss_delta_kib as f64 / config.vehicles as f64, 10.0),
                sessions: stats.sessions,
                connections: stats.connections,
                connect_seconds: round(connect_seconds, 100.0),
                retries: retries.load(Ordering::Relaxed),
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

/// `x` rounded to `1 / per_unit` (10.0: one decimal).
fn round(x: f64, per_unit: f64) -> f64 {
    (x * per_unit).round() / per_unit
}

/// The source address of the `index`-th vehicle: `None` (the kernel's
/// choice) for one address, else 127.0.0.1 to 127.0.0.`count` in turn.
/// Each source address has its own ~28,000 ephemeral ports to tetherd.
fn source_address(index: usize, count: u8) -> Option<IpAddr> {
    if count <= 1 {
        return None;
    }
    let host = 1 + (index % usize::from(count)) as u8;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)))
}

/// Polls tetherd until it holds `expected` sessions; fails when vehicles gave
/// up, or when progress stops for long.
async fn wait_for_sessions(
    client: &Client,
    expected: u64,
    failed: &AtomicUsize,
    started: Instant,
) -> anyhow::Result<()> {
    const POLL: Duration = Duration::from_millis(250);
    const STUCK: Duration = Duration::from_secs(60);
    let mut last = (0, Instant::now());
    let mut logged = Instant::now();
    loop {
        let sessions = client.server_stats().await?.sessions;
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
        writeln!(f, "idle-memory: {} idle vehicles, one TCP connection each ({} cores)", self.vehicles, self.cores)?;
        writeln!(f, "  {:<28} {:>12}", "metric", "value")?;
        writeln!(f, "  {:<28} {:>8} KiB", "tetherd RSS before", self.rss_before_kib)?;
        writeln!(f, "  {:<28} {:>8} KiB", "tetherd RSS after", self.rss_after_kib)?;
        writeln!(f, "  {:<28} {:>8} KiB", "growth", self.rss_delta_kib)?;
        writeln!(f, "  {:<28} {:>8.1} KiB", "per idle vehicle", self.per_vehicle_kib)?;
        writeln!(f, "  {:<28} {:>12}", "sessions / connections", format!("{} / {}", self.sessions, self.connections))?;
        writeln!(f, "  {:<28} {:>10.2} s", "connect time", self.connect_seconds)?;
        writeln!(f, "  {:<28} {:>12}", "connect retries", self.retries)?;
        write!(f, "  {:<28} {:>8} KiB", "bench RSS (client side)", self.bench_rss_kib)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_over_source_addresses() {
        assert_eq!(source_address(5, 1), None);
        assert_eq!(source_address(0, 4), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))));
        assert_eq!(source_address(5, 4), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
        assert_eq!(source_address(255, 255), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))));
    }
}
