//! A hostile handler against the worker it runs on: crashes through C
//! re-entry (finding 3), CPU the instruction hook cannot see or that a route
//! can exempt itself from (finding 4), and memory bombs (finding 5). Every
//! test runs one worker (`--workers 1`), so "the same worker" is certain: the
//! hostile request must itself come back with an error status (a hung worker
//! never answers), and a normal route must answer afterwards from the same
//! process, which must not have exited.

mod common;

use std::time::Duration;

use common::{Response, Server, route_in};

const WAIT: Duration = Duration::from_secs(60);

/// Where every hostile handler lives, and what its log lines must name.
const ROUTE: &str = "hostile/attacker";

/// Lua indented by `depth` spaces, for a YAML block scalar.
fn block(text: &str, depth: usize) -> String {
    text.lines().map(|l| format!("{:depth$}{l}\n", "")).collect()
}

/// Route hostile/attacker: `/hostile` runs `lua`, `/ok` answers "ok"; `extra`
/// spec lines (indented by 2) go before the locations.
fn attacker(extra: &str, lua: &str) -> String {
    route_in(
        "hostile",
        "attacker",
        &format!(
            "{extra}  locations:\n  - path: /hostile\n    content: |\n{}  - path: /ok\n    content: ngx.say('ok')\n",
            block(lua, 6)
        ),
    )
}

/// A line logged after `from` that contains every one of `needles`.
fn wait_line(s: &Server, from: usize, needles: &[&str]) -> Option<String> {
    common::wait_for(WAIT, || {
        s.logs_since(from)
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
    })
}

/// The hostile request's response; on none, says whether the process died or hung.
fn hostile_request(s: &mut Server) -> Response {
    match s.try_get_host("localhost", "/hostile", "") {
        Ok(r) => r,
        Err(e) => {
            let exited = s.wait_exit(Duration::from_secs(5));
            match exited {
                Some(status) => panic!(
                    "the dataplane died ({status}) on the hostile request ({e}):\n{}",
                    s.logs()
                ),
                None => panic!(
                    "the hostile request got no answer ({e}): the worker hung:\n{}",
                    s.logs()
                ),
            }
        }
    }
}

/// After the hostile request: the same single worker serves another route, and the process is alive.
fn assert_still_serving(s: &mut Server) {
    let r = s
        .try_get_host("localhost", "/ok", "")
        .unwrap_or_else(|e| panic!("no answer after the hostile request: {e}; exited: {:?}", s.try_wait()));
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"), "{}", s.logs());
    assert!(s.try_wait().is_none(), "the dataplane exited");
}

/// Runs `lua` as the hostile handler with `extra` spec lines and dataplane
/// `args`: it must get a 500 and a log line holding every one of `needles`,
/// and leave the worker serving.
fn assert_fails_logging(extra: &str, args: &[&str], lua: &str, needles: &[&str]) {
    let mut b = Server::builder(&attacker(extra, lua)).workers(1);
    for a in args {
        b = b.arg(a);
    }
    let mut s = b.start();
    let from = s.log_count();
    let r = hostile_request(&mut s);
    assert_eq!(
        r.status,
        500,
        "the hostile request: {:?}; logs:\n{}",
        r.text(),
        s.logs()
    );
    wait_line(&s, from, needles).unwrap_or_else(|| panic!("no error line with {needles:?}:\n{}", s.logs()));
    assert_still_serving(&mut s);
}

/// The hostile handler fails with a 500 and a line naming the route and the phase.
fn assert_contained(extra: &str, lua: &str) {
    assert_fails_logging(extra, &[], lua, &[ROUTE, "/hostile", "content"]);
}

/// `kB` of `field` (VmRSS, VmHWM) in /proc/PID/status.
fn proc_kb(s: &Server, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
}

/// Generous: today's code reaches gigabytes; the dataplane idles near 30 MB.
const PEAK_LIMIT_KB: u64 = 600 * 1024;

// ---------------------------------------------------------------- finding 3: crashes

macro_rules! crash_tests {
    ($($(#[$doc:meta])* $name:ident: $lua:expr;)*) => {
        $(
            $(#[$doc])*
            #[test]
            fn $name() {
                assert_contained("", $lua);
            }
        )*
    };
}

crash_tests! {
    /// Finding 3: `ngx.say` of a cyclic table overflowed the stack.
    ngx_say_of_a_cyclic_table_fails_only_its_request:
        "local t = {}\nt[1] = t\nngx.say(t)";
    /// Finding 3: `ngx.say` of a table nested 100000 deep overflowed the stack.
    ngx_say_of_a_table_nested_100000_deep_fails_only_its_request:
        "local t = {}\nlocal cur = t\nfor i = 1, 100000 do local n = {} cur[1] = n cur = n end\nngx.say(t)";
    /// Finding 3: recursion through `ngx.re.gsub`'s callback, 100000 deep.
    recursion_through_ngx_re_gsub_callbacks_fails_only_its_request: r#"
local depth = 0
local function again(m)
  depth = depth + 1
  if depth > 100000 then return "" end
  local r, n, err = ngx.re.gsub("a", "a", again)
  if not r then error(err) end
  return r
end
ngx.say(again())"#;
    /// Finding 3: recursion through `string.gsub`'s callback, 100000 deep.
    recursion_through_string_gsub_callbacks_fails_only_its_request: r#"
local depth = 0
local function again()
  depth = depth + 1
  if depth > 100000 then return "" end
  return (string.gsub("a", "a", again))
end
ngx.say(again())"#;
    /// Finding 3, other C re-entry: a string.gsub replacement table whose `__index` gsubs again.
    recursion_through_a_string_gsub_replacement_table_fails_only_its_request: r#"
local depth = 0
local repl = setmetatable({}, { __index = function(t, k)
  depth = depth + 1
  if depth > 100000 then return "" end
  return (string.gsub("a", "a", t))
end })
ngx.say((string.gsub("a", "a", repl)))"#;
    /// Finding 3, other C re-entry: a `table.sort` comparator that sorts again.
    a_table_sort_comparator_that_sorts_again_fails_only_its_request: r#"
local depth = 0
local function cmp(a, b)
  depth = depth + 1
  if depth < 100000 then table.sort({ 2, 1 }, cmp) end
  return a < b
end
table.sort({ 2, 1 }, cmp)
ngx.say("sorted ", depth)"#;
    /// Finding 3, other C re-entry: `__tostring` that calls `tostring`.
    a_tostring_metamethod_calling_tostring_fails_only_its_request: r#"
local mt = {}
mt.__tostring = function() return tostring(setmetatable({}, mt)) end
ngx.say(tostring(setmetatable({}, mt)))"#;
    /// Finding 3, other C re-entry: `string.format("%s", x)` with a recursive `__tostring`.
    string_format_with_a_recursive_tostring_fails_only_its_request: r#"
local mt = {}
mt.__tostring = function() return string.format("%s", setmetatable({}, mt)) end
ngx.say(string.format("%s", setmetatable({}, mt)))"#;
    /// Finding 3, other Rust re-entry: `ngx.log` of a value whose `__tostring` logs again.
    ngx_log_with_a_recursive_tostring_fails_only_its_request: r#"
local mt = {}
mt.__tostring = function() ngx.log(ngx.ERR, setmetatable({}, mt)) return "x" end
ngx.log(ngx.ERR, setmetatable({}, mt))
error("ngx.log returned")"#;
    /// Finding 3, other re-entry: an `__index` function indexing again.
    an_index_metamethod_recursing_fails_only_its_request: r#"
local mt = {}
mt.__index = function(t, k) return setmetatable({}, mt)[k] end
ngx.say(setmetatable({}, mt).x)"#;
    /// Finding 3, other re-entry: `__concat` concatenating again.
    a_concat_metamethod_recursing_fails_only_its_request: r#"
local mt = {}
mt.__concat = function(a, b) return setmetatable({}, mt) .. b end
ngx.say(setmetatable({}, mt) .. "x")"#;
    /// Finding 3, other re-entry: `__eq` comparing again.
    an_eq_metamethod_recursing_fails_only_its_request: r#"
local mt = {}
mt.__eq = function(a, b) return setmetatable({}, mt) == setmetatable({}, mt) end
ngx.say(tostring(setmetatable({}, mt) == setmetatable({}, mt)))"#;
    /// Finding 3, other C re-entry: `coroutine.wrap` nested 100000 deep.
    coroutine_wrap_nested_100000_deep_fails_only_its_request: r#"
local function nest(d)
  if d == 0 then return 0 end
  return coroutine.wrap(function() return nest(d - 1) + 1 end)()
end
ngx.say(nest(100000))"#;
    /// Finding 3, other re-entry: `pcall` nested 100000 deep (errors re-raised).
    pcall_nested_100000_deep_fails_only_its_request: r#"
local function nest(d)
  if d == 0 then return 0 end
  local ok, v = pcall(nest, d - 1)
  if not ok then error(v, 0) end
  return v + 1
end
ngx.say(nest(100000))"#;
    /// Finding 3, other C re-entry: `load` with a reader function that calls `load`.
    load_with_a_reader_that_loads_again_fails_only_its_request: r#"
local depth = 0
local function reader()
  depth = depth + 1
  if depth < 100000 then
    local f, err = load(reader)
    if not f and err then error(err, 0) end
  end
  return nil
end
local f, err = load(reader)
error("load returned at depth " .. depth .. ": " .. tostring(err))"#;
    /// Finding 3, other C re-entry: an `xpcall` handler that errors into itself.
    an_xpcall_handler_recursing_fails_only_its_request: r#"
local function handler(e)
  local ok, e2 = xpcall(function() error("again") end, handler)
  return e2
end
local ok, e = xpcall(function() error("first") end, handler)
error("xpcall returned: " .. tostring(e), 0)"#;
}

/// Finding 3, other re-entry: `require` recursion through the route's modules.
#[test]
fn require_recursion_through_modules_fails_only_its_request() {
    assert_contained(
        "  modules:\n    ping: return require('pong')\n    pong: return require('ping')\n",
        "ngx.say(tostring(require('ping')))",
    );
}

// ---------------------------------------------------------------- finding 4: CPU

/// The hostile handler is aborted with the budget line naming the route.
fn assert_preempted(extra: &str, args: &[&str], lua: &str) {
    assert_fails_logging(extra, args, lua, &["instruction budget exceeded", ROUTE]);
}

/// Finding 4: a loop of `coroutine.resume` caught the budget error of each
/// coroutine it resumed and ran forever. After: the handler is aborted.
#[test]
fn a_loop_of_coroutine_resume_cannot_catch_the_budget_error() {
    assert_preempted(
        "",
        &[],
        "while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
    );
}

/// Finding 4: the same through `coroutine.wrap` under `pcall`.
#[test]
fn a_loop_of_pcall_over_coroutine_wrap_cannot_catch_the_budget_error() {
    assert_preempted(
        "",
        &[],
        "while true do pcall(coroutine.wrap(function() while true do end end)) end",
    );
}

/// Finding 4: a route's `limits.instructionBudget: 1e15` disabled preemption.
/// After: the operator's `--instruction-budget` is a ceiling.
#[test]
fn a_routes_instruction_budget_cannot_raise_the_operators() {
    assert_preempted(
        "  limits: {instructionBudget: 1000000000000000}\n",
        &["--instruction-budget", "10000000"],
        "while true do end",
    );
}

/// Finding 4: 400 `ngx.re.find` calls, each at PCRE2's match limit (which
/// `ngx.re.find` today reports as no match, not as an error), held a worker for
/// seconds of CPU the hook never saw. After: regex work is charged to the
/// budget, and the request is aborted with the budget line. (Regex work is
/// charged by its CPU time, so the loop runs 20000 calls: far past the
/// budget on any machine, where 400 could fit in it on a fast one.)
#[test]
fn regex_work_at_the_match_limit_is_charged_to_the_instruction_budget() {
    assert_preempted(
        "",
        &[],
        "local s = ('a'):rep(64) .. '!'\nfor i = 1, 20000 do ngx.re.find(s, '^(a+)+$', 'o') end\nngx.say('done')",
    );
}

/// The hostile pattern: backtracking that never ends in practice, all in C.
const BACKTRACK: &str = "local s, p = ('a'):rep(3000), ('a*'):rep(20) .. 'b'\n";

/// Finding 4: a backtracking Lua pattern ran in C, where the hook cannot see it.
/// After: the request fails with an error, the worker serves on.
fn assert_pattern_contained(call: &str) {
    let mut s = Server::builder(&attacker("", &format!("{BACKTRACK}{call}\nngx.say('finished')")))
        .workers(1)
        .start();
    let from = s.log_count();
    let r = hostile_request(&mut s);
    assert_eq!(r.status, 500, "{:?}", r.text());
    wait_line(&s, from, &[ROUTE, "/hostile"]).unwrap_or_else(|| panic!("no error line:\n{}", s.logs()));
    assert_still_serving(&mut s);
}

/// Finding 4: `string.find` with a backtracking pattern.
#[test]
fn a_backtracking_string_find_is_bounded() {
    assert_pattern_contained("string.find(s, p)");
}

/// Finding 4: `string.match` with a backtracking pattern.
#[test]
fn a_backtracking_string_match_is_bounded() {
    assert_pattern_contained("string.match(s, p)");
}

/// Finding 4: `string.gsub` with a backtracking pattern.
#[test]
fn a_backtracking_string_gsub_is_bounded() {
    assert_pattern_contained("string.gsub(s, p, '')");
}

/// Finding 4: `string.gmatch` with a backtracking pattern.
#[test]
fn a_backtracking_string_gmatch_is_bounded() {
    assert_pattern_contained("for m in string.gmatch(s, p) do end");
}

/// Finding 4: the same pattern in `init` kept the dataplane from ever becoming
/// ready. After: it becomes ready, the route is reported, other routes serve.
#[test]
fn a_backtracking_pattern_in_init_does_not_keep_the_dataplane_from_starting() {
    let yaml = format!(
        "{}---\n{}",
        route_in(
            "hostile",
            "attacker",
            &format!(
                "  hostnames: [hostile.example]\n  init: |\n{}  locations:\n  - path: /hostile\n    content: ngx.say('attacker served')\n",
                block(&format!("{BACKTRACK}string.find(s, p)"), 4)
            ),
        ),
        route_in(
            "other",
            "bystander",
            "  locations:\n  - path: /ok\n    content: ngx.say('ok')\n"
        ),
    );
    let mut s = Server::builder(&yaml).workers(1).start();
    wait_line(&s, 0, &[ROUTE]).unwrap_or_else(|| panic!("the route's failure is not reported:\n{}", s.logs()));
    assert_still_serving(&mut s);
}

/// Finding 4: `string.rep("x", 2^30)` stalled a worker for seconds and grew it
/// by a gigabyte. After: it fails fast with an error, and RSS stays small.
#[test]
fn string_rep_of_a_gigabyte_fails_fast_and_stays_small() {
    let mut s = Server::builder(&attacker("", "local s = string.rep('x', 2^30)\nngx.say(#s)"))
        .workers(1)
        .start();
    let from = s.log_count();
    let r = hostile_request(&mut s);
    assert_eq!(r.status, 500, "{:?}", r.text());
    wait_line(&s, from, &[ROUTE, "/hostile"]).unwrap_or_else(|| panic!("no error line:\n{}", s.logs()));
    let peak = proc_kb(&s, "VmHWM");
    assert!(peak < PEAK_LIMIT_KB, "peak RSS {peak} kB");
    assert_still_serving(&mut s);
}

/// Finding 4: a `table.sort` comparator ran inside C, where the hook cannot
/// preempt, so a slow one held the worker for a whole stretch and a large
/// sort with a comparator was cut off. After: the comparator runs from Lua:
/// a sort of 50,000 records (millions of instructions) completes, and one
/// that never returns is preempted and aborted at the budget, not as an
/// unpreemptible stretch.
#[test]
fn a_table_sort_comparator_is_preemptible() {
    let lua = r#"
local t = {}
for i = 1, 50000 do t[i] = { k = (i * 7919) % 50000 } end
table.sort(t, function(a, b) return a.k < b.k end)
for i = 2, #t do assert(t[i - 1].k <= t[i].k, "out of order") end
ngx.say("sorted ", #t)"#;
    let mut s = Server::builder(&attacker("", lua)).workers(1).start();
    let r = hostile_request(&mut s);
    assert_eq!((r.status, r.text().as_str()), (200, "sorted 50000\n"), "{}", s.logs());
    drop(s);
    let endless = "local t = {} for i = 1, 100 do t[i] = i end\ntable.sort(t, function(a, b) while true do end end)";
    let mut s = Server::builder(&attacker("", endless)).workers(1).start();
    let from = s.log_count();
    assert_eq!(hostile_request(&mut s).status, 500);
    let line = wait_line(&s, from, &["instruction budget exceeded", ROUTE])
        .unwrap_or_else(|| panic!("no budget line naming the route:\n{}", s.logs()));
    assert!(
        !line.contains("too long without a point"),
        "aborted as unpreemptible: {line}"
    );
    assert_still_serving(&mut s);
}

/// Finding 4: a timer got a fresh budget at every resume, so a callback that
/// yields between bursts burned CPU forever. After: the timer is aborted with
/// the budget line naming the route, and a normal route on the same worker answers.
#[test]
fn a_timer_that_yields_between_bursts_is_still_preempted() {
    let mut s = Server::builder(&attacker(
        "",
        "ngx.timer.at(0, function() while true do ngx.sleep(0) for i = 1, 5e6 do end end end)\nngx.say('armed')",
    ))
    .workers(1)
    .start();
    let from = s.log_count();
    let r = hostile_request(&mut s);
    assert_eq!((r.status, r.text().as_str()), (200, "armed\n"));
    wait_line(&s, from, &["instruction budget exceeded", ROUTE])
        .unwrap_or_else(|| panic!("the timer was never preempted:\n{}", s.logs()));
    assert_still_serving(&mut s);
}

/// Finding 4: a location calling `ngx.location.capture_multi` on itself with a
/// fan-out of 10 had no bound on the number of subrequests (only depth 50).
/// After: the request ends with an error status (nginx caps a request at 65535
/// subrequests), and the worker serves on.
#[test]
fn recursive_capture_multi_fan_out_is_bounded() {
    let lua = r#"
local reqs = {}
for i = 1, 10 do reqs[i] = { "/hostile" } end
local res = { ngx.location.capture_multi(reqs) }
for _, r in ipairs(res) do
  if r.status ~= 200 then return ngx.exit(r.status) end
end
ngx.say("fanned out")"#;
    let mut s = Server::builder(&attacker("", lua)).workers(1).start();
    let r = hostile_request(&mut s);
    assert!(r.status >= 400, "the fan-out ended with {}: {:?}", r.status, r.text());
    assert_still_serving(&mut s);
}

// ---------------------------------------------------------------- finding 5: memory

/// Finding 5: a 1 GiB string was allowed; RSS went from 26 MB to 2.1 GB and
/// stayed. After: the request fails with 500 and a `not enough memory` line,
/// the peak stays bounded, and the dataplane serves on.
#[test]
fn a_gigabyte_string_fails_its_request_with_not_enough_memory() {
    let lua = "local piece = string.rep('x', 2^20)\nlocal t = {}\nfor i = 1, 1024 do t[i] = piece end\nlocal s = table.concat(t)\nngx.say(#s)";
    let mut s = Server::builder(&attacker("", lua)).workers(1).start();
    let from = s.log_count();
    let r = hostile_request(&mut s);
    assert_eq!(r.status, 500, "{:?}", r.text());
    wait_line(&s, from, &["not enough memory"]).unwrap_or_else(|| panic!("no memory error line:\n{}", s.logs()));
    let peak = proc_kb(&s, "VmHWM");
    assert!(peak < PEAK_LIMIT_KB, "peak RSS {peak} kB");
    assert_still_serving(&mut s);
}

/// Finding 5: four concurrent requests each held 256 MiB across `ngx.sleep`.
/// After: each fails with 500 and a `not enough memory` line, the peak stays
/// bounded, and the dataplane then serves normally.
#[test]
fn concurrent_requests_cannot_each_hold_a_quarter_gigabyte() {
    // Each request, once it holds its 256 MiB, waits (bounded) until all four do.
    let lua = r#"
local piece = string.rep("y", 2^20)
local t = {}
for i = 1, 256 do t[i] = piece end
local s = table.concat(t)
local held = ngx.shared.m:incr("held", 1, 0)
local n = 0
while (ngx.shared.m:get("held") or 0) < 4 and n < 1000 do ngx.sleep(0.01) n = n + 1 end
ngx.say(#s)"#;
    let mut s = Server::builder(&attacker("  sharedDicts: [{name: m, capacity: 1Mi}]\n", lua))
        .workers(1)
        .start();
    let from = s.log_count();
    let pending: Vec<_> = (0..4).map(|_| s.get_async_raw("/hostile")).collect();
    for (i, p) in pending.into_iter().enumerate() {
        let raw = p.join().unwrap();
        let head = String::from_utf8_lossy(&raw[..raw.len().min(12)]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 500"),
            "request {i}: {:?}",
            String::from_utf8_lossy(&raw)
        );
    }
    wait_line(&s, from, &["not enough memory"]).unwrap_or_else(|| panic!("no memory error line:\n{}", s.logs()));
    let peak = proc_kb(&s, "VmHWM");
    assert!(peak < PEAK_LIMIT_KB, "peak RSS {peak} kB");
    assert_still_serving(&mut s);
}
