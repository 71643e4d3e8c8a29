//! The stored form of a vehicle record: protobuf messages declared here (not
//! part of the public contract), so stored data stays readable across
//! versions. Field values are kept as their one-leaf state encodings and read
//! back through the schema.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use tether_proto::StateSchema;

use super::{RecordSave, Urgency};
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
    /// Idempotency keys, as records written before keys were stored on
    /// their own held them: read (and moved to the key table by the next
    /// save), never written.
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

/// One idempotency key's entry. In the key table the key is the row's key and
/// `key` is empty; inside a legacy record it names the key.
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

/// What the next save of `record` writes: the record, and the keys its log
/// added and forgot since the previous save (taken from the log).
pub fn encode_save(record: &mut VehicleRecord) -> RecordSave {
    let changes = record.keys.take_changes();
    RecordSave {
        record: encode_record(record),
        put_keys: changes.put.into_iter().map(|(key, entry)| (key, encode_key(&entry))).collect(),
        gone_keys: changes.gone,
        urgency: Urgency::Now,
        on_commit: None,
        epoch: 0,
    }
}

/// Encodes a record, without its idempotency keys.
fn encode_record(record: &VehicleRecord) -> Bytes {
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
        keys: Vec::new(),
    };
    Bytes::from(stored.encode_to_vec())
}

fn encode_key(e: &IdempotencyEntry) -> Bytes {
    let stored = StoredKey {
        key: String::new(),
        fingerprint: e.fingerprint,
        generation: e.generation,
        at_nanos: nanos(e.at),
        paths: e.fields.iter().map(|(p, _)| p.to_string()).collect(),
        generations: e.fields.iter().map(|(_, g)| *g).collect(),
    };
    Bytes::from(stored.encode_to_vec())
}

fn decode_key(k: StoredKey) -> IdempotencyEntry {
    let fields: Vec<(Arc<str>, u64)> = k.paths.into_iter().map(Arc::from).zip(k.generations).collect();
    IdempotencyEntry { fingerprint: k.fingerprint, generation: k.generation, fields, at: time(k.at_nanos) }
}

/// Decodes a stored record and its keys. Fields the schema no longer has are
/// dropped (and logged), never fatal: a contract may remove a field. A
/// record or key entry that does not decode is an error (the rows verified,
/// so it is not damage on disk but a format this build cannot read).
pub fn decode_record(
    vehicle: &str,
    bytes: &[u8],
    keys: &[(Arc<str>, Bytes)],
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
    // Oldest first, as the log keeps them; keys held inside a legacy record
    // are journalled as added, so the next save moves them to the key table.
    let mut all: Vec<(Arc<str>, IdempotencyEntry, bool)> = Vec::with_capacity(keys.len() + stored.keys.len());
    for (key, bytes) in keys {
        all.push((key.clone(), decode_key(StoredKey::decode(bytes.as_ref())?), false));
    }
    for mut k in stored.keys {
        let key = Arc::from(std::mem::take(&mut k.key));
        all.push((key, decode_key(k), true));
    }
    all.sort_by_key(|(_, e, _)| e.at);
    for (key, entry, legacy) in all {
        if legacy {
            record.keys.insert(key, entry, limits.max, limits.window);
        } else {
            record.keys.restore(key, entry, limits.max, limits.window);
        }
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use tether_proto::state::v1::{VehicleState, Windows};

    use super::*;
    use crate::core::Write;

    const LIMITS: KeyLimits = KeyLimits { window: Duration::from_secs(24 * 3600), max: 1000 };

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    /// A record that took `writes` writes, each under its own key.
    fn written(writes: u64) -> VehicleRecord {
        let schema = StateSchema::contract();
        let mut record = VehicleRecord::default();
        for i in 0..writes {
            let state = VehicleState {
                windows: Some(Windows { front_left: Some(u32::try_from(i % 100).unwrap()), ..Default::default() }),
                ..Default::default()
            };
            let write = Write {
                fields: schema.split(&state.encode_to_vec()).unwrap(),
                fingerprint: i,
                expected_generation: None,
                expires_at: None,
                origin: Origin {
                    subject: "app".into(),
                    idempotency_key: format!("0f8e4c1a-6a4b-4a8e-9d3c-{i:012}").into(),
                    traceparent: String::new(),
                },
            };
            record.write(write, at(i), LIMITS).unwrap();
        }
        record
    }

    fn keys(record: &VehicleRecord) -> Vec<(String, u64, u64)> {
        let mut keys: Vec<_> = record.keys.iter().map(|(k, e)| (k.to_string(), e.generation, e.fingerprint)).collect();
        keys.sort();
        keys
    }

    #[test]
    fn a_save_writes_the_new_keys_only_and_its_record_does_not_grow_with_them() {
        let mut one = written(1);
        let mut full = written(1000);
        let (one, full) = (encode_save(&mut one), encode_save(&mut full));
        assert_eq!(full.put_keys.len(), 1000, "the first save writes every key it has not written");
        assert!(
            full.record.len() <= one.record.len() + 8,
            "1000 keys: {} bytes, 1 key: {} bytes",
            full.record.len(),
            one.record.len()
        );

        // The next write adds one key and, at the bound, forgets the oldest.
        let mut record = written(1000);
        encode_save(&mut record);
        let next = Write {
            fields: written(1).desired.into_values().map(|f| f.value).collect(),
            fingerprint: 7,
            expected_generation: None,
            expires_at: None,
            origin: Origin { subject: "app".into(), idempotency_key: "next".into(), traceparent: String::new() },
        };
        record.write(next, at(2000), LIMITS).unwrap();
        let save = encode_save(&mut record);
        assert_eq!(save.put_keys.iter().map(|(k, _)| k.as_ref()).collect::<Vec<_>>(), ["next"]);
        assert_eq!(save.gone_keys.len(), 1);
        assert!(save.gone_keys[0].ends_with("000000000000"), "the oldest: {:?}", save.gone_keys);
    }

    #[test]
    fn records_and_keys_read_back_as_they_were() {
        let schema = StateSchema::contract();
        let mut record = written(30);
        let save = encode_save(&mut record);
        let back = decode_record("car-1", &save.record, &save.put_keys, &schema, LIMITS).unwrap();
        assert_eq!(keys(&back), keys(&record));
        assert_eq!((back.generation, back.desired.len()), (record.generation, record.desired.len()));
        assert!(!back.keys.has_changes(), "keys read from the key table need no save");
        // Oldest first, so the bound forgets the oldest after a reload too.
        let first: Vec<&str> = back.keys.iter().take(2).map(|(k, _)| k.as_ref()).collect();
        assert!(first[0].ends_with("000000000000") && first[1].ends_with("000000000001"), "{first:?}");
    }

    #[test]
    fn keys_inside_a_legacy_record_move_to_the_key_table_at_the_next_save() {
        let schema = StateSchema::contract();
        let record = written(3);
        let mut legacy = StoredVehicle::decode(encode_record(&record).as_ref()).unwrap();
        legacy.keys = record
            .keys
            .iter()
            .map(|(k, e)| StoredKey { key: k.to_string(), ..StoredKey::decode(encode_key(e).as_ref()).unwrap() })
            .collect();
        let bytes = legacy.encode_to_vec();

        let mut back = decode_record("car-1", &bytes, &[], &schema, LIMITS).unwrap();
        assert_eq!(keys(&back), keys(&record), "a legacy record's keys are honoured");
        assert!(back.keys.has_changes());
        let save = encode_save(&mut back);
        let mut moved: Vec<String> = save.put_keys.iter().map(|(k, _)| k.to_string()).collect();
        moved.sort();
        assert_eq!(moved, keys(&record).into_iter().map(|(k, ..)| k).collect::<Vec<_>>());
        assert!(StoredVehicle::decode(save.record.as_ref()).unwrap().keys.is_empty());
        // What the save wrote reads back the same.
        let again = decode_record("car-1", &save.record, &save.put_keys, &schema, LIMITS).unwrap();
        assert_eq!(keys(&again), keys(&record));
    }
}
