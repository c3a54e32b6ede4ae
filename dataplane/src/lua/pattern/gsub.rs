//! `string.gsub`, a port of LuaJIT's `string_gsub`, `add_value` and `add_s`.
//!
//! In: subject, pattern, replacement (a string or number, a table, a function) and an optional
//! maximum count. Out: the new string and the number of matches replaced. The result is built in
//! Rust, at most `budget::max_string_len()` bytes, every copied byte metered; the matcher and any
//! Lua called back are charged to the running Lua before that Lua runs again.

use mlua::{Function, Lua, LuaString, MultiValue, Table, Value};

use super::args::Args;
use super::engine::{self, Capture, Matcher};
use super::{CallbackNesting, Meter, capture_value};
use crate::lua::args::{Where, arg_error, caller_error, type_name};
use crate::lua::budget;

const ESC: u8 = b'%';

/// Lua called back from `gsub`, through `pcall`, so that the callback's error reaches us as the
/// value it raised. (mlua's own `Function::call` would append a traceback to a string error and
/// turn any other value into a string.)
pub(super) struct Callbacks {
    /// `function(f, ...) return pcall(f, ...) end`
    call: Function,
    /// `function(t, k) return pcall(index, t, k) end`, `index` doing `t[k]` (metamethods and all).
    index: Function,
}

impl Callbacks {
    pub(super) fn new(lua: &Lua) -> mlua::Result<Callbacks> {
        let (call, index) = lua
            .load(
                r#"
                local pcall = pcall
                local function index(t, k) return t[k] end
                return function(f, ...) return pcall(f, ...) end,
                       function(t, k) return pcall(index, t, k) end
                "#,
            )
            .set_name("=moongate.pattern")
            .eval()?;
        Ok(Callbacks { call, index })
    }

    /// The first result of `f(args...)`.
    fn call(&self, f: &Function, mut args: MultiValue) -> mlua::Result<Value> {
        args.push_front(Value::Function(f.clone()));
        let (ok, value): (bool, Value) = self.call.call(args)?;
        if ok { Ok(value) } else { Err(rethrown(value)) }
    }

    /// `table[key]`, metamethods included.
    fn index(&self, table: &Table, key: Value) -> mlua::Result<Value> {
        let (ok, value): (bool, Value) = self.index.call((table, key))?;
        if ok { Ok(value) } else { Err(rethrown(value)) }
    }
}

/// The error to raise for a Lua error value caught from a callback.
fn rethrown(value: Value) -> mlua::Error {
    match value {
        // An mlua error (our own, or the budget's): passed on unchanged.
        Value::Error(e) => *e,
        Value::String(s) => mlua::Error::RuntimeError(s.to_string_lossy()),
        other => mlua::Error::RuntimeError(other.to_string().unwrap_or_else(|_| type_name(&other).to_string())),
    }
}

enum Replacement {
    /// `%0`-`%9` stand for captures, `%` before anything else for that character.
    Text(LuaString),
    /// Looked up with the first capture; `raw` when it has no metatable, so no Lua runs.
    Table {
        table: Table,
        raw: bool,
    },
    Function(Function),
}

impl Replacement {
    fn calls_lua(&self) -> bool {
        match self {
            Replacement::Text(_) => false,
            Replacement::Table { raw, .. } => !raw,
            Replacement::Function(_) => true,
        }
    }
}

pub(super) fn gsub(lua: &Lua, args: &MultiValue, callbacks: &Callbacks) -> mlua::Result<(LuaString, i64)> {
    let args = Args::new(lua, args);
    let subject = args.string(1)?;
    let pattern = args.string(2)?;
    let src = subject.as_bytes();
    // `luaL_optint(L, 4, srcl + 1)` comes before the check of argument 3, as in LuaJIT.
    let max_replacements = args.opt_int(4, (src.len() + 1) as i32)?;
    let replacement = match args.get(3) {
        Some(Value::String(_) | Value::Integer(_) | Value::Number(_)) => {
            Replacement::Text(args.string(3)?.into_owned())
        }
        Some(Value::Table(table)) => Replacement::Table {
            raw: table.metatable().is_none(),
            table: table.clone(),
        },
        Some(Value::Function(f)) => Replacement::Function(f.clone()),
        _ => return Err(arg_error(lua, 3, "string/function/table expected", Where::LuaJit)),
    };
    let pattern = pattern.as_bytes();
    let (anchored, pattern) = engine::split_anchor(engine::c_string(&pattern));
    let _nesting = if replacement.calls_lua() {
        Some(CallbackNesting::enter(lua)?)
    } else {
        None
    };

    let mut result = Output {
        lua,
        callbacks,
        replacement: &replacement,
        bytes: Vec::new(),
        max_len: budget::max_string_len(),
        meter: Meter::start(),
    };
    let mut matcher = Matcher::new(&src, pattern, 0);
    let mut count: i32 = 0;
    let mut pos = 0;
    // Subject bytes from here to `pos` are kept as they are; LuaJIT copies them one at a time
    // as it steps over them, we copy each run at once (same result, same limits).
    let mut kept_from = 0;
    while count < max_replacements {
        matcher.set_limit(result.meter.matcher_limit());
        let found = matcher.match_at(pos);
        result.meter.add(matcher.take_steps())?;
        let end = found.map_err(|e| result.meter.match_error(lua, e))?;
        if let Some(end) = end {
            count += 1;
            result.push(&src[kept_from..pos])?;
            result.add_value(&matcher, pos, end)?;
            kept_from = pos.max(end);
        }
        match end {
            Some(end) if end > pos => pos = end,
            _ if pos < src.len() => pos += 1,
            _ => break,
        }
        if anchored {
            break;
        }
    }
    result.push(&src[kept_from..])?;
    result.meter.settle()?;
    Ok((lua.create_string(&result.bytes)?, i64::from(count)))
}

/// The string being built: never longer than `max_len`, every byte metered.
struct Output<'a> {
    lua: &'a Lua,
    callbacks: &'a Callbacks,
    replacement: &'a Replacement,
    bytes: Vec<u8>,
    max_len: usize,
    meter: Meter,
}

impl Output<'_> {
    #[inline]
    fn push(&mut self, bytes: &[u8]) -> mlua::Result<()> {
        if bytes.len() > self.max_len - self.bytes.len() {
            // What LuaJIT raises when a buffer cannot grow.
            return Err(mlua::Error::runtime("not enough memory"));
        }
        self.meter.add_bytes(bytes.len())?;
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    /// Appends the replacement for the match `begin..end` (`add_value`).
    fn add_value(&mut self, matcher: &Matcher, begin: usize, end: usize) -> mlua::Result<()> {
        let lua = self.lua;
        let value = match self.replacement {
            Replacement::Text(text) => return self.add_text(&text.as_bytes(), matcher, begin, end),
            Replacement::Table { table, raw: true } => {
                table.raw_get(capture_value(lua, matcher, 0, begin, end, &mut self.meter)?)?
            }
            Replacement::Table { table, raw: false } => {
                let key = capture_value(lua, matcher, 0, begin, end, &mut self.meter)?;
                self.meter.settle()?;
                let value = self.callbacks.index(table, key)?;
                self.meter.refresh();
                value
            }
            Replacement::Function(f) => {
                let mut captures = MultiValue::new();
                super::push_captures(lua, matcher, begin, end, true, &mut captures, &mut self.meter)?;
                self.meter.settle()?;
                let value = self.callbacks.call(f, captures)?;
                self.meter.refresh();
                value
            }
        };
        match value {
            // `nil` or `false` keeps the match as it was.
            Value::Nil | Value::Boolean(false) => self.push(matcher.subject(begin, end)),
            Value::String(s) => self.push(&s.as_bytes()),
            v @ (Value::Integer(_) | Value::Number(_)) => match lua.coerce_string(v)? {
                Some(s) => self.push(&s.as_bytes()),
                None => Err(caller_error(lua, "invalid replacement value (a number)")),
            },
            other => Err(caller_error(
                lua,
                &format!("invalid replacement value (a {})", type_name(&other)),
            )),
        }
    }

    /// Appends a replacement string with its `%` escapes expanded (`add_s`).
    fn add_text(&mut self, text: &[u8], matcher: &Matcher, begin: usize, end: usize) -> mlua::Result<()> {
        let mut rest = text;
        while !rest.is_empty() {
            let Some(esc) = memchr::memchr(ESC, rest) else {
                return self.push(rest);
            };
            self.push(&rest[..esc])?;
            // A '%' ending the string escapes the NUL terminator C reads after it.
            let escaped = rest.get(esc + 1).copied().unwrap_or(0);
            match escaped {
                b'0' => self.push(matcher.subject(begin, end))?,
                b'1'..=b'9' => match matcher.capture(usize::from(escaped - b'1'), begin, end) {
                    Ok(Capture::Bytes(bytes)) => self.push(bytes)?,
                    Ok(Capture::Position(at)) => self.push(at.to_string().as_bytes())?,
                    Err(e) => return Err(caller_error(self.lua, e.message())),
                },
                other => self.push(&[other])?,
            }
            rest = rest.get(esc + 2..).unwrap_or_default();
        }
        Ok(())
    }
}
