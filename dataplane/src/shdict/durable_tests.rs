//! Durable dicts against real redb files in temporary dirs: restore, TTLs
//! across restarts, corrupt files, the write-behind window, lists and flags,
//! and memory dicts leaving the disk alone. Timing is only ever waited for
//! with a deadline, never asserted.

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, TableDefinition};

use super::*;

const WINDOW: Duration = Duration::from_millis(10);
const MB: u64 = 1 << 20;

fn open(dir: &Path) -> DictStore {
    DictStore::with_data_dir(dir, WINDOW)
}

fn s(v: &str) -> Value {
    Value::Str(v.as_bytes().to_vec())
}

fn fetched(d: &Dict, key: &str) -> Option<(Value, u32)> {
    d.get(key.as_bytes()).ok().flatten().map(|f| (f.value, f.flags))
}

/// The committed bytes of `key` in table `table`, read through the store's
/// own open database (redb locks the file against a second open).
fn committed(store: &DictStore, table: &str, key: &str) -> Option<Vec<u8>> {
    let db = store.durable.as_ref()?.database()?;
    let txn = db.begin_read().ok()?;
    let t = txn.open_table(TableDefinition::<&[u8], &[u8]>::new(table)).ok()?;
    let row = t.get(key.as_bytes()).ok()??;
    Some(row.value().to_vec())
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(2));
    }
}

#[test]
fn restores_values_after_drop_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path());
        let d = store.declare("ns", "cache", MB, true).expect("declare");
        d.set(b"t", Value::Bool(true), 0, 0);
        d.set(b"f", Value::Bool(false), 0, 7);
        d.set(b"n", Value::Number(-12.25), 0, 0);
        d.set(b"s", Value::Str(vec![0, 255, b'x']), 0, u32::MAX);
        d.set(b"gone", s("x"), 0, 0);
        assert_eq!(d.delete(b"gone"), Ok(()));
        assert_eq!(d.incr(b"counter", 1.0, Some(0.0), 0).result, Ok(1.0));
        assert_eq!(d.incr(b"counter", 2.0, None, 0).result, Ok(3.0));
        // Same key in another namespace is another dict and another table.
        let other = store.declare("other", "cache", MB, true).expect("declare");
        other.set(b"t", s("other"), 0, 0);
    }
    assert!(dir.path().join(DURABLE_FILE_NAME).exists());
    let store = open(dir.path());
    let d = store.declare("ns", "cache", MB, true).expect("declare");
    assert_eq!(fetched(&d, "t"), Some((Value::Bool(true), 0)));
    assert_eq!(fetched(&d, "f"), Some((Value::Bool(false), 7)));
    assert_eq!(fetched(&d, "n"), Some((Value::Number(-12.25), 0)));
    assert_eq!(fetched(&d, "s"), Some((Value::Str(vec![0, 255, b'x']), u32::MAX)));
    assert_eq!(fetched(&d, "counter"), Some((Value::Number(3.0), 0)));
    assert_eq!(fetched(&d, "gone"), None);
    let other = store.declare("other", "cache", MB, true).expect("declare");
    assert_eq!(fetched(&other, "t"), Some((s("other"), 0)));
    // flush_all is persisted too (as deletions).
    d.flush_all();
    store.flush_and_close();
    drop(store);
    let store = open(dir.path());
    let d = store.declare("ns", "cache", MB, true).expect("declare");
    assert!(d.get_keys(0).is_empty());
    assert_eq!(d.get_stale(b"t"), Ok(None));
}

#[test]
fn ttls_survive_restart_and_expired_entries_are_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written;
    {
        let store = open(dir.path());
        let d = store.declare("ns", "ttl", MB, true).expect("declare");
        d.set(b"short", s("a"), 1000, 0);
        d.set(b"long", s("b"), 60_000, 3);
        d.set(b"revived", s("c"), 1000, 0);
        assert_eq!(d.expire(b"revived", 0), Ok(()));
        written = Instant::now();
    }
    // "Restart" once the short entry has expired.
    sleep(Duration::from_millis(1100).saturating_sub(written.elapsed()));
    let store = open(dir.path());
    let d = store.declare("ns", "ttl", MB, true).expect("declare");
    assert_eq!(d.get_stale(b"short"), Ok(None));
    assert_eq!(d.ttl(b"short"), Err(DictError::NotFound));
    assert_eq!(fetched(&d, "long"), Some((s("b"), 3)));
    // The time spent down counts against the TTL: the expiry is absolute.
    let ttl = d.ttl(b"long").expect("ttl");
    let down = i64::try_from(written.elapsed().as_millis()).unwrap_or(i64::MAX);
    assert!(ttl > 0 && ttl <= 60_000 - down + 50, "ttl {ttl} after {down} ms");
    assert_eq!(d.ttl(b"revived"), Ok(0));
    // The dropped entry is deleted from disk, not just skipped.
    wait_for("the expired entry to be deleted", || {
        committed(&store, "ns/ttl", "short").is_none()
    });
}

#[test]
fn corrupt_file_is_moved_aside_and_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(DURABLE_FILE_NAME);
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&path, &garbage).expect("write garbage");
    {
        let store = open(dir.path());
        let d = store.declare("ns", "c", MB, true).expect("declare");
        assert!(d.get_keys(0).is_empty());
        d.set(b"k", s("fresh"), 0, 0);
    }
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".redb.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "one file moved aside: {aside:?}");
    assert_eq!(std::fs::read(&aside[0]).expect("read aside"), garbage);
    assert!(crate::metrics::encode().contains("moongate_shared_dict_store_corrupt_total"));
    // The new file works.
    let store = open(dir.path());
    let d = store.declare("ns", "c", MB, true).expect("declare");
    assert_eq!(fetched(&d, "k"), Some((s("fresh"), 0)));
}

#[test]
fn second_corrupt_file_never_overwrites_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(DURABLE_FILE_NAME);
    for bytes in [b"first garbage".as_slice(), b"second garbage"] {
        std::fs::write(&path, bytes).expect("write garbage");
        let store = open(dir.path());
        store.declare("ns", "c", MB, true).expect("declare");
    }
    let mut kept: Vec<Vec<u8>> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    kept.sort();
    assert_eq!(kept, [b"first garbage".to_vec(), b"second garbage".to_vec()]);
}

#[test]
fn writes_are_committed_behind_within_the_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let d = store.declare("ns", "wb", MB, true).expect("declare");
    d.set(b"k", s("v1"), 0, 0);
    // Applied in memory at once, on disk shortly after, with no close.
    assert_eq!(fetched(&d, "k"), Some((s("v1"), 0)));
    wait_for("the first commit", || committed(&store, "ns/wb", "k").is_some());
    let first = committed(&store, "ns/wb", "k");
    d.set(b"k", s("v2"), 0, 0);
    wait_for("the update", || committed(&store, "ns/wb", "k") != first);
    d.delete(b"k").expect("delete");
    wait_for("the deletion", || committed(&store, "ns/wb", "k").is_none());
}

#[test]
fn lists_and_flags_survive_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path());
        let d = store.declare("ns", "lists", MB, true).expect("declare");
        assert_eq!(d.rpush(b"q", ListItem::Str(b"b".to_vec())), Ok(1));
        assert_eq!(d.rpush(b"q", ListItem::Number(2.5)), Ok(2));
        assert_eq!(d.lpush(b"q", ListItem::Str(b"a".to_vec())), Ok(3));
        assert_eq!(d.rpush(b"popped", ListItem::Number(1.0)), Ok(1));
        assert_eq!(d.lpop(b"popped"), Ok(Some(ListItem::Number(1.0))));
        d.set(b"flagged", Value::Number(1.0), 0, 0xffff_0001);
    }
    let store = open(dir.path());
    let d = store.declare("ns", "lists", MB, true).expect("declare");
    assert_eq!(d.llen(b"q"), Ok(3));
    assert_eq!(d.lpop(b"q"), Ok(Some(ListItem::Str(b"a".to_vec()))));
    assert_eq!(d.lpop(b"q"), Ok(Some(ListItem::Str(b"b".to_vec()))));
    assert_eq!(d.lpop(b"q"), Ok(Some(ListItem::Number(2.5))));
    assert_eq!(d.llen(b"popped"), Ok(0));
    assert_eq!(fetched(&d, "flagged"), Some((Value::Number(1.0), 0xffff_0001)));
    // Restored entries are charged like written ones.
    let fresh = Dict::new("fresh", MB);
    fresh.set(b"flagged", Value::Number(1.0), 0, 0xffff_0001);
    assert_eq!(d.free_space(), fresh.free_space());
}

#[test]
fn memory_dicts_create_no_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let store = open(&data);
    let d = store.declare("ns", "mem", MB, false).expect("declare");
    d.set(b"k", s("v"), 0, 0);
    let m = store.dict("ns", "mem2", MB).expect("dict");
    m.set(b"k", s("v"), 0, 0);
    store.flush_and_close();
    drop(store);
    assert!(!data.exists(), "memory dicts touched the disk");
}

#[test]
fn redeclaring_with_other_persistence_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.declare("ns", "d", MB, true).expect("declare");
    assert!(store.declare("ns", "d", MB, true).is_ok());
    let err = store.declare("ns", "d", MB, false).expect_err("mismatch");
    assert!(matches!(err, DictError::PersistenceMismatch { .. }));
    assert!(err.to_string().contains("already exists as Durable"), "{err}");
}

#[test]
fn durable_without_data_dir_or_after_close_stays_in_memory() {
    let store = DictStore::new();
    let d = store.declare("ns", "d", MB, true).expect("declare");
    d.set(b"k", s("v"), 0, 0);
    assert_eq!(fetched(&d, "k"), Some((s("v"), 0)));

    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.flush_and_close();
    let late = store.declare("ns", "late", MB, true).expect("declare");
    late.set(b"k", s("v"), 0, 0);
    assert_eq!(fetched(&late, "k"), Some((s("v"), 0)));
    assert!(!dir.path().join(DURABLE_FILE_NAME).exists());
}

#[test]
fn smaller_capacity_after_restart_evicts_what_does_not_fit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let value = vec![b'x'; 1000];
    {
        let store = open(dir.path());
        let d = store.declare("ns", "shrink", MB, true).expect("declare");
        for i in 0..200 {
            d.set(format!("k{i}").as_bytes(), Value::Str(value.clone()), 0, 0);
        }
    }
    let store = open(dir.path());
    let d = store.declare("ns", "shrink", 64 << 10, true).expect("declare");
    let kept = d.get_keys(0).len();
    assert!(kept > 0 && kept < 200, "kept {kept}");
    store.flush_and_close();
    drop(store);
    // The evicted entries are deleted on disk as well.
    let store = open(dir.path());
    let d = store.declare("ns", "shrink", MB, true).expect("declare");
    assert_eq!(d.get_keys(0).len(), kept);
}

#[test]
fn file_in_use_is_an_error_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open(dir.path());
    let d = first.declare("ns", "d", MB, true).expect("declare");
    d.set(b"k", s("first"), 0, 0);
    // A second store on the same dir (another dataplane) cannot lock the
    // file: declaring a durable dict is an error naming the dir, opening at
    // start too, and nothing is moved aside or falls back to memory.
    let second = open(dir.path());
    let err = second.declare("ns", "d", MB, true).expect_err("held elsewhere");
    let text = err.to_string();
    assert!(matches!(err, DictError::StoreHeldElsewhere(_)), "{err:?}");
    assert!(text.contains("another dataplane holds the data dir"), "{text}");
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(second.get("ns", "d").is_none(), "no memory-only dict was registered");
    assert!(second.open_existing().is_err());
    drop(second);
    drop(first);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, [DURABLE_FILE_NAME]);
    let store = open(dir.path());
    let d = store.declare("ns", "d", MB, true).expect("declare");
    assert_eq!(fetched(&d, "k"), Some((s("first"), 0)));
}

#[test]
fn zero_length_file_is_counted_and_started_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(DURABLE_FILE_NAME);
    std::fs::write(&path, b"").expect("write empty file");
    let before = crate::metrics::durable_store_corrupt_count();
    {
        let store = open(dir.path());
        let d = store.declare("ns", "z", MB, true).expect("declare");
        assert!(d.get_keys(0).is_empty());
        assert!(
            crate::metrics::durable_store_corrupt_count() > before,
            "an empty file counts as a bad store"
        );
        d.set(b"k", s("after"), 0, 0);
    }
    // The store made in its place works.
    let store = open(dir.path());
    let d = store.declare("ns", "z", MB, true).expect("declare");
    assert_eq!(fetched(&d, "k"), Some((s("after"), 0)));
}

#[test]
fn a_forgotten_durable_dict_declared_smaller_keeps_what_fits_and_deletes_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let d = store.declare("ns", "d", MB, true).expect("declare");
    let value = Value::Str(vec![b'x'; 1000]);
    for i in 0..300 {
        assert!(d.set(format!("k{i}").as_bytes(), value.clone(), 0, 0).result.is_ok());
    }
    wait_for("the entries to commit", || committed(&store, "ns/d", "k0").is_some());
    // The version never served; the next declares it with a sixth.
    store.abort_declared();
    let small = store.declare("ns", "d", MB / 6, true).expect("declared anew");
    assert!(Arc::ptr_eq(&small, &d), "one dict per table");
    assert_eq!(small.capacity(), MB / 6);
    // The most recently written entries are kept, the oldest evicted...
    assert!(fetched(&small, "k299").is_some());
    assert_eq!(fetched(&small, "k0"), None);
    // ... and deleted from disk.
    wait_for("the evictions to commit", || committed(&store, "ns/d", "k0").is_none());
    assert!(committed(&store, "ns/d", "k299").is_some());
    // Growing back loses nothing more.
    store.abort_declared();
    let big = store.declare("ns", "d", 2 * MB, true).expect("declared anew");
    assert!(fetched(&big, "k299").is_some());
    assert!(big.free_space() > MB);
}
