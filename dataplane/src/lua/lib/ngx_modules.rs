//! lua-resty-core's `ngx.*` modules that have no `ngx` field of their own: `ngx.base64`
//! (`encode_base64url`, `decode_base64url`), `ngx.resp` (`add_header`), `ngx.process` and
//! `ngx.errlog`. Upstream reaches nginx through `ffi`; here the Lua side (`ngx_modules.lua`) is
//! loaded per route in the route's own environment, and calls the natives below.
//!
//! Moongate is one process whose workers are threads, so `ngx.process.type()` is "worker" and
//! the master's pid is the process's own. What would let a route act on the gateway itself
//! (privileged agents, a graceful exit, changing or capturing the error log) answers
//! `nil, err`, as upstream does where the feature is not configured.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use mlua::{Function, Lua, Table, Value};

use crate::context;
use crate::lua::api::header;
use crate::lua::budget;

const SOURCE: &str = include_str!("ngx_modules.lua");

/// `ngx_encode_base64url`: the URL-safe alphabet, no padding.
fn encode_base64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// `ngx_decode_base64url`: input ends at the first `=`, unused trailing bits are ignored, any
/// other byte outside the URL-safe alphabet fails.
fn decode_base64url(input: &[u8]) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone),
    );
    let end = input.iter().position(|&b| b == b'=').unwrap_or(input.len());
    let data = &input[..end];
    if data.len() % 4 == 1
        || !data
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    LENIENT.decode(data).ok()
}

/// nginx's level for the most verbose line the gateway logs (`get_sys_filter_level`).
fn sys_filter_level() -> i64 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 4,
        LevelFilter::WARN => 5,
        LevelFilter::INFO => 7,
        _ => 8,
    }
}

/// `ngx.resp.add_header(key, value)`: `ngx.header[key]`'s rules (phases, escaping, after the
/// headers are sent), but the values are added to those already set.
fn add_header(lua: &Lua, (key, value): (mlua::LuaString, Value)) -> mlua::Result<()> {
    let added: Vec<Value> = match value {
        Value::Table(t) => t.sequence_values::<Value>().collect::<mlua::Result<_>>()?,
        v => vec![v],
    };
    budget::charge(added.len() as u64)?;
    let name = key.as_bytes().to_vec();
    context::with("ngx.resp.add_header", |r| {
        let norm = header::escape_name(&header::normalize_name(&name, true));
        let all = lua.create_table()?;
        for v in r.resp_headers.get_all(norm.as_str()) {
            all.raw_push(lua.create_string(v.as_bytes())?)?;
        }
        for v in added {
            all.raw_push(v)?;
        }
        header::set(r, &name, Value::Table(all), true)
    })
}

/// The natives `ngx_modules.lua` is given.
fn natives(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "encode_base64url",
        lua.create_function(|lua, s: mlua::LuaString| {
            let bytes = s.as_bytes();
            budget::charge_bytes(bytes.len() * 2)?;
            lua.create_string(encode_base64url(&bytes))
        })?,
    )?;
    t.raw_set(
        "decode_base64url",
        lua.create_function(|lua, s: mlua::LuaString| {
            let bytes = s.as_bytes();
            budget::charge_bytes(bytes.len() * 2)?;
            decode_base64url(&bytes).map(|d| lua.create_string(d)).transpose()
        })?,
    )?;
    t.raw_set("add_header", lua.create_function(add_header)?)?;
    t.raw_set("sys_filter_level", lua.create_function(|_, ()| Ok(sys_filter_level()))?)?;
    t.raw_set("pid", lua.create_function(|_, ()| Ok(std::process::id()))?)?;
    Ok(t)
}

/// Adds `ngx.base64`, `ngx.resp`, `ngx.process` and `ngx.errlog` to the registry `libs`.
pub fn register(lua: &Lua, libs: &Table) -> mlua::Result<()> {
    let natives = natives(lua)?;
    for name in ["ngx.base64", "ngx.resp", "ngx.process", "ngx.errlog"] {
        let natives = natives.clone();
        let make = lua.create_function(move |lua, (route_ngx, env): (Table, Table)| {
            // Compiled in the route's environment: it is route code, reaching only what the
            // route reaches, plus the natives.
            let build: Function = lua
                .load(SOURCE)
                .set_name("=ngx_modules")
                .set_environment(env)
                .into_function()?;
            build.call::<Value>((name, route_ngx, natives.clone()))
        })?;
        libs.raw_set(name, make)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_is_nginxs() {
        assert_eq!(encode_base64url(b"\xfb\xff\xfe"), "-__-");
        assert_eq!(encode_base64url(b"a"), "YQ");
        assert_eq!(decode_base64url(b"-__-").unwrap(), b"\xfb\xff\xfe");
        assert_eq!(decode_base64url(b"YQ").unwrap(), b"a");
        assert_eq!(decode_base64url(b"YQ==").unwrap(), b"a");
        assert_eq!(decode_base64url(b"Y"), None);
        assert_eq!(decode_base64url(b"+/"), None);
        assert_eq!(decode_base64url(b"").unwrap(), b"");
    }
}
