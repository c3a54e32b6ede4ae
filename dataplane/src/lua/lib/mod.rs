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
//! `resty.random`, `resty.aes` (`resty_string`), and resty.core's `ngx.base64`,
//! `ngx.resp`, `ngx.process`, `ngx.errlog` (`ngx_modules`). `io` is not a module
//! here: it is a global of every route (`sandbox.lua`).
//!
//! Invariant: what a constructor returns is either a function (shared C
//! functions are immutable to routes) or a table created for that call, so
//! no route can change what another route's `require` returns.

mod cjson;
mod ngx_modules;
mod resty_string;
mod table;

use mlua::{Function, Lua, Table, Value};

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
    ngx_modules::register(lua, &libs)?;
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
