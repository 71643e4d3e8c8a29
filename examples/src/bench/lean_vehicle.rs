//! [`LeanVehicle`]: the least a vehicle must do to hold a session — say
//! Hello, read Welcome, answer heartbeats and acknowledge snapshots — spoken
//! in the raw vehicle protocol (`tether_sdk::pb::vehicle::v1`). Much lighter
//! than a full agent, so ten thousand fit in the benchmark's process and the
//! server's side of the bill is what gets measured. With
//! [`hold_applying`](LeanVehicle::hold_applying) it also applies every
//! snapshot at once and reports each new field APPLIED (actual = desired),
//! as the SDK agent's applier would with instant capabilities, sending the
//! Report alone (it acknowledges the snapshot too).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use tether_sdk::FieldStatus;
use tether_sdk::pb::vehicle::v1::server_message::Kind as ServerKind;
use tether_sdk::pb::vehicle::v1::vehicle_message::Kind as VehicleKind;
use tether_sdk::pb::vehicle::v1::vehicle_service_client::VehicleServiceClient;
use tether_sdk::pb::vehicle::v1::{
    Ack, DesiredState, FieldResult, Heartbeat, Hello, Report, ServerMessage, VehicleMessage, Welcome,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// How long connecting and the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Messages queued to the server (heartbeat answers and acks are rare).
const OUTBOUND: usize = 4;

/// A vehicle with an open session.
#[derive(Debug)]
pub struct LeanVehicle {
    vehicle_id: String,
    welcome: Welcome,
    outbound: mpsc::Sender<VehicleMessage>,
    inbound: Streaming<ServerMessage>,
    sequence: u64,
    connect_time: Duration,
    session_time: Duration,
}

impl LeanVehicle {
    /// Opens a connection of its own to `url` (from `local_address` if
    /// given; over TLS with `tls`, which then needs an `https` URL), says
    /// Hello as `vehicle_id` and waits for Welcome.
    pub async fn connect(
        url: &str,
        local_address: Option<IpAddr>,
        tls: Option<ClientTlsConfig>,
        vehicle_id: String,
    ) -> anyhow::Result<LeanVehicle> {
        // No HTTP/2 keepalive: an idle session costs only what tetherd holds.
        let mut endpoint = Endpoint::from_shared(url.to_string())?.local_address(local_address).tcp_nodelay(true);
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).context("bad TLS configuration")?;
        }
        tokio::time::timeout(HANDSHAKE_TIMEOUT, Self::handshake(endpoint, vehicle_id))
            .await
            .with_context(|| format!("no Welcome within {HANDSHAKE_TIMEOUT:?}"))?
    }

    /// Opens a session over `channel`, an HTTP/2 connection other vehicles
    /// may share (one stream each), saying Hello as `vehicle_id`.
    pub async fn connect_over(channel: Channel, vehicle_id: String) -> anyhow::Result<LeanVehicle> {
        let started = Instant::now();
        tokio::time::timeout(HANDSHAKE_TIMEOUT, Self::open_session(channel, vehicle_id, started, Duration::ZERO))
            .await
            .with_context(|| format!("no Welcome within {HANDSHAKE_TIMEOUT:?}"))?
    }

    async fn handshake(endpoint: Endpoint, vehicle_id: String) -> anyhow::Result<LeanVehicle> {
        let started = Instant::now();
        // TCP, then TLS if configured; hyper's HTTP/2 handshake does not wait
        // for the server.
        let channel = endpoint.connect().await.context("cannot connect")?;
        let connect_time = started.elapsed();
        Self::open_session(channel, vehicle_id, started, connect_time).await
    }

    async fn open_session(
        channel: Channel,
        vehicle_id: String,
        started: Instant,
        connect_time: Duration,
    ) -> anyhow::Result<LeanVehicle> {
        let (outbound, queued) = mpsc::channel(OUTBOUND);
        let hello = Hello {
            vehicle_id: vehicle_id.clone(),
            agent_version: concat!("tether-bench-lean/", env!("CARGO_PKG_VERSION")).to_string(),
            ..Hello::default()
        };
        // Queued before the call: tetherd answers the call once Hello came.
        outbound.try_send(message(VehicleKind::Hello(hello))).context("cannot queue Hello")?;
        let mut inbound = VehicleServiceClient::new(channel)
            .connect(ReceiverStream::new(queued))
            .await
            .context("Connect failed")?
            .into_inner();
        let welcome = match inbound.message().await.context("the stream failed before Welcome")? {
            Some(ServerMessage { kind: Some(ServerKind::Welcome(welcome)) }) => welcome,
            Some(ServerMessage { kind: Some(ServerKind::Goodbye(goodbye)) }) => {
                bail!("tetherd said goodbye instead of Welcome: {}", goodbye.message)
            }
            Some(other) => bail!("expected Welcome first, got {:?}", other.kind),
            None => bail!("tetherd closed the stream before Welcome"),
        };
        let session_time = started.elapsed();
        Ok(LeanVehicle { vehicle_id, welcome, outbound, inbound, sequence: 0, connect_time, session_time })
    }

    /// The session's id.
    pub fn session_id(&self) -> u64 {
        self.welcome.session_id
    }

    /// How long the connection took to open: TCP, and the TLS handshake if
    /// any.
    pub fn connect_time(&self) -> Duration {
        self.connect_time
    }

    /// How long the session took to open: the connection, then Hello until
    /// Welcome.
    pub fn session_time(&self) -> Duration {
        self.session_time
    }

    /// Holds the session until `stop` (answering heartbeats, acknowledging
    /// snapshots), or until tetherd ends it.
    pub async fn hold(self, stop: CancellationToken) {
        self.run(stop, None).await;
    }

    /// Like [`hold`](Self::hold), and applies every snapshot at once: instead
    /// of an Ack, a Report with actual state = the desired state and each field
    /// newer than the last handled generation APPLIED. Each report that
    /// applied something is recorded in `applied` (what this vehicle handled,
    /// and when).
    pub async fn hold_applying(self, stop: CancellationToken, applied: AppliedSlot) {
        self.run(stop, Some(applied)).await;
    }

    async fn run(mut self, stop: CancellationToken, applied: Option<AppliedSlot>) {
        // The highest desired generation handled (the agent's last_applied).
        let mut handled = 0;
        loop {
            let received = tokio::select! {
                _ = stop.cancelled() => return,
                received = self.inbound.message() => received,
            };
            let reply = match received {
                Ok(Some(ServerMessage { kind: Some(ServerKind::Heartbeat(beat)) })) if beat.answers == 0 => {
                    self.sequence += 1;
                    VehicleKind::Heartbeat(Heartbeat {
                        sequence: self.sequence,
                        sent_at: Some(SystemTime::now().into()),
                        answers: beat.sequence,
                    })
                }
                Ok(Some(ServerMessage { kind: Some(ServerKind::Desired(desired)) })) => {
                    if let Some(slot) = &applied {
                        slot.arrived(desired.generation);
                    }
                    let Some(slot) = &applied else {
                        let ack = VehicleKind::Ack(Ack { generation: desired.generation });
                        if !self.send(&stop, ack).await {
                            return;
                        }
                        continue;
                    };
                    // Applied at once: the Report alone acknowledges the
                    // snapshot too (the protocol's step 3), one message not two.
                    let (report, fields) = apply(desired, &mut handled);
                    let observed = report.observed_generation;
                    if !self.send(&stop, VehicleKind::Report(report)).await {
                        return;
                    }
                    if fields > 0 {
                        slot.record(observed, fields);
                    }
                    continue;
                }
                Ok(Some(ServerMessage { kind: Some(ServerKind::Goodbye(goodbye)) })) => {
                    tracing::debug!(vehicle_id = %self.vehicle_id, message = %goodbye.message, "goodbye");
                    return;
                }
                Ok(Some(_)) => continue,
                Ok(None) => return,
                Err(status) => {
                    tracing::debug!(vehicle_id = %self.vehicle_id, %status, "session lost");
                    return;
                }
            };
            if !self.send(&stop, reply).await {
                return;
            }
        }
    }

    /// Queues `kind` to tetherd; false when stopped or the stream is gone.
    async fn send(&self, stop: &CancellationToken, kind: VehicleKind) -> bool {
        tokio::select! {
            _ = stop.cancelled() => false,
            sent = self.outbound.send(message(kind)) => sent.is_ok(),
        }
    }
}

/// Applies `desired` at once: every field newer than `handled` is APPLIED and
/// the actual state becomes the desired state. Returns the Report and how
/// many fields it applied; moves `handled` up to the snapshot's generation.
fn apply(desired: DesiredState, handled: &mut u64) -> (Report, usize) {
    let before = *handled;
    let results: Vec<FieldResult> = desired
        .fields
        .into_iter()
        .filter(|meta| meta.generation > before)
        .map(|meta| FieldResult {
            path: meta.path,
            generation: meta.generation,
            status: FieldStatus::Applied as i32,
            reason: String::new(),
            message: String::new(),
        })
        .collect();
    *handled = before.max(desired.generation);
    let fields = results.len();
    (Report { observed_generation: *handled, actual: desired.state, results }, fields)
}

/// Where the vehicles of a fleet record what they applied: per vehicle the
/// highest generation applied, and fleet-wide counts and the time of the
/// latest report, so a scenario can wait until every vehicle was reached.
#[derive(Debug)]
pub struct AppliedLog {
    started: Instant,
    generations: Box<[AtomicU64]>,
    /// Per vehicle, the generation of the latest snapshot that arrived, and
    /// when (µs after `started`): where a write's latency splits.
    arrived_generations: Box<[AtomicU64]>,
    arrived_us: Box<[AtomicU64]>,
    reports: AtomicU64,
    fields: AtomicU64,
    last_report_us: AtomicU64,
    recorded: tokio::sync::Notify,
}

impl AppliedLog {
    /// A log for `vehicles` vehicles; times count from now.
    pub fn new(vehicles: usize) -> std::sync::Arc<AppliedLog> {
        std::sync::Arc::new(AppliedLog {
            started: Instant::now(),
            generations: (0..vehicles).map(|_| AtomicU64::new(0)).collect(),
            arrived_generations: (0..vehicles).map(|_| AtomicU64::new(0)).collect(),
            arrived_us: (0..vehicles).map(|_| AtomicU64::new(0)).collect(),
            reports: AtomicU64::new(0),
            fields: AtomicU64::new(0),
            last_report_us: AtomicU64::new(0),
            recorded: tokio::sync::Notify::new(),
        })
    }

    /// The slot of vehicle `index`.
    pub fn slot(self: &std::sync::Arc<Self>, index: usize) -> AppliedSlot {
        assert!(index < self.generations.len(), "vehicle {index} has no slot");
        AppliedSlot { log: self.clone(), index }
    }

    /// Reports that applied at least one field.
    pub fn reports(&self) -> u64 {
        self.reports.load(Ordering::Acquire)
    }

    /// Fields reported APPLIED.
    pub fn fields(&self) -> u64 {
        self.fields.load(Ordering::Acquire)
    }

    /// Vehicles whose applied generation is at least `generations[i]`
    /// (`None`: at least one field applied).
    pub fn vehicles_at(&self, generations: Option<&[u64]>) -> usize {
        self.generations
            .iter()
            .enumerate()
            .filter(|(i, g)| {
                let g = g.load(Ordering::Acquire);
                match generations.and_then(|want| want.get(*i)) {
                    Some(want) => g >= *want,
                    None => g > 0,
                }
            })
            .count()
    }

    /// The highest generation vehicle `index` applied (0: none).
    pub fn generation(&self, index: usize) -> u64 {
        self.generations.get(index).map_or(0, |g| g.load(Ordering::Acquire))
    }

    /// When vehicle `index` received the snapshot of `generation`, if that is
    /// the latest it received (a later write may have overtaken it).
    pub fn arrival(&self, index: usize, generation: u64) -> Option<Instant> {
        let latest = self.arrived_generations.get(index)?;
        if latest.load(Ordering::Acquire) != generation {
            return None;
        }
        let at = self.started + Duration::from_micros(self.arrived_us[index].load(Ordering::Acquire));
        // Still the same snapshot after reading its time: the pair belongs together.
        (latest.load(Ordering::Acquire) == generation).then_some(at)
    }

    /// When the latest applying report was sent, counted from `since`
    /// (zero if none came after it).
    pub fn last_report_since(&self, since: Instant) -> Duration {
        let last = self.started + Duration::from_micros(self.last_report_us.load(Ordering::Acquire));
        last.saturating_duration_since(since)
    }

    /// Waits until `done(self)` holds, re-checking after every report, at
    /// most `timeout`.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&AppliedLog) -> bool) -> bool {
        let wait = async {
            loop {
                let notified = self.recorded.notified();
                if done(self) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

/// One vehicle's place in an [`AppliedLog`].
#[derive(Debug, Clone)]
pub struct AppliedSlot {
    log: std::sync::Arc<AppliedLog>,
    index: usize,
}

impl AppliedSlot {
    /// A snapshot of `generation` arrived (before it is acknowledged).
    fn arrived(&self, generation: u64) {
        let log = &self.log;
        let micros = u64::try_from(log.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        // Generation 0 first: a reader never pairs the new time with the old generation.
        log.arrived_generations[self.index].store(0, Ordering::Release);
        log.arrived_us[self.index].store(micros, Ordering::Release);
        log.arrived_generations[self.index].store(generation, Ordering::Release);
    }

    fn record(&self, generation: u64, fields: usize) {
        let log = &self.log;
        log.generations[self.index].fetch_max(generation, Ordering::AcqRel);
        log.fields.fetch_add(fields as u64, Ordering::AcqRel);
        let micros = u64::try_from(log.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        log.last_report_us.fetch_max(micros, Ordering::AcqRel);
        log.reports.fetch_add(1, Ordering::AcqRel);
        log.recorded.notify_waiters();
    }
}

fn message(kind: VehicleKind) -> VehicleMessage {
    VehicleMessage { kind: Some(kind) }
}
