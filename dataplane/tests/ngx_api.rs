//! The `ngx` API entry by entry against lua-nginx-module's README (and, where
//! the README is silent or loose, its source and the behaviour of Debian's
//! nginx 1.22 with libnginx-mod-http-lua): output of nested tables, booleans
//! and nil; `ngx.status` before and after the headers go out; `ngx.header`
//! names and removing Content-Type; writing `ngx.var`; shared-dict
//! `forcible`; `ngx.req.raw_header` with a body; `ngx.exit` after output;
//! `ngx.null` and `ngx.log`; the phases each API may run in.

mod common;

use std::time::Duration;

use common::{Server, route};

const LOG_WAIT: Duration = Duration::from_secs(30);

fn server(spec: &str) -> Server {
    Server::start(&route("api", spec))
}

/// The lines of a response body.
fn lines(s: &Server, path: &str) -> Vec<String> {
    let r = s.get(path);
    assert_eq!(r.status, 200, "{path}: {}\n{}", r.text(), s.logs());
    r.text().lines().map(str::to_string).collect()
}

#[test]
fn print_flattens_nested_arrays_of_strings_numbers_booleans_nil_and_null() {
    let s = server(
        r#"  locations:
  - path: /
    content: |
      -- The README's example. Its stated output ends in ": nil", but
      -- {": ", nil} has one element: nginx prints "hello, world: true or false: ".
      ngx.print({"hello, ", {"world: ", true, " or ", false, {": ", nil}}})
      ngx.say()
      ngx.say(nil, true, false, ngx.null, 1.5, 10)
      ngx.say({ngx.null, 2})
      local holes = {} holes[1] = "a" holes[3] = "c"
      ngx.say(holes)
      for _, bad in ipairs({{a = 1}, {1, {x = 2}}, {function() end}}) do
        local ok, err = pcall(ngx.say, bad)
        ngx.say(ok, " ", err)
      end
"#,
    );
    assert_eq!(
        lines(&s, "/"),
        [
            "hello, world: true or false: ",
            "niltruefalsenull1.510",
            "null2",
            // A hole prints as nil, as ngx_http_lua_copy_str_in_table does.
            "anilc",
            "false bad argument #1 to 'say' (non-array table found)",
            "false bad argument #1 to 'say' (non-array table found)",
            "false bad argument #1 to 'say' (bad data type function found)",
        ]
    );
}

#[test]
fn status_reads_zero_until_set_and_the_sent_status_once_headers_are_out() {
    let s = server(
        r#"  locations:
  - path: /
    rewrite: ngx.ctx.r = ngx.status
    access: ngx.ctx.a = ngx.status
    content: |
      ngx.say("r=", ngx.ctx.r, " a=", ngx.ctx.a, " c=", ngx.status)
      ngx.status = 201
      ngx.say("after=", ngx.status)
    headerFilter: ngx.header["X-Status"] = ngx.status
    log: ngx.log(ngx.ERR, "log phase status ", ngx.status)
  - path: /set
    content: |
      ngx.status = 404
      ngx.say(ngx.status)
"#,
    );
    let r = s.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "r=0 a=0 c=0\nafter=200\n");
    assert_eq!(
        r.header("x-status"),
        Some("200"),
        "the header filter sees the status sent"
    );
    assert!(s.wait_log("log phase status 200", LOG_WAIT).is_some(), "{}", s.logs());
    assert!(
        s.logs()
            .contains("attempt to set ngx.status after sending out response headers")
    );

    let r = s.get("/set");
    assert_eq!((r.status, r.text().as_str()), (404, "404\n"));
}

#[test]
fn header_names_normalise_and_content_type_can_be_removed() {
    let s = server(
        r#"  locations:
  - path: /set
    content: |
      ngx.header.content_type = "text/x-a"
      ngx.header["X_Foo_Bar"] = "1"
      ngx.header.x_multi = {"a", "b"}
      ngx.header["X-Empty"] = {}
      ngx.header["X-Gone"] = "g"
      ngx.header["x-gone"] = nil
      ngx.header["X-Num"] = 42
      ngx.header["X-Read"] = table.concat({tostring(ngx.header["x-foo-bar"]), tostring(ngx.header.X_FOO_BAR),
        tostring(ngx.header["Content-Type"]), type(ngx.header.x_multi), tostring(ngx.header.nope)}, ",")
      ngx.say("ok")
  - path: /no-type
    content: ngx.header.content_type = nil ngx.say("x")
  - path: /no-type-table
    content: ngx.header["Content-Type"] = {} ngx.say("x")
  - path: /type-last
    content: ngx.header.content_type = {"a/a", "b/b"} ngx.say("x")
"#,
    );
    let r = s.get("/set");
    assert_eq!(r.header("content-type"), Some("text/x-a"));
    assert_eq!(r.header("x-foo-bar"), Some("1"), "underscores become dashes");
    let multi: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-multi"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(multi, ["a", "b"]);
    assert_eq!(r.header("x-empty"), None, "an empty table removes the header");
    assert_eq!(r.header("x-gone"), None, "nil removes it, whatever the case");
    assert_eq!(r.header("x-num"), Some("42"));
    assert_eq!(r.header("x-read"), Some("1,1,text/x-a,table,nil"));

    for path in ["/no-type", "/no-type-table"] {
        let r = s.get(path);
        assert_eq!(r.text(), "x\n");
        assert_eq!(r.header("content-type"), None, "{path}: no default_type after removal");
    }
    assert_eq!(
        s.get("/type-last").header("content-type"),
        Some("b/b"),
        "one value: the last"
    );
}

#[test]
fn assigning_variables_follows_nginx() {
    let s = server(
        r#"  locations:
  - path: /
    vars: {myvar: init}
    content: |
      ngx.say(ngx.var.myvar)
      ngx.var.myvar = 123
      ngx.say(type(ngx.var.myvar), " ", ngx.var.myvar)
      ngx.var.myvar = true
      ngx.say(ngx.var.myvar)
      ngx.var.myvar = nil
      ngx.say(tostring(ngx.var.myvar))
      for _, name in ipairs({"nosuch", "uri", "arg_a"}) do
        local ok, err = pcall(function() ngx.var[name] = "x" end)
        ngx.say(ok, " ", (err:gsub("^.-:%d+: ", "")))
      end
      ngx.var.args = "a=1&b=2"
      ngx.say(ngx.var.args, " ", ngx.var.arg_b, " ", ngx.req.get_uri_args().a)
      ngx.var.args = nil
      ngx.say(tostring(ngx.var.args))
"#,
    );
    assert_eq!(
        lines(&s, "/?z=9"),
        [
            "init",
            "string 123",
            "true",
            "nil",
            "false variable \"nosuch\" not found for writing; maybe it is a built-in variable that is not changeable or you forgot to use \"set $nosuch '';\" in the config file to define it first",
            "false variable \"uri\" not changeable",
            "false variable \"arg_a\" not found for writing; maybe it is a built-in variable that is not changeable or you forgot to use \"set $arg_a '';\" in the config file to define it first",
            "a=1&b=2 2 1",
            "nil",
        ]
    );
}

#[test]
fn shared_dict_reports_forcible_evictions() {
    let s = server(
        r#"  sharedDicts: [{name: small, capacity: 64k}, {name: roomy, capacity: 1m}]
  locations:
  - path: /
    content: |
      local d = ngx.shared.small
      local forced
      for i = 1, 1000 do
        local ok, err, forcible = d:set("k" .. i, string.rep("x", 200))
        assert(ok, err)
        if forcible then forced = i break end
      end
      ngx.say("forcible after filling: ", forced ~= nil)
      ngx.say("least recently used gone: ", d:get("k1") == nil)
      ngx.say("newest kept: ", d:get("k" .. forced) ~= nil)
      local ok, err, f = d:add("k" .. forced, "y") ngx.say(ok, " ", err, " ", f)
      ok, err, f = d:replace("nope", "y") ngx.say(ok, " ", err, " ", f)
      -- Whether a write into a full dict evicts depends on the allocator
      -- (nginx's slab reuses freed slots), so these run with room to spare.
      local roomy = ngx.shared.roomy
      ok, err, f = roomy:incr("cnt", 1, 0) ngx.say(ok, " ", err, " ", f)
      ok, err, f = roomy:incr("cnt", 1) ngx.say(ok, " ", err, " ", f)
      ok, err, f = roomy:incr("none", 1) ngx.say(ok, " ", err, " ", f)
      ok, err = d:safe_set("big", string.rep("z", 100000)) ngx.say(ok, " ", err)
      ok, err, f = d:set("big", string.rep("z", 100000)) ngx.say(ok, " ", err, " ", f)
"#,
    );
    assert_eq!(
        lines(&s, "/"),
        [
            "forcible after filling: true",
            "least recently used gone: true",
            "newest kept: true",
            "false exists false",
            "false not found false",
            "1 nil false",
            // forcible is nil when incr is given no init.
            "2 nil nil",
            "nil not found nil",
            "false no memory",
            // set evicts before giving up, so it reports forcible even then.
            "false no memory true",
        ]
    );
}

#[test]
fn raw_header_of_a_request_with_a_body_stops_at_the_blank_line() {
    let s = server(
        r#"  locations:
  - path: /
    content: |
      ngx.req.read_body()
      ngx.print(ngx.req.raw_header(), "|", ngx.req.raw_header(true), "|", ngx.req.get_body_data())
"#,
    );
    let head = "Host: h\r\nContent-Length: 5\r\nX-A: 1\r\nConnection: close\r\n\r\n";
    let r = s.raw(format!("POST /raw HTTP/1.1\r\n{head}hello").as_bytes());
    assert_eq!(r.status, 200, "{}", s.logs());
    assert_eq!(r.text(), format!("POST /raw HTTP/1.1\r\n{head}|{head}|hello"));
}

#[test]
fn request_body_apis() {
    let s = server(
        r#"  locations:
  - path: /
    content: |
      local ok, err = pcall(ngx.req.get_post_args)
      ngx.say(ok, " ", (err:gsub("^.-:%d+: ", "")))
      ngx.say(ngx.on_abort(function() end))
      ngx.req.read_body()
      ngx.say(ngx.req.get_post_args().a)
      ngx.req.init_body()
      ngx.req.append_body("ab")
      ngx.req.append_body("c")
      ngx.req.finish_body()
      ngx.say(ngx.req.get_body_data())
"#,
    );
    let r = s.raw(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close\r\n\r\na=1");
    assert_eq!(
        r.text(),
        "false no request body found; maybe you should turn on lua_need_request_body?\n\
         nillua_check_client_abort is off\n1\nabc\n",
        "{}",
        s.logs()
    );
}

#[test]
fn exit_after_output_keeps_the_sent_status_and_logs_the_attempt() {
    let s = server(
        r#"  locations:
  - path: /late-error
    content: ngx.say("a") ngx.exit(404) ngx.say("never")
  - path: /late-ok
    content: ngx.send_headers() ngx.exit(ngx.HTTP_OK)
"#,
    );
    let r = s.get("/late-error");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "a\n"),
        "exit ends the handler; the status stays"
    );
    assert!(
        s.wait_log(
            "attempt to set status 404 via ngx.exit after sending out the response status 200",
            LOG_WAIT
        )
        .is_some(),
        "{}",
        s.logs()
    );
    let from = s.log_count();
    let r = s.get("/late-ok");
    assert_eq!((r.status, r.text().as_str()), (200, ""));
    assert!(
        !s.logs_since(from).contains("via ngx.exit"),
        "exit(200) is not an error: {}",
        s.logs_since(from)
    );
}

#[test]
fn null_and_log_behave_as_in_nginx() {
    let s = server(
        r##"  locations:
  - path: /
    content: |
      ngx.say(tostring(ngx.null), " ", type(ngx.null), " ", ngx.null == nil)
      -- ngx.log returns nothing and the handler goes on.
      ngx.say(select("#", ngx.log(ngx.ERR, "logged ", nil, " ", true, " ", ngx.null)))
      ngx.log(ngx.ERR, setmetatable({}, {__tostring = function() return "via __tostring" end}))
      local function try(...)
        local ok, err = pcall(ngx.log, ...)
        ngx.say(ok, " ", err)
      end
      try(ngx.ERR, {})
      try(ngx.ERR, "a", function() end)
      try(99, "y")
      try("x", "y")
      ngx.say("still running")
"##,
    );
    assert_eq!(
        lines(&s, "/"),
        [
            "userdata: NULL userdata false",
            "0",
            "false bad argument #1 to 'log' (expected table to have __tostring metamethod)",
            "false bad argument #2 to 'log' (string, number, boolean, or nil expected, got function)",
            "false bad argument #1 to 'log' (bad log level: 99)",
            "false bad argument #1 to 'log' (number expected, got string)",
            "still running",
        ]
    );
    assert!(s.logs().contains("logged nil true null"), "{}", s.logs());
    assert!(s.logs().contains("via __tostring"), "{}", s.logs());
}

#[test]
fn apis_run_only_in_the_phases_the_readme_lists() {
    let s = server(
        r#"  sharedDicts: [{name: d, capacity: 1m}]
  locations:
  - path: /
    content: |
      ngx.timer.at(0, function()
        local ok, err = pcall(ngx.location.capture, "/x")
        ngx.shared.d:set("timer_capture", (err:gsub("^.-:%d+: ", "")))
        ngx.shared.d:set("timer_sleep", (pcall(ngx.sleep, 0)))
        -- ngx.ctx works in a timer, one table per callback, across a yield.
        ngx.ctx.mine = "first"
        ngx.sleep(0)
        ngx.shared.d:set("timer_ctx", ngx.ctx.mine)
        ngx.log(ngx.ERR, "timer probes done")
      end)
      ngx.timer.at(0, function()
        ngx.shared.d:set("other_timer_ctx", tostring(ngx.ctx.mine))
        ngx.log(ngx.ERR, "other timer done")
      end)
      ngx.say("uri ", ngx.var.uri)
    headerFilter: |
      ngx.req.set_uri("/set-in-header-filter")
      ngx.header["X-Uri"] = ngx.var.uri
      local function refusal(f, ...)
        local ok, err = pcall(f, ...)
        return ok and "allowed" or (err:gsub("^.-:%d+: ", ""))
      end
      ngx.header["X-Say"] = refusal(ngx.say, "x")
      ngx.header["X-Send-Headers"] = refusal(ngx.send_headers)
      ngx.header["X-Arg"] = refusal(function() return ngx.arg[1] end)
      ngx.header["X-Jump"] = refusal(ngx.req.set_uri, "/j", true)
      ngx.header["X-Set-Body"] = refusal(ngx.req.set_body_data, "b")
    bodyFilter: |
      if ngx.arg[2] then
        ngx.req.set_uri("/set-in-body-filter")
        ngx.arg[1] = ngx.arg[1] .. "body filter uri " .. ngx.var.uri .. "\n"
      end
  - path: /dict
    content: ngx.say(tostring(ngx.shared.d:get(ngx.var.arg_k)))
"#,
    );
    let r = s.get("/");
    assert_eq!(r.text(), "uri /\nbody filter uri /set-in-body-filter\n", "{}", s.logs());
    assert_eq!(r.header("x-uri"), Some("/set-in-header-filter"));
    let hf = "API disabled in the context of header_filter_by_lua*";
    for h in ["x-say", "x-send-headers", "x-arg", "x-jump", "x-set-body"] {
        assert_eq!(r.header(h), Some(hf), "{h}");
    }
    assert!(s.wait_log("timer probes done", LOG_WAIT).is_some(), "{}", s.logs());
    // A timer has no request: no subrequests, but it may sleep.
    assert_eq!(
        s.get("/dict?k=timer_capture").text(),
        "API disabled in the context of ngx.timer\n"
    );
    assert_eq!(s.get("/dict?k=timer_sleep").text(), "true\n");
    assert!(s.wait_log("other timer done", LOG_WAIT).is_some(), "{}", s.logs());
    assert_eq!(s.get("/dict?k=timer_ctx").text(), "first\n");
    assert_eq!(
        s.get("/dict?k=other_timer_ctx").text(),
        "nil\n",
        "each callback has its own ngx.ctx"
    );
}
