//! The node's vehicles: one cell per vehicle holding its record, its presence
//! and a change signal that sessions, waiters and watchers wait on.
//!
//! A cell's lock is a plain mutex, never held across an await: every change
//! is a short critical section that mutates, enqueues the save (so saves
//! reach the store in the order of changes) and signals.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use tether_proto::StateSchema;
use tokio::sync::{oneshot, watch};

use crate::core::{KeyLimits, VehicleRecord};
pub use crate::router::Change;
use crate::router::Router;
use crate::stats::Stats;
use crate::store::{
    AuditEntry, Claim, Claimed, Durable, DurableRows, OnCommit, PresenceHook, Reload, ReloadCause, ReloadHook,
    RemotePresence, Store, StoreError, StoredRows, Urgency, decode_record, encode_save,
};
use tether_proto::vehicle::v1::GoodbyeReason;

/// Running versions of each kind of change, for watchers to diff.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Versions {
    /// Bumped by desired changes.
    pub desired: u64,
    /// Bumped by actual-state changes.
    pub actual: u64,
    /// Bumped by field status changes.
    pub status: u64,
    /// Bumped by presence changes.
    pub presence: u64,
}

/// Why a live session must end, sent to it by whoever ends it.
#[derive(Debug, Clone)]
pub struct Kick {
    /// The goodbye reason.
    pub reason: GoodbyeReason,
    /// A human-readable message.
    pub message: String,
}

/// A session refused because the vehicle's live session came from a
/// connection that arrived after its own.
#[derive(Debug, Clone, Copy)]
pub struct Stale {
    /// The live, newer session.
    pub newer: u64,
}

/// The live session of a vehicle.
#[derive(Debug)]
pub struct LiveSession {
    /// Its id.
    pub id: u64,
    kick: Option<oneshot::Sender<Kick>>,
}

/// A vehicle's session on another node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSession {
    /// The node holding it.
    pub node: String,
    /// Its id.
    pub session: u64,
}

/// A vehicle's connection state and its snapshot flow control.
#[derive(Debug, Default)]
pub struct Presence {
    /// The live session, if any.
    pub live: Option<LiveSession>,
    /// The live session on another node of the cluster, if any (then `live`
    /// is `None`).
    pub remote: Option<RemoteSession>,
    /// The live or last session's id.
    pub session_id: u64,
    /// When the live or last session started.
    pub connected_at: Option<SystemTime>,
    /// When the vehicle was last heard from.
    pub last_seen: Option<SystemTime>,
    /// The agent's version.
    pub agent_version: String,
    /// Generation of the last snapshot sent in the live session (0: none).
    pub sent_generation: u64,
    /// Generation of the snapshot sent and not yet acknowledged.
    pub unacked: Option<u64>,
    /// Snapshots sent in the live session.
    pub snapshots_sent: u64,
}

impl Presence {
    /// Whether a session is live, on this node or another.
    pub fn online(&self) -> bool {
        self.live.is_some() || self.remote.is_some()
    }

    /// Whether session `id` is the live one.
    pub fn is_live(&self, id: u64) -> bool {
        self.live.as_ref().is_some_and(|s| s.id == id)
    }
}

/// Everything behind a cell's lock.
#[derive(Debug, Default)]
pub struct VehicleInner {
    /// The command-semantics record.
    pub record: VehicleRecord,
    /// Presence and snapshot flow control.
    pub presence: Presence,
    /// Change versions.
    pub versions: Versions,
    /// The expiry this vehicle is armed for in the hub's expiry queue.
    armed_expiry: Option<SystemTime>,
    /// Raised each time the store reloads the record after refusing a save
    /// (every save carries it; the store refuses those made before).
    epoch: u64,
    /// The store refused a save and could not yet read back what is durable:
    /// the record may hold what the disk does not, so it is not shown.
    stale: bool,
}

impl VehicleInner {
    /// Whether the record may hold a change the store refused (shown to no
    /// one until the store reloads it).
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// Whether a desired-state change waits to be sent to the live session.
    pub fn snapshot_pending(&self) -> bool {
        self.presence.live.is_some() && self.record.generation > self.presence.sent_generation
    }

    /// Whether session `session_id` may be sent a snapshot now: it is the
    /// live one, has acknowledged the previous snapshot, the desired state is
    /// newer than what it was sent, and every write in it is committed
    /// (`committed`, from [`VehicleCell::committed`]): ACCEPTED comes before
    /// DELIVERED, so a vehicle never acts on a write a crash could lose.
    pub fn snapshot_due(&self, session_id: u64, committed: u64) -> bool {
        let p = &self.presence;
        p.is_live(session_id)
            && p.unacked.is_none()
            && self.record.generation > p.sent_generation
            && self.record.generation <= committed
    }
}

/// What a cell's watchers see: a change counter, and the highest desired
/// generation whose save is committed ([`VehicleCell::committed`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Signal {
    version: u64,
    committed: u64,
}

/// One vehicle.
#[derive(Debug)]
pub struct VehicleCell {
    /// The vehicle id.
    pub id: Arc<str>,
    inner: Mutex<VehicleInner>,
    changes: watch::Sender<Signal>,
}

impl VehicleCell {
    fn new(id: Arc<str>, record: VehicleRecord) -> Self {
        VehicleCell {
            id,
            // A loaded record is on disk: all of it is committed.
            changes: watch::channel(Signal { version: 0, committed: record.generation }).0,
            inner: Mutex::new(VehicleInner { record, ..Default::default() }),
        }
    }

    /// Locks the cell for reading. Do not hold across an await.
    pub fn lock(&self) -> MutexGuard<'_, VehicleInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver woken after every change, and when a write commits.
    pub fn subscribe(&self) -> watch::Receiver<Signal> {
        self.changes.subscribe()
    }

    /// Wakes every receiver (the hub calls this after a change).
    pub fn notify(&self) {
        self.changes.send_modify(|s| s.version = s.version.wrapping_add(1));
    }

    /// The highest desired generation whose save is committed.
    pub fn committed(&self) -> u64 {
        self.changes.borrow().committed
    }

    /// Notes that the desired state up to `generation` is committed, and
    /// wakes every receiver (the session may now send it).
    pub fn mark_committed(&self, generation: u64) {
        mark_committed(&self.changes, generation);
    }
}

/// Raises the committed generation to `generation`; wakes the receivers only
/// if it rose.
fn mark_committed(changes: &watch::Sender<Signal>, generation: u64) {
    changes.send_if_modified(|s| {
        if generation <= s.committed {
            return false;
        }
        s.committed = generation;
        s.version = s.version.wrapping_add(1);
        true
    });
}

/// Queues a vehicle's next expiry unless an earlier one is queued.
fn arm_expiry(expiries: &Mutex<ExpiryQueue>, id: &Arc<str>, inner: &mut VehicleInner) {
    let Some(at) = inner.record.next_expiry() else { return };
    if inner.armed_expiry.is_some_and(|armed| armed <= at) {
        return;
    }
    inner.armed_expiry = Some(at);
    expiries.lock().unwrap_or_else(|p| p.into_inner()).push(Reverse((at, id.clone())));
}

/// What the store calls when it refused a vehicle's save: the record in
/// memory ran ahead of the disk, and is replaced by what is durable (or, if
/// the store cannot read it now, hidden as stale until it can). Runs on the
/// store's writer, so every save made after it carries the new epoch.
fn reload_hook(
    vehicles: Vehicles,
    expiries: Arc<Mutex<ExpiryQueue>>,
    schema: StateSchema,
    limits: KeyLimits,
) -> ReloadHook {
    Arc::new(move |reload: Reload| {
        // An unknown vehicle with rows is one another node created.
        let create = matches!(reload.rows, DurableRows::Known(Some(_)));
        let Some(cell) = cell_of(&vehicles, &reload.vehicle, create) else { return };
        let mut inner = cell.lock();
        if inner.epoch >= reload.valid_from {
            return;
        }
        inner.epoch = reload.valid_from;
        match reload.rows {
            DurableRows::Unknown => inner.stale = true,
            DurableRows::Known(rows) => {
                let record = match rows {
                    None => Ok(VehicleRecord::default()),
                    Some(rows) => decode_rows(&rows, &schema, limits),
                };
                match record {
                    Ok(record) => {
                        if reload.cause == ReloadCause::Refused {
                            tracing::warn!(
                                vehicle = %cell.id,
                                generation = record.generation,
                                "the store refused a save: the vehicle is back to what is durable"
                            );
                        }
                        // What is durable is committed: a session may be
                        // sent it (the commit also wakes every receiver).
                        mark_committed(&cell.changes, record.generation);
                        inner.record = record;
                        inner.stale = false;
                        // An expiry the refused save had marked is due again.
                        inner.armed_expiry = None;
                        arm_expiry(&expiries, &cell.id, &mut inner);
                    }
                    Err(why) => {
                        tracing::error!(vehicle = %cell.id, damage = %why, "the vehicle's durable rows are damaged");
                        inner.stale = true;
                    }
                }
            }
        }
        // Watchers see the change (a desired state that was never durable
        // is gone); the vehicle was never sent it (see `snapshot_due`).
        let v = &mut inner.versions;
        v.desired += 1;
        v.actual += 1;
        v.status += 1;
        drop(inner);
        cell.notify();
    })
}

/// The vehicle's cell, created empty if unknown and `create`.
fn cell_of(vehicles: &Vehicles, id: &str, create: bool) -> Option<Arc<VehicleCell>> {
    if let Some(cell) = vehicles.read().unwrap_or_else(|p| p.into_inner()).get(id) {
        return Some(cell.clone());
    }
    create.then(|| {
        vehicles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(Arc::from(id))
            .or_insert_with_key(|id| Arc::new(VehicleCell::new(id.clone(), VehicleRecord::default())))
            .clone()
    })
}

/// Ends a live session that a newer one (`by`) replaced: Goodbye SUPERSEDED.
fn supersede(stats: &Stats, old: LiveSession, by: &str) {
    crate::stats::bump(&stats.sessions_superseded);
    if let Some(kick) = old.kick {
        let _ = kick.send(Kick {
            reason: GoodbyeReason::Superseded,
            message: format!("session {} superseded by {by}", old.id),
        });
    }
}

/// What the store calls when another node's session of a vehicle starts
/// (the session here, older, ends SUPERSEDED) or ends.
fn presence_hook(vehicles: Vehicles, stats: Arc<Stats>) -> PresenceHook {
    Arc::new(move |p: RemotePresence| {
        let Some(cell) = cell_of(&vehicles, &p.vehicle, p.online) else { return };
        let mut inner = cell.lock();
        let presence = &mut inner.presence;
        if p.online {
            if let Some(old) = presence.live.take() {
                supersede(&stats, old, &format!("session {} on node {}", p.session, p.node));
            }
            *presence = Presence {
                remote: Some(RemoteSession { node: p.node, session: p.session }),
                session_id: p.session,
                connected_at: Some(p.connected_at),
                last_seen: Some(p.last_seen),
                agent_version: p.agent_version,
                ..Presence::default()
            };
        } else if presence.remote.as_ref().is_some_and(|r| r.node == p.node && r.session == p.session) {
            presence.remote = None;
            presence.last_seen = Some(p.last_seen);
        } else {
            return;
        }
        inner.versions.presence += 1;
        drop(inner);
        cell.notify();
    })
}

/// A vehicle's record from its stored rows, or why they cannot be trusted
/// (damage the store found, or a record that does not decode).
fn decode_rows(rows: &StoredRows, schema: &StateSchema, limits: KeyLimits) -> Result<VehicleRecord, String> {
    match &rows.damage {
        Some(damage) => Err(damage.clone()),
        None => decode_record(&rows.vehicle, &rows.record, &rows.keys, schema, limits).map_err(|e| e.to_string()),
    }
}

/// Vehicles by their earliest pending expiry, soonest first.
type ExpiryQueue = BinaryHeap<Reverse<(SystemTime, Arc<str>)>>;

/// The node's vehicles by id.
type Vehicles = Arc<RwLock<BTreeMap<Arc<str>, Arc<VehicleCell>>>>;

/// All vehicles of the node, with the store and the shared settings.
pub struct Hub {
    vehicles: Vehicles,
    /// The state schema (the contract's, or a configured descriptor set).
    pub schema: StateSchema,
    store: Arc<dyn Store>,
    router: Arc<dyn Router>,
    /// Idempotency key bounds.
    pub key_limits: KeyLimits,
    /// Live counters.
    pub stats: Arc<Stats>,
    expiries: Arc<Mutex<ExpiryQueue>>,
    next_session: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("vehicles", &self.len()).finish()
    }
}

impl Hub {
    /// Loads every stored vehicle. A vehicle whose rows are damaged (they do
    /// not verify, or do not decode) stops the load with an error naming it,
    /// unless `quarantine_damaged`: then its rows are moved aside in the
    /// store, and it is reported and left out.
    pub fn load(
        store: Arc<dyn Store>,
        router: Arc<dyn Router>,
        schema: StateSchema,
        key_limits: KeyLimits,
        stats: Arc<Stats>,
        quarantine_damaged: bool,
    ) -> Result<Self, StoreError> {
        let mut vehicles = BTreeMap::new();
        let expiries = Arc::new(Mutex::new(BinaryHeap::new()));
        for rows in store.load_all()? {
            let id = rows.vehicle.clone();
            let record = match decode_rows(&rows, &schema, key_limits) {
                Ok(record) => record,
                Err(why) if quarantine_damaged => {
                    store.quarantine(&id, &why)?;
                    tracing::error!(
                        vehicle = %id,
                        damage = %why,
                        "--recover-damaged-store: the vehicle's stored rows are damaged; moved to the quarantine \
                         table of the store, and the vehicle starts empty"
                    );
                    continue;
                }
                Err(why) => {
                    return Err(StoreError::new(format!(
                        "the stored record of vehicle {id:?} is damaged ({why}). Keep a copy of the data directory; \
                         to start without it (its rows moved to a quarantine table), run once with \
                         --recover-damaged-store"
                    )));
                }
            };
            let cell = VehicleCell::new(id.clone(), record);
            arm_expiry(&expiries, &id, &mut cell.lock());
            vehicles.insert(id, Arc::new(cell));
        }
        let vehicles: Vehicles = Arc::new(RwLock::new(vehicles));
        store.on_presence(presence_hook(vehicles.clone(), stats.clone()));
        store.on_reload(reload_hook(vehicles.clone(), expiries.clone(), schema.clone(), key_limits));
        let epoch = u64::from(store.boot_epoch());
        Ok(Hub {
            vehicles,
            schema,
            store,
            router,
            key_limits,
            stats,
            expiries,
            next_session: AtomicU64::new(epoch << 32),
        })
    }

    /// The vehicle, if known.
    pub fn get(&self, id: &str) -> Option<Arc<VehicleCell>> {
        cell_of(&self.vehicles, id, false)
    }

    /// The vehicle, created empty if unknown.
    pub fn get_or_create(&self, id: &str) -> Arc<VehicleCell> {
        cell_of(&self.vehicles, id, true).expect("created")
    }

    /// How many vehicles the node holds.
    pub fn len(&self) -> usize {
        self.vehicles.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the node holds no vehicle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `limit` vehicles with ids after `after`, in id order.
    pub fn page(&self, after: &str, limit: usize, filter: impl Fn(&VehicleCell) -> bool) -> Vec<Arc<VehicleCell>> {
        use std::ops::Bound::{Excluded, Unbounded};
        let map = self.vehicles.read().unwrap_or_else(|p| p.into_inner());
        let start = if after.is_empty() { Unbounded } else { Excluded(after) };
        map.range::<str, _>((start, Unbounded)).map(|(_, c)| c).filter(|c| filter(c)).take(limit).cloned().collect()
    }

    /// Every vehicle (for scans such as statistics).
    pub fn all(&self) -> Vec<Arc<VehicleCell>> {
        self.vehicles.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Mutates a vehicle under its lock. What `f` reports as changed is
    /// versioned, saved (in change order) and signalled. Returns `f`'s result
    /// and, when something stored changed, the save's durability receiver.
    pub fn update<R>(
        &self,
        cell: &VehicleCell,
        f: impl FnOnce(&mut VehicleInner) -> (R, Change),
    ) -> (R, Option<Durable>) {
        self.update_audited(cell, |inner| {
            let (result, change) = f(inner);
            (result, change, None)
        })
    }

    /// [`Hub::update`] that also files an audit record: committed with the
    /// vehicle's record when `f` changed it, else on its own. Either way the
    /// durability receiver covers it.
    pub fn update_audited<R>(
        &self,
        cell: &VehicleCell,
        f: impl FnOnce(&mut VehicleInner) -> (R, Change, Option<AuditEntry>),
    ) -> (R, Option<Durable>) {
        let mut inner = cell.lock();
        let (result, change, audit) = f(&mut inner);
        let transitions = inner.record.take_transitions();
        if !transitions.is_empty() {
            let now = SystemTime::now();
            for t in transitions {
                self.stats.field_reached(t.status, now.duration_since(t.set_at).unwrap_or_default());
            }
        }
        // Under the lock, so saves reach the store in the order of changes.
        // A write that changed no field still stored its idempotency key.
        let durable = if change.is_stored() || inner.record.keys.has_changes() {
            let mut save = encode_save(&mut inner.record);
            // An app's write or cancel is waited for; a vehicle's ack, report or
            // hello is not (and is re-sent in its next Hello if lost).
            if !change.desired && audit.is_none() && save.put_keys.is_empty() {
                save.urgency = Urgency::Lazy;
            }
            save.epoch = inner.epoch;
            // The session sends a new desired state only once it is on disk:
            // the store's writer marks it committed (whether or not the
            // caller still waits) and so wakes the session. Every save holds
            // the whole record, so any save's commit (an ack's, after a
            // write's commit failed) commits the desired state up to here.
            if cell.committed() < inner.record.generation {
                let (changes, generation) = (cell.changes.clone(), inner.record.generation);
                save.on_commit = Some(OnCommit::new(move || mark_committed(&changes, generation)));
            }
            Some(self.store.save(cell.id.clone(), save, audit))
        } else {
            audit.map(|entry| self.store.audit(entry))
        };
        if !change.any() {
            return (result, durable);
        }
        let v = &mut inner.versions;
        v.desired += u64::from(change.desired);
        v.actual += u64::from(change.actual);
        v.status += u64::from(change.status);
        v.presence += u64::from(change.presence);
        if change.desired {
            self.arm_expiry(&cell.id, &mut inner);
        }
        drop(inner);
        cell.notify();
        self.router.changed(&cell.id, change);
        (result, durable)
    }

    /// Queues the vehicle's next expiry unless an earlier one is queued: one
    /// live queue entry per vehicle, however many writes it gets.
    fn arm_expiry(&self, id: &Arc<str>, inner: &mut VehicleInner) {
        arm_expiry(&self.expiries, id, inner);
    }

    /// The id of a session whose stream just arrived. Ids follow the streams'
    /// arrival, not their Hellos: a vehicle that gave up on a slow Connect
    /// and opened another may have its first Hello read after the second,
    /// and arrival order is what says which connection is the newer.
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Opens session `id` (from [`Hub::next_session_id`]) for a vehicle,
    /// superseding (and kicking) any live one that arrived before it.
    /// Returns the receiver through which this session may itself be kicked
    /// later, and the session's presence claim in the store (a cluster's
    /// fencing; at once on one node), or [`Stale`] (and changes nothing)
    /// when the live session's stream arrived after this one's.
    pub fn open_session(
        &self,
        cell: &VehicleCell,
        id: u64,
        agent_version: &str,
        now: SystemTime,
        on_open: impl FnOnce(&mut VehicleInner) -> Change,
    ) -> Result<(oneshot::Receiver<Kick>, Claimed), Stale> {
        let (kick, kicked) = oneshot::channel();
        self.update(cell, |inner| {
            let p = &mut inner.presence;
            if let Some(live) = p.live.as_ref().filter(|live| live.id > id) {
                return (Err(Stale { newer: live.id }), Change::NONE);
            }
            if let Some(old) = p.live.take() {
                supersede(&self.stats, old, &format!("session {id}"));
            }
            *p = Presence {
                live: Some(LiveSession { id, kick: Some(kick) }),
                remote: None,
                session_id: id,
                connected_at: Some(now),
                last_seen: Some(now),
                agent_version: agent_version.to_string(),
                ..Presence::default()
            };
            let mut change = on_open(inner);
            change.presence = true;
            (Ok(kicked), change)
        })
        .0
        .map(|kicked| {
            let claim = Claim { session: id, connected_at: now, agent_version: agent_version.to_string() };
            (kicked, self.store.claim(&cell.id, claim))
        })
    }

    /// Ends session `id` if it is still the live one: presence never flips
    /// back to a dead session.
    pub fn close_session(&self, cell: &VehicleCell, id: u64, now: SystemTime) {
        self.update(cell, |inner| {
            let p = &mut inner.presence;
            if p.is_live(id) {
                p.live = None;
                p.last_seen = Some(now);
                p.unacked = None;
                self.store.release(&cell.id, id, now);
                ((), Change { presence: true, ..Change::NONE })
            } else {
                ((), Change::NONE)
            }
        });
    }

    /// Kicks every live session (for shutdown).
    pub fn kick_all(&self, reason: GoodbyeReason, message: &str) {
        for cell in self.all() {
            let mut inner = cell.lock();
            if let Some(kick) = inner.presence.live.as_mut().and_then(|s| s.kick.take()) {
                let _ = kick.send(Kick { reason, message: message.to_string() });
            }
        }
    }

    /// Marks fields past their expiry on every vehicle whose earliest expiry
    /// is due. One shared scan for the node: no per-vehicle timers.
    pub fn expire_due(&self, now: SystemTime) -> usize {
        let mut due = Vec::new();
        {
            let mut heap = self.expiries.lock().unwrap_or_else(|p| p.into_inner());
            while heap.peek().is_some_and(|Reverse((at, _))| *at <= now) {
                let Reverse((_, id)) = heap.pop().expect("peeked");
                due.push(id);
            }
        }
        due.sort();
        due.dedup();
        let mut expired = 0;
        for id in due {
            let Some(cell) = self.get(&id) else { continue };
            self.update(&cell, |inner| {
                let changed = inner.record.expire(now);
                expired += usize::from(changed);
                if inner.armed_expiry.is_some_and(|at| at <= now) {
                    inner.armed_expiry = None;
                }
                self.arm_expiry(&id, inner);
                ((), Change { status: changed, ..Change::NONE })
            });
        }
        expired
    }

    /// The store, for what goes to it without a vehicle's lock: audit records
    /// of calls refused before reaching a vehicle, audit reads and retention.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Stops the store after it made every save durable.
    pub fn close_store(&self) {
        self.store.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use prost::Message;
    use tether_proto::state::v1::{VehicleState, Windows};

    use super::*;
    use crate::core::{Origin, Write};
    use crate::router::LocalRouter;
    use crate::store::RecordSave;

    /// A save held back: what it runs at its commit, and its durability.
    type Held = (Option<OnCommit>, oneshot::Sender<Result<(), StoreError>>);

    /// A store whose saves commit only when the test says so.
    #[derive(Default)]
    struct GatedStore {
        held: Mutex<Vec<Held>>,
    }

    impl GatedStore {
        /// Commits every save held so far, as a store's writer does.
        fn commit_all(&self) {
            for (on_commit, done) in self.held.lock().unwrap().drain(..) {
                if let Some(on_commit) = on_commit {
                    on_commit.run();
                }
                let _ = done.send(Ok(()));
            }
        }
    }

    impl Store for GatedStore {
        fn load_all(&self) -> Result<Vec<StoredRows>, StoreError> {
            Ok(Vec::new())
        }
        fn save(&self, _: Arc<str>, mut save: RecordSave, _: Option<AuditEntry>) -> Durable {
            let (done, durable) = oneshot::channel();
            self.held.lock().unwrap().push((save.on_commit.take(), done));
            durable
        }
        fn audit(&self, _: AuditEntry) -> Durable {
            let (done, durable) = oneshot::channel();
            let _ = done.send(Ok(()));
            durable
        }
        fn audit_page(&self, _: &str, _: Option<u64>, _: usize) -> Result<Vec<(u64, Bytes)>, StoreError> {
            Ok(Vec::new())
        }
        fn prune_audit(&self, _: SystemTime, _: usize) -> oneshot::Receiver<Result<usize, StoreError>> {
            let (done, pruned) = oneshot::channel();
            let _ = done.send(Ok(0));
            pruned
        }
        fn boot_epoch(&self) -> u32 {
            1
        }
        fn health(&self) -> watch::Receiver<crate::store::StoreHealth> {
            watch::channel(crate::store::StoreHealth::Healthy).1
        }
        fn on_reload(&self, _: ReloadHook) {}
        fn quarantine(&self, _: &str, _: &str) -> Result<(), StoreError> {
            Ok(())
        }
        fn close(&self) {}
    }

    fn write(key: &str, pct: u32) -> Write {
        let state = VehicleState {
            windows: Some(Windows { front_left: Some(pct), ..Default::default() }),
            ..Default::default()
        };
        Write {
            fields: StateSchema::contract().split(&state.encode_to_vec()).unwrap(),
            fingerprint: u64::from(pct),
            expected_generation: None,
            expires_at: None,
            origin: Origin { subject: "app".into(), idempotency_key: key.into(), traceparent: String::new() },
        }
    }

    #[tokio::test]
    async fn a_session_is_sent_a_write_only_once_it_is_committed() {
        let store = Arc::new(GatedStore::default());
        let limits = KeyLimits { window: Duration::from_secs(3600), max: 100 };
        let hub =
            Hub::load(store.clone(), Arc::new(LocalRouter), StateSchema::contract(), limits, Arc::default(), false)
                .expect("an empty store loads");
        let cell = hub.get_or_create("car-1");
        let session = hub.next_session_id();
        let _kick =
            hub.open_session(&cell, session, "test", SystemTime::now(), |_| Change::NONE).expect("no newer session");
        let mut changes = cell.subscribe();
        changes.borrow_and_update();
        let due = |cell: &VehicleCell| cell.lock().snapshot_due(session, cell.committed());

        let apply = |key: &str, pct| {
            let ((), durable) = hub.update_audited(&cell, |inner| {
                inner.record.write(write(key, pct), SystemTime::now(), limits).expect("a valid write");
                ((), Change { desired: true, status: true, ..Change::NONE }, None)
            });
            durable.expect("a write is saved")
        };
        let first = apply("k1", 10);
        assert!(!due(&cell), "not sent before its commit");
        store.commit_all();
        first.await.unwrap().unwrap();
        assert!(changes.has_changed().unwrap(), "the commit woke the session");
        assert!(due(&cell), "sent once committed");

        // A second write on top: the snapshot would carry it, so it waits
        // for that commit too.
        let second = apply("k2", 20);
        assert!(!due(&cell));
        store.commit_all();
        second.await.unwrap().unwrap();
        assert!(due(&cell));
        assert_eq!(cell.committed(), 2);
    }
}
