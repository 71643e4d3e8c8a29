//! One session of the agent: open `Connect`, say Hello, await Welcome, then
//! serve the stream (acknowledge and hand over snapshots, send Reports, send
//! and answer heartbeats) until it ends.

use std::time::{Duration, SystemTime};

use tether_proto::vehicle::v1::server_message::Kind as ServerKind;
use tether_proto::vehicle::v1::vehicle_message::Kind as VehicleKind;
use tether_proto::vehicle::v1::vehicle_service_client::VehicleServiceClient;
use tether_proto::vehicle::v1::{
    Ack, DesiredState, Goodbye, GoodbyeReason, Heartbeat, Hello, ServerMessage, VehicleMessage, Welcome,
};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::Channel;

use super::guards::shifted;
use super::worker::Worker;
use super::{AgentEvent, Shared};

/// How long to wait for the stream to open and Welcome to arrive.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Heartbeat interval if Welcome gives none.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Missed heartbeats that end the session if Welcome gives none.
const DEFAULT_MISSES: u32 = 3;
/// Messages queued to the server before a send waits.
const OUTBOUND_BUFFER: usize = 32;

/// How a session ended.
#[derive(Debug)]
pub(crate) enum SessionEnd {
    /// The server said goodbye.
    Goodbye { reason: GoodbyeReason, message: String, reconnect_after: Option<Duration> },
    /// The stream could not open, failed, ended, or fell silent.
    Lost(String),
    /// The agent was told to stop.
    Shutdown,
}

/// What a session needs from its agent.
pub(crate) struct Context<'a> {
    pub(crate) vehicle_id: &'a str,
    pub(crate) agent_version: &'a str,
    pub(crate) clock_offset_millis: i64,
    pub(crate) shared: &'a Shared,
    pub(crate) events: &'a broadcast::Sender<AgentEvent>,
    pub(crate) cancel: &'a CancellationToken,
}

/// Runs one session over `channel`. Returns how it ended and, if Welcome
/// came, when. The worker must be idle on entry.
pub(crate) async fn run(ctx: &Context<'_>, channel: Channel, worker: &mut Worker) -> (SessionEnd, Option<Instant>) {
    let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
    let Some(applier) = worker.idle() else {
        return (SessionEnd::Lost("internal: a snapshot was still being handled".into()), None);
    };
    let hello = Hello {
        vehicle_id: ctx.vehicle_id.to_string(),
        agent_version: ctx.agent_version.to_string(),
        last_applied_generation: applier.last_applied(),
        actual: Some(applier.actual()),
        results: applier.last_results().to_vec(),
    };
    if tx.try_send(message(VehicleKind::Hello(hello))).is_err() {
        return (SessionEnd::Lost("internal: cannot queue Hello".into()), None);
    }
    let mut session = Session { ctx, tx, sequence: 0, silence: HANDSHAKE_TIMEOUT };
    let (mut inbound, welcome) = match session.open(channel, rx).await {
        Ok(opened) => opened,
        Err(end) => return (end, None),
    };
    let welcomed_at = Instant::now();
    tracing::Span::current().record("session_id", welcome.session_id);
    ctx.shared.set_session(Some(welcome.session_id));
    let _ = ctx.events.send(AgentEvent::Connected { session_id: welcome.session_id });
    let end = session.serve(&mut inbound, &welcome, worker).await;
    ctx.shared.set_session(None);
    (end, Some(welcomed_at))
}

struct Session<'a, 'c> {
    ctx: &'a Context<'c>,
    tx: mpsc::Sender<VehicleMessage>,
    /// Our heartbeat sequence (the last one sent).
    sequence: u64,
    /// How long the server may stay silent.
    silence: Duration,
}

impl Session<'_, '_> {
    /// Opens the stream and awaits Welcome.
    async fn open(
        &mut self,
        channel: Channel,
        outbound: mpsc::Receiver<VehicleMessage>,
    ) -> Result<(Streaming<ServerMessage>, Welcome), SessionEnd> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let outbound = ReceiverStream::new(outbound);
        let mut client = VehicleServiceClient::new(channel);
        let response = tokio::select! {
            _ = self.ctx.cancel.cancelled() => return Err(SessionEnd::Shutdown),
            _ = tokio::time::sleep_until(deadline) => {
                return Err(SessionEnd::Lost(format!("Connect not answered within {HANDSHAKE_TIMEOUT:?}")));
            }
            response = client.connect(outbound) => response,
        };
        let mut inbound =
            response.map_err(|status| SessionEnd::Lost(format!("Connect failed: {status}")))?.into_inner();
        let first = tokio::select! {
            _ = self.ctx.cancel.cancelled() => return Err(SessionEnd::Shutdown),
            _ = tokio::time::sleep_until(deadline) => {
                return Err(SessionEnd::Lost(format!("no Welcome within {HANDSHAKE_TIMEOUT:?}")));
            }
            first = inbound.message() => first,
        };
        match first {
            Ok(Some(ServerMessage { kind: Some(ServerKind::Welcome(welcome)) })) => Ok((inbound, welcome)),
            Ok(Some(ServerMessage { kind: Some(ServerKind::Goodbye(goodbye)) })) => Err(said_goodbye(goodbye)),
            Ok(Some(other)) => Err(SessionEnd::Lost(format!("protocol: expected Welcome first, got {:?}", other.kind))),
            Ok(None) => Err(SessionEnd::Lost("tetherd closed the stream before Welcome".into())),
            Err(status) => Err(SessionEnd::Lost(format!("stream failed before Welcome: {status}"))),
        }
    }

    /// Serves an open session until it ends.
    async fn serve(
        &mut self,
        inbound: &mut Streaming<ServerMessage>,
        welcome: &Welcome,
        worker: &mut Worker,
    ) -> SessionEnd {
        let interval = welcome
            .heartbeat_interval
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_HEARTBEAT);
        let misses = match welcome.heartbeat_misses {
            0 => DEFAULT_MISSES,
            n => n,
        };
        self.silence = interval.saturating_mul(misses);
        tracing::info!(?interval, misses, "session open");
        let mut heartbeat = tokio::time::interval_at(Instant::now() + interval, interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let silent = tokio::time::sleep(self.silence);
        tokio::pin!(silent);
        loop {
            // Unbiased: a busy inbound side must not starve heartbeats or reports.
            tokio::select! {
                _ = self.ctx.cancel.cancelled() => return SessionEnd::Shutdown,
                received = inbound.message() => {
                    let message = match received {
                        Ok(Some(message)) => message,
                        Ok(None) => return SessionEnd::Lost("tetherd closed the stream".into()),
                        Err(status) => return SessionEnd::Lost(format!("stream failed: {status}")),
                    };
                    // Any message at all proves the server alive.
                    silent.as_mut().reset(Instant::now() + self.silence);
                    if let Err(end) = self.on_message(message, worker).await {
                        return end;
                    }
                }
                report = worker.next() => {
                    tracing::debug!(observed_generation = report.observed_generation, results = report.results.len(), "report");
                    if let Err(end) = self.send(VehicleKind::Report(report)).await {
                        return end;
                    }
                }
                _ = heartbeat.tick() => {
                    if let Err(end) = self.heartbeat(0).await {
                        return end;
                    }
                }
                _ = &mut silent => {
                    return SessionEnd::Lost(format!("heard nothing from tetherd for {:?}", self.silence));
                }
            }
        }
    }

    async fn on_message(&mut self, message: ServerMessage, worker: &mut Worker) -> Result<(), SessionEnd> {
        match message.kind {
            Some(ServerKind::Desired(desired)) => self.on_desired(desired, worker).await,
            // Answer the server's own heartbeats, not its answers to ours.
            Some(ServerKind::Heartbeat(beat)) if beat.answers == 0 => self.heartbeat(beat.sequence).await,
            Some(ServerKind::Heartbeat(_)) => Ok(()),
            Some(ServerKind::Goodbye(goodbye)) => Err(said_goodbye(goodbye)),
            Some(ServerKind::Welcome(_)) => {
                tracing::warn!("ignoring a second Welcome");
                Ok(())
            }
            // A kind from a newer contract: it still proved the server alive.
            None => Ok(()),
        }
    }

    /// Acknowledges a snapshot at once, then hands it to the worker.
    async fn on_desired(&mut self, desired: DesiredState, worker: &mut Worker) -> Result<(), SessionEnd> {
        let generation = desired.generation;
        self.send(VehicleKind::Ack(Ack { generation })).await?;
        tracing::debug!(generation, fields = desired.fields.len(), "snapshot received");
        let _ = self.ctx.events.send(AgentEvent::Snapshot { generation, fields: desired.fields.len() });
        worker.submit(desired);
        Ok(())
    }

    /// Sends a heartbeat (`answers`: the server heartbeat answered, or 0).
    async fn heartbeat(&mut self, answers: u64) -> Result<(), SessionEnd> {
        self.sequence += 1;
        let sent_at = shifted(SystemTime::now(), self.ctx.clock_offset_millis);
        let beat = Heartbeat { sequence: self.sequence, sent_at: Some(sent_at.into()), answers };
        self.send(VehicleKind::Heartbeat(beat)).await
    }

    /// Queues a message; a server that takes none for the silence period is
    /// as good as gone.
    async fn send(&mut self, kind: VehicleKind) -> Result<(), SessionEnd> {
        match self.tx.send_timeout(message(kind), self.silence).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                Err(SessionEnd::Lost(format!("tetherd took no message for {:?}", self.silence)))
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => {
                Err(SessionEnd::Lost("the stream to tetherd closed".into()))
            }
        }
    }
}

fn message(kind: VehicleKind) -> VehicleMessage {
    VehicleMessage { kind: Some(kind) }
}

fn said_goodbye(goodbye: Goodbye) -> SessionEnd {
    SessionEnd::Goodbye {
        reason: GoodbyeReason::try_from(goodbye.reason).unwrap_or(GoodbyeReason::Unspecified),
        message: goodbye.message,
        reconnect_after: goodbye.reconnect_after.and_then(|d| Duration::try_from(d).ok()),
    }
}
