//! The embedded default store: redb in the data directory, written by one
//! thread that commits batches (group commit, `Durability::Immediate`), so a
//! write is acknowledged only once it is on disk, and a burst of writes costs
//! one fsync.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use bytes::Bytes;
use tokio::sync::oneshot;

use super::{Durable, Store, StoreError};

const VEHICLES: TableDefinition<&str, &[u8]> = TableDefinition::new("vehicles");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Most saves folded into one commit.
const MAX_BATCH: usize = 4096;

struct Save {
    vehicle: Arc<str>,
    record: Bytes,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// redb-backed [`Store`].
pub struct RedbStore {
    db: Arc<Database>,
    tx: Mutex<Option<mpsc::Sender<Save>>>,
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
    /// Opens (or creates) `dir/tether.redb` and starts the writer thread.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join("tether.redb");
        let db = Database::create(&path).map_err(|e| err(format!("opening {}: {e}", path.display())))?;
        let epoch = {
            let txn = db.begin_write().map_err(err)?;
            let epoch = {
                let mut meta = txn.open_table(META).map_err(err)?;
                let epoch = meta.get("boot_epoch").map_err(err)?.map_or(0, |v| v.value()) + 1;
                meta.insert("boot_epoch", epoch).map_err(err)?;
                txn.open_table(VEHICLES).map_err(err)?;
                epoch
            };
            txn.commit().map_err(err)?;
            u32::try_from(epoch).map_err(|_| err("boot epoch overflow"))?
        };
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("tether-store".into())
            .spawn(move || writer_loop(&writer_db, &rx))
            .map_err(err)?;
        Ok(RedbStore { db, tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)), epoch })
    }
}

fn writer_loop(db: &Database, rx: &mpsc::Receiver<Save>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(save) => batch.push(save),
                Err(_) => break,
            }
        }
        // Latest save of a vehicle wins within the batch.
        let mut latest: HashMap<&str, &Bytes> = HashMap::with_capacity(batch.len());
        for save in &batch {
            latest.insert(&save.vehicle, &save.record);
        }
        let result = commit(db, &latest);
        if let Err(e) = &result {
            tracing::error!(error = %e, saves = batch.len(), "store commit failed");
        }
        for save in batch {
            let _ = save.done.send(result.clone());
        }
    }
}

fn commit(db: &Database, records: &HashMap<&str, &Bytes>) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(err)?;
    {
        let mut table = txn.open_table(VEHICLES).map_err(err)?;
        for (vehicle, record) in records {
            table.insert(*vehicle, record.as_ref()).map_err(err)?;
        }
    }
    txn.commit().map_err(err)
}

impl Store for RedbStore {
    fn load_all(&self) -> Result<Vec<(Arc<str>, Bytes)>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(VEHICLES).map_err(err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            out.push((Arc::from(k.value()), Bytes::copy_from_slice(v.value())));
        }
        Ok(out)
    }

    fn save(&self, vehicle: Arc<str>, record: Bytes) -> Durable {
        let (done, durable) = oneshot::channel();
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(tx) => {
                if let Err(mpsc::SendError(save)) = tx.send(Save { vehicle, record, done }) {
                    let _ = save.done.send(Err(err("the store writer stopped")));
                }
            }
            None => {
                let _ = done.send(Err(err("the store is closed")));
            }
        }
        durable
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
        let a = store.save("car-1".into(), Bytes::from_static(b"one"));
        let b = store.save("car-1".into(), Bytes::from_static(b"two"));
        let c = store.save("car-2".into(), Bytes::from_static(b"x"));
        for d in [a, b, c] {
            d.await.unwrap().unwrap();
        }
        store.close();
        assert!(store.save("car-3".into(), Bytes::new()).await.unwrap().is_err());
        drop(store);
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.boot_epoch(), 2);
        let mut all = store.load_all().unwrap();
        all.sort();
        assert_eq!(all, vec![("car-1".into(), Bytes::from_static(b"two")), ("car-2".into(), Bytes::from_static(b"x"))]);
    }
}
