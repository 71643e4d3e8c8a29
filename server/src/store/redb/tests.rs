//! The redb store's tests: durability across crashes and restarts, the
//! log's replay, the audit trail, damage found at start, and a disk that
//! refuses writes.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use bytes::Bytes;
use tokio::sync::oneshot;

use super::rows::{AUDIT, AUDIT_AGE, KEYS, META, VEHICLES, apply};
use super::writer::{APPLY_DELAY, APPLY_SLICE, CHECKPOINT_IDLE, Op};
use super::*;
use crate::store::wal::{AuditRow, Frame, KeyRow, RecordRow};
use crate::store::{AuditEntry, RecordSave, Store, StoredRows, Urgency};

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
                damage: None,
            },
            StoredRows {
                vehicle: "car-2".into(),
                record: Bytes::from_static(b"x"),
                keys: vec![key("k1", b"other")],
                damage: None,
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
        store.save("car-1".into(), record(b"one", &[("k1", b"e1"), ("k2", b"e2")], &[]), Some(entry("car-1", 10, "a"))),
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
    assert!(log_is_emptied(&crashed.path().join("tether.wal")), "replayed, then emptied");
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
    let texts =
        |store: &RedbStore, v| store.audit_page(v, None, 10).unwrap().into_iter().map(|(_, b)| b).collect::<Vec<_>>();
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
    while !log_is_emptied(&log) {
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

/// Whether the log at `path` holds nothing but its checkpoint marker.
fn log_is_emptied(path: &Path) -> bool {
    let (_, scan) = crate::store::wal::Wal::open(path).unwrap();
    scan.damage.is_none() && scan.frames.iter().all(|(_, f)| f.checkpoint)
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
    while store.shared.applied.behind() {
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
    let audit = |vehicle: &str, seq: u64| AuditRow { vehicle: vehicle.into(), at: seq * 10, seq, record: "a".into() };
    // A record rewritten, a key put then forgotten, one forgotten then
    // put again, and audit records in several frames.
    let frames = [
        Frame {
            seq: 1,
            records: vec![rec("car-1", b"one"), rec("car-2", b"x")],
            keys: vec![key("car-1", "k1", Some(b"e1")), key("car-1", "k2", Some(b"e2"))],
            audits: vec![audit("car-1", 1)],
            audit_next: 2,
            checkpoint: false,
        },
        Frame {
            seq: 2,
            records: vec![rec("car-1", b"two")],
            keys: vec![key("car-1", "k1", None)],
            audits: vec![],
            audit_next: 2,
            checkpoint: false,
        },
        Frame {
            seq: 3,
            records: vec![rec("car-1", b"three")],
            keys: vec![key("car-1", "k2", None), key("car-1", "k2", Some(b"e2b")), key("car-2", "k1", Some(b"x1"))],
            audits: vec![audit("car-2", 2), audit("car-1", 3)],
            audit_next: 4,
            checkpoint: false,
        },
        Frame { seq: 4, records: vec![], keys: vec![], audits: vec![], audit_next: 4, checkpoint: false },
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
    // Sealed: a 4-byte crc32, then the value.
    let sealed = |prefix: &str, value: &str| rows.iter().any(|r| r.starts_with(prefix) && r.ends_with(value));
    assert!(sealed(r#"vehicles "car-1" = ["#, ", 116, 104, 114, 101, 101]"), "{rows:#?}");
    assert!(sealed(r#"idempotency_keys ("car-1", "k2") = ["#, ", 101, 50, 98]"), "{rows:#?}");
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

/// Waits (bounded) until the store's health is `want`.
async fn health_becomes(store: &RedbStore, want: fn(&crate::store::StoreHealth) -> bool) {
    let mut health = store.health();
    tokio::time::timeout(Duration::from_secs(10), health.wait_for(want))
        .await
        .expect("health changes in time")
        .expect("store open");
}

#[tokio::test]
async fn a_save_the_disk_refuses_reloads_its_vehicle_and_writes_resume_by_themselves() {
    use crate::store::{DurableRows, Reload, StoreHealth};
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    let reloads: Arc<std::sync::Mutex<Vec<Reload>>> = Arc::default();
    let seen = reloads.clone();
    store.on_reload(Arc::new(move |r| seen.lock().unwrap().push(r)));
    let with_epoch = |bytes, key, epoch| RecordSave { epoch, ..record(bytes, &[(key, b"e")], &[]) };
    store.save("car-1".into(), with_epoch(b"one", "k1", 0), None).await.unwrap().unwrap();

    // The disk refuses the next append: the save is refused, nothing of it
    // stored, and the vehicle is handed back as it is durable.
    store.send(Op::FailAppends { count: 1, errno: libc::ENOSPC });
    let refused = store.save("car-1".into(), with_epoch(b"two", "k2", 0), None).await.unwrap();
    assert!(refused.unwrap_err().reason.contains("No space left"));
    assert!(matches!(*store.health().borrow(), StoreHealth::Degraded(_)));
    {
        let reloads = reloads.lock().unwrap();
        assert_eq!(reloads.len(), 1);
        assert_eq!((&*reloads[0].vehicle, reloads[0].valid_from), ("car-1", 1));
        let DurableRows::Known(Some(rows)) = &reloads[0].rows else { panic!("{:?}", reloads[0].rows) };
        assert_eq!(rows.record, Bytes::from_static(b"one"));
        assert_eq!(rows.keys.iter().map(|(k, _)| &**k).collect::<Vec<_>>(), ["k1"]);
    }
    // Degraded: everything is refused at once, and nothing is reloaded twice.
    assert!(store.save("car-2".into(), with_epoch(b"x", "k1", 0), None).await.unwrap().is_err());
    // Then a probe's checkpoint succeeds and the store is healthy again.
    health_becomes(&store, |h| *h == StoreHealth::Healthy).await;
    // A save made before the reload is refused; one made after is taken.
    let stale = store.save("car-1".into(), with_epoch(b"stale", "k3", 0), None).await.unwrap();
    assert!(stale.unwrap_err().reason.contains("refused"), "made before the reload");
    store.save("car-1".into(), with_epoch(b"three", "k4", 1), None).await.unwrap().unwrap();
    store.close();
    drop(store);
    let store = RedbStore::open(dir.path()).unwrap();
    let mut all = store.load_all().unwrap();
    all.sort_by(|a, b| a.vehicle.cmp(&b.vehicle));
    assert_eq!(all.len(), 1, "car-2's refused save left nothing: {all:?}");
    assert_eq!(all[0].record, Bytes::from_static(b"three"));
    let mut keys: Vec<&str> = all[0].keys.iter().map(|(k, _)| &**k).collect();
    keys.sort();
    assert_eq!(keys, ["k1", "k4"], "no key of a refused save");
}

#[tokio::test]
async fn an_io_error_that_may_not_pass_fails_the_store_for_good_and_still_reloads_the_vehicle() {
    use crate::store::{DurableRows, Reload, StoreHealth};
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    let reloads: Arc<std::sync::Mutex<Vec<Reload>>> = Arc::default();
    let seen = reloads.clone();
    store.on_reload(Arc::new(move |r| seen.lock().unwrap().push(r)));
    store.save("car-1".into(), record(b"one", &[], &[]), None).await.unwrap().unwrap();
    // EIO: after a failed write or fsync the kernel may have dropped the
    // data; retrying cannot be trusted.
    store.send(Op::FailAppends { count: 1, errno: libc::EIO });
    assert!(store.save("car-1".into(), record(b"two", &[], &[]), None).await.unwrap().is_err());
    assert!(matches!(*store.health().borrow(), StoreHealth::Failed(_)), "{:?}", *store.health().borrow());
    {
        let reloads = reloads.lock().unwrap();
        let DurableRows::Known(Some(rows)) = &reloads[0].rows else { panic!("{:?}", reloads[0].rows) };
        assert_eq!(rows.record, Bytes::from_static(b"one"), "memory goes back to the disk");
    }
    // Never retried: later saves (made after the reload) are refused too,
    // well past the degraded store's retry interval.
    let after = Instant::now() + super::writer::PROBE_EVERY * 3;
    while Instant::now() < after {
        let refused = store.save("car-1".into(), RecordSave { epoch: 1, ..record(b"three", &[], &[]) }, None);
        assert!(refused.await.unwrap().is_err());
        tokio::time::sleep(super::writer::PROBE_EVERY / 2).await;
    }
    assert!(matches!(*store.health().borrow(), StoreHealth::Failed(_)));
    store.close();
    drop(store);
    // What was acknowledged is kept.
    let store = RedbStore::open(dir.path()).unwrap();
    assert_eq!(store.load_all().unwrap()[0].record, Bytes::from_static(b"one"));
}
