//! `ngx.*` string codecs: digests, base64, URI escaping, query-argument (de)serialisation and
//! `ngx.quote_sql_str`.
//!
//! In: Lua values passed by handlers, or raw bytes from the core (query strings, request bodies).
//! Out: Lua strings/tables, or byte vectors for the core (`escape_uri`, `unescape_uri`,
//! `encode_args`, `decode_args*`).
//!
//! Behaviour follows lua-nginx-module 0.10.23 with lua-resty-core loaded, which is what OpenResty
//! runs: the digest, base64 and URI functions are resty.core's Lua wrappers (non-strings go through
//! `tostring`, `nil`/`false` become ""), while `hmac_sha1`, `quote_sql_str`, `encode_args` and
//! `decode_args` are lua-nginx-module C functions (strict arity, `luaL_check*` argument errors).
//! Error messages carry the same "chunk:line: " prefix Lua's `luaL_where` would add
//! (`crate::lua::args`).
//!
//! `digest` holds the digests and base64, `uri` the URI escaping, `query` the query arguments and
//! `sql` the SQL quoting; this module binds them to Lua.

mod digest;
mod query;
mod sql;
mod uri;

use mlua::{Function, Lua, LuaString, MultiValue, Table, Value};

pub use self::digest::decode_base64;
pub use self::query::{DEFAULT_MAX_ARGS, decode_args, decode_args_with_truncation, decode_uri_args, encode_args};
pub use self::sql::quote_sql_str;
pub use self::uri::{escape_uri, unescape_uri};
use crate::lua::args::{Where, runtime_error, type_error, type_name};

/// The two hex digits of `byte` in the given digit set (nginx escapes upper-case, md5 is lower-case;
/// too small a job for a dependency).
fn hex_pair(byte: u8, digits: &[u8; 16]) -> [u8; 2] {
    [digits[usize::from(byte >> 4)], digits[usize::from(byte & 0xf)]]
}

/// Sets the codec functions on the `ngx` table.
pub fn register(lua: &Lua, ngx: &Table) -> mlua::Result<()> {
    // resty.core captures `tostring` when it loads; do the same so a later sandbox cannot change it.
    let tostring: Function = lua.globals().raw_get("tostring")?;

    // Functions taking one loosely coerced string and returning a string.
    type BytesFn = fn(&[u8]) -> Vec<u8>;
    let string_functions: [(&str, BytesFn); 4] = [
        ("md5", digest::md5_hex),
        ("md5_bin", digest::md5_bin),
        ("sha1_bin", digest::sha1_bin),
        ("unescape_uri", unescape_uri),
    ];
    for (name, f) in string_functions {
        let tostring = tostring.clone();
        let function =
            lua.create_function(move |lua, arg: Value| lua.create_string(f(&loose_bytes(&tostring, arg)?)))?;
        ngx.raw_set(name, function)?;
    }
    for name in ["crc32_short", "crc32_long"] {
        let tostring = tostring.clone();
        let function = lua.create_function(move |_, arg: Value| Ok(digest::crc32(&loose_bytes(&tostring, arg)?)))?;
        ngx.raw_set(name, function)?;
    }

    let to_string = tostring.clone();
    let encode_base64 = lua.create_function(move |lua, (arg, no_padding): (Value, Value)| {
        let bytes = loose_bytes(&to_string, arg)?;
        let no_padding = match no_padding {
            Value::Nil | Value::Boolean(false) => false,
            Value::Boolean(true) => true,
            other => {
                let message = format!("bad no_padding: boolean expected, got {}", type_name(&other));
                return Err(runtime_error(lua, 1, &message));
            }
        };
        lua.create_string(digest::encode_base64(&bytes, no_padding))
    })?;
    ngx.raw_set("encode_base64", encode_base64)?;

    let decode_base64 = lua.create_function(|lua, arg: Value| match arg {
        Value::String(s) => decode_base64(&s.as_bytes())
            .map(|bytes| lua.create_string(bytes))
            .transpose(),
        _ => Err(runtime_error(lua, 1, "string argument only")),
    })?;
    ngx.raw_set("decode_base64", decode_base64)?;

    let to_string = tostring.clone();
    let escape = lua.create_function(move |lua, (arg, kind): (Value, Value)| {
        let bytes = loose_bytes(&to_string, arg)?;
        // resty.core raises these with level 3, i.e. at the caller's caller.
        let table_index = match kind {
            Value::Nil => uri::ESCAPE_URI_COMPONENT,
            Value::Integer(_) | Value::Number(_) => {
                let number = lua.coerce_number(kind.clone())?.unwrap_or_default();
                if !(0.0..=6.0).contains(&number) && !number.is_nan() {
                    let shown = lua
                        .coerce_string(kind)?
                        .map(|s| s.to_string_lossy())
                        .unwrap_or_default();
                    return Err(runtime_error(lua, 2, &format!("\"type\" {shown} out of range")));
                }
                // The FFI call converts to a C int by truncation; NaN passes the range check there too.
                number as usize
            }
            _ => return Err(runtime_error(lua, 2, "\"type\" is not a number")),
        };
        lua.create_string(uri::escape_with(&bytes, table_index))
    })?;
    ngx.raw_set("escape_uri", escape)?;

    let hmac_sha1 = lua.create_function(|lua, args: MultiValue| {
        if args.len() != 2 {
            let message = format!("expecting 2 arguments, but got {}", args.len());
            return Err(runtime_error(lua, 1, &message));
        }
        let key = check_bytes(lua, &args[0], 1)?;
        let message = check_bytes(lua, &args[1], 2)?;
        lua.create_string(digest::hmac_sha1(&key, &message)?)
    })?;
    ngx.raw_set("hmac_sha1", hmac_sha1)?;

    let quote = lua.create_function(|lua, args: MultiValue| {
        if args.len() != 1 {
            return Err(runtime_error(lua, 1, "expecting one argument"));
        }
        lua.create_string(quote_sql_str(&check_bytes(lua, &args[0], 1)?))
    })?;
    ngx.raw_set("quote_sql_str", quote)?;

    let encode = lua.create_function(|lua, args: MultiValue| {
        if args.len() != 1 {
            let message = format!("expecting 1 argument but seen {}", args.len());
            return Err(runtime_error(lua, 1, &message));
        }
        match &args[0] {
            Value::Table(table) => lua.create_string(encode_args(lua, table)?),
            other => Err(type_error(lua, 1, "table", Some(other), Where::Lauxlib)),
        }
    })?;
    ngx.raw_set("encode_args", encode)?;

    let decode = lua.create_function(|lua, args: MultiValue| {
        if args.len() != 1 && args.len() != 2 {
            let message = format!("expecting 1 or 2 arguments but seen {}", args.len());
            return Err(runtime_error(lua, 1, &message));
        }
        let query = check_bytes(lua, &args[0], 1)?;
        let max_args = if args.len() == 2 {
            match lua.coerce_number(args[1].clone())? {
                // luaL_checkint: truncate to a C int; zero and negatives mean "no limit".
                Some(number) => usize::try_from(number as i64 as i32).unwrap_or(0),
                None => return Err(type_error(lua, 2, "number", Some(&args[1]), Where::Lauxlib)),
            }
        } else {
            DEFAULT_MAX_ARGS
        };
        let (table, truncated) = decode_args_with_truncation(lua, &query, max_args)?;
        let mut results = MultiValue::new();
        results.push_back(Value::Table(table));
        if truncated {
            results.push_back(Value::String(lua.create_string("truncated")?));
        }
        Ok(results)
    })?;
    ngx.raw_set("decode_args", decode)?;
    Ok(())
}

/// resty.core's argument coercion: strings as they are, `nil`/`false` as "", anything else through
/// `tostring`.
fn loose_bytes(tostring: &Function, value: Value) -> mlua::Result<Vec<u8>> {
    let converted = match value {
        Value::Nil | Value::Boolean(false) => return Ok(Vec::new()),
        Value::String(s) => s,
        // LuaJIT's tostring itself rejects a __tostring that returns a non-string.
        other => tostring.call::<LuaString>(other)?,
    };
    Ok(converted.as_bytes().to_vec())
}

/// `luaL_checklstring` on argument `narg`: strings, and numbers as Lua formats them.
fn check_bytes(lua: &Lua, value: &Value, narg: usize) -> mlua::Result<Vec<u8>> {
    let converted = match value {
        Value::String(s) => Some(s.clone()),
        Value::Integer(_) | Value::Number(_) => lua.coerce_string(value.clone())?,
        _ => None,
    };
    converted
        .map(|s| s.as_bytes().to_vec())
        .ok_or_else(|| type_error(lua, narg, "string", Some(value), Where::Lauxlib))
}

#[cfg(test)]
mod tests;
