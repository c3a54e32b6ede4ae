//! Data-dir hygiene over the real binary: a zero-length store file is logged
//! and counted (and replaced by a working store), and a second dataplane on
//! a data dir another one holds refuses to run instead of silently keeping
//! its durable dicts in memory — for the dict store and for config.redb.

mod common;

use std::time::Duration;

use common::{Server, route};

const DURABLE: &str = "  sharedDicts:\n  - {name: d, capacity: 1Mi, persistence: Durable}\n  locations:\n  - path: /set\n    content: ngx.print(tostring(ngx.shared.d:set(ngx.var.arg_k, ngx.var.arg_v, 0, 0, {sync = true})))\n  - path: /get\n    content: ngx.print(tostring(ngx.shared.d:get(ngx.var.arg_k)))\n";
const MEMORY: &str = "  sharedDicts:\n  - {name: m, capacity: 1Mi}\n  locations:\n  - path: /get\n    content: ngx.print('memory only')\n";

/// An address nothing listens on: the dataplane keeps retrying it.
const NO_CONTROLLER: &str = "http://127.0.0.1:9";

fn corrupt_count(s: &Server) -> f64 {
    let text = s.admin_get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix("moongate_shared_dict_store_corrupt_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no corrupt-store counter in\n{text}"))
}

#[test]
fn a_zero_length_dict_store_is_logged_counted_and_replaced() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let file = data.path().join("shared_dicts.redb");
    std::fs::write(&file, b"").unwrap();
    let yaml = route("zero", DURABLE);
    let mut s = Server::builder(&yaml)
        .durable(dir)
        .arg("--admin")
        .arg("127.0.0.1:0")
        .start();
    let line = s
        .wait_log("is empty (zero length)", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no log line for the empty file:\n{}", s.logs()));
    assert!(line.contains(&file.display().to_string()), "names the file: {line}");
    assert!(
        line.contains("starting with an empty store"),
        "says what happens: {line}"
    );
    assert_eq!(corrupt_count(&s), 1.0);
    // The store made in its place works and keeps what is written.
    assert_eq!(s.get("/set?k=a&v=kept").text(), "true");
    s.signal(libc::SIGKILL);
    let _ = s.wait_exit(Duration::from_secs(30));
    let s = Server::builder(&yaml)
        .durable(dir)
        .arg("--admin")
        .arg("127.0.0.1:0")
        .start();
    assert_eq!(s.get("/get?k=a").text(), "kept");
    assert_eq!(corrupt_count(&s), 0.0, "a good file is not counted:\n{}", s.logs());
}

#[test]
fn a_zero_length_config_store_is_logged_and_counted() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("config.redb");
    std::fs::write(&file, b"").unwrap();
    let s = Server::builder("")
        .controller(NO_CONTROLLER)
        .arg("--data-dir")
        .arg(data.path().to_str().unwrap())
        .arg("--admin")
        .arg("127.0.0.1:0")
        .start();
    let line = s
        .wait_log("config store is unusable", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no log line for the empty file:\n{}", s.logs()));
    assert!(line.contains(&file.display().to_string()), "{line}");
    assert!(line.contains("empty (zero length)"), "{line}");
    assert_eq!(corrupt_count(&s), 1.0);
}

#[test]
fn a_second_dataplane_on_a_held_dict_store_exits_at_start() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let first = Server::builder(&route("first", DURABLE)).durable(dir).start();
    assert_eq!(first.get("/set?k=a&v=first").text(), "true");
    // Whatever the second one's routes: the file is held, so it must not run.
    for (what, spec) in [("durable", DURABLE), ("memory-only", MEMORY)] {
        let (status, logs) = Server::builder(&route("second", spec))
            .durable(dir)
            .start_expecting_exit();
        assert!(!status.success(), "{what}: exited with {status}");
        let expected = format!("another dataplane holds the data dir {dir}");
        assert!(
            logs.contains(&expected),
            "{what}: no clear error naming the dir:\n{logs}"
        );
        assert!(logs.contains("shared_dicts.redb"), "{what}: names the file:\n{logs}");
    }
    // The first one is untouched.
    assert_eq!(first.get("/get?k=a").text(), "first");
    let names: Vec<String> = std::fs::read_dir(data.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["shared_dicts.redb"], "nothing was moved aside");
}

#[test]
fn a_config_declaring_a_durable_dict_on_a_held_store_is_refused() {
    // Both start on a fresh dir with memory dicts only: no file, no conflict.
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let first = Server::builder(&route("r", MEMORY)).durable(dir).start();
    let second = Server::builder(&route("r", MEMORY)).durable(dir).start();
    // The first one's reload creates and holds the file…
    first.write_routes(&route("r", DURABLE));
    assert!(
        first
            .wait_log("durable store opened", Duration::from_secs(30))
            .is_some(),
        "{}",
        first.logs()
    );
    // …so the second one's reload to a durable dict is refused, and it keeps
    // serving its last good config rather than a memory-only "durable" dict.
    let from = second.log_count();
    second.write_routes(&route("r", DURABLE));
    let line = second
        .wait_log_since(from, "another dataplane holds the data dir", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the reload was not refused:\n{}", second.logs()));
    assert!(line.contains(dir), "{line}");
    assert_eq!(second.get("/get").text(), "memory only");
}

#[test]
fn a_second_dataplane_on_a_held_config_store_exits_at_start() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let builder = || Server::builder("").controller(NO_CONTROLLER).arg("--data-dir").arg(dir);
    let _first = builder().start();
    let (status, logs) = builder().start_expecting_exit();
    assert!(!status.success(), "exited with {status}");
    assert!(
        logs.contains(&format!("another dataplane holds the data dir {dir}")),
        "no clear error naming the dir:\n{logs}"
    );
    assert!(logs.contains("config.redb"), "names the file:\n{logs}");
}
