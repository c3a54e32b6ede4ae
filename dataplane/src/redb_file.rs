//! Opening a redb file without letting a damaged one take the process down,
//! nor two processes share one: the durable shared dict store and the
//! last-config store both open through [`open_store`].
//!
//! What a file can be, and what happens (every case but the first two is
//! logged with the path and counted in `moongate_shared_dict_store_corrupt_total`):
//! - absent: created empty, silently;
//! - a good redb file: opened;
//! - empty (zero length, as a truncation or a full disk leaves it): redb
//!   would silently initialise it as a new database; it held no data, so it
//!   is started empty in place, but logged and counted like a corrupt file;
//! - corrupt, of another format or unreadable: moved aside to
//!   `<file>.corrupt-<unix-seconds>` (never overwritten) and replaced by a
//!   new empty file;
//! - open in another process (redb's file lock): [`HeldElsewhere`], for the
//!   caller to refuse to run on that data dir. Never touched.
//!
//! The values stored in these files are written with [`codec`]'s framing.

pub mod codec;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, DatabaseError};

/// A store file another process has open: another dataplane runs on the
/// same data dir. Two processes must never share the files (redb forbids
/// it), and falling back to memory would silently drop the durability the
/// config asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "another dataplane holds the data dir {}: {} is open in another process ({reason}); \
     each dataplane needs its own --data-dir",
    dir.display(),
    file.display()
)]
pub struct HeldElsewhere {
    pub dir: PathBuf,
    pub file: PathBuf,
    /// redb's error, as text: redb errors are not `Clone`.
    pub reason: String,
}

/// Opens (or creates) the redb file `path`, which holds the `what` (for log
/// lines), handling a bad file as the module header says. `Ok(None)`: no
/// usable file could be had (logged); the caller runs without persistence.
pub fn open_store(path: &Path, what: &str) -> Result<Option<Database>, HeldElsewhere> {
    // Looked at before redb opens (and initialises) it.
    let was_empty = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0);
    match open_db(path) {
        Ok(db) => {
            if was_empty {
                // We hold redb's lock now, so no other process was writing it.
                tracing::error!(file = %path.display(),
                    "the {what} is unusable: the file is empty (zero length), so it held no data; \
                     starting with an empty store in its place");
                crate::metrics::durable_store_corrupt();
            }
            Ok(Some(db))
        }
        Err(OpenError::InUse(e)) => {
            let held = HeldElsewhere {
                dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
                file: path.to_path_buf(),
                reason: e.to_string(),
            };
            tracing::error!("{held}");
            Err(held)
        }
        Err(OpenError::Bad(e)) => {
            tracing::error!(file = %path.display(), error = %e,
                "the {what} is corrupt or unreadable; moving it aside and starting with an empty store");
            crate::metrics::durable_store_corrupt();
            Ok(replace_bad_file(path, what))
        }
    }
}

/// redb's page cache. Reads happen once at start; writes are small. redb's
/// default (1 GiB) is far more than this needs.
const CACHE_BYTES: usize = 16 << 20;

enum OpenError {
    /// Another process holds the file: not ours to touch.
    InUse(DatabaseError),
    /// Corrupt, unreadable or of an unknown format.
    Bad(String),
}

fn open_db(path: &Path) -> Result<Database, OpenError> {
    // redb documents that opening a file damaged outside redb may panic
    // unless the integrity check runs, and its debug builds assert on some
    // corruption; contain both rather than crash-looping on a bad file.
    let opened = catch_unwind(AssertUnwindSafe(|| {
        Database::builder()
            .set_check_integrity_on_open(true)
            .set_cache_size(CACHE_BYTES)
            .create(path)
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e @ (DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch))) => {
            Err(OpenError::InUse(e))
        }
        Ok(Err(e)) => Err(OpenError::Bad(e.to_string())),
        Err(_) => Err(OpenError::Bad("redb panicked while opening the file".to_string())),
    }
}

/// Renames the bad file aside and opens a new one in its place.
fn replace_bad_file(path: &Path, what: &str) -> Option<Database> {
    let aside = aside_path(path);
    if let Err(e) = std::fs::rename(path, &aside) {
        tracing::error!(file = %path.display(), error = %e,
            "cannot move the bad {what} aside");
        return None;
    }
    tracing::error!(file = %path.display(), moved_to = %aside.display(), "bad {what} moved aside");
    match open_db(path) {
        Ok(db) => Some(db),
        Err(OpenError::InUse(e)) => {
            tracing::error!(file = %path.display(), error = %e, "cannot create a new {what}");
            None
        }
        Err(OpenError::Bad(e)) => {
            tracing::error!(file = %path.display(), error = %e, "cannot create a new {what}");
            None
        }
    }
}

/// `<file>.corrupt-<unix-seconds>`, with `-N` added if that exists already,
/// so an earlier bad file is never overwritten.
fn aside_path(path: &Path) -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Appended to the OS string, so a non-UTF-8 path keeps its bytes.
    let with_suffix = |suffix: String| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let mut candidate = with_suffix(format!(".corrupt-{secs}"));
    let mut n = 1u32;
    while candidate.exists() && n < u32::MAX {
        candidate = with_suffix(format!(".corrupt-{secs}-{n}"));
        n += 1;
    }
    candidate
}
