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

mod cjson;

use mlua::{Lua, Table};

pub fn build(lua: &Lua) -> mlua::Result<Table> {
    let libs = lua.create_table()?;
    cjson::register(lua, &libs)?;
    Ok(libs)
}
