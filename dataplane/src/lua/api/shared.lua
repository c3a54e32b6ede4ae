-- ngx.shared.DICT methods: the Lua layer over the Rust primitives of
-- shared.rs, instantiated once per route. Called with the primitives table;
-- returns the metatable of dict objects (its __index is itself).
--
-- It checks arguments and shapes results exactly as lua-resty-core (get,
-- set, incr, ttl, ...) and lua-nginx-module's C functions (lists, get_keys,
-- flush_expired) do: same messages, same error levels (the user's call site
-- for the former, no position for the latter), same number of results. The
-- numeric store ops are nginx's (0 set, 1 add, 2 replace, 4 safe_set,
-- 5 safe_add). Only locals are used, so changing this chunk's environment
-- changes nothing.
--
-- Beyond OpenResty, the writes take an options table as their last argument;
-- `{sync = true}` waits for the write's commit (see shared.rs).
local raw = ...
local r_get, r_store, r_incr = raw.get, raw.store, raw.incr
local r_push, r_pop, r_llen = raw.push, raw.pop, raw.llen
local r_ttl, r_expire, r_flush_all = raw.ttl, raw.expire, raw.flush_all
local r_flush_expired, r_get_keys = raw.flush_expired, raw.get_keys
local r_capacity, r_free_space, argerror = raw.capacity, raw.free_space, raw.argerror
local r_sync_check, r_sync_ticket, r_await = raw.sync_check, raw.sync_ticket, raw.await
local type, tostring, tonumber, error, select, rawget = type, tostring, tonumber, error, select, rawget

local function check_zone(zone)
    if type(zone) ~= "table" then
        error('bad "zone" argument', 3)
    end
    local ud = zone[1]
    if type(ud) ~= "userdata" then
        error('bad "zone" argument', 3)
    end
    return ud
end

-- Keys of the FFI-based methods: anything but nil goes through tostring.
local function norm_key(key)
    if type(key) ~= "string" then
        key = tostring(key)
    end
    local n = #key
    if n == 0 then
        return nil, "empty key"
    end
    if n > 65535 then
        return nil, "key too long"
    end
    return key
end

-- Keys of the C methods (luaL_checklstring): strings and numbers only; the
-- third result names a bad type.
local function c_key(key)
    local t = type(key)
    if t == "number" then
        key = tostring(key)
    elseif t ~= "string" then
        return nil, nil, t
    end
    local n = #key
    if n == 0 then
        return nil, "empty key"
    end
    if n > 65535 then
        return nil, "key too long"
    end
    return key
end

local function c_zone(zone)
    if type(zone) ~= "table" then
        error('bad "zone" argument', 0)
    end
    local ud = rawget(zone, 1)
    if type(ud) ~= "userdata" then
        error('bad "zone" argument', 0)
    end
    return ud
end

-- The options table of a write: true when it asks for a sync write, after
-- checking that this context may wait for it. `level` is the user's call.
local function want_sync(opts, level)
    if opts == nil then
        return false
    end
    if type(opts) ~= "table" then
        error('bad "opts" argument (table expected, got ' .. type(opts) .. ")", level + 1)
    end
    if not opts.sync then
        return false
    end
    local refused = r_sync_check()
    if refused then
        error(refused, 0)
    end
    return true
end

-- Waits for the commit of everything written so far, this call's write
-- included: true, or false and why. At once for a dict without persistence.
local function await_commit(ud)
    local ticket = r_sync_ticket(ud)
    if ticket == nil then
        return true
    end
    return r_await(ticket)
end

local function get(zone, key)
    local ud = check_zone(zone)
    if key == nil then
        return nil, "nil key"
    end
    local k, err = norm_key(key)
    if not k then
        return nil, err
    end
    local val, flags, gerr = r_get(ud, k, false)
    if gerr then
        return nil, gerr
    end
    if val == nil then
        return nil
    end
    if flags ~= 0 then
        return val, flags
    end
    return val
end

local function get_stale(zone, key)
    local ud = check_zone(zone)
    if key == nil then
        return nil, "nil key"
    end
    local k, err = norm_key(key)
    if not k then
        return nil, err
    end
    local val, flags, gerr, stale = r_get(ud, k, true)
    if gerr then
        return nil, gerr
    end
    if val == nil then
        return nil
    end
    if flags ~= 0 then
        return val, flags, stale
    end
    return val, nil, stale
end

local function store(op, zone, key, value, exptime, flags, opts)
    local ud = check_zone(zone)
    local sync = want_sync(opts, 2)
    if not exptime then
        exptime = 0
    elseif exptime < 0 then
        error('bad "exptime" argument', 2)
    end
    if not flags then
        flags = 0
    elseif type(flags) ~= "number" then
        error("cannot convert '" .. type(flags) .. "' to 'int'", 2)
    end
    if key == nil then
        return nil, "nil key"
    end
    local k, err = norm_key(key)
    if not k then
        return nil, err
    end
    local t = type(value)
    if t ~= "string" and t ~= "number" and t ~= "boolean" and t ~= "nil" then
        return nil, "bad value type"
    end
    local ok, serr, forcible = r_store(ud, op, k, value, exptime * 1000, flags)
    if sync and ok then
        local done, why = await_commit(ud)
        if not done then
            return false, why, forcible
        end
    end
    return ok, serr, forcible
end

local function incr(zone, key, value, init, init_ttl, opts)
    local ud = check_zone(zone)
    local sync = want_sync(opts, 2)
    if key == nil then
        return nil, "nil key"
    end
    local k, err = norm_key(key)
    if not k then
        return nil, err
    end
    if type(value) ~= "number" then
        value = tonumber(value)
        if value == nil then
            error("cannot convert 'nil' to 'double'", 2)
        end
    end
    if init then
        local t = type(init)
        if t ~= "number" then
            init = tonumber(init)
            if not init then
                error("bad init arg: number expected, got " .. t, 2)
            end
        end
    end
    if init_ttl ~= nil then
        local t = type(init_ttl)
        if t ~= "number" then
            init_ttl = tonumber(init_ttl)
            if not init_ttl then
                error("bad init_ttl arg: number expected, got " .. t, 2)
            end
        end
        if init_ttl < 0 then
            error('bad "init_ttl" argument', 2)
        end
        if not init then
            error('must provide "init" when providing "init_ttl"', 2)
        end
    else
        init_ttl = 0
    end
    local num, ierr, forcible = r_incr(ud, k, value, init or nil, init_ttl * 1000)
    if ierr then
        return nil, ierr
    end
    if sync then
        local done, why = await_commit(ud)
        if not done then
            return nil, why
        end
    end
    if not init then
        return num
    end
    return num, nil, forcible
end

local function push(front, ...)
    local n = select("#", ...)
    local zone, key, value, opts = ...
    -- A fourth argument is accepted only as the options table.
    if n ~= 3 and not (n == 4 and (opts == nil or type(opts) == "table")) then
        error("expecting 3 arguments, but only seen " .. n, 0)
    end
    local ud = c_zone(zone)
    local sync = want_sync(opts, 3)
    if key == nil then
        return nil, "nil key"
    end
    local k, err, bad = c_key(key)
    if bad then
        error(argerror(2, 2, "string expected, got " .. bad), 0)
    end
    if not k then
        return nil, err
    end
    local t = type(value)
    if t ~= "string" and t ~= "number" then
        return nil, "bad value type"
    end
    local len, perr = r_push(ud, front, k, value)
    if sync and len then
        local done, why = await_commit(ud)
        if not done then
            return nil, why
        end
    end
    return len, perr
end

-- pop and llen share everything but the primitive.
local function keyed(prim, arg, ...)
    local n = select("#", ...)
    if n ~= 2 then
        error("expecting 2 arguments, but only seen " .. n, 0)
    end
    local zone, key = ...
    local ud = c_zone(zone)
    if key == nil then
        return nil, "nil key"
    end
    local k, err, bad = c_key(key)
    if bad then
        error(argerror(2, 2, "string expected, got " .. bad), 0)
    end
    if not k then
        return nil, err
    end
    return prim(ud, k, arg)
end

-- get_keys and flush_expired: (zone [, count]) with luaL_checkint.
local function counted(prim, default, ...)
    local n = select("#", ...)
    if n ~= 1 and n ~= 2 then
        error("expecting 1 or 2 argument(s), but saw " .. n, 0)
    end
    local zone, count = ...
    if type(zone) ~= "table" then
        error(argerror(2, 1, "table expected, got " .. type(zone)), 0)
    end
    local ud = rawget(zone, 1)
    if type(ud) ~= "userdata" then
        error("bad user data for the ngx_shm_zone_t pointer", 0)
    end
    if n == 2 then
        local c = tonumber(count)
        if c == nil then
            error(argerror(2, 2, "number expected, got " .. type(count)), 0)
        end
        default = c
    end
    return prim(ud, default)
end

local mt = {}
mt.__index = mt
mt.get = get
mt.get_stale = get_stale
mt.set = function(zone, key, value, exptime, flags, opts)
    return store(0, zone, key, value, exptime, flags, opts)
end
mt.safe_set = function(zone, key, value, exptime, flags, opts)
    return store(4, zone, key, value, exptime, flags, opts)
end
mt.add = function(zone, key, value, exptime, flags, opts)
    return store(1, zone, key, value, exptime, flags, opts)
end
mt.safe_add = function(zone, key, value, exptime, flags, opts)
    return store(5, zone, key, value, exptime, flags, opts)
end
mt.replace = function(zone, key, value, exptime, flags, opts)
    return store(2, zone, key, value, exptime, flags, opts)
end
mt.delete = function(zone, key, opts)
    return store(0, zone, key, nil, nil, nil, opts)
end
mt.incr = incr
mt.lpush = function(...)
    local len, err = push(true, ...)
    if len == nil then
        return len, err
    end
    return len
end
mt.rpush = function(...)
    local len, err = push(false, ...)
    if len == nil then
        return len, err
    end
    return len
end
mt.lpop = function(...)
    local val, err = keyed(r_pop, true, ...)
    if err ~= nil then
        return nil, err
    end
    return val
end
mt.rpop = function(...)
    local val, err = keyed(r_pop, false, ...)
    if err ~= nil then
        return nil, err
    end
    return val
end
mt.llen = function(...)
    local len, err = keyed(r_llen, nil, ...)
    if err ~= nil then
        return nil, err
    end
    return len
end
mt.flush_all = function(zone)
    r_flush_all(check_zone(zone))
end
mt.flush_expired = function(...)
    return (counted(r_flush_expired, 0, ...))
end
mt.get_keys = function(...)
    return (counted(r_get_keys, 1024, ...))
end
mt.ttl = function(zone, key)
    local ud = check_zone(zone)
    if key == nil then
        return nil, "nil key"
    end
    local k, err = norm_key(key)
    if not k then
        return nil, err
    end
    local ms = r_ttl(ud, k)
    if ms == nil then
        return nil, "not found"
    end
    return ms / 1000
end
mt.expire = function(zone, key, exptime)
    local ud = check_zone(zone)
    if not exptime then
        error('bad "exptime" argument', 2)
    end
    if key == nil then
        return nil, "nil key"
    end
    local k, err = norm_key(key)
    if not k then
        return nil, err
    end
    if not r_expire(ud, k, exptime * 1000) then
        return nil, "not found"
    end
    return true
end
mt.capacity = function(zone)
    local ud = check_zone(zone)
    return r_capacity(ud)
end
mt.free_space = function(zone)
    local ud = check_zone(zone)
    return r_free_space(ud)
end
return mt
