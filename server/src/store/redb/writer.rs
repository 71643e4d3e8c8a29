//! The redb store's one writer thread: it folds queued saves into batches,
//! makes each durable as one frame of the write-ahead log, applies logged
//! frames to redb off the writes' path, checkpoints, and keeps the store's
//! health.
//!
//! Health: a write the disk refuses for lack of space (or quota) makes the
//! store *degraded*: every save is refused at once (nothing stored) and the
//! writer retries every [`PROBE_EVERY`] with a checkpoint (reopening redb
//! from its file and the log first, if redb latched an I/O error); once one
//! succeeds the store is healthy again, by itself. Any other failure makes
//! it *failed* for good. Either way each vehicle whose save was refused is
//! reloaded from what is durable, so memory never runs ahead of the disk
//! ([`Reload`]): the hub takes `valid_from` as the vehicle's epoch, and this
//! writer refuses every save made before that (they were computed from the
//! refused state).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use ::redb::{Database, Durability, ReadableDatabase, WriteTransaction};
use bytes::Bytes;
use tokio::sync::oneshot;

use super::open::{self, Recovered, io_fail};
use super::rows::{self, AUDIT, AUDIT_AGE};
use super::{Fail, OpenOptions, Shared, err};
use crate::store::wal::{AuditRow, Frame, KeyRow, RecordRow, Wal};
use crate::store::{AuditEntry, DurableRows, RecordSave, Reload, ReloadCause, StoreError, StoreHealth, Urgency};

/// The log size at which the writer checkpoints: it bounds the log on disk,
/// the replay at start-up, and how long one checkpoint holds the writer.
const CHECKPOINT_BYTES: u64 = 64 << 20;
/// How long the writer waits without a save before it checkpoints.
pub(super) const CHECKPOINT_IDLE: Duration = Duration::from_secs(1);
/// Most saves folded into one commit.
const MAX_BATCH: usize = 4096;
/// Longest a batch of only [`Urgency::Lazy`] saves waits for more saves
/// before it is committed: a vehicle's ack and report then share one commit
/// (and one record write) instead of taking one each, and a write arriving
/// meanwhile does not queue behind their fsync.
const LAZY_WINDOW: Duration = Duration::from_millis(10);
/// Longest a logged frame waits for redb. redb is not the durable copy (the
/// log is) and readers ask for a catch-up, so the wait only sets how many
/// frames share one redb commit: each table opened once and a vehicle's
/// record written once per commit, however many saves it had.
pub(super) const APPLY_DELAY: Duration = Duration::from_millis(100);
/// Most logged frames that wait for redb.
const APPLY_BATCH: usize = 512;
/// Most frames the writer applies between two batches of saves, so a save
/// that comes while redb catches up waits for one slice, not for all that
/// waited. Frames grow with the load, and so does a slice: ≈ 0.3 ms of small
/// frames at 1,000 writes/s, ≈ 3 ms at saturation, where it amortizes the
/// commit (≈ 185 µs a frame in 32-frame slices, ≈ 300 µs in 128-row ones).
pub(super) const APPLY_SLICE: usize = 32;
/// How often a degraded store tries to write again.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Longest a reopen waits for readers to let go of the old database.
const READERS_BOUND: Duration = Duration::from_secs(2);

/// A vehicle's record and/or an audit record, committed together.
pub(super) struct Save {
    pub vehicle: Arc<str>,
    pub record: Option<RecordSave>,
    pub audit: Option<AuditEntry>,
    pub done: oneshot::Sender<Result<(), StoreError>>,
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
pub(super) enum Op {
    Save(Save),
    Prune {
        before: u64,
        limit: usize,
        done: oneshot::Sender<Result<usize, StoreError>>,
    },
    /// A reader waits for redb to take what is logged.
    CatchUp,
    /// Moves a damaged vehicle's rows aside, durably.
    Quarantine {
        vehicle: String,
        why: String,
        done: mpsc::Sender<Result<(), StoreError>>,
    },
    /// Stops the writer as a crash would: no checkpoint, nothing more.
    #[cfg(test)]
    Halt(oneshot::Sender<()>),
    /// The next `count` log appends fail with `errno` (ENOSPC: as a full
    /// disk would).
    #[cfg(test)]
    FailAppends {
        count: usize,
        errno: i32,
    },
}

impl Op {
    /// Answers `e` to whoever waits for this operation.
    pub(super) fn refuse(self, e: StoreError) {
        match self {
            Op::Save(save) => {
                let _ = save.done.send(Err(e));
            }
            Op::Prune { done, .. } => {
                let _ = done.send(Err(e));
            }
            Op::Quarantine { done, .. } => {
                let _ = done.send(Err(e));
            }
            Op::CatchUp => {}
            #[cfg(test)]
            Op::Halt(_) | Op::FailAppends { .. } => {}
        }
    }
}

/// The one thread that writes.
pub(super) struct Writer {
    shared: Arc<Shared>,
    /// The writer's handle on the database (`None` while it reopens it).
    db: Option<Arc<Database>>,
    db_path: PathBuf,
    wal_path: PathBuf,
    /// The sequence the next audit record gets.
    audit_seq: u64,
    wal: Wal,
    /// The sequence of the last frame appended.
    wal_seq: u64,
    /// redb holds non-durable commits that no checkpoint has made durable.
    dirty: bool,
    /// Whether it takes writes (what the node's health is told).
    state: StoreHealth,
    /// redb latched an I/O error: it must be reopened before it is used.
    redb_broken: bool,
    /// Frames logged and answered that redb has not taken yet: applied
    /// together, in one redb commit, once the oldest waited [`APPLY_DELAY`]
    /// or [`APPLY_BATCH`] of them wait, when a reader asks, and always
    /// before a prune or a checkpoint.
    unapplied: Vec<Frame>,
    /// When the oldest of `unapplied` was logged.
    unapplied_since: Option<Instant>,
    /// Per vehicle whose save was refused: saves with a lower epoch were
    /// made before it was reloaded, and are refused.
    min_epoch: HashMap<Arc<str>, u64>,
    /// Vehicles reloaded while redb could not be read: reloaded again once
    /// it can.
    stale: BTreeSet<Arc<str>>,
    /// When a degraded store tries again.
    probe_at: Option<Instant>,
    /// When the last operation came (an idle checkpoint follows it).
    last_op: Instant,
    #[cfg(test)]
    fail_appends: (usize, i32),
}

impl Writer {
    pub(super) fn new(shared: Arc<Shared>, db_path: PathBuf, wal_path: PathBuf, wal: Wal, at: &Recovered) -> Self {
        let db = shared.db.read().unwrap_or_else(|p| p.into_inner()).clone();
        Writer {
            shared,
            db,
            db_path,
            wal_path,
            audit_seq: at.audit_seq,
            wal,
            wal_seq: at.wal_seq,
            dirty: false,
            state: StoreHealth::Healthy,
            redb_broken: false,
            unapplied: Vec::new(),
            unapplied_since: None,
            min_epoch: HashMap::new(),
            stale: BTreeSet::new(),
            probe_at: None,
            last_op: Instant::now(),
            #[cfg(test)]
            fail_appends: (0, 0),
        }
    }

    /// Serves until the store closes, then checkpoints. A panic inside
    /// (redb's, on a damaged file) fails the store instead of leaving it
    /// healthy with no writer.
    pub(super) fn run_until_closed(mut self, rx: &mpsc::Receiver<Op>) {
        let shared = self.shared.clone();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run(rx);
            self.checkpoint();
        }));
        if ran.is_err() {
            let why = "the store's writer failed (the storage engine panicked); restart tetherd".to_string();
            tracing::error!("{why}");
            shared.applied.broken(err(&why));
            shared.health.send_replace(StoreHealth::Failed(why));
        }
    }

    fn run(&mut self, rx: &mpsc::Receiver<Op>) {
        let mut pending = None;
        loop {
            let now = Instant::now();
            if self.usable() && (self.unapplied.len() >= APPLY_BATCH || self.apply_at().is_some_and(|at| at <= now)) {
                self.catch_up(APPLY_SLICE);
            }
            if self.probe_at.is_some_and(|at| at <= now) {
                self.probe();
            }
            if self.checkpoint_at().is_some_and(|at| at <= now) {
                self.checkpoint();
            }
            let first = match pending.take() {
                Some(op) => op,
                None => {
                    let wake = [self.apply_at().filter(|_| self.usable()), self.probe_at, self.checkpoint_at()]
                        .into_iter()
                        .flatten()
                        .min();
                    let received = match wake {
                        Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
                        None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                    };
                    match received {
                        Ok(op) => op,
                        // Due now: the loop's top does it.
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            };
            self.last_op = Instant::now();
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
                Op::Quarantine { vehicle, why, done } => {
                    let _ = done.send(self.quarantine(&vehicle, &why));
                    continue;
                }
                #[cfg(test)]
                Op::Halt(done) => {
                    self.state = StoreHealth::Failed("halted".into());
                    let _ = done.send(());
                    return;
                }
                #[cfg(test)]
                Op::FailAppends { count, errno } => {
                    self.fail_appends = (count, errno);
                    continue;
                }
            };
            // Fold the saves queued behind it into one commit; another
            // operation ends the batch. Only lazy saves so far: wait
            // (bounded) for more.
            let mut urgent = first.urgency() == Urgency::Now;
            let lazy_until = Instant::now() + LAZY_WINDOW;
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                let next = if urgent {
                    rx.try_recv().ok()
                } else {
                    rx.recv_timeout(lazy_until.saturating_duration_since(Instant::now())).ok()
                };
                match next {
                    Some(Op::Save(save)) => {
                        urgent |= save.urgency() == Urgency::Now;
                        batch.push(save);
                    }
                    Some(other) => {
                        pending = Some(other);
                        break;
                    }
                    // Nothing more queued, the window ended, or the store closed
                    // (the next `recv` then ends the thread).
                    None => break,
                }
            }
            self.commit(batch);
            if self.wal.len() >= CHECKPOINT_BYTES {
                self.checkpoint();
            }
        }
    }

    /// Makes a batch durable and answers it, or refuses it whole. Saves made
    /// before their vehicle was reloaded are refused first: they were
    /// computed from a record the store had refused.
    fn commit(&mut self, mut batch: Vec<Save>) {
        if !self.min_epoch.is_empty() {
            let (stale, fresh): (Vec<Save>, Vec<Save>) = batch.into_iter().partition(|save| {
                let min = self.min_epoch.get(&save.vehicle).copied().unwrap_or(0);
                save.record.as_ref().is_some_and(|r| r.epoch < min)
            });
            for save in stale {
                let refused = err("the save was made from a record the store had refused; nothing was stored");
                let _ = save.done.send(Err(refused));
            }
            if fresh.is_empty() {
                return;
            }
            // A vehicle's saves come in the order they were made: once one
            // made after its reload is here, none made before is left.
            if self.state == StoreHealth::Healthy {
                for save in &fresh {
                    if save.record.is_some() {
                        self.min_epoch.remove(&save.vehicle);
                    }
                }
            }
            batch = fresh;
        }
        let logged = match &self.state {
            StoreHealth::Healthy => self.log(&batch).map_err(|f| {
                tracing::error!(error = %f, saves = batch.len(), "store commit failed");
                self.fail(f.clone());
                StoreError::from(f)
            }),
            _ => Err(self.refusal()),
        };
        let frame = match logged {
            Ok(frame) => frame,
            Err(e) => return self.refuse(batch, e),
        };
        for mut save in batch {
            if let Some(on_commit) = save.record.as_mut().and_then(|r| r.on_commit.take()) {
                on_commit.run();
            }
            let _ = save.done.send(Ok(()));
        }
        // Answered: redb takes it later, off the writes' path.
        self.unapplied_since.get_or_insert_with(Instant::now);
        self.unapplied.push(frame);
    }

    /// Why saves are refused now.
    fn refusal(&self) -> StoreError {
        match &self.state {
            StoreHealth::Healthy => err("the store refused the save"),
            StoreHealth::Degraded(why) => err(format!("the disk refuses writes ({why}); retrying")),
            StoreHealth::Failed(why) => err(format!("the store failed ({why})")),
        }
    }

    /// Refuses every save of a batch (nothing of it is stored), after
    /// reloading each vehicle whose in-memory record ran ahead (once per
    /// epoch): a caller told "refused" finds the vehicle as it is durable.
    fn refuse(&mut self, batch: Vec<Save>, e: StoreError) {
        let mut due = Vec::new();
        for save in &batch {
            if let Some(record) = &save.record {
                let min = self.min_epoch.entry(save.vehicle.clone()).or_insert(0);
                if record.epoch >= *min {
                    *min = record.epoch + 1;
                    due.push((save.vehicle.clone(), *min));
                }
            }
        }
        for (vehicle, valid_from) in due {
            self.reload(vehicle, valid_from);
        }
        for save in batch {
            let _ = save.done.send(Err(e.clone()));
        }
    }

    /// Hands the hub what is durable of `vehicle`, or that it cannot be read
    /// now (then again once it can).
    fn reload(&mut self, vehicle: Arc<str>, valid_from: u64) {
        let rows = self.durable_rows(&vehicle);
        if matches!(rows, DurableRows::Unknown) {
            self.stale.insert(vehicle.clone());
        } else {
            self.stale.remove(&vehicle);
        }
        super::reload(&self.shared, Reload { vehicle, cause: ReloadCause::Refused, valid_from, rows });
    }

    fn durable_rows(&mut self, vehicle: &str) -> DurableRows {
        self.catch_up(usize::MAX);
        let read = match (&self.db, self.usable()) {
            (Some(db), true) => db.begin_read().map_err(Fail::from).and_then(|txn| rows::load_one(&txn, vehicle)),
            _ => return DurableRows::Unknown,
        };
        match read {
            Ok(rows) => DurableRows::Known(rows),
            Err(f) => {
                tracing::error!(vehicle, error = %f, "reading a vehicle's durable rows failed");
                DurableRows::Unknown
            }
        }
    }

    /// Notes a failure: degraded (and retried) when the disk may come back,
    /// failed for good otherwise; tells the node's health.
    fn fail(&mut self, f: Fail) {
        let state = if f.transient { StoreHealth::Degraded(f.msg.clone()) } else { StoreHealth::Failed(f.msg.clone()) };
        if f.transient && self.probe_at.is_none() {
            self.probe_at = Some(Instant::now() + PROBE_EVERY);
        }
        if state == self.state {
            return;
        }
        match &state {
            StoreHealth::Degraded(_) => {
                tracing::error!(error = %f, retry = ?PROBE_EVERY, "the store cannot write: writes are refused until it can");
                self.probe_at = Some(Instant::now() + PROBE_EVERY);
            }
            _ => {
                tracing::error!(error = %f, "the store failed: no further write is accepted until tetherd restarts");
                self.probe_at = None;
            }
        }
        self.set_state(state);
    }

    /// The store's health, kept and told to the node.
    fn set_state(&mut self, state: StoreHealth) {
        self.state = state.clone();
        self.shared.health.send_replace(state);
    }

    /// Notes that redb failed: it is not used again before it is reopened,
    /// and readers waiting for it are told.
    fn redb_failed(&mut self, f: Fail) {
        self.redb_broken = true;
        self.shared.applied.broken(StoreError::from(f.clone()));
        self.fail(f);
    }

    /// Whether redb may be used now.
    fn usable(&self) -> bool {
        self.db.is_some() && !self.redb_broken
    }

    /// Makes a batch durable: its frame in the log. Returns the frame, for
    /// redb.
    fn log(&mut self, batch: &[Save]) -> Result<Frame, Fail> {
        let frame = self.frame(batch);
        #[cfg(test)]
        if self.fail_appends.0 > 0 {
            self.fail_appends.0 -= 1;
            let injected = std::io::Error::from_raw_os_error(self.fail_appends.1);
            return Err(io_fail(injected, "writing the write-ahead log"));
        }
        self.wal.append(&frame).map_err(|e| io_fail(e, "writing the write-ahead log"))?;
        self.wal_seq = frame.seq;
        self.audit_seq = frame.audit_next;
        self.shared.applied.logged(frame.seq);
        Ok(frame)
    }

    /// Applies up to `most` of the logged frames redb lacks, oldest first,
    /// in one commit (not durable: the log is the durable copy until a
    /// checkpoint). A failure stops redb's use: the frames stay in the log,
    /// replayed when redb is reopened or at the next start.
    fn catch_up(&mut self, most: usize) {
        if self.unapplied.is_empty() || !self.usable() {
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
            rows::apply(&txn, &frames)?;
            Ok(txn.commit()?)
        });
        tracing::debug!(frames = frames.len(), micros = started.elapsed().as_micros() as u64, "redb caught up");
        self.dirty = true;
        match applied {
            Ok(()) => self.shared.applied.applied(last),
            Err(f) => self.redb_failed(f.doing("the store's tables could not take logged commits")),
        }
    }

    /// When redb must take the waiting frames, if any wait.
    fn apply_at(&self) -> Option<Instant> {
        self.unapplied_since.map(|since| since + APPLY_DELAY)
    }

    /// When an idle checkpoint is due, if one is.
    fn checkpoint_at(&self) -> Option<Instant> {
        (self.dirty && self.state == StoreHealth::Healthy).then_some(self.last_op + CHECKPOINT_IDLE)
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
                    at: super::micros(entry.at),
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
        Frame { seq: self.wal_seq + 1, records: records.collect(), keys, audits, audit_next: seq, checkpoint: false }
    }

    fn database(&self) -> Result<&Database, Fail> {
        match &self.db {
            Some(db) if !self.redb_broken => Ok(db),
            _ => Err(Fail { msg: "the database is being reopened".into(), transient: true }),
        }
    }

    fn begin_non_durable(&self) -> Result<WriteTransaction, Fail> {
        let mut txn = self.database()?.begin_write()?;
        txn.set_durability(Durability::None)?;
        Ok(txn)
    }

    /// Makes redb durable up to the last frame, then empties the log. A
    /// failure leaves the log as it was (still the durable copy).
    fn checkpoint(&mut self) {
        if self.state != StoreHealth::Healthy {
            return;
        }
        self.catch_up(usize::MAX);
        if !self.dirty || !self.usable() {
            return;
        }
        if let Err(f) = self.checkpoint_now() {
            self.fail(f.doing("store checkpoint"));
        }
    }

    /// An empty durable commit (it makes the non-durable ones before it
    /// durable), then the log emptied down to its marker.
    fn checkpoint_now(&mut self) -> Result<(), Fail> {
        let started = Instant::now();
        let log_bytes = self.wal.len();
        let committed = self.database()?.begin_write().map_err(Fail::from).and_then(|txn| Ok(txn.commit()?));
        if let Err(f) = committed {
            // redb refuses everything after a failed commit until reopened.
            self.redb_broken = true;
            self.shared.applied.broken(StoreError::from(f.clone()));
            return Err(f);
        }
        self.dirty = false;
        // Recovery skips frames at or below the checkpoint: a log that could
        // not be emptied only replays them for nothing.
        if let Err(e) = self.wal.reset(self.wal_seq) {
            tracing::error!(error = %e, "emptying the write-ahead log failed");
            return Err(io_fail(e, "emptying the write-ahead log"));
        }
        tracing::debug!(log_bytes, seconds = started.elapsed().as_secs_f64(), "store checkpoint");
        Ok(())
    }

    /// A degraded store tries to write again: a checkpoint (after reopening
    /// redb if it latched an error). On success the store is healthy, and the
    /// vehicles reloaded while redb could not be read are reloaded again.
    fn probe(&mut self) {
        self.probe_at = None;
        let tried = if self.usable() {
            self.catch_up(usize::MAX);
            if !self.usable() {
                // The catch-up's failure is noted (and, if it may pass,
                // retried by reopening redb at the next probe).
                return;
            }
            self.checkpoint_now()
        } else {
            self.reopen()
        };
        match tried {
            Ok(()) => {
                tracing::warn!("the store writes again; writes are accepted");
                self.set_state(StoreHealth::Healthy);
                for vehicle in std::mem::take(&mut self.stale) {
                    let min = self.min_epoch.entry(vehicle.clone()).or_insert(0);
                    *min += 1;
                    let valid_from = *min;
                    self.reload(vehicle, valid_from);
                }
            }
            Err(f) if f.transient => {
                tracing::debug!(error = %f, "the store still cannot write");
                self.probe_at = Some(Instant::now() + PROBE_EVERY);
            }
            Err(f) => self.fail(f),
        }
    }

    /// Reopens redb from its file and replays the log into it, as a start
    /// would: redb refuses everything after an I/O error until then.
    fn reopen(&mut self) -> Result<(), Fail> {
        // Readers lose the database until it is back; the old handle must
        // be the last one before the file can be opened again.
        let taken = self.shared.db.write().unwrap_or_else(|p| p.into_inner()).take();
        self.db = None;
        if let Some(old) = taken {
            let deadline = Instant::now() + READERS_BOUND;
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if Arc::strong_count(&old) > 1 {
                *self.shared.db.write().unwrap_or_else(|p| p.into_inner()) = Some(old);
                return Err(Fail { msg: "readers still hold the database".into(), transient: true });
            }
            drop(old);
        }
        let db = open::open_database(&self.db_path)?;
        let (mut wal, scan) =
            Wal::open(&self.wal_path).map_err(|e| io_fail(e, &format!("opening {}", self.wal_path.display())))?;
        let recovered = open::no_panic("reopening the store", || {
            open::recover(&db, &mut wal, &scan, &self.wal_path, OpenOptions::default(), false)
        })?;
        if recovered.wal_seq < self.wal_seq {
            return Err(Fail::permanent(format!(
                "the write-ahead log holds commits up to {} after a reopen, but {} were acknowledged",
                recovered.wal_seq, self.wal_seq
            )));
        }
        self.wal = wal;
        self.wal_seq = recovered.wal_seq;
        self.audit_seq = recovered.audit_seq;
        self.unapplied.clear();
        self.unapplied_since = None;
        self.dirty = false;
        self.redb_broken = false;
        let db = Arc::new(db);
        self.db = Some(db.clone());
        *self.shared.db.write().unwrap_or_else(|p| p.into_inner()) = Some(db);
        self.shared.applied.logged(recovered.wal_seq);
        self.shared.applied.applied(recovered.wal_seq);
        tracing::warn!(commits = recovered.wal_seq, "reopened the store's database after a disk failure");
        Ok(())
    }

    /// Removes up to `limit` audit records recorded before `before` (µs).
    /// Not logged: a crash before the next checkpoint only leaves them for
    /// the next sweep.
    fn prune(&mut self, before: u64, limit: usize) -> Result<usize, StoreError> {
        if self.state != StoreHealth::Healthy {
            return Err(self.refusal());
        }
        self.catch_up(usize::MAX);
        let pruned = (|| {
            let txn = self.begin_non_durable()?;
            let removed = {
                let mut age = txn.open_table(AUDIT_AGE)?;
                let mut audit = txn.open_table(AUDIT)?;
                let mut old = Vec::new();
                for row in ::redb::ReadableTable::range(&age, (0, 0)..(before, 0))?.take(limit) {
                    let (k, v) = row?;
                    old.push((k.value(), v.value().to_string()));
                }
                for (key, vehicle) in &old {
                    age.remove(*key)?;
                    audit.remove((vehicle.as_str(), key.1))?;
                }
                old.len()
            };
            txn.commit()?;
            Ok::<_, Fail>(removed)
        })();
        match pruned {
            Ok(removed) => {
                self.dirty |= removed > 0;
                Ok(removed)
            }
            Err(f) => {
                let e = StoreError::from(f.clone());
                self.redb_failed(f.doing("pruning the audit trail"));
                Err(e)
            }
        }
    }

    /// Moves a vehicle's rows into the quarantine table, durably.
    fn quarantine(&mut self, vehicle: &str, why: &str) -> Result<(), StoreError> {
        self.catch_up(usize::MAX);
        let moved = (|| {
            let txn = self.database()?.begin_write()?;
            rows::quarantine(&txn, vehicle, why)?;
            Ok::<_, Fail>(txn.commit()?)
        })();
        moved.map_err(|f| f.doing(&format!("quarantining vehicle {vehicle:?}")).into())
    }
}
