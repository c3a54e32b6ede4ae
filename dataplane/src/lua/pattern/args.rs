//! Argument checking of the string functions, exactly as LuaJIT's `lj_lib_*` and `luaL_*` do it.
//!
//! In: the arguments of one call as mlua hands them over. Out: strings and integers coerced the
//! way LuaJIT coerces them, or LuaJIT's error text (`crate::lua::args`, with LuaJIT's own
//! position rule: the function named as the caller called it, the caller's `chunk:line: `).
//!
//! Errors are `mlua::Error::RuntimeError` carrying that text: the sandbox's `pcall` and `xpcall`
//! turn them into the plain string LuaJIT would have raised.

use std::borrow::Cow;

use mlua::{Lua, LuaString, MultiValue, Value};

use crate::lua::args::{self, Where};

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
        args::type_error(self.lua, n, expected, got, Where::LuaJit)
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
