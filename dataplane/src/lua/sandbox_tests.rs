//! The sandbox is an allowlist: these tests walk everything route code can
//! reach and fail on anything not on the list.
//!
//! The walk starts at a route's globals and follows what a route can follow
//! (table keys and values, `getmetatable`, the route's own `getfenv` on every
//! Lua function), and also what only the debug library could follow (raw
//! metatables, upvalues of every reachable Lua function): a wrapper that
//! captured something dangerous would leak it through its behaviour one day.
//!
//! - Through what a route can follow, the only builtins (functions of the
//!   VM's own libraries) are `TENANT_BUILTINS`; through upvalues, also
//!   `INTERNAL_BUILTINS` (the originals the sandbox wraps). Everything else
//!   of the libraries (`os.execute`, `load`, `newproxy`, `debug.*`, `jit.*`,
//!   `io.*`, …) is never reachable, nor are the host's globals, the library
//!   tables, or the string metatable.
//! - No table a route can reach is also reachable from another route of the
//!   same VM: what one route changes no other route sees.
//!
//! The VM under test loads every library (and the debug library for the
//! walk) *before* the sandbox is set up, so "absent because never loaded"
//! cannot make the test pass.

use std::collections::BTreeSet;
use std::sync::Arc;

use mlua::{Function, Lua, LuaOptions, StdLib, Table};

use super::vm::{Vm, VmSettings};
use crate::config::{Config, Phase};
use crate::shdict::DictStore;

/// Builtins a route may reach, by the name they have in a pristine VM.
const TENANT_BUILTINS: &[&str] = &[
    "assert",
    "error",
    "ipairs",
    "next",
    "pairs",
    "rawequal",
    "rawget",
    "rawset",
    "select",
    "setmetatable",
    "getmetatable",
    "type",
    "gcinfo",
    "string.char",
    "string.find",
    "string.format",
    "string.gmatch",
    "string.gsub",
    "string.len",
    "string.lower",
    "string.match",
    "string.rep",
    "string.reverse",
    "string.sub",
    "string.upper",
    "table.concat",
    "table.foreach",
    "table.foreachi",
    "table.getn",
    "coroutine.running",
    "coroutine.status",
    "coroutine.yield",
    "coroutine.isyieldable",
    "os.time",
    "os.clock",
    "os.date",
    "os.difftime",
    "math.abs",
    "math.acos",
    "math.asin",
    "math.atan",
    "math.atan2",
    "math.ceil",
    "math.cos",
    "math.cosh",
    "math.deg",
    "math.exp",
    "math.floor",
    "math.fmod",
    "math.frexp",
    "math.ldexp",
    "math.log",
    "math.log10",
    "math.max",
    "math.min",
    "math.modf",
    "math.pow",
    "math.rad",
    "math.sin",
    "math.sinh",
    "math.sqrt",
    "math.tan",
    "math.tanh",
    "bit.tobit",
    "bit.tohex",
    "bit.bnot",
    "bit.band",
    "bit.bor",
    "bit.bxor",
    "bit.lshift",
    "bit.rshift",
    "bit.arshift",
    "bit.rol",
    "bit.ror",
    "bit.bswap",
];

/// Originals the sandbox and prelude wrap: reachable only as upvalues of the
/// wrappers, which decide what a route gets from them.
const INTERNAL_BUILTINS: &[&str] = &[
    "getfenv",
    "setfenv",
    "load",
    "pcall",
    "xpcall",
    "tostring",
    "tonumber",
    "unpack",
    "coroutine.create",
    "coroutine.resume",
    "coroutine.wrap",
    "table.insert",
    "table.remove",
    "table.sort",
    "table.maxn",
    "string.byte",
];

/// Library tables walked for builtins, in the pristine VM.
const LIBRARIES: &[&str] = &[
    "string",
    "table",
    "math",
    "bit",
    "os",
    "coroutine",
    "io",
    "debug",
    "jit",
    "package",
];

const ROUTES: &str = r#"
apiVersion: moongate.dev/v1alpha1
kind: LuaRoute
metadata: {name: a, namespace: tenant}
spec:
  sharedDicts: [{name: cache, capacity: 1Mi}]
  modules:
    util: "return {f = function() return 1 end}"
  locations:
  - {path: /a, content: "ngx.say(require('util').f())", headerFilter: "ngx.header.x = 1"}
---
apiVersion: moongate.dev/v1alpha1
kind: LuaRoute
metadata: {name: b, namespace: tenant}
spec:
  sharedDicts: [{name: cache, capacity: 1Mi}]
  locations:
  - {path: /b, content: "ngx.say(2)"}
"#;

/// The built-in libraries (`lua/lib`): each route requires all of them before the walk, so
/// their instances are walked too.
const BUILT_IN_LIBS: &[&str] = &[
    "table.new",
    "table.clear",
    "table.nkeys",
    "table.isempty",
    "table.isarray",
    "table.clone",
    "resty.string",
    "resty.sha",
    "resty.md5",
    "resty.sha1",
    "resty.sha224",
    "resty.sha256",
    "resty.sha384",
    "resty.sha512",
    "resty.random",
    "resty.aes",
    "resty.hmac",
    "resty.evp",
    "ngx.base64",
    "ngx.resp",
    "ngx.process",
    "ngx.errlog",
];

/// What a route reaches, as the walker reports it.
struct Reach {
    /// `path` of every violation found.
    violations: Vec<String>,
    /// Addresses of the tables a route can reach without the debug library.
    tables: BTreeSet<usize>,
}

const WALKER: &str = r#"
local env, debug, names, tenant_ok, internal_ok, forbidden = ...
local seen, violations, tables = {}, {}, {}
local route_getfenv = env.getfenv

local function visit(v, path, via_upvalue)
    local t = type(v)
    if t ~= "table" and t ~= "function" and t ~= "userdata" and t ~= "thread" then
        return
    end
    local key = tostring(v) .. (via_upvalue and "/u" or "/t")
    if seen[key] then
        return
    end
    seen[key] = true
    if forbidden[v] then
        violations[#violations + 1] = path .. " is " .. forbidden[v]
        return
    end
    local name = names[v]
    if name and not tenant_ok[name] and not (via_upvalue and internal_ok[name]) then
        violations[#violations + 1] = path .. " is the builtin " .. name
        return
    end
    if t == "table" then
        if not via_upvalue then
            tables[#tables + 1] = string.format("%p", v)
        end
        for k, x in next, v do
            visit(k, path .. "[key " .. tostring(k) .. "]", via_upvalue)
            visit(x, path .. "." .. tostring(k), via_upvalue)
        end
        local mt = getmetatable(v)
        if type(mt) == "table" then
            visit(mt, path .. "<getmetatable>", via_upvalue)
        end
        local raw = debug.getmetatable(v)
        if raw then
            visit(raw, path .. "<metatable>", true)
        end
    elseif t == "userdata" then
        local raw = debug.getmetatable(v)
        if raw then
            visit(raw, path .. "<metatable>", true)
        end
    elseif t == "function" then
        if debug.getinfo(v, "S").what ~= "C" then
            visit(route_getfenv(v), path .. "<getfenv>", via_upvalue)
            local i = 1
            while true do
                local n, x = debug.getupvalue(v, i)
                if n == nil then
                    break
                end
                visit(x, path .. "<upvalue " .. n .. ">", true)
                i = i + 1
            end
        end
    end
end

visit(env, "_G", false)
for level = 0, 3 do
    local ok, found = pcall(route_getfenv, level)
    if ok then
        visit(found, "getfenv(" .. level .. ")", false)
    end
end
return violations, tables
"#;

/// Every builtin of `lua` by identity, named as in `LIBRARIES`.
fn builtins(lua: &Lua) -> Table {
    let names = lua.create_table().unwrap();
    let globals = lua.globals();
    for pair in globals.pairs::<String, mlua::Value>() {
        let (k, v) = pair.unwrap();
        if let mlua::Value::Function(f) = v {
            names.set(f, k).unwrap();
        }
    }
    for lib in LIBRARIES {
        let Ok(t) = globals.get::<Table>(*lib) else { continue };
        for pair in t.pairs::<String, mlua::Value>() {
            let (k, v) = pair.unwrap();
            if let mlua::Value::Function(f) = v {
                names.set(f, format!("{lib}.{k}")).unwrap();
            }
        }
    }
    names
}

/// The host values no route may reach, with what they are.
fn forbidden(lua: &Lua) -> Table {
    let t = lua.create_table().unwrap();
    t.set(lua.globals(), "the host's globals").unwrap();
    for lib in LIBRARIES {
        if let Ok(lib_table) = lua.globals().get::<Table>(*lib) {
            t.set(lib_table, format!("the host's {lib} table")).unwrap();
        }
    }
    let string_mt: Table = lua.load("return debug.getmetatable('')").eval().unwrap();
    t.set(string_mt, "the string metatable").unwrap();
    t
}

fn set_of(lua: &Lua, names: &[&str]) -> Table {
    let t = lua.create_table().unwrap();
    for n in names {
        t.set(*n, true).unwrap();
    }
    t
}

fn walk(lua: &Lua, env: Table, debug: &Table, names: &Table, forbidden: &Table) -> Reach {
    let (violations, tables): (Vec<String>, Vec<String>) = lua
        .load(WALKER)
        .set_name("=walker")
        .call((
            env,
            debug.clone(),
            names.clone(),
            set_of(lua, TENANT_BUILTINS),
            set_of(lua, INTERNAL_BUILTINS),
            forbidden.clone(),
        ))
        .unwrap();
    let tables = tables
        .iter()
        .map(|p| usize::from_str_radix(p.trim_start_matches("0x"), 16).unwrap())
        .collect();
    Reach { violations, tables }
}

/// A worker's timer state, as `Worker::new` creates it.
fn worker_timers(
    dicts: &Arc<DictStore>,
) -> (
    std::rc::Rc<crate::lua::api::timer::Timers>,
    std::rc::Rc<crate::durable_timer::DurableTimers>,
) {
    let sched = std::rc::Rc::new(crate::sched::Sched::default());
    let timers = crate::lua::api::timer::Timers::new(sched.clone());
    let durable_timers = crate::durable_timer::DurableTimers::new(0, 1, dicts.clone(), sched);
    (std::rc::Rc::new(timers), std::rc::Rc::new(durable_timers))
}

#[test]
fn nothing_off_the_allowlist_is_reachable_and_routes_share_no_table() {
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(|| {
            // SAFETY: a test VM with every library, for the walk; the sandbox
            // is set up on it exactly as on a production VM.
            let lua = unsafe { Lua::unsafe_new_with(StdLib::ALL_SAFE | StdLib::DEBUG, LuaOptions::new()) };
            let debug: Table = lua.globals().get("debug").unwrap();
            let names = builtins(&lua);
            let forbidden = forbidden(&lua);
            let dicts = Arc::new(DictStore::default());
            let settings = VmSettings {
                worker_id: 0,
                worker_count: 1,
                memory_limit: 64 << 20,
                sockets: Default::default(),
            };
            let (timers, durable_timers) = worker_timers(&dicts);
            let vm =
                std::rc::Rc::new(Vm::with_lua(lua, "tenant", &settings, &dicts, &timers, &durable_timers).unwrap());
            let routes = moongate_route::source::parse_routes(ROUTES, None).unwrap();
            let sourced: Vec<_> = routes
                .into_iter()
                .map(|route| moongate_route::source::SourcedRoute {
                    file: "t.yaml".into(),
                    route,
                })
                .collect();
            let snapshot = moongate_route::standalone::from_sources(&sourced, &[], 1)
                .unwrap()
                .snapshot;
            let config = Arc::new(Config::try_from(&snapshot).unwrap());
            let limits = crate::lua::budget::FALLBACK;
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut reaches = Vec::new();
            for route in &config.routes {
                let loaded = runtime
                    .block_on(vm.load_route(route, &config, &dicts, limits, 1 << 20))
                    .unwrap();
                let handler: &Function = loaded.handlers[0][Phase::Content as usize].as_ref().unwrap();
                let env: Table = debug.get::<Function>("getfenv").unwrap().call(handler.clone()).unwrap();
                let require: Function = env.get("require").unwrap();
                for name in BUILT_IN_LIBS {
                    let m: mlua::Value = require.call(*name).unwrap();
                    assert!(!m.is_nil(), "require {name:?} returned nil");
                }
                // `io` is the route's own, and refuses files with nil, err.
                let io: Table = env.get("io").unwrap();
                let (file, err): (mlua::Value, String) =
                    io.get::<Function>("open").unwrap().call(("/etc/passwd", "r")).unwrap();
                assert!(file.is_nil());
                assert_eq!(err, "/etc/passwd: file access is not allowed in a LuaRoute");
                let io_address = io.to_pointer() as usize;
                let reach = walk(vm.lua(), env, &debug, &names, &forbidden);
                assert!(reach.tables.contains(&io_address), "the walk went through io");
                reaches.push((route.id.clone(), reach));
            }
            for (route, reach) in &reaches {
                assert!(
                    reach.violations.is_empty(),
                    "route {route} reaches what it must not:\n{}",
                    reach.violations.join("\n")
                );
                assert!(
                    reach.tables.len() > 20,
                    "the walk went through the env ({})",
                    reach.tables.len()
                );
            }
            let shared: Vec<_> = reaches[0].1.tables.intersection(&reaches[1].1.tables).collect();
            assert!(shared.is_empty(), "tables both routes can reach: {shared:x?}");
        })
        .unwrap()
        .join()
        .unwrap();
}

/// `table.sort` with a comparator is a Lua port of LuaJIT's (so that the
/// comparator can be preempted): for the same input and comparator it must
/// make the same permutation, equal keys included, and fail with "invalid
/// order function" exactly where the C original does.
#[test]
fn table_sort_with_a_comparator_matches_luajits_own() {
    let lua = Lua::new();
    let table: Table = lua.globals().get("table").unwrap();
    let c_sort: Function = table.get("sort").unwrap();
    let settings = VmSettings {
        worker_id: 0,
        worker_count: 1,
        memory_limit: 64 << 20,
        sockets: Default::default(),
    };
    let dicts = Arc::new(DictStore::default());
    let (timers, durable_timers) = worker_timers(&dicts);
    let _vm = Vm::with_lua(lua.clone(), "tenant", &settings, &dicts, &timers, &durable_timers).unwrap();
    let lua_sort: Function = table.get("sort").unwrap();
    assert_ne!(
        lua_sort.to_pointer(),
        c_sort.to_pointer(),
        "the sandbox replaced table.sort"
    );
    let report: String = lua
        .load(
            r#"
local c_sort, lua_sort = ...
local seed
local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648 return seed % n + 1 end
local cmps = {
    lt = function(a, b) return a.k < b.k end,
    gt = function(a, b) return a.k > b.k end,
    le = function(a, b) return a.k <= b.k end,
    always = function() return true end,
    coin = function() return rnd(2) == 1 end,
}
local bad, runs, failures = {}, 0, 0
for _, n in ipairs({0, 1, 2, 3, 4, 5, 7, 8, 13, 31, 64, 100, 257, 1000}) do
    for name, cmp in pairs(cmps) do
        for round = 1, 5 do
            seed = n * 7919 + round
            local a, b = {}, {}
            for i = 1, n do
                local r = { k = rnd(n / 2 + 1), id = i }
                a[i], b[i] = r, r
            end
            local s = seed
            local ok1, e1 = pcall(c_sort, a, cmp)
            seed = s
            local ok2, e2 = pcall(lua_sort, b, cmp)
            runs = runs + 1
            if not ok1 then failures = failures + 1 end
            local same = ok1 == ok2
            if not ok1 and same then
                same = tostring(e1):match("invalid order function") ~= nil
                    and tostring(e2):match("invalid order function") ~= nil
            end
            for i = 1, n do
                if a[i] ~= b[i] then same = false end
            end
            if not same then
                bad[#bad + 1] = name .. " n=" .. n .. " round " .. round .. ": " .. tostring(e1) .. " / " .. tostring(e2)
            end
        end
    end
end
return #bad .. " of " .. runs .. " differ (" .. failures .. " failed in C)\n" .. table.concat(bad, "\n")
"#,
        )
        .call((c_sort, lua_sort))
        .unwrap();
    assert!(report.starts_with("0 of "), "{report}");
    assert!(!report.contains("(0 failed"), "some cases must fail in C too: {report}");
}
