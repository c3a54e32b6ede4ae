//! Differential tests: the same Lua calls through LuaJIT's C `string.find/match/gmatch/gsub`
//! (a plain VM) and through ours (a VM after `install`), comparing every return value and every
//! error message byte for byte. The bounded-work tests are in `tests/budget.rs`.
//!
//! Each case is a Lua chunk (named "=case", so error locations agree) run under `pcall` by the
//! same harness in both VMs; the harness serializes the results (count, types, exact bytes) or
//! the error message, converting our mlua errors to text as the sandbox's `pcall` does.

mod bench;
mod budget;
mod generate;

use mlua::{Function, Lua, LuaOptions, StdLib, Value};

const HARNESS: &str = r##"
local errmsg = ...
local R = {}
local function ser(n, ...)
  local parts = {}
  for i = 1, n do
    local v = select(i, ...)
    local t = type(v)
    if t == "string" then
      parts[i] = string.format("%q", v)
    elseif t == "number" then
      parts[i] = string.format("%.17g", v)
    elseif t == "function" or t == "table" then
      parts[i] = t
    else
      parts[i] = tostring(v)
    end
  end
  return n .. ":" .. table.concat(parts, ",")
end
function R.pack(...)
  return { n = select("#", ...), ... }
end
-- Calls a gmatch iterator until it returns nothing (at most `max` times).
function R.iter(it, max)
  local out = {}
  for _ = 1, max or 40 do
    local r = R.pack(it())
    out[#out + 1] = ser(r.n, unpack(r, 1, r.n))
    if r.n == 0 then
      break
    end
  end
  return table.concat(out, ";")
end
-- Returns its arguments: cases call `R.ret(string.find(...))`, so the call under test is not
-- a tail call and LuaJIT names it ('find') and locates it ("case:1:") in errors.
function R.ret(...)
  return ...
end
R.f_first = function(a) return a end
R.f_all = function(...)
  local t = {}
  for i = 1, select("#", ...) do
    t[i] = type((select(i, ...))) .. "=" .. tostring((select(i, ...)))
  end
  return "<" .. table.concat(t, "|") .. ">"
end
R.f_nil = function() return nil end
R.f_false = function() return false end
R.f_none = function() end
R.f_num = function() return 4.25 end
R.f_negzero = function() return -0 end
R.f_int = function() return 7 end
R.f_table = function() return {} end
R.f_true = function() return true end
R.f_err = function() error("boom") end
R.f_multi = function() return "x", "y" end
R.f_nested = function(a) return (string.gsub(a, ".", "%0%0")) end
R.t_plain = { a = "A", b = false, c = 3, ab = "AB", [1] = "one", [2] = true, ["("] = "P" }
R.t_meta = setmetatable({ a = "A" }, {
  __index = function(_, k) return type(k) .. ":" .. tostring(k) end,
})
local function result(ok, ...)
  if ok then
    return ser(select("#", ...), ...)
  end
  local e = errmsg((...))
  return "error:" .. (type(e) == "string" and e or type(e))
end
-- `pcall` as the sandbox has it: errors from Rust reach Lua code as the string LuaJIT raises.
local function caught(ok, ...)
  if ok then
    return ok, ...
  end
  return false, errmsg((...))
end
local env = setmetatable({
  R = R,
  pcall = function(f, ...) return caught(pcall(f, ...)) end,
}, { __index = _G })
return function(src)
  local f, err = loadstring(src, "=case")
  if not f then
    return "syntax:" .. err
  end
  setfenv(f, env)
  return result(pcall(f))
end
"##;

/// A VM like the dataplane's (same libraries, JIT off), with or without our functions.
pub(super) fn new_vm(ours: bool) -> Lua {
    let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::BIT | StdLib::JIT;
    let lua = Lua::new_with(libs, LuaOptions::new()).expect("create Lua");
    lua.load("jit.off()").exec().expect("jit.off");
    if ours {
        super::install(&lua).expect("install");
    }
    lua
}

/// Runs case chunks in one VM, returning the serialized outcome of each.
pub(super) struct Runner {
    _lua: Lua,
    run: Function,
}

impl Runner {
    pub(super) fn new(ours: bool) -> Runner {
        let lua = new_vm(ours);
        let errmsg = lua
            .create_function(|lua, v: Value| match v {
                Value::Error(e) => Ok(Value::String(lua.create_string(crate::lua::error_message(&e))?)),
                v => Ok(v),
            })
            .expect("errmsg");
        let run = lua.load(HARNESS).set_name("=harness").call(errmsg).expect("harness");
        Runner { _lua: lua, run }
    }

    /// The outcome as text (bytes that are not UTF-8 shown as U+FFFD; the harness escapes
    /// every string result with `%q`, so only error messages can hold such bytes).
    pub(super) fn run(&self, case: &str) -> String {
        let outcome: mlua::LuaString = self.run.call(case).expect("the harness catches every error");
        String::from_utf8_lossy(&outcome.as_bytes()).into_owned()
    }
}

/// Runs every case through C and Rust; panics listing the cases whose outcomes differ.
fn assert_same(cases: &[String]) {
    let c = Runner::new(false);
    let rust = Runner::new(true);
    let mut differ = Vec::new();
    for case in cases {
        let want = c.run(case);
        let got = rust.run(case);
        if want != got {
            differ.push(format!("case: {case}\n  LuaJIT: {want}\n  Rust:   {got}"));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} cases differ; first ones:\n{}",
        differ.len(),
        cases.len(),
        differ.iter().take(15).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Counts the distinct outcome kinds, so a generator that only produced errors would show.
fn outcome_summary(cases: &[String]) -> (usize, usize, usize) {
    let c = Runner::new(false);
    let (mut found, mut not_found, mut errors) = (0, 0, 0);
    for case in cases {
        let r = c.run(case);
        if r.starts_with("error:") {
            errors += 1;
        } else if r == "1:nil" {
            not_found += 1;
        } else {
            found += 1;
        }
    }
    (found, not_found, errors)
}

#[test]
fn generated_calls_behave_as_luajit() {
    let cases = generate::cases(0x5eed_1234, 6000);
    let (found, not_found, errors) = outcome_summary(&cases);
    // The generator must exercise matches, misses and errors, not just one of them.
    assert!(
        found > 2000 && not_found > 300 && errors > 200,
        "found {found}, not found {not_found}, errors {errors}"
    );
    assert_same(&cases);
}

#[test]
fn generated_calls_with_another_seed_behave_as_luajit() {
    assert_same(&generate::cases(0xdead_beef, 4000));
}

/// Hand-written cases: one Lua chunk per line.
const EDGE_CASES: &str = r##"
return string.find("hello world", "o w")
return string.find("hello world", "o", 5)
return string.find("hello", "l", -2)
return string.find("hello", "", 10)
return string.find("hello", "", -10)
return string.find("hello", "h", 0)
return string.find("", "")
return string.find("", "", 1)
return string.find("", "", 2)
return string.find("abc", "b", 2^31)
return string.find("abc", "b", -2^31)
return string.find("abc", "b", 3e9)
return string.find("abc", "b", 2^32 + 2)
return string.find("abcabc", "a", 2^32 + 2)
return string.find("abcabc", "a", -2^32 + 2)
return string.find("abcabc", "a", 2^31 + 2)
return string.find("abcabc", "a", 2^63 + 2^40)
return string.match("abcabc", "a()", 2^32 + 4)
return string.find("abc", "c", 0/0)
return string.find("abc", "c", math.huge)
return string.find("abc", "c", -math.huge)
return string.find("abc", "c", 2.9)
return string.find("abc", "a", -2.9)
return string.find("abc", "c", "3")
return string.find("abc", "c", " 0x3 ")
return string.find("abc", "c", "3e0")
return string.find("abc", "c", "x")
return string.find("abc", "c", "")
return string.find("abc", "c", {})
return string.find("abc", "c", nil, nil)
return string.find("a.b", ".", 1, true)
return string.find("a.b", ".", 1, false)
return string.find("a.b", ".", 1, 0)
return string.find("a.b", ".", 1, "")
return string.find("a+b", "+")
return string.find("a+b", "a+", 1, true)
return string.find("a\0b", "\0")
return string.find("a\0b", "a\0b")
return string.find("xa\0.", "a\0.")
return string.find("xa\0b", "a\0b", 1, true)
return string.find("a\0b", "%z")
return string.find("a\0b", "[%z]")
return string.find("a\0b", "[^%Z]+")
return string.find("\255\128\1", "[\128-\255]+")
return string.find("\255\128\1", "%A+")
return string.find("caf\195\169", "%a+$")
return string.find(12345, 34)
return string.find(12.5, "%.")
return string.find(-0, "-")
return string.find(1e100, "e")
return string.find(0/0, "n")
return string.find(2^53, "9")
return string.find("abc", 98)
return string.match("key=value", "^(%w+)=(%w+)$")
return string.match("key=value", "()=()")
return string.match("  trim  ", "^%s*(.-)%s*$")
return string.match("hello", "(h)(e)(l)(l)(o)")
return string.match("hello", "")
return string.match("hello", "", 3)
return string.match("hello", "$", 10)
return string.match("hello", "^", 10)
return string.match("abc", "^b", 2)
return string.match("abc", "^abc$")
return string.match("a$c", "a$c")
return string.match("a$", "a$*")
return string.match("abc^", "c^")
return string.match("[]", "[]]")
return string.match("]", "[]]")
return string.match("a-", "[a-]+")
return string.match("-a", "[-a]+")
return string.match("b", "[a-c]")
return string.match("-", "[a%-c]")
return string.match("%", "[%%]")
return string.match("x]", "[^]]")
return string.match("abc", "[^%a]")
return string.match("THE (quick) fox", "%f[%a]%a+")
return string.match("THE (quick) fox", "%f[%l]%a+")
return string.match("abc", "%f[%z]")
return string.match("abc", "()%f[%z]")
return string.match("abc", "%f[a]")
return string.match("f(a(b)c) (d", "%b()")
return string.match("f(a(b)c) (d", "(%b())")
return string.match("''a''", "%b''")
return string.match("((", "%b()")
return string.match("", "%b()")
return string.match("abab", "(ab)%1")
return string.match("abac", "(ab)%1")
return string.match("aaa", "()a%1")
return string.match("hello world", "(o)(.-)%1")
return string.match("hello", "%g+")
return string.match(" \t\n", "%G+")
return string.match("x\1y", "%c")
return string.match("Hello", "%u%l+")
return string.match("0x1F", "0x(%x+)")
return string.match("a,b;c", "%p")
return string.match("ab12", "%w+")
return string.match("ab12", "%W")
return string.match("ab12", "%D+")
return string.match(("a"):rep(32), ("(a)"):rep(32))
return string.match(("a"):rep(33), ("(a)"):rep(33))
return string.match(("a"):rep(300), ("a?"):rep(300))
return string.match(("a"):rep(300), ("a?"):rep(199))
return string.match("aaa", ("a*"):rep(250))
return string.match("aaa", ("a*"):rep(199))
return string.match(("a"):rep(300), ("(a"):rep(20) .. (")"):rep(20))
return string.match("a", "(a")
return string.find("a", "(a")
return string.find("b", "(a")
return string.match("a", "a)")
return string.match("a", "%1")
return string.match("a", "(a)%2")
return string.match("a", "(a%1)")
return string.match("a", "%0")
return string.match("a", "%")
return string.match("a", "a%")
return string.match("a", "[a")
return string.match("a", "[]")
return string.match("a", "[^]")
return string.match("a", "[%")
return string.match("a", "[a%]")
return string.match("a", "%f")
return string.match("a", "%fa")
return string.match("a", "%f[a")
return string.match("a", "%b")
return string.match("a", "%ba")
return string.match("a", "%b\0a")
return string.match("a", "x%")
return string.match("b", "a%")
return string.find()
return string.find(nil)
return string.find("x")
return string.find("x", nil)
return string.find({}, "x")
return string.find(true, "x")
return string.find(print, "x")
return string.find(coroutine.create(print), "x")
return string.find("x", "x", true)
return string.match()
return string.match("x", {})
return string.gmatch()
return string.gmatch("x")
return string.gsub()
return string.gsub("x")
return string.gsub("x", "x")
return string.gsub("x", "x", nil)
return string.gsub("x", "x", true)
return string.gsub("x", "x", nil, "y")
return string.gsub("x", "x", "y", "z")
return string.gsub("x", "x", "y", {})
return string.gsub({}, "x", "y")
return string.gsub("x", {}, "y")
return ("x"):find(nil)
return ("x"):match()
return ("x"):gsub("x")
return ("x"):gsub("x", "y", "n")
local t = setmetatable({}, { __index = string }) return t:find("x")
local t = setmetatable({}, { __index = string }) return t:gsub("x", "y")
local f = string.find return f(nil)
local g = string.gsub return g("x", "x", false)
return pcall(string.find)
return pcall(string.gsub, "x", "(", "y")
return pcall(string.match, "x", "%")
return select("#", string.find("abc", "z"))
return select("#", string.match("abc", "z"))
return select("#", string.find("abc", "b"))
return string.gsub("hello world", "o", "0")
return string.gsub("hello world", "o", "0", 1)
return string.gsub("hello world", "o", "0", 0)
return string.gsub("hello world", "o", "0", -1)
return string.gsub("hello world", "o", "0", 1.9)
return string.gsub("hello world", "o", "0", "1")
return string.gsub("hello world", "o", "0", " 0x1 ")
return string.gsub("hello world", "o", "0", 2^32 + 1)
return string.gsub("hello world", "o", "0", 2^32 - 1)
return string.gsub("hello world", "o", "0", 2^63)
return string.gsub("hello world", "o", "0", -2^63 + 2^40 + 1)
return string.gsub("hello world", "o", "0", 2^31)
return string.gsub("hello world", "o", "0", 3e9)
return string.gsub("hello world", "o", "0", 1e300)
return string.gsub("hello world", "o", "0", 0/0)
return string.gsub("hello world", "o", "0", -math.huge)
return string.gsub("hello world", "o", "0", nil)
return string.gsub("hello", "", "-")
return string.gsub("hello", "x*", "-")
return string.gsub("hello", "^", ">")
return string.gsub("hello", "$", "<")
return string.gsub("hello", "^h", "H")
return string.gsub("hello", "^x", "H")
return string.gsub("hello", "^l*", "L")
return string.gsub("abc", "%w", "%0%0")
return string.gsub("abc", "%w", "%1")
return string.gsub("abc", "%w", "%2")
return string.gsub("abc", "(%w)", "%1%2")
return string.gsub("abc", "(%w)()", "%2")
return string.gsub("abc", "%w", "%%")
return string.gsub("abc", "%w", "%x")
return string.gsub("abc", "%w", "x%")
return string.gsub("abc", "%w", "%")
return string.gsub("abc", "(a", "x")
return string.gsub("abc", "(a", "%1")
return string.gsub("abc", "(a", R.f_first)
return string.gsub("abc", "(a", R.t_plain)
return string.gsub("abc", "%w", 5)
return string.gsub("abc", "%w", 2.5)
return string.gsub("abc", "%w", -0)
return string.gsub(123, 2, 9)
return string.gsub("abc", "%w", R.f_first)
return string.gsub("abc", "(%w)(%w)", R.f_all)
return string.gsub("abc", "()(%w)()", R.f_all)
return string.gsub("abc", "%w", R.f_nil)
return string.gsub("abc", "%w", R.f_false)
return string.gsub("abc", "%w", R.f_none)
return string.gsub("abc", "%w", R.f_num)
return string.gsub("abc", "%w", R.f_negzero)
return string.gsub("abc", "%w", R.f_int)
return string.gsub("abc", "%w", R.f_table)
return string.gsub("abc", "%w", R.f_true)
return string.gsub("abc", "%w", R.f_err)
return string.gsub("abc", "%w", R.f_multi)
return string.gsub("abc", "%w", R.f_nested)
return string.gsub("abc", "%w", R.t_plain)
return string.gsub("abab", "ab", R.t_plain)
return string.gsub("abc", "()", R.t_plain)
return string.gsub("abc", "%w", R.t_meta)
return string.gsub("abc", "()", R.t_meta)
return string.gsub("abc", "", R.f_all)
return string.gsub("a\0b\0", "%z", "<%0>")
return string.gsub("a\0b", "\0", "x")
return string.gsub("\255\254", "[\254\255]", "%0.")
return string.gsub("abc", "b", "\0")
return string.gsub("x = 1, y = 2", "(%w+)%s*=%s*(%w+)", "%2=%1")
return string.gsub("  a  b  ", "%s+", " ")
return string.gsub("abc", ".", { a = 1, b = true })
return string.gsub("abc", ".", { a = {} })
return string.gsub("abc", "b", setmetatable({}, { __index = function() error("idx") end }))
return R.iter(string.gmatch("one two  three", "%a+"))
return R.iter(string.gmatch("k1=v1, k2=v2", "(%w+)=(%w+)"))
return R.iter(string.gmatch("abc", ""))
return R.iter(string.gmatch("abc", "x*"))
return R.iter(string.gmatch("abc", "%a*"))
return R.iter(string.gmatch("", ""))
return R.iter(string.gmatch("", "x"))
return R.iter(string.gmatch("abc", "()"))
return R.iter(string.gmatch("^a^a", "^a"))
return R.iter(string.gmatch("aaa", "^a"))
return R.iter(string.gmatch("a\0b\0c", "[^%z]+"))
return R.iter(string.gmatch(1234, 2))
return R.iter(string.gmatch("abc", "(a"))
return R.iter(string.gmatch("abc", "%"))
return R.iter(string.gmatch("abc", "[a"))
local n = 0 for a, b in ("a=1 b=2 c"):gmatch("(%w)=?(%d?)") do n = n + 1 end return n
local it = ("ab"):gmatch(".") return it(), it(), it(), it()
local it = ("ab"):gmatch(".") it() it() return select("#", it())
local t = {} for w in string.gmatch("x", "[") do t[#t + 1] = w end return #t
for w in string.gmatch("x", "%f") do end
return string.find(("a"):rep(100), ("a"):rep(50) .. "b", 1, true)
return string.find(("ab"):rep(100), "ba", 150, true)
return string.find(("ab"):rep(100) .. "abc", ("ab"):rep(20) .. "c", 1, true)
return string.find(("ab"):rep(100) .. "abc", ("ab"):rep(8) .. "c", 1, true)
return string.find(("ab"):rep(100), ("ab"):rep(8), 190, true)
return string.find(("ab"):rep(100), ("ab"):rep(8) .. "a", 180, true)
return string.find("aab", "ab", 1, true)
return string.find("ab", "abc", 1, true)
return #string.gsub(("x"):rep(1000), "x", "yy")
return string.match(("x"):rep(199) .. "y", ("x?"):rep(199) .. "y")
"##;

#[test]
fn edge_cases_behave_as_luajit() {
    // Each `return f(...)` twice: as written (a tail call, which LuaJIT names '?' without a
    // location) and as `return R.ret(f(...))` (named and located).
    let mut cases = Vec::new();
    for line in EDGE_CASES.lines().filter(|l| !l.trim().is_empty()) {
        cases.push(line.to_string());
        if let Some(expr) = line.strip_prefix("return ") {
            cases.push(format!("return R.ret({expr})"));
        }
    }
    assert!(cases.len() > 450, "{} edge cases", cases.len());
    assert_same(&cases);
}

/// The messages themselves, checked against LuaJIT and ours, so that a harness that broke both
/// sides the same way still fails.
#[test]
fn errors_carry_luajit_text_with_the_callers_location() {
    let c = Runner::new(false);
    let rust = Runner::new(true);
    let expect = [
        // A tail call leaves no caller frame: LuaJIT names the function '?', without a location.
        (
            "return string.find(nil, 'x')",
            "error:bad argument #1 to '?' (string expected, got nil)",
        ),
        (
            "return R.ret(string.find(nil, 'x'))",
            "error:case:1: bad argument #1 to 'find' (string expected, got nil)",
        ),
        (
            "return R.ret(string.find())",
            "error:case:1: bad argument #1 to 'find' (string expected, got no value)",
        ),
        (
            "return R.ret(('x'):find(nil))",
            "error:case:1: bad argument #1 to 'find' (string expected, got nil)",
        ),
        (
            "local t = setmetatable({}, { __index = string }) return R.ret(t:find('x'))",
            "error:case:1: calling 'find' on bad self (string expected, got table)",
        ),
        (
            "local f = string.gsub return R.ret(f('x', 'x', true))",
            "error:case:1: bad argument #3 to 'f' (string/function/table expected)",
        ),
        (
            "return pcall(string.match, 'x', '%')",
            "2:false,\"malformed pattern (ends with '%')\"",
        ),
        (
            "return R.ret(string.find('x', 'x', 'y'))",
            "error:case:1: bad argument #3 to 'find' (number expected, got string)",
        ),
        (
            "return R.ret(string.match('a', '[a'))",
            "error:case:1: malformed pattern (missing ']')",
        ),
        (
            "return R.ret(string.match('a', '%b'))",
            "error:case:1: unbalanced pattern",
        ),
        (
            "return R.ret(string.match('a', '%fa'))",
            "error:case:1: missing '[' after '%f' in pattern",
        ),
        (
            "return R.ret(string.match('a', '%1'))",
            "error:case:1: invalid capture index",
        ),
        (
            "return R.ret(string.match('a', 'a)'))",
            "error:case:1: invalid pattern capture",
        ),
        (
            "return R.ret(string.match('a', '(a'))",
            "error:case:1: unfinished capture",
        ),
        (
            "return R.ret(string.match('aaa', ('a*'):rep(250)))",
            "error:case:1: pattern too complex",
        ),
        (
            "return R.ret(string.match(('a'):rep(33), ('(a)'):rep(33)))",
            "error:case:1: too many captures",
        ),
        (
            "return R.ret(string.gsub('a', 'a', R.f_table))",
            "error:case:1: invalid replacement value (a table)",
        ),
        (
            "return R.ret(string.gsub('a', 'a', '%2'))",
            "error:case:1: invalid capture index",
        ),
    ];
    for (case, want) in expect {
        assert_eq!(c.run(case), want, "LuaJIT: {case}");
        assert_eq!(rust.run(case), want, "Rust: {case}");
    }
}

/// `Vm::new` installs the functions before anything copies the `string` table, so method calls
/// (`("x"):gsub`) get ours: recursion through a `gsub` callback ends with "C stack overflow" at
/// 200 levels, where LuaJIT's C `gsub` would just keep recursing (1000 levels fit its stack).
#[test]
fn the_dataplane_vm_uses_the_rust_functions() {
    let settings = crate::lua::vm::VmSettings {
        worker_id: 0,
        worker_count: 1,
        memory_limit: 64 << 20,
        sockets: Default::default(),
    };
    let dicts: std::sync::Arc<crate::shdict::DictStore> = Default::default();
    let sched = std::rc::Rc::new(crate::sched::Sched::default());
    let timers = std::rc::Rc::new(crate::lua::api::timer::Timers::new(sched.clone()));
    let durable_timers = std::rc::Rc::new(crate::durable_timer::DurableTimers::new(0, 1, dicts.clone(), sched));
    let vm = crate::lua::vm::Vm::new("test", &settings, &dicts, &timers, &durable_timers).expect("create the VM");
    let r: String = vm
        .lua()
        .load(
            r#"
            local function f(n)
              if n == 0 then return "" end
              return (("x"):gsub("x", function() return f(n - 1) end))
            end
            local ok, e = pcall(f, 1000)
            return tostring(ok) .. " " .. tostring(e)
            "#,
        )
        .call(())
        .expect("run");
    assert!(r.starts_with("false ") && r.contains("C stack overflow"), "{r}");
}
