//! The request lifecycle: phase order, `ngx.exit`/`ngx.exec`/`ngx.redirect`,
//! header and body filters, the log phase, Lua errors, and the non-blocking
//! primitives (`ngx.sleep`, `ngx.flush`, user coroutines) on a single worker.

mod common;

use std::io::{BufReader, Write};
use std::time::Duration;

use common::{Server, read_chunk, read_head, route, wait_for};

fn server() -> Server {
    Server::start(&route(
        "life",
        r#"  sharedDicts:
  - {name: stats, capacity: 1Mi}
  locations:
  - path: /order
    rewrite: ngx.ctx.trail = {"rewrite:" .. ngx.get_phase()}
    access: table.insert(ngx.ctx.trail, "access:" .. ngx.get_phase())
    content: |
      table.insert(ngx.ctx.trail, "content:" .. ngx.get_phase())
      ngx.say(table.concat(ngx.ctx.trail, ","))
  - path: /deny
    access: |
      ngx.log(ngx.ERR, "access ran for deny")
      ngx.exit(403)
    content: |
      ngx.log(ngx.ERR, "content ran for deny")
      ngx.say("content ran")
  - path: /allow
    access: |
      ngx.ctx.who = "access"
      ngx.exit(ngx.OK)
      ngx.ctx.who = "after exit"
    content: ngx.say("allowed by ", ngx.ctx.who)
  - path: /exec-from
    rewrite: ngx.ctx.from = "yes"
    content: ngx.exec("/exec-to", "a=1&b=2")
  - path: /exec-to
    content: |
      ngx.say("uri=", ngx.var.uri, " args=", ngx.var.args or "", " internal=", tostring(ngx.req.is_internal()),
              " ctx=", tostring(ngx.ctx.from))
  - path: /redirect
    match: Exact
    content: ngx.redirect("/elsewhere")
  - path: /redirect-abs
    match: Exact
    access: ngx.redirect("http://example.com/x?y=1", 301)
  - path: /filtered
    content: |
      ngx.header["X-Orig"] = "from content"
      ngx.print("hello ")
      ngx.say("world")
    headerFilter: |
      ngx.header["X-Orig"] = "changed by filter"
      ngx.header["X-Added"] = ngx.get_phase()
      ngx.header.content_length = nil
    bodyFilter: ngx.arg[1] = string.upper(ngx.arg[1])
  - path: /filter-exit
    content: |
      ngx.status = 201
      ngx.say("dropped by the filter")
    headerFilter: |
      if ngx.var.arg_code then return ngx.exit(tonumber(ngx.var.arg_code)) end
  - path: /unsafe-uri
    content: |
      local ok, err = pcall(ngx.req.set_uri, "/a\r\nb")
      ngx.say(err)
      ngx.req.set_uri("/a\rb", false, true)
      ngx.req.set_uri_args("x=1\r\nHost: evil")
      ngx.say(#ngx.var.uri, " ", ngx.var.args)
  - path: /filter-error
    content: ngx.say("secret-token")
    bodyFilter: |
      local chunk = ngx.arg[1]
      if chunk:find("secret", 1, true) then error("redaction failed") end
  - path: /logged
    content: ngx.say("logged")
    log: ngx.shared.stats:incr("logged", 1, 0)
  - path: /count
    content: ngx.say(ngx.shared.stats:get("logged") or 0)
  - path: /sleep
    content: |
      ngx.update_time()
      local s = ngx.now()
      ngx.sleep(0.5)
      ngx.update_time()
      ngx.say(string.format("%.3f %.3f", s, ngx.now()))
  - path: /stream
    content: |
      ngx.say("first")
      ngx.flush(true)
      ngx.sleep(2)
      ngx.shared.stats:set("stream_done", true)
      ngx.say("second")
  - path: /stream-done
    content: ngx.say(tostring(ngx.shared.stats:get("stream_done")))
  - path: /coroutines
    content: |
      local gen = coroutine.wrap(function(a)
        local b = coroutine.yield(a + 1)
        ngx.sleep(0.05)
        return b * 2
      end)
      local r1 = gen(1)
      local r2 = gen(10)
      local co = coroutine.create(function()
        ngx.sleep(0.01)
        coroutine.yield("y")
        ngx.sleep(0.01)
        return "done"
      end)
      local ok1, v1 = coroutine.resume(co)
      local ok2, v2 = coroutine.resume(co)
      ngx.say(r1, " ", r2, " ", tostring(ok1), " ", v1, " ", tostring(ok2), " ", v2, " ", coroutine.status(co))
  - path: /boom
    content: |
      local x = 1
      error("kaboom")
  - path: /access-boom
    access: |
      local t = nil
      return t.field
    content: ngx.say("unreachable")
  - path: /mark
    content: |
      ngx.log(ngx.ERR, "mark ", ngx.var.arg_n)
      ngx.say("marked")
  - path: /
    content: ngx.say("fine")
"#,
    ))
}

#[test]
fn phases_run_rewrite_access_content_in_order() {
    let s = server();
    let r = s.get("/order");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "rewrite:rewrite,access:access,content:content\n")
    );
}

#[test]
fn exit_in_access_stops_or_continues() {
    let s = server();
    let r = s.get("/deny");
    assert_eq!(r.status, 403);
    assert!(!r.text().contains("content ran"), "{}", r.text());
    s.wait_log("access ran for deny", Duration::from_secs(10))
        .expect("access handler ran");
    // Everything /deny logged precedes this mark (one worker, requests in sequence).
    assert_eq!(s.get("/mark?n=deny").text(), "marked\n");
    s.wait_log("mark deny", Duration::from_secs(10)).expect("mark logged");
    assert!(
        !s.logs().contains("content ran for deny"),
        "content must not run after ngx.exit(403)"
    );

    let r = s.get("/allow");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "allowed by access\n"),
        "ngx.exit(ngx.OK) ends access only"
    );
}

#[test]
fn exec_is_an_internal_redirect() {
    let s = server();
    let r = s.get("/exec-from");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "uri=/exec-to args=a=1&b=2 internal=true ctx=nil\n",
        "ngx.exec resets ngx.ctx"
    );
    let r = s.get("/exec-to?q=9");
    assert_eq!(r.text(), "uri=/exec-to args=q=9 internal=false ctx=nil\n");
}

#[test]
fn redirect_sends_location() {
    let s = server();
    let r = s.get("/redirect");
    assert_eq!(r.status, 302);
    let loc = r.header("location").expect("Location header");
    assert!(loc.ends_with("/elsewhere"), "{loc}");
    let r = s.get("/redirect-abs");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("http://example.com/x?y=1"));
}

#[test]
fn header_and_body_filters_rewrite_the_response() {
    let s = server();
    let r = s.get("/filtered");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-orig"), Some("changed by filter"));
    assert_eq!(r.header("x-added"), Some("header_filter"));
    assert_eq!(r.text(), "HELLO WORLD\n");
}

/// `ngx.exit(status)` in header_filter finalizes the response with that
/// status and no body (nginx's filter_finalize).
#[test]
fn exit_in_header_filter_sends_the_status_without_the_body() {
    let s = server();
    let r = s.get("/filter-exit?code=201");
    assert_eq!(r.status, 201, "{}", s.logs());
    assert_eq!(r.text(), "");
    let r = s.get("/filter-exit?code=403");
    assert_eq!(r.status, 403);
    assert!(!r.text().contains("dropped"), "{}", r.text());
    let r = s.get("/filter-exit");
    assert_eq!((r.status, r.text().as_str()), (201, "dropped by the filter\n"));
}

/// A CR or LF must not reach an upstream's request line: `set_uri` refuses
/// it unless `binary` is true, `set_uri_args` percent-encodes it.
#[test]
fn unsafe_uri_bytes_are_refused_or_escaped() {
    let s = server();
    let r = s.get("/unsafe-uri");
    assert_eq!(r.status, 200, "{}", s.logs());
    assert_eq!(
        r.text(),
        "unsafe byte \"0x0d\" in uri \"/a\r\nb\"\n4 x=1%0D%0AHost: evil\n"
    );
}

#[test]
fn log_phase_runs_after_each_request() {
    let s = server();
    for _ in 0..3 {
        assert_eq!(s.get("/logged").text(), "logged\n");
    }
    // The log phase runs after the response is sent: poll.
    let n = wait_for(Duration::from_secs(10), || {
        (s.get("/count").text() == "3\n").then_some(())
    });
    assert!(
        n.is_some(),
        "log handler ran 3 times; count is {}",
        s.get("/count").text()
    );
}

#[test]
fn lua_errors_are_500_and_logged_with_their_site() {
    let s = server();
    let r = s.get("/boom");
    assert_eq!(r.status, 500);
    let line = s.wait_log("kaboom", Duration::from_secs(10)).expect("error logged");
    assert!(line.contains("content_by_lua(default/life /boom):2:"), "{line}");
    assert!(
        line.contains("default/life") && line.contains("/boom") && line.contains("content"),
        "{line}"
    );

    let r = s.get("/access-boom");
    assert_eq!(r.status, 500);
    assert!(!r.text().contains("unreachable"));
    let line = s.wait_log("access_by_lua(default/life /access-boom):2:", Duration::from_secs(10));
    assert!(line.is_some(), "access error names its chunk and line:\n{}", s.logs());

    for _ in 0..3 {
        assert_eq!(s.get("/after-errors").text(), "fine\n", "the server keeps serving");
    }
}

/// Parses "START END" as printed by /sleep.
fn interval(text: &str) -> (f64, f64) {
    let mut it = text
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or_else(|_| panic!("bad interval {text:?}")));
    (it.next().unwrap(), it.next().unwrap())
}

#[test]
fn sleep_does_not_block_the_worker() {
    let s = server();
    let a = s.get_async("/sleep");
    let b = s.get_async("/sleep");
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_eq!((a.status, b.status), (200, 200));
    let ((s1, e1), (s2, e2)) = (interval(&a.text()), interval(&b.text()));
    assert!(e1 - s1 >= 0.45 && e2 - s2 >= 0.45, "each slept: {a:?} {b:?}");
    // On one worker, a blocking sleep would serialize them: one would start after the other ended.
    assert!(
        s1.max(s2) < e1.min(e2),
        "the two sleeps overlap: [{s1}, {e1}] and [{s2}, {e2}]"
    );
}

#[test]
fn flush_streams_before_the_handler_finishes() {
    let s = server();
    let mut stream = s.connect();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(stream);
    let (_, status, headers) = read_head(&mut r).unwrap();
    assert_eq!(status, 200);
    assert!(
        headers.iter().any(|(n, v)| n == "transfer-encoding" && v == "chunked"),
        "{headers:?}"
    );
    let first = read_chunk(&mut r).unwrap().expect("a first chunk");
    assert_eq!(
        String::from_utf8_lossy(&first),
        "first\n",
        "the flushed output arrives as its own chunk"
    );
    // The handler is still sleeping: it has not reached the line after ngx.sleep.
    assert_eq!(
        s.get("/stream-done").text(),
        "nil\n",
        "first chunk arrived before the handler finished"
    );
    let mut rest = Vec::new();
    while let Some(c) = read_chunk(&mut r).unwrap() {
        rest.extend(c);
    }
    assert_eq!(String::from_utf8_lossy(&rest), "second\n");
    assert_eq!(s.get("/stream-done").text(), "true\n");
}

#[test]
fn user_coroutines_survive_ngx_sleep() {
    let s = server();
    let r = s.get("/coroutines");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "2 20 true y true done dead\n"),
        "logs:\n{}",
        s.logs()
    );
}

#[test]
fn body_filter_error_never_sends_the_unfiltered_chunk() {
    let s = server();
    let raw = s.raw_bytes(b"GET /filter-error HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let text = String::from_utf8_lossy(&raw);
    s.wait_log(
        "body_filter_by_lua(default/life /filter-error):2:",
        Duration::from_secs(10),
    )
    .unwrap_or_else(|| panic!("body filter error logged with its site:\n{}", s.logs()));
    // nginx aborts the response when a body filter fails; the chunk it failed on must not go out as is.
    assert!(
        !text.contains("secret-token"),
        "unfiltered output leaked after a body_filter error: {text:?}"
    );
    assert_eq!(s.get("/after").text(), "fine\n", "the server keeps serving");
}

#[test]
fn subrequests_capture_status_headers_and_body() {
    let s = Server::start(&route(
        "sub",
        r#"  locations:
  - path: /sub
    content: |
      ngx.header["X-Sub"] = ngx.var.arg_n
      ngx.status = 201
      ngx.say("sub ", ngx.var.arg_n, " ", ngx.req.get_method(), " ", tostring(ngx.is_subrequest), " ", ngx.ctx.tag or "-")
  - path: /main
    content: |
      local res = ngx.location.capture("/sub?n=1", { ctx = { tag = "shared" } })
      ngx.say(res.status, " ", res.header["X-Sub"], " ", res.body)
      local a, b = ngx.location.capture_multi{ {"/sub", { args = { n = 2 }, method = ngx.HTTP_POST, body = "x" }}, {"/sub?n=3"} }
      ngx.say(a.body, b.body, tostring(ngx.is_subrequest))
"#,
    ));
    let r = s.get("/main");
    assert_eq!(r.status, 200, "{}", s.logs());
    assert_eq!(
        r.text(),
        "201 1 sub 1 GET true shared\n\nsub 2 POST true -\nsub 3 GET true -\nfalse\n"
    );
}

#[test]
fn timers_fire_with_args_and_can_be_cancelled() {
    let s = Server::start(&route(
        "timers",
        r#"  sharedDicts: [{name: t, capacity: 1m}]
  locations:
  - path: /arm
    content: |
      local t = ngx.shared.t
      local keep = ngx.timer.at(0.05, function(premature, v) t:set("kept", v) end, "ran")
      local drop = ngx.timer.at(0.05, function() t:set("dropped", "ran") end)
      ngx.say(ngx.timer.pending_count(), " ", tostring(moongate.timer.cancel(drop)), " ", ngx.timer.pending_count())
      ngx.say(select(2, moongate.timer.cancel(drop)))
      ngx.sleep(0.3)
      ngx.say(t:get("kept"), " ", tostring(t:get("dropped")), " ", tostring(moongate.timer.cancel(keep)))
"#,
    ));
    let r = s.get("/arm");
    assert_eq!(r.status, 200, "{}", s.logs());
    assert_eq!(r.text(), "2 true 1\nnot found\nran nil nil\n");
}
