//! Durable shared dicts (`persistence: Durable`): write-behind to redb in
//! group commits.
//!
//! In: dicts declared durable (`DictStore::declare`), and the keys their
//! operations change (the journal of `Entries`). Out: one redb file,
//! `<data-dir>/shared_dicts.redb`, with a table `"<namespace>/<dict>"` per
//! dict whose rows are dict key → `record` bytes, plus `moongate.meta` (the
//! cut of the last commit) and `moongate.timers`; and, at start, dicts
//! restored from it.
//!
//! **Write-behind.** An operation changes the in-memory dict at once and only
//! adds the key to the dict's journal (a `HashSet` under the lock it already
//! holds): no disk I/O, no syscall and no waiting on the request path. A
//! background OS thread (`shdict-commit`) wakes every commit window (default
//! [`DEFAULT_COMMIT_WINDOW`], 10 ms), takes every dict's journal, reads the
//! current value of each changed key (in chunks, so a dict's lock is never
//! held for long), and writes them all in one redb transaction that is
//! fsynced on commit (`Durability::Immediate`). A key written many times in a
//! window — a counter — is written once.
//!
//! **Guarantee, stated in commits.** Every change of durable state (a dict
//! operation that changed a key, a durable timer created or completed) takes
//! a sequence number under the lock that journaled it, and each round's
//! transaction stores the round's cut and, once fsynced, publishes it as the
//! committed watermark (`seq`, which proves the invariant): **an
//! acknowledged write is lost in a crash (process or machine) only if it was
//! not yet in a completed commit**, i.e. its number is above the watermark
//! the file holds. Rounds start every window, or right after the previous one
//! when a commit takes longer than the window or a sync write is waiting, so
//! the watermark trails the writes by about a window and one fsync; that is
//! a typical figure, not a promise, and a write that must not be lost waits
//! for its commit (`d:set(..., {sync = true})`, `SyncTicket`). A failed
//! commit (disk full, I/O error) is logged, fails the sync writes it covered,
//! and its keys go back in the journal, to be retried next round; the dicts
//! keep serving from memory meanwhile.
//!
//! **One file for all dicts**, not a file per dict: a round is one
//! transaction and one fsync however many dicts changed, so the guarantee
//! above holds for every dict and does not degrade with their number, and a
//! round is atomic across dicts. The price is the blast radius of a corrupt
//! file: every durable dict then starts empty (redb itself is crash-safe, so
//! only damage from outside does that).
//!
//! **Restore.** The file is opened at the first durable declaration (so a
//! dataplane with only memory dicts never creates it), or at start when it
//! exists already (`DictStore::open_existing`), with redb's integrity
//! check, so corruption shows at open rather than mid-serving. The cut of
//! the last commit is read back and numbering continues after it. Entries
//! keep their flags, value types and absolute expiry times; those that
//! expired while the process was down are dropped (and deleted from disk,
//! unnumbered: that is nobody's write). A file
//! that is corrupt, empty (zero length) or unreadable is handled by
//! `redb_file::open_store`: logged, counted, moved aside or started empty;
//! if even that fails, durable dicts run in memory only for this process.
//! None of this ever panics or exits, so a bad file cannot cause a crash
//! loop. A file held by another process (a second dataplane on the same data
//! dir) is left alone and is an error ([`HeldElsewhere`]): at start the
//! dataplane exits with it, and a config declaring a durable dict is refused
//! with it; durable dicts never silently fall back to memory for that.
//!
//! **Durable timers** (`crate::durable_timer`) live in the same file, in the
//! table [`TIMERS_TABLE`] (timer id → record bytes, opaque here). Their
//! inserts and deletes are queued in the commit thread's inbox and written
//! in the same round transaction as the dicts: one file, one fsync per
//! window. The last operation queued for an id wins, so a timer created and
//! completed within one window costs nothing on disk. Each queued operation
//! takes a sequence number under the inbox lock, which the round's cut is
//! read under too, so a timer change is in a commit exactly when the
//! commit's cut covers its number (no riding along, unlike dict values). The
//! rows found at open are kept for the workers to take
//! (`take_restored_timers`) when they re-arm.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::redb_file::codec::{DecodeError, Reader, Writer};
use crate::redb_file::{HeldElsewhere, open_store};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::entries::{Stored, expired_for_eviction};
use super::seq::Sequencer;
use super::{Dict, DictError, entry_cost, list_entry_cost, list_node_cost, record};

mod commit;
#[cfg(test)]
pub(super) use commit::commit_round;
use commit::{Committer, Shared, lock_inbox};

/// The commit window used when none is configured.
pub const DEFAULT_COMMIT_WINDOW: Duration = Duration::from_millis(10);

/// The file's name inside the data dir.
pub const FILE_NAME: &str = "shared_dicts.redb";

/// Keys encoded per lock acquisition while committing, so a large burst of
/// changes never holds a dict's lock (and so the workers) for long.
const SNAPSHOT_CHUNK: usize = 256;

/// The table of durable timers: timer id → timer record bytes. Dict tables
/// are named `"<namespace>/<dict>"`, always with a slash, so this name never
/// collides with one.
pub const TIMERS_TABLE: &str = "moongate.timers";

/// Bookkeeping of the store itself: [`COMMITTED_SEQ_KEY`] → u64 (LE), the cut
/// of the last completed commit. Named like `TIMERS_TABLE`, without a slash.
const META_TABLE: &str = "moongate.meta";
const COMMITTED_SEQ_KEY: &[u8] = b"committed_seq";

/// A queued timer change: the record to store, or None to delete it.
pub type TimerOp = Option<Vec<u8>>;

/// The table of one dict: dict key → `record` bytes.
fn table(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

/// The durable half of a `DictStore`: the file, opened lazily, and the
/// commit thread.
#[derive(Debug)]
pub(super) struct DurableStore {
    path: PathBuf,
    window: Duration,
    state: Mutex<State>,
    /// Timer rows found in the file when it was opened, not yet taken.
    restored_timers: Mutex<Vec<Row>>,
    /// What the commit thread shares with the writers; created up front so
    /// the sequencer can wake the thread.
    shared: Arc<Shared>,
    seq: Arc<Sequencer>,
}

#[derive(Debug)]
enum State {
    /// No durable dict declared yet.
    Unopened,
    /// The file is open and the commit thread runs.
    Open(Arc<Database>, Committer),
    /// The file could not be used (logged); durable dicts stay in memory.
    Unavailable,
    /// `close` ran; later durable declarations stay in memory.
    Closed,
}

impl DurableStore {
    pub fn new(dir: &Path, window: Duration) -> DurableStore {
        let shared = Arc::new(Shared::default());
        let seq = Arc::new(Sequencer::new({
            let shared = shared.clone();
            move || {
                lock_inbox(&shared).sync_wanted = true;
                shared.wake.notify_all();
            }
        }));
        DurableStore {
            path: dir.join(FILE_NAME),
            // A zero window would spin the commit thread.
            window: window.max(Duration::from_millis(1)),
            state: Mutex::new(State::Unopened),
            restored_timers: Mutex::default(),
            shared,
            seq,
        }
    }

    /// The sequence numbers and watermark of this store.
    pub fn sequencer(&self) -> &Arc<Sequencer> {
        &self.seq
    }

    /// Opens the file now if it exists (at start, so a data dir held by
    /// another process is an error before serving); a no-op otherwise.
    pub fn open_existing(&self) -> Result<(), HeldElsewhere> {
        let mut state = self.lock();
        if matches!(*state, State::Unopened) && self.path.exists() {
            *state = self.open()?;
        }
        Ok(())
    }

    /// Queues a durable timer change for the next round, opening the file
    /// first if needed, and numbers it. False when it cannot be persisted
    /// (file unavailable, held by another process (logged) or closed): the
    /// timer then lives in memory only.
    pub fn queue_timer(&self, id: &str, op: TimerOp) -> bool {
        let mut state = self.lock();
        // A delete never needs to create the file: nothing can be stored yet.
        if matches!(*state, State::Unopened) && op.is_some() {
            match self.open() {
                Ok(opened) => *state = opened,
                Err(_) => return false,
            }
        }
        let State::Open(..) = &*state else {
            return false;
        };
        let mut inbox = lock_inbox(&self.shared);
        inbox.timers.insert(id.to_string(), op);
        // Under the inbox lock, as the round's cut is read (see `seq`).
        self.seq.assign();
        true
    }

    /// Takes the timer rows stored by earlier processes for which `keep`
    /// returns true (each worker takes its share). Opens an existing file
    /// that no dict opened yet; never creates one.
    pub fn take_restored_timers(&self, mut keep: impl FnMut(&[u8]) -> bool) -> Vec<(Vec<u8>, Vec<u8>)> {
        // A file held elsewhere was refused at start, or is logged by `open`.
        let _ = self.open_existing();
        let mut restored = self.restored_timers.lock().unwrap_or_else(|e| e.into_inner());
        let (taken, left) = std::mem::take(&mut *restored).into_iter().partition(|(id, _)| keep(id));
        *restored = left;
        taken
    }

    /// A dict `namespace/name` restored from disk and registered for commits;
    /// a plain memory dict when the file is unavailable (logged) or closed.
    /// An error when another process holds the file.
    ///
    /// A table is attached once per process: attaching it again (after the
    /// `DictStore` forgot a dict whose version never served) gives the same
    /// dict back, with `capacity`, since its memory is what the disk will
    /// hold. A second dict restored from disk would miss its latest writes,
    /// and both would write to the table.
    pub fn attach(&self, namespace: &str, name: &str, capacity: u64) -> Result<Arc<Dict>, DictError> {
        let full = format!("{namespace}/{name}");
        let mut state = self.lock();
        if matches!(*state, State::Unopened) {
            *state = self.open()?;
        }
        let State::Open(db, committer) = &mut *state else {
            tracing::warn!(dict = %full, "durable shared dict kept in memory only: its store is not available");
            return Ok(Arc::new(Dict::new(full, capacity)));
        };
        if let Some(dict) = committer.attached.get(&full) {
            if dict.capacity() != capacity {
                dict.resize(capacity);
            }
            return Ok(dict.clone());
        }
        let dict = Arc::new(Dict::durable(full.clone(), capacity, self.seq.clone()));
        restore(db, &self.path, &full, &dict);
        committer.register(full, dict.clone());
        Ok(dict)
    }

    /// Commits everything pending, stops the thread and closes the file.
    /// Later changes of durable dicts stay in memory. Idempotent.
    pub fn close(&self) {
        let old = std::mem::replace(&mut *self.lock(), State::Closed);
        if let State::Open(db, committer) = old {
            // Dropping the committer runs the last round and joins the
            // thread, which held the other reference to the database;
            // dropping ours then closes the file and releases its lock.
            drop(committer);
            drop(db);
        }
    }

    /// The open database; for tests that read what was committed.
    #[cfg(test)]
    pub fn database(&self) -> Option<Arc<Database>> {
        match &*self.lock() {
            State::Open(db, _) => Some(db.clone()),
            _ => None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the file, reads the timers and the last commit's cut, and starts
    /// the commit thread. Only a file held by another process is an error;
    /// anything else unusable is logged and leaves the store `Unavailable`.
    fn open(&self) -> Result<State, HeldElsewhere> {
        if let Some(dir) = self.path.parent()
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            tracing::error!(dir = %dir.display(), error = %e, "cannot create the shared dict data dir; durable dicts stay in memory");
            return Ok(State::Unavailable);
        }
        let Some(db) = open_store(&self.path, "durable shared dict store")? else {
            return Ok(State::Unavailable);
        };
        match read_table(&db, TIMERS_TABLE) {
            Ok(rows) => *self.restored_timers.lock().unwrap_or_else(|e| e.into_inner()) = rows,
            Err(e) => tracing::error!(file = %self.path.display(), error = %e,
                "cannot read the durable timers; they are not re-armed"),
        }
        let recovered = match read_committed_seq(&db) {
            Ok(seq) => seq,
            Err(e) => {
                // The data is still good; only the numbering restarts.
                tracing::error!(file = %self.path.display(), error = %e,
                    "cannot read the last committed sequence number; numbering durable writes from 0");
                0
            }
        };
        self.seq.recover(recovered);
        tracing::info!(file = %self.path.display(), recovered_seq = recovered, "durable store opened");
        let db = Arc::new(db);
        match Committer::start(db.clone(), self.window, self.shared.clone(), self.seq.clone()) {
            Ok(committer) => Ok(State::Open(db, committer)),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the shared dict commit thread; durable dicts stay in memory");
                Ok(State::Unavailable)
            }
        }
    }
}

/// Loads the table of `dict` into it. A dict that cannot be read starts
/// empty (logged); records that do not decode or have expired are dropped
/// and left in the journal, so the next commit deletes them from disk.
fn restore(db: &Database, path: &Path, table: &str, dict: &Dict) {
    let rows = match read_table(db, table) {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(file = %path.display(), dict = %table, error = %e,
                "cannot read a durable shared dict; it starts empty");
            return;
        }
    };
    let mut malformed = 0usize;
    let mut first_error = None;
    // Quiet: dropping what expired while down is no write of anyone's.
    dict.locked_quiet(|e, now| {
        for (key, bytes) in rows {
            let key: Arc<[u8]> = Arc::from(key);
            let rec = match record::decode(&bytes) {
                Ok(rec) => rec,
                Err(error) => {
                    malformed += 1;
                    first_error.get_or_insert(error);
                    e.mark_dirty(&key);
                    continue;
                }
            };
            if expired_for_eviction(rec.expires, now) || super::check_key(&key).is_err() {
                e.mark_dirty(&key);
                continue;
            }
            let cost = match &rec.value {
                Stored::Scalar(v) => entry_cost(key.len(), v),
                Stored::List(items) => items.iter().map(list_node_cost).sum::<u64>() + list_entry_cost(key.len()),
            };
            // A dict redeclared smaller than before holds what fits; the
            // rest is evicted as a write would evict it.
            if let (true, _) = e.make_room(cost, true, now) {
                e.insert(key, rec.value, rec.flags, rec.expires, cost);
            } else {
                e.mark_dirty(&key);
            }
        }
        e.keep_dirty_removals();
    });
    if let Some(first) = first_error {
        tracing::error!(file = %path.display(), dict = %table, malformed, first = %first,
            "dropped malformed entries of a durable shared dict");
    }
}

/// A row as read from disk: key and record bytes.
type Row = (Vec<u8>, Vec<u8>);

/// The cut of the last completed commit (0 for a file without one, or with
/// a malformed one, which is logged).
pub(super) fn read_committed_seq(db: &Database) -> Result<u64, redb::Error> {
    let rows = read_table(db, META_TABLE)?;
    let Some((_, value)) = rows.iter().find(|(k, _)| k.as_slice() == COMMITTED_SEQ_KEY) else {
        return Ok(0);
    };
    Ok(decode_committed_seq(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "numbering durable writes from 0");
        0
    }))
}

/// The stored cut: a bare `u64` (LE), unversioned, as it always was.
const COMMITTED_SEQ: &str = "committed sequence number";

pub(super) fn encode_committed_seq(cut: u64) -> Vec<u8> {
    let mut w = Writer::unversioned(8);
    w.u64(cut);
    w.finish()
}

pub(super) fn decode_committed_seq(bytes: &[u8]) -> Result<u64, DecodeError> {
    let mut r = Reader::unversioned(COMMITTED_SEQ, bytes);
    let cut = r.u64("cut")?;
    r.finish()?;
    Ok(cut)
}

fn read_table(db: &Database, name: &str) -> Result<Vec<Row>, redb::Error> {
    let txn = db.begin_read()?;
    let t = match txn.open_table(table(name)) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut rows = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        rows.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(rows)
}
