//! `fleet-sim`: simulates a fleet of vehicles (SDK agents) connected to tetherd
//! over flaky links, and prints a status line every few seconds.
//!
//! ```text
//! fleet-sim --vehicles 100 --server http://127.0.0.1:50051
//! fleet-sim --no-faults --duration 30s
//! fleet-sim --server https://localhost:50051 --ca tether-certs/ca.pem \
//!     --cert-dir tether-certs --per-connection 1 --vehicles 2
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tether_examples::faults::Faults;
use tether_examples::sim::{Fleet, FleetConfig, FleetTls};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, MissedTickBehavior};

/// Simulates N vehicles, each a real tether agent, over flaky links.
///
/// Vehicles are named sim-0000, sim-0001, ... Each has a capability for every
/// top-level state field (windows, doors, trunk, climate, charging, lights,
/// horn) that takes a random time to apply, and its windows refuse changes
/// unless the car is parked (every tenth car is not, by default). Each group
/// of vehicles shares one HTTP/2 connection, through a local proxy that cuts,
/// stalls and delays it.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// tetherd's URL.
    #[arg(long, env = "TETHER_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// How many vehicles to simulate.
    #[arg(long, default_value_t = 100)]
    vehicles: usize,
    /// Vehicles sharing one HTTP/2 connection (and one link proxy).
    #[arg(long, default_value_t = 100)]
    per_connection: usize,
    /// Shortest time an actuator takes to apply a change.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    apply_min: Duration,
    /// Longest time an actuator takes to apply a change.
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    apply_max: Duration,
    /// Share of the vehicles that are not parked (their windows refuse to move).
    #[arg(long, default_value_t = 0.1, value_parser = share)]
    unparked_share: f64,
    /// Connection cuts per connection per minute (like entering a tunnel).
    #[arg(long, default_value_t = 0.2, value_parser = rate)]
    drop_rate: f64,
    /// Stalls per connection per minute (nothing forwarded, like a handover).
    #[arg(long, default_value_t = 0.5, value_parser = rate)]
    stall_rate: f64,
    /// How long a stall lasts.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    stall_for: Duration,
    /// Latency added one way to everything sent over a link.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// Perfect links: connect straight to tetherd, no proxy.
    #[arg(long)]
    no_faults: bool,
    /// How often to print the status line.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    status_every: Duration,
    /// Persist each vehicle's last handled generation here, so a restarted
    /// simulator does not apply already-handled fields again.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Mutual TLS: the CA that signed tetherd's certificate (PEM); the server
    /// URL must be https:// and --cert-dir names each vehicle's certificate.
    #[arg(long, env = "TETHER_CA", value_name = "FILE", requires = "cert_dir")]
    ca: Option<PathBuf>,
    /// Vehicle certificates `<id>.pem` and keys `<id>.key`, e.g. from
    /// `tether certs --vehicles sim-0000,sim-0001,...` (with --ca).
    #[arg(long, value_name = "DIR", requires = "ca")]
    cert_dir: Option<PathBuf>,
    /// The name tetherd's certificate must carry (default: the URL's host).
    #[arg(long, env = "TETHER_TLS_DOMAIN", value_name = "NAME")]
    tls_domain: Option<String>,
    /// Spread the connections over 127.0.0.1 .. 127.0.0.N, each address with
    /// its own ephemeral ports (for tens of thousands of connections to a
    /// loopback tetherd); 1: the kernel's choice.
    #[arg(long, default_value_t = 1)]
    source_addresses: u8,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

fn share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) { Ok(v) } else { Err("must lie between 0 and 1".into()) }
}

fn rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v >= 0.0 { Ok(v) } else { Err("must be a non-negative number".into()) }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tether_examples::logging::init("info,tether_sdk=error");
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(!args.status_every.is_zero(), "--status-every must be positive");
    let faults = if args.no_faults {
        Faults::NONE
    } else {
        Faults {
            drop_per_minute: args.drop_rate,
            stall_per_minute: args.stall_rate,
            stall_for: args.stall_for,
            delay: args.delay,
        }
    };
    let config = FleetConfig {
        server: args.server.clone(),
        vehicles: args.vehicles,
        per_connection: args.per_connection,
        apply_min: args.apply_min,
        apply_max: args.apply_max,
        unparked_share: args.unparked_share,
        faults,
        state_dir: args.state_dir.clone(),
        tls: match (args.ca.clone(), args.cert_dir.clone()) {
            (Some(ca), Some(cert_dir)) => Some(FleetTls { ca, cert_dir, domain: args.tls_domain.clone() }),
            _ => None,
        },
        source_addresses: args.source_addresses,
    };
    anyhow::ensure!(
        config.tls.is_some() == args.server.starts_with("https://"),
        "an https:// server goes with --ca and --cert-dir (and those with https://)"
    );
    let fleet = Fleet::start(&config).await?;
    println!(
        "fleet-sim: {} vehicles (sim-0000..) on {} connection(s) to {}; {} not parked; links: {}",
        args.vehicles,
        fleet.connections(),
        args.server,
        fleet.unparked(),
        faults
    );

    let started = Instant::now();
    let end = async {
        match args.duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(end);
    let mut status = tokio::time::interval_at(started + args.status_every, args.status_every);
    status.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Registered once, before the loop: a signal arriving between two
    // iterations is kept, not lost.
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            () = &mut end => break,
            _ = status.tick() => println!("[{:>5.0}s] {}", started.elapsed().as_secs_f64(), fleet.status()),
        }
    }

    println!("fleet-sim: stopping {} agents...", args.vehicles);
    let last = fleet.shutdown().await;
    println!("[{:>5.0}s] stopped | {last}", started.elapsed().as_secs_f64());
    Ok(())
}
