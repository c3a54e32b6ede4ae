//! The commit thread (`shdict-commit`): every window it takes the journals
//! of all durable dicts and the queued timer changes, and writes them in one
//! fsynced redb transaction, then publishes the round's cut as the committed
//! watermark. See the parent module for the guarantee this keeps.

use super::*;

impl Dict {
    /// The keys changed since the last call (the commit thread's take).
    fn take_dirty(&self) -> Vec<Arc<[u8]>> {
        self.locked_quiet(|e, _| e.take_dirty())
    }

    /// Puts keys of a failed commit back, to be retried (their writes keep
    /// their numbers).
    fn mark_dirty_again(&self, keys: &[Arc<[u8]>]) {
        self.locked_quiet(|e, _| keys.iter().for_each(|k| e.mark_dirty(k)));
    }

    /// The record to store for each key, or None to delete it: absent or
    /// expired (expired entries are not restored, so they need no bytes).
    fn snapshot(&self, keys: &[Arc<[u8]>]) -> Vec<Option<Vec<u8>>> {
        self.locked_quiet(|e, now| {
            keys.iter()
                .map(|key| {
                    let slot = e.peek(key).and_then(|idx| e.slot(idx))?;
                    if expired_for_eviction(slot.expires, now) {
                        return None;
                    }
                    Some(record::encode(&slot.value, slot.flags, slot.expires))
                })
                .collect()
        })
    }
}

/// The commit thread and what it shares with the store.
#[derive(Debug)]
pub(super) struct Committer {
    pub(super) shared: Arc<Shared>,
    pub(super) thread: Option<JoinHandle<()>>,
    /// Every dict registered, by table.
    pub(super) attached: HashMap<String, Arc<Dict>>,
}

#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) inbox: Mutex<Inbox>,
    pub(super) wake: Condvar,
}

#[derive(Debug, Default)]
pub(super) struct Inbox {
    /// Dicts declared since the thread last looked.
    pub(super) new: Vec<(String, Arc<Dict>)>,
    /// Durable timer changes since the last round, by timer id.
    pub(super) timers: HashMap<String, TimerOp>,
    /// A sync write waits: start the next round without waiting the window.
    pub(super) sync_wanted: bool,
    pub(super) stop: bool,
}

impl Committer {
    pub(super) fn start(
        db: Arc<Database>,
        window: Duration,
        shared: Arc<Shared>,
        seq: Arc<Sequencer>,
    ) -> std::io::Result<Committer> {
        let thread = std::thread::Builder::new().name("shdict-commit".to_string()).spawn({
            let shared = shared.clone();
            move || {
                run(&db, window, &shared, &seq);
                // Nothing above the watermark will commit now.
                seq.close();
            }
        })?;
        Ok(Committer {
            shared,
            thread: Some(thread),
            attached: HashMap::new(),
        })
    }

    pub(super) fn register(&mut self, table: String, dict: Arc<Dict>) {
        self.attached.insert(table.clone(), dict.clone());
        lock_inbox(&self.shared).new.push((table, dict));
    }
}

impl Drop for Committer {
    /// Asks for a last round and waits for it.
    fn drop(&mut self) {
        lock_inbox(&self.shared).stop = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the shared dict commit thread panicked; recent durable writes may be lost");
        }
    }
}

pub(super) fn lock_inbox(shared: &Shared) -> MutexGuard<'_, Inbox> {
    shared.inbox.lock().unwrap_or_else(|e| e.into_inner())
}

/// The commit loop: a round per window (or at once when a sync write
/// waits) until stopped, then a last round.
fn run(db: &Database, window: Duration, shared: &Shared, seq: &Sequencer) {
    let mut dicts: Vec<(String, Arc<Dict>)> = Vec::new();
    let mut failing = false;
    // The cut stored by the last completed commit.
    let mut persisted = seq.committed();
    let mut next = Instant::now() + window;
    loop {
        let (stop, mut timers, cut) = {
            let mut inbox = lock_inbox(shared);
            while !inbox.stop && !inbox.sync_wanted {
                let left = next.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                inbox = shared
                    .wake
                    .wait_timeout(inbox, left)
                    .map(|(guard, _)| guard)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            inbox.sync_wanted = false;
            // The cut, read before any journal is taken and under the inbox
            // lock that timer changes are numbered under (see `seq`).
            let cut = seq.assigned();
            dicts.append(&mut inbox.new);
            (inbox.stop, std::mem::take(&mut inbox.timers), cut)
        };
        // Schedule from the round's start, so the window is the period.
        next = Instant::now() + window;
        let started = Instant::now();
        let result = commit_round(db, &dicts, &timers, cut, persisted);
        let took = started.elapsed();
        if took > window * 4 {
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                window_ms = window.as_millis() as u64,
                "slow durable commit (fsync); the committed watermark trails the writes by this long"
            );
        }
        match result {
            Ok(()) => {
                persisted = persisted.max(cut);
                seq.committed_through(cut);
                if failing {
                    tracing::info!("durable shared dict commits succeed again");
                    failing = false;
                }
            }
            Err(e) => {
                // Retry next round; a change queued meanwhile is newer and wins.
                let mut inbox = lock_inbox(shared);
                for (id, op) in timers.drain() {
                    inbox.timers.entry(id).or_insert(op);
                }
                drop(inbox);
                let message = e.to_string();
                seq.failed_through(cut, &message);
                // Once per failing streak: a full disk would log every 10 ms.
                if !failing {
                    tracing::error!(error = %message, "cannot commit durable shared dicts; retrying every window");
                }
                failing = true;
            }
        }
        if stop {
            return;
        }
    }
}

/// One dict's part of a round: its table, the dict and its changed keys.
type Batch<'a> = (&'a str, &'a Dict, Vec<Arc<[u8]>>);

/// Writes every changed key of every dict, the timer changes and `cut` in
/// one transaction. Skipped when there is nothing to write and `cut` is
/// already stored (`persisted`): an idle store does no I/O. On failure the
/// keys go back into their journals (the caller requeues the timer changes).
pub(in crate::shdict) fn commit_round(
    db: &Database,
    dicts: &[(String, Arc<Dict>)],
    timers: &HashMap<String, TimerOp>,
    cut: u64,
    persisted: u64,
) -> Result<(), redb::Error> {
    let batches: Vec<Batch<'_>> = dicts
        .iter()
        .map(|(table, dict)| (table.as_str(), &**dict, dict.take_dirty()))
        .filter(|(_, _, keys)| !keys.is_empty())
        .collect();
    if batches.is_empty() && timers.is_empty() && cut <= persisted {
        return Ok(());
    }
    let result = write_batches(db, &batches, timers, cut);
    if result.is_err() {
        for (_, dict, keys) in &batches {
            dict.mark_dirty_again(keys);
        }
    }
    result
}

fn write_batches(
    db: &Database,
    batches: &[Batch<'_>],
    timers: &HashMap<String, TimerOp>,
    cut: u64,
) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(table(META_TABLE))?
        .insert(COMMITTED_SEQ_KEY, encode_committed_seq(cut).as_slice())?;
    if !timers.is_empty() {
        let mut t = txn.open_table(table(TIMERS_TABLE))?;
        for (id, op) in timers {
            match op {
                Some(bytes) => {
                    t.insert(id.as_bytes(), bytes.as_slice())?;
                }
                None => {
                    t.remove(id.as_bytes())?;
                }
            }
        }
    }
    for (name, dict, keys) in batches {
        let mut t = txn.open_table(table(name))?;
        for chunk in keys.chunks(SNAPSHOT_CHUNK) {
            for (key, record) in chunk.iter().zip(dict.snapshot(chunk)) {
                match record {
                    Some(bytes) => {
                        t.insert(&**key, bytes.as_slice())?;
                    }
                    None => {
                        t.remove(&**key)?;
                    }
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}
