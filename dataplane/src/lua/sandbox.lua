-- Runs once per tenant VM, after the prelude, in the VM's host environment.
-- Returns `new_env(route_ngx, modules, load_module)`, which builds one
-- LuaRoute's global environment.
--
-- The environment is an allowlist: exactly the names below reach route code,
-- and nothing else of the host (its `_G`, `os`, `load`, `jit`, `newproxy`,
-- `debug` (a route's has only `traceback`), the host's `io`, the string
-- metatable, this chunk's upvalues) is reachable
-- from it. `sandbox_tests.rs` walks everything a route can reach and fails
-- on anything off the list.
--
-- Invariants:
--   * each route gets its own copies of the library tables and of `ngx`: what
--     one route changes, no other route sees;
--   * what routes share is immutable to them: C functions, this chunk's
--     wrappers, and the string metatable (protected by `__metatable`);
--   * `getfenv`/`setfenv` only ever return or change environments the route
--     owns (its `_G` and tables it installed as environments);
--   * an error caught by `pcall`/`xpcall` while the running code is past its
--     CPU budget is raised again, so nothing swallows the budget error;
--   * C functions whose work grows with their input charge it to the running
--     code's budget (`charge`), so no loop of them escapes the count.
local G, raw = ...

local pairs, type, setmetatable, getmetatable, rawget, rawset, error, select, tostring, tonumber, next =
    pairs, type, setmetatable, getmetatable, rawget, rawset, error, select, tostring, tonumber, next
local real_getfenv, real_setfenv, real_load, real_pcall, real_xpcall = getfenv, setfenv, load, pcall, xpcall
local concat = table.concat
local errmsg, aborted, charge, charge_n, gc = raw.errmsg, raw.aborted, raw.charge, raw.charge_n, raw.gc
local traceback = raw.traceback
-- The built-in library set (`lua/lib`): module name -> constructor(route_ngx, env),
-- called once per route on its first `require`, so each route has its own
-- instance (its own cjson settings, its own caches).
local libs = raw.libs

-- Bytecode must never come from user code: no string.dump anywhere (it is
-- reachable as ("").dump), and the string metatable is hidden.
string.dump = nil
getmetatable("").__metatable = false

-- C functions whose work grows with their input but allocate nothing in
-- proportion (allocation is charged by the VM's allocator, see memory.rs)
-- charge it to the running code, so a loop of them cannot escape the count.
-- They check cheaply and tail-call the original, so its error messages keep
-- naming the function and the caller's line.
local sort, insert, remove, maxn, unpack, byte = table.sort, table.insert, table.remove, table.maxn, unpack, string.byte
local floor, rawget, rawset, error = math.floor, rawget, rawset, error

local function charge_len(t)
    if type(t) == "table" then
        local n = #t
        if n > 64 then
            charge_n(n)
        end
    end
end
table.insert = function(t, ...)
    if select("#", ...) > 1 then
        charge_len(t)
    end
    return insert(t, ...)
end
table.remove = function(t, ...)
    charge_len(t)
    return remove(t, ...)
end
table.maxn = function(t)
    charge_len(t)
    return maxn(t)
end
-- With a comparator, table.sort is LuaJIT's own algorithm (lib_table.c's
-- auxsort, the same comparisons in the same order, so results and
-- "invalid order function" errors match) written in Lua: the comparator is
-- then called from Lua, so a slow one is preempted like any Lua code rather
-- than running as one unpreemptible stretch inside C. Returns false where
-- C raises, so the error can name the caller's line.
local function auxsort(t, l, u, cmp)
    while l < u do
        local al, au = rawget(t, l), rawget(t, u)
        if cmp(au, al) then
            rawset(t, l, au)
            rawset(t, u, al)
        end
        if u - l == 1 then
            break
        end
        local i = floor((l + u) / 2)
        local ai
        ai, al = rawget(t, i), rawget(t, l)
        if cmp(ai, al) then
            rawset(t, i, al)
            rawset(t, l, ai)
        else
            au = rawget(t, u)
            if cmp(au, ai) then
                rawset(t, i, au)
                rawset(t, u, ai)
            end
        end
        if u - l == 2 then
            break
        end
        local p = rawget(t, i)
        rawset(t, i, rawget(t, u - 1))
        rawset(t, u - 1, p)
        local j
        i, j = l, u - 1
        while true do
            i = i + 1
            ai = rawget(t, i)
            while cmp(ai, p) do
                if i >= u then
                    return false
                end
                i = i + 1
                ai = rawget(t, i)
            end
            j = j - 1
            local aj = rawget(t, j)
            while cmp(p, aj) do
                if j <= l then
                    return false
                end
                j = j - 1
                aj = rawget(t, j)
            end
            if j < i then
                break
            end
            rawset(t, i, aj)
            rawset(t, j, ai)
        end
        local aum1 = rawget(t, u - 1)
        rawset(t, u - 1, rawget(t, i))
        rawset(t, i, aum1)
        if i - l < u - i then
            j, i, l = l, i - 1, i + 1
        else
            j, i, u = i + 1, u, i - 1
        end
        if auxsort(t, j, i, cmp) == false then
            return false
        end
    end
end
table.sort = function(t, cmp)
    if type(t) ~= "table" or type(cmp) ~= "function" then
        if type(t) == "table" then
            local n = #t
            if n > 64 then
                -- n log2 n comparisons, in C.
                local log = 1
                while 2 ^ log < n do
                    log = log + 1
                end
                charge_n(n * log)
            end
        end
        return sort(t, cmp)
    end
    if auxsort(t, 1, #t, cmp) == false then
        error("invalid order function for sorting", 2)
    end
end
string.byte = function(s, i, j)
    if j ~= nil and type(s) == "string" and #s > 64 then
        charge_n(#s)
    end
    return byte(s, i, j)
end
local function route_unpack(t, i, j)
    if type(t) == "table" and (j or #t) - (i or 1) > 64 then
        charge_n((j or #t) - (i or 1))
    end
    return unpack(t, i, j)
end
-- A `__tostring` of `tostring` itself loops inside C, where the count hook
-- never fires; through this wrapper every round runs Lua, which is counted.
local real_tostring = tostring
local function route_tostring(v)
    return real_tostring(v)
end
local function route_tonumber(v, base)
    if type(v) == "string" and #v > 4096 then
        charge(#v)
    end
    return tonumber(v, base)
end

-- The allowlist.
local BASE = {
    "assert", "error", "ipairs", "next", "pairs", "rawequal", "rawget", "rawset", "select",
    "setmetatable", "getmetatable", "type", "_VERSION", "gcinfo",
}
local LIBS = {
    string = { "byte", "char", "find", "format", "gmatch", "gsub", "len", "lower", "match", "rep",
               "reverse", "sub", "upper" },
    table = { "concat", "insert", "maxn", "remove", "sort", "foreach", "foreachi", "getn" },
    math = { "abs", "acos", "asin", "atan", "atan2", "ceil", "cos", "cosh", "deg", "exp", "floor",
             "fmod", "frexp", "huge", "ldexp", "log", "log10", "max", "min", "modf", "pi", "pow",
             "rad", "sin", "sinh", "sqrt", "tan", "tanh" },
    bit = { "tobit", "tohex", "bnot", "band", "bor", "bxor", "lshift", "rshift", "arshift", "rol",
            "ror", "bswap" },
    coroutine = { "create", "resume", "running", "status", "wrap", "yield", "isyieldable" },
    os = { "time", "clock", "date", "difftime" },
}

-- Copies `names` of `from` into a new table.
local function pick(from, names)
    local t = {}
    for _, name in pairs(names) do
        t[name] = from[name]
    end
    return t
end

-- The VM-wide knobs go away from the host too: nothing that runs later in
-- this VM can reach them by name.
for _, name in pairs({ "execute", "exit", "remove", "rename", "tmpname", "getenv", "setlocale" }) do
    os[name] = nil
end
for _, name in pairs({ "dofile", "loadfile", "load", "loadstring", "newproxy", "collectgarbage",
                       "getfenv", "setfenv", "module", "require", "package", "jit", "print" }) do
    rawset(G, name, nil)
end

return function(route_ngx, modules, load_module)
    local env = {}
    for _, name in pairs(BASE) do
        env[name] = G[name]
    end
    for lib, names in pairs(LIBS) do
        env[lib] = pick(G[lib], names)
    end
    env.unpack = route_unpack
    env.tostring = route_tostring
    env.tonumber = route_tonumber
    -- Per route: seeding or drawing never changes what another route draws.
    env.math.random, env.math.randomseed = raw.random()
    env._G = env
    env.ngx = route_ngx
    env.debug = { traceback = traceback }

    -- Tables this route may see as and install as environments.
    local owned = setmetatable({}, { __mode = "k" })
    owned[env] = true

    -- Errors raised by the Rust side of `ngx` reach Lua as plain strings, as
    -- lua-nginx-module's C functions raise them. Code past its budget must
    -- die, even inside pcall.
    local function caught(ok, ...)
        if ok then
            return ok, ...
        end
        local e = errmsg((...))
        if aborted() then
            error(e, 0)
        end
        return false, e
    end
    env.pcall = function(f, ...)
        return caught(real_pcall(f, ...))
    end
    env.xpcall = function(f, handler, ...)
        return caught(real_xpcall(f, function(e)
            e = errmsg(e)
            if aborted() then
                return e
            end
            return handler(e)
        end, ...))
    end

    env.load = function(chunk, name, _mode, fenv)
        if fenv ~= nil then
            if type(fenv) ~= "table" then
                error("bad argument #4 to 'load' (table expected, got " .. type(fenv) .. ")", 2)
            end
            owned[fenv] = true
        end
        return real_load(chunk, name, "t", fenv or env)
    end
    env.loadstring = function(s, name)
        return real_load(s, name, "t", env)
    end

    -- Levels are shifted by one for this wrapper's own frame.
    env.getfenv = function(f)
        if f == nil then
            f = 1
        end
        local t = type(f)
        if t == "number" then
            if f < 0 then
                error("bad argument #1 to 'getfenv' (level must be non-negative)", 2)
            end
            if f == 0 then
                return env
            end
            f = f + 1
        elseif t ~= "function" then
            error("bad argument #1 to 'getfenv' (number expected, got " .. t .. ")", 2)
        end
        local found = real_getfenv(f)
        -- C functions and the gateway's own Lua live in the host: the route
        -- sees its own globals in their place.
        if owned[found] then
            return found
        end
        return env
    end
    env.setfenv = function(f, t)
        if type(t) ~= "table" then
            error("bad argument #2 to 'setfenv' (table expected, got " .. type(t) .. ")", 2)
        end
        local kind = type(f)
        if kind == "number" then
            if f <= 0 then
                error("bad argument #1 to 'setfenv' (the thread's environment cannot be changed)", 2)
            end
            f = f + 1
        elseif kind ~= "function" then
            error("bad argument #1 to 'setfenv' (number expected, got " .. kind .. ")", 2)
        end
        if not owned[real_getfenv(f)] then
            error("'setfenv' cannot change the environment of this function", 2)
        end
        owned[t] = true
        real_setfenv(f, t)
        if kind == "function" then
            return f
        end
    end

    -- The collector is shared by every route of the namespace: a route may
    -- measure it and ask for work, never stop or retune it.
    env.collectgarbage = function(opt, arg)
        if opt == nil then
            opt = "collect"
        end
        if opt == "count" or opt == "collect" or opt == "step" then
            return gc(opt, arg)
        end
        error("bad argument #1 to 'collectgarbage' (\"" .. real_tostring(opt)
            .. "\" is not allowed: the collector is shared with other routes)", 2)
    end

    env.print = function(...)
        local n = select("#", ...)
        local parts = {}
        for i = 1, n do
            parts[i] = route_tostring((select(i, ...)))
        end
        route_ngx.log(route_ngx.NOTICE, concat(parts, "\t"))
    end

    -- `io` without files: libraries that capture `io.open` and friends at load
    -- time (lua-resty-template) load, and every way to a file or a process
    -- answers as a failed open does (nil, err), never with the host's `io`.
    -- Standard output and standard error go to the error log at NOTICE, as
    -- `print` does: under nginx, stderr is the error log, and a route has no
    -- terminal of its own. One line per write, a trailing newline dropped.
    -- Each refusal is also logged at WARN: libraries often drop io.open's error and fall
    -- back (lua-resty-template renders a view it cannot open as the template text), and
    -- the log is then the only place that says why.
    local function denied(path)
        local err = route_tostring(path) .. ": file access is not allowed in a LuaRoute"
        route_ngx.log(route_ngx.WARN, "io refused: ", err)
        return nil, err
    end
    local files = setmetatable({}, { __mode = "k" })
    local function writer(fname)
        return function(f, ...)
            for i = 1, select("#", ...) do
                local v = select(i, ...)
                local t = type(v)
                if t ~= "string" and t ~= "number" then
                    error("bad argument #" .. i .. " to '" .. fname .. "' (string expected, got " .. t .. ")", 2)
                end
            end
            local s = concat({ ... })
            if s:sub(-1) == "\n" then
                s = s:sub(1, -2)
            end
            if s ~= "" then
                route_ngx.log(route_ngx.NOTICE, s)
            end
            return f
        end
    end
    local function std_file(name)
        local f = {}
        local write = writer("write")
        f.write = function(self, ...)
            return write(self, ...)
        end
        f.flush = function(self)
            return self
        end
        f.setvbuf = function()
            return true
        end
        f.close = function()
            return nil, "cannot close standard file"
        end
        f.read = function()
            return nil
        end
        f.lines = function()
            return function() return nil end
        end
        f.seek = function()
            return nil, "Illegal seek", 29
        end
        files[f] = name
        return f
    end
    local io = {}
    io.stdout, io.stderr, io.stdin = std_file("stdout"), std_file("stderr"), std_file("stdin")
    local io_write = writer("write")
    io.write = function(...)
        return io_write(io.stdout, ...)
    end
    io.read = function()
        return nil
    end
    io.open = function(path)
        return denied(path)
    end
    io.popen = function(prog)
        return denied(prog)
    end
    io.tmpfile = function()
        return denied("tmpfile")
    end
    io.lines = function(path)
        if path == nil then
            return function() return nil end
        end
        local _, err = denied(path)
        error(err, 2)
    end
    io.input = function(f)
        if f ~= nil and files[f] == nil then
            local _, err = denied(f)
            error(err, 2)
        end
        return io.stdin
    end
    io.output = function(f)
        if f ~= nil and files[f] == nil then
            local _, err = denied(f)
            error(err, 2)
        end
        return io.stdout
    end
    io.close = function(f)
        return nil, "cannot close standard file"
    end
    io.type = function(f)
        if files[f] then
            return "file"
        end
        return nil
    end
    env.io = io

    local loaded = {}
    local builtin = { string = env.string, table = env.table, math = env.math, bit = env.bit,
                      coroutine = env.coroutine, os = env.os, io = env.io, ngx = route_ngx, debug = env.debug,
                      ["resty.core"] = true, ["resty.core.base"] = {}, }
    for name, v in pairs(builtin) do
        loaded[name] = v
    end
    env.package = { loaded = loaded, path = "", cpath = "" }
    env.require = function(name)
        if type(name) ~= "string" then
            error("bad argument #1 to 'require' (string expected, got " .. type(name) .. ")", 2)
        end
        local v = loaded[name]
        if v ~= nil then
            return v
        end
        if builtin[name] ~= nil then
            loaded[name] = builtin[name]
            return builtin[name]
        end
        local make = libs[name]
        if make ~= nil then
            local m = make(route_ngx, env)
            loaded[name] = m
            return m
        end
        if name == "ngx.re" or name == "ngx.balancer" then
            local m = route_ngx[name:sub(5)]
            loaded[name] = m
            return m
        end
        local f = modules[name]
        if f == nil then
            error("module '" .. name .. "' not found: no such module in this LuaRoute", 2)
        end
        f = load_module(f, env)
        local r = f(name)
        if r == nil then
            r = rawget(loaded, name)
            if r == nil then
                r = true
            end
        end
        loaded[name] = r
        return r
    end
    return env
end
