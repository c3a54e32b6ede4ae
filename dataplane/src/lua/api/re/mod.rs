//! `ngx.re`: PCRE2-backed `match`, `find`, `gmatch`, `sub` and `gsub` with
//! lua-nginx-module 0.10.23 (lua-resty-core) semantics.
//!
//! In: Lua arguments (subject, regex, option letters, `ctx` table, result
//! table, `nth`, replacement template or function). Out: capture tables,
//! positions, replaced strings and counts, or `nil, err` for bad regexes,
//! bad templates and exec failures, with the exact nginx error texts. Bad
//! option letters and bad argument types raise Lua errors.
//!
//! Errors must reach Lua as plain strings (scripts print them with
//! `ngx.say`), but errors returned by Rust callbacks become userdata. So the
//! Rust functions return a sentinel plus the error value and a small Lua shim
//! re-raises it with `error()`.

// FFI: PCRE2's raw API (DFA matching, match limits, name tables), which the
// safe `pcre2` crate does not expose. Each `unsafe` block carries its SAFETY argument.
#[allow(unsafe_code)]
mod pcre;
mod template;

use std::cell::Cell;
use std::rc::Rc;

use mlua::{Function, Lua, LuaString, MultiValue, Table, Value};

use self::pcre::{ExecMode, Match, Regex};
use self::template::Template;
use crate::lua::args::{bad_argument, bad_type, type_name};
use crate::lua::budget;

/// Wraps each Rust entry point: `RAISE, value, level` from Rust becomes
/// `error(value, level)`; any other result passes through unchanged (the
/// number of results matters: `ngx.say(ngx.re.sub(...))`).
const SHIM: &str = r#"
local raw, RAISE = ...
local error = error
local function check(first, ...)
    if first == RAISE then
        local value, level = ...
        error(value, level)
    end
    return first, ...
end
local re = {}
for name, f in pairs(raw) do
    re[name] = function(...) return check(f(...)) end
end
return re
"#;

/// Why a call did not return normally.
enum Fail {
    /// Raise this message with the caller's position (bad option, bad argument).
    Raise(String),
    /// Re-raise a value unchanged (an error thrown by a replace callback).
    Rethrow(Value),
    /// An mlua-level failure (allocation, table access).
    Lua(mlua::Error),
}

impl From<mlua::Error> for Fail {
    fn from(err: mlua::Error) -> Self {
        Fail::Lua(err)
    }
}

type Outcome = Result<MultiValue, Fail>;

/// A Rust entry point behind one `ngx.re` function.
type Entry = fn(&Lua, &Api, MultiValue) -> Outcome;

/// Values every entry point needs.
struct Api {
    raise: Table,
    tostring: Function,
    pcall: Function,
}

/// Installs `ngx.re` (`match`, `find`, `gmatch`, `sub`, `gsub`) into `ngx`.
pub fn register(lua: &Lua, ngx: &Table) -> mlua::Result<()> {
    let globals = lua.globals();
    let api = Rc::new(Api {
        raise: lua.create_table()?,
        tostring: globals.get("tostring")?,
        pcall: globals.get("pcall")?,
    });
    let raw = lua.create_table()?;
    let entries: [(&str, Entry); 5] = [
        ("match", |lua, api, args| match_or_find(lua, api, args, Want::Captures)),
        ("find", |lua, api, args| match_or_find(lua, api, args, Want::Position)),
        ("gmatch", gmatch),
        ("sub", |lua, api, args| substitute(lua, api, args, false)),
        ("gsub", |lua, api, args| substitute(lua, api, args, true)),
    ];
    for (name, entry) in entries {
        let api = Rc::clone(&api);
        let func = lua.create_function(move |lua, args: MultiValue| finish(lua, &api, entry(lua, &api, args)))?;
        raw.raw_set(name, func)?;
    }
    let shim = lua.load(SHIM).set_name("=ngx.re").into_function()?;
    let re: Table = shim.call((raw, api.raise.clone()))?;
    ngx.set("re", re)
}

/// Turns an [`Outcome`] into what the Lua shim expects.
fn finish(lua: &Lua, api: &Api, outcome: Outcome) -> mlua::Result<MultiValue> {
    let (value, level) = match outcome {
        Ok(values) => return Ok(values),
        Err(Fail::Lua(err)) => return Err(err),
        Err(Fail::Raise(msg)) => (Value::String(lua.create_string(msg)?), 2),
        Err(Fail::Rethrow(value)) => (value, 0),
    };
    Ok(MultiValue::from_vec(vec![
        Value::Table(api.raise.clone()),
        value,
        Value::Integer(level),
    ]))
}

/// Parsed option letters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Flags {
    /// PCRE2 compile options.
    options: u32,
    dfa: bool,
    dupnames: bool,
}

/// Parses the `ngx.re` option string. `o` (compile once) and `j` (JIT) need
/// no handling: every regex is cached per thread and JIT-compiled.
fn parse_flags(opts: &[u8]) -> Result<Flags, String> {
    let mut flags = Flags::default();
    for &letter in opts {
        match letter {
            b'o' | b'j' => {}
            b'i' => flags.options |= pcre::OPT_CASELESS,
            b's' => flags.options |= pcre::OPT_DOTALL,
            b'm' => flags.options |= pcre::OPT_MULTILINE,
            // `U` skips PCRE's UTF-8 check in nginx, where invalid input is then
            // undefined behaviour; here the subject is validated once per call
            // either way (see `exec_mode`), so `U` and `u` behave alike.
            b'u' | b'U' => flags.options |= pcre::OPT_UTF,
            b'x' => flags.options |= pcre::OPT_EXTENDED,
            b'd' => flags.dfa = true,
            b'a' => flags.options |= pcre::OPT_ANCHORED,
            b'D' => {
                flags.options |= pcre::OPT_DUPNAMES;
                flags.dupnames = true;
            }
            b'J' => flags.options |= pcre::OPT_JAVASCRIPT,
            _ => {
                return Err(format!(
                    "unknown flag \"{}\" (flags \"{}\")",
                    String::from_utf8_lossy(&[letter]),
                    String::from_utf8_lossy(opts)
                ));
            }
        }
    }
    Ok(flags)
}

fn arg(args: &MultiValue, index: usize) -> Value {
    args.get(index).cloned().unwrap_or(Value::Nil)
}

/// `tostring(value)`, as lua-resty-core applies to subjects and replacements.
fn tostring(api: &Api, value: Value) -> Result<LuaString, Fail> {
    match value {
        Value::String(s) => Ok(s),
        other => match api.tostring.call::<Value>(other)? {
            Value::String(s) => Ok(s),
            _ => Err(Fail::Raise("'__tostring' must return a string".into())),
        },
    }
}

/// A string argument; numbers are accepted and converted like Lua does.
fn string_arg(api: &Api, args: &MultiValue, index: usize, func: &str) -> Result<LuaString, Fail> {
    match arg(args, index) {
        value @ (Value::String(_) | Value::Integer(_) | Value::Number(_)) => tostring(api, value),
        other => Err(Fail::Raise(bad_type(index + 1, func, "string", type_name(&other)))),
    }
}

/// The option string (`nil`/`false` mean none) parsed into [`Flags`].
fn flags_arg(api: &Api, args: &MultiValue, index: usize, func: &str) -> Result<Flags, Fail> {
    match arg(args, index) {
        Value::Nil | Value::Boolean(false) => Ok(Flags::default()),
        _ => parse_flags(&string_arg(api, args, index, func)?.as_bytes()).map_err(Fail::Raise),
    }
}

fn optional_table(args: &MultiValue, index: usize, func: &str) -> Result<Option<Table>, Fail> {
    match arg(args, index) {
        Value::Nil | Value::Boolean(false) => Ok(None),
        Value::Table(t) => Ok(Some(t)),
        other => Err(Fail::Raise(bad_type(index + 1, func, "table", type_name(&other)))),
    }
}

/// A Lua number as an integer, truncated toward zero like the C `int`
/// conversion lua-nginx-module applies (saturating instead of wrapping).
fn integer_of(value: &Value) -> Option<i64> {
    match value {
        Value::Integer(i) => Some(*i),
        Value::Number(n) if n.is_nan() => Some(0),
        Value::Number(n) => Some(n.trunc() as i64),
        _ => None,
    }
}

fn compile(regex: &[u8], flags: Flags) -> mlua::Result<Result<Rc<Regex>, Vec<u8>>> {
    let started = budget::CpuStart::now();
    let compiled = pcre::cached(regex, flags.options);
    budget::charge_cpu_since(started)?;
    Ok(compiled)
}

/// PCRE2's default match limit, which lua-nginx-module keeps by default.
const MATCH_LIMIT: u32 = 10_000_000;
/// PCRE2 backtracking steps per budget unit (a step takes a few nanoseconds).
const UNITS_PER_STEP: u64 = 4;

/// Runs `re` as `Regex::exec` does, on the running code's CPU budget: at most
/// the steps its allowance covers, and the time it took is charged.
fn exec(re: &Regex, subject: &[u8], start: usize, mode: ExecMode) -> mlua::Result<Result<Option<Match>, i32>> {
    let steps = (budget::c_allowance() / UNITS_PER_STEP).clamp(1000, u64::from(MATCH_LIMIT));
    let started = budget::CpuStart::now();
    let found = re.exec(subject, start, mode, steps as u32);
    budget::charge_cpu_since(started)?;
    Ok(found)
}

/// Validates the subject once for UTF regexes so that every exec of this
/// call (a whole `gsub` loop) can skip PCRE2's own scan of the subject.
fn exec_mode(re: &Regex, subject: &[u8], flags: Flags) -> Result<ExecMode, i32> {
    if re.is_utf() {
        pcre::check_utf8(subject)?;
    }
    Ok(ExecMode {
        dfa: flags.dfa,
        utf_checked: re.is_utf(),
    })
}

fn exec_error(code: i32) -> String {
    format!("pcre_exec() failed: {code}")
}

/// Builds the `nil, ..., err` result with `nils` leading nils.
fn nil_err(lua: &Lua, nils: usize, err: impl AsRef<[u8]>) -> Outcome {
    let mut values = vec![Value::Nil; nils];
    values.push(Value::String(lua.create_string(err)?));
    Ok(MultiValue::from_vec(values))
}

fn values(list: Vec<Value>) -> Outcome {
    Ok(MultiValue::from_vec(list))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    /// `ngx.re.match`: the captures table.
    Captures,
    /// `ngx.re.find`: from, to of the whole match or of group `nth`.
    Position,
}

fn match_or_find(lua: &Lua, api: &Api, args: MultiValue, want: Want) -> Outcome {
    let func = if want == Want::Captures { "match" } else { "find" };
    let subject = tostring(api, arg(&args, 0))?;
    let regex = string_arg(api, &args, 1, func)?;
    let flags = flags_arg(api, &args, 2, func)?;
    let ctx = optional_table(&args, 3, func)?;
    let res = match want {
        Want::Captures => optional_table(&args, 4, func)?,
        Want::Position => None,
    };
    let nth = match (want, arg(&args, 4)) {
        (Want::Captures, _) | (_, Value::Nil | Value::Boolean(false)) => 0,
        (_, value) => integer_of(&value)
            .ok_or_else(|| Fail::Raise(bad_type(5, func, "number", type_name(&value))))?
            .max(0),
    };
    let err_nils = if want == Want::Captures { 1 } else { 2 };

    let re = match compile(&regex.as_bytes(), flags)? {
        Ok(re) => re,
        Err(err) => return nil_err(lua, err_nils, err),
    };
    let start = match &ctx {
        Some(ctx) => {
            let pos: Value = ctx.get("pos")?;
            match pos {
                Value::Nil => 0,
                value => {
                    let pos = integer_of(&value).ok_or_else(|| {
                        let why = format!("ctx.pos must be a number, got {}", type_name(&value));
                        Fail::Raise(bad_argument(4, func, &why))
                    })?;
                    usize::try_from(pos.saturating_sub(1)).unwrap_or(0)
                }
            }
        }
        None => 0,
    };

    let bytes = subject.as_bytes();
    let found = match exec_mode(&re, &bytes, flags) {
        Ok(mode) => exec(&re, &bytes, start, mode)?,
        Err(code) => Err(code),
    };
    let m = match found {
        Ok(Some(m)) => m,
        Ok(None) => return values(vec![Value::Nil]),
        Err(code) => return nil_err(lua, err_nils, exec_error(code)),
    };
    let (from, to) = m.whole();
    if let Some(ctx) = &ctx {
        ctx.set("pos", to as i64 + 1)?;
    }
    match want {
        Want::Captures => {
            let table = collect_captures(lua, &re, &m, &bytes, flags, res)?;
            values(vec![Value::Table(table)])
        }
        Want::Position => {
            let ncaptures = if flags.dfa { 0 } else { re.capture_count() };
            let nth = usize::try_from(nth).unwrap_or(usize::MAX);
            if nth > ncaptures {
                return nil_err(lua, 2, "nth out of bound");
            }
            let span = if nth == 0 {
                Some((from, to))
            } else {
                m.spans.get(nth).copied().flatten()
            };
            match span {
                Some((from, to)) if nth < m.rc => {
                    values(vec![Value::Integer(from as i64 + 1), Value::Integer(to as i64)])
                }
                _ => values(vec![Value::Nil, Value::Nil]),
            }
        }
    }
}

/// Fills the captures table like lua-resty-core's `collect_captures`:
/// `[0..=ncaptures]` hold the group texts or `false`, named groups are
/// copied by name (with `D`, into arrays of the matched ones only).
fn collect_captures(
    lua: &Lua,
    re: &Regex,
    m: &Match,
    subject: &[u8],
    flags: Flags,
    res: Option<Table>,
) -> mlua::Result<Table> {
    let ncaptures = if flags.dfa { 0 } else { re.capture_count() };
    let table = match res {
        Some(t) => t,
        None => lua.create_table_with_capacity(ncaptures, re.names().len())?,
    };
    for i in 0..=ncaptures {
        let value = match m.spans.get(i).copied().flatten() {
            Some((from, to)) if i < m.rc => Value::String(lua.create_string(&subject[from..to])?),
            _ => Value::Boolean(false),
        };
        table.set(i, value)?;
    }
    for (group, name) in re.names() {
        let name = lua.create_string(name)?;
        let cap: Value = table.get(*group)?;
        if !flags.dupnames {
            table.set(name, cap)?;
        } else if !matches!(cap, Value::Nil | Value::Boolean(false)) {
            match table.get::<Value>(&name)? {
                Value::Table(list) => list.set(list.len()? + 1, cap)?,
                _ => {
                    let list = lua.create_table()?;
                    list.raw_set(1, cap)?;
                    table.set(name, list)?;
                }
            }
        }
    }
    Ok(table)
}

fn gmatch(lua: &Lua, api: &Api, args: MultiValue) -> Outcome {
    let subject = tostring(api, arg(&args, 0))?;
    let regex = string_arg(api, &args, 1, "gmatch")?;
    let flags = flags_arg(api, &args, 2, "gmatch")?;
    let re = match compile(&regex.as_bytes(), flags)? {
        Ok(re) => re,
        Err(err) => return nil_err(lua, 1, err),
    };
    // `None` once exhausted or failed: later calls keep returning nil.
    let next_pos = Cell::new(Some(0usize));
    // Computed on the first call: lua-resty-core reports bad UTF-8 there.
    let mode = Cell::new(None);
    let iterate = lua.create_function(move |lua, _: MultiValue| {
        let nil = || Ok(MultiValue::from_vec(vec![Value::Nil]));
        let Some(pos) = next_pos.take() else {
            return nil();
        };
        let bytes = subject.as_bytes();
        let found = match mode.get().map_or_else(|| exec_mode(&re, &bytes, flags), Ok) {
            Ok(m) => {
                mode.set(Some(m));
                exec(&re, &bytes, pos, m)?
            }
            Err(code) => Err(code),
        };
        let m = match found {
            Ok(Some(m)) => m,
            Ok(None) => return nil(),
            Err(code) => {
                let err = lua.create_string(exec_error(code))?;
                return Ok(MultiValue::from_vec(vec![Value::Nil, Value::String(err)]));
            }
        };
        let (from, to) = m.whole();
        // An empty match steps one byte ahead so the next call makes progress.
        let next = if to == from { to + 1 } else { to };
        if next <= bytes.len() || to != from {
            next_pos.set(Some(next));
        }
        let table = collect_captures(lua, &re, &m, &bytes, flags, None)?;
        Ok(MultiValue::from_vec(vec![Value::Table(table)]))
    })?;
    // lua-resty-core returns a callable table, so `type(it)` is "table".
    let iterator = lua.create_table()?;
    let meta = lua.create_table_with_capacity(0, 1)?;
    meta.raw_set("__call", iterate)?;
    iterator.set_metatable(Some(meta))?;
    values(vec![Value::Table(iterator)])
}

/// The replacement: template source, compiled template or a Lua function.
enum Replace {
    Source(LuaString),
    Template(Template),
    Function(Function),
}

fn substitute(lua: &Lua, api: &Api, args: MultiValue, global: bool) -> Outcome {
    let func = if global { "gsub" } else { "sub" };
    let regex = string_arg(api, &args, 1, func)?;
    // lua-resty-core stringifies a non-function replacement before compiling
    // the regex, but reports regex errors before template errors.
    let replace = match arg(&args, 2) {
        Value::Function(f) => Replace::Function(f),
        other => Replace::Source(tostring(api, other)?),
    };
    let flags = flags_arg(api, &args, 3, func)?;
    let re = match compile(&regex.as_bytes(), flags)? {
        Ok(re) => re,
        Err(err) => return nil_err(lua, 2, err),
    };
    let replace = match replace {
        Replace::Source(src) => match Template::compile(&src.as_bytes()) {
            Ok(t) => Replace::Template(t),
            Err(_) => return nil_err(lua, 2, "failed to compile the replacement template"),
        },
        compiled => compiled,
    };
    let subject = tostring(api, arg(&args, 0))?;
    let bytes = subject.as_bytes();

    let mut out = Vec::new();
    let mut count: i64 = 0;
    let mut pos = 0;
    // End of the last match: everything before it has been emitted.
    let mut copied = 0;
    let mode = match exec_mode(&re, &bytes, flags) {
        Ok(mode) => mode,
        Err(code) => return nil_err(lua, 2, exec_error(code)),
    };
    loop {
        let m = match exec(&re, &bytes, pos, mode)? {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(code) => return nil_err(lua, 2, exec_error(code)),
        };
        count += 1;
        let (from, to) = m.whole();
        out.extend_from_slice(&bytes[copied.min(from)..from]);
        match &replace {
            Replace::Template(t) => t.expand(&bytes, &m, &mut out),
            // Compiled into `Template` before the loop.
            Replace::Source(_) => {}
            Replace::Function(f) => {
                let captures = collect_captures(lua, &re, &m, &bytes, flags, None)?;
                let mut result = api.pcall.call::<MultiValue>((f.clone(), captures))?.into_iter();
                let ok = matches!(result.next(), Some(Value::Boolean(true)));
                let value = result.next().unwrap_or(Value::Nil);
                if !ok {
                    return Err(Fail::Rethrow(value));
                }
                out.extend_from_slice(&tostring(api, value)?.as_bytes());
            }
        }
        copied = to;
        pos = to;
        if to == from {
            // Empty match: step one byte ahead, as nginx does.
            pos += 1;
            if pos > bytes.len() {
                break;
            }
        }
        if !global {
            break;
        }
    }
    if count == 0 {
        return values(vec![Value::String(subject.clone()), Value::Integer(0)]);
    }
    if copied < bytes.len() {
        out.extend_from_slice(&bytes[copied..]);
    }
    values(vec![Value::String(lua.create_string(&out)?), Value::Integer(count)])
}

#[cfg(test)]
mod tests;
