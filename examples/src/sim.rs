//! The fleet simulator's [`Fleet`]: many SDK agents in one process, multiplexed
//! over a few HTTP/2 connections, each connection through its own
//! [`FaultProxy`] so the links are flaky for real.
//!
//! Every simulated vehicle is a real [`Agent`] with one [`SimCapability`] per
//! top-level state field and a "parked" precondition on its windows, which
//! holds for all but a configurable share of the fleet.

mod capability;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tether_sdk::pb::state::v1::{Charging, Climate, Doors, Trunk, VehicleState, Windows};
use tether_sdk::{Agent, AgentHandle, LockState, OpenState, RawState, StateSchema, Tls};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

use crate::faults::{FaultCounters, Faults};
use crate::proxy::FaultProxy;

pub use capability::SimCapability;
pub use stats::{FleetStats, FleetStatus};

/// The top-level fields of the state; each simulated vehicle has a capability
/// for every one.
pub const CAPABILITIES: [&str; 7] = ["windows", "doors", "trunk", "climate", "charging", "lights", "horn"];

/// tetherd accepts at most this many streams per connection by default.
const SERVER_MAX_STREAMS: usize = 1000;
/// Events an agent buffers for its observer, which reads them at once. (The
/// SDK default, 128, is allocated up front.)
const EVENT_CAPACITY: usize = 64;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// tetherd's URL, e.g. `http://127.0.0.1:50051`.
    pub server: String,
    /// How many vehicles.
    pub vehicles: usize,
    /// Vehicles per HTTP/2 connection.
    pub per_connection: usize,
    /// Shortest time an actuator takes.
    pub apply_min: Duration,
    /// Longest time an actuator takes.
    pub apply_max: Duration,
    /// Share of the vehicles that are not parked (their windows refuse).
    pub unparked_share: f64,
    /// What the links suffer; [`Faults::NONE`] connects straight to tetherd.
    pub faults: Faults,
    /// Where agents persist the last generation they handled, so a restarted
    /// simulator does not apply old fields again (`None`: they start afresh).
    pub state_dir: Option<PathBuf>,
    /// Mutual TLS: each vehicle presents its own certificate (so each has its
    /// own connection). `None`: plaintext.
    pub tls: Option<FleetTls>,
    /// Connections leave from 127.0.0.1 to 127.0.0.N in turn, each address
    /// with its own ephemeral ports ([`crate::loopback`]); 1: the kernel's
    /// choice. Above 1 the vehicles must dial a loopback IPv4 address (tetherd
    /// itself, or the link proxies).
    pub source_addresses: u8,
}

/// The fleet's TLS: the CA that signed tetherd's certificate and a folder of
/// vehicle certificates named `<vehicle id>.pem` / `<vehicle id>.key` (as
/// `tether certs --vehicles sim-0000,sim-0001,…` writes them).
#[derive(Debug, Clone)]
pub struct FleetTls {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The folder of vehicle certificates and keys.
    pub cert_dir: PathBuf,
    /// The name tetherd's certificate must carry (default: the server URL's host).
    pub domain: Option<String>,
}

impl FleetTls {
    /// The TLS settings of one vehicle, expecting tetherd's certificate to
    /// name `host` unless a domain was given.
    fn for_vehicle(&self, id: &str, host: &str) -> anyhow::Result<Tls> {
        let (cert, key) = (self.cert_dir.join(format!("{id}.pem")), self.cert_dir.join(format!("{id}.key")));
        let tls = Tls::from_ca_file(&self.ca)?.identity_files(&cert, &key).with_context(|| {
            format!(
                "no certificate for {id} in {} (make them with `tether certs --vehicles …`)",
                self.cert_dir.display()
            )
        })?;
        Ok(tls.domain(self.domain.clone().unwrap_or_else(|| host.to_string())))
    }
}

/// The id of the `index`-th simulated vehicle: `sim-0000`, `sim-0001`, ...
pub fn vehicle_id(index: usize) -> String {
    format!("sim-{index:04}")
}

/// Whether the `index`-th vehicle is parked, when `unparked_share` of the
/// fleet is not. Deterministic and evenly spread: at a share of 0.1 exactly
/// every tenth vehicle (sim-0009, sim-0019, ...) is not parked, and sim-0000
/// is parked at any share below 1.
pub fn is_parked(index: usize, unparked_share: f64) -> bool {
    let share = unparked_share.clamp(0.0, 1.0);
    // The count of unparked vehicles among the first n is floor(n * share);
    // this vehicle is unparked when it raises that count.
    let before = (index as f64 * share).floor();
    let through = ((index + 1) as f64 * share).floor();
    through <= before
}

/// A running simulated fleet. Stop it with [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct Fleet {
    agents: Vec<AgentHandle>,
    proxies: Vec<FaultProxy>,
    observers: TaskTracker,
    stats: Arc<FleetStats>,
    faults: Arc<FaultCounters>,
    unparked: usize,
    connections: usize,
    /// Decoded once and shared: each agent would otherwise decode its own.
    schema: StateSchema,
}

impl Fleet {
    /// Starts the proxies and the agents. Agents connect in the background
    /// (and keep retrying while tetherd is unreachable).
    pub async fn start(config: &FleetConfig) -> anyhow::Result<Fleet> {
        anyhow::ensure!(config.vehicles > 0, "simulate at least one vehicle");
        anyhow::ensure!(
            (1..=SERVER_MAX_STREAMS).contains(&config.per_connection),
            "--per-connection must be 1 to {SERVER_MAX_STREAMS} (tetherd's default stream limit per connection)"
        );
        anyhow::ensure!(config.apply_min <= config.apply_max, "--apply-min must not exceed --apply-max");
        anyhow::ensure!(
            config.tls.is_none() || config.per_connection == 1,
            "with TLS each vehicle presents its own certificate on its own connection: use --per-connection 1"
        );
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        let host = crate::server_addr::host(&config.server)?;
        anyhow::ensure!(config.source_addresses >= 1, "--source-addresses must be at least 1");
        anyhow::ensure!(
            config.source_addresses == 1
                || !config.faults.is_none()
                || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback()),
            "--source-addresses above 1 spreads connections over 127.0.0.x, so the server must be a loopback IPv4 address (not {host})"
        );
        let faults = Arc::new(FaultCounters::default());
        let upstream =
            if config.faults.is_none() { None } else { Some(crate::server_addr::resolve(&config.server).await?) };
        let mut fleet = Fleet {
            agents: Vec::with_capacity(config.vehicles),
            proxies: Vec::new(),
            observers: TaskTracker::new(),
            stats: Arc::new(FleetStats::default()),
            faults: faults.clone(),
            unparked: 0,
            connections: 0,
            schema: StateSchema::contract(),
        };
        for first in (0..config.vehicles).step_by(config.per_connection) {
            let url = match upstream {
                Some(upstream) => {
                    let proxy = FaultProxy::start(upstream, config.faults, faults.clone())
                        .await
                        .context("cannot start a link proxy on 127.0.0.1")?;
                    let url = format!("{scheme}://{}", proxy.local_addr());
                    fleet.proxies.push(proxy);
                    url
                }
                None => config.server.clone(),
            };
            // The SDK's own connection settings (connect within 5 s; HTTP/2
            // keepalive every 20 s, answered within 10 s), so a dead link is
            // noticed even when idle.
            let tls = config.tls.as_ref().map(|tls| tls.for_vehicle(&vehicle_id(first), &host)).transpose()?;
            let channel = match crate::loopback::source_address(fleet.connections, config.source_addresses) {
                Some(source) => tether_sdk::lazy_channel_from(&url, tls.as_ref(), source)?,
                None => tether_sdk::lazy_channel(&url, tls.as_ref())?,
            };
            fleet.connections += 1;
            let last = (first + config.per_connection).min(config.vehicles);
            for index in first..last {
                fleet.spawn_vehicle(config, index, &url, channel.clone());
            }
        }
        tracing::info!(
            vehicles = config.vehicles,
            connections = fleet.connections,
            unparked = fleet.unparked,
            faults = %config.faults,
            "fleet started"
        );
        Ok(fleet)
    }

    fn spawn_vehicle(&mut self, config: &FleetConfig, index: usize, url: &str, channel: Channel) {
        let parked = is_parked(index, config.unparked_share);
        if !parked {
            self.unparked += 1;
        }
        let mut builder = Agent::builder(url, vehicle_id(index))
            .channel(channel)
            .agent_version(concat!("fleet-sim/", env!("CARGO_PKG_VERSION")))
            .schema(self.schema.clone())
            .event_capacity(EVENT_CAPACITY)
            .initial_actual(parked_state())
            .precondition("windows", "parked", move |_| parked);
        if let Some(dir) = &config.state_dir {
            builder = builder.state_dir(dir);
        }
        for name in CAPABILITIES {
            builder = builder.capability(SimCapability::new(name, config.apply_min, config.apply_max));
        }
        let agent = builder.spawn();
        let mut events = agent.events();
        let stats = self.stats.clone();
        // Ends when the agent has stopped and its event channel closes.
        self.observers.spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => stats.record(&event),
                    Err(RecvError::Lagged(missed)) => tracing::debug!(missed, "observer fell behind"),
                    Err(RecvError::Closed) => return,
                }
            }
        });
        self.agents.push(agent);
    }

    /// The status now.
    pub fn status(&self) -> FleetStatus {
        let connected = self.agents.iter().filter(|a| a.session_id().is_some()).count();
        self.stats.status(connected, self.agents.len(), self.faults.read())
    }

    /// Vehicles that are not parked (their window changes are refused).
    pub fn unparked(&self) -> usize {
        self.unparked
    }

    /// HTTP/2 connections the vehicles share.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// Stops every agent (closing its stream), then every proxy, and waits
    /// until all have stopped. Returns the final status.
    pub async fn shutdown(self) -> FleetStatus {
        let Fleet { agents, proxies, observers, stats, faults, .. } = self;
        let vehicles = agents.len();
        futures::future::join_all(agents.into_iter().map(AgentHandle::shutdown)).await;
        futures::future::join_all(proxies.into_iter().map(FaultProxy::close)).await;
        observers.close();
        observers.wait().await;
        stats.status(0, vehicles, faults.read())
    }
}

/// A parked car's actual state: windows closed, doors locked, trunk and
/// charge port closed, climate off at 20 °C, charge limit 80 %.
pub fn parked_state() -> RawState {
    let state = VehicleState {
        windows: Some(Windows {
            front_left: Some(0),
            front_right: Some(0),
            rear_left: Some(0),
            rear_right: Some(0),
            sunroof: Some(0),
        }),
        doors: Some(Doors { lock: Some(LockState::Locked as i32) }),
        trunk: Some(Trunk { lid: Some(OpenState::Closed as i32) }),
        climate: Some(Climate { on: Some(false), target_temperature_celsius: Some(20.0) }),
        charging: Some(Charging { limit_percent: Some(80), port: Some(OpenState::Closed as i32) }),
        lights: None,
        horn: None,
    };
    RawState::from_typed(&state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_parking() {
        assert_eq!(vehicle_id(0), "sim-0000");
        assert_eq!(vehicle_id(12345), "sim-12345");
        let unparked: Vec<usize> = (0..100).filter(|&i| !is_parked(i, 0.1)).collect();
        assert_eq!(unparked, [9, 19, 29, 39, 49, 59, 69, 79, 89, 99]);
        assert!((0..1000).all(|i| is_parked(i, 0.0)));
        assert!((0..1000).all(|i| !is_parked(i, 1.0)));
        assert_eq!((0..1000).filter(|&i| !is_parked(i, 0.25)).count(), 250);
        assert!(is_parked(0, 0.99));
    }

    #[test]
    fn the_parked_state_decodes() {
        let state = parked_state().decode_typed().unwrap();
        assert_eq!(state.windows.unwrap().front_left, Some(0));
        assert_eq!(state.doors.unwrap().lock, Some(LockState::Locked as i32));
    }
}
