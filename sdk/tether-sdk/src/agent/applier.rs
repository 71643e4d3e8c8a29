//! The [`Applier`]: handles one desired-state snapshot at a time — checks each
//! new field against the guards, asks its capability to apply it, keeps the
//! actual state, persists the handled generation and builds the Report.
//!
//! The state is read generically through the agent's [`StateSchema`]: nothing
//! here names a capability.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use prost::Message;
use prost_reflect::{DynamicMessage, Value};
use tether_proto::common::v1::FieldStatus;
use tether_proto::vehicle::v1::{DesiredState, FieldMeta, FieldResult, Report};
use tether_proto::{FieldError, FieldValue, RawState, StateSchema};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::capability::{Capability, FieldChange, Refusal};
use super::guards::Guards;
use super::persist::GenerationStore;
use super::{AgentEvent, Shared};
use crate::trace::ApplySpan;

/// The part of the agent that survives sessions: capabilities, guards, the
/// last handled generation and the actual state.
pub(crate) struct Applier {
    schema: StateSchema,
    capabilities: HashMap<String, Box<dyn Capability>>,
    guards: Guards,
    last_applied: u64,
    /// The results of the last snapshot handled, re-sent in every Hello so a
    /// dropped link never loses an outcome (the server ignores known ones).
    last_results: Vec<FieldResult>,
    actual: ActualState,
    store: Option<GenerationStore>,
    shared: Arc<Shared>,
    events: broadcast::Sender<AgentEvent>,
}

impl Applier {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        schema: StateSchema,
        capabilities: HashMap<String, Box<dyn Capability>>,
        guards: Guards,
        last_applied: u64,
        initial_actual: RawState,
        store: Option<GenerationStore>,
        shared: Arc<Shared>,
        events: broadcast::Sender<AgentEvent>,
    ) -> Self {
        let actual = ActualState::new(&schema, initial_actual);
        let applier = Applier {
            schema,
            capabilities,
            guards,
            last_applied,
            last_results: Vec::new(),
            actual,
            store,
            shared,
            events,
        };
        applier.publish();
        applier
    }

    /// The highest generation handled.
    pub(crate) fn last_applied(&self) -> u64 {
        self.last_applied
    }

    /// The results of the last snapshot handled (for Hello).
    pub(crate) fn last_results(&self) -> &[FieldResult] {
        &self.last_results
    }

    /// The actual state now.
    pub(crate) fn actual(&self) -> RawState {
        self.actual.to_raw()
    }

    /// Handles one snapshot and returns the Report to send. Fields at or below
    /// the last handled generation are skipped: a duplicate applies nothing.
    pub(crate) async fn handle(mut self, desired: DesiredState) -> (Self, Report) {
        let results = if desired.generation <= self.last_applied {
            tracing::debug!(
                generation = desired.generation,
                last_applied = self.last_applied,
                "snapshot already handled; applying nothing"
            );
            Vec::new()
        } else {
            let results = self.apply_fields(&desired).await;
            self.last_applied = desired.generation;
            self.persist().await;
            self.last_results.clone_from(&results);
            results
        };
        self.publish();
        let report = Report { observed_generation: self.last_applied, actual: Some(self.actual.to_raw()), results };
        (self, report)
    }

    async fn apply_fields(&mut self, desired: &DesiredState) -> Vec<FieldResult> {
        let values = values_of(&self.schema, desired.state.as_ref());
        let handled_before = self.last_applied;
        let mut results = Vec::new();
        for meta in desired.fields.iter().filter(|m| m.generation > handled_before) {
            let path =
                self.schema.leaf(&meta.path).map_or_else(|_| Arc::from(meta.path.as_str()), |l| l.path().clone());
            // One span per field, a child of the write that set it.
            let trace = ApplySpan::start(&meta.traceparent, &path, meta.generation);
            let refusal = self.apply_field(&path, meta, &values, desired.generation).await.err();
            let (status, reason, message) = match refusal {
                None => (FieldStatus::Applied, String::new(), String::new()),
                Some(r) => (normalized(r.status), r.reason, r.message),
            };
            trace.end(status.as_str_name(), &reason);
            tracing::debug!(path = %path, generation = meta.generation, status = status.as_str_name(), %reason, "field handled");
            let event = match status {
                FieldStatus::Applied => AgentEvent::Applied { path: path.clone(), generation: meta.generation },
                _ => AgentEvent::Refused {
                    path: path.clone(),
                    generation: meta.generation,
                    status,
                    reason: reason.clone(),
                },
            };
            let _ = self.events.send(event);
            results.push(FieldResult {
                path: path.to_string(),
                generation: meta.generation,
                status: status as i32,
                reason,
                message,
            });
        }
        results
    }

    /// Guards, then the capability. On success the field joins the actual state.
    async fn apply_field(
        &mut self,
        path: &Arc<str>,
        meta: &FieldMeta,
        values: &HashMap<Arc<str>, FieldValue>,
        snapshot: u64,
    ) -> Result<(), Refusal> {
        let expires_at = meta.expires_at.and_then(|t| SystemTime::try_from(t).ok());
        self.guards.check_expiry(expires_at, SystemTime::now())?;
        let unsupported = || Refusal::rejected("unsupported", format!("this vehicle has no capability for `{path}`"));
        let leaf = self.schema.leaf(path).map_err(|_| unsupported())?;
        let capability_name = leaf.capability().to_string();
        let field = match values.get(path) {
            Some(field) => field.clone(),
            // An empty repeated or map field has no encoding: absent means empty.
            None if leaf.descriptor().is_list() || leaf.descriptor().is_map() => self
                .schema
                .field_value(path, Value::default_value_for_field(leaf.descriptor()))
                .map_err(|e| Refusal::failed("invalid_value", e.to_string()))?,
            None => {
                return Err(Refusal::rejected(
                    "missing_value",
                    format!("the snapshot lists `{path}` but carries no value for it"),
                ));
            }
        };
        let Some(capability) = self.capabilities.get_mut(&capability_name) else { return Err(unsupported()) };
        let change = FieldChange {
            path: path.clone(),
            value: field.value,
            generation: meta.generation,
            expires_at,
            traceparent: meta.traceparent.clone(),
        };
        self.guards.check_preconditions(&capability_name, &change)?;
        let now = Instant::now();
        self.guards.check_rate(&capability_name, now, snapshot)?;
        self.guards.record_apply(&capability_name, now, snapshot);
        match AssertUnwindSafe(capability.apply(&change)).catch_unwind().await {
            Ok(Ok(())) => {
                self.actual.set(path.clone(), field.encoded);
                Ok(())
            }
            Ok(Err(refusal)) => Err(refusal),
            Err(panic) => {
                let what = panic_message(panic.as_ref());
                tracing::error!(path = %path, capability = %capability_name, %what, "capability panicked");
                Err(Refusal::failed("capability_panicked", format!("{capability_name} panicked: {what}")))
            }
        }
    }

    /// Writes the handled generation to the state directory, if any.
    async fn persist(&mut self) {
        let Some(store) = self.store.clone() else { return };
        let generation = self.last_applied;
        match tokio::task::spawn_blocking(move || store.store(generation)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, generation, "cannot persist the handled generation"),
            Err(error) => tracing::error!(%error, generation, "persisting the handled generation failed"),
        }
    }

    /// Shows the generation and actual state to the handle.
    fn publish(&self) {
        self.shared.set_applied(self.last_applied, self.actual.to_raw());
    }
}

/// A refusal's status as the contract allows it in a FieldResult.
fn normalized(status: FieldStatus) -> FieldStatus {
    match status {
        FieldStatus::Rejected | FieldStatus::Failed | FieldStatus::Expired => status,
        _ => FieldStatus::Failed,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".into())
}

/// The values of a snapshot's state by path. Fields this schema does not know
/// (from a newer contract) are dropped here and later refused as unsupported.
fn values_of(schema: &StateSchema, state: Option<&RawState>) -> HashMap<Arc<str>, FieldValue> {
    let bytes = state.map(RawState::as_bytes).unwrap_or_default();
    let fields = match schema.split(bytes) {
        Ok(fields) => fields,
        Err(FieldError::UnknownField { .. }) => match strip_unknown(schema, bytes) {
            Some(known) => schema.split(&known).unwrap_or_default(),
            None => Vec::new(),
        },
        Err(error) => {
            tracing::warn!(%error, "desired state does not decode; its fields are refused");
            Vec::new()
        }
    };
    fields.into_iter().map(|f| (f.path.clone(), f)).collect()
}

/// Re-encodes a state without the fields the schema does not know.
fn strip_unknown(schema: &StateSchema, bytes: &[u8]) -> Option<Vec<u8>> {
    fn strip(message: &mut DynamicMessage) {
        message.take_unknown_fields().for_each(drop);
        for (_, value) in message.fields_mut() {
            strip_value(value);
        }
    }
    fn strip_value(value: &mut Value) {
        match value {
            Value::Message(m) => strip(m),
            Value::List(items) => items.iter_mut().for_each(strip_value),
            Value::Map(entries) => entries.values_mut().for_each(strip_value),
            _ => {}
        }
    }
    let mut message = DynamicMessage::decode(schema.message().clone(), bytes).ok()?;
    strip(&mut message);
    Some(message.encode_to_vec())
}

/// The vehicle's actual state, one encoding per leaf (so a later value of a
/// leaf replaces the earlier one, whatever its kind).
#[derive(Debug, Default)]
struct ActualState {
    /// An initial state the schema could not split, passed on as it is.
    opaque: Bytes,
    leaves: BTreeMap<Arc<str>, Bytes>,
}

impl ActualState {
    fn new(schema: &StateSchema, initial: RawState) -> Self {
        match schema.split(initial.as_bytes()) {
            Ok(fields) => {
                ActualState { opaque: Bytes::new(), leaves: fields.into_iter().map(|f| (f.path, f.encoded)).collect() }
            }
            Err(error) => {
                tracing::warn!(%error, "initial actual state does not fit the schema; reporting it unchanged");
                ActualState { opaque: initial.0, leaves: BTreeMap::new() }
            }
        }
    }

    fn set(&mut self, path: Arc<str>, encoded: Bytes) {
        self.leaves.insert(path, encoded);
    }

    fn to_raw(&self) -> RawState {
        if self.opaque.is_empty() {
            return StateSchema::join(self.leaves.values());
        }
        let mut out = BytesMut::from(self.opaque.as_ref());
        self.leaves.values().for_each(|leaf| out.extend_from_slice(leaf));
        RawState(out.freeze())
    }
}

/// An applier over the contract's schema with `capabilities`, no guards
/// beyond expiry (no rate limits), no persistence.
#[cfg(test)]
pub(crate) fn test_applier(capabilities: Vec<Box<dyn Capability>>) -> Applier {
    let capabilities = capabilities.into_iter().map(|c| (c.name().to_string(), c)).collect();
    let guards = Guards::new(std::time::Duration::ZERO, 0, std::time::Duration::ZERO, HashMap::new(), HashMap::new());
    let (events, _) = broadcast::channel(16);
    let shared = Arc::new(Shared::default());
    Applier::new(StateSchema::contract(), capabilities, guards, 0, RawState::default(), None, shared, events)
}

#[cfg(test)]
mod tests;
