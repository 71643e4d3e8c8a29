//! `tether.app.v1.ControlService`: set, read, watch, list and cancel desired state.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::Stream;
use tether_proto::app::v1 as pb;
use tether_proto::app::v1::control_service_server::ControlService;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::audit::{self, AuditDraft};
use super::authz;
use super::convert;
use super::deadline::grpc_timeout;
use super::status::ApiError;
use super::validate_vehicle_id;
use crate::auth::Principal;
use crate::config::Config;
use crate::core::{FieldOutcome, FieldStatus, Origin, Write, is_final};
use crate::hub::{Change, Hub, VehicleCell, VehicleInner, Versions};
use crate::limits::WriteLimits;
use crate::stats::{Gauge, WriteOutcome};
use crate::store::AuditEntry;

/// The authenticated caller the auth layer put into the request.
fn principal<T>(req: &Request<T>) -> Result<Arc<Principal>, ApiError> {
    req.extensions()
        .get::<Arc<Principal>>()
        .cloned()
        .ok_or_else(|| ApiError::Unauthenticated("no credentials were checked for this call".into()))
}

/// Longest idempotency key accepted.
const MAX_KEY_LEN: usize = 128;
const PAGE_TOKEN_PREFIX: &str = "after:";

/// The app-facing service.
#[derive(Clone)]
pub struct ControlApi {
    hub: Arc<Hub>,
    config: Arc<Config>,
    shutdown: CancellationToken,
    limits: Arc<WriteLimits>,
}

impl ControlApi {
    /// A service over `hub`; `shutdown` answers waiting calls when the node
    /// stops; writes are bounded by `limits`.
    pub fn new(hub: Arc<Hub>, config: Arc<Config>, shutdown: CancellationToken, limits: Arc<WriteLimits>) -> Self {
        ControlApi { hub, config, shutdown, limits }
    }

    fn known(&self, id: &str) -> Result<Arc<VehicleCell>, ApiError> {
        validate_vehicle_id(id)?;
        self.hub.get(id).ok_or_else(|| ApiError::NotFound(id.to_string()))
    }

    async fn set_desired(&self, req: Request<pb::SetDesiredRequest>) -> Result<pb::SetDesiredResponse, ApiError> {
        let started = Instant::now();
        let caller_timeout = grpc_timeout(req.metadata());
        let principal = principal(&req)?;
        let traceparent = crate::trace::write_traceparent(&req);
        let req = req.into_inner();
        // A malformed id has no vehicle to file the call's audit record under.
        validate_vehicle_id(&req.vehicle_id)?;
        let mut draft = AuditDraft::set_desired(&principal.subject, &req, &traceparent);
        let now = SystemTime::now();
        let (cell, write) = match self.prepare(&principal, &req, traceparent, now, &mut draft) {
            Ok(prepared) => prepared,
            Err(e) => {
                audit::file_refusal(&self.hub, draft, &e);
                return Err(e);
            }
        };
        let limits = self.hub.key_limits;
        // ACCEPTED means on disk, with its audit record.
        let result = self
            .durably(&cell, |inner| {
                let written = if req.require_online && !inner.presence.online() {
                    Err(ApiError::Offline(req.vehicle_id.clone()))
                } else {
                    inner.record.write(write.clone(), now, limits).map_err(ApiError::from)
                };
                match written {
                    Ok(r) => {
                        let change = Change { desired: r.changed, status: r.changed, ..Change::NONE };
                        let entry = draft.clone().accepted(r.generation, r.replayed);
                        (Ok(r), change, Some(entry))
                    }
                    Err(e) => {
                        let entry = draft.clone().refused(&e);
                        (Err(e), Change::NONE, Some(entry))
                    }
                }
            })
            .await?;
        self.hub.stats.write(if result.replayed { WriteOutcome::Replayed } else { WriteOutcome::Accepted });
        let level = pb::WaitLevel::try_from(req.wait).unwrap_or(pb::WaitLevel::Unspecified);
        let outcomes = match level {
            pb::WaitLevel::Delivered | pb::WaitLevel::Applied => {
                let wait = caller_timeout.map_or(self.config.max_wait, |t| t.min(self.config.max_wait));
                let budget = wait.saturating_sub(started.elapsed());
                self.wait_for(&cell, &result.fields, level, budget, result.generation).await?
            }
            _ => cell.lock().record.outcomes(&result.fields, SystemTime::now()),
        };
        Ok(pb::SetDesiredResponse {
            generation: result.generation,
            fields: outcomes.iter().map(convert::outcome).collect(),
            replayed: result.replayed,
        })
    }

    /// Applies an app's call to a vehicle and waits until it is durable. A
    /// refusal is answered at once (its audit record is not waited for). A
    /// save refused because another node changed the vehicle first (the
    /// vehicle was reloaded with that change) is applied again on top, up to
    /// [`CONFLICT_RETRIES`] times: concurrent writers on different nodes are
    /// ordered, and a retry of a write another node took replays it.
    async fn durably<R>(
        &self,
        cell: &VehicleCell,
        mut f: impl FnMut(&mut VehicleInner) -> (Result<R, ApiError>, Change, Option<AuditEntry>),
    ) -> Result<R, ApiError> {
        let mut conflicts = 0;
        loop {
            let (result, durable) = self.hub.update_audited(cell, &mut f);
            let result = result?;
            match on_disk(durable).await {
                Ok(()) => return Ok(result),
                Err(ApiError::Store(e)) if e.conflict && conflicts < CONFLICT_RETRIES => {
                    conflicts += 1;
                    crate::stats::bump(&self.hub.stats.conflicts_retried);
                    tracing::debug!(vehicle = %cell.id, conflicts, "applied again after a conflict");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Everything a write is checked for before it reaches the vehicle's
    /// record: rate limits, key, TTL, the patch's fields and rules, scopes,
    /// presence. Returns the vehicle's cell and the write.
    fn prepare(
        &self,
        principal: &Principal,
        req: &pb::SetDesiredRequest,
        traceparent: String,
        now: SystemTime,
        draft: &mut AuditDraft,
    ) -> Result<(Arc<VehicleCell>, Write), ApiError> {
        self.limits.check(&principal.subject, &Arc::from(req.vehicle_id.as_str())).map_err(ApiError::RateLimited)?;
        let key = &req.idempotency_key;
        if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::InvalidArgument(format!(
                "idempotency_key must be 1 to {MAX_KEY_LEN} printable ASCII characters (the SDK generates one)"
            )));
        }
        let ttl = self.ttl(req)?;
        let patch = req.patch.clone().unwrap_or_default();
        let mut fields = self.hub.schema.split(patch.as_bytes())?;
        if fields.is_empty() {
            return Err(ApiError::InvalidArgument("patch is empty: set at least one field".into()));
        }
        draft.set_paths(fields.iter().map(|f| f.path.to_string()));
        for field in &fields {
            self.hub.schema.validate(field, now)?;
        }
        let capabilities: Vec<&str> =
            fields.iter().filter_map(|f| self.hub.schema.leaf(&f.path).ok().map(|l| l.capability())).collect();
        authz::may_control(principal, &req.vehicle_id, capabilities)?;
        // A patch may name a path twice (merge semantics): the last value wins.
        fields.reverse();
        let mut seen = std::collections::HashSet::new();
        fields.retain(|f| seen.insert(f.path.clone()));
        fields.reverse();

        let write = Write {
            fingerprint: fingerprint(&fields, ttl, req.expected_generation),
            fields,
            expected_generation: req.expected_generation,
            expires_at: ttl.map(|d| now + d),
            origin: Origin { subject: principal.subject.clone(), idempotency_key: key.as_str().into(), traceparent },
        };
        let cell = if req.require_online {
            match self.hub.get(&req.vehicle_id) {
                Some(cell) if cell.lock().presence.online() => cell,
                _ => return Err(ApiError::Offline(req.vehicle_id.clone())),
            }
        } else {
            self.hub.get_or_create(&req.vehicle_id)
        };
        Ok((cell, write))
    }

    fn ttl(&self, req: &pb::SetDesiredRequest) -> Result<Option<Duration>, ApiError> {
        match (&req.ttl, req.no_expiry) {
            (Some(_), true) => Err(ApiError::InvalidArgument("ttl and no_expiry are exclusive".into())),
            (None, true) => Ok(None),
            (None, false) => Ok(Some(self.config.default_ttl)),
            (Some(ttl), false) => {
                let ttl = Duration::try_from(*ttl)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| ApiError::InvalidArgument("ttl must be positive".into()))?;
                if ttl > self.config.max_ttl {
                    return Err(ApiError::InvalidArgument(format!(
                        "ttl {ttl:?} exceeds the server's maximum {:?}; use no_expiry for a standing state",
                        self.config.max_ttl
                    )));
                }
                Ok(Some(ttl))
            }
        }
    }

    /// Waits until every field reached `level` or a final outcome. Dropping
    /// the future (the caller cancelled) leaves nothing behind: the waiter is
    /// a receiver and a gauge, both dropped with it.
    async fn wait_for(
        &self,
        cell: &VehicleCell,
        fields: &[(Arc<str>, u64)],
        level: pb::WaitLevel,
        budget: Duration,
        generation: u64,
    ) -> Result<Vec<FieldOutcome>, ApiError> {
        let deadline = Instant::now() + budget;
        let _waiter = Gauge::new(&self.hub.stats, |s| &s.waiters);
        let mut changes = cell.subscribe();
        loop {
            let outcomes = cell.lock().record.outcomes(fields, SystemTime::now());
            if outcomes.iter().all(|o| reached(o.status, level)) {
                return Ok(outcomes);
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Err(ApiError::ShuttingDown(stored(generation)));
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(ApiError::DeadlineExceeded(format!(
                        "{} not reached within the call's wait of {} ms; {}; fields: {}",
                        level.as_str_name().trim_start_matches("WAIT_LEVEL_"),
                        budget.as_millis(),
                        stored(generation),
                        summary(&outcomes),
                    )));
                }
                () = self.shutdown.cancelled() => return Err(ApiError::ShuttingDown(stored(generation))),
            }
        }
    }

    fn list(&self, principal: &Principal, req: pb::ListVehiclesRequest) -> Result<pb::ListVehiclesResponse, ApiError> {
        authz::may_list(principal)?;
        let size = super::page_size(req.page_size)?;
        let after = if req.page_token.is_empty() {
            String::new()
        } else {
            let id = req
                .page_token
                .strip_prefix(PAGE_TOKEN_PREFIX)
                .filter(|id| validate_vehicle_id(id).is_ok())
                .ok_or_else(|| {
                    ApiError::InvalidArgument("malformed page_token: pass next_page_token unchanged".into())
                })?;
            id.to_string()
        };
        let online_only = req.online_only;
        let cells = self.hub.page(&after, size + 1, |c| {
            principal.scopes.covers_vehicle(&c.id) && (!online_only || c.lock().presence.online())
        });
        let more = cells.len() > size;
        let vehicles: Vec<pb::VehicleSummary> = cells
            .iter()
            .take(size)
            .map(|c| {
                let inner = c.lock();
                if inner.is_stale() {
                    return Err(stale(&c.id));
                }
                Ok(pb::VehicleSummary {
                    vehicle_id: c.id.to_string(),
                    presence: Some(convert::presence(&inner.presence, inner.snapshot_pending())),
                    generation: inner.record.generation,
                    observed_generation: inner.record.observed_generation,
                    unapplied_fields: u32::try_from(inner.record.unapplied()).unwrap_or(u32::MAX),
                })
            })
            .collect::<Result<_, _>>()?;
        let next_page_token = match (more, vehicles.last()) {
            (true, Some(last)) => format!("{PAGE_TOKEN_PREFIX}{}", last.vehicle_id),
            _ => String::new(),
        };
        Ok(pb::ListVehiclesResponse { vehicles, next_page_token })
    }

    async fn cancel(
        &self,
        principal: &Principal,
        req: pb::CancelDesiredRequest,
    ) -> Result<pb::CancelDesiredResponse, ApiError> {
        // A malformed id has no vehicle to file the call's audit record under.
        validate_vehicle_id(&req.vehicle_id)?;
        let draft = AuditDraft::cancel(&principal.subject, &req);
        let (cell, paths) = match self.check_cancel(principal, &req) {
            Ok(checked) => checked,
            Err(e) => {
                audit::file_refusal(&self.hub, draft, &e);
                return Err(e);
            }
        };
        let now = SystemTime::now();
        // As for a write: the answer means the cancel and its audit record are on disk.
        let (cancelled, generation) = self
            .durably(&cell, |inner| {
                let cancelled = inner.record.cancel((!paths.is_empty()).then_some(&paths[..]), now);
                let changed = !cancelled.is_empty();
                let entry = draft.clone().accepted(inner.record.generation, false);
                let change = Change { desired: changed, status: changed, ..Change::NONE };
                (Ok((cancelled, inner.record.generation)), change, Some(entry))
            })
            .await?;
        Ok(pb::CancelDesiredResponse { generation, cancelled: cancelled.iter().map(convert::outcome).collect() })
    }

    /// A cancel's paths, scopes and vehicle.
    fn check_cancel(
        &self,
        principal: &Principal,
        req: &pb::CancelDesiredRequest,
    ) -> Result<(Arc<VehicleCell>, Vec<Arc<str>>), ApiError> {
        let leaves: Vec<_> = req.paths.iter().map(|p| self.hub.schema.leaf(p)).collect::<Result<_, _>>()?;
        if leaves.is_empty() {
            authz::may_control_all(principal, &req.vehicle_id)?;
        } else {
            authz::may_control(principal, &req.vehicle_id, leaves.iter().map(|l| l.capability()))?;
        }
        let cell = self.known(&req.vehicle_id)?;
        Ok((cell, leaves.iter().map(|l| l.path().clone()).collect()))
    }
}

fn stored(generation: u64) -> String {
    format!("the desired state stays stored at generation {generation}")
}

fn summary(outcomes: &[FieldOutcome]) -> String {
    outcomes
        .iter()
        .map(|o| format!("{}={}", o.path, o.status.as_str_name().trim_start_matches("FIELD_STATUS_")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a field's status satisfies a wait level.
fn reached(status: FieldStatus, level: pb::WaitLevel) -> bool {
    match level {
        pb::WaitLevel::Delivered => status != FieldStatus::Pending,
        pb::WaitLevel::Applied => is_final(status),
        _ => true,
    }
}

/// A stable fingerprint of what a write asks for (FNV-1a, stable across
/// releases, unlike std's hasher), to refuse a different request reusing a key.
fn fingerprint(fields: &[tether_proto::FieldValue], ttl: Option<Duration>, expected: Option<u64>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for f in fields {
        eat(f.path.as_bytes());
        eat(&[0]);
        eat(&f.encoded);
    }
    eat(&ttl.map_or(u128::MAX, |d| d.as_nanos()).to_le_bytes());
    eat(&expected.map_or([0xff; 9], |g| {
        let mut b = [0; 9];
        b[1..].copy_from_slice(&g.to_le_bytes());
        b
    }));
    h
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

struct WatchState {
    cell: Arc<VehicleCell>,
    changes: tokio::sync::watch::Receiver<crate::hub::Signal>,
    last: Option<Versions>,
    from_generation: u64,
    shutdown: CancellationToken,
    /// When the caller's credentials expire: the stream ends UNAUTHENTICATED
    /// then, so the client reconnects with fresh ones (and resumes).
    credentials_expire: Option<SystemTime>,
    done: bool,
    _gauge: Gauge,
}

#[tonic::async_trait]
impl ControlService for ControlApi {
    async fn set_desired(
        &self,
        req: Request<pb::SetDesiredRequest>,
    ) -> Result<Response<pb::SetDesiredResponse>, Status> {
        let result = ControlApi::set_desired(self, req).await;
        if let Err(e) = &result {
            let outcome = match e {
                ApiError::Offline(_) => Some(WriteOutcome::Offline),
                ApiError::InvalidVehicleId(_)
                | ApiError::InvalidArgument(_)
                | ApiError::Field(_)
                | ApiError::Write(_) => Some(WriteOutcome::Invalid),
                ApiError::PermissionDenied(_) | ApiError::Unauthenticated(_) => Some(WriteOutcome::RefusedByAuth),
                ApiError::RateLimited(_) => Some(WriteOutcome::RateLimited),
                _ => None,
            };
            if let Some(outcome) = outcome {
                self.hub.stats.write(outcome);
            }
        }
        Ok(Response::new(result?))
    }

    async fn get_vehicle(&self, req: Request<pb::GetVehicleRequest>) -> Result<Response<pb::Vehicle>, Status> {
        let principal = principal(&req)?;
        validate_vehicle_id(&req.get_ref().vehicle_id)?;
        authz::may_read(&principal, &req.get_ref().vehicle_id)?;
        let cell = self.known(&req.get_ref().vehicle_id)?;
        let inner = cell.lock();
        if inner.is_stale() {
            return Err(stale(&cell.id).into());
        }
        let view = convert::vehicle(&cell.id, &inner, SystemTime::now());
        Ok(Response::new(view))
    }

    type WatchVehicleStream = BoxStream<pb::VehicleEvent>;

    async fn watch_vehicle(
        &self,
        req: Request<pb::WatchVehicleRequest>,
    ) -> Result<Response<Self::WatchVehicleStream>, Status> {
        let principal = principal(&req)?;
        let req = req.into_inner();
        validate_vehicle_id(&req.vehicle_id)?;
        authz::may_read(&principal, &req.vehicle_id)?;
        let cell = self.known(&req.vehicle_id)?;
        let mut changes = cell.subscribe();
        changes.mark_unchanged();
        let state = WatchState {
            cell,
            changes,
            last: None,
            from_generation: req.from_generation,
            shutdown: self.shutdown.clone(),
            credentials_expire: principal.expires_at,
            done: false,
            _gauge: Gauge::new(&self.hub.stats, |s| &s.watchers),
        };
        // No task per watcher: the stream is polled only when the transport
        // can send, so a slow watcher gets the latest view, never a backlog.
        let stream = futures::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                if st.last.is_some() {
                    tokio::select! {
                        changed = st.changes.changed() => {
                            if changed.is_err() {
                                return None;
                            }
                        }
                        () = st.shutdown.cancelled() => {
                            st.done = true;
                            let status = Status::unavailable("tetherd is shutting down; resume the watch from your last generation");
                            return Some((Err(status), st));
                        }
                        () = until(st.credentials_expire) => {
                            st.done = true;
                            let status = Status::unauthenticated("credentials expired; reconnect with fresh ones and resume from your last generation");
                            return Some((Err(status), st));
                        }
                    }
                }
                let (event, versions, changes) = {
                    let inner = st.cell.lock();
                    let changes = change_kinds(st.last, inner.versions);
                    // A wake that changed nothing a watcher sees (a commit making
                    // the desired state deliverable), or a record the store must
                    // reload first: wait for the next, without building a view.
                    if (st.last.is_some() && changes.is_empty()) || inner.is_stale() {
                        if st.last.is_none() {
                            st.last = Some(Versions::default());
                        }
                        continue;
                    }
                    (convert::vehicle(&st.cell.id, &inner, SystemTime::now()), inner.versions, changes)
                };
                let resumed = st.last.is_none() && st.from_generation != 0 && st.from_generation == event.generation;
                st.last = Some(versions);
                let event = pb::VehicleEvent { vehicle: Some(event), changes, resumed };
                return Some((Ok(event), st));
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_vehicles(
        &self,
        req: Request<pb::ListVehiclesRequest>,
    ) -> Result<Response<pb::ListVehiclesResponse>, Status> {
        let principal = principal(&req)?;
        Ok(Response::new(self.list(&principal, req.into_inner())?))
    }

    async fn cancel_desired(
        &self,
        req: Request<pb::CancelDesiredRequest>,
    ) -> Result<Response<pb::CancelDesiredResponse>, Status> {
        let principal = principal(&req)?;
        Ok(Response::new(self.cancel(&principal, req.into_inner()).await?))
    }

    async fn list_audit_records(
        &self,
        req: Request<pb::ListAuditRecordsRequest>,
    ) -> Result<Response<pb::ListAuditRecordsResponse>, Status> {
        let principal = principal(&req)?;
        let req = req.into_inner();
        validate_vehicle_id(&req.vehicle_id)?;
        authz::may_audit(&principal, &req.vehicle_id)?;
        Ok(Response::new(audit::page(&self.hub, &req.vehicle_id, req.page_size, &req.page_token).await?))
    }
}

/// A vehicle whose record the store must reload before it is shown: the
/// store refused a save and cannot read back what is durable yet.
fn stale(vehicle: &str) -> ApiError {
    ApiError::Store(crate::store::StoreError::new(format!(
        "vehicle {vehicle:?}: the store refused a save and cannot read back what is durable yet"
    )))
}

/// Sleeps until `at` (forever for `None`).
async fn until(at: Option<SystemTime>) {
    match at {
        Some(at) => tokio::time::sleep(at.duration_since(SystemTime::now()).unwrap_or_default()).await,
        None => std::future::pending().await,
    }
}

fn change_kinds(last: Option<Versions>, now: Versions) -> Vec<i32> {
    use pb::ChangeKind as K;
    let all = [K::Desired, K::Actual, K::FieldStatus, K::Presence];
    let Some(last) = last else { return all.iter().map(|k| *k as i32).collect() };
    let diffs = [
        now.desired != last.desired,
        now.actual != last.actual,
        now.status != last.status,
        now.presence != last.presence,
    ];
    all.iter().zip(diffs).filter(|(_, d)| *d).map(|(k, _)| *k as i32).collect()
}

/// How many times a call is applied again after conflicts with other nodes
/// before it is answered UNAVAILABLE.
const CONFLICT_RETRIES: u32 = 16;

/// Waits until a save (if any) is durable.
async fn on_disk(durable: Option<crate::store::Durable>) -> Result<(), ApiError> {
    if let Some(durable) = durable {
        durable.await.map_err(|_| crate::store::StoreError::new("the store stopped"))??;
    }
    Ok(())
}
