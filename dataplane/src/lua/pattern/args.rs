//! Argument checking and errors of the string functions, exactly as LuaJIT's `lj_lib_*`,
//! `luaL_*` and `lj_err_*` do them.
//!
//! In: the arguments of one call as mlua hands them over. Out: strings and integers coerced the
//! way LuaJIT coerces them, or LuaJIT's error text. LuaJIT names the function in an argument error
//! from how the caller called it (`string.find` → 'find', a local `f` → 'f', `s:find` → 'find'
//! with the arguments renumbered, through `pcall` → '?') and prefixes the caller's `chunk:line: `
//! when the caller is Lua code; `lua_getinfo` answers both from the same frames, so
//! `Lua::inspect_stack` reproduces them.
//!
//! Errors are `mlua::Error::RuntimeError` carrying that text: the sandbox's `pcall` and `xpcall`
//! turn them into the plain string LuaJIT would have raised.

use std::borrow::Cow;

use mlua::{Lua, LuaString, MultiValue, Value};

/// The arguments of one call, numbered from 1 as in Lua.
pub(super) struct Args<'a> {
    lua: &'a Lua,
    values: &'a MultiValue,
}

impl<'a> Args<'a> {
    pub(super) fn new(lua: &'a Lua, values: &'a MultiValue) -> Self {
        Args { lua, values }
    }

    /// Argument `n`, `None` when the caller passed fewer ("no value", unlike `nil`).
    pub(super) fn get(&self, n: usize) -> Option<&'a Value> {
        self.values.get(n - 1)
    }

    /// Whether argument `n` is present and neither `nil` nor `false`.
    pub(super) fn truthy(&self, n: usize) -> bool {
        self.get(n)
            .is_some_and(|v| !matches!(v, Value::Nil | Value::Boolean(false)))
    }

    /// A string, or a number converted as `tostring` does (`lj_lib_checkstr`,
    /// `luaL_checklstring`). Borrowed when it is a string: cloning an mlua reference costs an
    /// allocation, a measurable share of a short `find`.
    pub(super) fn string(&self, n: usize) -> mlua::Result<Cow<'a, LuaString>> {
        match self.get(n) {
            Some(Value::String(s)) => Ok(Cow::Borrowed(s)),
            Some(v @ (Value::Integer(_) | Value::Number(_))) => match self.lua.coerce_string(v.clone())? {
                Some(s) => Ok(Cow::Owned(s)),
                None => Err(self.type_error(n, "string", Some(v))),
            },
            other => Err(self.type_error(n, "string", other)),
        }
    }

    /// An optional `int32_t` as `lj_lib_optint` reads it (`string.find`'s `init`): absent or `nil`
    /// is `default`; numbers and numeric strings are truncated with C's `(int32_t)` cast.
    pub(super) fn opt_int32(&self, n: usize, default: i32) -> mlua::Result<i32> {
        Ok(match self.number(n, default.into())? {
            Number::Default(d) => d as i32,
            Number::Value(x) => c_double_to_i32(x),
        })
    }

    /// An optional `int` as `luaL_optint` reads it (`string.gsub`'s `n`): the number is first
    /// cast to `lua_Integer` (64 bits), then truncated to `int`.
    pub(super) fn opt_int(&self, n: usize, default: i32) -> mlua::Result<i32> {
        Ok(match self.number(n, default.into())? {
            Number::Default(d) => d as i32,
            Number::Value(x) => c_double_to_i64(x) as i32,
        })
    }

    fn number(&self, n: usize, default: i64) -> mlua::Result<Number> {
        match self.get(n) {
            None | Some(Value::Nil) => Ok(Number::Default(default)),
            Some(Value::Integer(i)) => Ok(Number::Value(*i as f64)),
            Some(Value::Number(x)) => Ok(Number::Value(*x)),
            Some(v @ Value::String(_)) => match self.lua.coerce_number(v.clone())? {
                Some(x) => Ok(Number::Value(x)),
                None => Err(self.type_error(n, "number", Some(v))),
            },
            other => Err(self.type_error(n, "number", other)),
        }
    }

    /// "bad argument #n to 'f' (string expected, got nil)" (`lj_err_argtype`).
    fn type_error(&self, n: usize, expected: &str, got: Option<&Value>) -> mlua::Error {
        let got = got.map_or("no value", type_name);
        arg_error(self.lua, n, &format!("{expected} expected, got {got}"))
    }
}

enum Number {
    Default(i64),
    Value(f64),
}

/// C's `(int32_t)x` on x86-64 (`cvttsd2si`): truncation toward zero; NaN and values out of range
/// give `INT32_MIN` (NaN fails every comparison), where a Rust `as` cast would saturate.
pub(super) fn c_double_to_i32(x: f64) -> i32 {
    if !(-2147483649.0 < x && x < 2147483648.0) {
        i32::MIN
    } else {
        x as i32
    }
}

/// C's `(int64_t)x` on x86-64: as `c_double_to_i32`, with `INT64_MIN` for NaN and out of range.
pub(super) fn c_double_to_i64(x: f64) -> i64 {
    if !(-9223372036854775808.0..9223372036854775808.0).contains(&x) {
        i64::MIN
    } else {
        x as i64
    }
}

/// Lua's name for the type of `v` (`lua_typename`): light userdata and mlua's error values are
/// "userdata"; the only type mlua cannot name under LuaJIT is FFI "cdata".
pub(super) fn type_name(v: &Value) -> &'static str {
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

/// An error about argument `n` of the running function (`err_argmsg`).
pub(super) fn arg_error(lua: &Lua, n: usize, msg: &str) -> mlua::Error {
    let (name, is_method) = lua
        .inspect_stack(0, |frame| {
            let names = frame.names();
            (names.name.map(|s| s.into_owned()), names.name_what == Some("method"))
        })
        .unwrap_or((None, false));
    let name = name.as_deref().unwrap_or("?");
    let text = if is_method && n == 1 {
        format!("calling '{name}' on bad self ({msg})")
    } else {
        let n = if is_method { n - 1 } else { n };
        format!("bad argument #{n} to '{name}' ({msg})")
    };
    caller_error(lua, &text)
}

/// An error in the context of the caller (`lj_err_callermsg`): prefixed with `chunk:line: ` when
/// the caller is a Lua function.
pub(super) fn caller_error(lua: &Lua, msg: &str) -> mlua::Error {
    let location = lua
        .inspect_stack(1, |frame| {
            let line = frame.current_line()?;
            let source = frame.source();
            Some(format!("{}:{line}: ", source.short_src?))
        })
        .flatten()
        .unwrap_or_default();
    mlua::Error::runtime(format!("{location}{msg}"))
}
