//! `ngx.header` (response headers, read and write) and `ngx.resp.get_headers`.
//!
//! Names are case-insensitive and `_` stands for `-`, as with nginx's default
//! `lua_transform_underscores_in_response_headers on`. A table value sets a
//! multi-value header, `nil` or `{}` removes it. After the headers are sent a
//! write is logged and ignored, as lua-nginx-module does.

use http::{HeaderName, HeaderValue};
use mlua::{Lua, Table, Value};

use super::fmt_number;
use crate::config::Phase;
use crate::context;
use crate::request::RequestState;

pub fn register(lua: &Lua, ngx: &Table) -> mlua::Result<()> {
    let header = lua.create_table()?;
    let mt = lua.create_table()?;
    mt.set(
        "__index",
        lua.create_function(|lua, (_, name): (Value, mlua::LuaString)| {
            let name = normalize_name(&name.as_bytes(), true);
            context::with("ngx.header", |r| get(lua, r, &name))
        })?,
    )?;
    mt.set(
        "__newindex",
        lua.create_function(|_, (_, name, value): (Value, mlua::LuaString, Value)| {
            let name_bytes = name.as_bytes().to_vec();
            context::with("ngx.header", |r| set(r, &name_bytes, value, true))
        })?,
    )?;
    mt.set("__metatable", false)?;
    header.set_metatable(Some(mt))?;
    ngx.set("header", header)?;

    let resp: Table = ngx.get("resp")?;
    resp.set(
        "get_headers",
        lua.create_function(|lua, (max, raw): (Option<i64>, Option<bool>)| {
            let max = max.unwrap_or(100);
            context::with("ngx.resp.get_headers", |r| {
                let t = lua.create_table()?;
                let mut count = 0i64;
                let mut truncated = false;
                let mut push = |name: &str, value: &[u8]| -> mlua::Result<()> {
                    if max > 0 && count >= max {
                        truncated = true;
                        return Ok(());
                    }
                    count += 1;
                    let v = lua.create_string(value)?;
                    match t.raw_get::<Value>(name)? {
                        Value::Nil => t.raw_set(name, v),
                        Value::Table(list) => list.raw_push(v),
                        prev => t.raw_set(name, lua.create_sequence_from([prev, Value::String(v)])?),
                    }
                };
                for (name, value) in &r.resp_headers {
                    push(name.as_str(), value.as_bytes())?;
                }
                if !raw.unwrap_or(false) {
                    t.set_metatable(Some(lookup_metatable(lua)?))?;
                }
                Ok((t, truncated.then_some("truncated")))
            })
        })?,
    )?;
    Ok(())
}

/// A metatable whose `__index` retries a key lowercased with `_` → `-`, so
/// `h.Content_Type` finds `content-type` as in lua-nginx-module.
pub fn lookup_metatable(lua: &Lua) -> mlua::Result<Table> {
    if let Some(t) = lua.named_registry_value::<Option<Table>>("moongate.header_lookup_mt")? {
        return Ok(t);
    }
    let mt = lua.create_table()?;
    mt.set(
        "__index",
        lua.create_function(|_, (t, key): (Table, Value)| match key {
            Value::String(s) => {
                let norm = normalize_name(&s.as_bytes(), true);
                if norm.as_bytes() == &*s.as_bytes() {
                    Ok(Value::Nil)
                } else {
                    t.raw_get::<Value>(norm)
                }
            }
            _ => Ok(Value::Nil),
        })?,
    )?;
    // Shared by every route of the VM: a route must not be able to change it.
    mt.set("__metatable", false)?;
    lua.set_named_registry_value("moongate.header_lookup_mt", &mt)?;
    Ok(mt)
}

/// Percent-escapes bytes that may not appear in a header name, as nginx does
/// for unsafe names (`"a: b"` → `a%3A%20b`), so Lua cannot inject headers.
pub fn escape_name(name: &str) -> String {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$&'*+-.^_`|~".contains(&b);
    if name.bytes().all(token) {
        return name.to_string();
    }
    let mut out = String::with_capacity(name.len() + 8);
    for b in name.bytes() {
        if token(b) {
            out.push(b as char)
        } else {
            out.push_str(&format!("%{b:02X}"))
        }
    }
    out
}

/// Lowercases and, when `underscores`, turns `_` into `-`.
pub fn normalize_name(name: &[u8], underscores: bool) -> String {
    name.iter()
        .map(|&b| {
            if underscores && b == b'_' {
                '-'
            } else {
                (b as char).to_ascii_lowercase()
            }
        })
        .collect()
}

fn get(lua: &Lua, r: &RequestState, name: &str) -> mlua::Result<Value> {
    let mut values = r.resp_headers.get_all(name).iter().peekable();
    let Some(first) = values.next() else {
        return Ok(Value::Nil);
    };
    if values.peek().is_none() {
        return Ok(Value::String(lua.create_string(first.as_bytes())?));
    }
    let t = lua.create_table()?;
    t.raw_push(lua.create_string(first.as_bytes())?)?;
    for v in values {
        t.raw_push(lua.create_string(v.as_bytes())?)?;
    }
    Ok(Value::Table(t))
}

/// Turns a Lua value into header values; CR and LF are escaped as nginx does.
pub fn header_values(value: &Value) -> mlua::Result<Vec<HeaderValue>> {
    let one = |v: &Value| -> mlua::Result<HeaderValue> {
        let bytes = match v {
            Value::String(s) => s.as_bytes().to_vec(),
            Value::Integer(i) => fmt_number(*i as f64).into_bytes(),
            Value::Number(n) => fmt_number(*n).into_bytes(),
            Value::Boolean(b) => {
                if *b {
                    b"true".to_vec()
                } else {
                    b"false".to_vec()
                }
            }
            other => {
                return Err(mlua::Error::runtime(format!(
                    "attempt to use {} as header value",
                    other.type_name()
                )));
            }
        };
        let mut escaped = Vec::with_capacity(bytes.len());
        for b in bytes {
            match b {
                b'\r' => escaped.extend_from_slice(b"%0D"),
                b'\n' => escaped.extend_from_slice(b"%0A"),
                b => escaped.push(b),
            }
        }
        HeaderValue::from_bytes(&escaped).map_err(|e| mlua::Error::runtime(format!("invalid header value: {e}")))
    };
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::Table(t) => t.clone().sequence_values::<Value>().map(|v| one(&v?)).collect(),
        v => Ok(vec![one(v)?]),
    }
}

pub fn set(r: &mut RequestState, name: &[u8], value: Value, underscores: bool) -> mlua::Result<()> {
    if r.headers_sent && r.phase != Phase::HeaderFilter {
        tracing::error!(
            "{}: attempt to set ngx.header.HEADER after sending out response headers ({})",
            r.site,
            String::from_utf8_lossy(name)
        );
        return Ok(());
    }
    context::check_phase(r, &[Phase::Rewrite, Phase::Access, Phase::Content, Phase::HeaderFilter])?;
    let norm = escape_name(&normalize_name(name, underscores));
    let header = HeaderName::from_bytes(norm.as_bytes())
        .map_err(|_| mlua::Error::runtime(format!("invalid header name {:?}", String::from_utf8_lossy(name))))?;
    let values = header_values(&value)?;
    // Like nginx, Content-Type and Content-Length hold one value.
    let values = if header == http::header::CONTENT_TYPE || header == http::header::CONTENT_LENGTH {
        values.into_iter().last().into_iter().collect()
    } else {
        values
    };
    if header == http::header::CONTENT_TYPE {
        r.no_default_type = values.is_empty();
    }
    r.set_resp_header(header, values);
    Ok(())
}

/// `content-type` → `Content-Type`, as nginx prints header names.
pub fn title_case(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper { c.to_ascii_uppercase() } else { c };
            upper = c == '-';
            out
        })
        .collect()
}
