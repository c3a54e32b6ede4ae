//! Sequence numbers of durable writes and the committed watermark.
//!
//! In: every change to durable state — a durable dict operation that changed
//! a key (set, add, replace, incr, delete, list ops, flush_all, expire, and
//! the removal of expired entries a read may do) and every durable timer
//! create or complete — takes the next sequence number with
//! [`Sequencer::assign`], while still holding the lock under which it
//! journaled its change (the dict's lock, or the commit inbox's). Out: the
//! watermark, published by the commit thread after each commit: the highest
//! sequence number all of whose writes are in completed, fsynced commits.
//!
//! **Invariant (the promise).** A round of the commit thread first reads the
//! cut, `assigned()`, then takes the inbox and every dict's journal (each
//! under its lock). A write numbered `s <= cut` took its number inside a
//! critical section that ended before the cut was read, and that critical
//! section journaled the change, so this round (or an earlier one, which
//! already read the value) writes it. When the round's transaction commits,
//! the watermark becomes `cut`. Hence: **an acknowledged write is lost in a
//! crash only if its sequence number is above the watermark of the last
//! completed commit.** The converse does not hold: a round reads each changed
//! key's current value, so writes numbered above the cut that landed while
//! it was reading ride along in it.
//!
//! **Across restarts** each commit stores its cut in the file (table
//! `moongate.meta`), and a restarted process continues numbering after the
//! value it finds there ([`Sequencer::recovered`]). Numbers above that cut
//! are given again after a restart, whether their writes were lost or rode
//! along in the last commit; numbers at or below it never are.
//!
//! **Waiting for a commit.** [`Sequencer::ticket`] captures the current
//! `assigned()` — which covers the caller's own write and every write whose
//! effect it could have seen — and a `tokio::sync::watch` receiver;
//! [`SyncTicket::wait`] awaits the watermark reaching it (no polling). A
//! ticket also wakes the commit thread, so it does not wait out the window.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

thread_local! {
    /// The sequence number of the latest durable write made on this thread.
    static LAST_ON_THREAD: Cell<u64> = const { Cell::new(0) };
}

/// The sequence number of the latest durable write this thread made (0 if
/// none): a worker's `moongate.durable.last_seq()`. Other requests of the
/// worker write while a handler is parked on I/O, so a handler reads it
/// right after its write; [`SyncTicket::wait`] puts back the caller's value
/// when it resolves, so after a sync write it is that write's number.
pub fn last_on_thread() -> u64 {
    LAST_ON_THREAD.with(Cell::get)
}

/// What the commit thread publishes after each round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Watermark {
    /// Every write numbered at or below this is in a completed commit.
    pub committed: u64,
    /// The cut of the latest round whose commit failed (0: none), and why.
    /// A waiter at or below it and above `committed` gets the error.
    pub failed_through: u64,
    pub failure: Option<Arc<str>>,
    /// The commit thread stopped: nothing above `committed` will commit.
    pub closed: bool,
}

/// Why a sync write returned without its commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("not committed: {0}")]
    CommitFailed(Arc<str>),
    #[error("not committed: the durable store is closed")]
    Closed,
}

/// The sequence numbers and the watermark of one durable store.
pub struct Sequencer {
    assigned: AtomicU64,
    recovered: AtomicU64,
    watermark: watch::Sender<Watermark>,
    /// Asks the commit thread for a round now (set by the store).
    wake: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Sequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequencer")
            .field("assigned", &self.assigned)
            .field("recovered", &self.recovered)
            .field("watermark", &*self.watermark.borrow())
            .finish_non_exhaustive()
    }
}

impl Sequencer {
    /// Numbering from 0; `wake` asks the commit thread for a round.
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Sequencer {
        Sequencer {
            assigned: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            watermark: watch::Sender::new(Watermark::default()),
            wake: Box::new(wake),
        }
    }

    /// Continues after `seq`, the cut of the last commit found in the file.
    /// Called once, when the file is opened and before any write is numbered.
    pub fn recover(&self, seq: u64) {
        self.recovered.store(seq, Ordering::Release);
        self.assigned.fetch_max(seq, Ordering::AcqRel);
        self.watermark.send_modify(|w| w.committed = w.committed.max(seq));
        crate::metrics::durable_committed_seq(seq);
    }

    /// The next sequence number, for a write whose change was journaled in
    /// the critical section the caller still holds.
    pub fn assign(&self) -> u64 {
        let seq = self.assigned.fetch_add(1, Ordering::AcqRel) + 1;
        LAST_ON_THREAD.with(|l| l.set(seq));
        seq
    }

    /// The highest number given out so far (the cut a round starts with).
    pub fn assigned(&self) -> u64 {
        self.assigned.load(Ordering::Acquire)
    }

    /// The number found in the file at open (0 for a new file).
    pub fn recovered(&self) -> u64 {
        self.recovered.load(Ordering::Acquire)
    }

    /// The watermark: every write at or below it is committed.
    pub fn committed(&self) -> u64 {
        self.watermark.borrow().committed
    }

    /// A round with cut `seq` committed.
    /// Called by the commit thread only.
    pub fn committed_through(&self, seq: u64) {
        if seq <= self.committed() {
            return;
        }
        // The metric first: whoever the watermark wakes must find it there.
        crate::metrics::durable_committed_seq(seq);
        self.watermark.send_modify(|w| w.committed = w.committed.max(seq));
    }

    /// A round with cut `seq` failed with `error`; its writes are retried.
    pub fn failed_through(&self, seq: u64, error: &str) {
        self.watermark.send_modify(|w| {
            w.failed_through = w.failed_through.max(seq);
            w.failure = Some(Arc::from(error));
        });
    }

    /// The commit thread stopped (after its last round).
    pub fn close(&self) {
        self.watermark.send_modify(|w| w.closed = true);
    }

    /// A ticket for everything numbered so far; wakes the commit thread.
    pub fn ticket(&self) -> SyncTicket {
        let ticket = SyncTicket {
            seq: self.assigned(),
            last_on_thread: last_on_thread(),
            watermark: self.watermark.subscribe(),
        };
        if ticket.seq > self.committed() {
            (self.wake)();
        }
        ticket
    }
}

/// A wait for the watermark to reach `seq`.
#[derive(Debug)]
pub struct SyncTicket {
    seq: u64,
    /// `last_on_thread()` of the thread that made the ticket, when it did.
    last_on_thread: u64,
    watermark: watch::Receiver<Watermark>,
}

impl SyncTicket {
    /// The sequence number this ticket waits for.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Resolves with the watermark once it is at or above `seq`; with an
    /// error once a round covering `seq` failed or the store closed first.
    /// Either way `last_on_thread()` is then what it was when the ticket was
    /// made (poll it on that thread, as the drivers do).
    pub async fn wait(mut self) -> Result<u64, SyncError> {
        let outcome = self.resolve().await;
        LAST_ON_THREAD.with(|l| l.set(self.last_on_thread));
        outcome
    }

    async fn resolve(&mut self) -> Result<u64, SyncError> {
        let seq = self.seq;
        let mut verdict = None;
        // `wait_for` checks the current value first, then each change.
        let waited = self
            .watermark
            .wait_for(|w| {
                verdict = Some(if w.committed >= seq {
                    Ok(w.committed)
                } else if w.failed_through >= seq {
                    Err(SyncError::CommitFailed(
                        w.failure.clone().unwrap_or_else(|| Arc::from("commit failed")),
                    ))
                } else if w.closed {
                    Err(SyncError::Closed)
                } else {
                    return false;
                });
                true
            })
            .await;
        match (waited, verdict) {
            (Ok(_), Some(verdict)) => verdict,
            // The sender (the store) is gone: nothing more will commit.
            _ => Err(SyncError::Closed),
        }
    }
}
