//! Opening a redb file without letting a damaged one take the process down:
//! the durable shared dict store and the last-config store both use this.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, DatabaseError};

/// redb's page cache. Reads happen once at start; writes are small. redb's
/// default (1 GiB) is far more than this needs.
const CACHE_BYTES: usize = 16 << 20;

pub enum OpenError {
    /// Another process holds the file: not ours to touch.
    InUse(DatabaseError),
    /// Corrupt, unreadable or of an unknown format.
    Bad(String),
}

pub fn open_db(path: &Path) -> Result<Database, OpenError> {
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
pub fn replace_bad_file(path: &Path, what: &str) -> Option<Database> {
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
