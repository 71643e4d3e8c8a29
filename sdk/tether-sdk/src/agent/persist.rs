//! Persistence of the agent's last handled generation, so that a restarted
//! agent never applies a field twice: `<state_dir>/<vehicle_id>.generation`,
//! written atomically (temporary file, fsync, rename, fsync of the directory).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Why the generation could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PersistError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The file holds something other than a generation.
    #[error("{path} does not hold a generation: {content:?}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What it holds (at most 64 bytes of it).
        content: String,
    },
}

/// The generation file of one vehicle.
#[derive(Debug, Clone)]
pub(crate) struct GenerationStore {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
}

impl GenerationStore {
    /// The store of `vehicle_id` (a checked id: no path separators) in `dir`.
    pub(crate) fn new(dir: PathBuf, vehicle_id: &str) -> Self {
        let path = dir.join(format!("{vehicle_id}.generation"));
        let tmp = dir.join(format!("{vehicle_id}.generation.tmp"));
        GenerationStore { dir, path, tmp }
    }

    /// The stored generation; 0 if none was ever stored.
    pub(crate) fn load(&self) -> Result<u64, PersistError> {
        let content = match fs::read_to_string(&self.path) {
            Ok(content) => content,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(source) => return Err(PersistError::Io { path: self.path.clone(), source }),
        };
        content
            .trim()
            .parse()
            .map_err(|_| PersistError::Corrupt { path: self.path.clone(), content: content.chars().take(64).collect() })
    }

    /// Stores `generation` durably: after this returns, a crash leaves either
    /// the old value or this one, never a torn file.
    pub(crate) fn store(&self, generation: u64) -> Result<(), PersistError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PersistError::Io { path, source }
        };
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let mut file = File::create(&self.tmp).map_err(io_err(&self.tmp))?;
        writeln!(file, "{generation}").map_err(io_err(&self.tmp))?;
        file.sync_all().map_err(io_err(&self.tmp))?;
        drop(file);
        fs::rename(&self.tmp, &self.path).map_err(io_err(&self.path))?;
        // Make the rename itself durable.
        File::open(&self.dir).and_then(|dir| dir.sync_all()).map_err(io_err(&self.dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_survives_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = GenerationStore::new(dir.path().join("nested"), "car-1");
        assert_eq!(store.load().unwrap(), 0);
        store.store(41).unwrap();
        store.store(42).unwrap();
        assert_eq!(store.load().unwrap(), 42);
        // A new store over the same directory (a restarted agent) reads it.
        assert_eq!(GenerationStore::new(dir.path().join("nested"), "car-1").load().unwrap(), 42);
        // Vehicles do not share a file; no temporary file is left behind.
        assert_eq!(GenerationStore::new(dir.path().join("nested"), "car-2").load().unwrap(), 0);
        let names: Vec<_> = fs::read_dir(dir.path().join("nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["car-1.generation"]);
    }

    #[test]
    fn a_corrupt_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("car-1.generation"), "forty-two").unwrap();
        let err = GenerationStore::new(dir.path().into(), "car-1").load().unwrap_err();
        assert!(matches!(err, PersistError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("forty-two"));
    }
}
