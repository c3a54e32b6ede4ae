//! Tenant isolation, tested the way a hostile route author attacks it: every
//! route author is a possible attacker, and several namespaces' routes share
//! one worker VM (`--workers 1`, so "the same VM" is certain). Each test names
//! the finding of the adversarial review it covers (1: escapes to host
//! globals, 2: cross-tenant code, 5: limits a route could raise, 6: tenants
//! reaching each other's locations, 7: the blast radius of bad config, 8:
//! smaller HTTP findings) and states the behaviour after the fix.
//!
//! The walk over everything a handler can reach is `isolation/reach.lua`;
//! findings 6 (locations) and 5, 7 and 8 (limits, config, HTTP edge) are in `isolation/`.

mod common;

use std::time::Duration;

use common::{Response, Server, route_in, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// Lua (or YAML) indented by `depth` spaces, for a YAML block scalar.
fn block(text: &str, depth: usize) -> String {
    text.lines().map(|l| format!("{:depth$}{l}\n", "")).collect()
}

/// One location at `path` whose content handler is `lua`.
fn content(path: &str, lua: &str) -> String {
    format!("  - path: {path}\n    content: |\n{}", block(lua, 6))
}

/// A route `namespace/name` serving `hostname`, with `extra` spec lines (indented by 2) and `locations`.
fn tenant(namespace: &str, name: &str, hostname: &str, extra: &str, locations: &[String]) -> String {
    route_in(
        namespace,
        name,
        &format!("  hostnames: [{hostname}]\n{extra}  locations:\n{}", locations.concat()),
    )
}

/// Several YAML documents in one file.
fn docs(list: &[String]) -> String {
    list.join("---\n")
}

/// A Lua string literal holding a valid binary chunk of this LuaJIT build
/// (same vendored LuaJIT as the dataplane), which returns "bytecode ran".
fn bytecode_literal() -> String {
    let lua = mlua::Lua::new();
    let f = lua.load("return 'bytecode ran'").into_function().expect("compile");
    let escaped: String = f.dump(true).iter().map(|b| format!("\\{b:03}")).collect();
    format!("\"{escaped}\"")
}

/// `tests/lua/reach.lua` in `mode` ("report", "exit" or "poison").
fn reach_probe(mode: &str) -> String {
    include_str!("isolation/reach.lua")
        .replace("@BYTECODE@", &bytecode_literal())
        .replace("@MODE@", mode)
}

fn assert_ok(r: &Response, want: &str, what: &str, s: &Server) {
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, want),
        "{what}; logs:\n{}",
        s.logs()
    );
}

// ---------------------------------------------------------------- finding 1

/// Finding 1: `getfenv(print)`, `getfenv(ngx.say)`, `getfenv(-1)`, `getfenv(2)`
/// inside pcall, and more, handed out the worker VM's real `_G` (os.execute,
/// os.exit, binary `load`, jit, dofile, loadfile). After: nothing reachable,
/// by any path, holds any of these, and no reachable `load` takes bytecode.
#[test]
fn nothing_reachable_from_a_handler_leads_to_host_globals_or_loads_bytecode() {
    let s = Server::start(&tenant(
        "a",
        "walker",
        "a.example",
        "  sharedDicts: [{name: ad, capacity: 1Mi}]\n",
        &[content("/", &reach_probe("report"))],
    ));
    let r = s.get_host("a.example", "/");
    assert_eq!(r.status, 200, "the probe itself must run; logs:\n{}", s.logs());
    assert_eq!(r.text(), "0 violations\n", "reachable host state");
}

/// Finding 1: `os.exit(3)` reached through an escape killed the dataplane.
/// After: whatever the route reaches, calling every `exit` it finds leaves the
/// process alive and serving another tenant.
#[test]
fn no_exit_reachable_from_a_handler_can_kill_the_process() {
    let mut s = Server::start(&docs(&[
        tenant("a", "killer", "a.example", "", &[content("/", &reach_probe("exit"))]),
        tenant("b", "bystander", "b.example", "", &[content("/", "ngx.say('b alive')")]),
    ]));
    let attempt = s.try_get_host("a.example", "/", "");
    let after = match s.try_get_host("b.example", "/", "") {
        Ok(r) => r,
        Err(e) => panic!(
            "no answer after a handler called every exit it could reach ({e}); the dataplane exited with {:?}; \
             the attempt got {attempt:?}",
            s.wait_exit(Duration::from_secs(5))
        ),
    };
    assert_ok(&after, "b alive\n", "another tenant is served afterwards", &s);
    assert!(s.try_wait().is_none(), "the dataplane exited");
}

/// Finding 1: `setfenv` reached C functions and the prelude's shared `ngx.*`
/// closures. After: it fails on anything that is not the route's own Lua
/// function, and still works on the route's own functions.
#[test]
fn setfenv_refuses_functions_that_are_not_the_routes_own() {
    let lua = r#"
local targets = {
  print = print, pcall = pcall, xpcall = xpcall, require = require, load = load, tostring = tostring,
  ["ngx.say"] = ngx.say, ["ngx.exit"] = ngx.exit, ["ngx.sleep"] = ngx.sleep, ["ngx.exec"] = ngx.exec,
  ["ngx.location.capture"] = ngx.location.capture, ["ngx.req.read_body"] = ngx.req.read_body,
  ["coroutine.resume"] = coroutine.resume, ["coroutine.wrap"] = coroutine.wrap,
  ["string.upper"] = string.upper, ['("").upper'] = ("").upper, ["ngx.shared.ad.get"] = ngx.shared.ad.get,
  ["ngx.timer.at"] = ngx.timer.at,
}
-- The new environment falls back to the old one, so a setfenv that wrongly
-- succeeds does not break the functions this handler goes on to use.
local function like(f)
  local ok, env = pcall(getfenv, f)
  return setmetatable({ marker = true }, { __index = ok and type(env) == "table" and env or _G })
end
local accepted = {}
for name, f in pairs(targets) do
  if pcall(setfenv, f, like(f)) then accepted[#accepted + 1] = name end
end
table.sort(accepted)
local own = function() return marker end
local ok = pcall(setfenv, own, { marker = "own" })
ngx.say("accepted: ", table.concat(accepted, ","), "; own: ", tostring(ok and own()))
"#;
    let s = Server::start(&tenant(
        "a",
        "fenv",
        "a.example",
        "  sharedDicts: [{name: ad, capacity: 1Mi}]\n",
        &[content("/", lua)],
    ));
    let r = s.get_host("a.example", "/");
    assert_ok(
        &r,
        "accepted: ; own: own\n",
        "setfenv on functions that are not the route's",
        &s,
    );
}

/// Finding 1, poisoning: route A changes everything it can reach (string
/// methods, tostring, coroutine.resume/wrap, every metatable it reaches). After:
/// route B in namespace b, and another route of namespace a, still get the real
/// results, before and after a reload of the files.
#[test]
fn a_route_cannot_change_what_other_routes_get_even_after_a_reload() {
    let check = r#"
local h = ngx.req.get_headers()
ngx.header["X-Check"] = "hdr"
local gen = coroutine.wrap(function(a) local b = coroutine.yield(a + 1) return b * 2 end)
local c1, c2 = gen(1), gen(10)
local co = coroutine.create(function() coroutine.yield("y") return "done" end)
local ok1, v1 = coroutine.resume(co)
local ok2, v2 = coroutine.resume(co)
ngx.say(("abc"):upper(), " ", string.upper("abc"), " ", tostring(12), " ", tostring(ngx.header["X-Check"]), " ",
  tostring(h["X-Probe"]), " ", c1, " ", c2, " ", tostring(ok1), v1, tostring(ok2), v2, " ", ("%d"):format(7), " ",
  ("ab"):rep(2))
"#;
    let want = "ABC ABC 12 hdr probe 2 20 trueytruedone 7 abab\n";
    let files = |version: &str| {
        docs(&[
            tenant(
                "a",
                "poisoner",
                "a.example",
                "",
                &[content("/", &reach_probe("poison"))],
            ),
            tenant("a", "neighbour", "a2.example", "", &[content("/", check)]),
            tenant("b", "victim", "b.example", "", &[content("/", check)]),
            tenant(
                "c",
                "marker",
                "c.example",
                "",
                &[content("/", &format!("ngx.say('{version}')"))],
            ),
        ])
    };
    let s = Server::start(&files("v1"));
    let probe = |host: &str, when: &str| {
        let r = s
            .try_get_host(host, "/", "X-Probe: probe\r\n")
            .unwrap_or_else(|e| panic!("{host} {when}: no response: {e}"));
        assert_ok(&r, want, &format!("{host} {when}"), &s);
    };
    probe("b.example", "before the poisoning");
    probe("a2.example", "before the poisoning");
    let r = s.get_host("a.example", "/");
    assert!(r.status == 200 || r.status == 500, "{r:?}");
    probe("b.example", "after route a/poisoner changed what it reaches");
    probe("a2.example", "after route a/poisoner changed what it reaches");

    s.write_routes(&files("v2"));
    let reloaded = wait_for(WAIT, || (s.get_host("c.example", "/").text() == "v2\n").then_some(()));
    assert!(reloaded.is_some(), "the reload applied; logs:\n{}", s.logs());
    probe("b.example", "after a reload");
    probe("a2.example", "after a reload");
}

// ---------------------------------------------------------------- finding 2

/// Finding 2: `newproxy(true)` with `__gc` ran route A's code in other tenants'
/// requests, reading their Authorization and writing into their responses.
/// After: `newproxy` is nil, and none of A's finalizer-like tricks runs in B's
/// request: B's response is exactly B's, and A never observes B's
/// Authorization (A's spy writes what it saw into A's own dict).
#[test]
fn finalizers_and_metamethods_of_one_route_never_run_in_another_routes_request() {
    let plant = r#"
local d = ngx.shared.seen
local function spy(tag)
  return function()
    local host, auth = "none", nil
    pcall(function() host = ngx.var.host end)
    pcall(function() auth = ngx.req.get_headers()["authorization"] end)
    d:incr("ran:" .. tostring(host), 1, 0)
    if auth then d:set("auth:" .. tostring(auth), tag) end
    pcall(ngx.say, "INJECTED-" .. tag)
    pcall(function() ngx.header["X-Injected"] = tag end)
  end
end
ngx.say("newproxy=", type(newproxy))
-- Everything below is held only by this request's ngx.ctx (or a weak table),
-- so it becomes garbage when the request ends and is collected in a later one.
local left = {}
ngx.ctx.left = left
if newproxy then
  for i = 1, 2000 do
    local p = newproxy(true)
    getmetatable(p).__gc = spy("newproxy")
    left[#left + 1] = p
  end
end
for i = 1, 2000 do left[#left + 1] = setmetatable({}, { __gc = spy("table-gc") }) end
weak = setmetatable({}, { __mode = "k", __gc = spy("weak-gc") })
for i = 1, 2000 do weak[setmetatable({}, { __gc = spy("weak-key-gc") })] = spy("weak-value") end
left[#left + 1] = setmetatable({}, { __gc = spy("ctx-gc"), __index = spy("ctx-index"), __call = spy("ctx-call") })
pcall(function() ngx.header["X-Planted"] = setmetatable({}, { __tostring = spy("header-tostring") }) end)
pcall(ngx.req.set_header, "X-Planted", setmetatable({}, { __tostring = spy("req-header-tostring") }))
pcall(ngx.say, setmetatable({ "x" }, { __index = spy("say-index"), __gc = spy("say-gc") }))
ngx.timer.at(3600, spy("pending-timer-arg"), setmetatable({}, { __gc = spy("timer-arg-gc") }))
ngx.say("planted")
"#;
    let victim = r#"
local junk = {}
for i = 1, 200000 do junk[i % 1000 + 1] = { i } end
pcall(collectgarbage, "collect")
pcall(collectgarbage, "step", 1000)
ngx.say("b-body ", ngx.req.get_headers()["authorization"])
"#;
    let read = r#"
local keys = ngx.shared.seen:get_keys(0)
table.sort(keys)
ngx.say(table.concat(keys, ","))
"#;
    let s = Server::start(&docs(&[
        tenant(
            "a",
            "planter",
            "a.example",
            "  sharedDicts: [{name: seen, capacity: 1Mi}]\n",
            &[content("/plant", plant), content("/read", read)],
        ),
        tenant("b", "victim", "b.example", "", &[content("/", victim)]),
    ]));
    let planted = s.get_host("a.example", "/plant");
    assert_eq!(planted.status, 200, "{}", s.logs());
    for round in 0..5 {
        let r = s
            .try_get_host("b.example", "/", "Authorization: Bearer b-secret\r\n")
            .unwrap_or_else(|e| panic!("round {round}: no response from b: {e}; logs:\n{}", s.logs()));
        assert_ok(
            &r,
            "b-body Bearer b-secret\n",
            &format!("round {round}: B's response is B's alone"),
            &s,
        );
        assert_eq!(
            r.header("x-injected"),
            None,
            "round {round}: A's code wrote into B's response"
        );
    }
    let seen = s.get_host("a.example", "/read").text();
    assert!(
        !seen.contains("b.example") && !seen.contains("b-secret"),
        "route a/planter's code ran in b's requests and saw: {seen}"
    );
    assert!(
        planted.text().starts_with("newproxy=nil\n"),
        "newproxy must not exist: {}",
        planted.text()
    );
}

/// Finding 2 (new hole found while writing these tests): the metatable of the
/// tables `ngx.req.get_headers()`, `ngx.resp.get_headers()` and a capture's
/// `res.header` return is one table per VM, cached in the registry, and is
/// not protected by `__metatable`. Route A replaces its `__index`; B's
/// `ngx.req.get_headers()["Authorization"]` (any key not already lowercase)
/// then runs A's function with B's headers. After: B gets its own header
/// and A never sees it.
#[test]
fn the_metatable_of_header_tables_is_not_shared_between_routes() {
    let plant = r#"
local d = ngx.shared.seen
local mt = getmetatable(ngx.req.get_headers())
local replaced = type(mt) == "table" and pcall(function()
  mt.__index = function(t, k)
    d:set("stolen", tostring(rawget(t, "authorization")))
    return "POISONED"
  end
end)
ngx.say("replaced=", tostring(replaced))
"#;
    let s = Server::start(&docs(&[
        tenant(
            "a",
            "planter",
            "a.example",
            "  sharedDicts: [{name: seen, capacity: 1Mi}]\n",
            &[
                content("/plant", plant),
                content("/read", "ngx.say(tostring(ngx.shared.seen:get('stolen')))"),
            ],
        ),
        tenant(
            "b",
            "victim",
            "b.example",
            "",
            &[content("/", "ngx.say(ngx.req.get_headers()['Authorization'])")],
        ),
    ]));
    assert_eq!(s.get_host("a.example", "/plant").status, 200, "{}", s.logs());
    let r = s
        .try_get_host("b.example", "/", "Authorization: Bearer b-secret\r\n")
        .expect("b answers");
    assert_ok(&r, "Bearer b-secret\n", "B reads its own Authorization", &s);
    assert_eq!(
        s.get_host("a.example", "/read").text(),
        "nil\n",
        "route a/planter's __index ran in b's request"
    );
}

/// Finding 2, coroutine recycling: A saves `coroutine.running()` (its entry
/// thread, which the pool then hands to the next request) and user
/// coroutines; while a later request — of B, of another route of namespace a,
/// of A itself — waits in `ngx.sleep`, A resumes the saved threads. After: each
/// resume fails (returns false or raises) and the waiting request's response is
/// intact.
#[test]
fn a_coroutine_saved_by_one_request_cannot_be_resumed_by_a_later_one() {
    let save = r#"
saved = { main = coroutine.running() }
saved.co = coroutine.create(function()
  while true do coroutine.yield(ngx.req.get_headers()["authorization"] or "none") end
end)
coroutine.resume(saved.co)
saved.wrap = coroutine.wrap(function()
  while true do coroutine.yield(ngx.req.get_headers()["authorization"] or "none") end
end)
saved.wrap()
ngx.say("saved")
"#;
    let resume = r#"
ngx.log(ngx.ERR, "resumer starting")
local out = {}
for _, name in ipairs({ "main", "co", "wrap" }) do
  local v = saved and saved[name]
  local ok, a, b
  if type(v) == "function" then
    ok, a = pcall(v, "from-A")
    b = a
  else
    ok, a, b = pcall(coroutine.resume, v, "from-A")
    ok = ok and a == true
  end
  out[#out + 1] = name .. "=" .. (ok and ("resumed:" .. tostring(b)) or "refused")
end
ngx.say(table.concat(out, " "))
"#;
    // Waits (polling its own namespace's dict) until the test releases it.
    let wait = |dict: &str| {
        format!(
            r#"
local d = ngx.shared.{dict}
d:delete("go")
ngx.log(ngx.ERR, "victim waiting ", ngx.var.host)
local n = 0
while not d:get("go") and n < 3000 do ngx.sleep(0.01) n = n + 1 end
ngx.say("victim ", ngx.var.host, " ", ngx.req.get_headers()["authorization"] or "none")
"#
        )
    };
    let release = |dict: &str| format!("ngx.shared.{dict}:set('go', true) ngx.say('released')");
    let dict_a = "  sharedDicts: [{name: ad, capacity: 1Mi}]\n";
    let s = Server::start(&docs(&[
        tenant(
            "a",
            "saver",
            "a.example",
            dict_a,
            &[
                content("/save", save),
                content("/resume", resume),
                content("/wait", &wait("ad")),
                content("/release", &release("ad")),
            ],
        ),
        tenant("a", "neighbour", "a2.example", dict_a, &[content("/wait", &wait("ad"))]),
        tenant(
            "b",
            "victim",
            "b.example",
            "  sharedDicts: [{name: bd, capacity: 1Mi}]\n",
            &[content("/wait", &wait("bd")), content("/release", &release("bd"))],
        ),
    ]));
    for (victim, release_host) in [
        ("b.example", "b.example"),
        ("a2.example", "a.example"),
        ("a.example", "a.example"),
    ] {
        assert_ok(&s.get_host("a.example", "/save"), "saved\n", "A saves its threads", &s);
        let from = s.log_count();
        let addr = s.addr();
        let waiting = std::thread::spawn({
            let victim = victim.to_string();
            move || {
                let mut st = std::net::TcpStream::connect(addr).expect("connect");
                st.set_read_timeout(Some(common::IO_TIMEOUT)).unwrap();
                let req = format!(
                    "GET /wait HTTP/1.1\r\nHost: {victim}\r\nAuthorization: Bearer victim-secret\r\nConnection: close\r\n\r\n"
                );
                std::io::Write::write_all(&mut st, req.as_bytes()).expect("send");
                common::read_response(&mut std::io::BufReader::new(st))
            }
        });
        s.wait_log_since(from, &format!("victim waiting {victim}"), WAIT)
            .unwrap_or_else(|| panic!("{victim} never waited; logs:\n{}", s.logs()));
        let from = s.log_count();
        let resumer = {
            let addr = s.addr();
            std::thread::spawn(move || {
                let mut st = std::net::TcpStream::connect(addr).expect("connect");
                st.set_read_timeout(Some(common::IO_TIMEOUT)).unwrap();
                std::io::Write::write_all(
                    &mut st,
                    b"GET /resume HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
                )
                .expect("send");
                common::read_response(&mut std::io::BufReader::new(st))
            })
        };
        // One worker: the release is served only once the resumer's handler has yielded or ended.
        s.wait_log_since(from, "resumer starting", WAIT)
            .unwrap_or_else(|| panic!("the resumer never started; logs:\n{}", s.logs()));
        assert_ok(&s.get_host(release_host, "/release"), "released\n", "release", &s);
        let resumed = resumer.join().unwrap().expect("the resumer answers");
        let victim_response = waiting.join().unwrap();
        let victim_response =
            victim_response.unwrap_or_else(|e| panic!("victim {victim} got no response: {e}; logs:\n{}", s.logs()));
        assert_ok(
            &victim_response,
            &format!("victim {victim} Bearer victim-secret\n"),
            &format!(
                "victim {victim}'s response is intact (A's resume answered {:?})",
                resumed.text()
            ),
            &s,
        );
        assert_eq!(
            resumed.text(),
            "main=refused co=refused wrap=refused\n",
            "victim {victim}: A resumed threads of earlier requests; logs:\n{}",
            s.logs()
        );
    }
}

/// Finding 2: `collectgarbage("stop")` (and restart, setpause, setstepmul)
/// changed the collector every tenant shares. After: refused with an error;
/// `collectgarbage("count")` still works.
#[test]
fn collectgarbage_cannot_stop_or_retune_the_collector_but_can_count() {
    let lua = r#"
local out = {}
for _, opt in ipairs({ "stop", "setpause", "setstepmul", "restart" }) do
  out[#out + 1] = opt .. "=" .. tostring((pcall(collectgarbage, opt, 100)))
end
out[#out + 1] = "count=" .. type(collectgarbage("count"))
ngx.say(table.concat(out, " "))
"#;
    let s = Server::start(&tenant("a", "gc", "a.example", "", &[content("/", lua)]));
    let r = s.get_host("a.example", "/");
    assert_ok(
        &r,
        "stop=false setpause=false setstepmul=false restart=false count=number\n",
        "collector controls are refused",
        &s,
    );
}

/// Finding 2: the per-worker pool of pending timers was shared, so route A
/// arming timers until refused made route B's `ngx.timer.at` fail. After: A is
/// refused with `nil, "too many pending timers"` below the worker limit, and B
/// can still arm a timer.
#[test]
fn one_routes_pending_timers_do_not_use_up_another_routes() {
    let hog = r#"
local n, err = 0, nil
while n < 100000 do
  local ok, e = ngx.timer.at(3600, function() end)
  if not ok then err = e break end
  n = n + 1
end
ngx.say(n > 0, " ", tostring(err))
"#;
    let s = Server::start(&docs(&[
        tenant("a", "hog", "a.example", "", &[content("/", hog)]),
        tenant(
            "b",
            "timid",
            "b.example",
            "",
            &[content(
                "/",
                "local ok, err = ngx.timer.at(0, function() end) ngx.say(tostring(ok ~= nil), ' ', tostring(err))",
            )],
        ),
    ]));
    assert_ok(
        &s.get_host("a.example", "/"),
        "true too many pending timers\n",
        "A is refused",
        &s,
    );
    assert_ok(
        &s.get_host("b.example", "/"),
        "true nil\n",
        "B can still arm a timer",
        &s,
    );
}

/// The VM model: one Lua VM per namespace on each worker, so a namespace's
/// routes share a VM (with separate globals) and no two namespaces do. The
/// metric counts them by worker; routes of a namespace that is gone free it.
#[test]
fn each_namespace_has_a_vm_of_its_own_on_each_worker() {
    let routes = |namespaces: &[&str]| {
        docs(
            &namespaces
                .iter()
                .enumerate()
                .map(|(i, ns)| {
                    tenant(
                        ns,
                        &format!("r{i}"),
                        &format!("h{i}.example"),
                        "",
                        &[content("/", "ngx.say('ok')")],
                    )
                })
                .collect::<Vec<_>>(),
        )
    };
    let s = Server::builder(&routes(&["a", "a", "b"]))
        .workers(2)
        .arg("--admin")
        .arg("127.0.0.1:0")
        .start();
    let vms = |s: &Server| {
        let text = s.admin_get("/metrics").text();
        let mut by_worker: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("moongate_lua_tenant_vms{"))
            .map(str::to_string)
            .collect();
        by_worker.sort();
        by_worker
    };
    let want = |n: usize| {
        vec![
            format!("moongate_lua_tenant_vms{{worker=\"0\"}} {n}"),
            format!("moongate_lua_tenant_vms{{worker=\"1\"}} {n}"),
        ]
    };
    assert_eq!(vms(&s), want(2), "namespaces a and b on each of 2 workers");
    s.write_routes(&routes(&["a", "a"]));
    let shrunk = wait_for(WAIT, || (vms(&s) == want(1)).then_some(()));
    assert!(
        shrunk.is_some(),
        "b's VMs are freed once b has no routes: {:?}",
        vms(&s)
    );
}

#[path = "isolation/locations.rs"]
mod locations;

#[path = "isolation/config.rs"]
mod config;
