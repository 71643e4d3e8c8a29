//! Durable storage of vehicle records behind a small trait, so the embedded
//! redb store and a NATS JetStream store are interchangeable.

mod codec;
mod redb;

use std::sync::Arc;

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

/// Where vehicle records live. Implementations batch saves (group commit):
/// many records become durable in one commit.
pub trait Store: Send + Sync + 'static {
    /// Every stored vehicle with its encoded record.
    fn load_all(&self) -> Result<Vec<(Arc<str>, Bytes)>, StoreError>;

    /// Saves a vehicle's encoded record; the latest save of a vehicle wins.
    /// The returned receiver resolves when it is durable.
    fn save(&self, vehicle: Arc<str>, record: Bytes) -> Durable;

    /// A number that grows at every start of the store, so session ids stay
    /// monotonic across restarts.
    fn boot_epoch(&self) -> u32;

    /// Makes every save so far durable and stops accepting saves.
    fn close(&self);
}
