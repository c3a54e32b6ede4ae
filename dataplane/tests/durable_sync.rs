//! Sync writes (`{sync = true}`) and the durable sequence numbers, over the
//! real binary: a sync write's number is at or below the committed watermark
//! the moment the call returns (asserted in Lua and over the admin
//! endpoint), a sync write survives a kill -9 right after its response, and
//! sync is refused where a handler cannot yield.
//!
//! The dataplanes here run with a ten-minute commit window, so nothing
//! commits unless a sync write asks for it: what these tests see committed
//! was committed because of the sync, never because a timer happened to fire.

mod common;

use std::time::Duration;

use common::{Response, Server, route, wait_for};

const NEVER_MS: &str = "600000";

const ROUTES: &str = "  sharedDicts:
  - {name: d, capacity: 10Mi, persistence: Durable}
  - {name: mem, capacity: 1Mi}
  locations:
  - path: /async
    content: |
      assert(ngx.shared.d:set(ngx.var.arg_k, 'async'))
      ngx.header['X-Seq'] = moongate.durable.last_seq()
      ngx.header['X-Committed'] = moongate.durable.committed_seq()
  - path: /sync
    content: |
      local d, k, opts = ngx.shared.d, ngx.var.arg_k, {sync = true}
      local out, prev = {}, moongate.durable.last_seq()
      -- Each call must take a new number and return with it committed.
      local function check(what, ...)
        local last, committed = moongate.durable.last_seq(), moongate.durable.committed_seq()
        if last <= prev then error(what .. ' took no new number (' .. last .. ')') end
        if last > committed then error(what .. ': #' .. last .. ' is above the watermark ' .. committed) end
        prev = last
        out[#out + 1] = what .. '=' .. tostring((...))
      end
      check('set', d:set(k, 1, 0, 0, opts))
      check('safe_set', d:safe_set(k, 2, 0, 0, opts))
      check('add', d:add(k .. ':a', 1, 0, 0, opts))
      check('safe_add', d:safe_add(k .. ':sa', 1, 0, 0, opts))
      check('replace', d:replace(k, 3, 0, 0, opts))
      check('incr', d:incr(k, 1, nil, nil, opts))
      check('delete', d:delete(k .. ':a', opts))
      check('lpush', d:lpush(k .. ':l', 'x', opts))
      check('rpush', d:rpush(k .. ':l', 'y', opts))
      -- Inside a user coroutine the wait travels up to the driver as well.
      coroutine.wrap(function() check('in_coroutine', d:set(k .. ':co', 'c', 0, 0, opts)) end)()
      ngx.header['X-Seq'] = moongate.durable.last_seq()
      ngx.print(table.concat(out, ' '))
  - path: /sync-all
    content: |
      assert(ngx.shared.d:set(ngx.var.arg_k, 'then synced'))
      local last = moongate.durable.last_seq()
      local committed = assert(moongate.durable.sync())
      ngx.print(tostring(last <= committed and committed == moongate.durable.committed_seq()))
  - path: /get
    content: ngx.print(tostring(ngx.shared.d:get(ngx.var.arg_k)))
  - path: /mem
    content: ngx.print(tostring(ngx.shared.mem:get(ngx.var.arg_k)))
  - path: /timer
    content: |
      assert(ngx.timer.at(0, function()
        local ok, err = ngx.shared.d:set('from-timer', 't', 0, 0, {sync = true})
        local last, committed = moongate.durable.last_seq(), moongate.durable.committed_seq()
        ngx.shared.mem:set('timer', tostring(ok) .. ' ' .. tostring(last <= committed) .. ' ' .. tostring(err))
      end))
  - path: /in-header-filter
    content: ngx.print('body')
    headerFilter: ngx.shared.d:set('hf', 1, 0, 0, {sync = true})
  - path: /in-log
    content: ngx.print('body')
    log: ngx.shared.d:set('log', 1, 0, 0, {sync = true})
";

fn start(data_dir: &str) -> Server {
    Server::builder(&route("sync", ROUTES))
        .durable(data_dir)
        .arg("--commit-window-ms")
        .arg(NEVER_MS)
        .arg("--admin")
        .arg("127.0.0.1:0")
        .start()
}

fn seq_header(r: &Response) -> u64 {
    r.header("x-seq")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no X-Seq: {r:?}"))
}

/// A number field of `/durable`'s JSON.
fn durable_field(s: &Server, name: &str) -> u64 {
    let r = s.admin_get("/durable");
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let key = format!("\"{name}\":");
    let rest = &text[text.find(&key).unwrap_or_else(|| panic!("no {name} in {text}")) + key.len()..];
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("bad {name} in {text}"))
}

#[test]
fn a_sync_write_is_committed_when_the_call_returns() {
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path().to_str().unwrap());
    // An async write is numbered but, with a ten-minute window, not committed.
    let r = s.get("/async?k=before");
    assert_eq!(r.status, 200, "{}", s.logs());
    let async_seq = seq_header(&r);
    assert!(async_seq >= 1);
    assert!(
        durable_field(&s, "committed") < async_seq,
        "nothing should have committed yet"
    );

    let r = s.get("/sync?k=s");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.logs());
    assert_eq!(
        r.text(),
        "set=true safe_set=true add=true safe_add=true replace=true incr=4 delete=true lpush=1 rpush=2 in_coroutine=true"
    );
    let sync_seq = seq_header(&r);
    assert_eq!(sync_seq, async_seq + 10, "ten writes, ten numbers");
    assert!(durable_field(&s, "committed") >= sync_seq);
    assert!(durable_field(&s, "assigned") >= sync_seq);
    let metrics = s.admin_get("/metrics").text();
    let gauge: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("moongate_durable_committed_seq "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no moongate_durable_committed_seq in\n{metrics}"));
    assert!(gauge >= sync_seq, "{gauge} < {sync_seq}");

    // moongate.durable.sync() waits for every write made so far.
    let r = s.get("/async?k=later");
    let later = seq_header(&r);
    assert!(durable_field(&s, "committed") < later);
    assert_eq!(s.get("/sync-all?k=all").text(), "true", "{}", s.logs());
    assert!(durable_field(&s, "committed") > later);

    // In a timer callback too.
    assert_eq!(s.get("/timer").status, 200);
    let outcome = wait_for(Duration::from_secs(30), || {
        let v = s.get("/mem?k=timer").text();
        (v != "nil").then_some(v)
    });
    assert_eq!(outcome.as_deref(), Some("true true nil"), "{}", s.logs());
}

#[test]
fn a_sync_write_survives_kill_9_right_after_its_response() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let mut s = start(dir);
    assert_eq!(s.get("/async?k=early").status, 200);
    assert_eq!(s.get("/sync?k=synced").status, 200, "{}", s.logs());
    let synced = durable_field(&s, "committed");
    // Written after the last commit: only the ten-minute window would save it.
    assert_eq!(s.get("/async?k=late").status, 200);
    s.signal(libc::SIGKILL);
    let _ = s.wait_exit(Duration::from_secs(30));

    let s = start(dir);
    assert_eq!(durable_field(&s, "recovered"), synced);
    assert_eq!(s.get("/get?k=synced").text(), "4");
    assert_eq!(s.get("/get?k=synced:co").text(), "c");
    // The async write before the sync write was in its commit.
    assert_eq!(s.get("/get?k=early").text(), "async");
    // The one after it was in no commit, and is lost: the promise is the
    // commit, not the acknowledgement.
    assert_eq!(s.get("/get?k=late").text(), "nil");
    // Numbering continues after the recovered cut.
    let r = s.get("/async?k=next");
    assert_eq!(seq_header(&r), synced + 1);
}

#[test]
fn sync_is_refused_where_the_handler_cannot_wait() {
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path().to_str().unwrap());
    // A header filter error aborts the response (the connection closes).
    s.raw_bytes(b"GET /in-header-filter HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert!(
        s.wait_log(
            "API disabled in the context of header_filter_by_lua*",
            Duration::from_secs(30)
        )
        .is_some(),
        "{}",
        s.logs()
    );
    let r = s.get("/in-log");
    assert_eq!(r.text(), "body");
    assert!(
        s.wait_log("API disabled in the context of log_by_lua*", Duration::from_secs(30))
            .is_some(),
        "{}",
        s.logs()
    );
    // Refused before writing.
    assert_eq!(s.get("/get?k=hf").text(), "nil");
    assert_eq!(s.get("/get?k=log").text(), "nil");
}
