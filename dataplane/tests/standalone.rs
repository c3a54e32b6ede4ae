//! Standalone mode end to end: reloading the routes file (by polling and on
//! SIGHUP), keeping the last good config when a new one is bad, requests in
//! flight finishing on their old version, `--check`, and graceful SIGTERM.

mod common;

use std::time::Duration;

use common::{Server, check, route, wait_for};

const RELOAD: Duration = Duration::from_secs(30);

/// Routes whose `/v` says `version`; `/slow` logs, sleeps `slow` seconds, then says it.
fn versioned(version: &str, slow: f64) -> String {
    route(
        "reload",
        &format!(
            r#"  locations:
  - path: /v
    content: ngx.say("{version}")
  - path: /slow
    content: |
      ngx.log(ngx.ERR, "slow request started on {version}")
      ngx.sleep({slow})
      ngx.say("slow {version}")
"#
        ),
    )
}

fn wait_body(s: &Server, path: &str, want: &str) -> bool {
    wait_for(RELOAD, || (s.get(path).text() == want).then_some(())).is_some()
}

#[test]
fn file_change_is_picked_up_and_bad_lua_keeps_the_last_good_config() {
    let s = Server::start(&versioned("A", 0.0));
    assert_eq!(s.get("/v").text(), "A\n");

    // No signal: the once-a-second poll sees the new content.
    s.write_routes(&versioned("B", 0.0));
    assert!(wait_body(&s, "/v", "B\n"), "B never served; logs:\n{}", s.logs());
    s.wait_log("config reloaded", RELOAD).expect("reload logged");

    let before = s.log_count();
    let bad = route(
        "reload",
        r#"  locations:
  - path: /v
    content: |
      local ok = true
      ngx.say("C"
"#,
    );
    s.write_routes(&bad);
    let line = s
        .wait_log_since(before, "config rejected, still serving the last good one", RELOAD)
        .unwrap_or_else(|| panic!("rejection not logged:\n{}", s.logs()));
    for part in [
        "routes.yaml",
        "route default/reload",
        "location /v",
        "content",
        "line 2",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
    for _ in 0..3 {
        assert_eq!(s.get("/v").text(), "B\n", "the last good config keeps serving");
    }

    // Fixing the file recovers.
    s.write_routes(&versioned("D", 0.0));
    assert!(wait_body(&s, "/v", "D\n"), "D never served; logs:\n{}", s.logs());
}

#[test]
fn malformed_yaml_on_reload_is_rejected() {
    let s = Server::start(&versioned("A", 0.0));
    let before = s.log_count();
    s.write_routes("apiVersion: [\n");
    s.signal(libc::SIGHUP);
    let line = s.wait_log_since(before, "config rejected", RELOAD).expect("rejected");
    assert!(line.contains("routes.yaml"), "{line}");
    assert_eq!(s.get("/v").text(), "A\n");
}

#[test]
fn request_in_flight_during_reload_finishes_on_its_version() {
    let s = Server::builder(&versioned("old", 1.0)).workers(2).start();
    let slow = s.get_async("/slow");
    s.wait_log("slow request started on old", RELOAD)
        .expect("slow request started");
    let before = s.log_count();
    s.write_routes(&versioned("new", 1.0));
    s.signal(libc::SIGHUP);
    s.wait_log_since(before, "config reloaded", RELOAD)
        .unwrap_or_else(|| panic!("no reload:\n{}", s.logs()));
    assert_eq!(s.get("/v").text(), "new\n", "new requests see the new version");
    let r = slow.join().unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "slow old\n"),
        "the in-flight request kept its version"
    );
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_and_exits_0() {
    let mut s = Server::builder(&versioned("A", 1.0)).workers(2).start();
    let slow = s.get_async("/slow");
    s.wait_log("slow request started on A", RELOAD)
        .expect("slow request started");
    s.signal(libc::SIGTERM);
    let r = slow.join().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "slow A\n"), "logs:\n{}", s.logs());
    let status = s
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("did not exit:\n{}", s.logs()));
    assert_eq!(status.code(), Some(0), "logs:\n{}", s.logs());
    assert!(std::net::TcpStream::connect(s.addr()).is_err(), "no longer accepting");
}

#[test]
fn sigterm_when_idle_exits_0() {
    let mut s = Server::start(&versioned("A", 0.0));
    assert_eq!(s.get("/v").status, 200);
    s.signal(libc::SIGINT);
    let status = s.wait_exit(Duration::from_secs(30)).expect("exited");
    assert_eq!(status.code(), Some(0));
}

/// Writes `yaml` to DIR/`name` and runs `--check` on it; returns (exit code, stdout + stderr).
fn run_check(name: &str, yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, yaml).unwrap();
    let out = check(&path);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn check_accepts_a_valid_file() {
    let (code, out) = run_check("good.yaml", &versioned("A", 0.0));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("good.yaml") && out.contains("is ok"), "{out}");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/hello.yaml");
    let out = check(std::path::Path::new(example));
    assert_eq!(
        out.status.code(),
        Some(0),
        "examples/hello.yaml: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn check_reports_lua_syntax_errors_with_their_site() {
    let yaml = route(
        "broken",
        r#"  locations:
  - path: /fine
    content: ngx.say("ok")
  - path: /broken
    access: |
      local a = 1
      local b = 2
      if a then
"#,
    );
    let (code, out) = run_check("syntax.yaml", &yaml);
    assert_eq!(code, Some(1), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("/broken"))
        .unwrap_or_else(|| panic!("no problem line:\n{out}"));
    for part in [
        "syntax.yaml",
        "route default/broken",
        "location /broken",
        "access",
        "line ",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
    assert!(
        !out.contains("location /fine"),
        "only the broken location is reported:\n{out}"
    );
}

#[test]
fn check_reports_each_problem_on_its_own_line() {
    let yaml = route(
        "two",
        r#"  locations:
  - path: /x
    content: ngx.say(
  - path: /y
    rewrite: "local = 1"
"#,
    );
    let (code, out) = run_check("two.yaml", &yaml);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("location /x") && l.contains("content") && l.contains("line 1")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("location /y") && l.contains("rewrite") && l.contains("line 1")),
        "{out}"
    );
}

#[test]
fn check_reports_malformed_yaml_with_the_file() {
    let (code, out) = run_check("mangled.yaml", "apiVersion: moongate.dev/v1alpha1\nkind: [LuaRoute\n");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("mangled.yaml"), "{out}");
}

#[test]
fn check_names_an_unknown_field() {
    let yaml = route("typo", "  locations:\n  - path: /\n    contnet: ngx.say(1)\n");
    let (code, out) = run_check("typo.yaml", &yaml);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("typo.yaml") && out.contains("contnet"), "{out}");
}

#[test]
fn check_rejects_an_invalid_regex_location() {
    let yaml = route(
        "re",
        "  locations:\n  - path: '^/(unclosed'\n    match: Regex\n    content: ngx.say(1)\n",
    );
    let (code, out) = run_check("regex.yaml", &yaml);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("^/(unclosed"), "the bad regex is named:\n{out}");
}

#[test]
fn init_error_on_reload_keeps_the_serving_version_on_every_worker() {
    let with_init = |init: &str| {
        route(
            "init",
            &format!("  init: {init}\n  locations:\n  - path: /\n    content: ngx.say(v)\n"),
        )
    };
    let s = Server::builder(&with_init(r#"v = "A""#)).workers(2).start();
    assert_eq!(s.get("/").text(), "A\n");
    let before = s.log_count();
    s.write_routes(&with_init(r#"error("init blew up")"#));
    s.signal(libc::SIGHUP);
    let line = s
        .wait_log_since(before, "route failed to load", RELOAD)
        .unwrap_or_else(|| panic!("{}", s.logs()));
    assert!(
        line.contains("init_by_lua(default/init):1:")
            && line.contains("init blew up")
            && line.contains("its previous version keeps serving"),
        "{line}"
    );
    for _ in 0..4 {
        assert_eq!(s.get("/").text(), "A\n", "no worker switched to the failed version");
    }
    s.write_routes(&with_init(r#"v = "C""#));
    assert!(wait_body(&s, "/", "C\n"), "{}", s.logs());
}

#[test]
fn shutdown_timeout_bounds_the_wait_for_requests_in_flight() {
    let mut s = Server::builder(&versioned("A", 120.0))
        .arg("--shutdown-timeout")
        .arg("1")
        .start();
    let slow = s.get_async_raw("/slow");
    s.wait_log("slow request started on A", RELOAD)
        .expect("slow request started");
    s.signal(libc::SIGTERM);
    // The handler sleeps two minutes; the process must not wait for it.
    let status = s
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("did not exit:\n{}", s.logs()));
    assert_eq!(status.code(), Some(0), "logs:\n{}", s.logs());
    let got = slow.join().unwrap();
    assert!(
        !String::from_utf8_lossy(&got).contains("slow A"),
        "the cut-off request did not complete"
    );
}

#[test]
fn idle_keep_alive_connections_do_not_hold_up_shutdown() {
    let mut s = Server::builder(&versioned("A", 0.0))
        .arg("--shutdown-timeout")
        .arg("300")
        .start();
    let idle = s.connect();
    let mut w = idle.try_clone().unwrap();
    std::io::Write::write_all(&mut w, b"GET /v HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut r = std::io::BufReader::new(idle);
    assert_eq!(common::read_response(&mut r).unwrap().text(), "A\n");
    s.signal(libc::SIGTERM);
    // Far less than the 300 s shutdown timeout: idle connections are closed at once.
    let status = s
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("did not exit:\n{}", s.logs()));
    assert_eq!(status.code(), Some(0));
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut r, &mut rest);
    assert!(rest.is_empty(), "{rest:?}");
}

/// Reads `/metrics` from the admin listener the server logged at start.
fn scrape(s: &Server) -> String {
    let line = s
        .wait_log("admin on http://", Duration::from_secs(10))
        .expect("admin address logged");
    let addr = line[line.find("admin on http://").unwrap() + "admin on http://".len()..]
        .trim()
        .to_string();
    let mut conn = std::net::TcpStream::connect(&addr).expect("connect admin");
    std::io::Write::write_all(
        &mut conn,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut conn, &mut out).unwrap();
    out
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[test]
fn metrics_count_responses_errors_and_reloads() {
    let s = Server::builder(&route(
        "metrics",
        "  locations:\n  - path: /ok\n    content: ngx.say('ok')\n  - path: /boom\n    content: error('boom')\n",
    ))
    .arg("--admin")
    .arg("127.0.0.1:0")
    .start();
    for _ in 0..3 {
        assert_eq!(s.get("/ok").status, 200);
    }
    assert_eq!(s.get("/boom").status, 500);
    assert_eq!(s.get("/missing").status, 404);
    let text = scrape(&s);
    assert_eq!(metric(&text, "moongate_responses_total{class=\"2xx\"}"), 3.0, "{text}");
    assert_eq!(metric(&text, "moongate_responses_total{class=\"5xx\"}"), 1.0, "{text}");
    assert_eq!(metric(&text, "moongate_responses_total{class=\"4xx\"}"), 1.0, "{text}");
    assert_eq!(
        metric(&text, "moongate_lua_errors_total{phase=\"content\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "moongate_config_version"), 1.0, "{text}");

    s.write_routes("apiVersion: [\n");
    s.signal(libc::SIGHUP);
    let rejected = wait_for(Duration::from_secs(10), || {
        (metric(&scrape(&s), "moongate_config_reloads_total{result=\"rejected\"}") == 1.0).then_some(())
    });
    assert!(rejected.is_some(), "{}", scrape(&s));
}

#[test]
fn durable_dicts_survive_restart_and_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_string();
    let yaml = route(
        "durable",
        "  sharedDicts:\n  - {name: hits, capacity: 1Mi, persistence: Durable}\n  - {name: scratch, capacity: 1Mi}\n  locations:\n  - path: /hit\n    content: |\n      ngx.shared.scratch:incr('n', 1, 0)\n      ngx.say(ngx.shared.hits:incr('n', 1, 0), ' ', ngx.shared.scratch:get('n'))\n",
    );
    let start = || Server::builder(&yaml).durable(&data_dir).start();

    let mut s = start();
    for i in 1..=3 {
        assert_eq!(s.get("/hit").text(), format!("{i} {i}\n"));
    }
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(10)).and_then(|st| st.code()), Some(0));
    drop(s);

    // The durable count continues; the memory dict starts over.
    let mut s = start();
    assert_eq!(s.get("/hit").text(), "4 1\n");
    // Well past the 10 ms commit window, a kill -9 loses nothing acknowledged.
    std::thread::sleep(Duration::from_millis(300));
    s.signal(libc::SIGKILL);
    let _ = s.wait_exit(Duration::from_secs(10));
    drop(s);

    let s = start();
    assert_eq!(s.get("/hit").text(), "5 1\n");
}

#[test]
fn check_reports_a_dict_declared_twice_with_different_sizes() {
    let dict = |name: &str, ns: &str, size: &str, path: &str| {
        format!(
            "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hostnames: [{ns}.example.com]\n  sharedDicts: [{{name: d, capacity: {size}}}]\n  locations: [{{path: {path}, content: \"ngx.say(1)\"}}]\n"
        )
    };
    // Another namespace (on a hostname of its own) may use the same name at any
    // size: dicts are scoped to it.
    let ok = [dict("a", "default", "1Mi", "/a"), dict("c", "other", "2Mi", "/c")].join("---\n");
    let (code, out) = run_check("scoped.yaml", &ok);
    assert_eq!(code, Some(0), "{out}");
    let conflict = [dict("a", "default", "1Mi", "/a"), dict("b", "default", "2Mi", "/b")].join("---\n");
    let (code, out) = run_check("conflict.yaml", &conflict);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("route default/b") && out.contains("\"d\"") && out.contains("2097152"),
        "{out}"
    );
}
