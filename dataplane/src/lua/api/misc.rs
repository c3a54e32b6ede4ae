//! `ngx.get_phase`, `ngx.worker.*`, `ngx.config.*`, `ngx.null` and the status
//! and result constants.

use mlua::{LightUserData, Lua, Table, Value};

pub const NGINX_VERSION: &str = "1.22.1";

const STATUS: &[(&str, i64)] = &[
    ("HTTP_CONTINUE", 100),
    ("HTTP_SWITCHING_PROTOCOLS", 101),
    ("HTTP_OK", 200),
    ("HTTP_CREATED", 201),
    ("HTTP_ACCEPTED", 202),
    ("HTTP_NO_CONTENT", 204),
    ("HTTP_PARTIAL_CONTENT", 206),
    ("HTTP_SPECIAL_RESPONSE", 300),
    ("HTTP_MOVED_PERMANENTLY", 301),
    ("HTTP_MOVED_TEMPORARILY", 302),
    ("HTTP_SEE_OTHER", 303),
    ("HTTP_NOT_MODIFIED", 304),
    ("HTTP_TEMPORARY_REDIRECT", 307),
    ("HTTP_PERMANENT_REDIRECT", 308),
    ("HTTP_BAD_REQUEST", 400),
    ("HTTP_UNAUTHORIZED", 401),
    ("HTTP_PAYMENT_REQUIRED", 402),
    ("HTTP_FORBIDDEN", 403),
    ("HTTP_NOT_FOUND", 404),
    ("HTTP_NOT_ALLOWED", 405),
    ("HTTP_NOT_ACCEPTABLE", 406),
    ("HTTP_REQUEST_TIMEOUT", 408),
    ("HTTP_CONFLICT", 409),
    ("HTTP_GONE", 410),
    ("HTTP_UPGRADE_REQUIRED", 426),
    ("HTTP_TOO_MANY_REQUESTS", 429),
    ("HTTP_CLOSE", 444),
    ("HTTP_ILLEGAL", 451),
    ("HTTP_INTERNAL_SERVER_ERROR", 500),
    ("HTTP_METHOD_NOT_IMPLEMENTED", 501),
    ("HTTP_NOT_IMPLEMENTED", 501),
    ("HTTP_BAD_GATEWAY", 502),
    ("HTTP_SERVICE_UNAVAILABLE", 503),
    ("HTTP_GATEWAY_TIMEOUT", 504),
    ("HTTP_VERSION_NOT_SUPPORTED", 505),
    ("HTTP_INSUFFICIENT_STORAGE", 507),
];

const RESULTS: &[(&str, i64)] = &[("OK", 0), ("ERROR", -1), ("AGAIN", -2), ("DONE", -4), ("DECLINED", -5)];

pub fn register(lua: &Lua, ngx: &Table, worker_id: usize, worker_count: usize) -> mlua::Result<()> {
    for (name, v) in STATUS.iter().chain(RESULTS) {
        ngx.set(*name, *v)?;
    }
    for (name, id) in super::req::METHODS {
        ngx.set(format!("HTTP_{name}"), *id)?;
    }
    ngx.set("null", Value::LightUserData(LightUserData(std::ptr::null_mut())))?;
    ngx.set(
        "get_phase",
        lua.create_function(|_, ()| Ok(crate::context::phase_name()))?,
    )?;
    // Moongate has no lua_check_client_abort: ngx.on_abort answers as
    // nginx does with it off (its default), before any other check.
    ngx.set(
        "on_abort",
        lua.create_function(|_, _callback: Value| Ok((Value::Nil, "lua_check_client_abort is off")))?,
    )?;

    let worker = lua.create_table()?;
    worker.set("id", lua.create_function(move |_, ()| Ok(worker_id))?)?;
    worker.set("count", lua.create_function(move |_, ()| Ok(worker_count))?)?;
    worker.set("pid", lua.create_function(|_, ()| Ok(std::process::id()))?)?;
    // All workers are threads of one process.
    worker.set(
        "pids",
        lua.create_function(move |_, ()| Ok(vec![std::process::id(); worker_count]))?,
    )?;
    worker.set("exiting", lua.create_function(|_, ()| Ok(crate::context::exiting()))?)?;
    ngx.set("worker", worker)?;

    let config = lua.create_table()?;
    config.set("subsystem", "http")?;
    config.set("debug", false)?;
    config.set("is_console", false)?;
    config.set("nginx_version", 1_022_001)?;
    config.set("ngx_lua_version", 10_023)?;
    config.set("prefix", lua.create_function(|_, ()| Ok(""))?)?;
    config.set("nginx_configure", lua.create_function(|_, ()| Ok(""))?)?;
    ngx.set("config", config)?;

    ngx.set("location", lua.create_table()?)?;
    Ok(())
}
