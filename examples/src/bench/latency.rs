//! The `latency` scenario: end-to-end latency of a write that waits until the
//! vehicle applied it (app → tetherd → agent → applied → report → tetherd →
//! app), one write at a time to one vehicle whose agent applies instantly.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use tether_sdk::{Agent, AgentEvent, Client, FieldStatus, Patch, WaitLevel, Window};
use tokio::time::Instant;

use super::Tetherd;
use super::load::{Percentiles, round};
use crate::sim::SimCapability;

/// The benchmark vehicle.
const VEHICLE: &str = "bench-latency";
/// The deadline of each write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The scenario's parameters.
#[derive(Debug, Clone)]
pub struct LatencyConfig {
    /// Measured writes.
    pub writes: usize,
    /// Writes before measuring (connections and caches warm up).
    pub warmup: usize,
}

/// What the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    /// Always `"latency"`.
    pub scenario: &'static str,
    /// Measured writes.
    pub writes: usize,
    /// Latency per write, from the call to its answer.
    #[serde(flatten)]
    pub percentiles: Percentiles,
    /// Writes completed per second (one at a time).
    pub writes_per_second: f64,
    /// Cores of the machine (server, agent and app share them).
    pub cores: usize,
}

/// Runs the scenario against `server`.
pub async fn run(server: &Tetherd, config: &LatencyConfig) -> anyhow::Result<LatencyReport> {
    let url = server.url();
    let (percentiles, writes_per_second) = measure(&url, &url, VEHICLE, config).await?;
    Ok(LatencyReport {
        scenario: "latency",
        writes: config.writes,
        percentiles,
        writes_per_second,
        cores: super::cores(),
    })
}

/// Sequential writes to `vehicle`, its agent connected to `vehicle_url`,
/// the app writing through `app_url` (the same node, or another node of a
/// cluster), each waiting until APPLIED: the latency percentiles and the
/// writes per second.
pub async fn measure(
    vehicle_url: &str,
    app_url: &str,
    vehicle: &str,
    config: &LatencyConfig,
) -> anyhow::Result<(Percentiles, f64)> {
    anyhow::ensure!(config.writes > 0, "measure at least one write");
    // Instant actuators, and no rate limit: back-to-back writes to one window
    // are the point here, not something to refuse.
    let agent = Agent::builder(vehicle_url.to_string(), vehicle)
        .capability(SimCapability::new("windows", Duration::ZERO, Duration::ZERO))
        .default_rate_limit(Duration::ZERO)
        .spawn();
    let mut events = agent.events();
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match events.recv().await {
                Ok(AgentEvent::Connected { session_id }) => return Ok(session_id),
                Ok(AgentEvent::Disconnected { error }) => tracing::warn!(%error, "agent not connected yet"),
                Ok(_) => {}
                Err(error) => bail!("agent stopped: {error}"),
            }
        }
    })
    .await
    .with_context(|| format!("the agent did not connect within {CONNECT_TIMEOUT:?}"))??;
    tracing::info!(session_id = connected, "agent connected");
    drop(events);

    // Every write differs from the one before, so none is debounced or a no-op.
    let client = Client::connect(app_url.to_string()).await?.with_debounce(Duration::ZERO);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")?;
    let mut measured_from = Instant::now();
    for i in 0..config.warmup + config.writes {
        if i == config.warmup {
            measured_from = Instant::now();
        }
        let percent = (i % 101) as u32;
        let start = Instant::now();
        let outcome = client
            .set_desired(vehicle, Patch::new().window(Window::FrontLeft, percent))
            .wait(WaitLevel::Applied)
            .timeout(WRITE_TIMEOUT)
            .await
            .with_context(|| format!("write {i} failed"))?;
        let took = start.elapsed();
        if !outcome.all(FieldStatus::Applied) {
            bail!("write {i} was not applied: {:?}", outcome.fields);
        }
        if i >= config.warmup {
            histogram.saturating_record(took.as_micros().try_into().unwrap_or(u64::MAX).max(1));
        }
    }
    let elapsed = measured_from.elapsed();
    agent.shutdown().await;
    Ok((Percentiles::of(&histogram), round(config.writes as f64 / elapsed.as_secs_f64(), 10.0)))
}

impl fmt::Display for LatencyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |us: u64| format!("{:.3} ms", us as f64 / 1000.0);
        writeln!(
            f,
            "latency: {} sequential writes, wait APPLIED, 1 vehicle applying instantly ({} cores)",
            self.writes, self.cores
        )?;
        writeln!(f, "  {:<12} {:>14}", "metric", "value")?;
        let p = &self.percentiles;
        for (name, value) in
            [("p50", p.p50_us), ("p90", p.p90_us), ("p99", p.p99_us), ("p99.9", p.p999_us), ("max", p.max_us)]
        {
            writeln!(f, "  {name:<12} {:>14}", ms(value))?;
        }
        writeln!(f, "  {:<12} {:>14}", "mean", format!("{:.3} ms", p.mean_us / 1000.0))?;
        write!(f, "  {:<12} {:>14}", "throughput", format!("{:.0} writes/s", self.writes_per_second))
    }
}
