//! The last snapshot this dataplane applied, kept in `<data-dir>/config.redb`,
//! so a restart while the controller is unreachable serves the last good
//! config instead of nothing.
//!
//! Written after every applied version (one small transaction; versions are
//! debounced upstream). A file that is corrupt, empty or unreadable is
//! handled by `redb_file::open_store` (logged, counted, set aside or started
//! empty); an undecodable snapshot is reported and ignored. A file open in
//! another process (another dataplane on this data dir) is an error: the
//! dataplane refuses to start rather than run without persistence.

use std::path::{Path, PathBuf};

use moongate_proto::v1 as pb;
use prost::Message;
use redb::{Database, ReadableDatabase, TableDefinition};

use crate::redb_file::codec::{self, DecodeError};
use crate::redb_file::{HeldElsewhere, open_store};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("config");
const KEY: &str = "last_applied";
pub const FILE_NAME: &str = "config.redb";

/// The stored record: the snapshot's protobuf encoding, unframed as every
/// release wrote it (protobuf frames and evolves its own fields, so a version
/// byte would add nothing but a break with the files already written).
const RECORD: &str = "stored config snapshot";

fn encode(snapshot: &pb::Snapshot) -> Vec<u8> {
    snapshot.encode_to_vec()
}

fn decode(bytes: &[u8]) -> Result<pb::Snapshot, DecodeError> {
    codec::decode_protobuf(RECORD, bytes)
}

pub struct SnapshotStore {
    db: Database,
    path: PathBuf,
}

impl SnapshotStore {
    /// Opens (or creates) the store in `dir`; `Ok(None)` when it cannot be
    /// used (logged), in which case the dataplane runs without persistence;
    /// an error when another process holds it.
    pub fn open(dir: &Path) -> Result<Option<SnapshotStore>, HeldElsewhere> {
        let path = dir.join(FILE_NAME);
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::error!(dir = %dir.display(), error = %e, "cannot create the data dir; the last config will not be persisted");
            return Ok(None);
        }
        Ok(open_store(&path, "config store")?.map(|db| SnapshotStore { db, path }))
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
        match decode(&bytes) {
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
            table.insert(KEY, encode(snapshot).as_slice())?;
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
        let snapshot = moongate_proto::snapshot::build(
            vec![pb::Route {
                namespace: "ns".into(),
                name: "r".into(),
                generation: 3,
                ..Default::default()
            }],
            Vec::new(),
            Vec::new(),
            42,
        );
        let open = || SnapshotStore::open(dir.path()).unwrap().unwrap();
        open().save(&snapshot).unwrap();
        let restored = open().load().unwrap();
        assert_eq!(restored, snapshot);
    }

    /// The stored value is the snapshot's plain protobuf encoding, as every
    /// release wrote it: files written before still load, and this one's
    /// load in them.
    #[test]
    fn the_stored_bytes_are_the_plain_protobuf_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = moongate_proto::snapshot::build(
            vec![pb::Route {
                namespace: "ns".into(),
                name: "r".into(),
                ..Default::default()
            }],
            Vec::new(),
            Vec::new(),
            7,
        );
        let store = SnapshotStore::open(dir.path()).unwrap().unwrap();
        store.save(&snapshot).unwrap();
        let raw = {
            let tx = store.db.begin_read().unwrap();
            let table = tx.open_table(TABLE).unwrap();
            table.get(KEY).unwrap().unwrap().value().to_vec()
        };
        assert_eq!(raw, snapshot.encode_to_vec());
        let tx = store.db.begin_write().unwrap();
        tx.open_table(TABLE)
            .unwrap()
            .insert(KEY, b"\x08\x03".as_slice())
            .unwrap();
        tx.commit().unwrap();
        assert_eq!(store.load().map(|s| s.version), Some(3));
    }

    #[test]
    fn a_stored_snapshot_that_does_not_decode_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap().unwrap();
        let tx = store.db.begin_write().unwrap();
        tx.open_table(TABLE)
            .unwrap()
            .insert(KEY, b"\xff\xff".as_slice())
            .unwrap();
        tx.commit().unwrap();
        assert!(store.load().is_none());
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_the_store_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            b"not a redb file at all, just garbage bytes",
        )
        .unwrap();
        let store = SnapshotStore::open(dir.path())
            .unwrap()
            .expect("a fresh store replaces the corrupt one");
        assert!(store.load().is_none());
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("config.redb.corrupt-"));
        assert!(aside, "the corrupt file must be kept for inspection");
    }

    #[test]
    fn an_empty_file_is_counted_and_the_store_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"").unwrap();
        let before = crate::metrics::durable_store_corrupt_count();
        let store = SnapshotStore::open(dir.path()).unwrap().expect("usable");
        assert!(store.load().is_none());
        assert!(crate::metrics::durable_store_corrupt_count() > before);
        // And it works as a store from now on.
        store.save(&pb::Snapshot::default()).unwrap();
        drop(store);
        assert!(SnapshotStore::open(dir.path()).unwrap().unwrap().load().is_some());
    }

    #[test]
    fn a_file_open_elsewhere_is_an_error_naming_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SnapshotStore::open(dir.path()).unwrap().unwrap();
        let err = SnapshotStore::open(dir.path()).err().expect("refused");
        let text = err.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains("another dataplane holds the data dir"), "{text}");
    }
}
