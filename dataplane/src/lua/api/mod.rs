//! The `ngx` API, one module per area as in lua-nginx-module. `build` creates
//! the per-VM base `ngx` table; each route gets its own copy (see `vm`).

pub mod codec;
pub mod durable;
pub mod header;
pub mod log;
pub mod misc;
pub mod output;
pub mod re;
pub mod req;
pub mod shared;
pub mod time;
pub mod timer;
pub mod var;

use mlua::{Lua, Table};

use crate::config::Phase;

/// Yield ops from `prelude.lua` to the request driver.
pub const OP_EXIT: i64 = 1;
pub const OP_SLEEP: i64 = 2;
pub const OP_FLUSH: i64 = 3;
pub const OP_EOF: i64 = 4;
pub const OP_READ_BODY: i64 = 5;
pub const OP_CAPTURE: i64 = 6;
/// Wait for a durable commit (`durable::wait`): `{sync = true}` writes and
/// `moongate.durable.sync()`.
pub const OP_DURABLE_SYNC: i64 = 7;

/// Builds the base `ngx` table and the private `raw` table of primitives the
/// Lua prelude wraps. `yield_marker` is the sentinel the driver recognises.
pub fn build(lua: &Lua, yield_marker: &Table, worker_id: usize, worker_count: usize) -> mlua::Result<(Table, Table)> {
    let ngx = lua.create_table()?;
    let raw = lua.create_table()?;
    ngx.set("req", lua.create_table()?)?;
    ngx.set("resp", lua.create_table()?)?;
    raw.set("YIELD", yield_marker)?;
    raw.set(
        "errmsg",
        lua.create_function(|lua, v: mlua::Value| match v {
            mlua::Value::Error(e) => Ok(mlua::Value::String(lua.create_string(crate::lua::error_message(&e))?)),
            v => Ok(v),
        })?,
    )?;
    raw.set("OP_EXIT", OP_EXIT)?;
    raw.set("OP_SLEEP", OP_SLEEP)?;
    raw.set("OP_FLUSH", OP_FLUSH)?;
    raw.set("OP_EOF", OP_EOF)?;
    raw.set("OP_READ_BODY", OP_READ_BODY)?;
    raw.set("OP_CAPTURE", OP_CAPTURE)?;
    raw.set(
        "check_yieldable",
        lua.create_function(|_, (api, seconds): (String, mlua::Value)| {
            let seconds = match seconds {
                mlua::Value::Integer(i) => i as f64,
                mlua::Value::Number(n) => n,
                mlua::Value::String(s) => s.to_str()?.trim().parse().unwrap_or(f64::NAN),
                _ => f64::NAN,
            };
            if seconds.is_nan() || seconds < 0.0 {
                return Err(mlua::Error::runtime("invalid sleep duration"));
            }
            check_may_yield(&api)
        })?,
    )?;
    durable::register(lua, yield_marker)?;

    log::register(lua, &ngx)?;
    misc::register(lua, &ngx, worker_id, worker_count)?;
    output::register(lua, &ngx, &raw, yield_marker)?;
    var::register(lua, &ngx)?;
    header::register(lua, &ngx)?;
    req::register(lua, &ngx, &raw, yield_marker)?;
    codec::register(lua, &ngx)?;
    time::register(lua, &ngx)?;
    re::register(lua, &ngx)?;
    timer::register(lua, &ngx, yield_marker)?;
    Ok((ngx, raw))
}

/// Raises unless the running code may yield to a driver for `api`: a
/// rewrite, access or content handler, or a timer callback (nginx's rule
/// for `ngx.sleep`).
pub fn check_may_yield(api: &str) -> mlua::Result<()> {
    if !crate::request::has_current() && crate::lua::phase_name() == "timer" {
        return Ok(());
    }
    let r = crate::request::current(api)?;
    let r = r.borrow();
    crate::request::check_phase(&r, api, &[Phase::Rewrite, Phase::Access, Phase::Content])
}

/// Formats a number as Lua's `tostring` does (`%.14g`).
pub fn fmt_number(n: f64) -> String {
    if n.is_nan() {
        return if n.is_sign_negative() {
            "-nan".into()
        } else {
            "nan".into()
        };
    }
    if n.is_infinite() {
        return if n > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if n == 0.0 {
        return if n.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    let sci = format!("{n:.13e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..14).contains(&exp) {
        let mantissa = trim_fraction(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let decimals = (13 - exp).max(0) as usize;
    trim_fraction(&format!("{n:.decimals$}")).to_string()
}

fn trim_fraction(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::fmt_number;

    #[test]
    fn numbers_print_like_luajit() {
        assert_eq!(fmt_number(32.0), "32");
        assert_eq!(fmt_number(-3.5), "-3.5");
        assert_eq!(fmt_number(0.1), "0.1");
        assert_eq!(fmt_number(1.0 / 3.0), "0.33333333333333");
        assert_eq!(fmt_number(1e15), "1e+15");
        assert_eq!(fmt_number(123456789012.0), "123456789012");
        assert_eq!(fmt_number(0.00001), "1e-05");
        assert_eq!(fmt_number(f64::INFINITY), "inf");
    }
}
