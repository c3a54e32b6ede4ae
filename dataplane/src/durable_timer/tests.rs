//! Durable timers: the codec, the Lua API's refusals, and storage, re-arm,
//! completion and drops against real redb files. Each test runs on a fresh
//! thread, as a worker does (`set_exiting` is per thread).

use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Lua, Table, Value};

use super::codec::{self, Arg, Record};
use super::*;
use crate::config::{Chunk, Config, Route};
use crate::redb_file::codec::Problem;
use crate::shdict::DictStore;

const WINDOW: Duration = Duration::from_millis(5);

fn on_fresh_thread(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(f).join().expect("test thread panicked");
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

fn route(name: &str, modules: &[&str]) -> Route {
    Route {
        key: moongate_route::RouteKey::new("default", name),
        id: format!("default/{name}"),
        namespace: "default".into(),
        hostnames: Vec::new(),
        name: name.into(),
        locations: Vec::new(),
        modules: modules
            .iter()
            .map(|m| {
                let chunk = Chunk {
                    name: m.to_string(),
                    bytecode: Vec::new(),
                };
                (m.to_string(), std::sync::Arc::new(chunk))
            })
            .collect(),
        init: None,
        init_worker: None,
        shared_dicts: Vec::new(),
        max_body: 0,
        instruction_budget: 0,
    }
}

/// A config whose only route is `default/r`.
fn config() -> Arc<Config> {
    let route = moongate_proto::v1::Route {
        namespace: "default".into(),
        name: "r".into(),
        ..Default::default()
    };
    Arc::new(
        Config::try_from(&moongate_proto::v1::Snapshot {
            routes: vec![route],
            ..Default::default()
        })
        .unwrap(),
    )
}

/// The instruction budget of the test route (the worker's default).
const BUDGET: u64 = 100_000_000;

/// A worker VM with one route `default/r` whose module `jobs` (source
/// `jobs_src`) is served, as the glue would set it up. Returns the route env
/// and the worker's durable timers (which its `at_durable` needs alive).
fn worker(lua: &Lua, dicts: &Arc<DictStore>, jobs_src: &str) -> (Table, Rc<DurableTimers>) {
    let marker = lua.create_table().unwrap();
    let timers = Rc::new(DurableTimers::new(0, 1, dicts.clone(), Rc::default()));
    lua.globals().set("MARKER", &marker).unwrap();
    let env: Table = lua
        .load(
            r#"
            local src = ...
            local env = setmetatable({}, {__index = _G})
            local loaded = {}
            env.require = function(name)
                if loaded[name] then return loaded[name] end
                if name ~= "jobs" and name ~= "a.b" then error("module '" .. name .. "' not found", 2) end
                loaded[name] = setfenv(assert(loadstring(src, "=jobs")), env)()
                return loaded[name]
            end
            return env
        "#,
        )
        .call(jobs_src)
        .unwrap();
    let config = config();
    let limits = Limits {
        budget: BUDGET,
        slice: BUDGET,
        unpreemptible: BUDGET,
    };
    timers
        .install(lua, &marker, &env, &route("r", &["jobs", "a.b"]), &config, limits)
        .unwrap();
    timers.commit(&config);
    (env, timers)
}

/// Runs `code` in `env` as route code outside init (a timer-like context).
fn run(lua: &Lua, env: &Table, code: &str) -> mlua::Result<mlua::MultiValue> {
    let f = lua.load(code).set_environment(env.clone()).into_function()?;
    crate::context::with_vm_phase(crate::context::VmPhase::Timer, || f.call(()))
}

fn stored(dir: &Path) -> Vec<(String, Record)> {
    let store = DictStore::with_data_dir(dir, WINDOW);
    let rows = store.take_restored_timers(|_| true);
    rows.into_iter()
        .map(|(id, bytes)| (String::from_utf8(id).unwrap(), codec::decode(&bytes).unwrap()))
        .collect()
}

async fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

fn sample() -> Record {
    Record {
        namespace: "default".into(),
        route: "r".into(),
        callback: "a.b.run".into(),
        fire_at_ms: 1_700_000_000_123,
        args: vec![
            Arg::Nil,
            Arg::Bool(true),
            Arg::Number(-1.5),
            Arg::Str(b"\0bin\xff".to_vec()),
            Arg::Table(vec![
                (
                    Arg::Str(b"k".to_vec()),
                    Arg::Table(vec![(Arg::Number(1.0), Arg::Bool(false))]),
                ),
                (Arg::Number(2.0), Arg::Str(Vec::new())),
            ]),
        ],
    }
}

#[test]
fn record_round_trips_and_bad_bytes_are_rejected() {
    let problem = |bytes: &[u8]| codec::decode(bytes).expect_err("malformed").problem;
    let rec = sample();
    let bytes = codec::encode(&rec);
    assert_eq!(codec::decode(&bytes), Ok(rec));
    // Every truncation, trailing garbage, another version: rejected, no panic.
    for n in 0..bytes.len() {
        assert!(
            matches!(problem(&bytes[..n]), Problem::Truncated { .. }),
            "prefix of {n} bytes"
        );
    }
    assert_eq!(
        problem(&[bytes.as_slice(), b"x"].concat()),
        Problem::Trailing { len: 1 }
    );
    let mut other = bytes.clone();
    other[0] = codec::VERSION + 1;
    assert_eq!(
        problem(&other),
        Problem::Version {
            found: codec::VERSION + 1,
            expected: codec::VERSION
        }
    );
    // A huge pair count, a boolean key, nesting past the limit.
    let head = |args: &[u8]| {
        let mut b = codec::encode(&Record {
            args: Vec::new(),
            ..sample()
        });
        let n = b.len();
        b[n - 4..].copy_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(args);
        b
    };
    assert!(matches!(
        problem(&head(&[5, 0xff, 0xff, 0xff, 0xff])),
        Problem::Truncated {
            field: "table size",
            ..
        }
    ));
    assert!(matches!(
        problem(&head(&[5, 1, 0, 0, 0, 2, 2])),
        Problem::Invalid { field: "table key", .. }
    ));
    let mut deep = Vec::new();
    for _ in 0..=codec::MAX_DEPTH {
        deep.extend_from_slice(&[5, 1, 0, 0, 0, 3]);
        deep.extend_from_slice(&1f64.to_le_bytes());
    }
    deep.push(0);
    assert_eq!(
        codec::decode(&head(&deep)).unwrap_err().to_string(),
        "corrupt durable timer record: table argument: nested too deep"
    );
    assert_eq!(
        problem(&head(&[9])),
        Problem::Tag {
            field: "argument tag",
            tag: 9
        }
    );
    let mut not_utf8 = codec::encode(&Record {
        namespace: "x".into(),
        ..sample()
    });
    not_utf8[13] = 0xff;
    assert_eq!(problem(&not_utf8), Problem::NotUtf8 { field: "namespace" });
    let huge = vec![codec::VERSION; 200 * 1024];
    assert!(matches!(problem(&huge), Problem::TooLarge { .. }));
}

/// The bytes every release has written: a change here breaks the timers
/// already on disk.
#[test]
fn the_layout_is_byte_for_byte_the_stored_one() {
    let rec = Record {
        namespace: "n".into(),
        route: "r".into(),
        callback: "m.f".into(),
        fire_at_ms: 0x0102_0304_0506_0708,
        args: vec![
            Arg::Nil,
            Arg::Bool(false),
            Arg::Bool(true),
            Arg::Number(1.0),
            Arg::Str(b"s".to_vec()),
            Arg::Table(vec![(Arg::Str(b"k".to_vec()), Arg::Number(-2.5))]),
        ],
    };
    let bytes = [
        vec![1, 8, 7, 6, 5, 4, 3, 2, 1],
        vec![1, 0, 0, 0, b'n', 1, 0, 0, 0, b'r', 3, 0, 0, 0, b'm', b'.', b'f'],
        vec![6, 0, 0, 0, 0, 1, 2, 3],
        1.0f64.to_le_bytes().to_vec(),
        vec![4, 1, 0, 0, 0, b's', 5, 1, 0, 0, 0, 4, 1, 0, 0, 0, b'k', 3],
        (-2.5f64).to_le_bytes().to_vec(),
    ]
    .concat();
    assert_eq!(codec::encode(&rec), bytes);
    assert_eq!(codec::decode(&bytes), Ok(rec));
}

#[test]
fn lua_arguments_round_trip() {
    let lua = Lua::new();
    let values: mlua::MultiValue = lua
        .load(r#"return nil, false, 42, "a\0b", {1, 2, x = {y = "z"}, [2.5] = true}"#)
        .eval()
        .unwrap();
    let values: Vec<Value> = values.into_iter().collect();
    let args = codec::args_from_lua(&values).unwrap();
    let back: Vec<Value> = args.iter().map(|a| codec::to_lua(&lua, a).unwrap()).collect();
    let check: bool = lua
        .load(
            r#"local a, b, c, d, e = ...
            return a == nil and b == false and c == 42 and d == "a\0b" and e[1] == 1 and e[2] == 2
                and e.x.y == "z" and e[2.5] == true"#,
        )
        .call(mlua::MultiValue::from_iter(back))
        .unwrap();
    assert!(check);
}

#[test]
fn bad_arguments_raise_naming_the_position() {
    on_fresh_thread(|| {
        let lua = Lua::new();
        let dicts = Arc::new(DictStore::new());
        let (env, timers) = worker(&lua, &dicts, "return {run = function() end}");
        let cases = [
            (
                "'x', 'jobs.run'",
                "bad argument #1 to 'at_durable' (number expected, got string)",
            ),
            ("-1, 'jobs.run'", "bad argument #1 to 'at_durable' (delay must be >= 0)"),
            (
                "1, print",
                "bad argument #2 to 'at_durable' (string expected, got function)",
            ),
            (
                "1, 'run'",
                "bad argument #2 to 'at_durable' (\"module.function\" expected, got \"run\")",
            ),
            (
                "1, 'nope.run'",
                "bad argument #2 to 'at_durable' (no module 'nope' in this LuaRoute)",
            ),
            (
                "1, 'jobs.gone'",
                "bad argument #2 to 'at_durable' (module 'jobs' has no function 'gone')",
            ),
            (
                "1, 'jobs.run', 1, function() end",
                "bad argument #4 to 'at_durable' (cannot store a function)",
            ),
            (
                "1, 'jobs.run', coroutine.create(print)",
                "bad argument #3 to 'at_durable' (cannot store a thread)",
            ),
            (
                "1, 'jobs.run', newproxy()",
                "bad argument #3 to 'at_durable' (cannot store a userdata)",
            ),
            (
                "1, 'jobs.run', {f = print}",
                "bad argument #3 to 'at_durable' (cannot store a function)",
            ),
            (
                "1, 'jobs.run', cyclic",
                "bad argument #3 to 'at_durable' (cannot store a cyclic table)",
            ),
            (
                "1, 'jobs.run', {[true] = 1}",
                "bad argument #3 to 'at_durable' (cannot store a table with a boolean key)",
            ),
            (
                "1, 'jobs.run', deep",
                "bad argument #3 to 'at_durable' (table nested deeper than 16 levels)",
            ),
            (
                "1, 'jobs.run', big",
                "bad argument #3 to 'at_durable' (arguments too large",
            ),
        ];
        for (args, want) in cases {
            let code = format!(
                "local cyclic = {{}}; cyclic.me = {{cyclic}}
                local deep = {{}}; for _ = 1, 20 do deep = {{deep}} end
                local big = string.rep('x', 70000)
                return pcall(moongate.timer.at_durable, {args})"
            );
            let out: Vec<Value> = run(&lua, &env, &code).unwrap().into_iter().collect();
            assert_eq!(out[0], Value::Boolean(false), "{args}");
            let msg = out[1].to_string().unwrap_or_default();
            assert!(msg.contains(want), "{args}: {msg}");
        }
        assert_eq!(timers.pending(), 0);
        // Not in init: a prepared config may never serve.
        let f = lua.load("return pcall(moongate.timer.at_durable, 1, 'jobs.run')");
        let (ok, msg): (bool, Value) = f.set_environment(env).call(()).unwrap();
        let msg = msg.to_string().unwrap_or_default();
        assert!(!ok && msg.contains("init_by_lua"), "{msg}");
    });
}

#[test]
fn stored_timer_survives_reopen_fires_once_and_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    // Process 1: create a timer far in the future, then stop gracefully.
    let id = {
        let path = path.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        on_fresh_thread(move || {
            let lua = Lua::new();
            let dicts = Arc::new(DictStore::with_data_dir(&path, WINDOW));
            let (env, _timers) = worker(&lua, &dicts, "return {run = function(p, a) RAN = a end}");
            block_on(async {
                let out = run(
                    &lua,
                    &env,
                    "return moongate.timer.at_durable(3600, 'jobs.run', 'x', {n = 7})",
                )
                .unwrap();
                let id = out.into_iter().next().unwrap().to_string().unwrap();
                crate::context::set_exiting();
                tx.send(id).unwrap();
            });
            dicts.flush_and_close();
        });
        rx.recv().unwrap()
    };
    let rows = stored(&path);
    assert_eq!(rows.len(), 1);
    let (stored_id, rec) = &rows[0];
    assert_eq!(stored_id, &id);
    assert_eq!(
        (rec.route_id().as_str(), rec.callback.as_str()),
        ("default/r", "jobs.run")
    );
    let expected = unix_ms() + 3_600_000;
    assert!(
        rec.fire_at_ms <= expected && rec.fire_at_ms + 60_000 > expected,
        "{}",
        rec.fire_at_ms
    );
    assert_eq!(
        rec.args,
        vec![
            Arg::Str(b"x".to_vec()),
            Arg::Table(vec![(Arg::Str(b"n".to_vec()), Arg::Number(7.0))])
        ]
    );
    // Move it into the past, as if the process had been down for an hour.
    {
        let store = DictStore::with_data_dir(&path, WINDOW);
        store.take_restored_timers(|_| false);
        assert!(store.put_timer(
            &id,
            codec::encode(&Record {
                fire_at_ms: 1,
                ..rec.clone()
            })
        ));
        store.flush_and_close();
    }
    // Process 2: re-armed at the first commit, fired at once with its args.
    let path2 = path.clone();
    on_fresh_thread(move || {
        let lua = Lua::new();
        let dicts = Arc::new(DictStore::with_data_dir(&path2, WINDOW));
        let env = block_on(async {
            // Re-arming spawns on the worker's LocalSet, as in `Worker::handle`.
            let (env, _timers) = worker(
                &lua,
                &dicts,
                "return {run = function(p, a, t) RAN = tostring(p) .. a .. t.n end}",
            );
            assert!(wait_until(|| env.get::<Option<String>>("RAN").unwrap().is_some()).await);
            env
        });
        assert_eq!(env.get::<String>("RAN").unwrap(), "falsex7");
        dicts.flush_and_close();
    });
    // Its completion was committed: nothing left to fire.
    assert!(stored(&path).is_empty());
}

#[test]
fn callback_may_sleep_and_errors_are_counted_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    on_fresh_thread(move || {
        let lua = Lua::new();
        let dicts = Arc::new(DictStore::with_data_dir(&path, WINDOW));
        let src = "return {
            nap = function(p, a) coroutine.yield(MARKER, 2, 0.01); DONE = a end,
            boom = function() error('boom') end,
        }";
        let (env, timers) = worker(&lua, &dicts, src);
        let errors_before = crate::metrics::durable_timer_counts().2;
        block_on(async {
            run(&lua, &env, "moongate.timer.at_durable(0, 'jobs.nap', 'slept')").unwrap();
            run(&lua, &env, "moongate.timer.at_durable(0, 'jobs.boom')").unwrap();
            assert_eq!(timers.pending(), 2);
            assert!(wait_until(|| env.get::<Option<String>>("DONE").unwrap().is_some()).await);
            assert!(wait_until(|| crate::metrics::durable_timer_counts().2 > errors_before).await);
        });
        assert_eq!(timers.pending(), 0);
        dicts.flush_and_close();
        assert!(stored(&path).is_empty());
    });
}

#[test]
fn missing_route_module_or_function_drops_and_counts() {
    on_fresh_thread(|| {
        let lua = Lua::new();
        let dicts = Arc::new(DictStore::new());
        let (_env, timers) = worker(&lua, &dicts, "return {run = function() end}");
        let fire_one = |route: &str, callback: &str| {
            let rec = Record {
                route: route.into(),
                callback: callback.into(),
                ..sample()
            };
            block_on(timers.fire("t", &rec))
        };
        let dropped_before = crate::metrics::durable_timer_counts().1;
        assert_eq!(fire_one("r", "jobs.run"), Outcome::Completed);
        for (route, callback, why) in [
            (
                "gone",
                "jobs.run",
                "route default/gone is not in the config being served",
            ),
            ("r", "other.run", "route default/r has no module 'other'"),
            ("r", "jobs.gone", "module 'jobs' has no function 'gone'"),
        ] {
            assert_eq!(fire_one(route, callback), Outcome::Dropped(why.into()));
        }
        assert!(crate::metrics::durable_timer_counts().1 >= dropped_before + 3);
    });
}

#[test]
fn dropped_timer_is_deleted_and_shutdown_keeps_pending_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    {
        let store = DictStore::with_data_dir(&path, WINDOW);
        let gone = Record {
            route: "gone".into(),
            fire_at_ms: 1,
            ..sample()
        };
        assert!(store.put_timer("gone", codec::encode(&gone)));
        assert!(store.put_timer("junk", b"not a record".to_vec()));
        store.flush_and_close();
    }
    let path2 = path.clone();
    on_fresh_thread(move || {
        let lua = Lua::new();
        let dicts = Arc::new(DictStore::with_data_dir(&path2, WINDOW));
        let env = block_on(async {
            let (env, timers) = worker(&lua, &dicts, "return {run = function() RAN = true end}");
            // Both restored timers are handled at once; then a new one is
            // pending when the process starts exiting.
            assert!(wait_until(|| timers.pending() == 0).await);
            run(&lua, &env, "moongate.timer.at_durable(0.05, 'jobs.run')").unwrap();
            crate::context::set_exiting();
            tokio::time::sleep(Duration::from_millis(150)).await;
            env
        });
        assert_eq!(env.get::<Option<bool>>("RAN").unwrap(), None, "fired prematurely");
        dicts.flush_and_close();
    });
    let rows = stored(&path);
    assert_eq!(rows.len(), 1, "only the pending timer stays");
    assert_eq!(rows[0].1.callback, "jobs.run");
}

#[test]
fn owner_and_callback_split() {
    assert_eq!(split_callback("a.b.run"), Some(("a.b", "run")));
    assert_eq!(split_callback("jobs.run"), Some(("jobs", "run")));
    assert_eq!(split_callback("run"), None);
    assert_eq!(split_callback(".run"), None);
    assert_eq!(split_callback("jobs."), None);
    assert_eq!(owner(b"x", 1), 0);
    let spread: std::collections::HashSet<usize> = (0..64).map(|i| owner(format!("id{i}").as_bytes(), 4)).collect();
    assert_eq!(spread.len(), 4);
}
