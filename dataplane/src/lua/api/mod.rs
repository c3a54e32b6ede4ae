//! The `ngx` API, one module per area as in lua-nginx-module. `build` creates
//! the per-VM base `ngx` table; each route gets its own copy (see `vm`).

pub mod balancer;
pub mod codec;
pub mod durable;
pub mod header;
pub mod log;
pub mod misc;
pub mod output;
pub mod pending;
pub mod phases;
pub mod re;
pub mod req;
pub mod shared;
pub mod socket;
pub mod time;
pub mod timer;
pub mod var;

use std::rc::Rc;

use mlua::{Lua, Table};

use crate::config::Phase;
use crate::lua::args::bad_argument;

/// Yield ops from `prelude.lua` to the request driver.
pub const OP_EXIT: i64 = 1;
pub const OP_SLEEP: i64 = 2;
pub const OP_FLUSH: i64 = 3;
pub const OP_EOF: i64 = 4;
pub const OP_READ_BODY: i64 = 5;
pub const OP_CAPTURE: i64 = 6;
/// Wait for a durable commit (`durable::wait`): `{sync = true}` writes and
/// `moongate.durable.sync()`.
pub const OP_DURABLE_SYNC: i64 = 7;
/// Await the operation an API function parked (`pending`): cosocket I/O.
pub const OP_AWAIT: i64 = 8;
/// Light threads (`ngx.thread.spawn`, `wait`, `kill`).
pub const OP_SPAWN: i64 = 9;
pub const OP_WAIT: i64 = 10;
pub const OP_KILL: i64 = 11;
/// A read of `ngx.req.socket()` (phase/req_socket.rs).
pub const OP_REQ_SOCKET: i64 = 12;

/// Builds the base `ngx` table and the private `raw` table of primitives the
/// Lua prelude wraps. `yield_marker` is the sentinel the driver recognises;
/// `timers` is the VM's worker's (`ngx.timer` keeps it).
pub fn build(
    lua: &Lua,
    yield_marker: &Table,
    worker_id: usize,
    worker_count: usize,
    timers: &Rc<timer::Timers>,
    sockets: &Rc<socket::Sockets>,
) -> mlua::Result<(Table, Table)> {
    let ngx = lua.create_table()?;
    let raw = lua.create_table()?;
    ngx.set("req", lua.create_table()?)?;
    ngx.set("resp", lua.create_table()?)?;
    raw.set("YIELD", yield_marker)?;
    raw.set(
        "errmsg",
        lua.create_function(|lua, v: mlua::Value| match v {
            mlua::Value::Error(e) => Ok(mlua::Value::String(lua.create_string(crate::lua::error_message(&e))?)),
            v => Ok(v),
        })?,
    )?;
    raw.set("OP_EXIT", OP_EXIT)?;
    raw.set("OP_SLEEP", OP_SLEEP)?;
    raw.set("OP_FLUSH", OP_FLUSH)?;
    raw.set("OP_EOF", OP_EOF)?;
    raw.set("OP_READ_BODY", OP_READ_BODY)?;
    raw.set("OP_CAPTURE", OP_CAPTURE)?;
    raw.set("OP_AWAIT", OP_AWAIT)?;
    raw.set("OP_SPAWN", OP_SPAWN)?;
    raw.set("OP_WAIT", OP_WAIT)?;
    raw.set("OP_KILL", OP_KILL)?;
    raw.set("OP_REQ_SOCKET", OP_REQ_SOCKET)?;
    raw.set(
        "drop_parked",
        lua.create_function(|_, ()| {
            drop(pending::take());
            Ok(())
        })?,
    )?;
    raw.set(
        "check_yieldable",
        lua.create_function(|_, (api, seconds): (String, mlua::Value)| {
            let seconds = match seconds {
                mlua::Value::Integer(i) => i as f64,
                mlua::Value::Number(n) => n,
                mlua::Value::String(s) => s.to_str()?.trim().parse().unwrap_or(f64::NAN),
                _ => f64::NAN,
            };
            if seconds.is_nan() || seconds < 0.0 {
                return Err(mlua::Error::runtime("invalid sleep duration"));
            }
            check_may_yield(&api)
        })?,
    )?;
    durable::register(lua, yield_marker)?;

    sandbox_primitives(lua, &raw)?;
    log::register(lua, &ngx)?;
    misc::register(lua, &ngx, worker_id, worker_count)?;
    output::register(lua, &ngx, &raw, yield_marker)?;
    var::register(lua, &ngx)?;
    header::register(lua, &ngx)?;
    req::register(lua, &ngx, &raw, yield_marker)?;
    codec::register(lua, &ngx)?;
    time::register(lua, &ngx)?;
    re::register(lua, &ngx)?;
    timer::register(lua, &ngx, yield_marker, timers)?;
    balancer::register(lua, &ngx)?;
    socket::register(lua, &raw, sockets, yield_marker)?;
    Ok((ngx, raw))
}

/// What `sandbox.lua` and `prelude.lua` build the route environment from.
fn sandbox_primitives(lua: &Lua, raw: &Table) -> mlua::Result<()> {
    use crate::lua::budget;
    raw.set("execution", lua.create_function(|_, ()| Ok(budget::execution()))?)?;
    raw.set("aborted", lua.create_function(|_, ()| Ok(budget::aborted()))?)?;
    raw.set(
        "preempted",
        lua.create_function(|_, keep: bool| Ok(budget::preempted(keep)))?,
    )?;
    raw.set(
        "charge",
        lua.create_function(|_, bytes: f64| budget::charge_bytes(bytes.max(0.0) as usize))?,
    )?;
    raw.set(
        "charge_n",
        lua.create_function(|_, units: f64| budget::charge(units.max(0.0) as u64))?,
    )?;
    raw.set(
        "gc",
        lua.create_function(|lua, (opt, _arg): (String, Option<f64>)| {
            let started = budget::CpuStart::now();
            let result = match opt.as_str() {
                "count" => return Ok(mlua::Value::Number(crate::lua::memory::used(lua) as f64 / 1024.0)),
                "step" => mlua::Value::Boolean(lua.gc_step()?),
                _ => {
                    lua.gc_collect()?;
                    mlua::Value::Integer(0)
                }
            };
            budget::charge_cpu_since(started)?;
            Ok(result)
        })?,
    )?;
    raw.set("random", lua.create_function(|lua, ()| random_functions(lua))?)?;
    Ok(())
}

/// `math.random` and `math.randomseed` over a PRNG of their own (splitmix64,
/// seeded from the OS), so that one route seeding or drawing never changes
/// what another draws. Arguments and errors are Lua 5.1's.
fn random_functions(lua: &Lua) -> mlua::Result<(mlua::Function, mlua::Function)> {
    use std::cell::Cell;
    use std::rc::Rc;
    let state = Rc::new(Cell::new(rand::random::<u64>()));
    let next = {
        let state = state.clone();
        move || {
            let mut z = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            state.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    };
    let random = lua.create_function(move |_, args: mlua::Variadic<f64>| {
        // 53 random bits: uniform in [0, 1).
        let r = (next() >> 11) as f64 / (1u64 << 53) as f64;
        let (m, n) = match args.len() {
            0 => return Ok(mlua::Value::Number(r)),
            1 => (1.0, args[0].floor()),
            2 => (args[0].floor(), args[1].floor()),
            _ => return Err(mlua::Error::runtime("wrong number of arguments to 'random'")),
        };
        if m > n {
            let which = if args.len() == 1 { 1 } else { 2 };
            return Err(mlua::Error::runtime(bad_argument(which, "random", "interval is empty")));
        }
        Ok(mlua::Value::Number((m + (r * (n - m + 1.0)).floor()).min(n)))
    })?;
    let randomseed = lua.create_function(move |_, seed: f64| {
        state.set(seed.to_bits());
        Ok(())
    })?;
    Ok((random, randomseed))
}

/// Raises unless the running code may yield to a driver for `api`: a
/// rewrite, access or content handler, or a timer callback (nginx's rule
/// for `ngx.sleep`) where the API's entry in `phases` allows timers.
pub fn check_may_yield(api: &str) -> mlua::Result<()> {
    let entry = phases::by_name(api);
    if entry.is_none_or(|a| a.timers)
        && !crate::context::has_current()
        && crate::context::vm_phase() == Some(crate::context::VmPhase::Timer)
    {
        return Ok(());
    }
    let r = crate::context::current(api)?;
    let r = r.borrow();
    match entry {
        Some(api) => api.check(&r),
        None => crate::context::check_phase(&r, &[Phase::Rewrite, Phase::Access, Phase::Content]),
    }
}

/// Formats a number as Lua's `tostring` does (`%.14g`).
pub fn fmt_number(n: f64) -> String {
    if n.is_nan() {
        return if n.is_sign_negative() {
            "-nan".into()
        } else {
            "nan".into()
        };
    }
    if n.is_infinite() {
        return if n > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if n == 0.0 {
        return if n.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    // Integers below 1e14 print as themselves under %.14g; skipping the
    // exact float formatting (Dragon4) matters where numbers are common,
    // e.g. the lengths lua-resty-redis sends with every command.
    if n.fract() == 0.0 && n.abs() < 1e14 {
        return (n as i64).to_string();
    }
    let sci = format!("{n:.13e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..14).contains(&exp) {
        let mantissa = trim_fraction(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let decimals = (13 - exp).max(0) as usize;
    trim_fraction(&format!("{n:.decimals$}")).to_string()
}

fn trim_fraction(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::fmt_number;

    #[test]
    fn numbers_print_like_luajit() {
        assert_eq!(fmt_number(32.0), "32");
        assert_eq!(fmt_number(-3.5), "-3.5");
        assert_eq!(fmt_number(0.1), "0.1");
        assert_eq!(fmt_number(1.0 / 3.0), "0.33333333333333");
        assert_eq!(fmt_number(1e15), "1e+15");
        assert_eq!(fmt_number(123456789012.0), "123456789012");
        assert_eq!(fmt_number(-99999999999999.0), "-99999999999999");
        assert_eq!(fmt_number(1e14), "1e+14");
        assert_eq!(fmt_number(0.00001), "1e-05");
        assert_eq!(fmt_number(f64::INFINITY), "inf");
    }
}
