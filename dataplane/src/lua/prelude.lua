-- Runs once in every worker VM, after the Rust side of `ngx` exists.
-- It adds the parts of `ngx` that must yield to the request driver (I/O, exit,
-- exec) and wraps `coroutine` so user coroutines work across those yields, as
-- lua-nginx-module does: an ngx I/O yield inside a user coroutine travels up
-- through every `coroutine.resume` to the entry thread's driver, and the answer
-- travels back down.
local ngx, raw = ...

local co_create, co_resume, co_yield, co_status = coroutine.create, coroutine.resume, coroutine.yield, coroutine.status
local select, error, type, setmetatable = select, error, type, setmetatable

local YIELD = raw.YIELD
local OP_EXIT, OP_SLEEP, OP_FLUSH, OP_EOF, OP_READ_BODY = raw.OP_EXIT, raw.OP_SLEEP, raw.OP_FLUSH, raw.OP_EOF, raw.OP_READ_BODY

-- Only entry threads and coroutines they resume may yield to the driver.
local function driver_yield(...)
    return co_yield(YIELD, ...)
end

local exit, check_yieldable, flush, eof, read_body = raw.exit, raw.check_yieldable, raw.flush, raw.eof, raw.read_body

ngx.exit = function(status)
    if exit(status) then
        return driver_yield(OP_EXIT)
    end
end

ngx.exec = function(uri, args)
    if raw.exec(uri, args) then
        return driver_yield(OP_EXIT)
    end
end

ngx.redirect = function(uri, status)
    if raw.redirect(uri, status) then
        return driver_yield(OP_EXIT)
    end
end

ngx.sleep = function(seconds)
    check_yieldable("ngx.sleep", seconds)
    return driver_yield(OP_SLEEP, seconds)
end

-- Output past a threshold is flushed as it is produced, as nginx sends it,
-- where the handler can yield; the driver applies backpressure there.
local say, print, co_isyieldable_out = raw.say, raw.print, coroutine.isyieldable
local function sent(r, err)
    if r == YIELD then
        if co_isyieldable_out() then
            driver_yield(OP_FLUSH)
        end
        return 1
    end
    return r, err
end
ngx.say = function(...)
    return sent(say(...))
end
ngx.print = function(...)
    return sent(print(...))
end

ngx.flush = function(wait)
    local r, err = flush(wait)
    if r == YIELD then
        return driver_yield(OP_FLUSH)
    end
    return r, err
end

ngx.eof = function()
    local r, err = eof()
    if r == YIELD then
        return driver_yield(OP_EOF)
    end
    return r, err
end

ngx.req.read_body = function()
    if read_body() == YIELD then
        return driver_yield(OP_READ_BODY)
    end
end

-- Coroutines belong to the request (or timer run) that created them, as in
-- lua-nginx-module: resuming a suspended one from another request fails, and
-- so does resuming a suspended entry thread, which the gateway recycles
-- across requests. (LuaJIT itself refuses running, normal and dead ones.)
local owner = setmetatable({}, { __mode = "k" })
local execution, aborted, preempted = raw.execution, raw.aborted, raw.preempted
local co_isyieldable = coroutine.isyieldable
local FOREIGN = "cannot resume a coroutine of another request"

-- Resumes `co`; while it is parked on ngx I/O, passes the request up to our
-- own resumer and hands the answer back. A yield with no values while the
-- count hook has marked a preemption is passed up the same way, so the
-- driver can let other work run; where we cannot yield, `co` simply goes on.
local errmsg = raw.errmsg
-- Coroutines suspended only because one they resumed waits on ngx I/O:
-- "normal" to `coroutine.status`, as in lua-nginx-module.
local relaying = setmetatable({}, { __mode = "k" })
local co_running = coroutine.running
local function passed_down(me, ...)
    relaying[me] = nil
    return ...
end
local function relay(co, ok, ...)
    if ok then
        if co_status(co) == "suspended" then
            if (...) == YIELD then
                local me = co_running()
                relaying[me] = true
                return relay(co, co_resume(co, passed_down(me, co_yield(YIELD, select(2, ...)))))
            end
            if select("#", ...) == 0 then
                local yieldable = co_isyieldable()
                if preempted(yieldable) then
                    if yieldable then
                        co_yield()
                    end
                    return relay(co, co_resume(co))
                end
            end
        end
        return ok, ...
    end
    local e = errmsg((...))
    -- Code past its CPU budget dies, whatever catches the error.
    if aborted() then
        error(e, 0)
    end
    return false, e
end

local coroutine = coroutine
coroutine.create = function(f)
    if type(f) ~= "function" then
        error("bad argument #1 to 'create' (function expected)", 2)
    end
    local co = co_create(f)
    owner[co] = execution()
    return co
end

coroutine.resume = function(co, ...)
    if owner[co] ~= execution() then
        if type(co) ~= "thread" then
            error("bad argument #1 to 'resume' (coroutine expected)", 2)
        end
        if co_status(co) == "suspended" then
            return false, FOREIGN
        end
    end
    return relay(co, co_resume(co, ...))
end

local function unwrap(ok, ...)
    if ok then
        return ...
    end
    error((...), 0)
end

coroutine.wrap = function(f)
    if type(f) ~= "function" then
        error("bad argument #1 to 'wrap' (function expected)", 2)
    end
    local co = co_create(f)
    local mine = execution()
    return function(...)
        if mine ~= execution() and co_status(co) == "suspended" then
            error(FOREIGN, 2)
        end
        return unwrap(relay(co, co_resume(co, ...)))
    end
end

-- Subrequests: the driver runs them and resumes us with the result tables,
-- or with (false, message) when they could not be started.
local function captured(first, ...)
    if first == false then
        error((...), 2)
    end
    return first, ...
end

ngx.location.capture = function(uri, opts)
    check_yieldable("ngx.location.capture", 0)
    return captured(driver_yield(raw.OP_CAPTURE, { { uri, opts } }))
end

ngx.location.capture_multi = function(list)
    check_yieldable("ngx.location.capture_multi", 0)
    if type(list) ~= "table" then
        error("bad argument #1 to 'capture_multi' (table expected, got " .. type(list) .. ")", 2)
    end
    return captured(driver_yield(raw.OP_CAPTURE, list))
end

ngx.req.set_uri = function(uri, jump, binary)
    if raw.set_uri(uri, jump, binary) then
        return driver_yield(OP_EXIT)
    end
end

-- Cosockets (api/socket): a socket is a table holding its userdata at [1],
-- as in lua-nginx-module. A primitive that must wait parks its I/O and
-- returns YIELD; `await` then yields to the driver, which resumes us with
-- the results. Where we cannot yield (inside a C call such as a sort
-- comparator), the parked I/O is dropped and the call fails, as nginx fails
-- a yield across a C-call boundary.
local sock, drop_parked, OP_AWAIT = raw.socket, raw.drop_parked, raw.OP_AWAIT
local rawget, ipairs = rawget, ipairs
local function await(r, ...)
    if r == YIELD then
        if not co_isyieldable() then
            drop_parked()
            error("attempt to yield across C-call boundary", 2)
        end
        return driver_yield(OP_AWAIT)
    end
    return r, ...
end

local function socket_of(self, method)
    if type(self) ~= "table" then
        error("bad argument #1 to '" .. method .. "' (table expected, got " .. type(self) .. ")", 3)
    end
    local ud = rawget(self, 1)
    if ud == nil then
        error("bad argument #1 to '" .. method .. "' (socket object expected)", 3)
    end
    return ud
end

local function class(prefix, methods)
    local index = {}
    for _, m in ipairs(methods) do
        local f = sock[prefix .. m]
        index[m] = function(self, ...)
            return await(f(socket_of(self, m), ...))
        end
    end
    return index
end

local tcp = class("tcp_", { "connect", "sslhandshake", "send", "receive", "receiveany", "close",
                            "setkeepalive", "getreusedtimes", "settimeout", "settimeouts", "setoption" })
local tcp_receiveuntil, tcp_read_until = sock.tcp_receiveuntil, sock.tcp_read_until
tcp.receiveuntil = function(self, pattern, opts)
    local ud = socket_of(self, "receiveuntil")
    local it, err = tcp_receiveuntil(ud, pattern, opts)
    if not it then
        return nil, err
    end
    return function(size)
        return await(tcp_read_until(ud, it, size))
    end
end
-- Shared by every route of the VM, so out of their reach: `__metatable`
-- hides it from getmetatable.
local tcp_mt = { __index = tcp, __metatable = false }

local udp = class("udp_", { "setpeername", "send", "receive", "settimeout", "close" })
local udp_mt = { __index = udp, __metatable = false }

local tcp_new, udp_new = sock.tcp_new, sock.udp_new
raw.socket_api = function(route)
    local api = {}
    api.tcp = function()
        return setmetatable({ tcp_new(route) }, tcp_mt)
    end
    api.udp = function()
        return setmetatable({ udp_new() }, udp_mt)
    end
    api.stream = api.tcp
    api.connect = function(...)
        local s = api.tcp()
        local ok, err = s:connect(...)
        if not ok then
            return nil, err
        end
        return s
    end
    return api
end

-- Light threads: the driver schedules them (phase/threads.rs). A spawned
-- thread is a coroutine of this request, so `coroutine.status` sees it and
-- `coroutine.resume` of another request's thread is refused as for any.
local OP_SPAWN, OP_WAIT, OP_KILL = raw.OP_SPAWN, raw.OP_WAIT, raw.OP_KILL
local lights = setmetatable({}, { __mode = "k" })
-- wait and kill answer (reaped thread or nil, results...), or (YIELD, err)
-- for an error to raise.
local function reaped(co, ...)
    if co == YIELD then
        error((...), 2)
    end
    if co ~= nil then
        lights[co] = nil
    end
    return ...
end
-- A light thread waiting on I/O is "running" to Lua code, as in
-- lua-nginx-module: only the driver, not a coroutine.resume, resumes it.
coroutine.status = function(co)
    local status = co_status(co)
    if status == "suspended" and relaying[co] then
        return "normal"
    end
    if lights[co] then
        -- Waiting on I/O is running; ended but not waited for, a zombie.
        if status == "suspended" then
            return "running"
        elseif status == "dead" then
            return "zombie"
        end
    end
    return status
end
ngx.thread = {
    spawn = function(f, ...)
        check_yieldable("ngx.thread.spawn", 0)
        if type(f) ~= "function" then
            error("bad argument #1 to 'spawn' (function expected, got " .. type(f) .. ")", 2)
        end
        local co = co_create(f)
        owner[co] = execution()
        lights[co] = true
        return driver_yield(OP_SPAWN, co, ...)
    end,
    wait = function(...)
        check_yieldable("ngx.thread.wait", 0)
        return reaped(driver_yield(OP_WAIT, ...))
    end,
    kill = function(t)
        check_yieldable("ngx.thread.kill", 0)
        return reaped(driver_yield(OP_KILL, t))
    end,
}

-- ngx.req.socket(): the request body as a read-only cosocket; the driver
-- serves each read from the client's stream (phase/req_socket.rs).
local OP_REQ_SOCKET, req_socket, until_new = raw.OP_REQ_SOCKET, raw.req_socket, sock.until_new
local req_sock = {}
req_sock.receive = function(self, pattern)
    return driver_yield(OP_REQ_SOCKET, "receive", pattern)
end
req_sock.receiveuntil = function(self, pattern, opts)
    local it, err = until_new(pattern, opts)
    if not it then
        return nil, err
    end
    return function(size)
        return driver_yield(OP_REQ_SOCKET, "until", it, size)
    end
end
req_sock.settimeout = function(self, ms)
    driver_yield(OP_REQ_SOCKET, "settimeout", ms)
end
req_sock.settimeouts = function(self, _, _, ms)
    driver_yield(OP_REQ_SOCKET, "settimeout", ms)
end
local req_sock_mt = { __index = req_sock, __metatable = false }
ngx.req.socket = function(raw_mode)
    local ok, err = req_socket(raw_mode)
    if not ok then
        return nil, err
    end
    if raw_mode then
        -- The driver sends the 101 head and attaches the switched
        -- connection to a tcp socket object (phase/req_socket.rs).
        local s = setmetatable({ tcp_new("") }, tcp_mt)
        ok, err = driver_yield(OP_REQ_SOCKET, "raw", s[1])
        if not ok then
            return nil, err
        end
        return s
    end
    return setmetatable({}, req_sock_mt)
end
