//! The redb store's tables and the form of their rows: each vehicle record
//! and idempotency-key row is sealed with a crc32 of the table, the row's key
//! and its value, so that damage redb cannot see (a row whose bytes changed
//! but whose page still verifies) is found when the row is read, never
//! served as data.

use std::collections::HashMap;
use std::sync::Arc;

use ::redb::{ReadTransaction, ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use bytes::Bytes;

use super::Fail;
use crate::store::StoredRows;
use crate::store::wal::Frame;

pub(super) const VEHICLES: TableDefinition<&str, &[u8]> = TableDefinition::new("vehicles");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Idempotency keys by (vehicle, key) → entry: a write adds one row instead
/// of rewriting the vehicle's whole log.
pub(super) const KEYS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("idempotency_keys");
/// Audit records by (vehicle, sequence): a vehicle's trail is one range.
pub(super) const AUDIT: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("audit");
/// The same records by (recorded at, µs since the epoch; sequence) → vehicle:
/// retention removes a prefix of it.
pub(super) const AUDIT_AGE: TableDefinition<(u64, u64), &str> = TableDefinition::new("audit_age");
/// Rows of vehicles found damaged and moved aside by `--recover-damaged-store`:
/// (vehicle, what: `record`, `key:<key>` or `why`) → the row as it was.
pub(super) const QUARANTINE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("quarantine");
/// The next audit sequence, in META.
pub(super) const AUDIT_SEQ: &str = "audit_seq";
/// The sequence of the last log frame redb holds, in META: made durable by
/// each checkpoint, it tells recovery where to start.
pub(super) const WAL_SEQ: &str = "wal_seq";
/// The boot epoch, in META.
pub(super) const BOOT_EPOCH: &str = "boot_epoch";
/// The form of vehicle and key rows, in META: absent for the form before
/// rows were sealed, [`SEALED`] since.
pub(super) const ROW_FORMAT: &str = "row_format";
/// Rows carry a crc32 (see [`seal`]).
pub(super) const SEALED: u64 = 2;

const CRC: usize = 4;

/// A row's value with its crc32 in front: the crc covers the table's name,
/// the row's key and the value, so a value moved under another key, or into
/// another table, does not verify either.
fn seal(table: &str, key: &[&str], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CRC + value.len());
    out.extend_from_slice(&checksum(table, key, value).to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// The value of a sealed row, if its crc32 matches.
fn unseal<'a>(table: &str, key: &[&str], row: &'a [u8]) -> Result<&'a [u8], String> {
    let (crc, value) = row.split_at_checked(CRC).ok_or_else(|| "a row shorter than its checksum".to_string())?;
    if u32::from_le_bytes(crc.try_into().expect("4 bytes")) != checksum(table, key, value) {
        return Err(format!("its {table} row does not match its checksum"));
    }
    Ok(value)
}

fn checksum(table: &str, key: &[&str], value: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(table.as_bytes());
    for part in key {
        h.update(&[0]);
        h.update(part.as_bytes());
    }
    h.update(&[0]);
    h.update(value);
    h.finalize()
}

/// Applies frames' changes, in order, to a write transaction (a live
/// catch-up and recovery take the same path). Each table is opened once,
/// and a row changed by several frames is written once, as the last frame
/// left it: the result is the same as applying them one by one.
pub(super) fn apply(txn: &WriteTransaction, frames: &[Frame]) -> Result<(), Fail> {
    let Some(last) = frames.last() else { return Ok(()) };
    let mut records: HashMap<&str, &Bytes> = HashMap::new();
    let mut keys: HashMap<(&str, &str), Option<&Bytes>> = HashMap::new();
    for frame in frames {
        records.extend(frame.records.iter().map(|row| (row.vehicle.as_str(), &row.record)));
        keys.extend(frame.keys.iter().map(|row| ((row.vehicle.as_str(), row.key.as_str()), row.entry.as_ref())));
    }
    let mut table = txn.open_table(VEHICLES)?;
    for (vehicle, record) in records {
        table.insert(vehicle, seal(VEHICLES.name(), &[vehicle], record).as_slice())?;
    }
    if !keys.is_empty() {
        let mut table = txn.open_table(KEYS)?;
        for ((vehicle, key), entry) in keys {
            match entry {
                Some(entry) => {
                    table.insert((vehicle, key), seal(KEYS.name(), &[vehicle, key], entry).as_slice()).map(drop)
                }
                None => table.remove((vehicle, key)).map(drop),
            }?;
        }
    }
    let mut meta = txn.open_table(META)?;
    if frames.iter().any(|f| !f.audits.is_empty()) {
        let mut audit = txn.open_table(AUDIT)?;
        let mut age = txn.open_table(AUDIT_AGE)?;
        for row in frames.iter().flat_map(|f| &f.audits) {
            audit.insert((row.vehicle.as_str(), row.seq), row.record.as_ref())?;
            age.insert((row.at, row.seq), row.vehicle.as_str())?;
        }
        meta.insert(AUDIT_SEQ, last.audit_next)?;
    }
    meta.insert(WAL_SEQ, last.seq)?;
    Ok(())
}

/// Seals every vehicle and key row of a store written before rows were
/// sealed, in the caller's transaction; a no-op once done.
pub(super) fn seal_old_rows(txn: &WriteTransaction) -> Result<(), Fail> {
    let mut meta = txn.open_table(META)?;
    if meta.get(ROW_FORMAT)?.is_some_and(|v| v.value() >= SEALED) {
        return Ok(());
    }
    let mut vehicles = txn.open_table(VEHICLES)?;
    let rows: Vec<(String, Vec<u8>)> = vehicles
        .iter()?
        .map(|row| row.map(|(k, v)| (k.value().to_string(), v.value().to_vec())))
        .collect::<Result<_, _>>()?;
    for (vehicle, value) in &rows {
        vehicles.insert(vehicle.as_str(), seal(VEHICLES.name(), &[vehicle], value).as_slice())?;
    }
    let mut keys = txn.open_table(KEYS)?;
    let rows: Vec<((String, String), Vec<u8>)> = keys
        .iter()?
        .map(|row| {
            row.map(|(k, v)| {
                let (vehicle, key) = k.value();
                ((vehicle.to_string(), key.to_string()), v.value().to_vec())
            })
        })
        .collect::<Result<_, _>>()?;
    for ((vehicle, key), value) in &rows {
        keys.insert((vehicle.as_str(), key.as_str()), seal(KEYS.name(), &[vehicle, key], value).as_slice())?;
    }
    meta.insert(ROW_FORMAT, SEALED)?;
    Ok(())
}

/// Every stored vehicle with its record and keys; a vehicle whose rows do not
/// verify (or that has keys and no record) comes with its `damage` said.
pub(super) fn load_all(txn: &ReadTransaction) -> Result<Vec<StoredRows>, Fail> {
    let mut keys: HashMap<String, Keys> = HashMap::new();
    for row in txn.open_table(KEYS)?.iter()? {
        let (k, v) = row?;
        let (vehicle, key) = k.value();
        keys.entry(vehicle.to_string()).or_default().add(vehicle, key, v.value());
    }
    let mut out = Vec::new();
    for row in txn.open_table(VEHICLES)?.iter()? {
        let (k, v) = row?;
        let vehicle = k.value();
        out.push(stored(vehicle, Some(v.value()), keys.remove(vehicle).unwrap_or_default()));
    }
    // Keys whose vehicle has no record: its record row is gone.
    out.extend(keys.into_iter().map(|(vehicle, keys)| stored(&vehicle, None, keys)));
    Ok(out)
}

/// One vehicle's rows, or `None` when nothing of it is stored.
pub(super) fn load_one(txn: &ReadTransaction, vehicle: &str) -> Result<Option<StoredRows>, Fail> {
    let mut keys = Keys::default();
    for (key, value) in keys_of(&txn.open_table(KEYS)?, vehicle)? {
        keys.add(vehicle, &key, &value);
    }
    let record = txn.open_table(VEHICLES)?.get(vehicle)?;
    if record.is_none() && keys.entries.is_empty() && keys.damage.is_none() {
        return Ok(None);
    }
    Ok(Some(stored(vehicle, record.as_ref().map(|r| r.value()), keys)))
}

/// A vehicle's unsealed keys, and the first damage found among them.
#[derive(Default)]
struct Keys {
    entries: Vec<(Arc<str>, Bytes)>,
    damage: Option<String>,
}

impl Keys {
    fn add(&mut self, vehicle: &str, key: &str, row: &[u8]) {
        match unseal(KEYS.name(), &[vehicle, key], row) {
            Ok(value) => self.entries.push((Arc::from(key), Bytes::copy_from_slice(value))),
            Err(why) => {
                self.damage.get_or_insert(format!("idempotency key {key:?}: {why}"));
            }
        }
    }
}

/// A vehicle's rows from its record row (`None`: it has none, which with
/// keys is damage) and its keys.
fn stored(vehicle: &str, record: Option<&[u8]>, keys: Keys) -> StoredRows {
    let (record, damage) = match record.map(|row| unseal(VEHICLES.name(), &[vehicle], row)) {
        Some(Ok(value)) => (Bytes::copy_from_slice(value), keys.damage),
        Some(Err(why)) => (Bytes::new(), Some(why)),
        None => (Bytes::new(), Some("idempotency keys but no vehicle record".into())),
    };
    StoredRows { vehicle: Arc::from(vehicle), record, keys: keys.entries, damage }
}

/// The key rows of one vehicle, as stored: (key, row).
fn keys_of(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    vehicle: &str,
) -> Result<Vec<(String, Vec<u8>)>, Fail> {
    let mut out = Vec::new();
    for row in table.range((vehicle, "")..)? {
        let (k, v) = row?;
        let (owner, key) = k.value();
        if owner != vehicle {
            break;
        }
        out.push((key.to_string(), v.value().to_vec()));
    }
    Ok(out)
}

/// Moves a vehicle's rows (as they are, sealed or not) into [`QUARANTINE`]
/// with the reason, in the caller's transaction.
pub(super) fn quarantine(txn: &WriteTransaction, vehicle: &str, why: &str) -> Result<(), Fail> {
    let mut quarantine = txn.open_table(QUARANTINE)?;
    let mut keys = txn.open_table(KEYS)?;
    for (key, value) in keys_of(&keys, vehicle)? {
        quarantine.insert((vehicle, format!("key:{key}").as_str()), value.as_slice())?;
        keys.remove((vehicle, key.as_str()))?;
    }
    let mut vehicles = txn.open_table(VEHICLES)?;
    if let Some(record) = vehicles.remove(vehicle)? {
        quarantine.insert((vehicle, "record"), record.value())?;
    }
    quarantine.insert((vehicle, "why"), why.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_under_its_own_table_and_key() {
        let row = seal("vehicles", &["car-1"], b"record");
        assert_eq!(unseal("vehicles", &["car-1"], &row).unwrap(), b"record");
        assert!(unseal("vehicles", &["car-2"], &row).is_err(), "moved under another key");
        assert!(unseal("idempotency_keys", &["car-1"], &row).is_err(), "moved into another table");
        assert!(unseal("idempotency_keys", &["car", "-1"], &seal("idempotency_keys", &["car-", "1"], b"e")).is_err());
        let mut flipped = row.clone();
        flipped[6] ^= 0x10;
        assert!(unseal("vehicles", &["car-1"], &flipped).is_err(), "a flipped bit");
        assert!(unseal("vehicles", &["car-1"], &row[..3]).is_err(), "cut short");
    }
}
