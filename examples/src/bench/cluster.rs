//! The `cluster` scenario: tetherd on one node (redb) against a cluster on
//! NATS JetStream (3 nats-server processes, `sync_interval: always`, an R3
//! stream), in one run:
//!
//! - set → APPLIED latency: one node; three nodes with the vehicle on the
//!   app's node; three nodes with the vehicle on another node;
//! - closed-loop writes/s (wait ACCEPTED, W writers on W vehicles): one node
//!   on redb, one node on NATS, three nodes on NATS (writers spread);
//! - for each fleet size N: N SDK agents hold their sessions on node A (all
//!   three addresses given), A is killed with SIGKILL: the time until all N
//!   are online on the other nodes, and until a write to each, made through
//!   another node, is APPLIED.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;
use tether_sdk::{Agent, Client, FieldStatus, Patch, WaitLevel, Window};

use super::latency::{LatencyConfig, measure};
use super::load::{Percentiles, round};
use super::{Tetherd, TetherdOptions, metric_value};
use crate::nats::NatsCluster;
use crate::sim::SimCapability;

/// The scenario's parameters.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// tetherd.
    pub tetherd: TetherdOptions,
    /// Latency: writes measured (and warmed up) per setup.
    pub latency: LatencyConfig,
    /// Throughput: writers in flight.
    pub writers: usize,
    /// Throughput: how long each setup is driven.
    pub duration: Duration,
    /// Fleet sizes of the kill measurement.
    pub fleets: Vec<usize>,
}

/// One latency setup's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// The setup.
    pub setup: &'static str,
    /// Its percentiles.
    #[serde(flatten)]
    pub percentiles: Percentiles,
}

/// One kill measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Kill {
    /// Vehicles on the killed node.
    pub vehicles: usize,
    /// From the kill until every vehicle held a session on another node, ms.
    pub online_ms: u64,
    /// From the kill until a write to each (through another node) was APPLIED, ms.
    pub resynced_ms: u64,
}

/// What the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    /// Always `"cluster"`.
    pub scenario: &'static str,
    /// set → APPLIED per setup.
    pub latency: Vec<Latency>,
    /// p50 of a cluster write (vehicle on another node) / one node's.
    pub p50_ratio_cross_node: f64,
    /// p50 of a cluster write (vehicle on the app's node) / one node's.
    pub p50_ratio_same_node: f64,
    /// Closed-loop writes/s: one node (redb), one node (NATS), three nodes (NATS).
    pub writes_per_second: [f64; 3],
    /// Writers in flight.
    pub writers: usize,
    /// Kill -9 of the node holding the fleet.
    pub kills: Vec<Kill>,
    /// Cores of the machine (every process shares them).
    pub cores: usize,
}

/// Runs the scenario.
pub async fn run(config: &ClusterConfig) -> anyhow::Result<ClusterReport> {
    let mut latency = Vec::new();
    let mut rates = [0.0; 3];

    // One node, redb.
    let single = Tetherd::start(&config.tetherd).await?;
    let (p, _) = measure(&single.url(), &single.url(), "bench-single", &config.latency).await?;
    latency.push(Latency { setup: "one node (redb)", percentiles: p });
    rates[0] = closed_loop(&[single.url()], config.writers, config.duration).await?;
    drop(single);

    let nats = NatsCluster::start(3).await;
    // One node on NATS.
    let one = start_nodes(&config.tetherd, &nats, "BENCH1", 1).await?;
    rates[1] = closed_loop(&[one[0].url()], config.writers, config.duration).await?;
    drop(one);

    // Three nodes on NATS.
    let three = start_nodes(&config.tetherd, &nats, "BENCH3", 3).await?;
    let (a, b) = (three[0].url(), three[1].url());
    let (p, _) = measure(&a, &a, "bench-same", &config.latency).await?;
    latency.push(Latency { setup: "3 nodes, vehicle on the app's node", percentiles: p });
    let (p, _) = measure(&a, &b, "bench-cross", &config.latency).await?;
    latency.push(Latency { setup: "3 nodes, vehicle on another node", percentiles: p });
    let urls: Vec<String> = three.iter().map(Tetherd::url).collect();
    rates[2] = closed_loop(&urls, config.writers, config.duration).await?;
    drop(three);

    let mut kills = Vec::new();
    for (i, &vehicles) in config.fleets.iter().enumerate() {
        let nodes = start_nodes(&config.tetherd, &nats, &format!("BENCHKILL{i}"), 3).await?;
        kills.push(kill(nodes, vehicles).await?);
    }

    let ratio =
        |i: usize| round(latency[i].percentiles.p50_us as f64 / latency[0].percentiles.p50_us.max(1) as f64, 100.0);
    Ok(ClusterReport {
        scenario: "cluster",
        p50_ratio_same_node: ratio(1),
        p50_ratio_cross_node: ratio(2),
        latency,
        writes_per_second: rates.map(|r| round(r, 10.0)),
        writers: config.writers,
        kills,
        cores: super::cores(),
    })
}

/// `n` tetherd nodes of one stream on `nats`.
async fn start_nodes(
    base: &TetherdOptions,
    nats: &NatsCluster,
    stream: &str,
    n: usize,
) -> anyhow::Result<Vec<Tetherd>> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let mut options = base.clone();
        options.args.extend(
            ["--cluster-nats", &nats.urls(), "--cluster-stream", stream, "--cluster-node", &format!("node-{i}")]
                .map(String::from),
        );
        nodes.push(Tetherd::start(&options).await.with_context(|| format!("cluster node {i}"))?);
    }
    Ok(nodes)
}

/// Closed-loop writes for `duration`: `writers` in flight, each on its own
/// vehicle, spread over `urls`, each waiting for ACCEPTED. Writes/s.
async fn closed_loop(urls: &[String], writers: usize, duration: Duration) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let client = Client::connect(urls[w % urls.len()].clone()).await?.with_debounce(Duration::ZERO);
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u32;
            while Instant::now() < deadline {
                let patch = Patch::new().window(Window::FrontLeft, n % 101);
                client.set_desired(format!("bench-w{w}"), patch).await?;
                done.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            anyhow::Ok(())
        }));
    }
    let started = Instant::now();
    for task in tasks {
        task.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Live sessions of a node, from its metrics.
async fn sessions(node: &Tetherd) -> u64 {
    let metrics = node.metrics().await.unwrap_or_default();
    metric_value(&metrics, "tether_connected_vehicles").unwrap_or(0.0) as u64
}

/// Waits (bounded) until `check` holds, polling every 50 ms.
async fn until(what: &str, bound: Duration, mut check: impl AsyncFnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + bound;
    while !check().await {
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// `vehicles` agents on node A, A killed: when all were online elsewhere,
/// and when a write to each through B was APPLIED.
async fn kill(mut nodes: Vec<Tetherd>, vehicles: usize) -> anyhow::Result<Kill> {
    let bound = Duration::from_secs(60 + vehicles as u64 / 50);
    let urls: Vec<String> = nodes.iter().map(Tetherd::url).collect();
    let agents: Vec<_> = (0..vehicles)
        .map(|n| {
            Agent::builder(urls[0].clone(), format!("bench-k{n:05}"))
                .endpoints([urls[1].clone(), urls[2].clone()])
                .capability(SimCapability::new("windows", Duration::ZERO, Duration::ZERO))
                .default_rate_limit(Duration::ZERO)
                .backoff(Duration::from_millis(100), Duration::from_secs(2))
                .spawn()
        })
        .collect();
    until("every agent on node A", bound, async || sessions(&nodes[0]).await == vehicles as u64).await?;

    let killed = Instant::now();
    nodes.remove(0).kill().await?;
    until("every agent online elsewhere", bound, async || {
        sessions(&nodes[0]).await + sessions(&nodes[1]).await == vehicles as u64
    })
    .await?;
    let online = killed.elapsed();
    let app = Client::connect(urls[1].clone()).await?.with_debounce(Duration::ZERO);
    let writes = (0..vehicles).map(|n| {
        let app = app.clone();
        async move {
            let out = app
                .set_desired(format!("bench-k{n:05}"), Patch::new().window(Window::RearLeft, 42))
                .wait(WaitLevel::Applied)
                .timeout(Duration::from_secs(60))
                .await?;
            anyhow::ensure!(out.all(FieldStatus::Applied), "not applied: {:?}", out.fields);
            anyhow::Ok(())
        }
    });
    let mut writes = futures::stream::iter(writes).buffer_unordered(128);
    while let Some(result) = writes.next().await {
        result?;
    }
    let resynced = killed.elapsed();
    for agent in agents {
        agent.shutdown().await;
    }
    Ok(Kill { vehicles, online_ms: online.as_millis() as u64, resynced_ms: resynced.as_millis() as u64 })
}

impl fmt::Display for ClusterReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
        writeln!(
            f,
            "cluster: one node (redb) against 3 nodes on NATS JetStream (R3, fsync always), {} cores",
            self.cores
        )?;
        writeln!(f, "  {:<38} {:>10} {:>10}", "set -> APPLIED", "p50", "p99")?;
        for l in &self.latency {
            writeln!(f, "  {:<38} {:>10} {:>10}", l.setup, ms(l.percentiles.p50_us), ms(l.percentiles.p99_us))?;
        }
        writeln!(
            f,
            "  p50 ratio to one node: {}x same node, {}x other node (goal <= 2x)",
            self.p50_ratio_same_node, self.p50_ratio_cross_node
        )?;
        let [redb, one, three] = self.writes_per_second;
        writeln!(
            f,
            "  closed-loop writes/s ({} writers): one node redb {redb:.0}, one node NATS {one:.0}, 3 nodes NATS {three:.0}",
            self.writers
        )?;
        for k in &self.kills {
            writeln!(
                f,
                "  kill -9 of the node holding {} vehicles: all online elsewhere after {} ms, all re-synced (a write APPLIED) after {} ms",
                k.vehicles, k.online_ms, k.resynced_ms
            )?;
        }
        Ok(())
    }
}
