//! `crash-rounds`: fault injection for durability. Writers keep tetherd busy
//! with SDK writes (each with its own idempotency key); at a random moment
//! tetherd is killed with SIGKILL, a torn frame is added to the end of its
//! write-ahead log (as a crash in the middle of an append leaves one), and
//! it is started again on the same data. Every write it acknowledged must
//! be there: a vehicle's stored generation at least the highest one it
//! acknowledged, with that write's value when equal, and a retry of that
//! write's key answered as a replay of it. Reports acknowledged and lost
//! writes per round; lost must be 0.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tether_sdk::{Client, Patch, Window};
use tokio_util::sync::CancellationToken;

use super::{Restart, Tetherd, TetherdOptions};

/// What to run.
#[derive(Debug, Clone)]
pub struct CrashRoundsConfig {
    /// The tetherd to start.
    pub tetherd: TetherdOptions,
    /// Kill-and-restart rounds.
    pub rounds: usize,
    /// Writers, each with one write in flight.
    pub writers: usize,
    /// Vehicles written to (writers pick them at random).
    pub vehicles: usize,
    /// Each round runs for a random time between these before the kill.
    pub run_between: (Duration, Duration),
    /// Add a torn frame to the log's end after each kill.
    pub torn_tails: bool,
    /// The random seed (rounds, kill moments, tails, values).
    pub seed: u64,
}

/// One round's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// The round (from 1).
    pub round: usize,
    /// Writes tetherd acknowledged in the round.
    pub acknowledged: u64,
    /// Writes that ended without an answer (the kill came first).
    pub unanswered: u64,
    /// What was added to the log's end after the kill.
    pub tail: &'static str,
    /// Vehicles checked after the restart (every one ever acknowledged).
    pub checked: usize,
    /// Acknowledged writes found missing or changed after the restart.
    pub lost: u64,
    /// From the kill until tetherd listened again, in ms.
    pub restart_ms: u64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct CrashRoundsReport {
    /// The scenario's name.
    pub scenario: &'static str,
    /// The machine's parallelism.
    pub cores: usize,
    /// Writers.
    pub writers: usize,
    /// Vehicles.
    pub vehicles: usize,
    /// The seed.
    pub seed: u64,
    /// Writes acknowledged in all rounds.
    pub acknowledged: u64,
    /// Acknowledged writes lost in all rounds (must be 0).
    pub lost: u64,
    /// Torn tails added.
    pub torn_tails: usize,
    /// Every round.
    pub rounds: Vec<Round>,
}

/// The highest acknowledged write of each vehicle: (generation, value, key).
type Acked = HashMap<String, (u64, u32, String)>;

/// What a torn append leaves at the end of a log, chosen per round.
const TAILS: [&str; 4] = ["half a frame", "a header promising more", "zeros", "random bytes"];

/// Runs the rounds.
pub async fn run(config: &CrashRoundsConfig) -> anyhow::Result<CrashRoundsReport> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut server = Tetherd::start(&config.tetherd).await?;
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let mut rounds = Vec::new();
    for round in 1..=config.rounds {
        let client = Client::connect(server.url()).await.context("connecting the writers")?;
        let stop = CancellationToken::new();
        let counts = Arc::new(Mutex::new((0u64, 0u64)));
        let writers: Vec<_> = (0..config.writers)
            .map(|w| {
                let seed = rng.random::<u64>();
                tokio::spawn(write_until(
                    client.clone(),
                    Writer { round, writer: w, vehicles: config.vehicles, seed },
                    acked.clone(),
                    counts.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        let (low, high) = config.run_between;
        tokio::time::sleep(rng.random_range(low..=high)).await;
        let tail = if config.torn_tails { TAILS[(round - 1) % TAILS.len()] } else { "none" };
        let tail_seed = rng.random::<u64>();
        let killed = Instant::now();
        let (restarted, _) = server
            .restart_with(Restart::Kill, |dir| tear(dir, tail, tail_seed))
            .await
            .with_context(|| format!("round {round}: restarting after the kill"))?;
        server = restarted;
        let restart_ms = killed.elapsed().as_millis() as u64;
        stop.cancel();
        for writer in writers {
            writer.await.context("a writer panicked")?;
        }
        let (acknowledged, unanswered) = *counts.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let lost = check(&server, &snapshot).await?;
        tracing::info!(round, acknowledged, unanswered, lost, tail, "round");
        rounds.push(Round { round, acknowledged, unanswered, tail, checked: snapshot.len(), lost, restart_ms });
    }
    server.stop().await?;
    Ok(CrashRoundsReport {
        scenario: "crash-rounds",
        cores: super::cores(),
        writers: config.writers,
        vehicles: config.vehicles,
        seed: config.seed,
        acknowledged: rounds.iter().map(|r| r.acknowledged).sum(),
        lost: rounds.iter().map(|r| r.lost).sum(),
        torn_tails: rounds.iter().filter(|r| r.tail != "none").count(),
        rounds,
    })
}

/// Who a writer is.
struct Writer {
    round: usize,
    writer: usize,
    vehicles: usize,
    seed: u64,
}

/// Writes until `stop`, noting each acknowledged write as its vehicle's
/// highest if it is; counts (acknowledged, unanswered).
async fn write_until(
    client: Client,
    me: Writer,
    acked: Arc<Mutex<Acked>>,
    counts: Arc<Mutex<(u64, u64)>>,
    stop: CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(me.seed);
    for n in 0.. {
        if stop.is_cancelled() {
            return;
        }
        let vehicle = format!("crash-{:04}", rng.random_range(0..me.vehicles));
        let pct = rng.random_range(0..=100u32);
        let key = format!("r{}-w{}-{n}", me.round, me.writer);
        let write = client
            .set_desired(&vehicle, Patch::new().window(Window::FrontLeft, pct))
            .idempotency_key(&key)
            .no_expiry()
            .timeout(Duration::from_secs(2));
        let answered = tokio::select! {
            answered = write.send() => answered,
            () = stop.cancelled() => return,
        };
        let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
        match answered {
            Ok(outcome) => {
                counts.0 += 1;
                let mut acked = acked.lock().unwrap_or_else(|p| p.into_inner());
                let entry = acked.entry(vehicle).or_insert((0, 0, String::new()));
                if outcome.generation > entry.0 {
                    *entry = (outcome.generation, pct, key);
                }
            }
            Err(_) => counts.1 += 1,
        }
    }
}

/// Appends what a crash in the middle of an append leaves to the log.
fn tear(dir: &Path, tail: &str, seed: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let path = dir.join("tether.wal");
    let mut rng = StdRng::seed_from_u64(seed);
    let bytes: Vec<u8> = match tail {
        "none" => return Ok(()),
        // A frame's header and the first part of its body: its length says
        // more follows than does.
        "half a frame" | "a header promising more" => {
            let len: u32 = rng.random_range(64..4096);
            let mut b = len.to_le_bytes().to_vec();
            b.extend_from_slice(&rng.random::<u32>().to_le_bytes());
            let body = if tail == "half a frame" { len as usize / 2 } else { 0 };
            b.extend((0..body).map(|_| rng.random::<u8>()));
            b
        }
        "zeros" => vec![0; 4096],
        _ => (0..rng.random_range(1..256)).map(|_| rng.random::<u8>()).collect(),
    };
    let mut file = std::fs::OpenOptions::new().append(true).open(&path).with_context(|| path.display().to_string())?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    Ok(())
}

/// Acknowledged writes missing or changed on `server`.
async fn check(server: &Tetherd, acked: &Acked) -> anyhow::Result<u64> {
    let client = Client::connect(server.url()).await.context("connecting the checker")?;
    let mut lost = 0;
    for (vehicle, (generation, pct, key)) in acked {
        let stored = client.get_vehicle(vehicle).await.with_context(|| format!("reading {vehicle}"))?;
        let value = tether_sdk::desired_of(&stored).windows.and_then(|w| w.front_left);
        let kept = stored.generation > *generation || (stored.generation == *generation && value == Some(*pct));
        // Its key is still known: a retry is a replay, not a new write.
        let retried = client
            .set_desired(vehicle, Patch::new().window(Window::FrontLeft, *pct))
            .idempotency_key(key)
            .no_expiry()
            .await
            .with_context(|| format!("retrying {vehicle}'s last acknowledged write"))?;
        let replayed = retried.replayed && retried.generation == *generation;
        if !kept || !replayed {
            tracing::error!(
                vehicle,
                generation,
                stored = stored.generation,
                ?value,
                replayed,
                "an acknowledged write was lost"
            );
            lost += 1;
        }
    }
    Ok(lost)
}

impl fmt::Display for CrashRoundsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "crash-rounds: {} rounds of SIGKILL under {} writers over {} vehicles (seed {}), {} torn tails added",
            self.rounds.len(),
            self.writers,
            self.vehicles,
            self.seed,
            self.torn_tails
        )?;
        writeln!(
            f,
            "{:>5} {:>12} {:>10} {:>24} {:>8} {:>5} {:>10}",
            "round", "acknowledged", "unanswered", "tail", "checked", "lost", "restart"
        )?;
        for r in &self.rounds {
            writeln!(
                f,
                "{:>5} {:>12} {:>10} {:>24} {:>8} {:>5} {:>8}ms",
                r.round, r.acknowledged, r.unanswered, r.tail, r.checked, r.lost, r.restart_ms
            )?;
        }
        write!(f, "total: {} acknowledged, {} lost (must be 0)", self.acknowledged, self.lost)
    }
}
