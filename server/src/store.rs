//! Durable storage of vehicle records and of the audit trail behind a small
//! trait, so the embedded redb store and a NATS JetStream store are
//! interchangeable.

mod codec;
mod nats;
mod redb;
mod wal;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

pub use self::codec::{decode_record, encode_save};
pub use self::nats::{NatsOptions, NatsStore};
pub use self::redb::{OpenOptions, RedbStore};

/// A storage failure. Callers see UNAVAILABLE; details go to the log only.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage: {reason}")]
pub struct StoreError {
    /// What failed.
    pub reason: String,
    /// The save was refused because another node changed the vehicle first
    /// (a compare-and-set on its record's revision failed): the vehicle was
    /// reloaded with that change, and the call may be applied again on top.
    pub conflict: bool,
}

impl StoreError {
    /// A failure.
    pub fn new(reason: impl Into<String>) -> Self {
        StoreError { reason: reason.into(), conflict: false }
    }

    /// A save refused for a concurrent change elsewhere (see `conflict`).
    pub fn conflict(reason: impl Into<String>) -> Self {
        StoreError { reason: reason.into(), conflict: true }
    }
}

/// Whether a store takes writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    /// It does.
    Healthy,
    /// It cannot write now (a full disk, a quota) and retries by itself;
    /// writes are refused meanwhile.
    Degraded(String),
    /// It cannot write and will not retry (an I/O error it cannot trust,
    /// damage): every write is refused until an operator acts and restarts.
    Failed(String),
}

/// A vehicle whose saves were refused, or that another node changed: what
/// is durable of it, for the hub to put in memory in place of what it had
/// (which ran ahead of the disk, or behind the cluster).
#[derive(Debug)]
pub struct Reload {
    /// The vehicle.
    pub vehicle: Arc<str>,
    /// Why it is reloaded.
    pub cause: ReloadCause,
    /// Saves made with an epoch below this are refused: the hub takes it as
    /// the vehicle's epoch, so only saves made after the reload are taken.
    pub valid_from: u64,
    /// What the store holds of it, if it could read it now.
    pub rows: DurableRows,
}

/// Why a vehicle is reloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadCause {
    /// The store refused a save of this node's (a full disk, a failed
    /// commit, a conflict with another node's change).
    Refused,
    /// Another node committed a change of the vehicle.
    Changed,
}

/// The durable rows of a vehicle, as far as the store can tell.
#[derive(Debug)]
pub enum DurableRows {
    /// Read now: its rows, or `None` when nothing of it is stored.
    Known(Option<StoredRows>),
    /// The store cannot read now; a `Known` reload follows once it can.
    Unknown,
}

/// A vehicle's session on another node of the cluster, or its end, as the
/// cluster's presence says (last claim wins; a close clears only its own
/// claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePresence {
    /// The vehicle.
    pub vehicle: Arc<str>,
    /// The node holding (or that held) the session.
    pub node: String,
    /// Its session id.
    pub session: u64,
    /// Whether the session is live.
    pub online: bool,
    /// When it started.
    pub connected_at: SystemTime,
    /// When the vehicle was last heard from (its end, once closed).
    pub last_seen: SystemTime,
    /// The agent's version.
    pub agent_version: String,
}

/// Called by the store for each [`RemotePresence`] change.
pub type PresenceHook = Arc<dyn Fn(RemotePresence) + Send + Sync>;

/// A session this node opened, claimed in the cluster's presence.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The session id.
    pub session: u64,
    /// When it started.
    pub connected_at: SystemTime,
    /// The agent's version.
    pub agent_version: String,
}

/// Resolves once a presence claim is committed (or could not be).
pub type Claimed = oneshot::Receiver<Result<(), StoreError>>;

/// Called by the store (on its writer) for each [`Reload`].
pub type ReloadHook = Arc<dyn Fn(Reload) + Send + Sync>;

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

/// What one save writes for a vehicle: its record, and the changes of its
/// idempotency log since the previous save (the log is stored key by key, so a
/// save's size does not grow with the number of keys a vehicle holds).
#[derive(Debug, Default)]
pub struct RecordSave {
    /// The encoded record (without its keys).
    pub record: Bytes,
    /// Keys to write, each with its encoded entry.
    pub put_keys: Vec<(Arc<str>, Bytes)>,
    /// Keys to delete.
    pub gone_keys: Vec<Arc<str>>,
    /// How soon it must be durable.
    pub urgency: Urgency,
    /// Run by the store once the save is committed (not if the commit
    /// failed), before its [`Durable`] resolves.
    pub on_commit: Option<OnCommit>,
    /// The vehicle's epoch when the save was made: a store that refused a
    /// save refuses every later one made before the vehicle was reloaded
    /// (see [`Reload`]).
    pub epoch: u64,
}

/// What a save runs once it is durable: cheap and non-blocking (it runs on
/// the store's writer), e.g. waking the vehicle's session.
pub struct OnCommit(Box<dyn FnOnce() + Send>);

impl OnCommit {
    /// Runs `f` at the commit.
    pub fn new(f: impl FnOnce() + Send + 'static) -> Self {
        OnCommit(Box::new(f))
    }

    /// Runs it (the store calls this).
    pub fn run(self) {
        (self.0)()
    }
}

impl std::fmt::Debug for OnCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnCommit")
    }
}

/// How soon a save must be durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Urgency {
    /// A caller waits for it (an app's write or cancel): committed at once,
    /// with whatever is queued.
    #[default]
    Now,
    /// No one waits for it (a vehicle's acknowledgement, report or hello,
    /// which the vehicle re-sends in its next Hello if a crash loses it): may
    /// wait a few milliseconds to share a commit with other saves.
    Lazy,
}

/// A stored vehicle as loaded: its record and its idempotency keys.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRows {
    /// The vehicle.
    pub vehicle: Arc<str>,
    /// The encoded record.
    pub record: Bytes,
    /// Its keys with their encoded entries, in no particular order.
    pub keys: Vec<(Arc<str>, Bytes)>,
    /// Why the rows cannot be trusted (a checksum that does not match, keys
    /// without a record), if they cannot.
    pub damage: Option<String>,
}

/// Where vehicle records and the audit trail live. Implementations batch
/// saves (group commit): many records become durable in one commit.
pub trait Store: Send + Sync + 'static {
    /// Every stored vehicle with its encoded record and keys.
    fn load_all(&self) -> Result<Vec<StoredRows>, StoreError>;

    /// Saves a vehicle's encoded record and key changes, and `audit` in the
    /// same commit; the latest record of a vehicle wins, key changes apply in
    /// the order of saves. The returned receiver resolves when it is durable.
    fn save(&self, vehicle: Arc<str>, save: RecordSave, audit: Option<AuditEntry>) -> Durable;

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

    /// Whether the store takes writes, updated as it changes.
    fn health(&self) -> watch::Receiver<StoreHealth>;

    /// Sets what the store calls when it refused a vehicle's save (the hub
    /// reloads the vehicle). Set once, before the first save.
    fn on_reload(&self, hook: ReloadHook);

    /// Moves a vehicle's damaged rows out of the way (kept, not deleted),
    /// so the node can start without it; durable when it returns.
    fn quarantine(&self, vehicle: &str, why: &str) -> Result<(), StoreError>;

    /// Claims the vehicle's presence for a session of this node (in a
    /// cluster: compare-and-set on the vehicle's presence, so the last claim
    /// wins and the node of an older session ends it). Nothing on one node.
    /// Resolves once the claim is committed (or could not be).
    fn claim(&self, _vehicle: &Arc<str>, _claim: Claim) -> Claimed {
        let (done, claimed) = oneshot::channel();
        let _ = done.send(Ok(()));
        claimed
    }

    /// Ends this node's claim for `session`, unless a newer claim replaced
    /// it. Nothing on one node.
    fn release(&self, _vehicle: &Arc<str>, _session: u64, _last_seen: SystemTime) {}

    /// A cluster node's figures (none on one node).
    fn cluster_stats(&self) -> Option<Arc<crate::stats::ClusterStats>> {
        None
    }

    /// Whether this node is cut off from its cluster (it could not renew its
    /// lease: the other nodes count it as gone): it must end its sessions and
    /// take none until this clears. Never on one node.
    fn isolated(&self) -> watch::Receiver<bool> {
        watch::channel(false).1
    }

    /// Sets what the store calls when another node's session of a vehicle
    /// starts or ends. Set once; never called on one node.
    fn on_presence(&self, _hook: PresenceHook) {}

    /// Whether a save may be refused because another node changed the
    /// vehicle first ([`StoreError::conflict`]): the caller then applies its
    /// change again on top of the reloaded vehicle.
    fn may_conflict(&self) -> bool {
        false
    }

    /// Makes every save so far durable and stops accepting saves.
    fn close(&self);
}
