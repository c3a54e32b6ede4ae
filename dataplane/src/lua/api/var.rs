//! `ngx.var`: nginx variables. Reads resolve the location's `set` variables
//! first, then nginx's built-in request variables; writes go to `set`
//! variables and to the few built-ins nginx lets Lua change (`args`, `limit_rate`).

use mlua::{Lua, Table, Value};

use crate::context;
use crate::request::RequestState;

pub fn register(lua: &Lua, ngx: &Table) -> mlua::Result<()> {
    let var = lua.create_table()?;
    let mt = lua.create_table()?;
    mt.set(
        "__index",
        lua.create_function(|lua, (_, name): (Value, Value)| {
            let name = match name {
                Value::String(s) => s.to_str()?.to_string(),
                Value::Integer(i) => return capture(lua, i),
                Value::Number(n) => return capture(lua, n as i64),
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "bad variable name type: {}",
                        other.type_name()
                    )));
                }
            };
            context::with("ngx.var", |r| match lookup(r, &name) {
                Some(bytes) => Ok(Value::String(lua.create_string(bytes)?)),
                None => Ok(Value::Nil),
            })
        })?,
    )?;
    let tostring: mlua::Function = lua.globals().raw_get("tostring")?;
    mt.set(
        "__newindex",
        lua.create_function(move |_, (_, name, value): (Value, mlua::LuaString, Value)| {
            let name = name.to_str()?.to_string();
            let bytes = match value {
                Value::Nil => None,
                Value::String(s) => Some(s.as_bytes().to_vec()),
                Value::Integer(i) => Some(super::fmt_number(i as f64).into_bytes()),
                Value::Number(n) => Some(super::fmt_number(n).into_bytes()),
                // resty.core's var_set: any other value is stored as `tostring(value)`.
                other => Some(tostring.call::<mlua::LuaString>(other)?.as_bytes().to_vec()),
            };
            context::with("ngx.var", |r| assign(r, &name, bytes))
        })?,
    )?;
    mt.set("__metatable", false)?;
    var.set_metatable(Some(mt))?;
    ngx.set("var", var)?;
    Ok(())
}

fn capture(lua: &Lua, n: i64) -> mlua::Result<Value> {
    context::with("ngx.var", |r| {
        // nginx has no $0.
        let n = usize::try_from(n).ok().filter(|&n| n > 0);
        match n.and_then(|n| r.captures.get(n)).and_then(|c| c.as_deref()) {
            Some(c) => Ok(Value::String(lua.create_string(c)?)),
            None => Ok(Value::Nil),
        }
    })
}

fn assign(r: &mut RequestState, name: &str, value: Option<Vec<u8>>) -> mlua::Result<()> {
    if r.set_var(name, value.clone()) {
        return Ok(());
    }
    match name {
        "args" => {
            r.args = value;
            Ok(())
        }
        "limit_rate" => Ok(()),
        _ if is_builtin(name) => Err(mlua::Error::runtime(format!("variable \"{name}\" not changeable"))),
        _ => Err(mlua::Error::runtime(format!(
            "variable \"{name}\" not found for writing; maybe it is a built-in variable that is not changeable or you forgot to use \"set ${name} '';\" in the config file to define it first"
        ))),
    }
}

/// The built-in variables nginx knows by name. The prefixed ones (`arg_*`,
/// `http_*`, `cookie_*`) are not in nginx's variables hash, so writing them
/// fails as "not found for writing", not "not changeable".
fn is_builtin(name: &str) -> bool {
    matches!(
        name,
        "uri" | "document_uri" | "request_uri" | "request_method" | "host" | "remote_addr" | "scheme" | "query_string"
    )
}

/// The value of variable `name` for this request, if it has one.
pub fn lookup(r: &RequestState, name: &str) -> Option<Vec<u8>> {
    if let Some(v) = r.var(name) {
        return v.map(<[u8]>::to_vec);
    }
    let lower;
    let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        lower = name.to_ascii_lowercase();
        lower.as_str()
    } else {
        name
    };
    if let Some(arg) = name.strip_prefix("arg_") {
        return arg_value(r.args.as_deref()?, arg.as_bytes());
    }
    if let Some(h) = name.strip_prefix("http_") {
        let header = h.replace('_', "-");
        let mut values = r.headers.get_all(header.as_str()).iter();
        let first = values.next()?.as_bytes().to_vec();
        // nginx joins repeated headers it knows as lists; cookies with "; ".
        let sep: &[u8] = if header == "cookie" { b"; " } else { b", " };
        let mut joined = first;
        for v in values {
            joined.extend_from_slice(sep);
            joined.extend_from_slice(v.as_bytes());
        }
        return Some(joined);
    }
    if let Some(h) = name.strip_prefix("sent_http_") {
        let header = h.replace('_', "-");
        let values: Vec<&[u8]> = r
            .resp_headers
            .get_all(header.as_str())
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        return (!values.is_empty()).then(|| values.join(&b", "[..]));
    }
    if let Some(c) = name.strip_prefix("cookie_") {
        return cookie_value(r, c.as_bytes());
    }
    let s = |s: &str| Some(s.as_bytes().to_vec());
    match name {
        "uri" | "document_uri" => Some(r.uri.clone()),
        "args" | "query_string" => r.args.clone(),
        "is_args" => Some(if r.args.is_some() { b"?".to_vec() } else { Vec::new() }),
        "request_uri" => Some(r.request_uri.clone()),
        "request_method" => s(r.method.as_str()),
        "request" => {
            let mut line = r.method.as_str().as_bytes().to_vec();
            line.push(b' ');
            line.extend_from_slice(&r.request_uri);
            line.push(b' ');
            line.extend_from_slice(protocol(r).as_bytes());
            Some(line)
        }
        "server_protocol" => s(protocol(r)),
        "host" => Some(r.host()),
        "hostname" => s(&hostname()),
        "server_name" => s("localhost"),
        "remote_addr" => s(&r.remote_addr.ip().to_string()),
        "binary_remote_addr" => Some(match r.remote_addr.ip() {
            std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
            std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
        }),
        "remote_port" => s(&r.remote_addr.port().to_string()),
        "server_addr" => s(&r.server_addr.ip().to_string()),
        "server_port" => s(&r.server_addr.port().to_string()),
        "scheme" => s(r.scheme),
        "https" => Some(if r.scheme == "https" {
            b"on".to_vec()
        } else {
            Vec::new()
        }),
        "content_length" => r
            .headers
            .get(http::header::CONTENT_LENGTH)
            .map(|v| v.as_bytes().to_vec()),
        "content_type" => r.headers.get(http::header::CONTENT_TYPE).map(|v| v.as_bytes().to_vec()),
        "request_body" => super::output::body_bytes(r).map(|b| b.to_vec()),
        "status" => s(&r.effective_status().to_string()),
        "pid" => s(&std::process::id().to_string()),
        "msec" => s(&format!("{:.3}", super::time::cached_now())),
        "request_time" => s(&format!("{:.3}", (super::time::cached_now() - r.start_time).max(0.0))),
        "nginx_version" => s(super::misc::NGINX_VERSION),
        "time_iso8601" | "time_local" => s(&httpdate::fmt_http_date(std::time::SystemTime::now())),
        "upstream_addr" => upstream(r, |t| t.addr.to_string()),
        "upstream_status" => upstream(r, |t| t.status.map_or("-".into(), |s| s.to_string())),
        "upstream_connect_time" => upstream(r, |t| seconds(t.connect)),
        "upstream_header_time" => upstream(r, |t| seconds(t.header)),
        "upstream_response_time" => upstream(r, |t| seconds(t.response)),
        _ => None,
    }
}

/// An `$upstream_*` variable: one value per proxy try, joined with ", " as
/// nginx does; unset when the request was not proxied.
fn upstream(r: &RequestState, value: impl Fn(&crate::proxy::UpstreamTry) -> String) -> Option<Vec<u8>> {
    if r.upstream_tries.is_empty() {
        return None;
    }
    Some(
        r.upstream_tries
            .iter()
            .map(value)
            .collect::<Vec<_>>()
            .join(", ")
            .into_bytes(),
    )
}

/// Seconds with millisecond resolution, or "-" for a time never reached.
fn seconds(d: Option<std::time::Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.3}", d.as_secs_f64()))
}

fn protocol(r: &RequestState) -> &'static str {
    match r.version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The first `name=value` of the query string, raw (not unescaped), as `$arg_name`.
fn arg_value(args: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    for pair in args.split(|&b| b == b'&') {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        if k.eq_ignore_ascii_case(name) {
            return Some(v.to_vec());
        }
    }
    None
}

fn cookie_value(r: &RequestState, name: &[u8]) -> Option<Vec<u8>> {
    for header in r.headers.get_all(http::header::COOKIE) {
        for pair in header.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii_start();
            if let Some(i) = pair.iter().position(|&b| b == b'=')
                && pair[..i].eq_ignore_ascii_case(name)
            {
                return Some(pair[i + 1..].to_vec());
            }
        }
    }
    None
}
