//! `tether-bench`: a benchmark program (not a test). Starts its own `tetherd`
//! child process per scenario, drives it over loopback, prints a table and
//! one JSON line per scenario, and kills the server at the end.
//!
//! ```text
//! cargo build --release -p tetherd -p tether-examples
//! target/release/tether-bench latency --writes 2000
//! target/release/tether-bench idle-memory --vehicles 10000
//! target/release/tether-bench traces --writes 2000   # latency with OTLP export off, 100%, 1%
//! target/release/tether-bench tls --vehicles 18000    # idle memory, tetherd and raw tonic, plaintext and mTLS
//! target/release/tether-bench reconnect-storm --vehicles 18000   # kill -9, restart: all back and resynced
//! target/release/tether-bench fan-out --vehicles 100000 --per-connection 100   # 100,000 sessions on 1,000 connections
//! target/release/tether-bench silent-sockets --silent 5000   # app p99 and new mTLS vehicles, quiet vs 5,000 silent sockets
//! target/release/tether-bench crash-rounds --rounds 25     # kill -9 under writes, torn log tails: acknowledged vs lost
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tether_examples::bench::baseline::{self, BaselineOptions};
use tether_examples::bench::cluster::{self, ClusterConfig};
use tether_examples::bench::crash_rounds::{self, CrashRoundsConfig};
use tether_examples::bench::fleet::FleetOptions;
use tether_examples::bench::idle_memory::{self, IdleMemoryConfig, Security};
use tether_examples::bench::latency::{self, LatencyConfig};
use tether_examples::bench::load::parse_wait;
use tether_examples::bench::pki::ServerFiles;
use tether_examples::bench::reconnect_storm::{self, ReconnectStormConfig};
use tether_examples::bench::silent_sockets::{self, SilentSocketsConfig};
use tether_examples::bench::tls::{self, TlsConfig};
use tether_examples::bench::traces;
use tether_examples::bench::writes::{self, FanOutConfig, MaxThroughputConfig, WriteRateConfig, WriteSetup};
use tether_examples::bench::{Restart, Tetherd, TetherdOptions, print_report};
use tether_sdk::WaitLevel;
use tokio::signal::unix::{SignalKind, signal};

/// Benchmarks tetherd: end-to-end write latency, memory per idle vehicle.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The tetherd binary to start (one fresh instance per scenario).
    #[arg(long, global = true, default_value = "target/release/tetherd")]
    tetherd: PathBuf,
    /// tetherd's log filter; its logs show here with RUST_LOG=tetherd=debug.
    #[arg(long, global = true, default_value = "warn")]
    tetherd_log: String,
    /// Give up on a scenario after this long.
    #[arg(long, global = true, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Sequential writes to one vehicle, each waiting until APPLIED:
    /// end-to-end latency percentiles and throughput.
    Latency(LatencyArgs),
    /// latency three times in one run: OTLP trace export off, sampled at
    /// 100%, sampled at 1% (to a null sink this process serves).
    Traces(LatencyArgs),
    /// tetherd's memory per idle vehicle, each on its own TCP connection.
    IdleMemory(IdleMemoryArgs),
    /// idle-memory four times in one run, on tetherd and on the raw tonic
    /// bidi echo, plaintext then mutual TLS with a certificate per vehicle:
    /// memory per vehicle of each, tetherd's ratios to raw tonic, and mTLS
    /// handshakes per second (certificate generation timed apart).
    Tls(TlsArgs),
    /// N SDK agents (mTLS, one connection each) hold sessions; tetherd is
    /// killed (or drained) and restarted on the same port and data, the app
    /// re-sets every vehicle: time until all are back and all applied.
    ReconnectStorm(ReconnectStormArgs),
    /// Open-loop writes at a fixed rate spread over N applying vehicles,
    /// latency from the scheduled send time; the raw tonic unary echo at the
    /// same rate in the same run, and the ratios.
    WriteRate(WriteRateArgs),
    /// Closed-loop writes, N writers in flight, over N applying vehicles;
    /// the raw tonic unary echo with the same N in the same run.
    MaxThroughput(MaxThroughputArgs),
    /// One write per vehicle across the fleet: time until every vehicle
    /// reported APPLIED.
    FanOut(FanOutArgs),
    /// One mTLS tetherd, quiet then attacked by S TCP sockets that never
    /// send a byte (re-opened whenever tetherd closes one): new mTLS
    /// vehicles' time to Welcome and the app's open-loop write latency
    /// (APPLIED) in each phase, the p99 ratio attacked / quiet (target <= 2).
    SilentSockets(SilentSocketsArgs),
    /// Fault injection: writers keep tetherd busy, it is killed (SIGKILL) at
    /// a random moment, a torn frame is added to its write-ahead log, and it
    /// restarts on the same data: every acknowledged write must be there
    /// (and its key still known). Acknowledged and lost writes per round;
    /// exits with a failure if any is lost.
    CrashRounds(CrashRoundsArgs),
    /// One node (redb) against a cluster of three on NATS JetStream (3
    /// nats-server processes from scripts/install-tools, R3, fsync always):
    /// set -> APPLIED p50/p99 (one node; vehicle on the app's node; on
    /// another), closed-loop writes/s (one node redb, one node NATS, three
    /// nodes NATS), and for each fleet size the time from kill -9 of the node
    /// holding the fleet until all are online elsewhere and re-synced.
    Cluster(ClusterArgs),
    /// The raw-tonic baseline server alone (unary and bidi echo), on
    /// --listen; prints its address, stops when stdin closes. The write
    /// scenarios start it themselves.
    BaselineServer(BaselineServerArgs),
    /// latency, then idle-memory with 1,000 and with 10,000 vehicles.
    All,
}

#[derive(Debug, clap::Args)]
struct BaselineServerArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Serve mutual TLS with this certificate (PEM); needs --tls-key and
    /// --client-ca.
    #[arg(long, requires_all = ["tls_key", "client_ca"])]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA (PEM) that client certificates must chain to.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct FleetArgs {
    /// Applying lean vehicles to connect.
    #[arg(long, default_value_t = 10_000)]
    vehicles: usize,
    /// Vehicles per TCP connection (one HTTP/2 stream each); 1: a connection each.
    #[arg(long, default_value_t = 1)]
    per_connection: usize,
    /// Spread connections over 127.0.0.1 .. 127.0.0.N.
    #[arg(long, default_value_t = 8)]
    source_addresses: u8,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// App client connections (SDK clients) per server.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// What each write waits for: applied, delivered or none (ACCEPTED).
    #[arg(long, default_value = "applied", value_parser = parse_wait)]
    wait: WaitLevel,
    /// Count these `perf stat` events (comma-separated) in each server and in
    /// the bench around every run, and report them per write, e.g.
    /// `context-switches,raw_syscalls:sys_enter,probe_libc:malloc` (the last
    /// after `perf probe -x <libc.so.6> malloc`).
    #[arg(long)]
    perf_events: Option<String>,
}

impl FleetArgs {
    fn setup(&self) -> WriteSetup {
        WriteSetup {
            fleet: FleetOptions {
                vehicles: self.vehicles,
                per_connection: self.per_connection,
                source_addresses: self.source_addresses,
                concurrency: self.connect_concurrency,
                prefix: "bench-w".into(),
            },
            channels: self.channels,
            wait: self.wait,
            perf_events: self.perf_events.clone(),
        }
    }
}

#[derive(Debug, clap::Args)]
struct WriteRateArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    /// Writes per second (scheduled, whatever the answers do).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured time per server, split over the rounds.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Rounds, each a run against the baseline and one against tetherd
    /// (B T, T B, ...), summed per server: both see the same noise.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Unmeasured time at the same rate first, per server.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
}

#[derive(Debug, clap::Args)]
struct MaxThroughputArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    /// Writers in flight (at most the vehicle count).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Measured time per server, split over the rounds.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured time before each server's first round (later rounds: at
    /// most 0.5 s).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Rounds, each a run against the baseline and one against tetherd
    /// (B T, T B, ...), summed per server: both see the same noise.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
}

#[derive(Debug, clap::Args)]
struct FanOutArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    /// Writes in flight at once.
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
}

#[derive(Debug, clap::Args)]
struct CrashRoundsArgs {
    /// Kill-and-restart rounds.
    #[arg(long, default_value_t = 25)]
    rounds: usize,
    /// Writers, each with one write in flight.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Vehicles the writers pick from.
    #[arg(long, default_value_t = 200)]
    vehicles: usize,
    /// Shortest time a round writes before the kill.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    min_run: Duration,
    /// Longest time a round writes before the kill.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    max_run: Duration,
    /// Do not add a torn frame to the log after each kill.
    #[arg(long)]
    no_torn_tails: bool,
    /// The random seed.
    #[arg(long, default_value_t = 15)]
    seed: u64,
}

#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// Measured set -> APPLIED writes per setup.
    #[arg(long, default_value_t = 300)]
    writes: usize,
    /// Writes before measuring, per setup.
    #[arg(long, default_value_t = 30)]
    warmup: usize,
    /// Closed-loop writers in flight.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// How long each closed-loop setup runs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Fleet sizes for the kill measurement (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    fleets: Vec<usize>,
}

#[derive(Debug, clap::Args)]
struct SilentSocketsArgs {
    /// Applying mTLS vehicles (a connection and a certificate each) the
    /// writes go to.
    #[arg(long, default_value_t = 200)]
    vehicles: usize,
    /// New mTLS vehicles connected in each phase, timed to their Welcome.
    #[arg(long, default_value_t = 200)]
    new_vehicles: usize,
    /// New vehicles connecting at once.
    #[arg(long, default_value_t = 20)]
    connect_concurrency: usize,
    /// Silent TCP sockets held open during the attacked phase (with the
    /// vehicles, bounded by this process's open-files limit).
    #[arg(long, default_value_t = 5000)]
    silent: usize,
    /// Spread the silent sockets and the vehicles over 127.0.0.1 .. 127.0.0.N.
    #[arg(long, default_value_t = 16)]
    source_addresses: u8,
    /// Writes per second in each phase (scheduled, whatever the answers do).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Measured writes per phase last this long.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured writes at the same rate before the quiet phase.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// App client connections (SDK clients over mTLS).
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// tetherd's --max-connections (default: tetherd's own, 18,000); below
    /// the silent sockets plus the vehicles, new connections evict silent ones.
    #[arg(long)]
    max_connections: Option<usize>,
}

#[derive(Debug, clap::Args)]
struct LatencyArgs {
    /// Measured writes.
    #[arg(long, default_value_t = 2000)]
    writes: usize,
    /// Unmeasured writes first.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
}

#[derive(Debug, clap::Args)]
struct IdleMemoryArgs {
    /// Idle vehicles to connect, each on its own connection (bounded by this
    /// process's open-files limit and tetherd's --max-connections, 18,000).
    #[arg(long, default_value_t = 1000)]
    vehicles: usize,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Spread connections over 127.0.0.1 .. 127.0.0.N (1: the kernel chooses).
    #[arg(long, default_value_t = 1)]
    source_addresses: u8,
    /// How long to let tetherd settle before measuring.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: Duration,
}

impl IdleMemoryArgs {
    fn config(&self) -> IdleMemoryConfig {
        IdleMemoryConfig {
            vehicles: self.vehicles,
            concurrency: self.concurrency,
            source_addresses: self.source_addresses,
            settle: self.settle,
            security: Security::Plaintext,
        }
    }
}

#[derive(Debug, clap::Args)]
struct TlsArgs {
    /// Idle vehicles to connect in each run, each on its own connection with
    /// its own certificate (bounded by this process's open-files limit).
    #[arg(long, default_value_t = 1000)]
    vehicles: usize,
    /// Connects in flight at once (tetherd allows 256 TLS handshakes at once;
    /// beyond its listen backlog, 128, a connect may wait for a SYN resend).
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Spread connections over 127.0.0.1 .. 127.0.0.N.
    #[arg(long, default_value_t = 8)]
    source_addresses: u8,
    /// How long to let tetherd settle before measuring.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: Duration,
}

#[derive(Debug, clap::Args)]
struct ReconnectStormArgs {
    /// Vehicles: SDK agents, each on its own connection (bounded by this
    /// process's open-files limit).
    #[arg(long, default_value_t = 1000)]
    vehicles: usize,
    /// Plaintext instead of mutual TLS.
    #[arg(long)]
    plaintext: bool,
    /// Drain with SIGTERM (goodbye with a jittered reconnect hint) instead of
    /// a crash (SIGKILL).
    #[arg(long)]
    drain: bool,
    /// Spread the agents' connections over 127.0.0.1 .. 127.0.0.N: from one
    /// address, finding a free ephemeral port for each of 18,000 reconnects
    /// costs the simulator half its CPU.
    #[arg(long, default_value_t = 32)]
    source_addresses: u8,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Scenario::BaselineServer(a) = &args.scenario {
        let tls = match (&a.tls_cert, &a.tls_key, &a.client_ca) {
            (Some(cert), Some(key), Some(client_ca)) => {
                Some(ServerFiles { cert: cert.clone(), key: key.clone(), client_ca: client_ca.clone() })
            }
            _ => None,
        };
        return match baseline::serve_child(a.listen, tls).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tether-bench baseline-server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    tether_examples::logging::init("info");
    let baseline = match BaselineOptions::this_binary() {
        Ok(baseline) => baseline,
        Err(e) => {
            eprintln!("tether-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let options = TetherdOptions { path: args.tetherd.clone(), log: args.tetherd_log.clone(), args: Vec::new() };
    let plan = match &args.scenario {
        Scenario::Latency(a) => vec![Run::Latency(LatencyConfig { writes: a.writes, warmup: a.warmup })],
        Scenario::Traces(a) => vec![Run::Traces(LatencyConfig { writes: a.writes, warmup: a.warmup })],
        Scenario::IdleMemory(a) => vec![Run::IdleMemory(a.config())],
        Scenario::Tls(a) => vec![Run::Tls(TlsConfig {
            vehicles: a.vehicles,
            concurrency: a.concurrency,
            source_addresses: a.source_addresses,
            settle: a.settle,
            baseline: baseline.clone(),
        })],
        Scenario::ReconnectStorm(a) => vec![Run::ReconnectStorm(ReconnectStormConfig {
            vehicles: a.vehicles,
            tls: !a.plaintext,
            restart: if a.drain { Restart::Term } else { Restart::Kill },
            source_addresses: a.source_addresses,
        })],
        Scenario::WriteRate(a) => vec![Run::WriteRate(WriteRateConfig {
            setup: a.fleet.setup(),
            rate: a.rate,
            duration: a.duration,
            warmup: a.warmup,
            rounds: a.rounds as usize,
        })],
        Scenario::MaxThroughput(a) => vec![Run::MaxThroughput(MaxThroughputConfig {
            setup: a.fleet.setup(),
            concurrency: a.concurrency,
            duration: a.duration,
            warmup: a.warmup,
            rounds: a.rounds as usize,
        })],
        Scenario::FanOut(a) => {
            vec![Run::FanOut(FanOutConfig { setup: a.fleet.setup(), concurrency: a.concurrency })]
        }
        Scenario::SilentSockets(a) => vec![Run::SilentSockets(SilentSocketsConfig {
            vehicles: a.vehicles,
            new_vehicles: a.new_vehicles,
            connect_concurrency: a.connect_concurrency,
            silent: a.silent,
            source_addresses: a.source_addresses,
            rate: a.rate,
            duration: a.duration,
            warmup: a.warmup,
            channels: a.channels,
            max_connections: a.max_connections,
        })],
        Scenario::Cluster(a) => vec![Run::Cluster(ClusterConfig {
            tetherd: options.clone(),
            latency: LatencyConfig { writes: a.writes, warmup: a.warmup },
            writers: a.writers,
            duration: a.duration,
            fleets: a.fleets.clone(),
        })],
        Scenario::CrashRounds(a) => vec![Run::CrashRounds(CrashRoundsConfig {
            tetherd: options.clone(),
            rounds: a.rounds,
            writers: a.writers,
            vehicles: a.vehicles,
            run_between: (a.min_run, a.max_run.max(a.min_run)),
            torn_tails: !a.no_torn_tails,
            seed: a.seed,
        })],
        Scenario::BaselineServer(_) => unreachable!("served above"),
        Scenario::All => {
            let idle = |vehicles| IdleMemoryConfig {
                vehicles,
                concurrency: 200,
                source_addresses: 1,
                settle: Duration::from_secs(2),
                security: Security::Plaintext,
            };
            vec![
                Run::Latency(LatencyConfig { writes: 2000, warmup: 100 }),
                Run::IdleMemory(idle(1000)),
                Run::IdleMemory(idle(10_000)),
            ]
        }
    };
    let signals = signal(SignalKind::interrupt()).and_then(|i| Ok((i, signal(SignalKind::terminate())?)));
    let (mut interrupt, mut terminate) = match signals {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("tether-bench: cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    for run in plan {
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(args.timeout, run.run(&options, &baseline)) => outcome,
            // Dropping the scenario kills its tetherd (kill_on_drop).
            _ = interrupt.recv() => {
                eprintln!("tether-bench: interrupted");
                return ExitCode::from(130);
            }
            _ = terminate.recv() => {
                eprintln!("tether-bench: terminated");
                return ExitCode::from(143);
            }
        };
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("tether-bench: {e:#}");
                return ExitCode::FAILURE;
            }
            Err(_) => {
                eprintln!("tether-bench: gave up after {:?} (--timeout)", args.timeout);
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// One scenario on a fresh tetherd.
enum Run {
    Latency(LatencyConfig),
    IdleMemory(IdleMemoryConfig),
    Traces(LatencyConfig),
    Tls(TlsConfig),
    ReconnectStorm(ReconnectStormConfig),
    WriteRate(WriteRateConfig),
    MaxThroughput(MaxThroughputConfig),
    FanOut(FanOutConfig),
    SilentSockets(SilentSocketsConfig),
    CrashRounds(CrashRoundsConfig),
    Cluster(ClusterConfig),
}

impl Run {
    async fn run(&self, options: &TetherdOptions, baseline: &BaselineOptions) -> anyhow::Result<()> {
        // These start their own tetherd per mode.
        match self {
            Run::Traces(config) => return traces::run(options, config).await.map(|r| print_report(&r)),
            Run::Tls(config) => return tls::run(options, config).await.map(|r| print_report(&r)),
            Run::ReconnectStorm(config) => {
                return reconnect_storm::run(options, config).await.map(|r| print_report(&r));
            }
            Run::WriteRate(config) => {
                return writes::write_rate(options, baseline, config).await.map(|r| print_report(&r));
            }
            Run::MaxThroughput(config) => {
                return writes::max_throughput(options, baseline, config).await.map(|r| print_report(&r));
            }
            Run::FanOut(config) => return writes::fan_out(options, config).await.map(|r| print_report(&r)),
            Run::SilentSockets(config) => {
                return silent_sockets::run(options, config).await.map(|r| print_report(&r));
            }
            Run::CrashRounds(config) => {
                let report = crash_rounds::run(config).await?;
                print_report(&report);
                anyhow::ensure!(report.lost == 0, "{} acknowledged write(s) lost", report.lost);
                return Ok(());
            }
            Run::Cluster(config) => return cluster::run(config).await.map(|r| print_report(&r)),
            Run::Latency(_) | Run::IdleMemory(_) => {}
        }
        let server = Tetherd::start(options).await?;
        let outcome = match self {
            Run::Latency(config) => latency::run(&server, config).await.map(|r| print_report(&r)),
            Run::IdleMemory(config) => idle_memory::run(&server, config).await.map(|r| print_report(&r)),
            Run::Traces(_)
            | Run::Tls(_)
            | Run::ReconnectStorm(_)
            | Run::WriteRate(_)
            | Run::MaxThroughput(_)
            | Run::FanOut(_)
            | Run::SilentSockets(_)
            | Run::CrashRounds(_)
            | Run::Cluster(_) => unreachable!("handled above"),
        };
        server.stop().await?;
        outcome
    }
}
