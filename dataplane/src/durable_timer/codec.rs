//! The stored form of a durable timer: a small versioned binary encoding of
//! the record and its arguments.
//!
//! Arguments are plain data only — nil, booleans, numbers, byte strings and
//! tables of those with string or number keys — because a stored callback
//! cannot carry upvalues, functions, userdata or coroutines across a
//! restart. Conversion from Lua refuses anything else with a reason the
//! caller turns into `bad argument #N`. Tables are bounded in depth and the
//! whole argument list in encoded size; a table reachable twice (not a cycle)
//! is stored twice, and the size bound keeps that from exploding. Metatables
//! are not stored.
//!
//! Layout (integers little-endian):
//! ```text
//! record := VERSION:u8 fire_at_ms:u64 str(namespace) str(route) str(callback) nargs:u32 arg*
//! str    := len:u32 bytes
//! arg    := 0 (nil) | 1 (false) | 2 (true) | 3 f64 | 4 str | 5 npairs:u32 (arg arg)*
//! ```
//! It is written with the shared framing of `redb_file::codec`. Decoding
//! never panics and rejects anything malformed with a `DecodeError` naming
//! what is wrong: unknown version, truncation, trailing bytes, excess depth,
//! bad table keys.

use std::ffi::c_void;

use mlua::{Lua, Value};

use crate::redb_file::codec::{DecodeError, Format, Reader, Writer};

/// Bumped on any change of the layout; older records then fail to decode
/// (logged and dropped) rather than being misread.
pub const VERSION: u8 = 1;

const FORMAT: Format = Format::new("durable timer record", VERSION);

/// Deepest table nesting accepted (an argument itself is depth 0).
pub const MAX_DEPTH: usize = 16;

/// Largest encoded size of all arguments of one timer.
pub const MAX_ARGS_BYTES: usize = 64 * 1024;

/// Largest record accepted when decoding (arguments plus names).
const MAX_RECORD_BYTES: usize = MAX_ARGS_BYTES + 64 * 1024;

const NIL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const NUMBER: u8 = 3;
const STRING: u8 = 4;
const TABLE: u8 = 5;

/// A stored argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Nil,
    Bool(bool),
    Number(f64),
    Str(Vec<u8>),
    /// Key/value pairs; keys are `Str` or `Number` only.
    Table(Vec<(Arg, Arg)>),
}

/// One durable timer as stored (its id is the row key).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub namespace: String,
    /// The LuaRoute's name (its id is `namespace/route`).
    pub route: String,
    /// `"module.function"`.
    pub callback: String,
    /// Absolute fire time, Unix milliseconds.
    pub fire_at_ms: u64,
    pub args: Vec<Arg>,
}

impl Record {
    pub fn route_id(&self) -> String {
        format!("{}/{}", self.namespace, self.route)
    }
}

/// Converts Lua values (the timer's extra arguments) into `Arg`s. On refusal
/// returns the 0-based index of the offending value and the reason, e.g.
/// "cannot store a function".
pub fn args_from_lua(values: &[Value]) -> Result<Vec<Arg>, (usize, String)> {
    let mut budget = MAX_ARGS_BYTES;
    let mut ancestors = Vec::new();
    values
        .iter()
        .enumerate()
        .map(|(i, v)| from_lua(v, 0, &mut ancestors, &mut budget).map_err(|e| (i, e)))
        .collect()
}

fn charge(budget: &mut usize, n: usize) -> Result<(), String> {
    *budget = budget
        .checked_sub(n)
        .ok_or_else(|| format!("arguments too large (more than {MAX_ARGS_BYTES} bytes encoded)"))?;
    Ok(())
}

fn from_lua(v: &Value, depth: usize, ancestors: &mut Vec<*const c_void>, budget: &mut usize) -> Result<Arg, String> {
    match v {
        Value::Nil => charge(budget, 1).map(|()| Arg::Nil),
        Value::Boolean(b) => charge(budget, 1).map(|()| Arg::Bool(*b)),
        // LuaJIT numbers are doubles; an Integer here came from one.
        Value::Integer(i) => charge(budget, 9).map(|()| Arg::Number(*i as f64)),
        Value::Number(n) => charge(budget, 9).map(|()| Arg::Number(*n)),
        Value::String(s) => {
            let bytes = s.as_bytes().to_vec();
            charge(budget, 5 + bytes.len())?;
            Ok(Arg::Str(bytes))
        }
        Value::Table(t) => {
            let ptr = t.to_pointer();
            if ancestors.contains(&ptr) {
                return Err("cannot store a cyclic table".into());
            }
            if depth >= MAX_DEPTH {
                return Err(format!("table nested deeper than {MAX_DEPTH} levels"));
            }
            charge(budget, 5)?;
            ancestors.push(ptr);
            let mut pairs = Vec::new();
            for pair in t.pairs::<Value, Value>() {
                let (k, v) = pair.map_err(|e| e.to_string())?;
                if !matches!(k, Value::String(_) | Value::Integer(_) | Value::Number(_)) {
                    ancestors.pop();
                    return Err(format!("cannot store a table with a {} key", k.type_name()));
                }
                let k = from_lua(&k, depth + 1, ancestors, budget);
                let v = k.and_then(|k| Ok((k, from_lua(&v, depth + 1, ancestors, budget)?)));
                match v {
                    Ok(pair) => pairs.push(pair),
                    Err(e) => {
                        ancestors.pop();
                        return Err(e);
                    }
                }
            }
            ancestors.pop();
            Ok(Arg::Table(pairs))
        }
        other => Err(format!("cannot store a {}", other.type_name())),
    }
}

/// Builds the Lua value of a stored argument.
pub fn to_lua(lua: &Lua, arg: &Arg) -> mlua::Result<Value> {
    Ok(match arg {
        Arg::Nil => Value::Nil,
        Arg::Bool(b) => Value::Boolean(*b),
        Arg::Number(n) => Value::Number(*n),
        Arg::Str(s) => Value::String(lua.create_string(s)?),
        Arg::Table(pairs) => {
            let t = lua.create_table_with_capacity(0, pairs.len())?;
            for (k, v) in pairs {
                t.raw_set(to_lua(lua, k)?, to_lua(lua, v)?)?;
            }
            Value::Table(t)
        }
    })
}

pub fn encode(rec: &Record) -> Vec<u8> {
    let mut w = FORMAT.writer(64);
    w.u64(rec.fire_at_ms);
    for s in [&rec.namespace, &rec.route, &rec.callback] {
        // Sizes are bounded far below 4 GiB by MAX_ARGS_BYTES and the names.
        w.bytes(s.as_bytes());
    }
    w.len(rec.args.len());
    for a in &rec.args {
        put_arg(&mut w, a);
    }
    w.finish()
}

fn put_arg(w: &mut Writer, a: &Arg) {
    match a {
        Arg::Nil => w.u8(NIL),
        Arg::Bool(false) => w.u8(FALSE),
        Arg::Bool(true) => w.u8(TRUE),
        Arg::Number(n) => {
            w.u8(NUMBER);
            w.f64(*n);
        }
        Arg::Str(s) => {
            w.u8(STRING);
            w.bytes(s);
        }
        Arg::Table(pairs) => {
            w.u8(TABLE);
            w.len(pairs.len());
            for (k, v) in pairs {
                put_arg(w, k);
                put_arg(w, v);
            }
        }
    }
}

/// The record in `bytes`, or what keeps them from being a well-formed record
/// of this version.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let mut r = FORMAT.reader_at_most(bytes, MAX_RECORD_BYTES)?;
    let fire_at_ms = r.u64("fire time")?;
    let namespace = r.str("namespace")?.to_string();
    let route = r.str("route")?.to_string();
    let callback = r.str("callback")?.to_string();
    // Each argument takes at least its tag byte.
    let n = r.count("argument count", 1)?;
    let mut args = Vec::new();
    for _ in 0..n {
        args.push(arg(&mut r, 0)?);
    }
    r.finish()?;
    Ok(Record {
        namespace,
        route,
        callback,
        fire_at_ms,
        args,
    })
}

fn arg(r: &mut Reader<'_>, depth: usize) -> Result<Arg, DecodeError> {
    Ok(match r.u8("argument tag")? {
        NIL => Arg::Nil,
        FALSE => Arg::Bool(false),
        TRUE => Arg::Bool(true),
        NUMBER => Arg::Number(r.f64("number argument")?),
        STRING => Arg::Str(r.bytes("string argument")?.to_vec()),
        TABLE if depth >= MAX_DEPTH => return Err(r.invalid("table argument", "nested too deep")),
        TABLE => {
            // Each pair takes at least two bytes: a bad count cannot make
            // us allocate more than the input justifies.
            let n = r.count("table size", 2)?;
            let mut pairs = Vec::with_capacity(n);
            for _ in 0..n {
                let k = arg(r, depth + 1)?;
                match &k {
                    Arg::Str(_) => {}
                    Arg::Number(x) if !x.is_nan() => {}
                    _ => return Err(r.invalid("table key", "neither a string nor a number other than NaN")),
                }
                pairs.push((k, arg(r, depth + 1)?));
            }
            Arg::Table(pairs)
        }
        tag => return Err(r.bad_tag("argument tag", tag)),
    })
}
