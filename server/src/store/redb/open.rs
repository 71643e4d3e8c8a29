//! Opening the redb store's files: the database, checked page by page (redb
//! verifies every page's checksum on open, so a file changed outside redb is
//! an error, not a panic or silent data), and the write-ahead log, replayed
//! only when nothing acknowledged would be lost. A log damaged before its
//! end, a gap in its sequence, or a database older than the log says it
//! was, stops the start with one line; `--recover-damaged-store` accepts the
//! loss, says how much, and moves the damaged log aside instead.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ::redb::{Database, ReadableTable};

use super::rows::{self, AUDIT, AUDIT_AGE, AUDIT_SEQ, BOOT_EPOCH, KEYS, META, QUARANTINE, VEHICLES, WAL_SEQ};
use super::{Fail, OpenOptions, transient_io};
use crate::store::wal::{Frame, Scan, Wal};

/// Runs `f`, turning a panic inside it (redb's, on a file it cannot make
/// sense of) into an error naming `what`.
pub(super) fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T, Fail>) -> Result<T, Fail> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(Fail::permanent(format!("{what}: the storage engine failed on this file ({message}); it is damaged")))
        }
    }
}

/// Opens (or creates) the database file, verifying every page.
pub(super) fn open_database(path: &Path) -> Result<Database, Fail> {
    no_panic(&format!("opening {}", path.display()), || {
        let mut builder = Database::builder();
        builder.set_check_integrity_on_open(true);
        builder.create(path).map_err(|e| {
            let fail = Fail::from(e);
            let advice = if fail.transient {
                "the disk is full"
            } else {
                "the database file is damaged or unreadable; keep a copy of the data directory and restore it \
                 from a backup"
            };
            fail.doing(&format!("opening {} ({advice})", path.display()))
        })
    })
}

/// What recovery found and set.
#[derive(Debug)]
pub(super) struct Recovered {
    pub epoch: u32,
    pub audit_seq: u64,
    pub wal_seq: u64,
}

/// Replays the log into the database in one durable commit (with the boot
/// epoch raised when `new_boot`), then empties the log, or moves it aside
/// when recovery dropped part of it. Refuses, changing nothing, when the log
/// or the database lost acknowledged commits and `options` does not accept
/// the loss.
pub(super) fn recover(
    db: &Database,
    wal: &mut Wal,
    scan: &Scan,
    wal_path: &Path,
    options: OpenOptions,
    new_boot: bool,
) -> Result<Recovered, Fail> {
    let txn = db.begin_write()?;
    let checkpointed = {
        let meta = txn.open_table(META)?;
        meta.get(WAL_SEQ)?.map_or(0, |v| v.value())
    };
    let plan = plan(scan, checkpointed);
    if let Some(loss) = &plan.loss {
        let what = format!("{}: {loss}", wal_path.display());
        if !options.recover_damaged_store {
            return Err(Fail::permanent(format!(
                "{what}. tetherd will not start and lose acknowledged writes: keep a copy of the data directory; \
                 to start anyway, dropping them, run once with --recover-damaged-store"
            )));
        }
        tracing::error!(
            log = %wal_path.display(),
            dropped_commits = plan.dropped,
            "{what}; --recover-damaged-store: dropping {} acknowledged commit(s) and moving the log aside",
            plan.dropped
        );
    } else if let Some(damage) = scan.damage.as_ref().filter(|d| d.until == scan.len) {
        // Nothing intact after it: a frame whose write a crash cut short,
        // never acknowledged.
        tracing::warn!(
            log = %wal_path.display(),
            offset = damage.offset,
            bytes = scan.len - damage.offset,
            "the write-ahead log ends with {} (a crash during a write); dropped",
            damage.what
        );
    } else if let Some(damage) = &scan.damage {
        // Intact frames after it, yet no commit missing: damaged bytes that
        // held none of the commits above the checkpoint. Nothing is lost, but
        // the file is kept for whoever looks into why.
        tracing::error!(
            log = %wal_path.display(),
            offset = damage.offset,
            "the write-ahead log is damaged at byte {} ({}), where it held no commit above the last checkpoint: \
             nothing acknowledged is lost; the log is moved aside",
            damage.offset,
            damage.what
        );
    }
    let set_damaged_log_aside = plan.loss.is_some() || scan.damage.as_ref().is_some_and(|d| d.until < scan.len);
    rows::seal_old_rows(&txn)?;
    rows::apply(&txn, &plan.replay)?;
    let wal_seq = plan.replay.last().map_or(checkpointed, |f| f.seq);
    if wal_seq > checkpointed {
        tracing::info!(commits = wal_seq - checkpointed, "replayed the write-ahead log");
    }
    let (epoch, audit_seq) = {
        let mut meta = txn.open_table(META)?;
        let mut epoch = meta.get(BOOT_EPOCH)?.map_or(0, |v| v.value());
        if new_boot {
            epoch += 1;
            meta.insert(BOOT_EPOCH, epoch)?;
        }
        let audit_seq = meta.get(AUDIT_SEQ)?.map_or(1, |v| v.value());
        txn.open_table(VEHICLES)?;
        txn.open_table(KEYS)?;
        txn.open_table(AUDIT)?;
        txn.open_table(AUDIT_AGE)?;
        txn.open_table(QUARANTINE)?;
        (epoch, audit_seq)
    };
    txn.commit()?;
    if set_damaged_log_aside {
        let aside = set_aside(wal_path);
        std::fs::rename(wal_path, &aside)
            .map_err(|e| io_fail(e, &format!("moving {} aside to {}", wal_path.display(), aside.display())))?;
        tracing::error!(log = %aside.display(), "the damaged write-ahead log is kept here");
        *wal = Wal::open(wal_path).map_err(|e| io_fail(e, &format!("opening {}", wal_path.display())))?.0;
    }
    wal.reset(wal_seq).map_err(|e| io_fail(e, &format!("emptying {}", wal_path.display())))?;
    Ok(Recovered {
        epoch: u32::try_from(epoch).map_err(|_| Fail::permanent("boot epoch overflow"))?,
        audit_seq,
        wal_seq,
    })
}

/// An I/O failure while doing `what`, transient when the disk is full.
pub(super) fn io_fail(e: std::io::Error, what: &str) -> Fail {
    Fail { msg: format!("{what}: {e}"), transient: transient_io(&e) }
}

/// Where a damaged log is moved: beside it, named by the time.
fn set_aside(wal_path: &Path) -> PathBuf {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut name = wal_path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".damaged-{secs}"));
    wal_path.with_file_name(name)
}

/// What to replay of a log, and what is lost if anything acknowledged is.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// The frames to apply, in order: those above the checkpoint, from one
    /// above it, as long as they follow one another and come before any
    /// damage.
    pub replay: Vec<Frame>,
    /// What lost acknowledged commits, if anything did.
    pub loss: Option<String>,
    /// How many acknowledged commits are not replayed: from the first lost
    /// up to the last found.
    pub dropped: usize,
}

/// Decides what of `scan` to replay over a database holding every commit up
/// to `checkpointed`. Frames are written in sequence, so the intact frames
/// above the checkpoint must be exactly the next commits, in file order: a
/// damaged frame among them, a damaged first frame, or a gap shows as a
/// missing commit with acknowledged ones after it, which is a loss; so is a
/// checkpoint marker saying the database once held more than it does.
/// Damage with nothing intact after it is a torn last write, never
/// acknowledged.
pub(super) fn plan(scan: &Scan, checkpointed: u64) -> Plan {
    let mut plan = Plan::default();
    // What the last checkpoint made durable, as the log's marker says (0:
    // no marker).
    let marker = scan.frames.first().filter(|(at, f)| *at == 0 && f.checkpoint).map_or(0, |(_, f)| f.seq);
    if marker > checkpointed {
        plan.loss = Some(format!(
            "the log says a checkpoint made every commit up to {marker} durable in tether.redb, which holds only up \
             to {checkpointed}: the database file went back in time (restored from an older copy, or repaired after \
             damage), and commits {}..={marker} are lost",
            checkpointed + 1,
        ));
    }
    let above: Vec<&(u64, Frame)> = scan.frames.iter().filter(|(_, f)| f.seq > checkpointed && !f.checkpoint).collect();
    let mut next = checkpointed + 1;
    for (at, frame) in &above {
        if frame.seq != next {
            let after = above.len() - plan.replay.len();
            plan.loss.get_or_insert(match scan.damage.as_ref().filter(|d| d.offset < *at) {
                Some(damage) => format!(
                    "it is damaged at byte {} ({}): commit {next} is lost, and {after} acknowledged commit(s) \
                     follow the damage (from commit {})",
                    damage.offset, damage.what, frame.seq
                ),
                None => {
                    format!("commit {next} is missing from it (the next commit found is {}, at byte {at})", frame.seq)
                }
            });
            break;
        }
        plan.replay.push(frame.clone());
        next += 1;
    }
    // Commits lost: every one from the first not replayed up to the last
    // found (the damaged or missing ones with the intact ones after them).
    let last_found = above.iter().map(|(_, f)| f.seq).chain([marker, checkpointed]).max().unwrap_or(checkpointed);
    plan.dropped = usize::try_from(last_found.saturating_sub(next - 1)).unwrap_or(usize::MAX);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::wal::Damage;

    fn frame(seq: u64) -> Frame {
        Frame { seq, ..Frame::default() }
    }

    fn scan(frames: &[(u64, u64)], damage: Option<u64>) -> Scan {
        Scan {
            frames: frames.iter().map(|&(at, seq)| (at, frame(seq))).collect(),
            damage: damage.map(|offset| Damage { offset, until: offset + 10, what: "a frame cut short" }),
            len: 1000,
        }
    }

    fn seqs(plan: &Plan) -> Vec<u64> {
        plan.replay.iter().map(|f| f.seq).collect()
    }

    #[test]
    fn a_torn_last_frame_loses_nothing_acknowledged() {
        let plan = plan(&scan(&[(0, 4), (100, 5), (200, 6)], Some(300)), 4);
        assert_eq!(seqs(&plan), [5, 6]);
        assert!(plan.loss.is_none() && plan.dropped == 0);
    }

    #[test]
    fn damage_with_acknowledged_frames_after_it_is_a_loss() {
        let middle = plan(&scan(&[(0, 5), (200, 7), (300, 8)], Some(100)), 4);
        assert_eq!(seqs(&middle), [5], "replays up to the damage");
        assert!(middle.loss.as_deref().unwrap().contains("2 acknowledged commit(s) follow"), "{:?}", middle.loss);
        assert_eq!(middle.dropped, 3, "6 (damaged), 7 and 8");
        // A damaged first frame with valid ones after it.
        let first = plan(&scan(&[(100, 6), (200, 7)], Some(0)), 4);
        assert!(first.replay.is_empty() && first.dropped == 3 && first.loss.is_some(), "{first:?}");
    }

    #[test]
    fn a_gap_in_the_sequence_is_a_loss_and_old_frames_are_not() {
        let gap = plan(&scan(&[(0, 5), (100, 7)], None), 4);
        assert_eq!(seqs(&gap), [5]);
        assert!(gap.loss.as_deref().unwrap().contains("commit 6 is missing"), "{:?}", gap.loss);
        // Frames at or below the checkpoint (a log not emptied after it), and
        // damage among them only, lose nothing.
        let old = plan(&scan(&[(0, 3), (200, 4), (300, 5)], Some(100)), 4);
        assert_eq!(seqs(&old), [5]);
        assert!(old.loss.is_none(), "{:?}", old.loss);
    }

    #[test]
    fn a_database_older_than_the_logs_checkpoint_marker_is_a_loss() {
        let mut marked = scan(&[(0, 9), (100, 10)], None);
        marked.frames[0].1.checkpoint = true;
        let behind = plan(&marked, 4);
        assert!(behind.loss.as_deref().unwrap().contains("went back in time"), "{:?}", behind.loss);
        let level = plan(&marked, 9);
        assert_eq!(seqs(&level), [10]);
        assert!(level.loss.is_none());
    }
}
