//! Sequence numbers and the committed watermark against real redb files:
//! which operations are numbered, the watermark never passing a write that
//! is not on disk (under concurrent writers), numbering across restarts,
//! sync tickets, and the `Sequencer`'s failure and close answers. Waits are
//! for events (a ticket resolving); their timeouts only keep a broken build
//! from hanging.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redb::{ReadableDatabase, TableDefinition};

use super::seq::{Sequencer, SyncError, last_on_thread};
use super::*;

const MB: u64 = 1 << 20;
/// Long enough that only a sync ticket (or close) makes a round happen.
const NEVER: Duration = Duration::from_secs(3600);

fn s(v: &str) -> Value {
    Value::Str(v.as_bytes().to_vec())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(60), f)
                .await
                .expect("the wait hung")
        })
}

/// Waits for the commit of everything numbered so far; the watermark.
fn sync(store: &DictStore) -> u64 {
    let seq = store.sequencer().expect("a data dir");
    block_on(seq.ticket().wait()).expect("committed")
}

/// The keys of `table` as committed (read through the store's own database).
fn committed_keys(store: &DictStore, table: &str) -> HashMap<Vec<u8>, Vec<u8>> {
    let db = store.durable.as_ref().and_then(|d| d.database()).expect("open");
    let txn = db.begin_read().expect("read");
    let Ok(t) = txn.open_table(TableDefinition::<&[u8], &[u8]>::new(table)) else {
        return HashMap::new();
    };
    t.range::<&[u8]>(..)
        .expect("range")
        .map(|row| {
            let (k, v) = row.expect("row");
            (k.value().to_vec(), v.value().to_vec())
        })
        .collect()
}

#[test]
fn every_change_is_numbered_and_nothing_else_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DictStore::with_data_dir(dir.path(), NEVER);
    let d = store.declare("ns", "d", MB, true).expect("declare");
    let mem = store.declare("ns", "mem", MB, false).expect("declare");
    let seq = store.sequencer().expect("seq").clone();
    let mut expected = 0;
    let mut numbered = |what: &str, changed: bool| {
        if changed {
            expected += 1;
        }
        assert_eq!(seq.assigned(), expected, "after {what}");
        if changed {
            assert_eq!(last_on_thread(), expected, "last_on_thread after {what}");
        }
    };
    d.set(b"k", s("v"), 0, 0);
    numbered("set", true);
    assert!(d.add(b"k", s("w"), 0, 0).result.is_err());
    numbered("a refused add", false);
    assert!(d.replace(b"k", s("w"), 0, 0).result.is_ok());
    numbered("replace", true);
    assert_eq!(d.incr(b"n", 1.0, Some(0.0), 0).result, Ok(1.0));
    numbered("incr creating", true);
    assert_eq!(d.incr(b"n", 1.0, None, 0).result, Ok(2.0));
    numbered("incr", true);
    assert_eq!(d.rpush(b"l", ListItem::Number(1.0)), Ok(1));
    numbered("rpush", true);
    assert_eq!(d.lpop(b"l"), Ok(Some(ListItem::Number(1.0))));
    numbered("lpop", true);
    assert_eq!(d.get(b"k").map(|f| f.is_some()), Ok(true));
    numbered("get", false);
    assert_eq!(d.expire(b"k", 60_000), Ok(()));
    numbered("expire", true);
    assert_eq!(d.delete(b"nothing-here"), Ok(()));
    numbered("deleting an absent key", false);
    assert_eq!(d.delete(b"k"), Ok(()));
    numbered("delete", true);
    mem.set(b"k", s("v"), 0, 0);
    numbered("a memory dict write", false);
    d.flush_all();
    numbered("flush_all", true);
    assert!(store.put_timer("t1", vec![1, 2, 3]));
    numbered("a durable timer", true);
    store.delete_timer("t1");
    numbered("a durable timer's completion", true);
    // A sync ticket makes a round happen at once despite the hour-long window.
    assert_eq!(sync(&store), expected);
    assert_eq!(seq.committed(), expected);
}

#[test]
fn the_watermark_never_passes_a_write_that_is_not_on_disk() {
    const WRITERS: usize = 3;
    const WRITES: usize = 1500;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DictStore::with_data_dir(dir.path(), Duration::from_millis(1)));
    let d = store.declare("ns", "race", 64 * MB, true).expect("declare");
    let seq = store.sequencer().expect("seq").clone();
    let done = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<(u64, Vec<u8>)>();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (d, tx) = (d.clone(), tx.clone());
            std::thread::spawn(move || {
                for i in 0..WRITES {
                    let key = format!("w{w}-{i}").into_bytes();
                    d.set(&key, Value::Number(i as f64), 0, 0);
                    // This thread's write just took this number.
                    tx.send((last_on_thread(), key)).expect("send");
                }
            })
        })
        .collect();
    drop(tx);
    let checker = {
        let (store, seq, done) = (store.clone(), seq.clone(), done.clone());
        std::thread::spawn(move || {
            let db = store.durable.as_ref().and_then(|d| d.database()).expect("open");
            // Acknowledged writes not yet seen under the watermark.
            let mut pending: Vec<(u64, Vec<u8>)> = Vec::new();
            let (mut verified, mut checks) = (0usize, 0usize);
            loop {
                let finished = done.load(Ordering::Acquire);
                pending.extend(rx.try_iter());
                // The watermark first, then the file: what the file shows is
                // at least as new as the commit that published it.
                let watermark = seq.committed();
                let txn = db.begin_read().expect("read");
                let table = txn.open_table(TableDefinition::<&[u8], &[u8]>::new("ns/race")).ok();
                pending.retain(|(n, key)| {
                    if *n > watermark {
                        return true;
                    }
                    let on_disk = table
                        .as_ref()
                        .and_then(|t| t.get(key.as_slice()).ok().flatten())
                        .is_some();
                    assert!(
                        on_disk,
                        "write #{n} ({}) is at or below the watermark {watermark} but not on disk",
                        String::from_utf8_lossy(key)
                    );
                    verified += 1;
                    false
                });
                checks += 1;
                if finished {
                    return (verified, checks);
                }
            }
        })
    };
    for w in writers {
        w.join().expect("writer");
    }
    let last = sync(&store);
    done.store(true, Ordering::Release);
    let (verified, checks) = checker.join().expect("checker");
    assert_eq!(
        verified,
        WRITERS * WRITES,
        "every write was checked under the watermark"
    );
    assert!(checks > 1);
    assert_eq!(last, (WRITERS * WRITES) as u64);
    assert_eq!(committed_keys(&store, "ns/race").len(), WRITERS * WRITES);
}

#[test]
fn numbering_continues_after_the_last_commit_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first_run;
    {
        let store = DictStore::with_data_dir(dir.path(), NEVER);
        let seq = store.sequencer().expect("seq").clone();
        let d = store.declare("ns", "d", MB, true).expect("declare");
        assert_eq!(seq.recovered(), 0, "a new file starts from 0");
        for i in 0..5 {
            d.set(format!("k{i}").as_bytes(), s("v"), 0, 0);
        }
        first_run = sync(&store);
        assert_eq!(first_run, 5);
        d.set(b"late", s("v"), 0, 0);
        // The last round, at close, commits #6 too.
        store.flush_and_close();
        assert_eq!(seq.committed(), 6);
    }
    let store = DictStore::with_data_dir(dir.path(), NEVER);
    let seq = store.sequencer().expect("seq").clone();
    let d = store.declare("ns", "d", MB, true).expect("declare");
    assert_eq!(seq.recovered(), 6);
    assert_eq!(seq.committed(), 6);
    d.set(b"after", s("v"), 0, 0);
    assert_eq!(last_on_thread(), 7, "numbering continues after the stored cut");
    // Opening at start (`open_existing`) recovers the same number.
    drop(d);
    drop(store);
    let store = DictStore::with_data_dir(dir.path(), NEVER);
    store.open_existing().expect("not held elsewhere");
    assert_eq!(store.sequencer().expect("seq").recovered(), 7);
}

#[test]
fn a_ticket_resolves_once_its_write_is_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DictStore::with_data_dir(dir.path(), NEVER);
    let d = store.declare("ns", "d", MB, true).expect("declare");
    d.set(b"k", s("v"), 0, 0);
    let ticket = d.sync_ticket().expect("durable");
    assert_eq!(ticket.seq(), 1);
    let committed = block_on(ticket.wait()).expect("committed");
    assert!(committed >= 1);
    assert!(committed_keys(&store, "ns/d").contains_key(b"k".as_slice()));
    // A ticket with nothing new to wait for resolves at once.
    assert_eq!(block_on(d.sync_ticket().expect("durable").wait()), Ok(committed));
    // Memory dicts have none.
    assert!(store.dict("ns", "mem", MB).expect("dict").sync_ticket().is_none());
}

#[test]
fn a_commit_round_stores_its_cut_even_with_nothing_else_to_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DictStore::with_data_dir(dir.path(), NEVER);
    store.declare("ns", "d", MB, true).expect("declare");
    let db = store.durable.as_ref().and_then(|d| d.database()).expect("open");
    super::durable::commit_round(&db, &[], &HashMap::new(), 42, 0).expect("commit");
    assert_eq!(super::durable::read_committed_seq(&db).expect("read"), 42);
}

#[test]
fn the_stored_cut_is_a_bare_little_endian_u64() {
    use super::durable::{decode_committed_seq, encode_committed_seq};
    assert_eq!(encode_committed_seq(0x0102_0304_0506_0708), [8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(
        decode_committed_seq(&[8, 7, 6, 5, 4, 3, 2, 1]),
        Ok(0x0102_0304_0506_0708)
    );
    let e = decode_committed_seq(&[1, 2, 3]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "corrupt committed sequence number: cut is cut short: 8 bytes needed, 3 left"
    );
    assert!(decode_committed_seq(&[0; 9]).is_err());
}

#[test]
fn waiters_hear_about_failed_rounds_and_closing() {
    let seq = Sequencer::new(|| {});
    seq.recover(10);
    assert_eq!((seq.assigned(), seq.committed(), seq.recovered()), (10, 10, 10));
    let n = seq.assign();
    assert_eq!(n, 11);
    let ticket = seq.ticket();
    seq.failed_through(11, "disk full");
    assert_eq!(
        block_on(ticket.wait()),
        Err(SyncError::CommitFailed(Arc::from("disk full")))
    );
    // A later write waits for a later round, which may succeed.
    seq.assign();
    let ticket = seq.ticket();
    seq.committed_through(12);
    assert_eq!(block_on(ticket.wait()), Ok(12));
    seq.assign();
    let ticket = seq.ticket();
    seq.close();
    assert_eq!(block_on(ticket.wait()), Err(SyncError::Closed));
    // Once committed, a ticket is answered by the watermark, closed or not.
    assert_eq!(
        block_on(Sequencer::new(|| {}).ticket().wait()),
        Ok(0),
        "nothing to wait for"
    );
}

#[test]
fn a_wait_gives_back_the_callers_last_seq() {
    let seq = Sequencer::new(|| {});
    let mine = seq.assign();
    let ticket = seq.ticket();
    // Another request of this worker writes while the first one waits.
    let other = seq.assign();
    assert_eq!(last_on_thread(), other);
    seq.committed_through(other);
    assert_eq!(block_on(ticket.wait()), Ok(other));
    assert_eq!(last_on_thread(), mine);
}

#[test]
fn a_ticket_wakes_the_commit_thread() {
    let woken = Arc::new(AtomicBool::new(false));
    let seq = Sequencer::new({
        let woken = woken.clone();
        move || woken.store(true, Ordering::Release)
    });
    let _ = seq.ticket();
    assert!(!woken.load(Ordering::Acquire), "nothing pending: no wake");
    seq.assign();
    let _ = seq.ticket();
    assert!(woken.load(Ordering::Acquire));
}
