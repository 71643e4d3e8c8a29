//! [`ApplyingFleet`]: N lean vehicles that apply every desired state at once
//! ([`LeanVehicle::hold_applying`]), each on a TCP connection of its own or
//! many per connection (one HTTP/2 stream each), connections spread over
//! source addresses 127.0.0.1, .2, ... — the vehicles of the write
//! scenarios, in plaintext or over mutual TLS with a certificate each.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{ClientTlsConfig, Endpoint};

use super::idle_memory::Security;
use super::lean_vehicle::{AppliedLog, LeanVehicle};

/// Connect attempts per connection (and per session on it).
const ATTEMPTS: u32 = 3;
/// How long connecting a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the vehicles' sessions may take to close at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// File descriptors the benchmark needs besides the vehicles' sockets.
const SPARE_FILES: u64 = 200;

/// How to connect the fleet.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Vehicles.
    pub vehicles: usize,
    /// Vehicles per TCP connection (1: a connection each).
    pub per_connection: usize,
    /// Source addresses to spread connections over (127.0.0.1 ..= .N).
    pub source_addresses: u8,
    /// Connections being opened at once.
    pub concurrency: usize,
    /// Vehicle ids are `{prefix}-{index:05}`.
    pub prefix: String,
}

impl FleetOptions {
    /// TCP connections the fleet opens.
    pub fn connections(&self) -> usize {
        self.vehicles.div_ceil(self.per_connection.max(1))
    }

    /// The id of vehicle `index` (what its certificate must name over mTLS).
    pub fn vehicle_id(&self, index: usize) -> String {
        format!("{}-{index:05}", self.prefix)
    }

    /// Every vehicle's id, by index.
    pub fn ids(&self) -> Vec<String> {
        (0..self.vehicles).map(|i| self.vehicle_id(i)).collect()
    }
}

/// A connected fleet of applying lean vehicles.
#[derive(Debug)]
pub struct ApplyingFleet {
    ids: Vec<String>,
    applied: Arc<AppliedLog>,
    connections: usize,
    connect_time: Duration,
    retries: usize,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl ApplyingFleet {
    /// Connects every vehicle to `url` in plaintext and waits until each has
    /// its Welcome.
    pub async fn connect(url: &str, options: &FleetOptions) -> anyhow::Result<ApplyingFleet> {
        Self::connect_secured(url, options, &Security::Plaintext).await
    }

    /// Connects every vehicle to `url` (`https://…` for mTLS) and waits until
    /// each has its Welcome. Over mTLS vehicle `i` presents
    /// `pki.vehicles[i]`, which must name [`FleetOptions::vehicle_id`]`(i)`,
    /// on a connection of its own (a certificate names one vehicle).
    pub async fn connect_secured(
        url: &str,
        options: &FleetOptions,
        security: &Security,
    ) -> anyhow::Result<ApplyingFleet> {
        anyhow::ensure!(options.vehicles > 0, "connect at least one vehicle");
        anyhow::ensure!(options.per_connection >= 1, "--per-connection must be at least 1");
        anyhow::ensure!(options.source_addresses >= 1, "--source-addresses must be at least 1");
        if let Security::Mtls(pki) = security {
            anyhow::ensure!(options.per_connection == 1, "over mTLS each vehicle needs a connection of its own");
            anyhow::ensure!(
                pki.vehicles.len() >= options.vehicles,
                "{} vehicles need as many certificates; the PKI has {}",
                options.vehicles,
                pki.vehicles.len()
            );
        }
        let connections = options.connections();
        if let Some(limit) = super::rss::open_files_limit()
            && connections as u64 + SPARE_FILES > limit
        {
            bail!(
                "{connections} connections need {} open files in this process; its limit is {limit} \
                 (use --per-connection)",
                connections as u64 + SPARE_FILES
            );
        }
        let ids = options.ids();
        let applied = AppliedLog::new(options.vehicles);
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
        let connected = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let retries = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(tokio::sync::Notify::new());
        let started = Instant::now();
        for group in 0..connections {
            let first = group * options.per_connection;
            let members: Vec<usize> = (first..(first + options.per_connection).min(options.vehicles)).collect();
            let source = crate::loopback::source_address(group, options.source_addresses);
            // Over mTLS a group is one vehicle, `first`.
            let tls = security.tls(|pki| &pki.vehicles[first]);
            let (url, ids) = (url.to_string(), members.iter().map(|&i| ids[i].clone()).collect::<Vec<_>>());
            let (stop, permits, applied, tasks2) = (stop.clone(), permits.clone(), applied.clone(), tasks.clone());
            let (connected, failed, retries, done) = (connected.clone(), failed.clone(), retries.clone(), done.clone());
            tasks.spawn(async move {
                let opened = {
                    let Ok(_permit) = permits.acquire_owned().await else { return };
                    open_group(&url, source, tls, &ids, &retries).await
                };
                match opened {
                    Ok(vehicles) => {
                        for (vehicle, index) in vehicles.into_iter().zip(members) {
                            tasks2.spawn(vehicle.hold_applying(stop.clone(), applied.slot(index)));
                        }
                        connected.fetch_add(ids.len(), Ordering::AcqRel);
                    }
                    Err(error) => {
                        tracing::warn!(group, error = format!("{error:#}"), "vehicles could not connect");
                        failed.fetch_add(ids.len(), Ordering::AcqRel);
                    }
                }
                done.notify_one();
            });
        }
        let mut logged = Instant::now();
        loop {
            let (ok, bad) = (connected.load(Ordering::Acquire), failed.load(Ordering::Acquire));
            if bad > 0 {
                stop.cancel();
                tasks.close();
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, tasks.wait()).await;
                bail!("{bad} vehicles could not connect ({ok} connected)");
            }
            if ok >= options.vehicles {
                break;
            }
            if logged.elapsed() >= Duration::from_secs(2) {
                tracing::info!(connected = ok, vehicles = options.vehicles, "connecting");
                logged = Instant::now();
            }
            // Every group task notifies once it settled.
            let _ = tokio::time::timeout(Duration::from_millis(500), done.notified()).await;
        }
        let connect_time = started.elapsed();
        tracing::info!(vehicles = options.vehicles, connections, ?connect_time, "fleet connected");
        Ok(ApplyingFleet {
            ids,
            applied,
            connections,
            connect_time,
            retries: retries.load(Ordering::Acquire),
            stop,
            tasks,
        })
    }

    /// The vehicles' ids, by index.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// What the vehicles applied.
    pub fn applied(&self) -> &Arc<AppliedLog> {
        &self.applied
    }

    /// TCP connections the fleet holds.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// From the first connect to the last Welcome.
    pub fn connect_time(&self) -> Duration {
        self.connect_time
    }

    /// Connects or session openings that failed and were retried.
    pub fn retries(&self) -> usize {
        self.retries
    }

    /// Closes every session and connection.
    pub async fn close(self) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(CLOSE_TIMEOUT, self.tasks.wait()).await.is_err() {
            tracing::warn!("vehicles did not close within {CLOSE_TIMEOUT:?}");
        }
    }
}

/// One connection from `source` (over `tls` if given), then a session per
/// id over it.
async fn open_group(
    url: &str,
    source: Option<IpAddr>,
    tls: Option<ClientTlsConfig>,
    ids: &[String],
    retries: &AtomicUsize,
) -> anyhow::Result<Vec<LeanVehicle>> {
    // No HTTP/2 keepalive: as idle-memory's vehicles.
    let mut endpoint = Endpoint::from_shared(url.to_string())?.local_address(source).tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).context("bad TLS configuration")?;
    }
    let mut attempt = 1;
    let channel = loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
            Ok(Ok(channel)) => break channel,
            outcome if attempt < ATTEMPTS => {
                let error = outcome.map_or_else(|_| "timed out".to_string(), |r| format!("{:#}", r.unwrap_err()));
                tracing::debug!(attempt, %error, "connect failed; retrying");
                retries.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Ok(Err(e)) => return Err(e).context("cannot connect"),
            Err(_) => bail!("no connection within {CONNECT_TIMEOUT:?}"),
        }
    };
    let sessions = ids.iter().map(|id| LeanVehicle::connect_over(channel.clone(), id.clone()));
    futures::future::try_join_all(sessions).await
}
