//! The last snapshot this dataplane applied, kept in `<data-dir>/config.redb`,
//! so a restart while the controller is unreachable serves the last good
//! config instead of nothing.
//!
//! Written after every applied version (one small transaction; versions are
//! debounced upstream). A file that is corrupt or holds an undecodable
//! snapshot is reported and set aside, and the dataplane starts empty.

use std::path::{Path, PathBuf};

use moongate_proto::v1 as pb;
use prost::Message;
use redb::{Database, ReadableDatabase, TableDefinition};

use crate::redb_file::{OpenError, open_db, replace_bad_file};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("config");
const KEY: &str = "last_applied";
pub const FILE_NAME: &str = "config.redb";

pub struct SnapshotStore {
    db: Database,
    path: PathBuf,
}

impl SnapshotStore {
    /// Opens (or creates) the store in `dir`; `None` when it cannot be used
    /// (logged), in which case the dataplane runs without persistence.
    pub fn open(dir: &Path) -> Option<SnapshotStore> {
        let path = dir.join(FILE_NAME);
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::error!(dir = %dir.display(), error = %e, "cannot create the data dir; the last config will not be persisted");
            return None;
        }
        let db = match open_db(&path) {
            Ok(db) => db,
            Err(OpenError::InUse(e)) => {
                tracing::error!(file = %path.display(), error = %e, "the config store is in use by another process; not persisting");
                return None;
            }
            Err(OpenError::Bad(e)) => {
                tracing::error!(file = %path.display(), error = %e, "the config store is corrupt; moving it aside");
                replace_bad_file(&path, "config store")?
            }
        };
        Some(SnapshotStore { db, path })
    }

    /// The last applied snapshot, if one was saved and still decodes.
    pub fn load(&self) -> Option<pb::Snapshot> {
        let read = || -> Result<Option<Vec<u8>>, redb::Error> {
            let tx = self.db.begin_read()?;
            let table = match tx.open_table(TABLE) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            Ok(table.get(KEY)?.map(|v| v.value().to_vec()))
        };
        let bytes = match read() {
            Ok(bytes) => bytes?,
            Err(e) => {
                tracing::error!(file = %self.path.display(), error = %e, "cannot read the last config");
                return None;
            }
        };
        match pb::Snapshot::decode(bytes.as_slice()) {
            Ok(snapshot) => Some(snapshot),
            Err(e) => {
                tracing::error!(file = %self.path.display(), error = %e, "the stored config does not decode; ignoring it");
                None
            }
        }
    }

    pub fn save(&self, snapshot: &pb::Snapshot) -> Result<(), redb::Error> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(TABLE)?;
            table.insert(KEY, snapshot.encode_to_vec().as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_snapshot_comes_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = moongate_controller::snapshot::build(
            vec![pb::Route {
                namespace: "ns".into(),
                name: "r".into(),
                generation: 3,
                ..Default::default()
            }],
            42,
        );
        SnapshotStore::open(dir.path()).unwrap().save(&snapshot).unwrap();
        let restored = SnapshotStore::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(restored, snapshot);
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_the_store_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            b"not a redb file at all, just garbage bytes",
        )
        .unwrap();
        let store = SnapshotStore::open(dir.path()).expect("a fresh store replaces the corrupt one");
        assert!(store.load().is_none());
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("config.redb.corrupt-"));
        assert!(aside, "the corrupt file must be kept for inspection");
    }
}
