//! One vehicle's record: desired fields with generation, expiry, origin and
//! status; the actual state it reports; its idempotency log.
//!
//! Every method is a pure state transition taking `now`. The record holds one
//! entry per state leaf at most, so its size is bounded by the schema, never
//! by how many writes apps make.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tether_proto::FieldValue;

use super::{FieldStatus, IdempotencyEntry, IdempotencyLog};

/// Whether a status is an end state for the value it describes.
pub fn is_final(status: FieldStatus) -> bool {
    !matches!(status, FieldStatus::Pending | FieldStatus::Delivered | FieldStatus::Unspecified)
}

/// Who set a value and how.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Origin {
    /// The authenticated caller (or "anonymous").
    pub subject: Arc<str>,
    /// The write's idempotency key.
    pub idempotency_key: Arc<str>,
    /// W3C trace context of the write, empty if none.
    pub traceparent: String,
}

/// The desired value of one leaf and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredField {
    /// The value (with its path and encoding).
    pub value: FieldValue,
    /// The generation of the write that set it.
    pub generation: u64,
    /// When it stops being desired; `None` for a standing state.
    pub expires_at: Option<SystemTime>,
    /// When it was set.
    pub set_at: SystemTime,
    /// Who set it.
    pub origin: Origin,
    /// Where it stands.
    pub status: FieldStatus,
    /// Machine-readable reason of a refusal or failure.
    pub reason: String,
    /// Human-readable explanation.
    pub message: String,
}

impl DesiredField {
    fn expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Whether the value is still desired: not expired, not refused, failed
    /// or cancelled.
    pub fn is_live(&self, now: SystemTime) -> bool {
        matches!(self.status, FieldStatus::Pending | FieldStatus::Delivered | FieldStatus::Applied)
            && !self.expired(now)
    }

    fn set_status(&mut self, status: FieldStatus, reason: &str, message: &str) {
        self.status = status;
        self.reason = reason.to_string();
        self.message = message.to_string();
    }
}

/// A validated desired-state write.
#[derive(Debug, Clone)]
pub struct Write {
    /// The leaves to set, each validated against the schema.
    pub fields: Vec<FieldValue>,
    /// Fingerprint of the whole request (fields, TTL, options).
    pub fingerprint: u64,
    /// Optimistic concurrency: the generation the caller saw.
    pub expected_generation: Option<u64>,
    /// Expiry of every field of the write; `None` for a standing state.
    pub expires_at: Option<SystemTime>,
    /// Who writes, with the idempotency key.
    pub origin: Origin,
}

/// Bounds of the idempotency log.
#[derive(Debug, Clone, Copy)]
pub struct KeyLimits {
    /// How long a key is remembered.
    pub window: Duration,
    /// How many keys a vehicle remembers at most.
    pub max: usize,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteResult {
    /// The desired generation after the write (the first call's, for a replay).
    pub generation: u64,
    /// Each field and the generation of its value.
    pub fields: Vec<(Arc<str>, u64)>,
    /// Whether any field changed (the generation was bumped).
    pub changed: bool,
    /// Whether this answered a retry of an earlier call with the same key.
    pub replayed: bool,
}

/// Why a write was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    /// The key was used for a different request.
    #[error("idempotency key `{key}` was already used for a different request")]
    KeyReused {
        /// The key.
        key: Arc<str>,
    },
    /// Optimistic concurrency failed.
    #[error("expected generation {expected}, but the vehicle is at generation {actual}")]
    GenerationMismatch {
        /// What the caller expected.
        expected: u64,
        /// The current generation.
        actual: u64,
    },
}

/// Where the value a write set for one field stands.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldOutcome {
    /// The field's path.
    pub path: Arc<str>,
    /// Its status (SUPERSEDED once a newer write replaced the value).
    pub status: FieldStatus,
    /// The generation of the value.
    pub generation: u64,
    /// Its expiry.
    pub expires_at: Option<SystemTime>,
    /// Machine-readable reason.
    pub reason: String,
    /// Human-readable explanation.
    pub message: String,
}

/// A vehicle's report about one field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldReport {
    /// The field's path.
    pub path: Arc<str>,
    /// The generation the vehicle handled.
    pub generation: u64,
    /// APPLIED, REJECTED, FAILED or EXPIRED.
    pub status: FieldStatus,
    /// Machine-readable reason.
    pub reason: String,
    /// Human-readable explanation.
    pub message: String,
}

/// One field of a desired-state snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotField {
    /// The field's path.
    pub path: Arc<str>,
    /// The generation of its value.
    pub generation: u64,
    /// Its expiry.
    pub expires_at: Option<SystemTime>,
    /// W3C trace context of the write.
    pub traceparent: String,
    /// A state message holding only this field, encoded.
    pub encoded: Bytes,
}

/// The complete current desired state, as sent to the vehicle.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The desired generation.
    pub generation: u64,
    /// The live fields.
    pub fields: Vec<SnapshotField>,
}

/// Everything known of one vehicle's state.
#[derive(Debug, Clone, Default)]
pub struct VehicleRecord {
    /// Bumped by every accepted change of desired state.
    pub generation: u64,
    /// The highest generation the vehicle reports it handled.
    pub observed_generation: u64,
    /// The desired fields, including finished ones, by path.
    pub desired: BTreeMap<Arc<str>, DesiredField>,
    /// The actual state last reported, by path.
    pub actual: BTreeMap<Arc<str>, FieldValue>,
    /// Idempotency keys of recent writes.
    pub keys: IdempotencyLog,
    /// Status changes not yet taken by the caller (for metrics); never
    /// stored, emptied by [`take_transitions`](Self::take_transitions).
    transitions: Vec<Transition>,
}

/// A field reaching a status, with when it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The new status.
    pub status: FieldStatus,
    /// When the field's value was written.
    pub set_at: SystemTime,
}

impl VehicleRecord {
    /// Applies a write: replays a known key, checks the expected generation,
    /// then sets every field whose value differs from the one in flight.
    pub fn write(&mut self, write: Write, now: SystemTime, limits: KeyLimits) -> Result<WriteResult, WriteError> {
        let key = write.origin.idempotency_key.clone();
        if let Some(entry) = self.keys.get(&key, now, limits.window) {
            if entry.fingerprint != write.fingerprint {
                return Err(WriteError::KeyReused { key });
            }
            return Ok(WriteResult {
                generation: entry.generation,
                fields: entry.fields.clone(),
                changed: false,
                replayed: true,
            });
        }
        if let Some(expected) = write.expected_generation.filter(|g| *g != self.generation) {
            return Err(WriteError::GenerationMismatch { expected, actual: self.generation });
        }

        let next = self.generation + 1;
        let mut changed = false;
        let mut fields = Vec::with_capacity(write.fields.len());
        for value in write.fields {
            let path = value.path.clone();
            if let Some(current) = self.desired.get_mut(&path).filter(|c| self_is_noop(c, &value, &self.actual, now)) {
                // The same value is already on its way or in place: keep its
                // generation, but honour the longer expiry.
                current.expires_at = match (current.expires_at, write.expires_at) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
                fields.push((path, current.generation));
                continue;
            }
            changed = true;
            fields.push((path.clone(), next));
            self.desired.insert(
                path,
                DesiredField {
                    value,
                    generation: next,
                    expires_at: write.expires_at,
                    set_at: now,
                    origin: write.origin.clone(),
                    status: FieldStatus::Pending,
                    reason: String::new(),
                    message: String::new(),
                },
            );
        }
        if changed {
            self.generation = next;
        }
        let entry = IdempotencyEntry {
            fingerprint: write.fingerprint,
            generation: self.generation,
            fields: fields.clone(),
            at: now,
        };
        self.keys.insert(key, entry, limits.max, limits.window);
        Ok(WriteResult { generation: self.generation, fields, changed, replayed: false })
    }

    /// Where the value `generation` wrote at `path` stands.
    pub fn outcome(&self, path: &Arc<str>, generation: u64, now: SystemTime) -> FieldOutcome {
        let mut outcome = FieldOutcome {
            path: path.clone(),
            status: FieldStatus::Superseded,
            generation,
            expires_at: None,
            reason: String::new(),
            message: String::new(),
        };
        match self.desired.get(path) {
            Some(field) if field.generation == generation => {
                outcome.status = effective_status(field, now);
                outcome.expires_at = field.expires_at;
                outcome.reason = field.reason.clone();
                outcome.message = field.message.clone();
            }
            Some(field) if field.generation > generation => {
                outcome.message = format!("replaced by generation {}", field.generation);
            }
            _ => outcome.message = "no longer known".into(),
        }
        outcome
    }

    /// Outcomes of several fields.
    pub fn outcomes(&self, fields: &[(Arc<str>, u64)], now: SystemTime) -> Vec<FieldOutcome> {
        fields.iter().map(|(path, generation)| self.outcome(path, *generation, now)).collect()
    }

    /// Marks undelivered fields past their expiry EXPIRED. Returns whether
    /// anything changed.
    pub fn expire(&mut self, now: SystemTime) -> bool {
        let mut changed = false;
        for field in self.desired.values_mut() {
            if field.status == FieldStatus::Pending && field.expired(now) {
                field.set_status(FieldStatus::Expired, "expired", "expired before it was delivered");
                self.transitions.push(Transition { status: FieldStatus::Expired, set_at: field.set_at });
                changed = true;
            }
        }
        changed
    }

    /// The earliest expiry of an undelivered field.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.desired.values().filter(|f| f.status == FieldStatus::Pending).filter_map(|f| f.expires_at).min()
    }

    /// The complete current desired state: every live field. Expired fields
    /// are marked and left out, so the server never delivers them.
    pub fn snapshot(&mut self, now: SystemTime) -> Snapshot {
        self.expire(now);
        let fields = self
            .desired
            .values()
            .filter(|f| f.is_live(now))
            .map(|f| SnapshotField {
                path: f.value.path.clone(),
                generation: f.generation,
                expires_at: f.expires_at,
                traceparent: f.origin.traceparent.clone(),
                encoded: f.value.encoded.clone(),
            })
            .collect();
        Snapshot { generation: self.generation, fields }
    }

    /// The status changes since the last call, oldest first.
    pub fn take_transitions(&mut self) -> Vec<Transition> {
        std::mem::take(&mut self.transitions)
    }

    /// The vehicle received the snapshot of `generation`: its pending fields
    /// are DELIVERED.
    pub fn acknowledge(&mut self, generation: u64) -> bool {
        let mut changed = false;
        for field in self.desired.values_mut() {
            if field.status == FieldStatus::Pending && field.generation <= generation {
                field.status = FieldStatus::Delivered;
                self.transitions.push(Transition { status: FieldStatus::Delivered, set_at: field.set_at });
                changed = true;
            }
        }
        changed
    }

    /// A vehicle said hello with its full actual state, the last generation
    /// it handled and the results of that generation (re-sent in case their
    /// report was lost). In-flight fields it handled whose result is still
    /// unknown are settled from the actual state.
    pub fn hello(&mut self, last_applied: u64, actual: Vec<FieldValue>, results: Vec<FieldReport>) {
        self.actual = actual.into_iter().map(|f| (f.path.clone(), f)).collect();
        self.observed_generation = last_applied;
        // A vehicle ahead of the record (a store restored from an old backup)
        // would drop new writes as duplicates: continue above its generation.
        self.generation = self.generation.max(last_applied);
        self.apply_results(results);
        for field in self.desired.values_mut() {
            if is_final(field.status) || field.generation > last_applied {
                continue;
            }
            let applied = self.actual.get(&field.value.path).is_some_and(|a| a.value == field.value.value);
            let status = if applied { FieldStatus::Applied } else { FieldStatus::Failed };
            self.transitions.push(Transition { status, set_at: field.set_at });
            if applied {
                field.set_status(FieldStatus::Applied, "", "");
            } else {
                field.set_status(
                    FieldStatus::Failed,
                    "result_lost",
                    "the vehicle handled this generation but its result was lost and its actual state differs",
                );
            }
        }
    }

    /// Records field results; ignores results about a value that is no
    /// longer current or already final. Returns whether any status changed.
    fn apply_results(&mut self, results: Vec<FieldReport>) -> bool {
        let mut changed = false;
        for result in results {
            let Some(field) = self.desired.get_mut(&result.path) else { continue };
            if field.generation != result.generation || is_final(field.status) {
                continue;
            }
            if matches!(
                result.status,
                FieldStatus::Applied | FieldStatus::Rejected | FieldStatus::Failed | FieldStatus::Expired
            ) {
                field.set_status(result.status, &result.reason, &result.message);
                self.transitions.push(Transition { status: result.status, set_at: field.set_at });
                changed = true;
            }
        }
        changed
    }

    /// A vehicle reported actual state and field results. Results about a
    /// value that is no longer current, or already final, are ignored.
    pub fn report(&mut self, observed: u64, actual: Vec<FieldValue>, results: Vec<FieldReport>) -> bool {
        let mut changed = !actual.is_empty() || observed != self.observed_generation;
        self.observed_generation = self.observed_generation.max(observed);
        for value in actual {
            self.actual.insert(value.path.clone(), value);
        }
        changed |= self.apply_results(results);
        changed
    }

    /// Cancels fields not yet applied (all of them when `paths` is `None`).
    /// Bumps the generation when anything was cancelled, so the next
    /// snapshot no longer carries them.
    pub fn cancel(&mut self, paths: Option<&[Arc<str>]>, now: SystemTime) -> Vec<FieldOutcome> {
        self.expire(now);
        let next = self.generation + 1;
        let mut cancelled = Vec::new();
        for (path, field) in self.desired.iter_mut() {
            let wanted = paths.is_none_or(|p| p.contains(path));
            if wanted && !is_final(field.status) {
                field.set_status(FieldStatus::Cancelled, "cancelled", &format!("cancelled at generation {next}"));
                self.transitions.push(Transition { status: FieldStatus::Cancelled, set_at: field.set_at });
                cancelled.push(FieldOutcome {
                    path: path.clone(),
                    status: FieldStatus::Cancelled,
                    generation: field.generation,
                    expires_at: field.expires_at,
                    reason: field.reason.clone(),
                    message: field.message.clone(),
                });
            }
        }
        if !cancelled.is_empty() {
            self.generation = next;
        }
        cancelled
    }

    /// Fields pending or delivered.
    pub fn unapplied(&self) -> usize {
        self.desired.values().filter(|f| !is_final(f.status)).count()
    }
}

/// A field's status as of `now` (a pending field past its expiry is EXPIRED
/// even before a sweep marks it).
fn effective_status(field: &DesiredField, now: SystemTime) -> FieldStatus {
    if field.status == FieldStatus::Pending && field.expired(now) { FieldStatus::Expired } else { field.status }
}

/// Whether writing `value` over `current` changes nothing: the same value is
/// in flight, or applied and matching the actual state.
fn self_is_noop(
    current: &DesiredField,
    value: &FieldValue,
    actual: &BTreeMap<Arc<str>, FieldValue>,
    now: SystemTime,
) -> bool {
    if current.value.value != value.value || !current.is_live(now) {
        return false;
    }
    match current.status {
        FieldStatus::Pending | FieldStatus::Delivered => true,
        FieldStatus::Applied => actual.get(&value.path).is_some_and(|a| a.value == value.value),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
