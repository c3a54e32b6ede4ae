-- The Lua side of ngx_modules.rs: builds one of `ngx.base64`, `ngx.resp`,
-- `ngx.process`, `ngx.errlog` for one route. Runs in the route's own
-- environment; everything it needs beyond the route's globals comes in as
-- arguments, captured here at require time as resty.core captures its locals.
local name, ngx, native = ...
local type, error, tostring = type, error, tostring
local version = 10023  -- resty.core's base.version for lua-nginx-module 0.10.23

if name == "ngx.base64" then
    local encode, decode = native.encode_base64url, native.decode_base64url
    local M = { version = version }
    function M.encode_base64url(s)
        if type(s) ~= "string" then
            return nil, "must provide a string"
        end
        return encode(s)
    end
    function M.decode_base64url(s)
        if type(s) ~= "string" then
            return nil, "must provide a string"
        end
        local r = decode(s)
        if r == nil then
            return nil, "invalid input"
        end
        return r
    end
    return M
end

if name == "ngx.resp" then
    local add = native.add_header
    local M = { version = version }
    function M.add_header(key, value)
        if type(key) ~= "string" then
            key = tostring(key)
        end
        if value == nil or (type(value) == "table" and #value == 0) then
            error("invalid header value", 2)
        end
        add(key, value)
    end
    return M
end

if name == "ngx.process" then
    local pid = native.pid
    local get_phase = ngx.get_phase
    local M = { version = version }
    -- Every Lua handler runs in a worker; there are no helper or agent processes.
    function M.type()
        return "worker"
    end
    function M.enable_privileged_agent()
        if get_phase == nil or get_phase() ~= "init" then
            return nil, "API disabled in the current context"
        end
        return nil, "privileged agent processes are not available in a LuaRoute"
    end
    -- A route may not stop the gateway; upstream returns nothing, so callers
    -- that ignore the result behave as if the signal were pending.
    function M.signal_graceful_exit()
        return nil, "not allowed in a LuaRoute: the gateway's lifecycle is its operator's"
    end
    -- One process plays master and workers: its pid.
    function M.get_master_pid()
        return pid()
    end
    return M
end

if name == "ngx.errlog" then
    local log, level_of = ngx.log, native.sys_filter_level
    local M = { version = version }
    -- The error log is shared with every other route: it can be written, not
    -- re-filtered or read back. These are upstream's answers when
    -- lua_capture_error_log is not configured.
    function M.set_filter_level(level)
        if not level then
            return nil, [[missing "level" argument]]
        end
        return nil, [[directive "lua_capture_error_log" is not set]]
    end
    function M.get_logs()
        return nil, [[directive "lua_capture_error_log" is not set]]
    end
    function M.get_sys_filter_level()
        return level_of()
    end
    function M.raw_log(level, msg)
        if type(level) ~= "number" then
            error("bad argument #1 to 'raw_log' (must be a number)", 2)
        end
        if type(msg) ~= "string" then
            error("bad argument #2 to 'raw_log' (must be a string)", 2)
        end
        if level < 0 or level > 8 or level % 1 ~= 0 then
            error("bad log level", 2)
        end
        log(level, msg)
    end
    return M
end

error("ngx_modules: unknown module " .. tostring(name))
