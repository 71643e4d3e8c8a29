//! Durable storage of vehicle records and of the audit trail behind a small
//! trait, so the embedded redb store and a NATS JetStream store are
//! interchangeable.

mod codec;
mod redb;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::oneshot;

pub use self::codec::{decode_record, encode_record};
pub use self::redb::RedbStore;

/// A storage failure. Callers see UNAVAILABLE; details go to the log only.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage: {0}")]
pub struct StoreError(pub String);

/// Resolves once a saved record is durable (or failed to be).
pub type Durable = oneshot::Receiver<Result<(), StoreError>>;

/// One audit record as a store keeps it: opaque bytes filed under a vehicle,
/// ordered by a sequence the store assigns, aged out by `at`.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// The vehicle it is filed under.
    pub vehicle: Arc<str>,
    /// When the call was decided (retention counts from it).
    pub at: SystemTime,
    /// The encoded record.
    pub record: Bytes,
}

/// Where vehicle records and the audit trail live. Implementations batch
/// saves (group commit): many records become durable in one commit.
pub trait Store: Send + Sync + 'static {
    /// Every stored vehicle with its encoded record.
    fn load_all(&self) -> Result<Vec<(Arc<str>, Bytes)>, StoreError>;

    /// Saves a vehicle's encoded record, and `audit` in the same commit; the
    /// latest save of a vehicle wins. The returned receiver resolves when it is
    /// durable.
    fn save(&self, vehicle: Arc<str>, record: Bytes, audit: Option<AuditEntry>) -> Durable;

    /// Appends an audit record on its own (a call that changed no record).
    fn audit(&self, entry: AuditEntry) -> Durable;

    /// A vehicle's audit records with a sequence below `before` (all if
    /// `None`), newest first, at most `limit`.
    fn audit_page(&self, vehicle: &str, before: Option<u64>, limit: usize) -> Result<Vec<(u64, Bytes)>, StoreError>;

    /// Removes audit records older than `before`, at most `limit` of them in
    /// one commit; resolves to how many were removed.
    fn prune_audit(&self, before: SystemTime, limit: usize) -> oneshot::Receiver<Result<usize, StoreError>>;

    /// A number that grows at every start of the store, so session ids stay
    /// monotonic across restarts.
    fn boot_epoch(&self) -> u32;

    /// Makes every save so far durable and stops accepting saves.
    fn close(&self);
}
