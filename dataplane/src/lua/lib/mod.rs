//! The built-in library set: modules OpenResty code `require`s that cannot be
//! loaded from a route's own sources, because upstream builds them on C or on
//! `ffi` (which stays out of the sandbox: it would make every route a path to
//! the host). Each is a native implementation under the same module name, with
//! the same API and semantics.
//!
//! `build` returns the VM's registry: module name -> constructor
//! `function(route_ngx, env) -> module`. The sandbox's `require` calls a
//! constructor once per route, on the route's first `require` of that name,
//! so every route gets its own instance and a built-in name always wins over
//! a route module of the same name.
//!
//! The set: `cjson` and `cjson.safe` (`cjson`), `table.new`/`clear`/`nkeys`/`isempty`/`isarray`/`clone` (`table`),
//! lua-resty-string's `resty.string`, `resty.md5`, `resty.sha1` … `resty.sha512`,
//! `resty.random`, `resty.aes` (`resty_string`), lua-resty-hmac's `resty.hmac` and the
//! `resty.evp` lua-resty-jwt loads (`resty_hmac`: HMAC only, no RSA), resty.core's `ngx.base64`,
//! `ngx.resp`, `ngx.process`, `ngx.errlog` (`ngx_modules`), and lua-resty-websocket's
//! `resty.websocket.protocol` (`websocket`). `io` is not a module
//! here: it is a global of every route (`sandbox.lua`).
//!
//! Invariant: what a constructor returns is either a function (shared C
//! functions are immutable to routes) or a table created for that call, so
//! no route can change what another route's `require` returns.
//!
//! The Lua-written libraries are chunks compiled and run once per VM, here,
//! before the prelude and the sandbox strip the host's globals: each returns
//! its constructor(s), which keep what they need of the host as upvalues.
//! What a route reaches of them is only the module tables the constructors
//! build, from the route's own `ngx` and `env`.
//!
//! - `resty.lrucache`, `resty.lrucache.pureffi`: lua-resty-lrucache (`lrucache.lua`).
//! - `resty.lock`: lua-resty-lock over `ngx.shared` (`lock.lua`).
//! - `resty.limit.req`, `.count`, `.conn`, `.traffic`: lua-resty-limit-traffic (`limit/`).

mod cjson;
mod ngx_modules;
mod resty_hmac;
mod resty_string;
mod table;
mod websocket;

use mlua::{Function, Lua, Table, Value};

const LRUCACHE: &str = include_str!("lrucache.lua");
const LOCK: &str = include_str!("lock.lua");
const LIMITS: [(&str, &str, &str); 4] = [
    ("resty.limit.req", "resty/limit/req.lua", include_str!("limit/req.lua")),
    (
        "resty.limit.count",
        "resty/limit/count.lua",
        include_str!("limit/count.lua"),
    ),
    (
        "resty.limit.conn",
        "resty/limit/conn.lua",
        include_str!("limit/conn.lua"),
    ),
    (
        "resty.limit.traffic",
        "resty/limit/traffic.lua",
        include_str!("limit/traffic.lua"),
    ),
];

/// Runs the library chunk `source` (named `name` in error messages) and
/// returns what it returns.
fn run<R: mlua::FromLuaMulti>(lua: &Lua, name: &str, source: &str) -> mlua::Result<R> {
    lua.load(source).set_name(format!("={name}")).call(())
}

/// `guard(finalizer)`: a new userdata whose `__gc` is `finalizer` and whose
/// metatable Lua cannot read (`__metatable = false`). The host's `newproxy`
/// stays inside this Rust function, so nothing a route can reach (upvalues
/// included) leads to it; the metatable of each guard is its own.
fn gc_guard(lua: &Lua) -> mlua::Result<Function> {
    let globals = lua.globals();
    let newproxy: Function = globals.get("newproxy")?;
    let getmetatable: Function = globals.get("getmetatable")?;
    lua.create_function(move |_, finalizer: Function| {
        let proxy: mlua::Value = newproxy.call(true)?;
        let metatable: Table = getmetatable.call(&proxy)?;
        metatable.raw_set("__gc", finalizer)?;
        metatable.raw_set("__metatable", false)?;
        Ok(proxy)
    })
}

pub fn build(lua: &Lua) -> mlua::Result<Table> {
    let libs = lua.create_table()?;
    cjson::register(lua, &libs)?;
    // `require "table.new"` returns the function and sets `table.new` in the
    // requiring route's own `table`, as LuaJIT's lj_lib_postreg does.
    for (name, f) in table::functions(lua)? {
        let make = lua.create_function(move |_, (_ngx, env): (Value, Table)| {
            if let Value::Table(t) = env.raw_get::<Value>("table")? {
                t.raw_set(name, f.clone())?;
            }
            Ok(f.clone())
        })?;
        libs.raw_set(format!("table.{name}"), make)?;
    }
    resty_string::register(lua, &libs)?;
    resty_hmac::register(lua, &libs)?;
    ngx_modules::register(lua, &libs)?;
    websocket::register(lua, &libs)?;
    let (lrucache, pureffi): (Function, Function) = run(lua, "resty/lrucache.lua", LRUCACHE)?;
    libs.set("resty.lrucache", lrucache)?;
    libs.set("resty.lrucache.pureffi", pureffi)?;
    let lock: Function = lua.load(LOCK).set_name("=resty/lock.lua").call(gc_guard(lua)?)?;
    libs.set("resty.lock", lock)?;
    for (module, file, source) in LIMITS {
        libs.set(module, run::<Function>(lua, file, source)?)?;
    }
    Ok(libs)
}

/// A constructor that builds a fresh table from `fields` on every call.
fn fresh_table(lua: &Lua, fields: Vec<(&'static str, Value)>) -> mlua::Result<Function> {
    lua.create_function(move |lua, (_ngx, _env): (Value, Value)| {
        let t = lua.create_table()?;
        for (k, v) in &fields {
            t.raw_set(*k, v.clone())?;
        }
        Ok(t)
    })
}
