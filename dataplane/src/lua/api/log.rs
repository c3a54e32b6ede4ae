//! `ngx.log` and the log level constants. Lines go to `tracing` with the
//! route, location and phase of the request that logged them.

use mlua::{Lua, Table, Value};

use super::fmt_number;
use crate::lua::args::{NO_VALUE, bad_argument, bad_type};

pub const LEVELS: &[(&str, i64)] = &[
    ("STDERR", 0),
    ("EMERG", 1),
    ("ALERT", 2),
    ("CRIT", 3),
    ("ERR", 4),
    ("WARN", 5),
    ("NOTICE", 6),
    ("INFO", 7),
    ("DEBUG", 8),
];

pub fn register(lua: &Lua, ngx: &Table) -> mlua::Result<()> {
    for (name, level) in LEVELS {
        ngx.set(*name, *level)?;
    }
    ngx.set(
        "log",
        lua.create_function(|_, args: mlua::MultiValue| {
            let mut args = args.into_iter();
            let level = match args.next() {
                Some(Value::Integer(i)) => i,
                Some(Value::Number(n)) => n as i64,
                Some(other) => {
                    return Err(mlua::Error::runtime(bad_type(1, "log", "number", other.type_name())));
                }
                None => {
                    return Err(mlua::Error::runtime(bad_type(1, "log", "number", NO_VALUE)));
                }
            };
            if !(0..=8).contains(&level) {
                return Err(mlua::Error::runtime(bad_argument(
                    1,
                    "log",
                    &format!("bad log level: {level}"),
                )));
            }
            let mut msg = String::new();
            for (i, v) in args.enumerate() {
                match v {
                    Value::String(s) => msg.push_str(&s.to_string_lossy()),
                    Value::Integer(i) => msg.push_str(&fmt_number(i as f64)),
                    Value::Number(n) => msg.push_str(&fmt_number(n)),
                    Value::Boolean(b) => msg.push_str(if b { "true" } else { "false" }),
                    Value::Nil => msg.push_str("nil"),
                    Value::LightUserData(p) if p.0.is_null() => msg.push_str("null"),
                    // nginx's log_wrapper numbers the message arguments from 1
                    // (the level is removed first) and prints a table through
                    // its __tostring.
                    Value::Table(t) => match t.metatable().map(|mt| mt.raw_get::<Value>("__tostring")) {
                        Some(Ok(Value::Function(f))) => msg.push_str(&f.call::<mlua::LuaString>(t)?.to_string_lossy()),
                        _ => {
                            let why = "expected table to have __tostring metamethod";
                            return Err(mlua::Error::runtime(bad_argument(i + 1, "log", why)));
                        }
                    },
                    other => {
                        let what = "string, number, boolean, or nil";
                        return Err(mlua::Error::runtime(bad_type(i + 1, "log", what, other.type_name())));
                    }
                }
            }
            emit(level, &msg);
            Ok(())
        })?,
    )?;
    Ok(())
}

fn emit(level: i64, msg: &str) {
    let at = crate::context::log_prefix();
    match level {
        0..=4 => tracing::error!(target: "lua", "{at}{msg}"),
        5 => tracing::warn!(target: "lua", "{at}{msg}"),
        6 | 7 => tracing::info!(target: "lua", "{at}{msg}"),
        _ => tracing::debug!(target: "lua", "{at}{msg}"),
    }
}
