//! `ngx.shared.DICT`: the Lua binding of the shared dicts.
//!
//! In: a route's dicts as (name, `Arc<Dict>`); out: the `ngx.shared` table
//! for that route. Each dict object is a table `{ [1] = zone userdata }`
//! whose metatable holds the methods, as in lua-nginx-module (so
//! `type(ngx.shared.dogs)` is "table" and a missing name indexes to nil).
//!
//! The methods are two layers, like lua-resty-core over lua-nginx-module's
//! FFI: a small Lua layer (`METHODS`) checks arguments and shapes the return
//! values exactly as OpenResty does (counts included: `get` returns the
//! flags only when non-zero), and fixed-arity Rust primitives do the work
//! under the dict lock. The primitives are created once per VM and cached in
//! the registry; the Lua layer is instantiated per route so a route that
//! tampers with its dict metatable affects only itself.
//!
//! **Sync writes** (beyond OpenResty): `set`, `safe_set`, `add`, `safe_add`,
//! `replace`, `delete`, `incr`, `lpush` and `rpush` take an optional last
//! argument, an options table; with `{sync = true}` a call that succeeded
//! yields until a commit including its write has completed
//! (`super::durable`), then returns as usual. It raises where yielding is not
//! allowed (init, init_worker, header/body filter, log), even on a memory
//! dict, so code behaves the same whatever the persistence. On a dict that is
//! not persisted (Memory, no data dir, or a store file that could not be
//! used, which is logged) it returns at once. When the
//! commit covering the write fails, or the store closes first, the call
//! returns `false, "not committed: ..."` (`nil, ...` for `incr` and the
//! pushes): the write stays applied in memory and is retried by later
//! commits, but was not confirmed durable.

use std::cell::RefCell;
use std::sync::Arc;

use mlua::{Function, Lua, LuaString, Table, UserData, UserDataRef, Value as LuaValue};

use crate::lua::args::arg_message;
use crate::shdict::{Dict, DictError, ListItem, StoreOp, Value, ValueRef};

/// Registry slot of the compiled `METHODS` chunk and the primitives table.
const REGISTRY_KEY: &str = "moongate.shdict.api";

/// The Lua layer. Called with the primitives table; returns the metatable of
/// dict objects (its `__index` is itself). Error levels mirror lua-resty-core
/// (position of the user's call) and lua-nginx-module's C functions (no
/// position); the numeric `op` codes are nginx's.
const METHODS: &str = include_str!("shared.lua");

/// The zone userdata at index 1 of a dict object.
struct Zone(Arc<Dict>);

impl UserData for Zone {}

type ZoneRef = UserDataRef<Zone>;

/// Builds the `ngx.shared` table of one route.
pub fn shared_table(lua: &Lua, dicts: &[(String, Arc<Dict>)]) -> mlua::Result<Table> {
    let (chunk, raw) = api(lua)?;
    let metatable: Table = chunk.call(raw)?;
    let shared = lua.create_table_with_capacity(0, dicts.len())?;
    for (name, dict) in dicts {
        let object = lua.create_table_with_capacity(1, 0)?;
        object.raw_set(1, lua.create_userdata(Zone(dict.clone()))?)?;
        object.set_metatable(Some(metatable.clone()))?;
        shared.raw_set(name.as_str(), object)?;
    }
    Ok(shared)
}

/// The compiled `METHODS` chunk and the primitives, created once per VM.
fn api(lua: &Lua) -> mlua::Result<(Function, Table)> {
    if let Some(cached) = lua.named_registry_value::<Option<Table>>(REGISTRY_KEY)? {
        return Ok((cached.raw_get(1)?, cached.raw_get(2)?));
    }
    let chunk = lua.load(METHODS).set_name("=ngx.shared").into_function()?;
    let raw = primitives(lua)?;
    let cached = lua.create_sequence_from([LuaValue::Function(chunk.clone()), LuaValue::Table(raw.clone())])?;
    lua.set_named_registry_value(REGISTRY_KEY, cached)?;
    Ok((chunk, raw))
}

/// The Rust primitives. Each has a fixed number of results so no call
/// allocates a result list; the Lua layer trims them to OpenResty's shapes.
/// Keys arrive already checked (non-empty, at most 65535 bytes).
fn primitives(lua: &Lua) -> mlua::Result<Table> {
    let raw = lua.create_table()?;

    // Strings are copied out under the dict lock into a reused buffer and
    // become Lua strings after it is released: creating a Lua string may run
    // the GC and any `__gc` finalizer, which must not find the lock held.
    let scratch = RefCell::new(Vec::<u8>::new());
    raw.set(
        "get",
        lua.create_function(move |lua, (zone, key, stale): (ZoneRef, LuaString, bool)| {
            let mut buf = scratch.take();
            let got = zone.0.get_with(&key.as_bytes(), stale, |v| match v {
                ValueRef::Str(s) => {
                    buf.clear();
                    buf.extend_from_slice(s);
                    LuaValue::Nil
                }
                ValueRef::Number(n) => LuaValue::Number(n),
                ValueRef::Bool(b) => LuaValue::Boolean(b),
            });
            let out = match got {
                Ok(Some(f)) => {
                    let value = match f.value {
                        LuaValue::Nil => LuaValue::String(lua.create_string(&buf)?),
                        v => v,
                    };
                    (value, f.flags as i32, None, f.stale)
                }
                Ok(None) => (LuaValue::Nil, 0, None, false),
                Err(e) => (LuaValue::Nil, 0, Some(message(e)), false),
            };
            scratch.replace(buf);
            Ok(out)
        })?,
    )?;

    raw.set(
        "store",
        lua.create_function(
            |_, (zone, op, key, value, exptime_ms, flags): (ZoneRef, i64, LuaString, LuaValue, f64, f64)| {
                let op = match op {
                    1 => StoreOp::Add,
                    2 => StoreOp::Replace,
                    4 => StoreOp::SafeSet,
                    5 => StoreOp::SafeAdd,
                    _ => StoreOp::Set,
                };
                let value = match value {
                    LuaValue::Nil => None,
                    LuaValue::Boolean(b) => Some(Value::Bool(b)),
                    LuaValue::Integer(i) => Some(Value::Number(i as f64)),
                    LuaValue::Number(n) => Some(Value::Number(n)),
                    LuaValue::String(s) => Some(Value::Str(s.as_bytes().to_vec())),
                    _ => return Ok((false, Some("bad value type".to_string()), false)),
                };
                // The flags travel as a C int in lua-nginx-module.
                let flags = c_int(flags) as u32;
                let out = zone.0.store(op, &key.as_bytes(), value, millis(exptime_ms), flags);
                Ok((out.result.is_ok(), out.result.err().map(message), out.forcible))
            },
        )?,
    )?;

    raw.set(
        "incr",
        lua.create_function(
            |_, (zone, key, delta, init, init_ttl_ms): (ZoneRef, LuaString, f64, Option<f64>, f64)| {
                let out = zone.0.incr(&key.as_bytes(), delta, init, millis(init_ttl_ms));
                Ok(match out.result {
                    Ok(n) => (Some(n), None, out.forcible),
                    Err(e) => (None, Some(message(e)), out.forcible),
                })
            },
        )?,
    )?;

    raw.set(
        "push",
        lua.create_function(|_, (zone, front, key, value): (ZoneRef, bool, LuaString, LuaValue)| {
            let item = match value {
                LuaValue::Integer(i) => ListItem::Number(i as f64),
                LuaValue::Number(n) => ListItem::Number(n),
                LuaValue::String(s) => ListItem::Str(s.as_bytes().to_vec()),
                _ => return Ok(Err("bad value type".to_string())),
            };
            let key = key.as_bytes();
            let len = if front {
                zone.0.lpush(&key, item)
            } else {
                zone.0.rpush(&key, item)
            };
            Ok(len.map(|n| n as f64).map_err(message))
        })?,
    )?;

    raw.set(
        "pop",
        lua.create_function(|lua, (zone, key, front): (ZoneRef, LuaString, bool)| {
            let key = key.as_bytes();
            let item = if front { zone.0.lpop(&key) } else { zone.0.rpop(&key) };
            Ok(match item {
                Ok(Some(ListItem::Number(n))) => Ok(LuaValue::Number(n)),
                Ok(Some(ListItem::Str(s))) => Ok(LuaValue::String(lua.create_string(s)?)),
                Ok(None) => Ok(LuaValue::Nil),
                Err(e) => Err(message(e)),
            })
        })?,
    )?;

    raw.set(
        "llen",
        lua.create_function(|_, (zone, key): (ZoneRef, LuaString)| {
            Ok(zone.0.llen(&key.as_bytes()).map(|n| n as f64).map_err(message))
        })?,
    )?;

    raw.set(
        "ttl",
        lua.create_function(|_, (zone, key): (ZoneRef, LuaString)| {
            Ok(zone.0.ttl(&key.as_bytes()).ok().map(|ms| ms as f64))
        })?,
    )?;

    raw.set(
        "expire",
        lua.create_function(|_, (zone, key, exptime_ms): (ZoneRef, LuaString, f64)| {
            Ok(zone.0.expire(&key.as_bytes(), millis(exptime_ms)).is_ok())
        })?,
    )?;

    raw.set(
        "flush_all",
        lua.create_function(|_, zone: ZoneRef| {
            zone.0.flush_all();
            Ok(())
        })?,
    )?;

    raw.set(
        "flush_expired",
        lua.create_function(|_, (zone, max): (ZoneRef, f64)| Ok(zone.0.flush_expired(count(max)) as f64))?,
    )?;

    raw.set(
        "get_keys",
        lua.create_function(|lua, (zone, max): (ZoneRef, f64)| {
            // Keys are collected under the lock (as shared pointers, no
            // copy) and become Lua strings after it is released.
            let keys = zone.0.get_keys(count(max));
            let table = lua.create_table_with_capacity(keys.len(), 0)?;
            for (i, key) in keys.iter().enumerate() {
                table.raw_set(i + 1, lua.create_string(&**key)?)?;
            }
            Ok(table)
        })?,
    )?;

    // Sync writes: the context check comes before the write, the ticket after
    // it (so it covers it); `await` yields the ticket to the driver.
    raw.set(
        "sync_check",
        // The refusal is returned, for the Lua layer to raise as a plain
        // message (as lua-nginx-module's C functions do).
        lua.create_function(|_, ()| {
            Ok(super::check_may_yield("ngx.shared.DICT sync write")
                .err()
                .map(|e| crate::lua::error_message(&e)))
        })?,
    )?;
    raw.set(
        "sync_ticket",
        lua.create_function(|lua, zone: ZoneRef| match zone.0.sync_ticket() {
            Some(ticket) => Ok(Some(lua.create_userdata(super::durable::Ticket(ticket))?)),
            None => Ok(None),
        })?,
    )?;
    raw.set("await", super::durable::await_function(lua)?)?;

    raw.set(
        "capacity",
        lua.create_function(|_, zone: ZoneRef| Ok(zone.0.capacity() as f64))?,
    )?;
    raw.set(
        "free_space",
        lua.create_function(|_, zone: ZoneRef| Ok(zone.0.free_space() as f64))?,
    )?;

    // luaL_argerror's message for the method `level` frames up the stack:
    // "bad argument #N to 'name' (...)", not counting `self` in method calls.
    raw.set(
        "argerror",
        lua.create_function(|lua, (level, narg, extra): (usize, i64, LuaString)| {
            Ok(arg_message(lua, level, narg, &extra.to_string_lossy()))
        })?,
    )?;

    Ok(raw)
}

fn message(e: DictError) -> String {
    e.to_string()
}

/// Seconds × 1000 as lua-nginx-module passes them to C: truncated to whole
/// ms; zero, negative and NaN mean "never expires".
fn millis(ms: f64) -> u64 {
    if ms > 0.0 { ms as u64 } else { 0 }
}

/// A Lua number converted to a C int the way LuaJIT's FFI does on x86-64:
/// truncated, and INT_MIN when out of range.
fn c_int(n: f64) -> i32 {
    if n > -2_147_483_649.0 && n < 2_147_483_648.0 {
        n as i32
    } else {
        i32::MIN
    }
}

/// `luaL_checkint` counts: 0 and negatives mean "no limit".
fn count(n: f64) -> usize {
    if n >= 1.0 { n as usize } else { 0 }
}

#[cfg(test)]
mod tests {
    use mlua::{Lua, LuaOptions, StdLib};

    use super::*;

    /// A VM like the dataplane's (no `debug` library) with `dogs` and `cats`
    /// installed as the global `shared`.
    fn vm() -> (Lua, Arc<Dict>) {
        let lua = Lua::new_with(StdLib::ALL_SAFE, LuaOptions::new()).expect("lua");
        let marker = lua.create_table().expect("marker");
        crate::lua::api::durable::register(&lua, &marker).expect("durable api");
        lua.globals().set("YIELD", marker).expect("set");
        let dogs = Arc::new(Dict::new("dogs", 1 << 20));
        let dicts = [
            ("dogs".to_string(), dogs.clone()),
            ("cats".to_string(), Arc::new(Dict::new("cats", 1 << 20))),
        ];
        let shared = shared_table(&lua, &dicts).expect("shared table");
        lua.globals().set("shared", shared).expect("set");
        (lua, dogs)
    }

    fn eval(lua: &Lua, code: &str) -> String {
        lua.load(code)
            .set_name("=test")
            .eval::<String>()
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    /// Lua helper: every result of a call, counted, joined by "|".
    const PACK: &str = "local function pack(...) local t = {select('#', ...)} \
        for i = 1, select('#', ...) do t[#t + 1] = tostring((select(i, ...))) end \
        return table.concat(t, '|') end\n";

    fn results(lua: &Lua, call: &str) -> String {
        eval(lua, &format!("{PACK} local d = shared.dogs return pack({call})"))
    }

    #[test]
    fn dict_objects_are_tables_and_missing_names_are_nil() {
        let (lua, _) = vm();
        assert_eq!(
            eval(&lua, "return type(shared.dogs) .. ' ' .. tostring(shared.nope)"),
            "table nil"
        );
    }

    #[test]
    fn result_shapes_match_openresty() {
        let (lua, _) = vm();
        assert_eq!(results(&lua, "d:get('x')"), "1|nil");
        assert_eq!(results(&lua, "d:set('x', 32)"), "3|true|nil|false");
        assert_eq!(results(&lua, "d:get('x')"), "1|32");
        assert_eq!(results(&lua, "d:set('f', false, 0, 325)"), "3|true|nil|false");
        assert_eq!(results(&lua, "d:get('f')"), "2|false|325");
        assert_eq!(results(&lua, "d:get_stale('x')"), "3|32|nil|false");
        assert_eq!(results(&lua, "d:add('x', 1)"), "3|false|exists|false");
        assert_eq!(results(&lua, "d:replace('nope', 1)"), "3|false|not found|false");
        assert_eq!(
            results(&lua, "d:add('y', nil)"),
            "3|false|attempt to add or replace nil values|false"
        );
        assert_eq!(results(&lua, "d:set(nil, 1)"), "2|nil|nil key");
        assert_eq!(results(&lua, "d:get('')"), "2|nil|empty key");
        assert_eq!(results(&lua, "d:get(string.rep('a', 65536))"), "2|nil|key too long");
        assert_eq!(results(&lua, "d:set('t', {})"), "2|nil|bad value type");
        assert_eq!(results(&lua, "d:delete('x')"), "3|true|nil|false");
        assert_eq!(results(&lua, "d:incr('n', 1)"), "2|nil|not found");
        assert_eq!(results(&lua, "d:incr('n', 1, 10)"), "3|11|nil|false");
        assert_eq!(results(&lua, "d:incr('n', '2')"), "1|13");
        assert_eq!(results(&lua, "d:ttl('n')"), "1|0");
        assert_eq!(results(&lua, "d:ttl('zz')"), "2|nil|not found");
        assert_eq!(results(&lua, "d:expire('n', 10)"), "1|true");
        assert_eq!(results(&lua, "d:capacity()"), "1|1048576");
        assert_eq!(results(&lua, "d:flush_all()"), "0");
        // flush_all already freed the (only two) entries, as nginx does.
        assert_eq!(results(&lua, "d:flush_expired()"), "1|0");
    }

    #[test]
    fn numbers_keys_and_binary_strings() {
        let (lua, dogs) = vm();
        assert_eq!(results(&lua, "d:set(1234, 'cat')"), "3|true|nil|false");
        assert_eq!(results(&lua, "d:get('1234')"), "1|cat");
        assert_eq!(
            eval(
                &lua,
                "local d = shared.dogs d:set('b', '\\0\\255x') return tostring(d:get('b') == '\\0\\255x')"
            ),
            "true"
        );
        assert_eq!(
            dogs.get(b"b").ok().flatten().map(|f| f.value),
            Some(Value::Str(vec![0, 255, b'x']))
        );
        // Values written from Rust are seen by Lua and vice versa.
        dogs.set(b"from_rust", Value::Number(7.5), 0, 0);
        assert_eq!(results(&lua, "d:get('from_rust')"), "1|7.5");
    }

    #[test]
    fn lists_and_keys() {
        let (lua, _) = vm();
        assert_eq!(results(&lua, "d:lpush('l', 'a')"), "1|1");
        assert_eq!(results(&lua, "d:rpush('l', 2)"), "1|2");
        assert_eq!(results(&lua, "d:llen('l')"), "1|2");
        assert_eq!(results(&lua, "d:get('l')"), "2|nil|value is a list");
        assert_eq!(results(&lua, "d:rpop('l')"), "1|2");
        assert_eq!(results(&lua, "d:lpop('l')"), "1|a");
        assert_eq!(results(&lua, "d:lpop('l')"), "1|nil");
        assert_eq!(results(&lua, "d:lpush('l', true)"), "2|nil|bad value type");
        assert_eq!(results(&lua, "d:lpush(nil, 1)"), "2|nil|nil key");
        d_set_then(&lua);
    }

    fn d_set_then(lua: &Lua) {
        assert_eq!(results(lua, "d:set('s', 'v')"), "3|true|nil|false");
        assert_eq!(results(lua, "d:lpop('s')"), "2|nil|value not a list");
        assert_eq!(eval(lua, "local k = shared.dogs:get_keys() return #k .. k[1]"), "1s");
        assert_eq!(eval(lua, "return #shared.dogs:get_keys(0)"), "1");
    }

    #[test]
    fn argument_errors_match_openresty() {
        let (lua, _) = vm();
        let err = |call: &str| {
            eval(
                &lua,
                &format!("local d = shared.dogs local ok, e = pcall(function() {call} end) return tostring(e)"),
            )
        };
        assert!(err("d.get('foo')").contains("bad \"zone\" argument"));
        assert!(err("shared.dogs.get({1}, 'foo')").contains("bad \"zone\" argument"));
        assert!(err("d:set('k', 1, -1)").contains("bad \"exptime\" argument"));
        assert!(err("d:incr('k', 1, {})").contains("bad init arg: number expected, got table"));
        assert!(err("d:incr('k', 1, nil, 3)").contains("must provide \"init\" when providing \"init_ttl\""));
        assert_eq!(err("d.lpush('foo', 1)"), "expecting 3 arguments, but only seen 2");
        assert_eq!(err("d:lpop()"), "expecting 2 arguments, but only seen 1");
        assert_eq!(err("d.get_keys()"), "expecting 1 or 2 argument(s), but saw 0");
        assert_eq!(
            err("d:lpush(true, 1)"),
            "bad argument #1 to 'lpush' (string expected, got boolean)"
        );
        assert_eq!(
            err("d:get_keys('x')"),
            "bad argument #1 to 'get_keys' (number expected, got string)"
        );
        assert_eq!(
            err("d.flush_expired('x')"),
            "bad argument #1 to 'flush_expired' (table expected, got string)"
        );
        // The error position is the user's call site, as with lua-resty-core.
        assert_eq!(err("d.get('foo')"), "test:1: bad \"zone\" argument");
    }

    #[test]
    fn sync_option_is_checked_and_refused_where_it_cannot_wait() {
        let (lua, _) = vm();
        let err = |call: &str| {
            eval(
                &lua,
                &format!("local d = shared.dogs local ok, e = pcall(function() {call} end) return tostring(e)"),
            )
        };
        assert_eq!(
            err("d:set('k', 1, 0, 0, 'yes')"),
            "test:1: bad \"opts\" argument (table expected, got string)"
        );
        assert_eq!(err("d:lpush('l', 1, true)"), "expecting 3 arguments, but only seen 4");
        // No request and not a timer: the phase is init, which cannot yield;
        // the write is refused before it is made.
        for call in [
            "d:set('k', 1, 0, 0, {sync = true})",
            "d:incr('n', 1, 0, 0, {sync = true})",
            "d:delete('k', {sync = true})",
            "d:rpush('l', 1, {sync = true})",
        ] {
            assert_eq!(err(call), "API disabled in the context of init_by_lua*", "{call}");
        }
        assert_eq!(results(&lua, "d:get('k')"), "1|nil");
        assert_eq!(results(&lua, "d:llen('l')"), "1|0");
        // Without sync, or with sync = false, the options change nothing.
        assert_eq!(results(&lua, "d:set('k', 1, 0, 0, {sync = false})"), "3|true|nil|false");
        assert_eq!(results(&lua, "d:incr('k', 1, nil, nil, {})"), "1|2");
        assert_eq!(results(&lua, "d:rpush('l', 'x', nil)"), "1|1");
        assert_eq!(results(&lua, "d:delete('k', {})"), "3|true|nil|false");
    }

    #[test]
    fn routes_share_dicts_but_not_metatables() {
        let (lua, dogs) = vm();
        let other = shared_table(&lua, &[("dogs".to_string(), dogs)]).expect("second route");
        lua.globals().set("other", other).expect("set");
        let code = "shared.dogs:set('k', 'v') getmetatable(other.dogs).get = nil \
            return tostring(getmetatable(shared.dogs) ~= getmetatable(other.dogs)) .. shared.dogs:get('k')";
        assert_eq!(eval(&lua, code), "truev");
    }

    #[test]
    fn number_conversions() {
        assert_eq!(c_int(325.9), 325);
        assert_eq!(c_int(-1.0), -1);
        assert_eq!(c_int(4294967295.0), i32::MIN);
        assert_eq!(c_int(f64::NAN), i32::MIN);
        assert_eq!(millis(0.5), 0);
        assert_eq!(millis(-3.0), 0);
        assert_eq!(millis(1500.7), 1500);
        assert_eq!(count(-1.0), 0);
        assert_eq!(count(42.9), 42);
    }
}
