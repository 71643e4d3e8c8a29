//! [`LeanVehicle`]: the least a vehicle must do to hold a session — say
//! Hello, read Welcome, answer heartbeats and acknowledge snapshots — spoken
//! in the raw vehicle protocol (`tether_sdk::pb::vehicle::v1`). Much lighter
//! than a full agent, so ten thousand fit in the benchmark's process and the
//! server's side of the bill is what gets measured.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use tether_sdk::pb::vehicle::v1::server_message::Kind as ServerKind;
use tether_sdk::pb::vehicle::v1::vehicle_message::Kind as VehicleKind;
use tether_sdk::pb::vehicle::v1::vehicle_service_client::VehicleServiceClient;
use tether_sdk::pb::vehicle::v1::{Ack, Heartbeat, Hello, ServerMessage, VehicleMessage, Welcome};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::{ClientTlsConfig, Endpoint};

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

    async fn handshake(endpoint: Endpoint, vehicle_id: String) -> anyhow::Result<LeanVehicle> {
        let started = Instant::now();
        // TCP, then TLS if configured; hyper's HTTP/2 handshake does not wait
        // for the server.
        let channel = endpoint.connect().await.context("cannot connect")?;
        let connect_time = started.elapsed();
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
    pub async fn hold(mut self, stop: CancellationToken) {
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
                    VehicleKind::Ack(Ack { generation: desired.generation })
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
            let sent = tokio::select! {
                _ = stop.cancelled() => return,
                sent = self.outbound.send(message(reply)) => sent,
            };
            if sent.is_err() {
                return;
            }
        }
    }
}

fn message(kind: VehicleKind) -> VehicleMessage {
    VehicleMessage { kind: Some(kind) }
}
