//! `ngx.say`, `ngx.print`, `ngx.flush`, `ngx.eof`, `ngx.exit`, `ngx.exec`,
//! `ngx.redirect` and `ngx.status`: what a handler sends.
//!
//! Output is collected in the request (`RequestState::output`); the driver runs
//! the header and body filters over it and hands it to hyper. The first output
//! marks the headers sent, as in nginx, so later header changes fail the same way.
//! The functions that end or suspend the handler return `true`/`YIELD` to their
//! Lua wrappers in `prelude.lua`, which yield to the driver.

use bytes::{BufMut, Bytes, BytesMut};
use mlua::{Lua, Table, Value};

use super::fmt_number;
use super::phases;
use crate::config::Phase;
use crate::context;
use crate::lua::args::{bad_argument, bad_argument_bare, bad_type};
use crate::request::{Body, Exit, RequestState};

/// Output buffered past this is flushed at once where the handler can yield
/// (the prelude's `ngx.say`/`ngx.print` do it), as nginx sends output as it is
/// produced; where it cannot, the buffer may grow to the VM's memory limit.
const AUTO_FLUSH: usize = 1 << 20;

pub fn register(lua: &Lua, ngx: &Table, raw: &Table, yield_marker: &Table) -> mlua::Result<()> {
    let marker = yield_marker.clone();
    raw.set(
        "say",
        lua.create_function(move |_, args: mlua::MultiValue| emit("say", args, true, &marker))?,
    )?;
    let marker = yield_marker.clone();
    raw.set(
        "print",
        lua.create_function(move |_, args: mlua::MultiValue| emit("print", args, false, &marker))?,
    )?;

    let marker = yield_marker.clone();
    raw.set(
        "flush",
        lua.create_function(move |_, _wait: Value| {
            context::with("ngx.flush", |r| {
                phases::FLUSH.check(r)?;
                if r.eof {
                    return Ok((Value::Nil, Some("seen eof")));
                }
                Ok((Value::Table(marker.clone()), None))
            })
        })?,
    )?;
    let marker = yield_marker.clone();
    raw.set(
        "eof",
        lua.create_function(move |_, ()| {
            context::with("ngx.eof", |r| {
                phases::EOF.check(r)?;
                if r.eof {
                    return Ok((Value::Nil, Some("seen eof")));
                }
                Ok((Value::Table(marker.clone()), None))
            })
        })?,
    )?;
    ngx.set(
        "send_headers",
        lua.create_function(|_, ()| {
            let req = context::current("ngx.send_headers")?;
            // The phase first: a filter or log handler runs after the headers
            // went out, and nginx refuses the call there rather than ignore it.
            phases::SEND_HEADERS.check(&req.borrow())?;
            if req.borrow().headers_sent {
                return Ok(None);
            }
            crate::response::head::send_header(&req);
            Ok(Some(1))
        })?,
    )?;
    ngx.set("arg", filter_arg(lua)?)?;
    raw.set("exit", lua.create_function(|_, status: Value| exit(status))?)?;
    raw.set(
        "exec",
        lua.create_function(|lua, (uri, args): (Value, Value)| exec(lua, uri, args))?,
    )?;
    raw.set(
        "redirect",
        lua.create_function(|_, (uri, status): (Value, Option<i64>)| redirect(uri, status))?,
    )?;
    Ok(())
}

/// How deep `ngx.print` follows nested tables: a cycle or a hostile nesting
/// fails its call instead of the worker's stack.
const MAX_TABLE_DEPTH: usize = 100;

/// Appends the printable form of each argument, as `ngx.print` does: strings,
/// numbers, booleans, nil, `ngx.null` and (nested) array tables of those.
pub fn append_value(out: &mut BytesMut, v: &Value, api: &str, arg: usize) -> mlua::Result<()> {
    append_nested(out, v, api, arg, 0)
}

fn append_nested(out: &mut BytesMut, v: &Value, api: &str, arg: usize, depth: usize) -> mlua::Result<()> {
    match v {
        Value::String(s) => out.put_slice(&s.as_bytes()),
        Value::Number(n) => out.put_slice(fmt_number(*n).as_bytes()),
        Value::Integer(i) => out.put_slice(fmt_number(*i as f64).as_bytes()),
        Value::Boolean(b) => out.put_slice(if *b { b"true" } else { b"false" }),
        Value::Nil => out.put_slice(b"nil"),
        Value::LightUserData(p) if p.0.is_null() => out.put_slice(b"null"),
        Value::Table(t) => {
            if depth >= MAX_TABLE_DEPTH {
                let why = format!("table nested deeper than {MAX_TABLE_DEPTH} levels, or cyclic");
                return Err(mlua::Error::runtime(bad_argument(arg, api, &why)));
            }
            // As ngx_http_lua_calc_strlen_in_table: every key a positive
            // integer, elements 1..=max in order, a hole printing as "nil".
            let mut max = 0usize;
            for pair in t.pairs::<Value, Value>() {
                let (key, _) = pair?;
                let index = match key {
                    Value::Integer(i) => usize::try_from(i).ok(),
                    Value::Number(n) if n.fract() == 0.0 && n >= 1.0 => Some(n as usize),
                    _ => None,
                };
                match index {
                    Some(i) if i >= 1 => max = max.max(i),
                    _ => return Err(mlua::Error::runtime(bad_argument(arg, api, "non-array table found"))),
                }
            }
            // A hostile `{[1e9] = 1}` would print a billion "nil"s first.
            if max > crate::lua::budget::max_string_len() {
                return Err(mlua::Error::runtime("not enough memory"));
            }
            for i in 1..=max {
                let item: Value = t.raw_get(i)?;
                match item {
                    Value::Table(_)
                    | Value::String(_)
                    | Value::Number(_)
                    | Value::Integer(_)
                    | Value::Boolean(_)
                    | Value::Nil => append_nested(out, &item, api, arg, depth + 1)?,
                    Value::LightUserData(p) if p.0.is_null() => out.put_slice(b"null"),
                    other => {
                        let why = format!("bad data type {} found", other.type_name());
                        return Err(mlua::Error::runtime(bad_argument(arg, api, &why)));
                    }
                }
            }
        }
        other => {
            let what = "string, number, boolean, nil, ngx.null, or array table";
            return Err(mlua::Error::runtime(bad_type(arg, api, what, other.type_name())));
        }
    }
    Ok(())
}

/// `ngx.say`/`ngx.print`: `1`, or `nil, err`, or the yield marker when the
/// buffered output should be flushed now.
fn emit(
    api: &str,
    args: mlua::MultiValue,
    newline: bool,
    marker: &Table,
) -> mlua::Result<(Value, Option<&'static str>)> {
    let req = context::current(api)?;
    {
        let r = req.borrow();
        if newline { &phases::SAY } else { &phases::PRINT }.check(&r)?;
        if r.eof {
            return Ok((Value::Nil, Some("seen eof")));
        }
    }
    let flush = {
        let mut r = req.borrow_mut();
        let output = &mut r.output;
        let mark = output.len();
        let buf = output.buf();
        for (i, v) in args.iter().enumerate() {
            if let Err(e) = append_value(buf, v, api, i + 1) {
                // Bad arguments print nothing and send nothing, as in nginx.
                buf.truncate(mark);
                return Err(e);
            }
        }
        if newline {
            buf.put_u8(b'\n');
        }
        crate::lua::budget::charge_bytes(buf.len() - mark)?;
        if buf.len() > crate::lua::budget::max_string_len() {
            let held = buf.len();
            buf.truncate(mark);
            return Err(mlua::Error::runtime(format!(
                "not enough memory: the response would hold {held} bytes not yet sent"
            )));
        }
        output.end_chunk();
        output.len() > AUTO_FLUSH
    };
    crate::response::head::send_header(&req);
    if flush {
        return Ok((Value::Table(marker.clone()), None));
    }
    Ok((Value::Integer(1), None))
}

/// `ngx.arg` in body_filter: `[1]` is the chunk, `[2]` whether it is the last.
fn filter_arg(lua: &Lua) -> mlua::Result<Table> {
    let arg = lua.create_table()?;
    let mt = lua.create_table()?;
    mt.set(
        "__index",
        lua.create_function(|lua, (_, i): (Value, i64)| {
            context::with("ngx.arg", |r| match i {
                _ if !phases::ARG.allows(r.phase) => Err(context::disabled(r.phase)),
                1 => Ok(Value::String(lua.create_string(&r.filter_arg.0)?)),
                2 => Ok(Value::Boolean(r.filter_arg.1)),
                _ => Ok(Value::Nil),
            })
        })?,
    )?;
    mt.set(
        "__newindex",
        lua.create_function(|_, (_, i, v): (Value, i64, Value)| {
            context::with("ngx.arg", |r| {
                phases::ARG.check(r)?;
                match i {
                    1 => {
                        let mut buf = BytesMut::new();
                        if !matches!(v, Value::Nil) {
                            append_value(&mut buf, &v, "ngx.arg", 1)?;
                        }
                        r.filter_arg.0 = buf.freeze();
                    }
                    2 => r.filter_arg.1 = !matches!(v, Value::Nil | Value::Boolean(false)),
                    _ => return Err(mlua::Error::runtime("bad index to ngx.arg")),
                }
                Ok(())
            })
        })?,
    )?;
    mt.set("__metatable", false)?;
    arg.set_metatable(Some(mt))?;
    Ok(arg)
}

/// Records `ngx.exit(status)`; `true` means the caller must yield.
fn exit(status: Value) -> mlua::Result<bool> {
    let status = match status {
        Value::Integer(i) => i,
        Value::Number(n) => n as i64,
        Value::String(s) => s
            .to_str()?
            .trim()
            .parse()
            .map_err(|_| mlua::Error::runtime(bad_argument_bare(1, "exit")))?,
        other => {
            return Err(mlua::Error::runtime(bad_type(1, "exit", "number", other.type_name())));
        }
    };
    context::with("ngx.exit", |r| {
        match r.phase {
            Phase::Rewrite | Phase::Access | Phase::Content => {}
            Phase::HeaderFilter => {
                // Allowed to change the status before headers go out; ends the filter.
                if status >= 200 {
                    r.status = status as u16;
                }
                r.exit = Some(Exit::Status(status));
                return Ok(false);
            }
            _ => phases::EXIT.check(r)?,
        }
        // ngx_http_lua_ffi_exit: once the headers are out an error status
        // cannot be sent; it is logged and the request ends as a 200.
        let status = if r.headers_sent && status >= 300 && ![408, 444, 499].contains(&status) {
            if status != i64::from(r.effective_status()) {
                tracing::error!(
                    "{}: attempt to set status {status} via ngx.exit after sending out the response status {}",
                    r.site,
                    r.effective_status()
                );
            }
            200
        } else {
            status
        };
        r.exit = Some(Exit::Status(status));
        Ok(true)
    })
}

fn exec(lua: &Lua, uri: Value, args: Value) -> mlua::Result<bool> {
    let uri = match uri {
        Value::String(s) => s.as_bytes().to_vec(),
        other => {
            return Err(mlua::Error::runtime(bad_type(1, "exec", "string", other.type_name())));
        }
    };
    let mut args = match args {
        Value::Nil => None,
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Table(t) => Some(super::codec::encode_args(lua, &t)?),
        other => {
            return Err(mlua::Error::runtime(bad_type(
                2,
                "exec",
                "string or table",
                other.type_name(),
            )));
        }
    };
    if uri.is_empty() {
        return Err(mlua::Error::runtime("The uri argument is empty"));
    }
    let (path, query) = match uri.iter().position(|&b| b == b'?') {
        Some(q) => (uri[..q].to_vec(), Some(uri[q + 1..].to_vec())),
        None => (uri, None),
    };
    if args.is_none() {
        args = query;
    }
    context::with("ngx.exec", |r| {
        phases::EXEC.check(r)?;
        if r.headers_sent {
            return Err(mlua::Error::runtime(
                "attempt to call ngx.exec after sending out response headers",
            ));
        }
        r.exit = Some(Exit::Exec { uri: path, args });
        Ok(true)
    })
}

fn redirect(uri: Value, status: Option<i64>) -> mlua::Result<bool> {
    // luaL_checklstring: a number is its string form.
    let uri = match uri {
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Integer(i) => fmt_number(i as f64).into_bytes(),
        Value::Number(n) => fmt_number(n).into_bytes(),
        other => {
            return Err(mlua::Error::runtime(bad_type(
                1,
                "redirect",
                "string",
                other.type_name(),
            )));
        }
    };
    let status = status.unwrap_or(302);
    if ![301, 302, 303, 307, 308].contains(&status) {
        return Err(mlua::Error::runtime(format!(
            "only ngx.HTTP_MOVED_TEMPORARILY, ngx.HTTP_MOVED_PERMANENTLY, ngx.HTTP_PERMANENT_REDIRECT, ngx.HTTP_SEE_OTHER, and ngx.HTTP_TEMPORARY_REDIRECT are allowed, but got {status}"
        )));
    }
    context::with("ngx.redirect", |r| {
        phases::REDIRECT.check(r)?;
        if r.headers_sent {
            return Err(mlua::Error::runtime(
                "attempt to call ngx.redirect after sending out the headers",
            ));
        }
        let value = http::HeaderValue::from_bytes(&uri)
            .map_err(|_| mlua::Error::runtime(bad_argument(1, "redirect", "invalid uri")))?;
        r.resp_headers.insert(http::header::LOCATION, value);
        r.exit = Some(Exit::Status(status));
        Ok(true)
    })
}

/// `ngx.status` read: 0 until a handler sets it, as nginx's
/// `r->headers_out.status`; once the headers are out, the status they carried
/// (200 when none was set).
pub fn get_status(r: &RequestState) -> i64 {
    if r.headers_sent {
        r.effective_status() as i64
    } else {
        r.status as i64
    }
}

/// `ngx.status = n`.
pub fn set_status(r: &mut RequestState, v: Value) -> mlua::Result<()> {
    if r.headers_sent {
        tracing::error!("attempt to set ngx.status after sending out response headers");
        return Ok(());
    }
    let n = match v {
        Value::Integer(i) => i,
        Value::Number(n) => n as i64,
        Value::String(s) => s.to_str()?.trim().parse().unwrap_or(-1),
        _ => -1,
    };
    if !(100..=999).contains(&n) {
        return Err(mlua::Error::runtime("invalid HTTP status code"));
    }
    r.status = n as u16;
    Ok(())
}

/// The request body as read so far, for `ngx.req.get_body_data`.
pub fn body_bytes(r: &RequestState) -> Option<Bytes> {
    match &r.body {
        Body::Read(b) => Some(b.clone()),
        _ => None,
    }
}
