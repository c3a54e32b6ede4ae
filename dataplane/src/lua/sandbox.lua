-- Runs once per worker VM. Returns `new_env(route_ngx, modules, load_module)`
-- which builds one LuaRoute's global environment:
--   * its own copies of the standard library tables and of `ngx`, so one
--     route's monkey-patching never reaches another route;
--   * no string.dump, ffi, debug, io, package.loadlib, dofile/loadfile; `os`
--     reduced to its time functions; load/loadstring accept text only;
--   * its own `require` space over the route's compiled modules.
local G, errmsg, BUDGET_EXCEEDED = ...

local pairs, type, setmetatable, getmetatable, rawget, rawset, error, load, select =
    pairs, type, setmetatable, getmetatable, rawget, rawset, error, load, select
local tostring = tostring

-- Bytecode must never come from user code: remove dump from the real string
-- table (reachable as ("").dump) and hide the string metatable.
string.dump = nil
getmetatable("").__metatable = false

local function copy(t, seen)
    seen = seen or {}
    if seen[t] then
        return seen[t]
    end
    local mt = getmetatable(t)
    local c = {}
    seen[t] = c
    for k, v in pairs(t) do
        if type(v) == "table" then
            c[k] = copy(v, seen)
        else
            c[k] = v
        end
    end
    if mt ~= nil then
        setmetatable(c, mt)
    end
    return c
end

local function out_of_budget(e)
    return type(e) == "string" and e:sub(1, #BUDGET_EXCEEDED) == BUDGET_EXCEEDED
end

local SAFE = {
    "assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget", "rawset",
    "select", "setmetatable", "getmetatable", "tonumber", "tostring", "type", "unpack",
    "xpcall", "_VERSION", "collectgarbage", "gcinfo", "newproxy",
}
local LIBS = { "string", "table", "math", "bit", "coroutine" }
local os_time = { time = os.time, clock = os.clock, date = os.date, difftime = os.difftime }

return function(route_ngx, modules, load_module)
    local env = {}
    for _, name in pairs(SAFE) do
        env[name] = G[name]
    end
    for _, name in pairs(LIBS) do
        env[name] = copy(G[name])
    end
    env.os = copy(os_time)
    env._G = env
    env.ngx = route_ngx

    -- Errors raised by the Rust side of `ngx` reach Lua as plain strings, as
    -- lua-nginx-module's C functions raise them.
    -- A handler past its instruction budget must die, even inside pcall.
    local function caught(ok, ...)
        if ok then
            return ok, ...
        end
        local e = errmsg((...))
        if out_of_budget(e) then
            error(e, 0)
        end
        return false, e
    end
    env.pcall = function(f, ...)
        return caught(pcall(f, ...))
    end
    env.xpcall = function(f, handler, ...)
        return caught(xpcall(f, function(e)
            e = errmsg(e)
            if out_of_budget(e) then
                return e
            end
            return handler(e)
        end, ...))
    end

    env.load = function(chunk, name, _mode, fenv)
        return load(chunk, name, "t", fenv or env)
    end
    env.loadstring = function(s, name)
        return load(s, name, "t", env)
    end
    env.getfenv = function(f)
        if f == nil or f == 0 then
            return env
        end
        if type(f) == "number" then
            f = f + 1
        end
        return getfenv(f)
    end
    env.setfenv = function(f, t)
        if f == 0 then
            error("setfenv: level 0 is not allowed", 2)
        end
        if type(f) == "number" then
            f = f + 1
        end
        return setfenv(f, t)
    end
    env.print = function(...)
        local n = select("#", ...)
        local parts = {}
        for i = 1, n do
            parts[i] = tostring((select(i, ...)))
        end
        route_ngx.log(route_ngx.NOTICE, table.concat(parts, "\t"))
    end

    local loaded = {}
    local builtin = { string = env.string, table = env.table, math = env.math, bit = env.bit,
                      coroutine = env.coroutine, os = env.os, ngx = route_ngx,
                      ["resty.core"] = true, ["resty.core.base"] = { }, }
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
        if name == "ngx.re" then
            loaded[name] = route_ngx.re
            return route_ngx.re
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
