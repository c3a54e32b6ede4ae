//! Finding 5, limits in a route's config are ceilings set by the operator,
//! never raised by a route. Finding 7, the blast radius of bad config: one
//! route whose `init` throws, or one refused limit, must cost only that
//! route, at startup and on reload. Finding 8, smaller
//! HTTP findings: Host validation (RFC 9112 §3.2, as nginx), the body filter
//! after `ngx.flush`, and a trailing dot in Host.

use super::{WAIT, assert_ok, content, docs, tenant};
use crate::common::{Server, route_in, wait_for};

/// Finding 5: a route's `limits.maxBodySize: 1Gi` overrode the operator's
/// `--max-body-size` (default 1 MiB) and the body was buffered in memory.
/// After: the operator's limit is a ceiling, so a 2 MiB body gets 413.
#[test]
fn a_routes_max_body_size_cannot_raise_the_operators_limit() {
    let s = Server::start(&route_in(
        "a",
        "bodies",
        "  hostnames: [a.example]\n  limits: {maxBodySize: 1Gi}\n  locations:\n  - path: /\n    needRequestBody: true\n    content: |\n      ngx.say('read ', #(ngx.req.get_body_data() or ''))\n",
    ));
    let body = "x".repeat(2 << 20);
    let mut raw = format!(
        "POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body.as_bytes());
    let r = s.try_raw(&raw).expect("a response");
    assert_eq!(r.status, 413, "2 MiB over the operator's 1 MiB: {:?}", r.text());
}

/// Finding 5: a 64 GiB shared dict was accepted. After: the route declaring
/// it is refused, with a log line naming the dict, and the other routes of the
/// same file serve.
#[test]
fn a_shared_dict_over_the_capacity_limit_refuses_only_its_route() {
    let s = Server::start(&docs(&[
        tenant(
            "a",
            "greedy",
            "a.example",
            "  sharedDicts: [{name: huge, capacity: 64Gi}]\n",
            &[content("/", "ngx.say('greedy served')")],
        ),
        tenant(
            "a",
            "modest",
            "a2.example",
            "",
            &[content("/", "ngx.say('modest served')")],
        ),
    ]));
    assert_ok(
        &s.get_host("a2.example", "/"),
        "modest served\n",
        "the other route serves",
        &s,
    );
    assert_ne!(
        s.get_host("a.example", "/").text(),
        "greedy served\n",
        "the refused route serves"
    );
    let line = s.wait_log("huge", WAIT);
    assert!(
        line.as_deref().is_some_and(|l| l.contains("a/greedy")),
        "a log line names the dict and its route: {line:?}; logs:\n{}",
        s.logs()
    );
}

/// Route a/broken, whose `init` throws when `throws`, and route b/healthy, both saying `version`.
fn broken_and_healthy(throws: bool, version: &str) -> String {
    let init = if throws {
        "error('broken init boom')"
    } else {
        "ready = true"
    };
    docs(&[
        tenant(
            "a",
            "broken",
            "a.example",
            &format!("  init: {init}\n"),
            &[content("/", &format!("ngx.say('broken {version}')"))],
        ),
        tenant(
            "b",
            "healthy",
            "b.example",
            "",
            &[content("/", &format!("ngx.say('healthy {version}')"))],
        ),
    ])
}

/// Finding 7: a route whose `init` throws made the dataplane exit at startup.
/// After: it starts, serves the other routes, and logs the failed route's
/// name and error.
#[test]
fn a_route_whose_init_throws_does_not_stop_the_others_from_starting() {
    let s = Server::start(&broken_and_healthy(true, "v1"));
    assert_ok(
        &s.get_host("b.example", "/"),
        "healthy v1\n",
        "the healthy route serves",
        &s,
    );
    let line = s.wait_log("broken init boom", WAIT);
    assert!(
        line.as_deref().is_some_and(|l| l.contains("a/broken")),
        "the failed route is logged with its error: {line:?}"
    );
    assert_ne!(
        s.get_host("a.example", "/").text(),
        "broken v1\n",
        "the failed route serves"
    );
}

/// Finding 7: on reload, one route whose `init` throws kept every other
/// route's valid change from applying. After: the other routes' changes apply.
#[test]
fn a_route_whose_init_throws_does_not_stop_the_others_changes_from_applying() {
    let s = Server::start(&broken_and_healthy(false, "v1"));
    assert_ok(&s.get_host("b.example", "/"), "healthy v1\n", "before the reload", &s);
    s.write_routes(&broken_and_healthy(true, "v2"));
    s.wait_log("broken init boom", WAIT)
        .unwrap_or_else(|| panic!("the failing init was never reported; logs:\n{}", s.logs()));
    let applied = wait_for(WAIT, || {
        (s.get_host("b.example", "/").text() == "healthy v2\n").then_some(())
    });
    assert!(
        applied.is_some(),
        "b/healthy's change never applied: {:?}; logs:\n{}",
        s.get_host("b.example", "/").text(),
        s.logs()
    );
}

/// Finding 7: a route whose `init` threw on its first version still left the
/// shared dict it declared behind, so fixing the route and changing the
/// dict's capacity was refused ("already exists with ...") until a restart,
/// though that dict never served. After: a dict is only kept once a route
/// declaring it serves; the fixed version loads with the new capacity.
#[test]
fn a_dict_of_a_route_that_never_loaded_can_be_declared_with_another_capacity() {
    let version = |capacity: &str, init: &str| {
        tenant(
            "a",
            "counter",
            "a.example",
            &format!("  sharedDicts: [{{name: hits, capacity: {capacity}}}]\n  init: {init}\n"),
            &[content("/", "ngx.say(ngx.shared.hits:capacity())")],
        )
    };
    let s = Server::builder(&version("1Mi", "error('first init boom')"))
        .workers(2)
        .start();
    s.wait_log("first init boom", WAIT)
        .unwrap_or_else(|| panic!("the failing init was never reported; logs:\n{}", s.logs()));
    let from = s.log_count();
    s.write_routes(&version("2Mi", "ready = true"));
    s.wait_log_since(from, "config reloaded", WAIT)
        .unwrap_or_else(|| panic!("the reload did not finish; logs:\n{}", s.logs()));
    let served = wait_for(WAIT, || {
        (s.get_host("a.example", "/").text() == "2097152\n").then_some(())
    });
    assert!(
        served.is_some(),
        "the fixed route does not serve with its new capacity: {:?}; logs:\n{}",
        s.get_host("a.example", "/").text(),
        s.logs()
    );
}

fn catch_all(lua: &str) -> Server {
    Server::start(&route_in("a", "edge", &format!("  locations:\n{}", content("/", lua))))
}

/// Finding 8: a request without Host, or with two Host headers, got 200.
/// After: 400, as RFC 9112 and nginx; HTTP/1.0 without Host is still served.
#[test]
fn a_request_without_host_or_with_two_is_400_but_http_1_0_without_host_is_served() {
    let s = catch_all("ngx.say('served')");
    let no_host = s
        .try_raw(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .expect("a response");
    assert_eq!(no_host.status, 400, "HTTP/1.1 without Host: {no_host:?}");
    let two = s
        .try_raw(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n")
        .expect("a response");
    assert_eq!(two.status, 400, "two Host headers: {two:?}");
    let old = s.try_raw(b"GET / HTTP/1.0\r\n\r\n").expect("a response");
    assert_ok(&old, "served\n", "HTTP/1.0 without Host", &s);
}

/// Finding 8: with a `bodyFilter`, `ngx.print` + `ngx.flush` in a loop sent only
/// the first chunk (the phase stayed `body_filter` after the flush). After:
/// every chunk arrives, each through the filter.
#[test]
fn every_flushed_chunk_goes_through_the_body_filter_and_arrives() {
    let s = Server::start(&route_in(
        "a",
        "filtered",
        "  locations:\n  - path: /\n    content: |\n      for i = 1, 5 do\n        ngx.print('chunk', i, ';')\n        ngx.flush(true)\n      end\n    bodyFilter: |\n      if ngx.arg[1] ~= '' then ngx.arg[1] = '[' .. ngx.arg[1]:upper() .. ']' end\n",
    ));
    let r = s.get("/");
    assert_ok(
        &r,
        "[CHUNK1;][CHUNK2;][CHUNK3;][CHUNK4;][CHUNK5;]",
        "every chunk, filtered",
        &s,
    );
}

/// Finding 8: `Host: SHOP.EXAMPLE.COM.` (a trailing dot) did not select the
/// route for `shop.example.com` as nginx does. After: it does, with a port too.
#[test]
fn a_trailing_dot_in_host_selects_the_route_as_in_nginx() {
    let s = Server::start(&docs(&[
        tenant(
            "shop",
            "shop",
            "shop.example.com",
            "",
            &[content("/", "ngx.say('shop')")],
        ),
        route_in(
            "other",
            "fallback",
            &format!("  locations:\n{}", content("/", "ngx.say('fallback')")),
        ),
    ]));
    for host in ["shop.example.com", "SHOP.EXAMPLE.COM.", "shop.example.com.:80"] {
        assert_ok(&s.get_host(host, "/"), "shop\n", &format!("Host: {host}"), &s);
    }
}

/// Finding 7 (and 4): a route's `init` ran on the worker thread with nothing
/// else served until it ended. After: `init` is preempted like a handler, so
/// a long one shares its worker — here it can only finish because a request
/// is served while it runs.
#[test]
fn a_long_init_shares_its_worker_with_the_requests_served_meanwhile() {
    let flags = "  sharedDicts: [{name: flags, capacity: 1Mi}]\n";
    let serving = route_in(
        "a",
        "server",
        &format!(
            "  hostnames: [a.example]\n{flags}  locations:\n  - path: /running\n    content: ngx.say(ngx.shared.flags:get('running') or 'no')\n  - path: /go\n    content: ngx.shared.flags:set('go', true) ngx.say('set')\n"
        ),
    );
    let waiting = route_in(
        "a",
        "waiter",
        &format!(
            "  hostnames: [b.example]\n{flags}  init: |\n    ngx.shared.flags:set('running', 'yes')\n    local n = 0\n    while not ngx.shared.flags:get('go') do n = n + 1 end\n    SPINS = n\n  locations:\n  - path: /\n    content: ngx.say('waited ', SPINS > 0)\n"
        ),
    );
    // A budget no init here reaches: only the request can end the wait.
    let s = Server::builder(&serving)
        .workers(1)
        .arg("--instruction-budget")
        .arg("100000000000")
        .start();
    assert_eq!(s.get_host("a.example", "/running").text(), "no\n");
    let from = s.log_count();
    s.write_routes(&format!("{serving}---\n{waiting}"));
    wait_for(WAIT, || {
        (s.get_host("a.example", "/running").text() == "yes\n").then_some(())
    })
    .unwrap_or_else(|| panic!("the worker served nothing while init ran:\n{}", s.logs()));
    assert_eq!(s.get_host("a.example", "/go").text(), "set\n");
    s.wait_log_since(from, "config reloaded", WAIT)
        .unwrap_or_else(|| panic!("the reload did not finish:\n{}", s.logs()));
    assert_eq!(s.get_host("b.example", "/").text(), "waited true\n");
}
