//! `ngx.req.*`: the request as Lua sees and changes it. `read_body` itself is
//! in `prelude.lua` (it yields); the driver reads the body and stores it here.

use http::{HeaderName, Method};
use mlua::{IntoLuaMulti, Lua, Table, Value};

use super::header::{header_values, lookup_metatable, normalize_name};
use super::phases;
use crate::config::Phase;
use crate::context;
use crate::lua::args::bad_type;
use crate::request::{Body, Exit, RequestState};

/// nginx method ids, as `ngx.HTTP_GET` and friends.
pub const METHODS: &[(&str, i64)] = &[
    ("GET", 0x0002),
    ("HEAD", 0x0004),
    ("POST", 0x0008),
    ("PUT", 0x0010),
    ("DELETE", 0x0020),
    ("MKCOL", 0x0040),
    ("COPY", 0x0080),
    ("MOVE", 0x0100),
    ("OPTIONS", 0x0200),
    ("PROPFIND", 0x0400),
    ("PROPPATCH", 0x0800),
    ("LOCK", 0x1000),
    ("UNLOCK", 0x2000),
    ("PATCH", 0x4000),
    ("TRACE", 0x8000),
];

pub fn register(lua: &Lua, ngx: &Table, raw: &Table, yield_marker: &Table) -> mlua::Result<()> {
    let req: Table = ngx.get("req")?;

    req.set(
        "get_headers",
        lua.create_function(|lua, (max, raw): (Option<i64>, Option<bool>)| {
            let max = max.unwrap_or(100);
            let raw = raw.unwrap_or(false);
            context::with("ngx.req.get_headers", |r| {
                let t = lua.create_table()?;
                for (count, (name, value)) in r.headers.iter().enumerate() {
                    if max > 0 && count as i64 >= max {
                        return Ok((t, Some("truncated")));
                    }
                    let key = if raw {
                        super::header::title_case(name.as_str())
                    } else {
                        name.as_str().to_string()
                    };
                    let v = lua.create_string(value.as_bytes())?;
                    match t.raw_get::<Value>(key.as_str())? {
                        Value::Nil => t.raw_set(key, v)?,
                        Value::Table(list) => list.raw_push(v)?,
                        prev => t.raw_set(key, lua.create_sequence_from([prev, Value::String(v)])?)?,
                    }
                }
                if !raw {
                    t.set_metatable(Some(lookup_metatable(lua)?))?;
                }
                Ok((t, None))
            })
        })?,
    )?;

    req.set(
        "get_uri_args",
        lua.create_function(|lua, max: Option<i64>| {
            let args = context::with("ngx.req.get_uri_args", |r| Ok(r.args.clone()))?;
            let (table, truncated) =
                super::codec::decode_uri_args(lua, args.as_deref().unwrap_or_default(), limit(max))?;
            Ok((table, truncated.then_some("truncated")))
        })?,
    )?;
    req.set(
        "get_post_args",
        lua.create_function(|lua, max: Option<i64>| {
            let body = context::with("ngx.req.get_post_args", |r| match &r.body {
                Body::Read(b) => Ok(Some(b.clone())),
                Body::Discarded => Ok(Some(bytes::Bytes::new())),
                Body::Unread => Ok(None),
            })?;
            match body {
                Some(b) => {
                    let (t, truncated) = super::codec::decode_args_with_truncation(lua, &b, limit(max))?;
                    Ok((Some(t), truncated.then_some("truncated")))
                }
                // nginx's words, though here ngx.req.read_body() is the fix.
                None => Err(mlua::Error::runtime(
                    "no request body found; maybe you should turn on lua_need_request_body?",
                )),
            }
        })?,
    )?;

    req.set(
        "get_method",
        lua.create_function(|_, ()| context::with("ngx.req.get_method", |r| Ok(r.method.to_string())))?,
    )?;
    req.set(
        "set_method",
        lua.create_function(|_, id: i64| {
            let name = METHODS
                .iter()
                .find(|(_, v)| *v == id)
                .map(|(n, _)| *n)
                .ok_or_else(|| mlua::Error::runtime(format!("unsupported HTTP method: {id}")))?;
            context::with("ngx.req.set_method", |r| {
                r.method = Method::from_bytes(name.as_bytes()).map_err(mlua::Error::external)?;
                Ok(())
            })
        })?,
    )?;

    raw.set(
        "set_uri",
        lua.create_function(|_, (uri, jump, binary): (Value, Option<bool>, Option<bool>)| {
            let uri = match uri {
                Value::String(s) => s.as_bytes().to_vec(),
                other => {
                    return Err(mlua::Error::runtime(bad_type(
                        1,
                        "set_uri",
                        "string",
                        other.type_name(),
                    )));
                }
            };
            if uri.is_empty() {
                return Err(mlua::Error::runtime("attempt to use zero-length uri"));
            }
            // Control bytes (TAB aside) could split the request line of a
            // proxied request; only `binary = true` lets them through.
            if binary != Some(true)
                && let Some(&b) = uri.iter().find(|&&b| (b < 0x20 && b != b'\t') || b == 0x7f)
            {
                return Err(mlua::Error::runtime(format!(
                    "unsafe byte \"0x{b:02x}\" in uri \"{}\"",
                    String::from_utf8_lossy(&uri)
                )));
            }
            context::with("ngx.req.set_uri", |r| {
                phases::REQ_SET_URI.check(r)?;
                if jump.unwrap_or(false) {
                    // README: "The jump argument can only be set to true in rewrite_by_lua*".
                    if r.phase != Phase::Rewrite {
                        return Err(context::disabled(r.phase));
                    }
                    r.exit = Some(Exit::Exec {
                        uri,
                        args: r.args.clone(),
                    });
                    return Ok(true);
                }
                r.uri = uri;
                Ok(false)
            })
        })?,
    )?;

    req.set(
        "set_uri_args",
        lua.create_function(|lua, args: Value| {
            let encoded = match args {
                Value::String(s) => escape_controls(&s.as_bytes()),
                Value::Integer(i) => super::fmt_number(i as f64).into_bytes(),
                Value::Number(n) => super::fmt_number(n).into_bytes(),
                Value::Table(t) => super::codec::encode_args(lua, &t)?,
                other => {
                    let what = "string, number, or table";
                    return Err(mlua::Error::runtime(bad_type(
                        1,
                        "set_uri_args",
                        what,
                        other.type_name(),
                    )));
                }
            };
            context::with("ngx.req.set_uri_args", |r| {
                r.args = Some(encoded);
                Ok(())
            })
        })?,
    )?;

    req.set(
        "set_header",
        lua.create_function(|_, (name, value): (mlua::LuaString, Value)| {
            context::with("ngx.req.set_header", |r| {
                set_request_header(r, &name.as_bytes(), &value)
            })
        })?,
    )?;
    req.set(
        "clear_header",
        lua.create_function(|_, name: mlua::LuaString| {
            context::with("ngx.req.clear_header", |r| {
                set_request_header(r, &name.as_bytes(), &Value::Nil)
            })
        })?,
    )?;

    let marker = yield_marker.clone();
    raw.set(
        "read_body",
        lua.create_function(move |_, ()| {
            context::with("ngx.req.read_body", |r| {
                phases::REQ_READ_BODY.check(r)?;
                Ok(match r.body {
                    Body::Unread => Value::Table(marker.clone()),
                    _ => Value::Nil,
                })
            })
        })?,
    )?;
    // `ngx.req.socket(raw)`'s checks; the prelude builds the object and the
    // driver serves its reads (phase/req_socket.rs). The body then belongs
    // to the socket: `read_body` and proxying see none.
    raw.set(
        "req_socket",
        lua.create_function(|lua, raw_mode: Option<bool>| {
            context::with("ngx.req.socket", |r| {
                phases::REQ_SOCKET.check(r)?;
                if raw_mode == Some(true) {
                    // The client's connection is handed over only by a
                    // protocol switch: hyper owns it until it has sent a 101
                    // (what lua-resty-websocket's server does first), so the
                    // raw socket cannot write a response head of its own.
                    if r.raw_socket_taken {
                        return (Value::Nil, "duplicate call").into_lua_multi(lua);
                    }
                    if !r.headers.contains_key(http::header::UPGRADE) {
                        let why = "raw request socket needs a request asking for an Upgrade";
                        return (Value::Nil, why).into_lua_multi(lua);
                    }
                    if r.effective_status() != 101 {
                        let why = "raw request socket needs ngx.status = 101 (Switching Protocols)";
                        return (Value::Nil, why).into_lua_multi(lua);
                    }
                    r.raw_socket_taken = true;
                    r.body = Body::Discarded;
                    return true.into_lua_multi(lua);
                }
                if !matches!(r.body, Body::Unread) {
                    return (Value::Nil, "request body already exists").into_lua_multi(lua);
                }
                let length = r
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
                let chunked = r.headers.contains_key(http::header::TRANSFER_ENCODING);
                if !chunked && length.unwrap_or(0) == 0 {
                    return (Value::Nil, "no body").into_lua_multi(lua);
                }
                r.body = Body::Discarded;
                true.into_lua_multi(lua)
            })
        })?,
    )?;
    req.set(
        "discard_body",
        lua.create_function(|_, ()| {
            context::with("ngx.req.discard_body", |r| {
                if matches!(r.body, Body::Unread) {
                    r.body = Body::Discarded;
                }
                Ok(())
            })
        })?,
    )?;
    req.set(
        "get_body_data",
        lua.create_function(|lua, ()| {
            context::with("ngx.req.get_body_data", |r| match &r.body {
                Body::Read(b) if !b.is_empty() => Ok(Value::String(lua.create_string(b)?)),
                _ => Ok(Value::Nil),
            })
        })?,
    )?;
    req.set("get_body_file", lua.create_function(|_, ()| Ok(Value::Nil))?)?;
    req.set(
        "set_body_data",
        lua.create_function(|_, data: mlua::LuaString| {
            context::with("ngx.req.set_body_data", |r| {
                phases::REQ_SET_BODY_DATA.check(r)?;
                if matches!(r.body, Body::Unread) {
                    return Err(mlua::Error::runtime("request body not read yet"));
                }
                let bytes = bytes::Bytes::copy_from_slice(&data.as_bytes());
                r.headers.insert(http::header::CONTENT_LENGTH, bytes.len().into());
                r.body = Body::Read(bytes);
                Ok(())
            })
        })?,
    )?;
    // init_body/append_body/finish_body build a new body in place of the
    // one read (nginx writes it to the request's buffer, or a temp file when
    // it outgrows the buffer; here memory, bounded by the VM's budget).
    req.set(
        "init_body",
        lua.create_function(|_, _buffer_size: Option<i64>| {
            context::with("ngx.req.init_body", |r| {
                phases::REQ_INIT_BODY.check(r)?;
                if matches!(r.body, Body::Unread) {
                    return Err(mlua::Error::runtime("request body not read yet"));
                }
                r.new_body = Some(bytes::BytesMut::new());
                Ok(())
            })
        })?,
    )?;
    req.set(
        "append_body",
        lua.create_function(|_, data: mlua::LuaString| {
            context::with("ngx.req.append_body", |r| {
                phases::REQ_APPEND_BODY.check(r)?;
                let Some(body) = r.new_body.as_mut() else {
                    return Err(mlua::Error::runtime("request_body not initialized"));
                };
                let data = data.as_bytes();
                crate::lua::budget::charge_bytes(data.len())?;
                body.extend_from_slice(&data);
                Ok(())
            })
        })?,
    )?;
    req.set(
        "finish_body",
        lua.create_function(|_, ()| {
            context::with("ngx.req.finish_body", |r| {
                phases::REQ_FINISH_BODY.check(r)?;
                // The buffer stays: nginx accepts appends (and finish) again.
                let Some(body) = r.new_body.as_ref() else {
                    return Err(mlua::Error::runtime("request_body not initialized"));
                };
                let body = bytes::Bytes::copy_from_slice(body);
                r.headers.insert(http::header::CONTENT_LENGTH, body.len().into());
                r.body = Body::Read(body);
                Ok(())
            })
        })?,
    )?;
    req.set(
        "http_version",
        lua.create_function(|_, ()| {
            context::with("ngx.req.http_version", |r| {
                Ok(match r.version {
                    http::Version::HTTP_09 => 0.9,
                    http::Version::HTTP_10 => 1.0,
                    http::Version::HTTP_2 => 2.0,
                    http::Version::HTTP_3 => 3.0,
                    _ => 1.1,
                })
            })
        })?,
    )?;
    req.set(
        "raw_header",
        lua.create_function(|lua, no_request_line: Option<bool>| {
            context::with("ngx.req.raw_header", |r| {
                lua.create_string(raw_header(r, no_request_line.unwrap_or(false)))
            })
        })?,
    )?;
    req.set(
        "start_time",
        lua.create_function(|_, ()| context::with("ngx.req.start_time", |r| Ok(r.start_time)))?,
    )?;
    req.set(
        "is_internal",
        lua.create_function(|_, ()| context::with("ngx.req.is_internal", |r| Ok(r.internal)))?,
    )?;
    Ok(())
}

/// The `max_args` argument: default 100, 0 (or less) for no limit.
fn limit(max: Option<i64>) -> usize {
    match max.unwrap_or(super::codec::DEFAULT_MAX_ARGS as i64) {
        n if n <= 0 => 0,
        n => n as usize,
    }
}

/// `ngx.req.set_header` / `clear_header`: `_` in names becomes `-`, as in lua-nginx-module.
fn set_request_header(r: &mut RequestState, name: &[u8], value: &Value) -> mlua::Result<()> {
    let norm = normalize_name(name, true);
    let header = HeaderName::from_bytes(norm.as_bytes())
        .map_err(|_| mlua::Error::runtime(format!("invalid header name {:?}", String::from_utf8_lossy(name))))?;
    let values = header_values(value)?;
    r.headers.remove(&header);
    for v in values {
        r.headers.append(header.clone(), v);
    }
    Ok(())
}

/// The request head as the client sent it (reconstructed: hyper does not keep
/// the raw bytes; names are title-cased).
fn raw_header(r: &RequestState, no_request_line: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if !no_request_line {
        out.extend_from_slice(r.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(&r.request_uri);
        out.extend_from_slice(match r.version {
            http::Version::HTTP_10 => b" HTTP/1.0\r\n",
            _ => b" HTTP/1.1\r\n",
        });
    }
    for (name, value) in &r.headers {
        out.extend_from_slice(super::header::title_case(name.as_str()).as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Query arguments given as a string, with control bytes percent-encoded
/// (`a\rb` is `a%0Db`, as lua-nginx-module 0.10.23 sends it): a CR or LF
/// must never reach an upstream's request line. Everything else, UTF-8
/// included, is kept as given.
fn escape_controls(args: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(args.len());
    for &b in args {
        if b < 0x20 || b == 0x7f {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn string_args_keep_everything_but_control_bytes() {
        assert_eq!(super::escape_controls(b"a\rb\nc\0d\x7f"), b"a%0Db%0Ac%00d%7F");
        assert_eq!(
            super::escape_controls("lang=中文&x=%20 y".as_bytes()),
            "lang=中文&x=%20 y".as_bytes()
        );
    }
}
