//! The embedded default store: redb in the data directory, written by one
//! thread that commits batches (group commit), so a write is acknowledged
//! only once it is on disk, and a burst of writes costs one fsync. Audit
//! records ride in the same batches: a write and its record are committed
//! together.
//!
//! A batch is durable once its frame is in the write-ahead log
//! ([`wal`](super::wal)): the writer appends the frame and `fdatasync`s the
//! log, answers, and only later applies the frame to redb in a non-durable
//! commit, off the write's path, together with the frames logged up to
//! [`APPLY_DELAY`] after it (in slices of [`APPLY_SLICE`] frames between
//! batches of saves). A read of the audit trail asks for that
//! catch-up and waits until redb holds every frame logged before it began
//! ([`Applied`]), so an answered write is always read back. A checkpoint (a durable redb commit, then an empty log)
//! runs when the log reaches [`CHECKPOINT_BYTES`], after [`CHECKPOINT_IDLE`]
//! without saves, and at close; opening replays what the log holds above the
//! last checkpoint.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use bytes::Bytes;
use tokio::sync::oneshot;

use super::wal::{AuditRow, Frame, KeyRow, RecordRow, Wal};
use super::{AuditEntry, Durable, RecordSave, Store, StoreError, StoredRows, Urgency};

const VEHICLES: TableDefinition<&str, &[u8]> = TableDefinition::new("vehicles");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Idempotency keys by (vehicle, key) → entry: a write adds one row instead
/// of rewriting the vehicle's whole log.
const KEYS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("idempotency_keys");
/// Audit records by (vehicle, sequence): a vehicle's trail is one range.
const AUDIT: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("audit");
/// The same records by (recorded at, µs since the epoch; sequence) → vehicle:
/// retention removes a prefix of it.
const AUDIT_AGE: TableDefinition<(u64, u64), &str> = TableDefinition::new("audit_age");
/// The next audit sequence, in META.
const AUDIT_SEQ: &str = "audit_seq";
/// The sequence of the last log frame redb holds, in META: made durable by
/// each checkpoint, it tells recovery where to start.
const WAL_SEQ: &str = "wal_seq";
/// The log size at which the writer checkpoints: it bounds the log on disk,
/// the replay at start-up, and how long one checkpoint holds the writer.
const CHECKPOINT_BYTES: u64 = 64 << 20;
/// How long the writer waits without a save before it checkpoints.
const CHECKPOINT_IDLE: Duration = Duration::from_secs(1);
/// Most saves folded into one commit.
const MAX_BATCH: usize = 4096;
/// Longest a batch of only [`Urgency::Lazy`] saves waits for more saves
/// before it is committed: a vehicle's ack and report then share one commit
/// (and one record write) instead of taking one each, and a write arriving
/// meanwhile does not queue behind their fsync.
const LAZY_WINDOW: std::time::Duration = std::time::Duration::from_millis(10);

/// A vehicle's record and/or an audit record, committed together.
struct Save {
    vehicle: Arc<str>,
    record: Option<RecordSave>,
    audit: Option<AuditEntry>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

impl Save {
    fn urgency(&self) -> Urgency {
        match &self.record {
            Some(record) => record.urgency,
            // An audit record on its own: a refusal, which no one waits for,
            // but which is committed as promptly as before.
            None => Urgency::Now,
        }
    }
}

/// What the writer thread is asked to do.
enum Op {
    Save(Save),
    Prune {
        before: u64,
        limit: usize,
        done: oneshot::Sender<Result<usize, StoreError>>,
    },
    /// A reader waits for redb to take what is logged.
    CatchUp,
    /// Stops the writer as a crash would: no checkpoint, nothing more.
    #[cfg(test)]
    Halt(oneshot::Sender<()>),
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
        self.lock().applied = seq;
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
    db: Arc<Database>,
    applied: Arc<Applied>,
    tx: Mutex<Option<mpsc::Sender<Op>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    epoch: u32,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("epoch", &self.epoch).finish()
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) `dir/tether.redb` and its log `dir/tether.wal`,
    /// replays the log above the last checkpoint, and starts the writer thread.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join("tether.redb");
        let db = Database::create(&path).map_err(|e| err(format!("opening {}: {e}", path.display())))?;
        let wal_path = dir.join("tether.wal");
        let (mut wal, frames) =
            Wal::open(&wal_path).map_err(|e| err(format!("opening {}: {e}", wal_path.display())))?;
        // Recovery and the boot epoch in one durable commit, then an empty log.
        let (epoch, audit_seq, wal_seq) = {
            let txn = db.begin_write().map_err(err)?;
            let checkpointed = {
                let meta = txn.open_table(META).map_err(err)?;
                meta.get(WAL_SEQ).map_err(err)?.map_or(0, |v| v.value())
            };
            let mut wal_seq = checkpointed;
            let above = frames.iter().position(|f| f.seq > checkpointed).unwrap_or(frames.len());
            let mut replay = &frames[above..];
            for (i, frame) in replay.iter().enumerate() {
                if frame.seq != wal_seq + 1 {
                    tracing::warn!(
                        expected = wal_seq + 1,
                        found = frame.seq,
                        "write-ahead log skips a frame; replay stops"
                    );
                    replay = &replay[..i];
                    break;
                }
                wal_seq = frame.seq;
            }
            apply(&txn, replay)?;
            if wal_seq > checkpointed {
                tracing::info!(commits = wal_seq - checkpointed, "replayed the write-ahead log");
            }
            let (epoch, audit_seq) = {
                let mut meta = txn.open_table(META).map_err(err)?;
                let epoch = meta.get("boot_epoch").map_err(err)?.map_or(0, |v| v.value()) + 1;
                meta.insert("boot_epoch", epoch).map_err(err)?;
                let audit_seq = meta.get(AUDIT_SEQ).map_err(err)?.map_or(1, |v| v.value());
                txn.open_table(VEHICLES).map_err(err)?;
                txn.open_table(KEYS).map_err(err)?;
                txn.open_table(AUDIT).map_err(err)?;
                txn.open_table(AUDIT_AGE).map_err(err)?;
                (epoch, audit_seq)
            };
            txn.commit().map_err(err)?;
            (u32::try_from(epoch).map_err(|_| err("boot epoch overflow"))?, audit_seq, wal_seq)
        };
        wal.reset().map_err(|e| err(format!("emptying {}: {e}", wal_path.display())))?;
        let db = Arc::new(db);
        let applied = Arc::new(Applied::default());
        applied.logged(wal_seq);
        applied.applied(wal_seq);
        let (tx, rx) = mpsc::channel();
        let writer_db = db.clone();
        let writer_applied = applied.clone();
        let writer = std::thread::Builder::new()
            .name("tether-store".into())
            .spawn(move || {
                let mut writer = Writer {
                    db: &writer_db,
                    audit_seq,
                    wal,
                    wal_seq,
                    dirty: false,
                    failed: None,
                    applied: writer_applied,
                    unapplied: Vec::new(),
                    unapplied_since: None,
                };
                writer.run(&rx);
                writer.checkpoint();
            })
            .map_err(err)?;
        Ok(RedbStore { db, applied, tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)), epoch })
    }
}

/// µs since the epoch (0 before it).
fn micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The one thread that writes.
struct Writer<'a> {
    db: &'a Database,
    /// The sequence the next audit record gets.
    audit_seq: u64,
    wal: Wal,
    /// The sequence of the last frame appended.
    wal_seq: u64,
    /// redb holds non-durable commits that no checkpoint has made durable.
    dirty: bool,
    /// Set when the log could not be written, or redb could not take a
    /// logged frame: nothing more is accepted, and nothing checkpointed (the
    /// log stays the durable copy, replayed at the next start).
    failed: Option<StoreError>,
    applied: Arc<Applied>,
    /// Frames logged and answered that redb has not taken yet: applied
    /// together, in one redb commit, once the oldest waited [`APPLY_DELAY`]
    /// or [`APPLY_BATCH`] of them wait, when a reader asks, and always
    /// before a prune or a checkpoint.
    unapplied: Vec<Frame>,
    /// When the oldest of `unapplied` was logged.
    unapplied_since: Option<Instant>,
}

/// Longest a logged frame waits for redb. redb is not the durable copy (the
/// log is) and readers ask for a catch-up, so the wait only sets how many
/// frames share one redb commit: each table opened once and a vehicle's
/// record written once per commit, however many saves it had.
const APPLY_DELAY: Duration = Duration::from_millis(100);
/// Most logged frames that wait for redb.
const APPLY_BATCH: usize = 512;
/// Most frames the writer applies between two batches of saves, so a save
/// that comes while redb catches up waits for one slice, not for all that
/// waited. Frames grow with the load, and so does a slice: ≈ 0.3 ms of small
/// frames at 1,000 writes/s, ≈ 3 ms at saturation, where it amortizes the
/// commit (≈ 185 µs a frame in 32-frame slices, ≈ 300 µs in 128-row ones).
const APPLY_SLICE: usize = 32;

impl Writer<'_> {
    /// Serves saves and prunes until the store closes (the caller then
    /// checkpoints).
    fn run(&mut self, rx: &mpsc::Receiver<Op>) {
        let mut pending = None;
        loop {
            if self.unapplied.len() >= APPLY_BATCH || self.apply_at().is_some_and(|at| at <= Instant::now()) {
                self.catch_up(APPLY_SLICE);
            }
            let first = match pending.take() {
                Some(op) => op,
                None if let Some(at) = self.apply_at() => {
                    match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                        Ok(op) => op,
                        // Due now: the loop's top applies the next slice.
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
                None if self.dirty => match rx.recv_timeout(CHECKPOINT_IDLE) {
                    Ok(op) => op,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.checkpoint();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                },
                None => match rx.recv() {
                    Ok(op) => op,
                    Err(_) => return,
                },
            };
            let first = match first {
                Op::Save(save) => save,
                Op::Prune { before, limit, done } => {
                    let _ = done.send(self.prune(before, limit));
                    continue;
                }
                Op::CatchUp => {
                    self.catch_up(usize::MAX);
                    continue;
                }
                #[cfg(test)]
                Op::Halt(done) => {
                    self.failed = Some(err("halted"));
                    let _ = done.send(());
                    return;
                }
            };
            // Fold the saves queued behind it into one commit; a prune ends the
            // batch. Only lazy saves so far: wait (bounded) for more.
            let mut urgent = first.urgency() == Urgency::Now;
            let lazy_until = std::time::Instant::now() + LAZY_WINDOW;
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                let next = if urgent {
                    rx.try_recv().ok()
                } else {
                    rx.recv_timeout(lazy_until.saturating_duration_since(std::time::Instant::now())).ok()
                };
                match next {
                    Some(Op::Save(save)) => {
                        urgent |= save.urgency() == Urgency::Now;
                        batch.push(save);
                    }
                    Some(prune) => {
                        pending = Some(prune);
                        break;
                    }
                    // Nothing more queued, the window ended, or the store closed
                    // (the next `recv` then ends the thread).
                    None => break,
                }
            }
            let logged = self.log(&batch);
            if let Err(e) = &logged {
                tracing::error!(error = %e, saves = batch.len(), "store commit failed");
            }
            let result = logged.as_ref().map(drop).map_err(Clone::clone);
            for mut save in batch {
                if result.is_ok()
                    && let Some(on_commit) = save.record.as_mut().and_then(|r| r.on_commit.take())
                {
                    on_commit.run();
                }
                let _ = save.done.send(result.clone());
            }
            // Answered: redb takes it later, off the writes' path.
            if let Ok(frame) = logged {
                self.unapplied_since.get_or_insert_with(Instant::now);
                self.unapplied.push(frame);
            }
            if self.wal.len() >= CHECKPOINT_BYTES {
                self.checkpoint();
            }
        }
    }

    /// Makes a batch durable: its frame in the log. Returns the frame, for
    /// redb.
    fn log(&mut self, batch: &[Save]) -> Result<Frame, StoreError> {
        if let Some(failed) = &self.failed {
            return Err(failed.clone());
        }
        let frame = self.frame(batch);
        if let Err(e) = self.wal.append(&frame) {
            return Err(
                self.stop(err(format!("writing the write-ahead log failed ({e}); no further write is accepted")))
            );
        }
        self.wal_seq = frame.seq;
        self.audit_seq = frame.audit_next;
        self.applied.logged(frame.seq);
        Ok(frame)
    }

    /// Applies up to `most` of the logged frames redb lacks, oldest first,
    /// in one commit (not durable: the log is the durable copy until a
    /// checkpoint). A failure stops the store: the frames stay in the log,
    /// which is never emptied again and is replayed at the next start.
    fn catch_up(&mut self, most: usize) {
        if self.unapplied.is_empty() || self.failed.is_some() {
            return;
        }
        let frames: Vec<Frame> = self.unapplied.drain(..most.min(self.unapplied.len())).collect();
        let last = frames.last().map_or(0, |f| f.seq);
        // Frames that remain are past their time already: the next slice
        // follows the next batch of saves.
        if self.unapplied.is_empty() {
            self.unapplied_since = None;
        }
        let started = Instant::now();
        let applied = self.begin_non_durable().and_then(|txn| {
            apply(&txn, &frames)?;
            txn.commit().map_err(err)
        });
        tracing::debug!(frames = frames.len(), micros = started.elapsed().as_micros() as u64, "redb caught up");
        self.dirty = true;
        match applied {
            Ok(()) => self.applied.applied(last),
            Err(e) => {
                tracing::error!(error = %e, seq = last, "the store's tables could not take logged commits");
                self.stop(err(format!("the store's tables failed ({e}); no further write is accepted")));
            }
        }
    }

    /// When redb must take the waiting frames, if any wait.
    fn apply_at(&self) -> Option<Instant> {
        self.unapplied_since.map(|since| since + APPLY_DELAY)
    }

    /// Refuses every later save (and checkpoint), and tells waiting readers
    /// why; returns the reason.
    fn stop(&mut self, why: StoreError) -> StoreError {
        self.failed = Some(why.clone());
        self.applied.broken(why.clone());
        why
    }

    /// What a batch changes, as the next log frame.
    fn frame(&self, batch: &[Save]) -> Frame {
        // Latest save of a vehicle wins within the batch; audit records keep their order.
        let mut latest: HashMap<&str, &Bytes> = HashMap::with_capacity(batch.len());
        let mut keys = Vec::new();
        let mut audits = Vec::new();
        let mut seq = self.audit_seq;
        for save in batch {
            if let Some(record) = &save.record {
                latest.insert(&save.vehicle, &record.record);
                // Key changes in the order of saves (a later save may forget
                // a key an earlier one added).
                let vehicle = || save.vehicle.to_string();
                keys.extend(record.gone_keys.iter().map(|k| KeyRow {
                    vehicle: vehicle(),
                    key: k.to_string(),
                    entry: None,
                }));
                keys.extend(record.put_keys.iter().map(|(k, e)| KeyRow {
                    vehicle: vehicle(),
                    key: k.to_string(),
                    entry: Some(e.clone()),
                }));
            }
            if let Some(entry) = &save.audit {
                let row = AuditRow {
                    vehicle: entry.vehicle.to_string(),
                    at: micros(entry.at),
                    seq,
                    record: entry.record.clone(),
                };
                audits.push(row);
                seq += 1;
            }
        }
        let records = latest
            .into_iter()
            .map(|(vehicle, record)| RecordRow { vehicle: vehicle.to_string(), record: record.clone() });
        Frame { seq: self.wal_seq + 1, records: records.collect(), keys, audits, audit_next: seq }
    }

    fn begin_non_durable(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(err)?;
        txn.set_durability(Durability::None).map_err(err)?;
        Ok(txn)
    }

    /// Makes redb durable up to the last frame, then empties the log. A
    /// failure leaves the log as it was (still the durable copy) and is
    /// retried at the next occasion.
    fn checkpoint(&mut self) {
        self.catch_up(usize::MAX);
        if !self.dirty || self.failed.is_some() {
            return;
        }
        let started = Instant::now();
        let log_bytes = self.wal.len();
        // An empty durable commit makes the non-durable ones before it durable.
        let durable = self.db.begin_write().map_err(err).and_then(|txn| txn.commit().map_err(err));
        if let Err(e) = durable {
            tracing::error!(error = %e, "store checkpoint failed");
            return;
        }
        self.dirty = false;
        if let Err(e) = self.wal.reset() {
            // Recovery skips frames at or below the checkpoint.
            tracing::error!(error = %e, "emptying the write-ahead log failed");
        }
        tracing::debug!(log_bytes, seconds = started.elapsed().as_secs_f64(), "store checkpoint");
    }

    /// Removes up to `limit` audit records recorded before `before` (µs).
    /// Not logged: a crash before the next checkpoint only leaves them for
    /// the next sweep.
    fn prune(&mut self, before: u64, limit: usize) -> Result<usize, StoreError> {
        self.catch_up(usize::MAX);
        let txn = self.begin_non_durable()?;
        let removed = {
            let mut age = txn.open_table(AUDIT_AGE).map_err(err)?;
            let mut audit = txn.open_table(AUDIT).map_err(err)?;
            let mut old = Vec::new();
            for row in age.range((0, 0)..(before, 0)).map_err(err)?.take(limit) {
                let (k, v) = row.map_err(err)?;
                old.push((k.value(), v.value().to_string()));
            }
            for (key, vehicle) in &old {
                age.remove(*key).map_err(err)?;
                audit.remove((vehicle.as_str(), key.1)).map_err(err)?;
            }
            old.len()
        };
        txn.commit().map_err(err)?;
        self.dirty |= removed > 0;
        Ok(removed)
    }
}

/// Applies frames' changes, in order, to a write transaction (a live
/// catch-up and recovery take the same path). Each table is opened once,
/// and a row changed by several frames is written once, as the last frame
/// left it: the result is the same as applying them one by one.
fn apply(txn: &WriteTransaction, frames: &[Frame]) -> Result<(), StoreError> {
    let Some(last) = frames.last() else { return Ok(()) };
    let mut records: HashMap<&str, &Bytes> = HashMap::new();
    let mut keys: HashMap<(&str, &str), Option<&Bytes>> = HashMap::new();
    for frame in frames {
        records.extend(frame.records.iter().map(|row| (row.vehicle.as_str(), &row.record)));
        keys.extend(frame.keys.iter().map(|row| ((row.vehicle.as_str(), row.key.as_str()), row.entry.as_ref())));
    }
    let mut table = txn.open_table(VEHICLES).map_err(err)?;
    for (vehicle, record) in records {
        table.insert(vehicle, record.as_ref()).map_err(err)?;
    }
    if !keys.is_empty() {
        let mut table = txn.open_table(KEYS).map_err(err)?;
        for (key, entry) in keys {
            match entry {
                Some(entry) => table.insert(key, entry.as_ref()).map(drop),
                None => table.remove(key).map(drop),
            }
            .map_err(err)?;
        }
    }
    let mut meta = txn.open_table(META).map_err(err)?;
    if frames.iter().any(|f| !f.audits.is_empty()) {
        let mut audit = txn.open_table(AUDIT).map_err(err)?;
        let mut age = txn.open_table(AUDIT_AGE).map_err(err)?;
        for row in frames.iter().flat_map(|f| &f.audits) {
            audit.insert((row.vehicle.as_str(), row.seq), row.record.as_ref()).map_err(err)?;
            age.insert((row.at, row.seq), row.vehicle.as_str()).map_err(err)?;
        }
        meta.insert(AUDIT_SEQ, last.audit_next).map_err(err)?;
    }
    meta.insert(WAL_SEQ, last.seq).map_err(err)?;
    Ok(())
}

impl RedbStore {
    fn send(&self, op: Op) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let refused = match tx.as_ref() {
            Some(tx) => tx.send(op).err().map(|mpsc::SendError(op)| (op, "the store writer stopped")),
            None => Some((op, "the store is closed")),
        };
        match refused {
            Some((Op::Save(save), why)) => {
                let _ = save.done.send(Err(err(why)));
            }
            Some((Op::Prune { done, .. }, why)) => {
                let _ = done.send(Err(err(why)));
            }
            Some((Op::CatchUp, _)) => {}
            #[cfg(test)]
            Some((Op::Halt(_), _)) => {}
            None => {}
        }
    }
}

impl Store for RedbStore {
    fn load_all(&self) -> Result<Vec<StoredRows>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let mut keys: HashMap<String, Vec<(Arc<str>, Bytes)>> = HashMap::new();
        for row in txn.open_table(KEYS).map_err(err)?.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            let (vehicle, key) = k.value();
            keys.entry(vehicle.to_string()).or_default().push((Arc::from(key), Bytes::copy_from_slice(v.value())));
        }
        let mut out = Vec::new();
        for row in txn.open_table(VEHICLES).map_err(err)?.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            let vehicle = k.value();
            out.push(StoredRows {
                vehicle: Arc::from(vehicle),
                record: Bytes::copy_from_slice(v.value()),
                keys: keys.remove(vehicle).unwrap_or_default(),
            });
        }
        Ok(out)
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
        if self.applied.behind() {
            self.send(Op::CatchUp);
        }
        self.applied.wait()?;
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(AUDIT).map_err(err)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn saves_are_durable_and_reload_and_the_epoch_grows() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.boot_epoch(), 1);
        let a = store.save("car-1".into(), record(b"one", &[("k1", b"e1"), ("k2", b"e2")], &[]), None);
        let b = store.save("car-1".into(), record(b"two", &[("k3", b"e3")], &["k1"]), None);
        let c = store.save("car-2".into(), record(b"x", &[("k1", b"other")], &[]), None);
        for d in [a, b, c] {
            d.await.unwrap().unwrap();
        }
        store.close();
        assert!(store.save("car-3".into(), RecordSave::default(), None).await.unwrap().is_err());
        drop(store);
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.boot_epoch(), 2);
        let mut all = store.load_all().unwrap();
        all.sort_by(|a, b| a.vehicle.cmp(&b.vehicle));
        for rows in &mut all {
            rows.keys.sort();
        }
        let key = |k: &str, e: &'static [u8]| (Arc::<str>::from(k), Bytes::from_static(e));
        assert_eq!(
            all,
            vec![
                StoredRows {
                    vehicle: "car-1".into(),
                    record: Bytes::from_static(b"two"),
                    keys: vec![key("k2", b"e2"), key("k3", b"e3")],
                },
                StoredRows {
                    vehicle: "car-2".into(),
                    record: Bytes::from_static(b"x"),
                    keys: vec![key("k1", b"other")]
                },
            ],
            "the latest record wins; key changes of every save apply in order, per vehicle"
        );
    }

    #[tokio::test]
    async fn lazy_saves_become_durable_and_close_commits_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let lazy = |bytes| RecordSave { urgency: Urgency::Lazy, ..record(bytes, &[], &[]) };
        // A lazy save alone resolves (after its window); one followed by an
        // urgent save shares its commit.
        store.save("car-1".into(), lazy(b"ack"), None).await.unwrap().unwrap();
        let report = store.save("car-2".into(), lazy(b"report"), None);
        let write = store.save("car-3".into(), record(b"write", &[], &[]), None);
        write.await.unwrap().unwrap();
        report.await.unwrap().unwrap();
        // Closing commits a lazy save nobody waited for.
        let unawaited = store.save("car-1".into(), lazy(b"report"), None);
        store.close();
        assert!(unawaited.await.unwrap().is_ok());
        drop(store);
        let store = RedbStore::open(dir.path()).unwrap();
        let mut all: Vec<(String, Bytes)> =
            store.load_all().unwrap().into_iter().map(|r| (r.vehicle.to_string(), r.record)).collect();
        all.sort();
        let want = [("car-1", &b"report"[..]), ("car-2", b"report"), ("car-3", b"write")]
            .map(|(v, r)| (v.to_string(), Bytes::from_static(r)));
        assert_eq!(all, want);
    }

    #[tokio::test]
    async fn a_save_runs_its_on_commit_before_it_resolves_and_a_refused_save_never_does() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        use crate::store::OnCommit;
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let counted = |ran: &Arc<AtomicUsize>| {
            let ran = ran.clone();
            Some(OnCommit::new(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            }))
        };
        let save = RecordSave { on_commit: counted(&ran), ..record(b"write", &[], &[]) };
        store.save("car-1".into(), save, None).await.unwrap().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1, "ran once, before the save resolved");
        // A closed store commits nothing: the callback never runs.
        store.close();
        let refused = RecordSave { on_commit: counted(&ran), ..record(b"late", &[], &[]) };
        assert!(store.save("car-1".into(), refused, None).await.unwrap().is_err());
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }

    /// Queues a stop of the writer as a crash would do it (no checkpoint),
    /// behind what is already queued; resolves once it stopped.
    fn halt(store: &RedbStore) -> oneshot::Receiver<()> {
        let (done, halted) = oneshot::channel();
        store.send(Op::Halt(done));
        halted
    }

    /// A copy of a store's directory, file by file: with its writer halted
    /// and its database still open, what a crash leaves on disk.
    fn crash_image(dir: &Path) -> tempfile::TempDir {
        let image = tempfile::tempdir().unwrap();
        for file in std::fs::read_dir(dir).unwrap() {
            let file = file.unwrap();
            std::fs::copy(file.path(), image.path().join(file.file_name())).unwrap();
        }
        image
    }

    /// What the database file of `dir` holds on its own, without its log.
    fn database_alone(dir: &Path) -> Vec<StoredRows> {
        let alone = tempfile::tempdir().unwrap();
        std::fs::copy(dir.join("tether.redb"), alone.path().join("tether.redb")).unwrap();
        RedbStore::open(alone.path()).unwrap().load_all().unwrap()
    }

    #[tokio::test]
    async fn what_was_durable_when_the_process_died_is_replayed_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let saves = [
            store.save(
                "car-1".into(),
                record(b"one", &[("k1", b"e1"), ("k2", b"e2")], &[]),
                Some(entry("car-1", 10, "a")),
            ),
            store.save("car-1".into(), record(b"two", &[("k3", b"e3")], &["k1"]), Some(entry("car-1", 11, "b"))),
            store.save("car-2".into(), record(b"x", &[], &[]), None),
            store.audit(entry("car-2", 12, "refused")),
        ];
        // The process dies: the writer stops with no checkpoint (queued right
        // behind the saves, so no idle checkpoint comes between), and the
        // files are taken as they are on disk, the database still open.
        let halted = halt(&store);
        for saved in saves {
            saved.await.unwrap().unwrap();
        }
        halted.await.unwrap();
        let crashed = crash_image(dir.path());
        let log = std::fs::metadata(crashed.path().join("tether.wal")).unwrap().len();
        assert!(log > 0, "the saves are in the log");
        // Without its log, the database holds none of them: the log is what
        // made them durable.
        assert!(database_alone(crashed.path()).is_empty());

        let store = RedbStore::open(crashed.path()).unwrap();
        assert_eq!(std::fs::metadata(crashed.path().join("tether.wal")).unwrap().len(), 0, "replayed, then emptied");
        let mut all = store.load_all().unwrap();
        all.sort_by(|a, b| a.vehicle.cmp(&b.vehicle));
        let records: Vec<(&str, &[u8], Vec<&str>)> = all
            .iter()
            .map(|r| {
                let mut keys: Vec<&str> = r.keys.iter().map(|(k, _)| k.as_ref()).collect();
                keys.sort();
                (r.vehicle.as_ref(), r.record.as_ref(), keys)
            })
            .collect();
        assert_eq!(records, vec![("car-1", &b"two"[..], vec!["k2", "k3"]), ("car-2", b"x", vec![])]);
        let texts = |store: &RedbStore, v| {
            store.audit_page(v, None, 10).unwrap().into_iter().map(|(_, b)| b).collect::<Vec<_>>()
        };
        assert_eq!(texts(&store, "car-1"), [Bytes::from_static(b"b"), Bytes::from_static(b"a")]);
        assert_eq!(texts(&store, "car-2"), [Bytes::from_static(b"refused")]);
        // Audit sequences go on above the replayed ones.
        let before = store.audit_page("car-1", None, 1).unwrap()[0].0;
        store.audit(entry("car-1", 13, "c")).await.unwrap().unwrap();
        assert!(store.audit_page("car-1", None, 1).unwrap()[0].0 > before);
        // Replayed once: a second crash-free restart changes nothing.
        store.close();
        drop(store);
        let store = RedbStore::open(crashed.path()).unwrap();
        assert_eq!(store.load_all().unwrap().len(), 2);
        assert_eq!(texts(&store, "car-1").len(), 3);
    }

    #[tokio::test]
    async fn an_answered_audit_record_is_read_back_at_once() {
        // The writer answers once the log holds a batch and applies it to
        // redb afterwards: a read right after the answer must still see it.
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        for i in 0..300u64 {
            let text = Bytes::from(format!("record {i}"));
            let audit =
                AuditEntry { vehicle: "car-1".into(), at: UNIX_EPOCH + Duration::from_secs(i), record: text.clone() };
            let saved = store.save("car-1".into(), record(b"r", &[], &[]), Some(audit));
            saved.await.unwrap().unwrap();
            let newest = store.audit_page("car-1", None, 1).unwrap();
            assert_eq!(newest.first().map(|(_, b)| b), Some(&text), "write {i}");
        }
    }

    #[tokio::test]
    async fn a_burst_of_saves_is_read_back_whole_while_redb_takes_frames_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        // Saves queued faster than the writer commits them: frames wait for
        // redb in batches (up to APPLY_BATCH), and every one is read back.
        let saves: Vec<_> = (0..2000u64)
            .map(|i| {
                let audit = AuditEntry {
                    vehicle: "car-1".into(),
                    at: UNIX_EPOCH + Duration::from_secs(i),
                    record: Bytes::from(format!("record {i}")),
                };
                store.save("car-1".into(), record(b"r", &[], &[]), Some(audit))
            })
            .collect();
        for saved in saves {
            saved.await.unwrap().unwrap();
        }
        let page = store.audit_page("car-1", None, 5000).unwrap();
        assert_eq!(page.len(), 2000);
        assert_eq!(page[0].1, Bytes::from("record 1999"));
        // And after a restart, from redb and the log alike.
        store.close();
        drop(store);
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.audit_page("car-1", None, 5000).unwrap().len(), 2000);
    }

    #[tokio::test]
    async fn an_idle_checkpoint_empties_the_log_and_recovery_replays_only_what_came_after() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let log = dir.path().join("tether.wal");
        store.save("car-1".into(), record(b"one", &[("k1", b"e1")], &[]), None).await.unwrap().unwrap();
        assert!(std::fs::metadata(&log).unwrap().len() > 0);
        // Idle for CHECKPOINT_IDLE: redb is made durable and the log emptied.
        let deadline = Instant::now() + CHECKPOINT_IDLE * 10;
        while std::fs::metadata(&log).unwrap().len() > 0 {
            assert!(Instant::now() < deadline, "no checkpoint within {:?}", CHECKPOINT_IDLE * 10);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let saved = store.save("car-1".into(), record(b"two", &[("k2", b"e2")], &["k1"]), None);
        let halted = halt(&store);
        saved.await.unwrap().unwrap();
        halted.await.unwrap();
        let crashed = crash_image(dir.path());
        // The checkpoint alone holds the first save.
        let checkpointed = database_alone(crashed.path());
        assert_eq!(checkpointed[0].record, Bytes::from_static(b"one"));
        // With the log, the second save too.
        let all = RedbStore::open(crashed.path()).unwrap().load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].record, Bytes::from_static(b"two"));
        assert_eq!(all[0].keys, vec![(Arc::from("k2"), Bytes::from_static(b"e2"))]);
    }

    fn record(record: &'static [u8], put: &[(&str, &'static [u8])], gone: &[&str]) -> RecordSave {
        RecordSave {
            record: Bytes::from_static(record),
            put_keys: put.iter().map(|(k, e)| (Arc::from(*k), Bytes::from_static(e))).collect(),
            gone_keys: gone.iter().map(|k| Arc::from(*k)).collect(),
            ..RecordSave::default()
        }
    }

    fn entry(vehicle: &str, at_secs: u64, text: &'static str) -> AuditEntry {
        AuditEntry {
            vehicle: vehicle.into(),
            at: UNIX_EPOCH + std::time::Duration::from_secs(at_secs),
            record: Bytes::from_static(text.as_bytes()),
        }
    }

    #[tokio::test]
    async fn frames_left_after_a_slice_reach_redb_with_no_reader_and_no_further_save() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        // One frame per save (each awaited), more than one slice of them.
        for i in 0..(APPLY_SLICE as u64 * 3 + 5) {
            let audit = entry("car-1", i, "a");
            store.save("car-1".into(), record(b"r", &[], &[]), Some(audit)).await.unwrap().unwrap();
        }
        // Nothing asks: the writer applies slice after slice once they are
        // due. The bound stays below CHECKPOINT_IDLE, whose checkpoint would
        // catch up too and hide a writer that stopped after one slice.
        let bound = APPLY_DELAY * 6;
        assert!(bound < CHECKPOINT_IDLE);
        let deadline = Instant::now() + bound;
        while store.applied.behind() {
            assert!(Instant::now() < deadline, "redb still lacks logged frames after {bound:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every row of every table, to compare two databases.
    fn dump(db: &Database) -> Vec<String> {
        fn rows<K: ::redb::Key + 'static, V: ::redb::Value + 'static>(
            txn: &::redb::ReadTransaction,
            table: TableDefinition<K, V>,
            out: &mut Vec<String>,
        ) where
            for<'a> K::SelfType<'a>: std::fmt::Debug,
            for<'a> V::SelfType<'a>: std::fmt::Debug,
        {
            for row in txn.open_table(table).unwrap().iter().unwrap() {
                let (k, v) = row.unwrap();
                out.push(format!("{} {:?} = {:?}", ::redb::TableHandle::name(&table), k.value(), v.value()));
            }
        }
        let txn = db.begin_read().unwrap();
        let mut out = Vec::new();
        rows(&txn, VEHICLES, &mut out);
        rows(&txn, KEYS, &mut out);
        rows(&txn, AUDIT, &mut out);
        rows(&txn, AUDIT_AGE, &mut out);
        rows(&txn, META, &mut out);
        out
    }

    #[test]
    fn frames_applied_in_one_commit_leave_what_applying_them_one_by_one_leaves() {
        let rec = |vehicle: &str, record: &'static [u8]| RecordRow { vehicle: vehicle.into(), record: record.into() };
        let key = |vehicle: &str, key: &str, entry: Option<&'static [u8]>| KeyRow {
            vehicle: vehicle.into(),
            key: key.into(),
            entry: entry.map(Bytes::from_static),
        };
        let audit =
            |vehicle: &str, seq: u64| AuditRow { vehicle: vehicle.into(), at: seq * 10, seq, record: "a".into() };
        // A record rewritten, a key put then forgotten, one forgotten then
        // put again, and audit records in several frames.
        let frames = [
            Frame {
                seq: 1,
                records: vec![rec("car-1", b"one"), rec("car-2", b"x")],
                keys: vec![key("car-1", "k1", Some(b"e1")), key("car-1", "k2", Some(b"e2"))],
                audits: vec![audit("car-1", 1)],
                audit_next: 2,
            },
            Frame {
                seq: 2,
                records: vec![rec("car-1", b"two")],
                keys: vec![key("car-1", "k1", None)],
                audits: vec![],
                audit_next: 2,
            },
            Frame {
                seq: 3,
                records: vec![rec("car-1", b"three")],
                keys: vec![key("car-1", "k2", None), key("car-1", "k2", Some(b"e2b")), key("car-2", "k1", Some(b"x1"))],
                audits: vec![audit("car-2", 2), audit("car-1", 3)],
                audit_next: 4,
            },
            Frame { seq: 4, records: vec![], keys: vec![], audits: vec![], audit_next: 4 },
        ];
        let (one_by_one, together) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = Database::create(one_by_one.path().join("db")).unwrap();
        for frame in &frames {
            let txn = a.begin_write().unwrap();
            apply(&txn, std::slice::from_ref(frame)).unwrap();
            txn.commit().unwrap();
        }
        let b = Database::create(together.path().join("db")).unwrap();
        let txn = b.begin_write().unwrap();
        apply(&txn, &frames).unwrap();
        txn.commit().unwrap();
        let rows = dump(&a);
        assert_eq!(rows, dump(&b));
        assert!(rows.contains(&r#"vehicles "car-1" = [116, 104, 114, 101, 101]"#.to_string()), "{rows:#?}");
        assert!(rows.contains(&r#"idempotency_keys ("car-1", "k2") = [101, 50, 98]"#.to_string()), "{rows:#?}");
        assert!(!rows.iter().any(|r| r.starts_with(r#"idempotency_keys ("car-1", "k1")"#)), "{rows:#?}");
        assert!(rows.contains(&r#"meta "wal_seq" = 4"#.to_string()), "{rows:#?}");
        assert!(rows.contains(&r#"meta "audit_seq" = 4"#.to_string()), "{rows:#?}");
    }

    #[tokio::test]
    async fn audit_records_page_newest_first_survive_restarts_and_age_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let saved = store.save("car-1".into(), record(b"rec", &[], &[]), Some(entry("car-1", 10, "a")));
        let others = [store.audit(entry("car-2", 11, "b")), store.audit(entry("car-1", 12, "c"))];
        saved.await.unwrap().unwrap();
        for d in others {
            d.await.unwrap().unwrap();
        }
        let page = store.audit_page("car-1", None, 10).unwrap();
        let texts: Vec<&[u8]> = page.iter().map(|(_, b)| b.as_ref()).collect();
        assert_eq!(texts, [b"c".as_ref(), b"a"]);
        assert!(page[0].0 > page[1].0, "sequences grow: {page:?}");
        // Paging: below the newest, only the older one.
        assert_eq!(store.audit_page("car-1", Some(page[0].0), 10).unwrap(), vec![page[1].clone()]);
        assert_eq!(store.audit_page("car-1", None, 1).unwrap().len(), 1);
        assert!(store.audit_page("car-", None, 10).unwrap().is_empty(), "no prefix matches");
        store.close();
        drop(store);

        // Sequences keep growing across a restart; retention removes by age only.
        let store = RedbStore::open(dir.path()).unwrap();
        store.audit(entry("car-1", 13, "d")).await.unwrap().unwrap();
        let newest = store.audit_page("car-1", None, 1).unwrap();
        assert!(newest[0].0 > page[0].0 && newest[0].1.as_ref() == b"d");
        let removed = store.prune_audit(UNIX_EPOCH + std::time::Duration::from_secs(12), 100).await.unwrap().unwrap();
        assert_eq!(removed, 2, "a (10 s) and b (11 s)");
        let texts: Vec<Bytes> = store.audit_page("car-1", None, 10).unwrap().into_iter().map(|(_, b)| b).collect();
        assert_eq!(texts, [Bytes::from_static(b"d"), Bytes::from_static(b"c")]);
        assert!(store.audit_page("car-2", None, 10).unwrap().is_empty());
        assert_eq!(store.load_all().unwrap().len(), 1, "the vehicle record is untouched");
    }
}
