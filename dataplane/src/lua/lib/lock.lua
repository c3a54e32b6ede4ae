-- resty.lock: lua-resty-lock's nonblocking shm lock, without the FFI. Run
-- once per VM with `guard` (mod.rs: `guard(finalizer)` returns a userdata
-- whose `__gc` is `finalizer`); returns the constructor
-- `function(ngx, env) -> module`, called once per route.
--
-- A lock is a key `add`ed to an `ngx.shared` dict with the lock's exptime;
-- `lock` retries the `add` after stepwise `ngx.sleep`s (step, then
-- min(max(0.001, step * ratio), time left, max_step)) until the timeout,
-- and `unlock` deletes the key. So it excludes across requests and workers
-- of the dict's routes, as upstream does across nginx workers.
--
-- Release on garbage collection: upstream hangs a `__gc` on an FFI cdata;
-- here each lock object holds (as `cdata`, the same field) a `guard`
-- userdata whose `__gc` deletes the held key. The finalizer runs wherever
-- the collector happens to run, so it never raises (a failing delete is
-- logged, as upstream logs it) and touches only the dict.
--
-- Invariants: `held[self]` is the state of lock object `self`, shared with
-- its proxy's finalizer; `state.key` is the key it holds, nil when it holds
-- none. A key is held by at most one object (the dict's `add` decides).
local guard = ...
local setmetatable, pcall, error = setmetatable, pcall, error
local max, min, tostring = math.max, math.min, tostring

return function(ngx)
    local shared = ngx.shared
    local sleep = ngx.sleep
    local log, ERR = ngx.log, ngx.ERR

    local _M = { _VERSION = "0.09" }
    local mt = { __index = _M }

    -- Lock object -> its state. Weak keys: the state (and so the proxy's
    -- finalizer) never keeps an object alive.
    local held = setmetatable({}, { __mode = "k" })

    local function release(state)
        local key = state.key
        if key == nil then
            return
        end
        state.key = nil
        local ok, done, err = pcall(state.dict.delete, state.dict, key)
        if not ok or not done then
            pcall(log, ERR, 'failed to delete key "', tostring(key), '": ', tostring(ok and err or done))
        end
    end

    function _M.new(_, dict_name, opts)
        local dict = shared[dict_name]
        if not dict then
            return nil, "dictionary not found"
        end

        local timeout, exptime, step, ratio, max_step
        if opts then
            timeout = opts.timeout
            exptime = opts.exptime
            step = opts.step
            ratio = opts.ratio
            max_step = opts.max_step
        end
        if not exptime then
            exptime = 30
        end
        if timeout then
            timeout = min(timeout, exptime)
            if step then
                step = min(step, timeout)
            end
        end

        local state = { dict = dict }
        local proxy = guard(function()
            release(state)
        end)

        local self = setmetatable({
            cdata = proxy,
            dict = dict,
            timeout = timeout or 5,
            exptime = exptime,
            step = step or 0.001,
            ratio = ratio or 2,
            max_step = max_step or 0.5,
        }, mt)
        held[self] = state
        return self
    end

    -- The state of `self`, or an error at the caller's call (as upstream
    -- fails indexing a missing cdata).
    local function state_of(self)
        local state = held[self]
        if state == nil then
            error("bad lock object", 3)
        end
        return state
    end

    function _M.lock(self, key)
        if not key then
            return nil, "nil key"
        end
        local state = state_of(self)
        local dict = self.dict
        if state.key ~= nil then
            return nil, "locked"
        end
        local exptime = self.exptime
        local ok, err = dict:add(key, true, exptime)
        if ok then
            state.key = key
            self.key = key
            return 0
        end
        if err ~= "exists" then
            return nil, err
        end
        -- Held by another: wait by steps.
        local step = self.step
        local ratio = self.ratio
        local timeout = self.timeout
        local max_step = self.max_step
        local elapsed = 0
        while timeout > 0 do
            sleep(step)
            elapsed = elapsed + step
            timeout = timeout - step

            ok, err = dict:add(key, true, exptime)
            if ok then
                state.key = key
                self.key = key
                return elapsed
            end
            if err ~= "exists" then
                return nil, err
            end
            if timeout <= 0 then
                break
            end
            step = min(max(0.001, step * ratio), timeout, max_step)
        end
        return nil, "timeout"
    end

    function _M.unlock(self)
        local state = state_of(self)
        local key = state.key
        if key == nil then
            return nil, "unlocked"
        end
        local ok, err = self.dict:delete(key)
        if not ok then
            return nil, err
        end
        state.key = nil
        return 1
    end

    function _M.expire(self, time)
        local state = state_of(self)
        if state.key == nil then
            return nil, "unlocked"
        end
        if not time then
            time = self.exptime
        end
        local ok, err = self.dict:replace(self.key, true, time)
        if not ok then
            return nil, err
        end
        return true
    end

    return _M
end
