//! Lua argument errors, with the texts lua-nginx-module and LuaJIT raise.
//!
//! The C functions of lua-nginx-module check their arguments with `luaL_check*` and
//! `luaL_argerror`, LuaJIT's own library functions with `lj_lib_check*` and `lj_err_arg*`, and
//! lua-resty-core's Lua wrappers raise the same words with `error(msg, 2)`. All give
//! `bad argument #n to 'f' (msg)`, usually with msg `X expected, got Y`, where:
//!
//! - `f` is the name the caller used (`lua_getinfo`'s "n": `string.find` → 'find', a local `f`
//!   → 'f', through `pcall` → '?'); in a method call (`s:find`) the arguments are renumbered
//!   without `self`, and a bad `self` reads `calling 'f' on bad self (msg)` ([`arg_message`]);
//! - `Y` is Lua's type name ([`type_name`]), or "no value" for a missing argument
//!   ([`arg_type_name`]);
//! - the error carries the "chunk:line: " prefix of the calling Lua frame, as `luaL_where` adds
//!   it ([`where_prefix`], [`runtime_error`], [`caller_error`]).
//!
//! Not every Moongate function raises the complete form: several name themselves (the `ngx` API
//! functions whose Lua name is fixed: [`bad_argument`], [`bad_type`]) and return their error
//! without position, and some pass mlua's [`Value::type_name`] (which says "integer",
//! "lightuserdata", ...) as `Y`. The helpers here take those choices as parameters so each site
//! keeps its exact text.
//!
//! Errors are `mlua::Error::RuntimeError` carrying the text: the sandbox's `pcall` and `xpcall`
//! turn them into the plain string Lua would have raised.

use std::fmt::Display;

use mlua::{Lua, Value};

/// The type name of a missing argument (`lj_err_argtype`, `luaL_typerror` on an absent index).
pub const NO_VALUE: &str = "no value";

/// Which rule decides whether a Lua frame gets the "chunk:line: " prefix: the two differ only
/// for a frame whose current line is 0 (bytecode without line info).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Where {
    /// `luaL_where` (lauxlib, `luaL_error`): only a positive line.
    Lauxlib,
    /// LuaJIT's `lj_debug_addloc` (`lj_err_callermsg`, the VM's own errors): line 0 too.
    LuaJit,
}

/// Lua's name for the type of `v` (`lua_typename`): light userdata and mlua's error values are
/// "userdata"; the only type mlua cannot name under LuaJIT is FFI "cdata".
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Boolean(_) => "boolean",
        Value::LightUserData(_) | Value::UserData(_) | Value::Error(_) => "userdata",
        Value::Integer(_) | Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Table(_) => "table",
        Value::Function(_) => "function",
        Value::Thread(_) => "thread",
        _ => "cdata",
    }
}

/// [`type_name`] of argument `v`, [`NO_VALUE`] when the caller passed fewer arguments.
pub fn arg_type_name(v: Option<&Value>) -> &'static str {
    v.map_or(NO_VALUE, type_name)
}

/// "`what` expected, got `got`" (`luaL_typerror`), `got` being a type name.
pub fn expected(what: &str, got: &str) -> String {
    format!("{what} expected, got {got}")
}

/// "bad argument #`narg` to '`func`' (`msg`)" (`luaL_argerror`'s text) for a function that
/// knows its own name; no position.
pub fn bad_argument(narg: usize, func: &str, msg: &str) -> String {
    format!("{} ({msg})", bare(narg, func))
}

/// "bad argument #`narg` to '`func`'" without a parenthesised reason.
pub fn bad_argument_bare(narg: usize, func: &str) -> String {
    bare(narg, func)
}

fn bare(narg: impl Display, func: &str) -> String {
    format!("bad argument #{narg} to '{func}'")
}

/// "bad argument #`narg` to '`func`' (`what` expected, got `got`)": [`bad_argument`] with
/// [`expected`].
pub fn bad_type(narg: usize, func: &str, what: &str, got: &str) -> String {
    bad_argument(narg, func, &expected(what, got))
}

/// The "chunk:line: " of the frame `level` up the stack as seen from inside a Rust callback
/// (level 0 is the callback itself, 1 the calling code); "" when that frame is not Lua code.
pub fn where_prefix(lua: &Lua, level: usize, rule: Where) -> String {
    let min_line = match rule {
        Where::Lauxlib => 1,
        Where::LuaJit => 0,
    };
    lua.inspect_stack(level, |frame| {
        let line = frame.current_line().filter(|&line| line >= min_line)?;
        let source = frame.source();
        Some(format!("{}:{line}: ", source.short_src.as_deref().unwrap_or("?")))
    })
    .flatten()
    .unwrap_or_default()
}

/// `msg` prefixed with [`where_prefix`] of frame `level`.
pub fn error_at(lua: &Lua, level: usize, rule: Where, msg: &str) -> mlua::Error {
    mlua::Error::RuntimeError(format!("{}{msg}", where_prefix(lua, level, rule)))
}

/// A `luaL_error`-style error positioned at stack `level` (1 = the calling Lua code).
pub fn runtime_error(lua: &Lua, level: usize, msg: &str) -> mlua::Error {
    error_at(lua, level, Where::Lauxlib, msg)
}

/// An error in the context of the caller as LuaJIT raises its own (`lj_err_callermsg`).
pub fn caller_error(lua: &Lua, msg: &str) -> mlua::Error {
    error_at(lua, 1, Where::LuaJit, msg)
}

/// The text of `luaL_argerror(L, narg, msg)` for the function running `level` frames up the stack
/// (0 = the Rust callback itself), without position: named as its caller called it ('?' when
/// unknown), `self` not counted in a method call (`err_argmsg`).
pub fn arg_message(lua: &Lua, level: usize, narg: i64, msg: &str) -> String {
    let (name, is_method) = lua
        .inspect_stack(level, |frame| {
            let names = frame.names();
            (
                names.name.map(|name| name.into_owned()),
                names.name_what == Some("method"),
            )
        })
        .unwrap_or((None, false));
    let name = name.as_deref().unwrap_or("?");
    match (is_method, narg) {
        (true, 1) => format!("calling '{name}' on bad self ({msg})"),
        (true, _) => format!("{} ({msg})", bare(narg - 1, name)),
        (false, _) => format!("{} ({msg})", bare(narg, name)),
    }
}

/// `luaL_argerror` from inside a Rust callback: [`arg_message`] for the callback, positioned at
/// its caller by `rule`.
pub fn arg_error(lua: &Lua, narg: usize, msg: &str, rule: Where) -> mlua::Error {
    error_at(lua, 1, rule, &arg_message(lua, 0, narg as i64, msg))
}

/// [`arg_error`] for a wrong type (`lj_err_argtype`, `luaL_typerror`):
/// "bad argument #n to 'f' (string expected, got nil)"; `got` is `None` for a missing argument.
pub fn type_error(lua: &Lua, narg: usize, what: &str, got: Option<&Value>, rule: Where) -> mlua::Error {
    arg_error(lua, narg, &expected(what, arg_type_name(got)), rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message of the error `code` raises, without mlua's wrapping.
    fn error_of(lua: &Lua, code: &str) -> String {
        match lua.load(code).set_name("=t").exec().unwrap_err() {
            mlua::Error::CallbackError { cause, .. } => match cause.as_ref() {
                mlua::Error::RuntimeError(message) => message.clone(),
                other => other.to_string(),
            },
            other => other.to_string(),
        }
    }

    #[test]
    fn texts() {
        assert_eq!(
            bad_type(2, "f", "string", "nil"),
            "bad argument #2 to 'f' (string expected, got nil)"
        );
        assert_eq!(bad_argument_bare(1, "exit"), "bad argument #1 to 'exit'");
        assert_eq!(arg_type_name(None), "no value");
        assert_eq!(type_name(&Value::Integer(1)), "number");
    }

    #[test]
    fn names_and_positions_come_from_the_stack() {
        let lua = Lua::new();
        let check = lua
            .create_function(|lua, args: mlua::MultiValue| -> mlua::Result<()> {
                Err(type_error(lua, 2, "string", args.get(1), Where::LuaJit))
            })
            .unwrap();
        let obj = lua.create_table().unwrap();
        obj.set("check", check.clone()).unwrap();
        lua.globals().set("check", check).unwrap();
        lua.globals().set("obj", obj).unwrap();
        assert_eq!(
            error_of(&lua, "check(1)"),
            "t:1: bad argument #2 to 'check' (string expected, got no value)"
        );
        assert_eq!(
            error_of(&lua, "\nobj:check(true)"),
            "t:2: bad argument #1 to 'check' (string expected, got boolean)"
        );
        let via_pcall: String = lua
            .load("local ok, e = pcall(check, 1, {}) return tostring(e)")
            .eval()
            .unwrap();
        assert!(
            via_pcall.contains(" bad argument #2 to '?' (string expected, got table)"),
            "{via_pcall}"
        );
        let bad_self = lua
            .create_function(|lua, ()| -> mlua::Result<()> { Err(arg_error(lua, 1, "x", Where::Lauxlib)) })
            .unwrap();
        lua.globals().set("bad_self", bad_self).unwrap();
        assert_eq!(
            error_of(&lua, "local o = {m = bad_self} o:m()"),
            "t:1: calling 'm' on bad self (x)"
        );
    }
}
