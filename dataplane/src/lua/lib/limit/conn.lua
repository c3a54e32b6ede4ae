-- resty.limit.conn: lua-resty-limit-traffic's concurrency limit (an enhanced
-- port of nginx's limit_conn). Run once per VM; returns the constructor
-- `function(ngx) -> module`. Pure Lua upstream too: the concurrency level of
-- a key is a counter in the shared dict, `incoming` (committed) adds one and
-- `leaving` takes it back; connections past `max` (up to `max + burst`) are
-- delayed by `unit_delay * floor((conn - 1) / max)`, and `leaving` with a
-- latency moves `unit_delay` halfway towards it.
local setmetatable, assert, floor = setmetatable, assert, math.floor

return function(ngx)
    local ngx_shared = ngx.shared

    local _M = { _VERSION = "0.09" }
    local mt = { __index = _M }

    function _M.new(dict_name, max, burst, default_conn_delay)
        local dict = ngx_shared[dict_name]
        if not dict then
            return nil, "shared dict not found"
        end
        assert(max > 0 and burst >= 0 and default_conn_delay > 0)
        local self = {
            dict = dict,
            max = max + 0, -- raises here for a non-number
            burst = burst,
            unit_delay = default_conn_delay,
        }
        return setmetatable(self, mt)
    end

    function _M.incoming(self, key, commit)
        local dict = self.dict
        local max = self.max
        self.committed = false

        local conn, err
        if commit then
            conn, err = dict:incr(key, 1, 0)
            if not conn then
                return nil, err
            end
            if conn > max + self.burst then
                conn, err = dict:incr(key, -1)
                if not conn then
                    return nil, err
                end
                return nil, "rejected"
            end
            self.committed = true
        else
            conn = (dict:get(key) or 0) + 1
            if conn > max + self.burst then
                return nil, "rejected"
            end
        end

        if conn > max then
            return self.unit_delay * floor((conn - 1) / max), conn
        end
        return 0, conn
    end

    function _M.is_committed(self)
        return self.committed
    end

    function _M.leaving(self, key, req_latency)
        assert(key)
        local conn, err = self.dict:incr(key, -1)
        if not conn then
            return nil, err
        end
        if req_latency then
            self.unit_delay = (req_latency + self.unit_delay) / 2
        end
        return conn
    end

    function _M.uncommit(self, key)
        assert(key)
        return self.dict:incr(key, -1)
    end

    function _M.set_conn(self, conn)
        self.max = conn
    end

    function _M.set_burst(self, burst)
        self.burst = burst
    end

    return _M
end
