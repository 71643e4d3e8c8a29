//! `tether.vehicle.v1.VehicleService`: one session per vehicle stream, run by
//! one task.
//!
//! Flow control is the heart of it: a snapshot of the *current* desired
//! state is built only when the vehicle has acknowledged the previous one, so
//! at most one snapshot is ever in flight per vehicle. A vehicle that stops
//! reading costs one snapshot, and on resume receives the latest state, never
//! a backlog.

use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use opentelemetry::KeyValue;
use rand::Rng;
use tether_proto::vehicle::v1::vehicle_service_server::VehicleService;
use tether_proto::vehicle::v1::{
    self as pb, DesiredState, FieldMeta, GoodbyeReason, ServerMessage, VehicleMessage, server_message, vehicle_message,
};
use tether_proto::{FieldError, FieldValue, StateSchema};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

use super::ApiError;
use super::convert::ts;
use super::validate_vehicle_id;
use crate::config::Config;
use crate::core::{FieldReport, FieldStatus};
use crate::hub::{Change, Hub, VehicleCell};
use crate::stats::{self, Gauge, HandshakeFailure};
use crate::store::Durable;
use crate::tls::{PeerIdentity, Revoked};
use crate::trace::Traces;

/// Outbound messages buffered per session: a snapshot (only after the
/// previous one was acknowledged), heartbeats (dropped when full) and a goodbye.
const OUTBOUND: usize = 4;

type Outbound = mpsc::Sender<OutboundItem>;

/// The vehicle-facing service.
#[derive(Clone)]
pub struct VehicleApi {
    hub: Arc<Hub>,
    config: Arc<Config>,
    shutdown: CancellationToken,
    draining: CancellationToken,
    tasks: TaskTracker,
    /// Serials revoked by the current CRLs (TLS only).
    revoked: Option<watch::Receiver<Revoked>>,
    /// Spans of deliveries and results; session events.
    traces: Traces,
}

impl VehicleApi {
    /// A service over `hub`; sessions run on `tasks`, are refused once
    /// `draining`, say goodbye at `shutdown`, and end when `revoked` comes to
    /// list their certificate.
    pub fn new(
        hub: Arc<Hub>,
        config: Arc<Config>,
        shutdown: CancellationToken,
        draining: CancellationToken,
        tasks: TaskTracker,
        revoked: Option<watch::Receiver<Revoked>>,
    ) -> Self {
        VehicleApi { hub, config, shutdown, draining, tasks, revoked, traces: Traces::off() }
    }

    /// Exports delivery and result spans and session events to `traces`.
    pub fn with_traces(mut self, traces: Traces) -> Self {
        self.traces = traces;
        self
    }
}

#[tonic::async_trait]
impl VehicleService for VehicleApi {
    type ConnectStream =
        futures::stream::Map<ReceiverStream<OutboundItem>, fn(OutboundItem) -> Result<ServerMessage, Status>>;

    async fn connect(&self, req: Request<Streaming<VehicleMessage>>) -> Result<Response<Self::ConnectStream>, Status> {
        let (tx, rx) = mpsc::channel(OUTBOUND);
        let identity = req.extensions().get::<Arc<PeerIdentity>>().cloned();
        // Numbered on arrival, before its Hello is read (see `Hub::next_session_id`).
        let id = self.hub.next_session_id();
        let session = Session { api: self.clone(), identity, id };
        self.tasks.spawn(session.run(req.into_inner(), tx));
        let unbox: fn(OutboundItem) -> Result<ServerMessage, Status> = |item| item.map(|m| *m).map_err(|s| *s);
        Ok(Response::new(futures::StreamExt::map(ReceiverStream::new(rx), unbox)))
    }
}

/// What the session task queues for its stream, boxed: a tokio channel
/// allocates its first block of 32 slots up front, and an unboxed
/// `Result<ServerMessage, Status>` made that ≈ 2.9 KiB per idle vehicle
/// (heaptrack, 2,000 sessions); boxed, 32 pointers.
type OutboundItem = Result<Box<ServerMessage>, Box<Status>>;

/// A message for the stream.
fn ok(message: ServerMessage) -> OutboundItem {
    Ok(Box::new(message))
}

/// The status that ends the stream.
fn fail(status: impl Into<Status>) -> OutboundItem {
    Err(Box::new(status.into()))
}

struct Session {
    api: VehicleApi,
    /// The verified identity of the connection (TLS), if any.
    identity: Option<Arc<PeerIdentity>>,
    /// The session's id, taken when its stream arrived.
    id: u64,
}

/// How a session ends.
enum End {
    /// Say goodbye, then close.
    Goodbye(GoodbyeReason, String),
    /// End the stream with an error status.
    Error(Status),
    /// The vehicle left; nothing to say.
    Quiet,
}

fn protocol(msg: impl Into<String>) -> End {
    End::Error(Status::invalid_argument(msg.into()))
}

/// The status to end a stream with when its inbound side failed.
fn inbound_error(status: Status) -> End {
    match status.code() {
        Code::Cancelled => End::Quiet,
        Code::OutOfRange => End::Error(Status::resource_exhausted(status.message().to_string())),
        Code::Internal | Code::Unknown | Code::InvalidArgument | Code::DataLoss => {
            End::Error(Status::invalid_argument(format!("malformed message on the stream: {}", status.message())))
        }
        _ => End::Quiet,
    }
}

impl Session {
    async fn run(self, mut inbound: Streaming<VehicleMessage>, tx: Outbound) {
        let hub = &self.api.hub;
        let config = &self.api.config;
        let failed = |why| hub.stats.handshake_failed(why);
        let mut hello = match tokio::time::timeout(config.handshake_timeout, inbound.message()).await {
            Err(_) => {
                failed(HandshakeFailure::Timeout);
                let msg = format!("no Hello within {:?}", config.handshake_timeout);
                let _ = tx.send(fail(Status::deadline_exceeded(msg))).await;
                return;
            }
            Ok(Err(status)) => {
                failed(HandshakeFailure::Stream);
                if let End::Error(status) = inbound_error(status) {
                    let _ = tx.send(fail(status)).await;
                }
                return;
            }
            Ok(Ok(None)) => return failed(HandshakeFailure::Stream),
            // `hello` lives as long as the session (for its agent version): its
            // actual state, a view into the stream's decode buffer, is taken
            // out below so the session does not keep that buffer alive.
            Ok(Ok(Some(VehicleMessage { kind: Some(vehicle_message::Kind::Hello(hello)) }))) => hello,
            Ok(Ok(Some(_))) => {
                failed(HandshakeFailure::NotHello);
                let _ = tx.send(fail(Status::invalid_argument("the first message of a session must be Hello"))).await;
                return;
            }
        };
        if let Err(e) = validate_vehicle_id(&hello.vehicle_id) {
            failed(HandshakeFailure::InvalidVehicleId);
            let _ = tx.send(fail(e)).await;
            return;
        }
        if let Err((why, e)) = self.certificate_names(&hello.vehicle_id) {
            tracing::warn!(hello = %hello.vehicle_id, error = %e, "refused: the client certificate does not name this vehicle");
            failed(why);
            let _ = tx.send(fail(e)).await;
            return;
        }
        let actual = match read_actual(hub, hello.actual.take().as_ref()) {
            Ok(actual) => actual,
            Err(e) => {
                failed(HandshakeFailure::InvalidState);
                let _ = tx.send(fail(Status::invalid_argument(format!("Hello.actual: {e}")))).await;
                return;
            }
        };
        if self.api.draining.is_cancelled() {
            failed(HandshakeFailure::Draining);
            let retry = "connect to another node or retry after the restart".to_string();
            let _ = tx.send(fail(ApiError::ShuttingDown(retry))).await;
            return;
        }
        if *hub.store().isolated().borrow() {
            failed(HandshakeFailure::Cluster);
            let retry = "this node lost its link to the cluster: connect to another node".to_string();
            let _ = tx.send(fail(ApiError::ShuttingDown(retry))).await;
            return;
        }
        let results = read_results(hub, hello.results);
        let cell = hub.get_or_create(&hello.vehicle_id);
        let last_applied = hello.last_applied_generation;
        let mut before = 0;
        let session_id = self.id;
        let opened = hub.open_session(&cell, session_id, &hello.agent_version, SystemTime::now(), |inner| {
            before = inner.record.generation;
            inner.record.hello(last_applied, actual, results);
            inner.presence.sent_generation = last_applied;
            Change { actual: true, status: true, ..Change::NONE }
        });
        let kicked = match opened {
            Ok(opened) => opened,
            Err(stale) => {
                // A newer connection of this vehicle said Hello first: this
                // one is the older, and is superseded before it begins.
                failed(HandshakeFailure::Superseded);
                tracing::info!(vehicle = %cell.id, session = session_id, newer = stale.newer, "refused: a newer session is live");
                let message =
                    format!("session {session_id} superseded by session {} (a newer connection)", stale.newer);
                say_goodbye(config, &tx, GoodbyeReason::Superseded, message).await;
                return;
            }
        };
        // In a cluster the session is welcomed only once its claim of the
        // vehicle is committed (its fencing token): a node that cannot claim
        // sends the vehicle to another.
        let (kicked, claimed) = kicked;
        let bound = config.handshake_timeout;
        let why = match tokio::time::timeout(bound, claimed).await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(e.reason),
            Ok(Err(_)) => Some("the store stopped".to_string()),
            Err(_) => Some(format!("no answer within {bound:?}")),
        };
        if let Some(why) = why {
            failed(HandshakeFailure::Cluster);
            hub.close_session(&cell, session_id, SystemTime::now());
            tracing::warn!(vehicle = %cell.id, session = session_id, %why, "refused: cannot claim the vehicle");
            let retry = format!("cannot claim the vehicle in the cluster ({why}): connect to another node");
            let _ = tx.send(fail(ApiError::ShuttingDown(retry))).await;
            return;
        }
        // The record's generation may have risen to what the vehicle already
        // handled, which adds no write: if all before it was committed, so is
        // the record now.
        if cell.committed() >= before {
            cell.mark_committed(last_applied);
        }
        let _gauge = Gauge::new(&hub.stats, |s| &s.sessions);
        stats::bump(&hub.stats.sessions_opened);
        let span = tracing::info_span!("session", vehicle = %cell.id, session = session_id);
        let traces = &self.api.traces;
        traces.session_event(
            "session.connect",
            &cell.id,
            session_id,
            vec![
                KeyValue::new("tether.agent.version", hello.agent_version.clone()),
                KeyValue::new("tether.last_applied_generation", last_applied as i64),
            ],
        );
        async {
            tracing::info!(agent = %hello.agent_version, last_applied, "session opened");
            let end = self.serve(&cell, session_id, kicked, &mut inbound, &tx).await;
            trace_end(traces, &cell.id, session_id, &end);
            match end {
                End::Goodbye(reason, message) => {
                    tracing::info!(reason = reason.as_str_name(), %message, "session closed");
                    say_goodbye(config, &tx, reason, message).await;
                }
                End::Error(status) => {
                    tracing::info!(code = ?status.code(), message = status.message(), "session ended with an error");
                    let _ = tokio::time::timeout(config.heartbeat_interval, tx.send(fail(status))).await;
                }
                End::Quiet => tracing::info!("session closed by the vehicle"),
            }
            hub.close_session(&cell, session_id, SystemTime::now());
        }
        .instrument(span)
        .await;
    }

    /// Whether this connection may speak for `vehicle`: without TLS (served
    /// on loopback only) anyone may; with TLS, only a client certificate
    /// that names exactly `vehicle` by the identity rule, and is not a
    /// declared service's. Every TLS connection carries its verdict; one
    /// without it is refused too (fail closed).
    fn certificate_names(&self, vehicle: &str) -> Result<(), (HandshakeFailure, ApiError)> {
        let config = &self.api.config;
        if config.tls_cert.is_none() {
            return Ok(());
        }
        let denied = |msg: String| (HandshakeFailure::NoIdentity, ApiError::PermissionDenied(msg));
        let name = match self.identity.as_deref().map(|i| &i.name) {
            None => return Err(denied("this connection has no verified client certificate".into())),
            Some(Err(why)) => {
                return Err(denied(format!("this connection's client certificate names no vehicle: {why}")));
            }
            Some(Ok(name)) => name,
        };
        if config.services.iter().any(|(service, _)| service == name) {
            return Err(denied(format!(
                "this connection's client certificate is service {name:?}'s; a service may not open a vehicle session"
            )));
        }
        if name != vehicle {
            let e = ApiError::WrongVehicle { certificate: name.clone(), hello: vehicle.to_string() };
            return Err((HandshakeFailure::WrongVehicle, e));
        }
        Ok(())
    }

    async fn serve(
        &self,
        cell: &VehicleCell,
        session_id: u64,
        mut kicked: tokio::sync::oneshot::Receiver<crate::hub::Kick>,
        inbound: &mut Streaming<VehicleMessage>,
        tx: &Outbound,
    ) -> End {
        let config = &self.api.config;
        let welcome = pb::Welcome {
            session_id,
            heartbeat_interval: prost_types::Duration::try_from(config.heartbeat_interval).ok(),
            heartbeat_misses: config.heartbeat_misses,
            server_time: Some(ts(SystemTime::now())),
            desired_generation: cell.lock().record.generation,
        };
        if tx.send(ok(ServerMessage { kind: Some(server_message::Kind::Welcome(welcome)) })).await.is_err() {
            return End::Quiet;
        }
        let mut changes = cell.subscribe();
        let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let silence_limit = config.heartbeat_interval * config.heartbeat_misses;
        // A session lives no longer than the certificate that opened it.
        let expires = self.identity.as_ref().map(|i| i.not_after);
        let credentials_expire = async move {
            match expires {
                Some(at) => tokio::time::sleep(at.duration_since(SystemTime::now()).unwrap_or_default()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(credentials_expire);
        // A session ends as soon as a reloaded CRL revokes its certificate.
        let serial = self.identity.as_ref().map(|i| i.serial.clone());
        let mut revoked = self.api.revoked.clone().filter(|_| serial.is_some());
        let is_revoked = |set: &Revoked| serial.as_ref().is_some_and(|s| set.contains(s));
        let mut last_heard = Instant::now();
        let mut sequence = 0u64;
        // A cluster's store may refuse an acknowledgement's or a report's save
        // because another node changed the vehicle first: those messages are
        // kept until their save is durable.
        let conflicts = self.api.hub.store().may_conflict();
        let mut redo = futures::stream::FuturesUnordered::new();
        loop {
            self.send_snapshot_if_due(cell, session_id, tx);
            tokio::select! {
                // Shutdown and supersede come first: a goodbye beats more traffic.
                biased;
                () = self.api.shutdown.cancelled() => {
                    return End::Goodbye(GoodbyeReason::ShuttingDown, "tetherd is shutting down".into());
                }
                kick = &mut kicked => {
                    return match kick {
                        Ok(kick) => End::Goodbye(kick.reason, kick.message),
                        Err(_) => End::Quiet,
                    };
                }
                () = tx.closed() => return End::Quiet,
                Ok(()) = async { match revoked.as_mut() { Some(r) => r.changed().await, None => std::future::pending().await } } => {
                    if revoked.as_ref().is_some_and(|r| is_revoked(&r.borrow())) {
                        return End::Goodbye(
                            GoodbyeReason::CredentialsExpired,
                            "the client certificate of this session was revoked".into(),
                        );
                    }
                }
                () = &mut credentials_expire => {
                    return End::Goodbye(
                        GoodbyeReason::CredentialsExpired,
                        "the client certificate of this session expired; reconnect with a renewed one".into(),
                    );
                }
                msg = inbound.message() => match msg {
                    Ok(Some(msg)) => {
                        last_heard = Instant::now();
                        let again = conflicts.then(|| msg.clone());
                        match self.handle(cell, session_id, msg, false) {
                            Err(end) => return end,
                            Ok(durable) => redo.extend(durable.zip(again).map(|(d, m)| saved(d, m))),
                        }
                    }
                    Ok(None) => return End::Quiet,
                    Err(status) => return inbound_error(status),
                },
                Some((outcome, msg)) = redo.next(), if !redo.is_empty() => {
                    // Another node changed the vehicle before this message's
                    // save: the vehicle was reloaded, and the message is
                    // applied again on top of what is durable.
                    if matches!(outcome, Ok(Err(e)) if e.conflict) {
                        let again = msg.clone();
                        match self.handle(cell, session_id, msg, true) {
                            Err(end) => return end,
                            Ok(durable) => redo.extend(durable.map(|d| saved(d, again))),
                        }
                    }
                }
                _ = changes.changed() => {}
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() >= config.heartbeat_interval {
                        stats::bump(&self.api.hub.stats.heartbeat_misses);
                    }
                    if last_heard.elapsed() >= silence_limit {
                        stats::bump(&self.api.hub.stats.sessions_timed_out);
                        return End::Goodbye(
                            GoodbyeReason::HeartbeatTimeout,
                            format!("nothing heard for {silence_limit:?} ({} heartbeats)", config.heartbeat_misses),
                        );
                    }
                    sequence += 1;
                    let beat = pb::Heartbeat { sequence, sent_at: Some(ts(SystemTime::now())), answers: 0 };
                    // A full buffer means the vehicle is not reading: skip the beat.
                    let _ = tx.try_send(ok(ServerMessage { kind: Some(server_message::Kind::Heartbeat(beat)) }));
                }
            }
        }
    }

    /// Builds and sends the current desired state if it changed since the
    /// last snapshot and that one was acknowledged.
    fn send_snapshot_if_due(&self, cell: &VehicleCell, session_id: u64, tx: &Outbound) {
        let now = SystemTime::now();
        // Read before the lock: a commit marked after this wakes the session
        // again, so none is missed.
        let committed = cell.committed();
        let (snapshot, _) = self.api.hub.update(cell, |inner| {
            let due = inner.snapshot_due(session_id, committed) && tx.capacity() > 0;
            if !due {
                return (None, Change::NONE);
            }
            let sent_before = inner.presence.sent_generation;
            let expired = inner.record.expire(now);
            let snapshot = inner.record.snapshot(now);
            let p = &mut inner.presence;
            p.sent_generation = snapshot.generation;
            p.unacked = Some(snapshot.generation);
            p.snapshots_sent += 1;
            (Some((snapshot, sent_before)), Change { status: expired, ..Change::NONE })
        });
        let Some((snapshot, sent_before)) = snapshot else { return };
        if self.api.traces.exporting() {
            // A delivery span for each value this session has not sent yet
            // (a snapshot repeats the fields already delivered).
            for f in snapshot.fields.iter().filter(|f| f.generation > sent_before && !f.traceparent.is_empty()) {
                self.api.traces.field_span(
                    "tetherd.deliver",
                    &f.traceparent,
                    vec![
                        KeyValue::new("tether.vehicle.id", cell.id.to_string()),
                        KeyValue::new("tether.session.id", session_id as i64),
                        KeyValue::new("tether.field.path", f.path.to_string()),
                        KeyValue::new("tether.field.generation", f.generation as i64),
                        KeyValue::new("tether.snapshot.generation", snapshot.generation as i64),
                    ],
                );
            }
        }
        let desired = DesiredState {
            generation: snapshot.generation,
            state: Some(StateSchema::join(snapshot.fields.iter().map(|f| &f.encoded))),
            fields: snapshot
                .fields
                .iter()
                .map(|f| FieldMeta {
                    path: f.path.to_string(),
                    generation: f.generation,
                    expires_at: f.expires_at.map(ts),
                    traceparent: f.traceparent.clone(),
                })
                .collect(),
            server_time: Some(ts(now)),
        };
        tracing::debug!(generation = snapshot.generation, fields = snapshot.fields.len(), "snapshot sent");
        // Capacity was checked under the lock and this task is the only sender
        // of snapshots, so this cannot fail for lack of room.
        let _ = tx.try_send(ok(ServerMessage { kind: Some(server_message::Kind::Desired(desired)) }));
    }

    /// Applies one message of the vehicle; `again` when it is applied a
    /// second time after a conflict. Returns the durability of its save, if
    /// it made one.
    fn handle(
        &self,
        cell: &VehicleCell,
        session_id: u64,
        msg: VehicleMessage,
        again: bool,
    ) -> Result<Option<Durable>, End> {
        let hub = &self.api.hub;
        let now = SystemTime::now();
        let kind = msg.kind.ok_or_else(|| protocol("empty VehicleMessage"))?;
        match kind {
            vehicle_message::Kind::Hello(_) => Err(protocol("Hello may only be the first message")),
            vehicle_message::Kind::Heartbeat(_) => {
                cell.lock().presence.last_seen = Some(now);
                Ok(None)
            }
            vehicle_message::Kind::Ack(ack) => {
                let (_, durable) = hub.update(cell, |inner| {
                    inner.presence.last_seen = Some(now);
                    if !inner.presence.is_live(session_id) {
                        return ((), Change::NONE);
                    }
                    if inner.presence.unacked == Some(ack.generation) {
                        inner.presence.unacked = None;
                    }
                    let changed = inner.record.acknowledge(ack.generation.min(inner.presence.sent_generation));
                    ((), Change { status: changed, ..Change::NONE })
                });
                Ok(durable)
            }
            vehicle_message::Kind::Report(report) => {
                let actual =
                    read_actual(hub, report.actual.as_ref()).map_err(|e| protocol(format!("Report.actual: {e}")))?;
                let results = read_results(hub, report.results);
                let traced = self.api.traces.exporting().then(|| results.clone());
                let (origins, durable) = hub.update(cell, |inner| {
                    inner.presence.last_seen = Some(now);
                    let had_actual = !actual.is_empty();
                    // The trace context of each reported value, looked up
                    // before the report settles it (only when exporting).
                    let origins: Vec<String> = traced.iter().flatten().map(|r| origin_of(inner, r)).collect();
                    // A report about the unacknowledged snapshot (or a later
                    // generation) acknowledges it too: a vehicle that applies
                    // at once may send the Report alone.
                    let live = inner.presence.is_live(session_id);
                    let acked = match inner.presence.unacked {
                        Some(g) if g <= report.observed_generation && live => {
                            inner.presence.unacked = None;
                            inner.record.acknowledge(g.min(inner.presence.sent_generation))
                        }
                        // Applied again: the acknowledgement the first time
                        // made may be gone with the reload.
                        _ if again && live => {
                            inner.record.acknowledge(report.observed_generation.min(inner.presence.sent_generation))
                        }
                        _ => false,
                    };
                    let changed = acked | inner.record.report(report.observed_generation, actual, results);
                    (origins, Change { actual: had_actual, status: changed, ..Change::NONE })
                });
                for (result, traceparent) in traced.iter().flatten().zip(&origins) {
                    self.api.traces.field_span(
                        "tetherd.field_result",
                        traceparent,
                        vec![
                            KeyValue::new("tether.vehicle.id", cell.id.to_string()),
                            KeyValue::new("tether.session.id", session_id as i64),
                            KeyValue::new("tether.field.path", result.path.to_string()),
                            KeyValue::new("tether.field.generation", result.generation as i64),
                            KeyValue::new("tether.field.status", result.status.as_str_name()),
                            KeyValue::new("tether.field.reason", result.reason.clone()),
                        ],
                    );
                }
                Ok(durable)
            }
        }
    }
}

/// The trace context of the value a result is about: its write's, while
/// that value is still the field's current one (else none: the result is
/// stale and the record ignores it).
fn origin_of(inner: &crate::hub::VehicleInner, result: &FieldReport) -> String {
    match inner.record.desired.get(&result.path) {
        Some(field) if field.generation == result.generation && !crate::core::is_final(field.status) => {
            field.origin.traceparent.clone()
        }
        _ => String::new(),
    }
}

/// A message with the outcome of its save, once the save is durable or
/// refused.
async fn saved(
    durable: Durable,
    msg: VehicleMessage,
) -> (Result<Result<(), crate::store::StoreError>, tokio::sync::oneshot::error::RecvError>, VehicleMessage) {
    (durable.await, msg)
}

/// The session's end as an event: superseded, heartbeat lost, another
/// goodbye from tetherd, or closed (by the vehicle or for an error).
fn trace_end(traces: &Traces, vehicle: &str, session: u64, end: &End) {
    if !traces.exporting() {
        return;
    }
    let (name, attributes) = match end {
        End::Goodbye(GoodbyeReason::Superseded, _) => ("session.superseded", vec![]),
        End::Goodbye(GoodbyeReason::HeartbeatTimeout, _) => ("session.heartbeat_lost", vec![]),
        End::Goodbye(reason, message) => (
            "session.goodbye",
            vec![
                KeyValue::new("tether.goodbye.reason", reason.as_str_name()),
                KeyValue::new("message", message.clone()),
            ],
        ),
        End::Error(status) => ("session.closed", vec![KeyValue::new("rpc.grpc.status_code", status.code() as i64)]),
        End::Quiet => ("session.closed", vec![KeyValue::new("tether.closed_by", "vehicle")]),
    };
    traces.session_event(name, vehicle, session, attributes);
}

/// Sends the Goodbye that ends a session (with a jittered reconnect hint
/// when the node shuts down), waiting at most a heartbeat interval for room.
async fn say_goodbye(config: &Config, tx: &Outbound, reason: GoodbyeReason, message: String) {
    let reconnect_after = (reason == GoodbyeReason::ShuttingDown).then(|| {
        let hint = config.reconnect_hint;
        let jitter = rand::rng().random_range(0.0..1.0);
        prost_types::Duration::try_from(hint + hint.mul_f64(jitter)).unwrap_or_default()
    });
    let goodbye = pb::Goodbye { reason: reason as i32, message, reconnect_after };
    let msg = ServerMessage { kind: Some(server_message::Kind::Goodbye(goodbye)) };
    let _ = tokio::time::timeout(config.heartbeat_interval, tx.send(ok(msg))).await;
}

/// Reads a vehicle's actual state, skipping fields this server's contract
/// lacks (the vehicle may run a newer one).
fn read_actual(hub: &Hub, actual: Option<&tether_proto::RawState>) -> Result<Vec<FieldValue>, FieldError> {
    let (values, skipped) = hub.schema.split_known(actual.map_or(&[][..], |a| a.as_bytes()))?;
    if skipped > 0 {
        tracing::debug!(skipped, "actual state has fields this server's contract lacks; ignored");
    }
    Ok(values)
}

/// Reads field results, dropping ones about paths this server does not know.
fn read_results(hub: &Hub, results: Vec<pb::FieldResult>) -> Vec<FieldReport> {
    results
        .into_iter()
        .filter_map(|r| {
            let Ok(leaf) = hub.schema.leaf(&r.path) else {
                tracing::warn!(path = %r.path, "result about an unknown field path ignored");
                return None;
            };
            Some(FieldReport {
                path: leaf.path().clone(),
                generation: r.generation,
                status: FieldStatus::try_from(r.status).unwrap_or(FieldStatus::Unspecified),
                reason: r.reason,
                message: r.message,
            })
        })
        .collect()
}
