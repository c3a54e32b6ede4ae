//! Behaviour of `Dict` and `DictStore` against lua-nginx-module's semantics,
//! on a per-thread fake clock.

use std::cell::Cell;
use std::sync::Arc;

use super::*;

thread_local! {
    static NOW: Cell<u64> = const { Cell::new(1_000_000) };
}

fn clock() -> u64 {
    NOW.with(Cell::get)
}

fn advance(ms: u64) {
    NOW.with(|n| n.set(n.get() + ms));
}

fn dict(capacity: u64) -> Dict {
    Dict::with_clock("test", capacity, clock)
}

fn s(v: &str) -> Value {
    Value::Str(v.as_bytes().to_vec())
}

fn val(d: &Dict, key: &str) -> Option<Value> {
    d.get(key.as_bytes()).ok().flatten().map(|f| f.value)
}

#[test]
fn set_get_all_value_types_with_flags() {
    let d = dict(1 << 20);
    assert_eq!(d.set(b"n", Value::Number(32.5), 0, 0), WriteOutcome::ok((), false));
    d.set(b"t", Value::Bool(true), 0, 0);
    d.set(b"f", Value::Bool(false), 0, 325);
    d.set(b"s", Value::Str(vec![0, 255, b'x']), 0, 0);
    assert_eq!(val(&d, "n"), Some(Value::Number(32.5)));
    assert_eq!(val(&d, "t"), Some(Value::Bool(true)));
    assert_eq!(
        d.get(b"f"),
        Ok(Some(Fetched {
            value: Value::Bool(false),
            flags: 325,
            stale: false
        }))
    );
    assert_eq!(val(&d, "s"), Some(Value::Str(vec![0, 255, b'x'])));
    assert_eq!(val(&d, "missing"), None);
    // Different sizes under one key, then delete.
    d.set(b"s", s("hello, world"), 0, 0);
    assert_eq!(val(&d, "s"), Some(s("hello, world")));
    assert_eq!(d.delete(b"s"), Ok(()));
    assert_eq!(d.delete(b"s"), Ok(()));
    assert_eq!(val(&d, "s"), None);
    assert_eq!(d.store(StoreOp::Set, b"n", None, 0, 0).result, Ok(()));
    assert_eq!(val(&d, "n"), None);
}

#[test]
fn key_checks() {
    let d = dict(1 << 20);
    assert_eq!(d.set(b"", s("x"), 0, 0).result, Err(DictError::EmptyKey));
    assert_eq!(d.get(b""), Err(DictError::EmptyKey));
    let long = vec![b'a'; MAX_KEY_LEN + 1];
    assert_eq!(d.get(&long), Err(DictError::KeyTooLong));
    assert_eq!(d.incr(&long, 1.0, None, 0).result, Err(DictError::KeyTooLong));
    assert_eq!(d.lpush(&long, ListItem::Number(1.0)), Err(DictError::KeyTooLong));
    let max = vec![b'a'; MAX_KEY_LEN];
    assert_eq!(d.set(&max, s("hello"), 0, 0).result, Ok(()));
    assert_eq!(d.get(&max).ok().flatten().map(|f| f.value), Some(s("hello")));
}

#[test]
fn add_and_replace() {
    let d = dict(1 << 20);
    d.set(b"foo", Value::Number(32.0), 0, 0);
    assert_eq!(d.add(b"foo", Value::Number(1.0), 0, 0).result, Err(DictError::Exists));
    assert_eq!(d.safe_add(b"bar", Value::Number(1.0), 0, 0).result, Ok(()));
    assert_eq!(d.replace(b"foo", s("hello"), 0, 0).result, Ok(()));
    assert_eq!(val(&d, "foo"), Some(s("hello")));
    assert_eq!(d.replace(b"nope", s("x"), 0, 0).result, Err(DictError::NotFound));
    assert_eq!(d.store(StoreOp::Add, b"x", None, 0, 0).result, Err(DictError::NilValue));
    assert_eq!(
        d.store(StoreOp::Replace, b"foo", None, 0, 0).result,
        Err(DictError::NilValue)
    );
    // Expired keys count as absent for add and replace.
    d.set(b"old", s("v"), 10, 0);
    advance(11);
    assert_eq!(d.replace(b"old", s("w"), 0, 0).result, Err(DictError::NotFound));
    assert_eq!(d.add(b"old", s("w"), 0, 0).result, Ok(()));
    assert_eq!(val(&d, "old"), Some(s("w")));
}

#[test]
fn incr_semantics() {
    let d = dict(1 << 20);
    assert_eq!(d.incr(b"n", 2.0, None, 0).result, Err(DictError::NotFound));
    assert_eq!(d.incr(b"n", 10502.0, Some(0.0), 0), WriteOutcome::ok(10502.0, false));
    assert_eq!(d.incr(b"n", -0.5, None, 0).result, Ok(10501.5));
    d.set(b"b", Value::Bool(true), 0, 0);
    assert_eq!(d.incr(b"b", 1.0, Some(0.0), 0).result, Err(DictError::NotANumber));
    assert_eq!(val(&d, "b"), Some(Value::Bool(true)));
    // A live key keeps its flags and expiry.
    d.set(b"f", Value::Number(1.0), 100_000, 7);
    assert_eq!(d.incr(b"f", 1.0, None, 0).result, Ok(2.0));
    assert_eq!(d.get(b"f").ok().flatten().map(|f| f.flags), Some(7));
    assert_eq!(d.ttl(b"f"), Ok(100_000));
    // init_ttl applies to a newly created key, and an expired key restarts.
    assert_eq!(d.incr(b"t", 1.0, Some(1.0), 50).result, Ok(2.0));
    assert_eq!(d.ttl(b"t"), Ok(50));
    advance(51);
    assert_eq!(d.incr(b"t", 1.0, None, 0).result, Err(DictError::NotFound));
    assert_eq!(d.incr(b"t", 1.0, Some(5.0), 0).result, Ok(6.0));
    assert_eq!(d.ttl(b"t"), Ok(0));
}

#[test]
fn expiry_get_stale_ttl_expire() {
    let d = dict(1 << 20);
    d.set(b"foo", Value::Number(32.0), 10, 3);
    d.set(b"blah", Value::Number(33.0), 300, 0);
    assert_eq!(d.ttl(b"foo"), Ok(10));
    advance(20);
    assert_eq!(
        d.get_stale(b"foo"),
        Ok(Some(Fetched {
            value: Value::Number(32.0),
            flags: 3,
            stale: true
        }))
    );
    assert_eq!(d.get_stale(b"blah").ok().flatten().map(|f| f.stale), Some(false));
    assert_eq!(d.ttl(b"foo"), Ok(-10));
    assert_eq!(d.expire(b"foo", 0), Ok(()));
    assert_eq!(val(&d, "foo"), Some(Value::Number(32.0)));
    // An expired entry that is not at the LRU tail survives a plain get.
    assert_eq!(d.expire(b"foo", 5), Ok(()));
    advance(10);
    assert_eq!(val(&d, "foo"), None);
    assert_eq!(d.get_stale(b"foo").ok().flatten().map(|f| f.stale), Some(true));
    d.set(b"foo", Value::Number(32.0), 0, 0);
    assert_eq!(d.ttl(b"nope"), Err(DictError::NotFound));
    assert_eq!(d.expire(b"foo", 1000), Ok(()));
    assert_eq!(val(&d, "foo"), Some(Value::Number(32.0)));
    assert_eq!(d.expire(b"foo", 0), Ok(()));
    assert_eq!(d.ttl(b"foo"), Ok(0));
    assert_eq!(d.expire(b"nope", 1), Err(DictError::NotFound));
}

#[test]
fn flush_expired_and_get_keys() {
    let d = dict(1 << 20);
    assert_eq!(d.flush_expired(0), 0);
    assert!(d.get_keys(0).is_empty());
    for i in 0..100 {
        d.set(i.to_string().as_bytes(), s("x"), 1000, 0);
    }
    d.set(b"bah", s("y"), 0, 0);
    d.set(b"bar", s("z"), 100_000, 0);
    assert_eq!(d.get_keys(0).len(), 102);
    assert_eq!(d.get_keys(1).len(), 1);
    // Oldest first.
    assert_eq!(&*d.get_keys(1)[0], b"0");
    advance(1500);
    let keys: Vec<_> = d
        .get_keys(0)
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(keys, ["bah", "bar"]);
    assert_eq!(d.flush_expired(42), 42);
    assert_eq!(d.flush_expired(0), 58);
    assert_eq!(d.flush_expired(0), 0);
}

#[test]
fn flush_all_marks_expired() {
    let d = dict(1 << 20);
    for i in 0..10 {
        d.set(format!("k{i}").as_bytes(), s("v"), 0, 7);
    }
    d.flush_all();
    assert!(d.get_keys(0).is_empty());
    // The newest entry is still stored, as stale.
    assert_eq!(
        d.get_stale(b"k9").ok().flatten().map(|f| (f.value, f.flags, f.stale)),
        Some((s("v"), 7, true))
    );
    assert_eq!(val(&d, "k9"), None);
    assert_eq!(d.add(b"k9", s("new"), 0, 0).result, Ok(()));
    assert_eq!(val(&d, "k9"), Some(s("new")));
}

#[test]
fn full_dict_evicts_lru_and_reports_forcible() {
    // The lua-nginx-module test: 100k dict, growing values, first forced
    // eviction at key 140 or 141.
    let d = dict(100 * 1024);
    let mut abort_at = 0;
    for i in 1..=1000 {
        let out = d.set(format!("key_{i}").as_bytes(), s(&"hello".repeat(i)), 0, 0);
        assert_eq!(out.result, Ok(()));
        if out.forcible {
            abort_at = i;
            break;
        }
    }
    assert!(abort_at == 140 || abort_at == 141, "abort at {abort_at}");
    assert_eq!(val(&d, "key_1"), None);
    assert_eq!(val(&d, &format!("key_{abort_at}")), Some(s(&"hello".repeat(abort_at))));
    // safe_set fails instead of evicting; a value bigger than the dict never fits.
    let big = s(&"x".repeat(5000));
    assert_eq!(
        d.safe_set(b"big", big.clone(), 0, 0),
        WriteOutcome {
            result: Err(DictError::NoMemory),
            forcible: false
        }
    );
    // set evicts (forcibly) before it gives up, even for a value that can never fit.
    let huge = Value::Str(vec![0; 200 * 1024]);
    assert_eq!(
        d.set(b"huge", huge, 0, 0),
        WriteOutcome {
            result: Err(DictError::NoMemory),
            forcible: true
        }
    );
    assert!(d.free_space() < d.capacity());
    assert_eq!(d.capacity(), 100 * 1024);
}

#[test]
fn lists() {
    let d = dict(1 << 20);
    assert_eq!(d.lpush(b"l", ListItem::Str(b"bar".to_vec())), Ok(1));
    assert_eq!(d.llen(b"l"), Ok(1));
    assert_eq!(d.get(b"l"), Err(DictError::ValueIsList));
    assert_eq!(d.incr(b"l", 1.0, None, 0).result, Err(DictError::NotANumber));
    assert_eq!(d.lpop(b"l"), Ok(Some(ListItem::Str(b"bar".to_vec()))));
    assert_eq!(d.llen(b"l"), Ok(0));
    assert_eq!(d.lpop(b"l"), Ok(None));
    for i in 1..=3 {
        assert_eq!(d.lpush(b"a", ListItem::Number(i as f64)), Ok(i));
        assert_eq!(d.rpush(b"b", ListItem::Number(i as f64)), Ok(i));
    }
    assert_eq!(d.rpop(b"a"), Ok(Some(ListItem::Number(1.0))));
    assert_eq!(d.lpop(b"a"), Ok(Some(ListItem::Number(3.0))));
    assert_eq!(d.lpop(b"b"), Ok(Some(ListItem::Number(1.0))));
    // Scalars are not lists, and set replaces a list.
    d.set(b"s", s("bar"), 0, 0);
    assert_eq!(d.lpush(b"s", ListItem::Number(1.0)), Err(DictError::ValueNotList));
    assert_eq!(d.lpop(b"s"), Err(DictError::ValueNotList));
    assert_eq!(d.llen(b"s"), Err(DictError::ValueNotList));
    assert_eq!(d.set(b"b", s("x"), 0, 0).result, Ok(()));
    assert_eq!(val(&d, "b"), Some(s("x")));
    assert_eq!(d.get_keys(0).len(), 3);
    // Pushing to an expired list starts over.
    d.lpush(b"e", ListItem::Number(1.0)).ok();
    d.expire(b"e", 200).ok();
    advance(300);
    assert_eq!(d.lpush(b"e", ListItem::Number(2.0)), Ok(1));
    assert_eq!(d.lpop(b"e"), Ok(Some(ListItem::Number(2.0))));
    assert_eq!(d.lpop(b"e"), Ok(None));
}

#[test]
fn list_push_never_evicts() {
    let d = dict(100 * 1024);
    d.set(b"keep", s("v"), 0, 0);
    let mut pushed = 0;
    let err = loop {
        match d.lpush(b"foo", ListItem::Str(b"bar".to_vec())) {
            Ok(n) => pushed = n,
            Err(e) => break e,
        }
    };
    assert_eq!(err, DictError::NoMemory);
    assert!(pushed > 2000 && pushed < 2921, "pushed {pushed}");
    assert_eq!(d.llen(b"foo"), Ok(pushed));
    assert_eq!(val(&d, "keep"), Some(s("v")));
    // Popping gives the memory back.
    d.lpop(b"foo").ok();
    assert_eq!(d.lpush(b"foo", ListItem::Str(b"baz".to_vec())), Ok(pushed));
}

#[test]
fn same_size_overwrites_do_not_grow() {
    let d = dict(64 * 1024);
    let free = d.free_space();
    for i in 0..10_000 {
        d.set(b"k", Value::Number(i as f64), 0, 0);
        d.set(b"s", s(&format!("{:08}", i)), 0, 0);
    }
    assert_eq!(d.free_space(), free);
}

#[test]
fn concurrent_incr_is_exact() {
    let d = Arc::new(Dict::new("c", 1 << 20));
    d.set(b"n", Value::Number(0.0), 0, 0);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let d = d.clone();
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    d.incr(b"n", 1.0, None, 0);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().ok();
    }
    assert_eq!(
        d.get(b"n").ok().flatten().map(|f| f.value),
        Some(Value::Number(40_000.0))
    );
}

#[test]
fn store_keeps_dicts_and_checks_capacity() {
    let store = DictStore::new();
    let a = store.dict("ns", "dogs", 1 << 20).ok();
    let b = store.dict("ns", "dogs", 1 << 20).ok();
    assert!(a.is_some());
    assert!(matches!((&a, &b), (Some(a), Some(b)) if Arc::ptr_eq(a, b)));
    let other = store.dict("other", "dogs", 1 << 10).ok();
    assert!(matches!((&a, &other), (Some(a), Some(o)) if !Arc::ptr_eq(a, o)));
    let err = store
        .dict("ns", "dogs", 2 << 20)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("1048576") && err.contains("2097152") && err.contains("dogs"),
        "{err}"
    );
    assert!(store.get("ns", "dogs").is_some());
    assert!(store.get("ns", "cats").is_none());
}

#[test]
fn staged_declarations_bind_until_settled() {
    let store = DictStore::new();
    let mb = 1 << 20;
    // Within one version a staged dict binds like a permanent one.
    let a = store.dict("ns", "a", mb).expect("a");
    store.dict("ns", "b", mb).expect("b");
    assert!(store.dict("ns", "a", 2 * mb).is_err());
    // Committed with only `a` served: `b` is forgotten, `a` binds.
    store.commit_declared([("ns", "a")]);
    assert!(store.get("ns", "b").is_none());
    assert!(store.dict("ns", "a", 2 * mb).is_err());
    // An aborted version forgets what it declared, never what serves.
    store.dict("ns", "b", 2 * mb).expect("b again, another size");
    let b = store.dict("ns", "b", 2 * mb).expect("b");
    b.set(b"k", s("v"), 0, 0);
    store.abort_declared();
    assert!(store.get("ns", "b").is_none());
    assert!(matches!(store.get("ns", "a"), Some(d) if Arc::ptr_eq(&d, &a)));
    // A memory dict declared anew starts empty.
    assert_eq!(val(&store.dict("ns", "b", mb).expect("b"), "k"), None);
    store.commit_declared([("ns", "b")]);
    store.abort_declared();
    assert!(store.get("ns", "b").is_some());
}

#[test]
fn a_forgotten_dict_no_longer_counts_toward_its_namespace() {
    let store = DictStore::new().with_limits(DictLimits {
        max_capacity: u64::MAX,
        max_namespace_total: 3 << 20,
    });
    store.dict("ns", "a", 2 << 20).expect("a");
    assert!(store.dict("ns", "b", 2 << 20).is_err(), "over the namespace total");
    store.abort_declared();
    store.dict("ns", "b", 2 << 20).expect("a was forgotten");
}
