//! Query arguments: parsing a query string into a Lua table (`ngx.decode_args`,
//! `ngx.req.get_uri_args`, `ngx.req.get_post_args`) and serialising a table into one
//! (`ngx.encode_args`, `ngx.req.set_uri_args`, the `args` option of `ngx.exec` and subrequests).

use mlua::{Lua, Table, Value};

use super::uri;
use crate::lua::args::{runtime_error, type_name};

/// `ngx.decode_args` / `ngx.req.get_*_args` limit when the caller gives none.
pub const DEFAULT_MAX_ARGS: usize = 100;

/// Parses a query string into a Lua table, ignoring the truncation flag; `max_args == 0` means
/// no limit. See [`decode_args_with_truncation`].
pub fn decode_args(lua: &Lua, args: &[u8], max_args: usize) -> mlua::Result<Table> {
    decode_args_with_truncation(lua, args, max_args).map(|(table, _)| table)
}

/// Parses a query string the way `ngx.decode_args` and `ngx.req.get_post_args` do: keys and values
/// are unescaped, a key without `=` maps to `true`, repeated keys collect their values in an array,
/// empty keys are dropped. Parsing stops after `max_args` `&`-separated pieces (0 = no limit), in
/// which case the flag is `true` (Lua then returns "truncated" as second value).
pub fn decode_args_with_truncation(lua: &Lua, args: &[u8], max_args: usize) -> mlua::Result<(Table, bool)> {
    let table = lua.create_table_with_capacity(0, 4)?;
    // nginx counts every `&`, including those ending empty or key-less pieces.
    for (count, piece) in args.split(|&byte| byte == b'&').enumerate() {
        if max_args > 0 && count == max_args {
            return Ok((table, true));
        }
        add_arg(lua, &table, piece)?;
    }
    Ok((table, false))
}

/// Parses a query string the way resty.core's `ngx.req.get_uri_args` does: the limit counts
/// `&`-separated pieces up front (truncated when there are more than `max_args`, 0 = no limit), then
/// keeps the first that many pieces with a non-empty key.
pub fn decode_uri_args(lua: &Lua, args: &[u8], max_args: usize) -> mlua::Result<(Table, bool)> {
    let table = lua.create_table_with_capacity(0, 4)?;
    let pieces = args.iter().filter(|&&byte| byte == b'&').count() + 1;
    let truncated = max_args > 0 && pieces > max_args;
    let limit = if truncated { max_args } else { pieces };
    let mut kept = 0;
    for piece in args.split(|&byte| byte == b'&') {
        if kept == limit {
            break;
        }
        if add_arg(lua, &table, piece)? {
            kept += 1;
        }
    }
    Ok((table, truncated))
}

/// Adds one `key[=value]` piece to `table`; returns whether it had a non-empty key.
fn add_arg(lua: &Lua, table: &Table, piece: &[u8]) -> mlua::Result<bool> {
    let (key, value) = match piece.iter().position(|&byte| byte == b'=') {
        Some(eq) => (uri::unescape_uri(&piece[..eq]), Some(&piece[eq + 1..])),
        None => (uri::unescape_uri(piece), None),
    };
    if key.is_empty() {
        return Ok(false);
    }
    let value = match value {
        Some(raw) => Value::String(lua.create_string(uri::unescape_uri(raw))?),
        None => Value::Boolean(true),
    };
    let key = lua.create_string(key)?;
    match table.raw_get::<Value>(&key)? {
        Value::Nil => table.raw_set(key, value)?,
        Value::Table(values) => values.raw_push(value)?,
        previous => table.raw_set(key, lua.create_sequence_from([previous, value])?)?,
    }
    Ok(true)
}

/// Serialises a Lua table into a query string as `ngx.encode_args` and `ngx.req.set_uri_args` do:
/// pairs in table traversal order, keys and values escaped as URI components, `true` giving a bare
/// key, `false` skipped, array values repeating the key. Errors as lua-nginx-module raises them.
pub fn encode_args(lua: &Lua, table: &Table) -> mlua::Result<Vec<u8>> {
    let mut pairs: Vec<Vec<u8>> = Vec::new();
    for entry in table.pairs::<Value, Value>() {
        let (key, value) = entry?;
        let Value::String(key) = key else {
            let message = "attempt to use a non-string key in the \"args\" option table";
            return Err(runtime_error(lua, 1, message));
        };
        let key = uri::escape_with(&key.as_bytes(), uri::ESCAPE_URI_COMPONENT);
        match value {
            Value::Table(values) => {
                for entry in values.pairs::<Value, Value>() {
                    let (_, value) = entry?;
                    pairs.extend(encode_pair(lua, &key, value)?);
                }
            }
            value => pairs.extend(encode_pair(lua, &key, value)?),
        }
    }
    Ok(pairs.join(&b'&'))
}

/// One `key=value` (or bare `key`) for `encode_args`; `None` when the value is `false`.
fn encode_pair(lua: &Lua, key: &[u8], value: Value) -> mlua::Result<Option<Vec<u8>>> {
    let value = match value {
        Value::Boolean(false) => return Ok(None),
        Value::Boolean(true) => return Ok(Some(key.to_vec())),
        Value::String(_) | Value::Integer(_) | Value::Number(_) => lua.coerce_string(value)?,
        other => {
            let message = format!("attempt to use {} as query arg value", type_name(&other));
            return Err(runtime_error(lua, 1, &message));
        }
    };
    let Some(value) = value else { return Ok(None) };
    let mut pair = key.to_vec();
    pair.push(b'=');
    pair.extend_from_slice(&uri::escape_with(&value.as_bytes(), uri::ESCAPE_URI_COMPONENT));
    Ok(Some(pair))
}
