//! `table.new`, `table.clear`, `table.nkeys`, `table.isempty`, `table.isarray` and
//! `table.clone`: the table extensions of OpenResty's LuaJIT branch (`lib_table.c`,
//! `lj_tab.c`), which a route gets with `require "table.new"` and so on.
//!
//! As in LuaJIT, requiring one returns the function and also sets it in that route's own
//! `table` library table (`lj_lib_postreg`), never in another route's.
//!
//! Work that grows with the table is charged to the running code's budget per entry visited
//! (`crate::lua::budget::charge`); `table.new`'s preallocation is charged by the VM's allocator
//! like any allocation, and up front by its size.

use mlua::{Function, Lua, Table, Value};

use crate::lua::args::{Where, type_error};
use crate::lua::budget;

/// LuaJIT's largest array part (`LJ_MAX_ASIZE`) and hash part (`LJ_MAX_HBITS` bits): beyond
/// them `lua_createtable` raises "table overflow".
const MAX_ASIZE: i64 = (0x7fff_ffff >> 4) + 1;
const MAX_HBITS: u32 = 26;

/// Entries visited per work unit: one `lua_next` step costs about one VM instruction.
const ENTRIES_PER_UNIT: u64 = 1;

/// The functions, by the name `require` knows them as, and the `table` field they set.
pub fn functions(lua: &Lua) -> mlua::Result<Vec<(&'static str, Function)>> {
    Ok(vec![
        ("new", lua.create_function(new)?),
        ("clear", lua.create_function(clear)?),
        ("nkeys", lua.create_function(nkeys)?),
        ("isempty", lua.create_function(isempty)?),
        ("isarray", lua.create_function(isarray)?),
        ("clone", lua.create_function(clone)?),
    ])
}

/// `lj_lib_checkint`: a number, or a string that converts to one, truncated to an int32.
fn check_int(lua: &Lua, v: Option<&Value>, narg: usize) -> mlua::Result<i64> {
    let n = match v {
        Some(Value::Integer(i)) => *i as f64,
        Some(Value::Number(n)) => *n,
        Some(s @ Value::String(_)) => match lua.coerce_number(s.clone())? {
            Some(n) => n,
            None => return Err(type_error(lua, narg, "number", v, Where::LuaJit)),
        },
        _ => return Err(type_error(lua, narg, "number", v, Where::LuaJit)),
    };
    // lj_num2int: wraps like a C cast of an in-range double; out of range is UB in C, here
    // it saturates (an overflow error follows either way).
    Ok(n as i64 as i32 as i64)
}

/// `lj_lib_checktab`.
fn check_table(lua: &Lua, v: Option<&Value>, narg: usize) -> mlua::Result<Table> {
    match v {
        Some(Value::Table(t)) => Ok(t.clone()),
        _ => Err(type_error(lua, narg, "table", v, Where::LuaJit)),
    }
}

fn new(lua: &Lua, args: mlua::MultiValue) -> mlua::Result<Table> {
    let narr = check_int(lua, args.front(), 1)?.max(0);
    let nrec = check_int(lua, args.get(1), 2)?.max(0);
    let hbits = if nrec > 0 {
        64 - (nrec as u64).leading_zeros()
    } else {
        0
    };
    if narr >= MAX_ASIZE || hbits > MAX_HBITS {
        return Err(crate::lua::args::caller_error(lua, "table overflow"));
    }
    // 8 bytes an array slot, 24 a hash node (LuaJIT's TValue and Node).
    budget::charge_bytes(narr as usize * 8 + nrec as usize * 24)?;
    lua.create_table_with_capacity(narr as usize, nrec as usize)
}

/// Visits every non-nil entry of `t`, charging each.
fn each(t: &Table, mut f: impl FnMut(&Value) -> bool) -> mlua::Result<()> {
    let mut visited = 0u64;
    let mut result = Ok(());
    t.for_each::<Value, Value>(|k, _| {
        visited += 1;
        if visited.is_multiple_of(64) {
            budget::charge(64 / ENTRIES_PER_UNIT)?;
        }
        if !f(&k) {
            // Stops the walk; not an error to the caller.
            result = Err(());
            return Err(mlua::Error::runtime(""));
        }
        Ok(())
    })
    .or_else(|e| if result.is_err() { Ok(()) } else { Err(e) })
}

fn clear(lua: &Lua, args: mlua::MultiValue) -> mlua::Result<()> {
    let t = check_table(lua, args.front(), 1)?;
    let n = nkeys_of(&t)?;
    budget::charge(n as u64 / ENTRIES_PER_UNIT)?;
    // Raw, and keeps the array and hash parts allocated, as lj_tab_clear does.
    t.clear()
}

fn nkeys_of(t: &Table) -> mlua::Result<usize> {
    let mut n = 0usize;
    each(t, |_| {
        n += 1;
        true
    })?;
    Ok(n)
}

fn nkeys(lua: &Lua, args: mlua::MultiValue) -> mlua::Result<usize> {
    nkeys_of(&check_table(lua, args.front(), 1)?)
}

fn isempty(lua: &Lua, args: mlua::MultiValue) -> mlua::Result<bool> {
    let t = check_table(lua, args.front(), 1)?;
    let mut empty = true;
    each(&t, |_| {
        empty = false;
        false
    })?;
    Ok(empty)
}

/// `lj_tab_isarray`: every key is an integral number (holes, zero and negative keys allowed).
fn isarray(lua: &Lua, args: mlua::MultiValue) -> mlua::Result<bool> {
    let t = check_table(lua, args.front(), 1)?;
    let mut array = true;
    each(&t, |k| {
        array = match k {
            Value::Integer(_) => true,
            Value::Number(n) => n.round_ties_even() == *n,
            _ => false,
        };
        array
    })?;
    Ok(array)
}

/// `lj_tab_dup`: a shallow copy of the keys and values, without the metatable.
fn clone(lua: &Lua, args: mlua::MultiValue) -> mlua::Result<Table> {
    let t = check_table(lua, args.front(), 1)?;
    let n = nkeys_of(&t)?;
    budget::charge(n as u64)?;
    let len = t.raw_len();
    let copy = lua.create_table_with_capacity(len, n.saturating_sub(len))?;
    t.for_each::<Value, Value>(|k, v| copy.raw_set(k, v))?;
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lua_with_functions() -> Lua {
        let lua = Lua::new();
        let t = lua.create_table().unwrap();
        for (name, f) in functions(&lua).unwrap() {
            t.set(name, f).unwrap();
        }
        lua.globals().set("tx", t).unwrap();
        lua
    }

    fn eval(lua: &Lua, code: &str) -> String {
        lua.load(code).set_name("=t").eval::<String>().unwrap()
    }

    #[test]
    fn counts_and_predicates_follow_luajit() {
        let lua = lua_with_functions();
        let got = eval(
            &lua,
            r#"
            local t = {1, 2, nil, 4, x = 1, [2.5] = 3}
            local a = {[0] = 1, [-3] = 2, [10] = 3, [1e3] = 4}
            return table.concat({
                tx.nkeys(t), tostring(tx.isempty(t)), tostring(tx.isempty({})),
                tostring(tx.isarray(t)), tostring(tx.isarray(a)), tostring(tx.isarray({})),
                tostring(tx.isarray({1, nil, 3})), tx.nkeys({}), tx.nkeys(a),
            }, ",")
            "#,
        );
        assert_eq!(got, "5,false,true,false,true,true,true,0,4");
    }

    #[test]
    fn clear_new_and_clone() {
        let lua = lua_with_functions();
        let got = eval(
            &lua,
            r#"
            local t = setmetatable({1, 2, 3, a = 1}, {__newindex = error})
            tx.clear(t)
            local n = tx.new(100, 10)
            n[1] = "x"
            local c = tx.clone(setmetatable({1, 2, k = "v"}, {}))
            return table.concat({ tostring(next(t)), tostring(getmetatable(t) ~= nil), #n,
                                  c[1], c[2], c.k, tostring(getmetatable(c)) }, ",")
            "#,
        );
        assert_eq!(got, "nil,true,1,1,2,v,nil");
    }

    #[test]
    fn argument_errors_are_luajits() {
        let lua = lua_with_functions();
        let got = eval(
            &lua,
            r#"
            local out = {}
            for _, f in ipairs({
                function() tx.new() end,
                function() tx.new(1, "x") end,
                function() tx.nkeys(1) end,
                function() tx.new(2^30, 0) end,
                function() tx.clear() end,
            }) do
                local ok, e = pcall(f)
                out[#out + 1] = tostring(e):match("^runtime error: ([^\n]*)")
            end
            return table.concat(out, "|")
            "#,
        );
        assert_eq!(
            got,
            "t:4: bad argument #1 to 'new' (number expected, got no value)|\
             t:5: bad argument #2 to 'new' (number expected, got string)|\
             t:6: bad argument #1 to 'nkeys' (table expected, got number)|\
             t:7: table overflow|\
             t:8: bad argument #1 to 'clear' (table expected, got no value)"
        );
    }
}
