//! The embedded default store: redb in the data directory, written by one
//! thread that commits batches (group commit), so a write is acknowledged
//! only once it is on disk, and a burst of writes costs one fsync. Audit
//! records ride in the same batches: a write and its record are committed
//! together.
//!
//! A batch is durable once its frame is in the write-ahead log
//! ([`wal`](super::wal)): the writer (`redb/writer.rs`) appends the frame and
//! `fdatasync`s the log, answers, and only later applies the frame to redb
//! in a non-durable commit, off the write's path. A read of the audit trail
//! asks for that catch-up and waits until redb holds every frame logged
//! before it began ([`Applied`]), so an answered write is always read back.
//! A checkpoint (a durable redb commit, then an empty log) runs when the log
//! is large, after a second without saves, and at close; opening
//! (`redb/open.rs`) verifies the database and replays what the log holds
//! above the last checkpoint, refusing to start when damage would lose an
//! acknowledged write.
//!
//! A save the disk refuses (full, over quota) leaves the store *degraded*:
//! it refuses writes, tells the node's health, and retries by itself until
//! a checkpoint succeeds; the vehicles whose saves were refused are reloaded
//! from what is durable ([`Reload`]). Any other I/O error, or damage, stops
//! it for good.

mod open;
mod rows;
mod writer;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redb::{Database, ReadableDatabase};
use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use self::writer::{Op, Save, Writer};
use super::wal::Wal;
use super::{AuditEntry, Durable, RecordSave, Reload, ReloadHook, Store, StoreError, StoreHealth, StoredRows};

/// How a store is opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Start even when the log or the database is damaged, dropping what is
    /// lost (said in the log, the damaged log moved aside) and quarantining
    /// records that do not verify, instead of refusing to start.
    pub recover_damaged_store: bool,
}

/// A failure inside the redb store, and whether retrying may help (a full
/// disk, a quota) or not (any other I/O error, damage, a bug).
#[derive(Debug, Clone)]
pub(super) struct Fail {
    msg: String,
    transient: bool,
}

impl Fail {
    /// A failure retrying cannot help.
    fn permanent(msg: impl std::fmt::Display) -> Self {
        Fail { msg: msg.to_string(), transient: false }
    }

    /// The same failure, said with what was being done.
    fn doing(self, what: &str) -> Self {
        Fail { msg: format!("{what}: {}", self.msg), ..self }
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl From<Fail> for StoreError {
    fn from(f: Fail) -> Self {
        StoreError::new(f.msg)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::permanent(e.reason)
    }
}

/// Whether an I/O error may pass by itself: the disk full, a quota reached.
/// Anything else (EIO above all: after a failed `fsync` the kernel may have
/// dropped the data it could not write) is not retried.
pub(super) fn transient_io(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

impl From<::redb::Error> for Fail {
    fn from(e: ::redb::Error) -> Self {
        // After an I/O error redb refuses everything (PreviousIo) until it is
        // reopened; whether that may pass is the first error's to say, and
        // the writer already classified it.
        let transient = match &e {
            ::redb::Error::Io(io) => transient_io(io),
            ::redb::Error::PreviousIo => true,
            _ => false,
        };
        Fail { msg: e.to_string(), transient }
    }
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for Fail {
            fn from(e: $t) -> Self {
                Fail::from(::redb::Error::from(e))
            }
        }
    )*};
}
redb_errors!(
    ::redb::StorageError,
    ::redb::TableError,
    ::redb::TransactionError,
    ::redb::CommitError,
    ::redb::DatabaseError,
    ::redb::SetDurabilityError
);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::new(e.to_string())
}

/// What the writer shares with readers and the store's handle.
struct Shared {
    /// The database: `None` while the writer reopens it after an I/O
    /// failure.
    db: RwLock<Option<Arc<Database>>>,
    applied: Applied,
    health: watch::Sender<StoreHealth>,
    reload: OnceLock<ReloadHook>,
}

impl Shared {
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| err("the store is reopening its database after a disk failure; retry"))
    }
}

/// How far redb has caught up with the log: readers wait on it.
#[derive(Debug, Default)]
struct Applied {
    state: Mutex<AppliedState>,
    caught_up: Condvar,
}

#[derive(Debug, Default)]
struct AppliedState {
    /// The last frame in the log (answered).
    logged: u64,
    /// The last frame redb holds.
    applied: u64,
    /// Why redb stopped taking frames, if it did.
    broken: Option<StoreError>,
}

/// Longest a read waits for redb to take the frames logged before it.
const CATCH_UP_BOUND: Duration = Duration::from_secs(10);

impl Applied {
    fn lock(&self) -> std::sync::MutexGuard<'_, AppliedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn logged(&self, seq: u64) {
        self.lock().logged = seq;
    }

    fn applied(&self, seq: u64) {
        let mut state = self.lock();
        state.applied = seq;
        state.broken = None;
        self.caught_up.notify_all();
    }

    fn broken(&self, why: StoreError) {
        self.lock().broken = Some(why);
        self.caught_up.notify_all();
    }

    /// Whether redb lacks a logged frame.
    fn behind(&self) -> bool {
        let state = self.lock();
        state.applied < state.logged
    }

    /// Waits until redb holds every frame logged so far.
    fn wait(&self) -> Result<(), StoreError> {
        let state = self.lock();
        let target = state.logged;
        let (state, timeout) = self
            .caught_up
            .wait_timeout_while(state, CATCH_UP_BOUND, |s| s.applied < target && s.broken.is_none())
            .unwrap_or_else(|p| p.into_inner());
        match &state.broken {
            Some(why) => Err(why.clone()),
            None if timeout.timed_out() => Err(err("the store's tables fell behind its log; retry")),
            None => Ok(()),
        }
    }
}

/// redb-backed [`Store`].
pub struct RedbStore {
    shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<Op>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    epoch: u32,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("epoch", &self.epoch).finish()
    }
}

impl RedbStore {
    /// Opens (or creates) `dir/tether.redb` and its log `dir/tether.wal`,
    /// replays the log above the last checkpoint, and starts the writer
    /// thread; refuses damaged files (see [`OpenOptions`]).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, OpenOptions::default())
    }

    /// [`RedbStore::open`] with `options`.
    pub fn open_with(dir: &Path, options: OpenOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        let db_path = dir.join("tether.redb");
        let wal_path = dir.join("tether.wal");
        let db = open::open_database(&db_path)?;
        let (mut wal, scan) = Wal::open(&wal_path).map_err(|e| err(format!("opening {}: {e}", wal_path.display())))?;
        let recovered = open::no_panic(&format!("recovering {}", db_path.display()), || {
            open::recover(&db, &mut wal, &scan, &wal_path, options, true)
        })?;
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(Arc::new(db))),
            applied: Applied::default(),
            health: watch::channel(StoreHealth::Healthy).0,
            reload: OnceLock::new(),
        });
        shared.applied.logged(recovered.wal_seq);
        shared.applied.applied(recovered.wal_seq);
        let (tx, rx) = mpsc::channel();
        let writer = Writer::new(shared.clone(), db_path, wal_path, wal, &recovered);
        let writer = std::thread::Builder::new()
            .name("tether-store".into())
            .spawn(move || writer.run_until_closed(&rx))
            .map_err(err)?;
        Ok(RedbStore { shared, tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)), epoch: recovered.epoch })
    }

    fn send(&self, op: Op) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let refused = match tx.as_ref() {
            Some(tx) => tx.send(op).err().map(|mpsc::SendError(op)| (op, "the store writer stopped")),
            None => Some((op, "the store is closed")),
        };
        if let Some((op, why)) = refused {
            op.refuse(err(why));
        }
    }
}

/// µs since the epoch (0 before it).
fn micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Store for RedbStore {
    fn load_all(&self) -> Result<Vec<StoredRows>, StoreError> {
        let db = self.shared.db()?;
        Ok(open::no_panic("reading the store", || rows::load_all(&db.begin_read()?))?)
    }

    fn save(&self, vehicle: Arc<str>, save: RecordSave, audit: Option<AuditEntry>) -> Durable {
        let (done, durable) = oneshot::channel();
        self.send(Op::Save(Save { vehicle, record: Some(save), audit, done }));
        durable
    }

    fn audit(&self, entry: AuditEntry) -> Durable {
        let (done, durable) = oneshot::channel();
        self.send(Op::Save(Save { vehicle: entry.vehicle.clone(), record: None, audit: Some(entry), done }));
        durable
    }

    fn audit_page(&self, vehicle: &str, before: Option<u64>, limit: usize) -> Result<Vec<(u64, Bytes)>, StoreError> {
        // Every answered write is read back: redb first takes what is logged.
        if self.shared.applied.behind() {
            self.send(Op::CatchUp);
        }
        self.shared.applied.wait()?;
        let db = self.shared.db()?;
        let txn = db.begin_read().map_err(err)?;
        let table = txn.open_table(rows::AUDIT).map_err(err)?;
        let mut out = Vec::new();
        for row in table.range((vehicle, 0)..(vehicle, before.unwrap_or(u64::MAX))).map_err(err)?.rev().take(limit) {
            let (k, v) = row.map_err(err)?;
            out.push((k.value().1, Bytes::copy_from_slice(v.value())));
        }
        Ok(out)
    }

    fn prune_audit(&self, before: SystemTime, limit: usize) -> oneshot::Receiver<Result<usize, StoreError>> {
        let (done, removed) = oneshot::channel();
        self.send(Op::Prune { before: micros(before), limit, done });
        removed
    }

    fn boot_epoch(&self) -> u32 {
        self.epoch
    }

    fn health(&self) -> watch::Receiver<StoreHealth> {
        self.shared.health.subscribe()
    }

    fn on_reload(&self, hook: ReloadHook) {
        let _ = self.shared.reload.set(hook);
    }

    fn quarantine(&self, vehicle: &str, why: &str) -> Result<(), StoreError> {
        let (done, result) = mpsc::channel();
        self.send(Op::Quarantine { vehicle: vehicle.into(), why: why.into(), done });
        result.recv().unwrap_or_else(|_| Err(err("the store writer stopped")))
    }

    fn close(&self) {
        // Dropping the sender ends the writer after it commits what is queued.
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = writer.join();
        }
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Calls the hub's reload hook, if it set one.
fn reload(shared: &Shared, reload: Reload) {
    if let Some(hook) = shared.reload.get() {
        hook(reload);
    }
}
