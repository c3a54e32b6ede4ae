//! The built-in lua-resty libraries (`dataplane/src/lua/lib`), used as their
//! READMEs show, through the real binary: resty.lrucache (+ pureffi),
//! resty.lock, resty.limit.{req,count,conn,traffic}. Expected values are what
//! upstream's code computes for the same calls. Nothing here synchronises on
//! wall-clock time: handlers either run back to back without yielding (so
//! `ngx.now()`, cached per run, is one instant) or wait on dict keys the test
//! sets.

mod common;

use common::{IO_TIMEOUT, Server, route, wait_for};

/// Indents a Lua block for a YAML `|` scalar under a location key.
fn block(lua: &str) -> String {
    lua.lines().map(|l| format!("      {l}\n")).collect()
}

/// A route spec with `dicts` (YAML flow list entries) and `(path, lua)` locations.
fn spec(dicts: &str, locations: &[(&str, &str)]) -> String {
    let mut s = String::new();
    if !dicts.is_empty() {
        s.push_str(&format!("  sharedDicts: [{dicts}]\n"));
    }
    s.push_str("  locations:\n");
    for (path, lua) in locations {
        s.push_str(&format!(
            "  - path: {path}\n    match: Exact\n    content: |\n{}",
            block(lua)
        ));
    }
    s
}

fn body_of(s: &Server, path: &str) -> String {
    let r = s.get(path);
    assert_eq!(r.status, 200, "{path}: {}\n{}", r.text(), s.logs());
    r.text()
}

const LRU_CORE: &str = r#"
local c = lrucache.new(3)
c:set("a", 1)
c:set("b", 2)
c:set("c", 3)
ngx.say("keys ", table.concat(c:get_keys(), " "), " count ", c:count(), " cap ", c:capacity())
ngx.say("get a ", (c:get("a")))
c:set("d", 4)
ngx.say("evicted b ", tostring(c:get("b")), " keys ", table.concat(c:get_keys(), " "))
c:set("c", 30)
c:set("e", 5)
ngx.say("evicted a ", tostring(c:get("a")), " keys ", table.concat(c:get_keys(), " "))
ngx.say("two ", table.concat(c:get_keys(2), " "))
local res = {"x", "y", "z", "w"}
local same = c:get_keys(2, res)
ngx.say("res ", tostring(same == res), " ", res[1], " ", res[2], " ", tostring(res[3]), " ", res[4])
c:set("t", "old", -1)
local v, stale, flags = c:get("t")
ngx.say("expired ", tostring(v), " ", tostring(stale), " ", tostring(flags), " keys ", table.concat(c:get_keys(), " "))
c:set("z", "now", 0)
ngx.say("ttl 0 ", tostring(c:get("z")), " ttl 100 ", tostring((function() c:set("h", "y", 100) return c:get("h") end)()))
c:set("f", "x", nil, 7)
ngx.say("flags ", c:get("f"), " ", tostring(select(2, c:get("f"))), " ", select(3, c:get("f")))
c:set("g", "x", nil, -1)
ngx.say("neg flags ", select(3, c:get("g")))
ngx.say("delete ", tostring(c:delete("f")), " ", tostring(c:delete("f")), " count ", c:count())
c:set(false, "no")
ngx.say("false key ", c:get(false), " keys ", #c:get_keys())
c:flush_all()
ngx.say("flushed count ", c:count(), " keys ", #c:get_keys(), " get ", tostring(c:get("g")))
c:set("p", 1)
ngx.say("after flush ", table.concat(c:get_keys(), " "), " ", c:count())
local n, err = lrucache.new(0)
ngx.say("new 0 ", tostring(n), " ", err)
local one = lrucache.new(1.9)
one:set("a", 1)
one:set("b", 2)
ngx.say("1.9 cap ", one:capacity(), " count ", one:count(), " ", tostring(one:get("a")), " ", (one:get("b")))
ngx.say("mt ", tostring(getmetatable(c).__index == lrucache))
"#;

const LRU_CORE_WANT: &str = "\
keys c b a count 3 cap 3
get a 1
evicted b nil keys d a c
evicted a nil keys e c d
two e c
res true e c nil w
expired nil old 0 keys t e c
ttl 0 now ttl 100 y
flags x nil 7
neg flags 0
delete true false count 2
false key no keys 3
flushed count 0 keys 0 get nil
after flush p 1
new 0 nil size too small
1.9 cap 1.9 count 1 nil 2
mt true
";

#[test]
fn lrucache_eviction_ttl_stale_flags_and_keys() {
    let plain = format!("local lrucache = require \"resty.lrucache\"\n{LRU_CORE}");
    let pure = format!("local lrucache = require \"resty.lrucache.pureffi\"\n{LRU_CORE}");
    let extra = r##"
local lrucache = require "resty.lrucache"
local pure = require "resty.lrucache.pureffi"
local a, b = lrucache.new(4), pure.new(4, 0.01)
a:set(1, "num")
b:set(1, "num")
ngx.say("plain 1/'1' ", tostring(a:get(1)), " ", tostring(a:get("1")))
ngx.say("pure 1/'1' ", b:get(1), " ", b:get("1"), " ", type(b:get_keys()[1]))
a:set("n", nil)
b:set("n", nil)
ngx.say("nil value ", a:count(), " ", b:count(), " ", table.concat(b:get_keys(), " "), " ", select("#", b:get("n")))
ngx.say("bad key ", tostring(pcall(a.set, a, nil, 1)), " ", tostring(pcall(b.set, b, nil, 1)), " ", (b:get("nil")))
"##;
    let s = Server::start(&route(
        "lru",
        &spec(
            "",
            &[("/plain", plain.as_str()), ("/pure", pure.as_str()), ("/extra", extra)],
        ),
    ));
    assert_eq!(body_of(&s, "/plain"), LRU_CORE_WANT);
    assert_eq!(body_of(&s, "/pure"), LRU_CORE_WANT);
    assert_eq!(
        body_of(&s, "/extra"),
        "plain 1/'1' num nil\npure 1/'1' num num string\nnil value 2 2 n 1 3\nbad key false true 1\n"
    );
}

#[test]
fn lrucache_lives_in_the_route_across_requests_and_is_per_route() {
    let app = r#"  modules:
    myapp: |
      local _M = {}
      local lrucache = require "resty.lrucache"
      local c, err = lrucache.new(2)
      if not c then
        error("failed to create the cache: " .. (err or "unknown"))
      end
      function _M.go()
        local n = (c:get("hits") or 0) + 1
        c:set("hits", n)
        lrucache.marker = ngx.var.uri
        ngx.say("hits ", n)
      end
      return _M
"#;
    let a = format!("{app}{}", spec("", &[("/a", "require('myapp').go()")]));
    let b = spec(
        "",
        &[(
            "/b",
            "local l = require('resty.lrucache') ngx.say('marker ', tostring(l.marker), ' ', l.new(1):count())",
        )],
    );
    let s = Server::start(&format!("{}---\n{}", route("lrua", &a), route("lrub", &b)));
    assert_eq!(body_of(&s, "/a"), "hits 1\n");
    assert_eq!(body_of(&s, "/a"), "hits 2\n");
    assert_eq!(
        body_of(&s, "/b"),
        "marker nil 0\n",
        "each route has its own module table"
    );
}

const LOCK_ROUTE_HOLD: &str = r#"
local resty_lock = require "resty.lock"
local sync = ngx.shared.sync
local lock = resty_lock:new("locks")
local elapsed, err = lock:lock("k")
sync:set("held", true)
while not sync:get("go") do
  ngx.sleep(0.005)
end
sync:set("released", true)
local ok = lock:unlock()
ngx.say("hold ", tostring(elapsed), " ", tostring(err), " unlock ", tostring(ok))
"#;

const LOCK_ROUTE_WAIT: &str = r#"
local resty_lock = require "resty.lock"
local sync = ngx.shared.sync
local lock = resty_lock:new("locks", {timeout = 60, max_step = 0.01})
-- No yield between this and the first try: once the test sees "waiting",
-- this request has found the lock taken.
sync:set("waiting", true)
local elapsed, err = lock:lock("k")
local released = sync:get("released")
ngx.say("wait ", tostring(elapsed and elapsed > 0), " ", tostring(err), " released ", tostring(released))
lock:unlock()
"#;

#[test]
fn lock_excludes_a_second_request_until_the_first_unlocks() {
    let s = Server::builder(&route(
        "locks",
        &spec(
            "{name: locks, capacity: 1m}, {name: sync, capacity: 1m}",
            &[
                ("/hold", LOCK_ROUTE_HOLD),
                ("/wait", LOCK_ROUTE_WAIT),
                (
                    "/state",
                    "ngx.say(tostring(ngx.shared.sync:get('held')), ' ', tostring(ngx.shared.sync:get('waiting')))",
                ),
                ("/go", "ngx.shared.sync:set('go', true) ngx.say('go')"),
            ],
        ),
    ))
    .workers(2)
    .start();
    let hold = s.get_async("/hold");
    wait_for(IO_TIMEOUT, || s.get("/state").text().starts_with("true").then_some(()))
        .expect("the first request takes the lock");
    let wait = s.get_async("/wait");
    wait_for(IO_TIMEOUT, || (s.get("/state").text() == "true true\n").then_some(()))
        .expect("the second request starts waiting");
    assert!(!hold.is_finished() && !wait.is_finished());
    assert_eq!(body_of(&s, "/go"), "go\n");
    let hold = hold.join().unwrap();
    let wait = wait.join().unwrap();
    assert_eq!(hold.text(), "hold 0 nil unlock 1\n", "{}", s.logs());
    assert_eq!(
        wait.text(),
        "wait true nil released true\n",
        "the waiter got the lock only after the holder let go\n{}",
        s.logs()
    );
}

#[test]
fn lock_errors_timeouts_expire_and_release_on_gc() {
    let lua = r#"
local resty_lock = require "resty.lock"
local locks = ngx.shared.locks
local a = resty_lock:new("locks")
ngx.say("lock ", a:lock("e"), " ", tostring(locks:get("e")))
ngx.say("again ", tostring((a:lock("e"))), " ", select(2, a:lock("e")))
local b = resty_lock:new("locks", {timeout = 0})
ngx.say("timeout 0 ", tostring((b:lock("e"))), " ", select(2, b:lock("e")))
local c = resty_lock:new("locks", {timeout = 0.02, step = 0.005})
local e1, e2 = c:lock("e")
ngx.say("timeout ", tostring(e1), " ", e2)
local t = (function() a:expire(10) return locks:ttl("e") end)()
ngx.say("expire ", tostring(t > 9 and t <= 10))
ngx.say("unlock ", a:unlock(), " ", tostring((a:unlock())), " ", select(2, a:unlock()), " ", tostring(locks:get("e")))
ngx.say("expire unlocked ", tostring((a:expire())), " ", select(2, a:expire()))
ngx.say("nil key ", tostring((a:lock(nil))), " ", select(2, a:lock(nil)))
ngx.say("no dict ", tostring((resty_lock:new("nope"))), " ", select(2, resty_lock:new("nope")))
ngx.say("relock ", a:lock("e"), " ", b:lock("e2"), " ", a:unlock(), " ", b:unlock())
local d = resty_lock:new("locks", {exptime = 1, timeout = 5, step = 3})
ngx.say("opts ", d.exptime, " ", d.timeout, " ", d.step, " ", d.ratio, " ", d.max_step)
local function leak()
  local l = resty_lock:new("locks")
  return l:lock("g")
end
ngx.say("leaked ", leak(), " ", tostring(locks:get("g")))
collectgarbage()
collectgarbage()
ngx.say("after gc ", tostring(locks:get("g")))
"#;
    let s = Server::start(&route("lockerr", &spec("{name: locks, capacity: 1m}", &[("/t", lua)])));
    assert_eq!(
        body_of(&s, "/t"),
        "lock 0 true
again nil locked
timeout 0 nil timeout
timeout nil timeout
expire true
unlock 1 nil unlocked nil
expire unlocked nil unlocked
nil key nil nil key
no dict nil dictionary not found
relock 0 0 1 1
opts 1 1 1 2 0.5
leaked 0 true
after gc nil
"
    );
}

/// The limiters, called back to back in one handler: `ngx.now()` is one
/// instant throughout, so only upstream's millisecond truncation of the
/// stored time can move limit.req's excess (by at most 2 milli-requests per
/// call at 2 r/s), which one decimal hides.
const LIMITS_LUA: &str = r#"
local function f(v)
  if type(v) == "number" then
    return string.format("%.1f", v)
  end
  return tostring(v)
end
local function show(label, a, b)
  ngx.say(label, " ", f(a), " ", f(b))
end

local limit_req = require "resty.limit.req"
local lim = limit_req.new("store", 2, 3)
for i = 1, 5 do
  show("req" .. i, lim:incoming("k", true))
end
show("req uncommit", lim:uncommit("k"))
show("req after uncommit", lim:incoming("k", true))
show("req record", #ngx.shared.store:get("k"), type(ngx.shared.store:get("k")))
show("dry1", lim:incoming("d", true))
show("dry2", lim:incoming("d", false))
show("dry3", lim:incoming("d", false))
lim:set_burst(10)
show("burst 10", lim:incoming("k", true))
lim:set_rate(4)
show("rate 4", lim:incoming("k", true))
show("uncommit missing", lim:uncommit("missing"))
ngx.shared.store:set("abused", "abc")
show("abused", lim:incoming("abused", true))
show("no dict", limit_req.new("nope", 1, 1))
local ok, e = pcall(limit_req.new, "store", 0, 1)
show("bad rate", ok, e:match("assertion failed!$"))

local limit_count = require "resty.limit.count"
local cnt = limit_count.new("store", 3, 60)
for i = 1, 4 do
  show("count" .. i, cnt:incoming("u", true))
end
local ttl = ngx.shared.store:ttl("u")
show("count ttl", ttl > 50 and ttl <= 60)
show("count uncommit", cnt:uncommit("u"))
show("count again", cnt:incoming("u", true))
show("count dry", cnt:incoming("v", false))
show("count dry again", cnt:incoming("v", false))
show("count uncommit none", cnt:uncommit("none"))
show("count no dict", limit_count.new("nope", 1, 1))

local limit_conn = require "resty.limit.conn"
local conn = limit_conn.new("store", 2, 1, 0.5)
for i = 1, 4 do
  show("conn" .. i, conn:incoming("c", true))
  show("committed" .. i, conn:is_committed())
end
show("conn dry", conn:incoming("c", false))
show("leaving", conn:leaving("c", 0.1))
show("conn after latency", conn:incoming("c", true))
show("leaving2", conn:leaving("c"))
show("uncommit", conn:uncommit("c"))
conn:set_conn(1)
show("set_conn 1", conn:incoming("c", true))
conn:set_burst(0)
show("set_burst 0", conn:incoming("c", true))
show("leaving missing", conn:leaving("missing"))

local traffic = require "resty.limit.traffic"
local r = limit_req.new("store", 2, 2)
local c = limit_count.new("store", 5, 60)
local states = {}
show("combine1", traffic.combine({c, r}, {"tc", "tr"}, states))
show("states1", states[1], states[2])
show("combine2", traffic.combine({c, r}, {"tc", "tr"}, states))
show("states2", states[1], states[2])
local fake = {
  incoming = function(self, key, commit)
    if commit then
      return nil, "boom"
    end
    return 0, "dry"
  end,
  uncommit = function() error("never uncommitted: it never committed") end,
}
local before = ngx.shared.store:get("tc")
show("combine rollback", traffic.combine({c, fake, conn}, {"tc", "x", "tconn"}, states))
show("rolled back", ngx.shared.store:get("tc") == before, ngx.shared.store:get("tconn"))
local tight = limit_count.new("store", 1, 60)
show("combine dry reject", traffic.combine({tight, c}, {"tt", "tc2"}))
show("combine dry reject2", traffic.combine({tight, c}, {"tt", "tc2"}))
show("second call committed nothing", ngx.shared.store:get("tc2"), ngx.shared.store:get("tt"))
"#;

const LIMITS_WANT: &str = "\
req1 0.0 0.0
req2 0.5 1.0
req3 1.0 2.0
req4 1.5 3.0
req5 nil rejected
req uncommit true nil
req after uncommit 1.5 3.0
req record 16.0 string
dry1 0.0 0.0
dry2 0.5 1.0
dry3 0.5 1.0
burst 10 2.0 4.0
rate 4 1.2 5.0
uncommit missing nil not found
abused nil shdict abused by other users
no dict nil shared dict not found
bad rate false assertion failed!
count1 0.0 2.0
count2 0.0 1.0
count3 0.0 0.0
count4 nil rejected
count ttl true nil
count uncommit 0.0 nil
count again nil rejected
count dry 0.0 2.0
count dry again 0.0 2.0
count uncommit none 3.0 nil
count no dict nil shared dict not found
conn1 0.0 1.0
committed1 true nil
conn2 0.0 2.0
committed2 true nil
conn3 0.5 3.0
committed3 true nil
conn4 nil rejected
committed4 false nil
conn dry nil rejected
leaving 2.0 nil
conn after latency 0.3 3.0
leaving2 2.0 nil
uncommit 1.0 nil
set_conn 1 0.3 2.0
set_burst 0 nil rejected
leaving missing nil not found
combine1 0.0 nil
states1 4.0 0.0
combine2 0.5 nil
states2 3.0 1.0
combine rollback nil boom
rolled back true 0.0
combine dry reject 0.0 nil
combine dry reject2 nil rejected
second call committed nothing 4.0 0.0
";

#[test]
fn limit_req_count_conn_and_traffic_arithmetic() {
    let s = Server::start(&route(
        "limits",
        &spec("{name: store, capacity: 1m}", &[("/t", LIMITS_LUA)]),
    ));
    assert_eq!(body_of(&s, "/t"), LIMITS_WANT);
}
