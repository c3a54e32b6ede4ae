//! `Workers::apply` across real workers (without listeners): what a version
//! that never serves leaves behind. Its shared dict declarations must not
//! bind later versions: an aborted version, or a route of it that failed to
//! load, never served, so a later version may declare its dicts anew with
//! another capacity.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::{Control, Settings, Worker, Workers};
use crate::config::Config;
use crate::lua::budget::Limits;
use crate::shdict::DictStore;

const MB: u64 = 1 << 20;

fn settings(workers: usize) -> Arc<Settings> {
    Arc::new(Settings {
        max_body: 1 << 20,
        max_header: 32 << 10,
        shutdown_timeout: Duration::from_secs(1),
        workers,
        cpu: Limits {
            budget: super::DEFAULT_INSTRUCTION_BUDGET,
            slice: super::DEFAULT_SLICE,
            unpreemptible: super::DEFAULT_UNPREEMPTIBLE,
        },
        memory_limit: super::DEFAULT_MEMORY_LIMIT,
        egress: Arc::new(crate::proxy::egress::EgressPolicy::new(Vec::new(), Vec::new())),
        unix_allow: Vec::new(),
        cosocket_max_open: crate::lua::api::socket::DEFAULT_MAX_OPEN,
    })
}

/// `n` worker threads handling control messages as `http::server`'s do.
/// Worker `fails.0` loads version `fails.1` like the others but then drops
/// its reply, as a worker that dies in the middle of a Prepare: the control
/// thread has to abort that version.
fn start(n: usize, dicts: &Arc<DictStore>, fails: Option<(usize, u64)>) -> Workers {
    let (shutdown, _) = watch::channel(false);
    let mut senders = Vec::new();
    let mut threads = Vec::new();
    for id in 0..n {
        let (tx, mut rx) = mpsc::unbounded_channel::<Control>();
        senders.push(tx);
        let (settings, dicts) = (settings(n), dicts.clone());
        let thread = std::thread::Builder::new()
            .stack_size(crate::lua::stack::WORKER_STACK)
            .spawn(move || {
                block_on(async move {
                    let worker = Worker::new(
                        id,
                        super::Shared {
                            settings,
                            dicts,
                            endpoints: Arc::default(),
                        },
                    )
                    .expect("worker");
                    tokio::task::spawn_local(worker.sched.clone().dispatch());
                    while let Some(msg) = rx.recv().await {
                        match msg {
                            Control::Prepare { config, reply } if fails == Some((id, config.version)) => {
                                let (inner, loaded) = oneshot::channel();
                                worker.handle(Control::Prepare { config, reply: inner }).await;
                                let _ = loaded.await;
                                drop(reply);
                            }
                            msg => worker.handle(msg).await,
                        }
                    }
                })
            })
            .expect("spawn");
        threads.push(thread);
    }
    Workers::new(senders, shutdown, threads, dicts.clone(), Arc::default())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}

/// Version `version` of the single route `ns/r`, with `spec` (YAML, indented by 2).
fn config(dir: &Path, version: u64, spec: &str) -> Arc<Config> {
    let path = dir.join(format!("v{version}.yaml"));
    let yaml = format!(
        "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {{name: r, namespace: ns}}\nspec:\n  hostnames: [r.example]\n{spec}  locations:\n  - path: /\n    content: ngx.say('v{version}')\n"
    );
    std::fs::write(&path, yaml).expect("write");
    Arc::new(crate::standalone::load(&path, version).expect("load").config)
}

fn dict_spec(capacity: &str, persistence: &str, init: &str) -> String {
    format!("  sharedDicts: [{{name: d, capacity: {capacity}, persistence: {persistence}}}]\n  init: {init}\n")
}

#[test]
fn an_aborted_versions_dicts_do_not_bind_the_next_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dicts = Arc::new(DictStore::new());
    let workers = start(2, &dicts, Some((1, 2)));
    block_on(async {
        workers.apply(config(dir.path(), 1, "")).await.expect("v1 applies");
        // v2 declares d with 1 MiB on both workers; worker 1 fails it.
        let spec = dict_spec("1Mi", "Memory", "ngx.shared.d:set('from', 'v2')");
        workers
            .apply(config(dir.path(), 2, &spec))
            .await
            .expect_err("v2 is aborted");
        // v3 declares d with 2 MiB: v2 never served, so nothing holds d.
        let spec = dict_spec("2Mi", "Memory", "assert(ngx.shared.d:get('from') == nil)");
        let applied = workers.apply(config(dir.path(), 3, &spec)).await.expect("v3 applies");
        assert!(applied.failed.is_empty(), "v3 refused: {:?}", applied.failed);
        assert_eq!(dicts.get("ns", "d").map(|d| d.capacity()), Some(2 * MB));
        // And it is binding now that v3 serves.
        let spec = dict_spec("4Mi", "Memory", "ok = 1");
        let applied = workers.apply(config(dir.path(), 4, &spec)).await.expect("v4 applies");
        let failed = applied
            .failed
            .get(&moongate_route::RouteKey::new("ns", "r"))
            .expect("v4's route is refused");
        assert!(failed.kept_previous, "{failed}");
        assert!(failed.message.contains("already exists with 2097152 bytes"), "{failed}");
    });
}

#[test]
fn a_dict_of_a_route_that_never_loaded_does_not_bind_its_next_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dicts = Arc::new(DictStore::new());
    let workers = start(2, &dicts, None);
    block_on(async {
        // The route's first version declares d with 1 MiB and its init throws:
        // it is left out, the version commits without it.
        let spec = dict_spec("1Mi", "Memory", "error('boom')");
        let applied = workers.apply(config(dir.path(), 1, &spec)).await.expect("v1 applies");
        let failed = applied
            .failed
            .get(&moongate_route::RouteKey::new("ns", "r"))
            .expect("the route failed");
        assert!(!failed.kept_previous && failed.message.contains("boom"), "{failed}");
        // Fixed, and with another capacity: it loads.
        let spec = dict_spec("2Mi", "Memory", "ok = 1");
        let applied = workers.apply(config(dir.path(), 2, &spec)).await.expect("v2 applies");
        assert!(applied.failed.is_empty(), "v2 refused: {:?}", applied.failed);
        assert_eq!(dicts.get("ns", "d").map(|d| d.capacity()), Some(2 * MB));
    });
}

#[test]
fn a_durable_dict_declared_anew_keeps_its_data_at_the_new_capacity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    {
        let dicts = Arc::new(DictStore::with_data_dir(&data, Duration::from_millis(5)));
        let workers = start(2, &dicts, Some((0, 1)));
        block_on(async {
            let spec = dict_spec("1Mi", "Durable", "ngx.shared.d:set('from', 'v1')");
            workers
                .apply(config(dir.path(), 1, &spec))
                .await
                .expect_err("v1 is aborted");
            let spec = dict_spec(
                "2Mi",
                "Durable",
                "assert(ngx.shared.d:get('from') == 'v1'); ngx.shared.d:set('by', 'v2')",
            );
            let applied = workers.apply(config(dir.path(), 2, &spec)).await.expect("v2 applies");
            assert!(applied.failed.is_empty(), "v2 refused: {:?}", applied.failed);
            assert_eq!(dicts.get("ns", "d").map(|d| d.capacity()), Some(2 * MB));
        });
        drop(workers);
        dicts.flush_and_close();
    }
    // After a restart, what both versions wrote is there.
    let dicts = DictStore::with_data_dir(&data, Duration::from_millis(5));
    let d = dicts.declare("ns", "d", 2 * MB, true).expect("declare");
    let get = |k: &str| d.get(k.as_bytes()).expect("get").map(|f| f.value);
    use crate::shdict::Value;
    assert_eq!(get("from"), Some(Value::Str(b"v1".to_vec())));
    assert_eq!(get("by"), Some(Value::Str(b"v2".to_vec())));
}
