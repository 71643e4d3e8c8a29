//! The write scenarios of issue 6, each on a fresh tetherd with N applying
//! lean vehicles connected ([`ApplyingFleet`]):
//!
//! - `write-rate` ([`write_rate`]): open loop at a fixed rate, set → wait
//!   level, latency from the scheduled send time; in the same run the raw
//!   tonic unary echo ([`Baseline`]) at the same rate with the same driver,
//!   and the p50 / p99 ratios tetherd ÷ baseline.
//! - `max-throughput` ([`max_throughput`]): closed loop, N writers in
//!   flight; the baseline echo with the same N in the same run, and the
//!   ratio of throughputs.
//! - `fan-out` ([`fan_out`]): one write per vehicle across the fleet,
//!   bounded concurrency; the time until every vehicle reported APPLIED.
//!
//! Server RSS and CPU (per thread name) come from `/proc`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tether_sdk::WaitLevel;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::baseline::{Baseline, BaselineOptions};
use super::counters::{Counts, PerfStat};
use super::cpu::{self, CpuUsage};
use super::fleet::{ApplyingFleet, FleetOptions};
use super::load::{self, LoadFigures, Outcome, Percentiles, Recorder, Server, Writes, ms, round, wait_name};
use super::{Tetherd, TetherdOptions};

/// What ACCEPTED means with the embedded store (server/src/store/redb.rs).
pub const DURABILITY: &str = "ACCEPTED = the write and its audit record are in a frame of the store's \
     write-ahead log (tether.wal: one append and one fdatasync per commit, crc32 per frame) written by the store's \
     single writer thread, which folds every save queued behind the first (up to 4,096) into one commit (group \
     commit); after answering, redb takes the same changes in a non-durable commit (audit reads wait for it) and is \
     made durable by a checkpoint (every 64 MiB \
     of log, after 1 s without saves, and at close), and a restart replays the log above the last checkpoint; \
     tetherd answers or delivers only after the frame's fdatasync returned. The ack (DELIVERED) and report \
     (APPLIED) are saved through the same writer as lazy saves (committed with the next write, or within 10 ms), and \
     a waiting call does not wait for those saves.";

/// How long the fleet's vehicles may take to report after their writes returned.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long fan-out lets tetherd settle with the fleet idle before measuring
/// its memory (as idle-memory does).
const IDLE_SETTLE: Duration = Duration::from_secs(2);

/// The parameters every write scenario shares.
#[derive(Debug, Clone)]
pub struct WriteSetup {
    /// The fleet.
    pub fleet: FleetOptions,
    /// App client connections (SDK clients, one HTTP/2 connection each) per
    /// server.
    pub channels: usize,
    /// What each write waits for.
    pub wait: WaitLevel,
    /// `perf stat` events to count per write in each server and in this
    /// process (e.g. `context-switches,raw_syscalls:sys_enter`); none: no
    /// counting.
    pub perf_events: Option<String>,
}

impl WriteSetup {
    /// `vehicles` applying vehicles, each on its own connection spread over 8
    /// source addresses, 4 client channels, waiting for APPLIED.
    pub fn new(vehicles: usize) -> WriteSetup {
        WriteSetup {
            fleet: FleetOptions {
                vehicles,
                per_connection: 1,
                source_addresses: 8,
                concurrency: 200,
                prefix: "bench-w".into(),
            },
            channels: 4,
            wait: WaitLevel::Applied,
            perf_events: None,
        }
    }
}

/// A server's resources during a phase.
#[derive(Debug, Clone, Serialize)]
pub struct ServerUsage {
    /// RSS at the end of the phase, KiB.
    pub rss_kib: u64,
    /// CPU during the phase.
    pub cpu: CpuUsage,
}

/// One measured load phase against one server.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Latency and throughput.
    pub load: LoadFigures,
    /// The server's RSS and CPU (`None` for an in-process baseline, whose
    /// figures would be this process's).
    pub server: Option<ServerUsage>,
    /// The benchmark's own CPU (clients and vehicles), percent of one core.
    pub bench_cpu_percent: f64,
    /// With `--perf-events`: each event per write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_write: Option<PerWrite>,
}

/// `perf stat` counts of a phase, divided by its writes.
#[derive(Debug, Clone, Serialize)]
pub struct PerWrite {
    /// In the server.
    pub server: BTreeMap<String, f64>,
    /// In the benchmark (app clients and vehicles).
    pub bench: BTreeMap<String, f64>,
}

/// One server's rounds of a scenario, summed.
struct Tally {
    server: Server,
    measured: Option<load::Measured>,
    server_cpu: cpu::CpuTally,
    bench_cpu: cpu::CpuTally,
    /// RSS after the latest round, KiB (`None`: no process of its own).
    rss_kib: Option<u64>,
    /// With `--perf-events`: the server's and this process's counts.
    counts: Option<(Counts, Counts)>,
}

impl Tally {
    fn new(server: Server) -> Tally {
        Tally {
            server,
            measured: None,
            server_cpu: cpu::CpuTally::default(),
            bench_cpu: cpu::CpuTally::default(),
            rss_kib: None,
            counts: None,
        }
    }

    fn phase(self) -> anyhow::Result<Phase> {
        let measured = self.measured.context("no round ran")?;
        let load = measured.figures();
        let per_write = self
            .counts
            .map(|(server, bench)| PerWrite { server: server.per(load.writes), bench: bench.per(load.writes) });
        Ok(Phase {
            load,
            server: self.rss_kib.map(|rss_kib| ServerUsage { rss_kib, cpu: self.server_cpu.usage() }),
            bench_cpu_percent: self.bench_cpu.usage().percent,
            per_write,
        })
    }
}

/// One round of a scenario that alternates servers: its run against each,
/// side by side (the spread of these ratios is the noise of the machine).
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// Whether the baseline ran first in this round.
    pub baseline_first: bool,
    /// The baseline's writes per second in this round.
    pub baseline_writes_per_second: f64,
    /// tetherd's writes per second in this round.
    pub tetherd_writes_per_second: f64,
    /// tetherd ÷ baseline writes per second.
    pub throughput_ratio: f64,
    /// tetherd p50 ÷ baseline p50.
    pub p50_ratio: f64,
    /// tetherd p99 ÷ baseline p99.
    pub p99_ratio: f64,
}

impl Round {
    fn of(baseline_first: bool, base: &LoadFigures, tether: &LoadFigures) -> Round {
        Round {
            baseline_first,
            baseline_writes_per_second: base.writes_per_second,
            tetherd_writes_per_second: tether.writes_per_second,
            throughput_ratio: ratio(tether.writes_per_second, base.writes_per_second),
            p50_ratio: ratio(tether.percentiles.p50_us as f64, base.percentiles.p50_us as f64),
            p99_ratio: ratio(tether.percentiles.p99_us as f64, base.percentiles.p99_us as f64),
        }
    }
}

/// "1.52 (0.98–2.10 over 4 rounds)": a ratio of the summed figures and its
/// spread over the rounds.
fn spread(total: f64, rounds: &[Round], of: impl Fn(&Round) -> f64) -> String {
    if rounds.len() < 2 {
        return format!("{total:.2}");
    }
    let (low, high) = rounds.iter().map(of).fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(x), h.max(x)));
    format!("{total:.2} ({low:.2}–{high:.2} over {} rounds)", rounds.len())
}

/// tetherd, the baseline, the fleet and a client pool to each.
struct Rig {
    tetherd: Tetherd,
    /// tetherd's RSS once it served, before the fleet connected, KiB.
    rss_before_fleet_kib: u64,
    baseline: Option<Baseline>,
    fleet: ApplyingFleet,
    to_tetherd: Writes,
    to_baseline: Option<Writes>,
    /// `perf stat` events counted around each run.
    perf_events: Option<String>,
}

impl Rig {
    async fn start(
        options: &TetherdOptions,
        baseline: Option<&BaselineOptions>,
        setup: &WriteSetup,
    ) -> anyhow::Result<Rig> {
        let mut options = options.clone();
        // Room for the fleet, the clients and a margin; no admin port (two
        // benchmarks may run side by side).
        let max_connections = setup.fleet.connections() + 2 * setup.channels + 100;
        options.args.extend(["--max-connections".into(), max_connections.to_string()]);
        options.args.extend(["--admin-listen".into(), "off".into()]);
        let tetherd = Tetherd::start(&options).await?;
        let rss_before_fleet_kib = tetherd.rss_kib()?;
        let baseline = match baseline {
            Some(b) => Some(Baseline::start(b).await?),
            None => None,
        };
        let fleet = ApplyingFleet::connect(&tetherd.url(), &setup.fleet).await.context("cannot connect the fleet")?;
        let ids: Arc<[String]> = fleet.ids().into();
        let to_tetherd = Writes::connect(&tetherd.url(), setup.channels, ids.clone(), setup.wait, Server::Tetherd)
            .await?
            .with_arrivals(fleet.applied().clone());
        let to_baseline = match &baseline {
            Some(b) => Some(Writes::connect(&b.url(), setup.channels, ids, setup.wait, Server::Baseline).await?),
            None => None,
        };
        let perf_events = setup.perf_events.clone();
        Ok(Rig { tetherd, rss_before_fleet_kib, baseline, fleet, to_tetherd, to_baseline, perf_events })
    }

    /// The server's pid, if its figures are its own.
    fn pid_of(&self, server: Server) -> Option<u32> {
        match server {
            Server::Tetherd => Some(self.tetherd.pid()),
            Server::Baseline => self.baseline.as_ref().filter(|b| b.is_child()).map(Baseline::pid),
        }
    }

    /// Runs `drive` (one round against `tally`'s server), adds what it
    /// measured and the server's CPU and RSS to `tally`, and returns the
    /// round's own figures.
    async fn round<F: Future<Output = anyhow::Result<load::Measured>>>(
        &self,
        tally: &mut Tally,
        drive: F,
    ) -> anyhow::Result<LoadFigures> {
        let pid = self.pid_of(tally.server);
        let own = std::process::id();
        let counting = match (&self.perf_events, pid) {
            (Some(events), Some(pid)) => Some((PerfStat::start(pid, events)?, PerfStat::start(own, events)?)),
            _ => None,
        };
        let server_before = pid.map(cpu::sample).transpose()?;
        let own_before = cpu::sample(own)?;
        let measured = drive.await?;
        let own_after = cpu::sample(own)?;
        if let Some((server, bench)) = counting {
            let (server, bench) = (server.stop().await?, bench.stop().await?);
            let sum = tally.counts.get_or_insert_default();
            sum.0.add(&server);
            sum.1.add(&bench);
        }
        if let (Some(pid), Some(before)) = (pid, server_before) {
            tally.server_cpu.add(&before, &cpu::sample(pid)?);
            tally.rss_kib = Some(super::rss::rss_kib(pid)?);
        }
        tally.bench_cpu.add(&own_before, &own_after);
        let figures = measured.figures();
        match &mut tally.measured {
            Some(sum) => sum.add(&measured),
            None => tally.measured = Some(measured),
        }
        Ok(figures)
    }

    /// Runs `rounds` rounds of `drive(writes, round)`, each round one run
    /// against the baseline and one against tetherd, in the order B T, T B,
    /// B T, ... so a drift in this shared machine's speed weighs on both
    /// alike. Returns each server's rounds summed into one phase, and the
    /// figures of every round.
    async fn alternate(
        &self,
        rounds: usize,
        label: &str,
        mut drive: impl AsyncFnMut(&Writes, usize) -> anyhow::Result<load::Measured>,
    ) -> anyhow::Result<(Phase, Phase, Vec<Round>)> {
        let to_baseline = self.to_baseline.as_ref().context("no baseline")?;
        let (mut base, mut tether) = (Tally::new(Server::Baseline), Tally::new(Server::Tetherd));
        let mut per_round = Vec::with_capacity(rounds);
        for round in 0..rounds.max(1) {
            let baseline_first = round % 2 == 0;
            tracing::info!(round = round + 1, rounds, baseline_first, "{label}");
            let (b, t) = if baseline_first {
                let b = self.round(&mut base, drive(to_baseline, round)).await?;
                (b, self.round(&mut tether, drive(&self.to_tetherd, round)).await?)
            } else {
                let t = self.round(&mut tether, drive(&self.to_tetherd, round)).await?;
                (self.round(&mut base, drive(to_baseline, round)).await?, t)
            };
            per_round.push(Round::of(baseline_first, &b, &t));
        }
        Ok((base.phase()?, tether.phase()?, per_round))
    }

    async fn stop(self) -> anyhow::Result<()> {
        let Rig { tetherd, baseline, fleet, to_tetherd, to_baseline, .. } = self;
        drop((to_tetherd, to_baseline));
        fleet.close().await;
        if let Some(baseline) = baseline {
            baseline.stop().await?;
        }
        tetherd.stop().await
    }
}

/// Runs `body` on a started rig, then stops the rig whatever happened.
async fn with_rig<T>(
    options: &TetherdOptions,
    baseline: Option<&BaselineOptions>,
    setup: &WriteSetup,
    body: impl AsyncFnOnce(&Rig) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let rig = Rig::start(options, baseline, setup).await?;
    let outcome = body(&rig).await;
    let stopped = rig.stop().await;
    let value = outcome?;
    stopped?;
    Ok(value)
}

/// Fails if a run against tetherd lost or short-changed a write.
fn check(load: &LoadFigures) -> anyhow::Result<()> {
    if load.errors > 0 || load.not_reached > 0 || load.reached < load.writes {
        bail!(
            "{}: {} of {} writes reached the wait level ({} errors, {} short); first: {}",
            load.server,
            load.reached,
            load.writes,
            load.errors,
            load.not_reached,
            load.first_error.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

fn ratio(a: f64, b: f64) -> f64 {
    round(a / b.max(1e-9), 100.0)
}

// ---------------------------------------------------------------- write-rate

/// `write-rate`'s parameters.
#[derive(Debug, Clone)]
pub struct WriteRateConfig {
    /// Fleet, clients, wait level.
    pub setup: WriteSetup,
    /// Writes per second.
    pub rate: f64,
    /// Measured time per server, split over the rounds.
    pub duration: Duration,
    /// Unmeasured time at the same rate first, per server.
    pub warmup: Duration,
    /// Rounds, each a run against the baseline and one against tetherd.
    pub rounds: usize,
}

/// What `write-rate` measured.
#[derive(Debug, Clone, Serialize)]
pub struct WriteRateReport {
    /// Always `"write-rate"`.
    pub scenario: &'static str,
    /// Vehicles connected.
    pub vehicles: usize,
    /// Their TCP connections.
    pub connections: usize,
    /// App client connections per server.
    pub channels: usize,
    /// The wait level.
    pub wait: &'static str,
    /// Scheduled writes per second.
    pub rate: f64,
    /// Measured seconds per server.
    pub duration_seconds: f64,
    /// First connect to last Welcome, seconds.
    pub connect_seconds: f64,
    /// tetherd.
    pub tetherd: Phase,
    /// The raw tonic unary echo, same rate, same driver.
    pub baseline: Phase,
    /// tetherd p50 ÷ baseline p50 (issue 6: ≤ 3).
    pub p50_ratio: f64,
    /// tetherd p99 ÷ baseline p99 (issue 6: ≤ 2).
    pub p99_ratio: f64,
    /// Each round's figures (the summed ones are above).
    pub rounds: Vec<Round>,
    /// Fields the vehicles reported APPLIED (warm-up included).
    pub vehicle_fields_applied: u64,
    /// Whether the baseline ran as a process of its own.
    pub baseline_split: bool,
    /// Cores of the machine.
    pub cores: usize,
}

/// Runs `write-rate`: the baseline and tetherd in alternating rounds, in
/// one run.
pub async fn write_rate(
    options: &TetherdOptions,
    baseline: &BaselineOptions,
    config: &WriteRateConfig,
) -> anyhow::Result<WriteRateReport> {
    let setup = &config.setup;
    let rounds = config.rounds.max(1);
    let segment = config.duration / rounds as u32;
    let rate = config.rate;
    with_rig(options, Some(baseline), setup, async |rig: &Rig| {
        let to_baseline = rig.to_baseline.as_ref().context("no baseline")?;
        let warmup_writes = (rate * config.warmup.as_secs_f64()).round() as u64;
        if !config.warmup.is_zero() {
            tracing::info!(rate, warmup = ?config.warmup, "warming up");
            load::open_loop(to_baseline, rate, config.warmup, 0).await?;
            check(&load::open_loop(&rig.to_tetherd, rate, config.warmup, 0).await?.figures())?;
        }
        // Each round goes on to the vehicles after the last round's.
        let per_round = (rate * segment.as_secs_f64()).round().max(1.0) as u64;
        let (base, tether, per_round_figures) = rig
            .alternate(rounds, "open loop", async |writes: &Writes, round: usize| {
                load::open_loop(writes, rate, segment, warmup_writes + round as u64 * per_round).await
            })
            .await?;
        check(&tether.load)?;
        Ok(WriteRateReport {
            scenario: "write-rate",
            vehicles: setup.fleet.vehicles,
            connections: rig.fleet.connections(),
            channels: setup.channels,
            wait: wait_name(setup.wait),
            rate,
            duration_seconds: config.duration.as_secs_f64(),
            connect_seconds: round(rig.fleet.connect_time().as_secs_f64(), 100.0),
            p50_ratio: ratio(tether.load.percentiles.p50_us as f64, base.load.percentiles.p50_us as f64),
            p99_ratio: ratio(tether.load.percentiles.p99_us as f64, base.load.percentiles.p99_us as f64),
            rounds: per_round_figures,
            tetherd: tether,
            baseline: base,
            vehicle_fields_applied: rig.fleet.applied().fields(),
            baseline_split: rig.baseline.as_ref().is_some_and(Baseline::is_child),
            cores: super::cores(),
        })
    })
    .await
}

// ------------------------------------------------------------ max-throughput

/// `max-throughput`'s parameters.
#[derive(Debug, Clone)]
pub struct MaxThroughputConfig {
    /// Fleet, clients, wait level.
    pub setup: WriteSetup,
    /// Writers in flight.
    pub concurrency: usize,
    /// Measured time per server, split over the rounds.
    pub duration: Duration,
    /// Unmeasured time before each server's first round (later rounds warm
    /// up for [`ROUND_WARMUP`] at most).
    pub warmup: Duration,
    /// Rounds, each a run against the baseline and one against tetherd.
    pub rounds: usize,
}

/// What `max-throughput` measured.
#[derive(Debug, Clone, Serialize)]
pub struct MaxThroughputReport {
    /// Always `"max-throughput"`.
    pub scenario: &'static str,
    /// Vehicles connected.
    pub vehicles: usize,
    /// Their TCP connections.
    pub connections: usize,
    /// App client connections per server.
    pub channels: usize,
    /// Writers in flight.
    pub concurrency: usize,
    /// The wait level.
    pub wait: &'static str,
    /// Measured seconds per server.
    pub duration_seconds: f64,
    /// First connect to last Welcome, seconds.
    pub connect_seconds: f64,
    /// tetherd.
    pub tetherd: Phase,
    /// The raw tonic unary echo, same writers, same driver.
    pub baseline: Phase,
    /// tetherd writes/s ÷ baseline writes/s (issue 6: ≥ 0.5).
    pub throughput_ratio: f64,
    /// Each round's figures (the summed ones are above).
    pub rounds: Vec<Round>,
    /// Fields the vehicles reported APPLIED (warm-up included).
    pub vehicle_fields_applied: u64,
    /// What a write's ACCEPTED means.
    pub durability: &'static str,
    /// Whether the baseline ran as a process of its own.
    pub baseline_split: bool,
    /// Cores of the machine.
    pub cores: usize,
}

/// Longest warm-up of a closed-loop round after a server's first: the
/// writers start again from none in flight.
pub const ROUND_WARMUP: Duration = Duration::from_millis(500);

/// Runs `max-throughput`: the baseline and tetherd in alternating rounds, in
/// one run.
pub async fn max_throughput(
    options: &TetherdOptions,
    baseline: &BaselineOptions,
    config: &MaxThroughputConfig,
) -> anyhow::Result<MaxThroughputReport> {
    let setup = &config.setup;
    let n = config.concurrency;
    let rounds = config.rounds.max(1);
    let segment = config.duration / rounds as u32;
    with_rig(options, Some(baseline), setup, async |rig: &Rig| {
        let (base, tether, per_round) = rig
            .alternate(rounds, "closed loop", async |writes: &Writes, round: usize| {
                let warmup = if round == 0 { config.warmup } else { config.warmup.min(ROUND_WARMUP) };
                load::closed_loop(writes, n, warmup, segment).await
            })
            .await?;
        check(&tether.load)?;
        Ok(MaxThroughputReport {
            scenario: "max-throughput",
            vehicles: setup.fleet.vehicles,
            connections: rig.fleet.connections(),
            channels: setup.channels,
            concurrency: n,
            wait: wait_name(setup.wait),
            duration_seconds: config.duration.as_secs_f64(),
            connect_seconds: round(rig.fleet.connect_time().as_secs_f64(), 100.0),
            throughput_ratio: ratio(tether.load.writes_per_second, base.load.writes_per_second),
            rounds: per_round,
            tetherd: tether,
            baseline: base,
            vehicle_fields_applied: rig.fleet.applied().fields(),
            durability: DURABILITY,
            baseline_split: rig.baseline.as_ref().is_some_and(Baseline::is_child),
            cores: super::cores(),
        })
    })
    .await
}

// ------------------------------------------------------------------- fan-out

/// `fan-out`'s parameters.
#[derive(Debug, Clone)]
pub struct FanOutConfig {
    /// Fleet, clients, wait level.
    pub setup: WriteSetup,
    /// Writes in flight at once.
    pub concurrency: usize,
}

/// What `fan-out` measured.
#[derive(Debug, Clone, Serialize)]
pub struct FanOutReport {
    /// Always `"fan-out"`.
    pub scenario: &'static str,
    /// Vehicles connected, one write each.
    pub vehicles: usize,
    /// Their TCP connections.
    pub connections: usize,
    /// App client connections.
    pub channels: usize,
    /// Writes in flight at once.
    pub concurrency: usize,
    /// The wait level.
    pub wait: &'static str,
    /// First connect to last Welcome, seconds.
    pub connect_seconds: f64,
    /// tetherd's RSS before the fleet connected, KiB.
    pub rss_before_kib: u64,
    /// tetherd's RSS with the fleet connected and idle (after a settle, before
    /// the first write), KiB.
    pub rss_idle_kib: u64,
    /// (rss_idle − rss_before) ÷ vehicles: what an idle session costs, its
    /// share of its connection included, KiB.
    pub per_session_kib: f64,
    /// Latency per write (from its send) and counts.
    pub load: LoadFigures,
    /// First write sent → last write answered, seconds.
    pub all_answered_seconds: f64,
    /// First write sent → the last vehicle sent its APPLIED report
    /// (measured in the vehicles), seconds.
    pub all_applied_seconds: f64,
    /// Vehicles whose report covered their write's generation.
    pub vehicles_reached: usize,
    /// vehicles ÷ all_applied_seconds.
    pub applied_per_second: f64,
    /// tetherd's resources during the fan-out.
    pub server: ServerUsage,
    /// The benchmark's own CPU, percent of one core.
    pub bench_cpu_percent: f64,
    /// Cores of the machine.
    pub cores: usize,
}

/// Runs `fan-out`: one write per vehicle, `concurrency` in flight, then
/// waits (bounded) until every vehicle reported its write APPLIED.
pub async fn fan_out(options: &TetherdOptions, config: &FanOutConfig) -> anyhow::Result<FanOutReport> {
    let setup = &config.setup;
    with_rig(options, None, setup, async |rig: &Rig| {
        let vehicles = setup.fleet.vehicles;
        let writes = &rig.to_tetherd;
        let generations: Arc<[std::sync::atomic::AtomicU64]> =
            (0..vehicles).map(|_| std::sync::atomic::AtomicU64::new(0)).collect();
        let recorder = Arc::new(Recorder::new());
        let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let tasks = TaskTracker::new();
        let pid = rig.tetherd.pid();
        tokio::time::sleep(IDLE_SETTLE).await;
        let rss_idle_kib = rig.tetherd.rss_kib()?;
        let (server_before, own_before) = (cpu::sample(pid)?, cpu::sample(std::process::id())?);
        tracing::info!(vehicles, concurrency = config.concurrency, rss_idle_kib, "fan-out");
        let started = Instant::now();
        for index in 0..vehicles {
            let permit = permits.clone().acquire_owned().await.context("semaphore closed")?;
            let (writes, recorder, generations) = (writes.clone(), recorder.clone(), generations.clone());
            tasks.spawn(async move {
                let sent = Instant::now();
                let outcome = writes.write(index as u64, index).await;
                drop(permit);
                if let Outcome::Reached(generation) = &outcome {
                    generations[index].store(*generation, std::sync::atomic::Ordering::Release);
                }
                let mut latency = load::histogram();
                recorder.count(outcome, sent.elapsed(), &mut latency);
                recorder.merge(&latency);
            });
        }
        tasks.close();
        tokio::time::timeout(load::WRITE_TIMEOUT + Duration::from_secs(5), tasks.wait())
            .await
            .context("writes still running after their deadline")?;
        let all_answered = started.elapsed();
        let wanted: Vec<u64> = generations.iter().map(|g| g.load(std::sync::atomic::Ordering::Acquire)).collect();
        let log = rig.fleet.applied();
        let reached_all = log.wait_until(APPLY_TIMEOUT, |log| log.vehicles_at(Some(&wanted)) >= vehicles).await;
        let (server_after, own_after) = (cpu::sample(pid)?, cpu::sample(std::process::id())?);
        let vehicles_reached = log.vehicles_at(Some(&wanted));
        let all_applied = log.last_report_since(started.into_std());
        let figures = recorder.figures(Server::Tetherd, vehicles as u64, all_answered.as_secs_f64(), false);
        check(&figures)?;
        if !reached_all || wanted.contains(&0) {
            bail!(
                "only {vehicles_reached} of {vehicles} vehicles reported their write APPLIED within {APPLY_TIMEOUT:?}"
            );
        }
        Ok(FanOutReport {
            scenario: "fan-out",
            vehicles,
            connections: rig.fleet.connections(),
            channels: setup.channels,
            concurrency: config.concurrency,
            wait: wait_name(setup.wait),
            connect_seconds: round(rig.fleet.connect_time().as_secs_f64(), 100.0),
            rss_before_kib: rig.rss_before_fleet_kib,
            rss_idle_kib,
            per_session_kib: round(
                rss_idle_kib.saturating_sub(rig.rss_before_fleet_kib) as f64 / vehicles as f64,
                10.0,
            ),
            load: figures,
            all_answered_seconds: round(all_answered.as_secs_f64(), 1000.0),
            all_applied_seconds: round(all_applied.as_secs_f64(), 1000.0),
            vehicles_reached,
            applied_per_second: round(vehicles as f64 / all_applied.as_secs_f64().max(1e-6), 1.0),
            server: ServerUsage { rss_kib: rig.tetherd.rss_kib()?, cpu: cpu::usage(&server_before, &server_after) },
            bench_cpu_percent: cpu::usage(&own_before, &own_after).percent,
            cores: super::cores(),
        })
    })
    .await
}

// ------------------------------------------------------------------- tables

fn usage_line(f: &mut fmt::Formatter<'_>, name: &str, phase: &Phase) -> fmt::Result {
    match &phase.server {
        Some(s) => writeln!(
            f,
            "  {name:<9} server RSS {} KiB, CPU {}; bench CPU {:.0}%",
            s.rss_kib,
            s.cpu.summary(),
            phase.bench_cpu_percent
        )?,
        None => writeln!(
            f,
            "  {name:<9} (in this process: no separate CPU/RSS); bench CPU {:.0}%",
            phase.bench_cpu_percent
        )?,
    }
    if let Some(per) = &phase.per_write {
        let list = |counts: &BTreeMap<String, f64>| {
            counts.iter().map(|(event, n)| format!("{event} {n}")).collect::<Vec<_>>().join(", ")
        };
        writeln!(f, "  {name:<9} per write: server {}; bench {}", list(&per.server), list(&per.bench))?;
    }
    Ok(())
}

fn lag_line(f: &mut fmt::Formatter<'_>, phase: &Phase) -> fmt::Result {
    if let (Some(p99), Some(max)) = (phase.load.send_lag_p99_us, phase.load.send_lag_max_us) {
        writeln!(f, "  {:<9} generator send lag p99 {} max {}", phase.load.server, ms(p99), ms(max))?;
    }
    Ok(())
}

impl fmt::Display for WriteRateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "write-rate: {} writes/s open loop for {} s per server in {} alternating rounds, wait {}, {} vehicles on {} connections, {} client channels ({} cores)",
            self.rate,
            self.duration_seconds,
            self.rounds.len(),
            self.wait,
            self.vehicles,
            self.connections,
            self.channels,
            self.cores
        )?;
        writeln!(f, "{}", LoadFigures::header())?;
        writeln!(f, "{}", self.baseline.load)?;
        writeln!(f, "{}", self.tetherd.load)?;
        writeln!(f, "  ratio tetherd/baseline, p50: {}", spread(self.p50_ratio, &self.rounds, |r| r.p50_ratio))?;
        writeln!(f, "  ratio tetherd/baseline, p99: {}", spread(self.p99_ratio, &self.rounds, |r| r.p99_ratio))?;
        lag_line(f, &self.baseline)?;
        lag_line(f, &self.tetherd)?;
        if let Some(split) = &self.tetherd.load.split {
            let line = |p: &Percentiles| {
                format!("p50 {} p99 {} p99.9 {} max {}", ms(p.p50_us), ms(p.p99_us), ms(p.p999_us), ms(p.max_us))
            };
            writeln!(
                f,
                "  tetherd   to the vehicle:        {} ({} writes split)",
                line(&split.to_vehicle),
                split.writes
            )?;
            writeln!(f, "  tetherd   vehicle to the answer: {}", line(&split.vehicle_to_answer))?;
        }
        usage_line(f, "baseline", &self.baseline)?;
        usage_line(f, "tetherd", &self.tetherd)?;
        write!(
            f,
            "  vehicles connected in {:.2} s; fields applied {}",
            self.connect_seconds, self.vehicle_fields_applied
        )
    }
}

impl fmt::Display for MaxThroughputReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "max-throughput: {} writers closed loop for {} s per server in {} alternating rounds, wait {}, {} vehicles on {} connections, {} client channels ({} cores)",
            self.concurrency,
            self.duration_seconds,
            self.rounds.len(),
            self.wait,
            self.vehicles,
            self.connections,
            self.channels,
            self.cores
        )?;
        writeln!(f, "{}", LoadFigures::header())?;
        writeln!(f, "{}", self.baseline.load)?;
        writeln!(f, "{}", self.tetherd.load)?;
        writeln!(
            f,
            "  throughput tetherd/baseline: {}",
            spread(self.throughput_ratio, &self.rounds, |r| r.throughput_ratio)
        )?;
        usage_line(f, "baseline", &self.baseline)?;
        usage_line(f, "tetherd", &self.tetherd)?;
        writeln!(
            f,
            "  vehicles connected in {:.2} s; fields applied {}",
            self.connect_seconds, self.vehicle_fields_applied
        )?;
        write!(f, "  durability: {}", self.durability)
    }
}

impl fmt::Display for FanOutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fan-out: one write to each of {} vehicles ({} connections), {} in flight, wait {}, {} client channels ({} cores)",
            self.vehicles, self.connections, self.concurrency, self.wait, self.channels, self.cores
        )?;
        writeln!(f, "{}", LoadFigures::header())?;
        writeln!(f, "{}", self.load)?;
        writeln!(
            f,
            "  all answered in {:.3} s; every vehicle applied in {:.3} s ({:.0} vehicles/s); reached {} of {}",
            self.all_answered_seconds,
            self.all_applied_seconds,
            self.applied_per_second,
            self.vehicles_reached,
            self.vehicles
        )?;
        writeln!(
            f,
            "  idle before the writes: tetherd RSS {} KiB ({} KiB before the fleet): {:.1} KiB per session",
            self.rss_idle_kib, self.rss_before_kib, self.per_session_kib
        )?;
        write!(
            f,
            "  tetherd RSS {} KiB, CPU {}; bench CPU {:.0}%; vehicles connected in {:.2} s",
            self.server.rss_kib,
            self.server.cpu.summary(),
            self.bench_cpu_percent,
            self.connect_seconds
        )
    }
}
