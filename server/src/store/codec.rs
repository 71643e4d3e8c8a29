//! The stored form of a vehicle record: protobuf messages declared here (not
//! part of the public contract), so stored data stays readable across
//! versions. Field values are kept as their one-leaf state encodings and read
//! back through the schema.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use tether_proto::StateSchema;

use crate::core::{DesiredField, FieldStatus, IdempotencyEntry, KeyLimits, Origin, VehicleRecord};

#[derive(Clone, PartialEq, Message)]
struct StoredVehicle {
    #[prost(uint64, tag = "1")]
    generation: u64,
    #[prost(uint64, tag = "2")]
    observed_generation: u64,
    #[prost(message, repeated, tag = "3")]
    desired: Vec<StoredField>,
    /// The actual state, as one encoded state message.
    #[prost(bytes = "bytes", tag = "4")]
    actual: Bytes,
    #[prost(message, repeated, tag = "5")]
    keys: Vec<StoredKey>,
}

#[derive(Clone, PartialEq, Message)]
struct StoredField {
    #[prost(bytes = "bytes", tag = "1")]
    encoded: Bytes,
    #[prost(uint64, tag = "2")]
    generation: u64,
    #[prost(uint64, optional, tag = "3")]
    expires_at_nanos: Option<u64>,
    #[prost(uint64, tag = "4")]
    set_at_nanos: u64,
    #[prost(string, tag = "5")]
    subject: String,
    #[prost(string, tag = "6")]
    idempotency_key: String,
    #[prost(string, tag = "7")]
    traceparent: String,
    #[prost(int32, tag = "8")]
    status: i32,
    #[prost(string, tag = "9")]
    reason: String,
    #[prost(string, tag = "10")]
    message: String,
}

#[derive(Clone, PartialEq, Message)]
struct StoredKey {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(fixed64, tag = "2")]
    fingerprint: u64,
    #[prost(uint64, tag = "3")]
    generation: u64,
    #[prost(uint64, tag = "4")]
    at_nanos: u64,
    #[prost(string, repeated, tag = "5")]
    paths: Vec<String>,
    #[prost(uint64, repeated, tag = "6")]
    generations: Vec<u64>,
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// Encodes a record for storage.
pub fn encode_record(record: &VehicleRecord) -> Bytes {
    let stored = StoredVehicle {
        generation: record.generation,
        observed_generation: record.observed_generation,
        desired: record
            .desired
            .values()
            .map(|f| StoredField {
                encoded: f.value.encoded.clone(),
                generation: f.generation,
                expires_at_nanos: f.expires_at.map(nanos),
                set_at_nanos: nanos(f.set_at),
                subject: f.origin.subject.to_string(),
                idempotency_key: f.origin.idempotency_key.to_string(),
                traceparent: f.origin.traceparent.clone(),
                status: f.status as i32,
                reason: f.reason.clone(),
                message: f.message.clone(),
            })
            .collect(),
        actual: StateSchema::join(record.actual.values().map(|v| &v.encoded)).0,
        keys: record
            .keys
            .iter()
            .map(|(key, e)| StoredKey {
                key: key.to_string(),
                fingerprint: e.fingerprint,
                generation: e.generation,
                at_nanos: nanos(e.at),
                paths: e.fields.iter().map(|(p, _)| p.to_string()).collect(),
                generations: e.fields.iter().map(|(_, g)| *g).collect(),
            })
            .collect(),
    };
    Bytes::from(stored.encode_to_vec())
}

/// Decodes a stored record. Fields the schema no longer has are dropped
/// (and logged), never fatal.
pub fn decode_record(
    vehicle: &str,
    bytes: &[u8],
    schema: &StateSchema,
    limits: KeyLimits,
) -> Result<VehicleRecord, prost::DecodeError> {
    let stored = StoredVehicle::decode(bytes)?;
    let mut record = VehicleRecord::default();
    record.generation = stored.generation;
    record.observed_generation = stored.observed_generation;
    for f in stored.desired {
        let value = match schema.split(&f.encoded) {
            Ok(mut values) if values.len() == 1 => values.remove(0),
            other => {
                tracing::warn!(vehicle, ?other, "dropping a stored desired field the schema cannot read");
                continue;
            }
        };
        let field = DesiredField {
            value,
            generation: f.generation,
            expires_at: f.expires_at_nanos.map(time),
            set_at: time(f.set_at_nanos),
            origin: Origin {
                subject: f.subject.into(),
                idempotency_key: f.idempotency_key.into(),
                traceparent: f.traceparent,
            },
            status: FieldStatus::try_from(f.status).unwrap_or(FieldStatus::Pending),
            reason: f.reason,
            message: f.message,
        };
        record.desired.insert(field.value.path.clone(), field);
    }
    match schema.split(&stored.actual) {
        Ok(values) => record.actual = values.into_iter().map(|v| (v.path.clone(), v)).collect(),
        Err(e) => tracing::warn!(vehicle, error = %e, "dropping a stored actual state the schema cannot read"),
    }
    for k in stored.keys {
        let fields: Vec<(Arc<str>, u64)> = k.paths.into_iter().map(Arc::from).zip(k.generations).collect();
        let entry =
            IdempotencyEntry { fingerprint: k.fingerprint, generation: k.generation, fields, at: time(k.at_nanos) };
        record.keys.insert(k.key.into(), entry, limits.max, limits.window);
    }
    Ok(record)
}
