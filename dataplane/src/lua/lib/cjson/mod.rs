//! `cjson` and `cjson.safe`: a native implementation of the lua-cjson 2.1.0.x
//! that OpenResty bundles (openresty/lua-cjson), with the same functions,
//! settings, defaults, output bytes and error texts.
//!
//! Layout: this file builds the module tables and the settings functions;
//! `encode` turns Lua values into JSON text, `decode` parses it.
//!
//! Invariants:
//! - Each `require` of `cjson` or `cjson.safe` by a route, and each `new()`,
//!   is an instance with its own settings ([`Config`]); the settings of one
//!   never change another's (upstream's `encode_escape_forward_slash` flips a
//!   process-wide table: here it is per instance, as the docs describe it).
//! - `cjson.null` is `ngx.null` (the NULL light userdata); `empty_array` is
//!   another light userdata; `array_mt` and `empty_array_mt` are shared by all
//!   instances of one route (as upstream shares them through the registry of
//!   its VM) and by no other route.
//! - Encoding and decoding never panic and never recurse without bound: the
//!   nesting limits are capped by [`HARD_DEPTH`] and the thread's stack guard,
//!   their work is charged to the running code's budget, and encoder output
//!   is bounded by the largest string the code may build.
//! - The safe variants return `nil, message` for what upstream's
//!   `lua_pcall` would catch, but never swallow a budget abort.
//!
//! Where this knowingly differs from upstream:
//! - Numbers decode as C's `strtod` reads them (the behaviour of 2.1.0.10
//!   and of upstream's own test suite: `0123` is 123, `Infinity` is inf);
//!   the `strtoll` first pass of some 2.1.0.11+ sources, which would read
//!   `0123` as octal, is not reproduced.
//! - Nesting past [`HARD_DEPTH`] (or past what the thread's stack allows)
//!   fails with upstream's "excessive nesting" / "too many nested data
//!   structures" error even when the configured limit is higher; upstream
//!   fails there too, at a depth set by `lua_checkstack`.
//! - `encode_keep_buffer` is only a setting: no buffer is kept between
//!   calls (the output is the same).
//! - Output larger than the running code may build fails with
//!   "not enough memory", as LuaJIT's allocator would.

mod decode;
mod encode;

use std::cell::RefCell;
use std::rc::Rc;

use mlua::{Function, LightUserData, Lua, MultiValue, Table, Value};

use crate::lua::args;

/// `_VERSION` of the upstream release whose behaviour this follows.
pub const VERSION: &str = "2.1.0.11";

/// Nesting actually allowed whatever the settings say: upstream stops where
/// `lua_checkstack` fails (a few thousand levels); ours stops here, below
/// where a release build ran out of Lua stack slots (10,000 did),
/// (or sooner, where the thread's stack guard says so) with the same error.
pub const HARD_DEPTH: i32 = 2_000;

/// Work units between two calls to the budget while encoding or decoding.
const CHARGE_EVERY: u64 = 4096;

/// What one value or token costs, in instruction-equivalents: a table
/// access or creation through the Lua API and the bookkeeping around it
/// take tens of nanoseconds, much more than one interpreted instruction.
pub(crate) const NODE_UNITS: u64 = 16;

/// The address `cjson.empty_array` is: any static's, it is only compared.
static EMPTY_ARRAY: u8 = 0;

pub(crate) fn empty_array_ptr() -> *mut std::ffi::c_void {
    std::ptr::addr_of!(EMPTY_ARRAY) as *mut std::ffi::c_void
}

/// What `encode_invalid_numbers` says to do with NaN and infinities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidNumbers {
    /// Raise "must not be NaN or Infinity" (false, "off").
    Refuse,
    /// `NaN`, `Infinity`, `-Infinity` (true, "on").
    Allow,
    /// `null` ("null").
    Null,
}

/// One instance's settings, with upstream's defaults.
#[derive(Clone, Debug)]
pub struct Config {
    pub sparse_convert: bool,
    pub sparse_ratio: i32,
    pub sparse_safe: i32,
    pub encode_max_depth: i32,
    pub decode_max_depth: i32,
    pub encode_invalid_numbers: InvalidNumbers,
    pub decode_invalid_numbers: bool,
    pub number_precision: i32,
    pub keep_buffer: bool,
    pub empty_table_as_object: bool,
    pub decode_array_with_array_mt: bool,
    pub escape_forward_slash: bool,
    pub skip_unsupported: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            sparse_convert: false,
            sparse_ratio: 2,
            sparse_safe: 10,
            encode_max_depth: 1000,
            decode_max_depth: 1000,
            encode_invalid_numbers: InvalidNumbers::Refuse,
            decode_invalid_numbers: true,
            number_precision: 14,
            keep_buffer: true,
            empty_table_as_object: true,
            decode_array_with_array_mt: false,
            escape_forward_slash: true,
            skip_unsupported: false,
        }
    }
}

/// What all instances of one route share.
#[derive(Clone)]
pub(crate) struct Shared {
    pub array_mt: Table,
    pub empty_array_mt: Table,
}

struct Instance {
    config: RefCell<Config>,
    shared: Shared,
}

/// Charges work in batches so the budget is consulted every few thousand
/// units, not at every byte.
pub(crate) struct Meter {
    pending: u64,
}

impl Meter {
    pub fn new() -> Meter {
        Meter { pending: 0 }
    }

    pub fn add(&mut self, units: u64) -> mlua::Result<()> {
        self.pending += units;
        if self.pending >= CHARGE_EVERY {
            let units = std::mem::take(&mut self.pending);
            crate::lua::budget::charge(units)?;
        }
        Ok(())
    }

    pub fn finish(&mut self) -> mlua::Result<()> {
        let units = std::mem::take(&mut self.pending);
        if units > 0 {
            crate::lua::budget::charge(units)?;
        }
        Ok(())
    }
}

/// Adds `cjson` and `cjson.safe` to the registry of built-in libraries.
pub fn register(lua: &Lua, libs: &Table) -> mlua::Result<()> {
    // env -> { array_mt, empty_array_mt }, weakly, so the metatables are
    // one route's and die with it.
    let per_route = lua.create_table()?;
    let weak = lua.create_table()?;
    weak.raw_set("__mode", "k")?;
    per_route.set_metatable(Some(weak))?;
    for (name, safe) in [("cjson", false), ("cjson.safe", true)] {
        let per_route = per_route.clone();
        let make = lua.create_function(move |lua, (_ngx, env): (Value, Value)| {
            let shared = route_shared(lua, &per_route, env)?;
            new_module(lua, shared, safe)
        })?;
        libs.raw_set(name, make)?;
    }
    Ok(())
}

fn route_shared(lua: &Lua, per_route: &Table, env: Value) -> mlua::Result<Shared> {
    if let Value::Table(_) = env
        && let Value::Table(pair) = per_route.raw_get::<Value>(env.clone())?
    {
        return Ok(Shared {
            array_mt: pair.raw_get(1)?,
            empty_array_mt: pair.raw_get(2)?,
        });
    }
    let shared = Shared {
        array_mt: lua.create_table()?,
        empty_array_mt: lua.create_table()?,
    };
    if let Value::Table(_) = env {
        let pair = lua.create_table()?;
        pair.raw_set(1, shared.array_mt.clone())?;
        pair.raw_set(2, shared.empty_array_mt.clone())?;
        per_route.raw_set(env, pair)?;
    }
    Ok(shared)
}

/// A module table: a fresh instance with default settings.
fn new_module(lua: &Lua, shared: Shared, safe: bool) -> mlua::Result<Table> {
    let inst = Rc::new(Instance {
        config: RefCell::new(Config::default()),
        shared: shared.clone(),
    });
    let m = lua.create_table()?;

    let i = inst.clone();
    let encode = lua.create_function(move |lua, args: MultiValue| {
        let cfg = i.config.borrow().clone();
        call_conversion(lua, safe, args, |lua, v, direct| {
            encode::encode(lua, &cfg, &i.shared, &v).map_err(|e| e.into_lua(lua, direct))
        })
    })?;
    m.raw_set("encode", encode)?;

    let i = inst.clone();
    let decode = lua.create_function(move |lua, args: MultiValue| {
        let cfg = i.config.borrow().clone();
        call_conversion(lua, safe, args, |lua, v, direct| {
            let text = match &v {
                Value::String(s) => s.clone(),
                Value::Integer(_) | Value::Number(_) => match lua.coerce_string(v.clone())? {
                    Some(s) => s,
                    None => return Err(checkstring_error(lua, &v, direct)),
                },
                _ => return Err(checkstring_error(lua, &v, direct)),
            };
            let bytes = text.as_bytes();
            decode::decode(lua, &cfg, &i.shared, &bytes).map_err(|e| e.into_lua(lua, direct))
        })
    })?;
    m.raw_set("decode", decode)?;

    setting(lua, &m, &inst, "encode_sparse_array", 3, |lua, c, a| {
        let convert = bool_option(lua, a, 1, &mut c.sparse_convert)?;
        let ratio = int_option(lua, a, 2, &mut c.sparse_ratio, 0, i32::MAX)?;
        let safe = int_option(lua, a, 3, &mut c.sparse_safe, 0, i32::MAX)?;
        Ok(vec![convert, ratio, safe])
    })?;
    setting(lua, &m, &inst, "encode_max_depth", 1, |lua, c, a| {
        Ok(vec![int_option(lua, a, 1, &mut c.encode_max_depth, 1, i32::MAX)?])
    })?;
    setting(lua, &m, &inst, "decode_max_depth", 1, |lua, c, a| {
        Ok(vec![int_option(lua, a, 1, &mut c.decode_max_depth, 1, i32::MAX)?])
    })?;
    setting(lua, &m, &inst, "encode_number_precision", 1, |lua, c, a| {
        Ok(vec![int_option(lua, a, 1, &mut c.number_precision, 1, 16)?])
    })?;
    setting(lua, &m, &inst, "encode_empty_table_as_object", 1, |lua, c, a| {
        Ok(vec![bool_option(lua, a, 1, &mut c.empty_table_as_object)?])
    })?;
    setting(lua, &m, &inst, "decode_array_with_array_mt", 1, |lua, c, a| {
        Ok(vec![bool_option(lua, a, 1, &mut c.decode_array_with_array_mt)?])
    })?;
    setting(lua, &m, &inst, "encode_skip_unsupported_value_types", 1, |lua, c, a| {
        Ok(vec![bool_option(lua, a, 1, &mut c.skip_unsupported)?])
    })?;
    setting(lua, &m, &inst, "encode_keep_buffer", 1, |lua, c, a| {
        // Only a flag here: there is no buffer kept between calls.
        Ok(vec![bool_option(lua, a, 1, &mut c.keep_buffer)?])
    })?;
    setting(lua, &m, &inst, "encode_invalid_numbers", 1, |lua, c, a| {
        let mut n = match c.encode_invalid_numbers {
            InvalidNumbers::Refuse => 0,
            InvalidNumbers::Allow => 1,
            InvalidNumbers::Null => 2,
        };
        let r = enum_option(lua, a, 1, &mut n, &["off", "on", "null"])?;
        c.encode_invalid_numbers = match n {
            0 => InvalidNumbers::Refuse,
            1 => InvalidNumbers::Allow,
            _ => InvalidNumbers::Null,
        };
        Ok(vec![r])
    })?;
    setting(lua, &m, &inst, "decode_invalid_numbers", 1, |lua, c, a| {
        Ok(vec![bool_option(lua, a, 1, &mut c.decode_invalid_numbers)?])
    })?;
    setting(lua, &m, &inst, "encode_escape_forward_slash", 1, |lua, c, a| {
        Ok(vec![bool_option(lua, a, 1, &mut c.escape_forward_slash)?])
    })?;

    let s = shared.clone();
    let new = lua.create_function(move |lua, ()| new_module(lua, s.clone(), safe))?;
    m.raw_set("new", new)?;
    m.raw_set("null", Value::NULL)?;
    m.raw_set("empty_array_mt", shared.empty_array_mt.clone())?;
    m.raw_set("array_mt", shared.array_mt.clone())?;
    m.raw_set("empty_array", Value::LightUserData(LightUserData(empty_array_ptr())))?;
    m.raw_set("_NAME", "cjson")?;
    m.raw_set("_VERSION", VERSION)?;
    Ok(m)
}

/// An error of `encode` or `decode`: upstream raises them with `luaL_error`
/// (positioned at the caller) or `luaL_argerror`.
pub(crate) enum Failure {
    /// A `luaL_error` text.
    Message(String),
    /// Anything else (the budget's abort, out of memory in the VM): as is.
    Lua(mlua::Error),
}

impl From<mlua::Error> for Failure {
    fn from(e: mlua::Error) -> Failure {
        Failure::Lua(e)
    }
}

impl Failure {
    /// `direct`: called from Lua code (the message gets its position), not
    /// from the safe wrapper's protected call.
    fn into_lua(self, lua: &Lua, direct: bool) -> mlua::Error {
        match self {
            Failure::Message(m) if direct => args::runtime_error(lua, 1, &m),
            Failure::Message(m) => mlua::Error::RuntimeError(m),
            Failure::Lua(e) => e,
        }
    }
}

/// `luaL_checklstring`'s error for `decode`'s argument. Under the safe
/// wrapper the function runs from C, so it is named '?' and unpositioned.
fn checkstring_error(lua: &Lua, v: &Value, direct: bool) -> mlua::Error {
    let msg = args::expected("string", args::type_name(v));
    if direct {
        args::arg_error(lua, 1, &msg, args::Where::LuaJit)
    } else {
        mlua::Error::RuntimeError(args::bad_argument(1, "?", &msg))
    }
}

/// `encode` and `decode` take exactly one argument; the safe ones return
/// `nil, message` for what the conversion raises, as upstream's
/// `json_protect_conversion`.
fn call_conversion(
    lua: &Lua,
    safe: bool,
    args: MultiValue,
    f: impl FnOnce(&Lua, Value, bool) -> mlua::Result<Value>,
) -> mlua::Result<MultiValue> {
    if args.len() != 1 {
        return Err(args::arg_error(lua, 1, "expected 1 argument", args::Where::LuaJit));
    }
    let v = args.into_iter().next().unwrap_or(Value::Nil);
    match f(lua, v, !safe) {
        Ok(v) => Ok(MultiValue::from_iter([v])),
        Err(e) if safe && !crate::lua::budget::aborted() => match e {
            mlua::Error::RuntimeError(m) => Ok(MultiValue::from_iter([
                Value::Nil,
                Value::String(lua.create_string(m)?),
            ])),
            mlua::Error::MemoryError(m) => Err(mlua::Error::MemoryError(m)),
            other => Ok(MultiValue::from_iter([
                Value::Nil,
                Value::String(lua.create_string(other.to_string())?),
            ])),
        },
        Err(e) => Err(e),
    }
}

/// Registers a settings function taking at most `nargs` arguments
/// (`json_arg_init`), which sets what is given and returns the current
/// values.
fn setting(
    lua: &Lua,
    m: &Table,
    inst: &Rc<Instance>,
    name: &str,
    nargs: usize,
    f: fn(&Lua, &mut Config, &[Value]) -> mlua::Result<Vec<Value>>,
) -> mlua::Result<()> {
    let inst = inst.clone();
    let func: Function = lua.create_function(move |lua, a: MultiValue| {
        if a.len() > nargs {
            return Err(args::arg_error(
                lua,
                nargs + 1,
                "found too many arguments",
                args::Where::LuaJit,
            ));
        }
        let mut a: Vec<Value> = a.into_iter().collect();
        a.resize(nargs, Value::Nil);
        // Settings apply one by one, as upstream's: when a later argument
        // is refused, the earlier ones have been set. Nothing here runs Lua
        // code, so the borrow cannot be re-entered.
        let out = f(lua, &mut inst.config.borrow_mut(), &a)?;
        Ok(MultiValue::from_iter(out))
    })?;
    m.raw_set(name, func)
}

/// `json_integer_option`: `luaL_checkinteger`, then a range check that
/// upstream always reports as argument #1.
fn int_option(lua: &Lua, a: &[Value], index: usize, setting: &mut i32, min: i32, max: i32) -> mlua::Result<Value> {
    let v = &a[index - 1];
    if !v.is_nil() {
        let n = match v {
            Value::Integer(i) => *i as f64,
            Value::Number(n) => *n,
            Value::String(s) => match lua.coerce_number(Value::String(s.clone()))? {
                Some(n) => n,
                None => return Err(args::type_error(lua, index, "number", Some(v), args::Where::LuaJit)),
            },
            _ => return Err(args::type_error(lua, index, "number", Some(v), args::Where::LuaJit)),
        };
        // lua_tointeger truncates; the C int it lands in wraps.
        let value = lua_tointeger(n) as i32;
        if !(min <= value && value <= max) {
            let msg = format!("expected integer between {min} and {max}");
            return Err(args::arg_error(lua, 1, &msg, args::Where::LuaJit));
        }
        *setting = value;
    }
    Ok(Value::Integer(i64::from(*setting)))
}

/// LuaJIT's `lua_tointeger` on x86-64: truncation toward zero, with what
/// the hardware gives out of range.
fn lua_tointeger(n: f64) -> i64 {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if n.is_nan() || !(-TWO_63..TWO_63).contains(&n) {
        i64::MIN
    } else {
        n as i64
    }
}

fn bool_option(lua: &Lua, a: &[Value], index: usize, setting: &mut bool) -> mlua::Result<Value> {
    let mut n = usize::from(*setting);
    let r = enum_option(lua, a, index, &mut n, &["off", "on"])?;
    *setting = n != 0;
    Ok(r)
}

/// `json_enum_option` with `bool_true` 1: a boolean, or one of `options`
/// by name (`luaL_checkoption`); returns a boolean for settings 0 and 1.
fn enum_option(lua: &Lua, a: &[Value], index: usize, setting: &mut usize, options: &[&str]) -> mlua::Result<Value> {
    let v = &a[index - 1];
    match v {
        Value::Nil => {}
        Value::Boolean(b) => *setting = usize::from(*b),
        Value::String(_) | Value::Integer(_) | Value::Number(_) => {
            let s = lua
                .coerce_string(v.clone())?
                .map(|s| s.as_bytes().to_vec())
                .unwrap_or_default();
            match options.iter().position(|o| o.as_bytes() == s.as_slice()) {
                Some(i) => *setting = i,
                None => {
                    let msg = format!("invalid option '{}'", String::from_utf8_lossy(&s));
                    return Err(args::arg_error(lua, index, &msg, args::Where::LuaJit));
                }
            }
        }
        _ => return Err(args::type_error(lua, index, "string", Some(v), args::Where::LuaJit)),
    }
    Ok(match *setting {
        0 => Value::Boolean(false),
        1 => Value::Boolean(true),
        n => Value::String(lua.create_string(options.get(n).copied().unwrap_or(""))?),
    })
}

#[cfg(test)]
mod tests;
