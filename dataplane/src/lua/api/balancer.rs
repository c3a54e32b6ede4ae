//! `ngx.balancer` (lua-resty-core's `require "ngx.balancer"`), for a
//! location's `balancer` handler (`balancer_by_lua`): it runs before each
//! proxy try and picks the peer. Only callable there, as in OpenResty.

use mlua::{Lua, Table, Value};

use crate::config::Phase;
use crate::context;
use crate::proxy::BalancerCall;
use crate::proxy::upstream::Timeouts;

fn with_call<R>(api: &str, f: impl FnOnce(&mut BalancerCall) -> mlua::Result<R>) -> mlua::Result<R> {
    context::with(api, |r| {
        context::check_phase(r, &[Phase::Balancer])?;
        match r.balancer.as_mut() {
            Some(call) => f(call),
            None => Err(mlua::Error::runtime(format!("{api}: no upstream try in progress"))),
        }
    })
}

/// Seconds as `set_timeouts` takes them: positive, or nil for "unchanged".
fn timeout(v: Value, which: &str, default: std::time::Duration) -> mlua::Result<std::time::Duration> {
    let secs = match v {
        Value::Nil => return Ok(default),
        Value::Integer(i) => i as f64,
        Value::Number(n) => n,
        _ => return Err(mlua::Error::runtime(format!("bad {which} timeout"))),
    };
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(mlua::Error::runtime(format!("bad {which} timeout")));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

pub fn register(lua: &Lua, ngx: &Table) -> mlua::Result<()> {
    let b = lua.create_table()?;
    b.set(
        "set_current_peer",
        lua.create_function(|lua, (host, port): (mlua::LuaString, Option<i64>)| {
            let fail = |msg: &str| Ok((Value::Nil, Value::String(lua.create_string(msg)?)));
            let host = host.to_str()?.to_string();
            // "host:port" in one argument, as lua-resty-core accepts.
            let (host, port) = match (port, crate::proxy::upstream::split_host_port(&host, None)) {
                (Some(p), _) => (host.trim_start_matches('[').trim_end_matches(']').to_string(), p),
                (None, Some((h, p))) => (h, i64::from(p)),
                (None, None) => return fail("no port in the peer address"),
            };
            let Ok(port) = u16::try_from(port) else {
                return fail("bad port number");
            };
            if port == 0 || host.is_empty() {
                return fail("bad peer address");
            }
            with_call("ngx.balancer.set_current_peer", |call| {
                call.peer = Some((host, port));
                Ok((Value::Boolean(true), Value::Nil))
            })
        })?,
    )?;
    b.set(
        "set_more_tries",
        lua.create_function(|_, count: i64| {
            with_call("ngx.balancer.set_more_tries", |call| {
                // nginx caps the total at its try limit; 8 more is plenty.
                call.more_tries = u32::try_from(count.clamp(0, 8)).unwrap_or(0);
                Ok(true)
            })
        })?,
    )?;
    b.set(
        "get_last_failure",
        lua.create_function(|lua, ()| {
            with_call("ngx.balancer.get_last_failure", |call| match &call.last_failure {
                None => Ok((Value::Nil, Value::Nil)),
                Some((state, status)) => Ok((
                    Value::String(lua.create_string(state)?),
                    Value::Integer(i64::from(*status)),
                )),
            })
        })?,
    )?;
    b.set(
        "set_timeouts",
        lua.create_function(|_, (connect, send, read): (Value, Value, Value)| {
            with_call("ngx.balancer.set_timeouts", |call| {
                // The upstream's, as the driver put them in.
                let Some(base) = call.timeouts else {
                    return Err(mlua::Error::runtime(
                        "ngx.balancer.set_timeouts: no upstream try in progress",
                    ));
                };
                call.timeouts = Some(Timeouts {
                    connect: timeout(connect, "connect", base.connect)?,
                    send: timeout(send, "send", base.send)?,
                    read: timeout(read, "read", base.read)?,
                });
                Ok(true)
            })
        })?,
    )?;
    ngx.set("balancer", b)?;
    Ok(())
}
