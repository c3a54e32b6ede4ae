-- resty.limit.req: lua-resty-limit-traffic's leaky bucket (a port of nginx's
-- limit_req), without the FFI. Run once per VM; returns the constructor
-- `function(ngx) -> module`, called once per route.
--
-- The record of a key in the shared dict is upstream's C struct
-- `{unsigned long excess; uint64_t last;}` as its 16 bytes on x86_64: two
-- little-endian unsigned 64-bit integers, the excess in milli-requests and
-- the last event's time in milliseconds. Both are stored truncated, as the
-- FFI stores a double into an integer field; every value either takes is
-- below 2^53, so the doubles here hold them exactly.
--
-- Invariants: `self.rate` and `self.burst` are the user's values times 1000
-- (milli-requests per second, milli-requests); a stored excess never
-- exceeds burst + 1000 milli-requests.
local char, byte, floor, abs, type, setmetatable, assert =
    string.char, string.byte, math.floor, math.abs, type, setmetatable, assert

local REC_SIZE = 16

-- An unsigned 64-bit little-endian encoding of `n` (truncated; negative and
-- NaN as 0, as nothing stores them).
local function u64(n)
    if not (n > 0) then
        n = 0
    end
    n = floor(n)
    local b = {}
    for i = 1, 8 do
        local r = n % 256
        b[i] = r
        n = (n - r) / 256
    end
    return char(b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8])
end

local function read_u64(s, at)
    local b1, b2, b3, b4, b5, b6, b7, b8 = byte(s, at, at + 7)
    return ((((((b8 * 256 + b7) * 256 + b6) * 256 + b5) * 256 + b4) * 256 + b3) * 256 + b2) * 256 + b1
end

local function encode(excess, last)
    return u64(excess) .. u64(last)
end

return function(ngx)
    local ngx_shared = ngx.shared
    local ngx_now = ngx.now

    local _M = { _VERSION = "0.09" }
    local mt = { __index = _M }

    function _M.new(dict_name, rate, burst)
        local dict = ngx_shared[dict_name]
        if not dict then
            return nil, "shared dict not found"
        end
        assert(rate > 0 and burst >= 0)
        local self = {
            dict = dict,
            rate = rate * 1000,
            burst = burst * 1000,
        }
        return setmetatable(self, mt)
    end

    -- A new event for `key`; recorded in the dict only when `commit`.
    function _M.incoming(self, key, commit)
        local dict = self.dict
        local rate = self.rate
        local now = ngx_now() * 1000

        local excess
        local v = dict:get(key)
        if v then
            if type(v) ~= "string" or #v ~= REC_SIZE then
                return nil, "shdict abused by other users"
            end
            local elapsed = now - read_u64(v, 9)
            excess = read_u64(v, 1) - rate * abs(elapsed) / 1000 + 1000
            if excess < 0 then
                excess = 0
            end
            if excess > self.burst then
                return nil, "rejected"
            end
        else
            excess = 0
        end

        if commit then
            dict:set(key, encode(excess, now))
        end

        -- The delay in seconds, and the excess in requests.
        return excess / rate, excess / 1000
    end

    function _M.uncommit(self, key)
        assert(key)
        local dict = self.dict
        local v = dict:get(key)
        if not v then
            return nil, "not found"
        end
        if type(v) ~= "string" or #v ~= REC_SIZE then
            return nil, "shdict abused by other users"
        end
        local excess = read_u64(v, 1) - 1000
        if excess < 0 then
            excess = 0
        end
        dict:set(key, encode(excess, read_u64(v, 9)))
        return true
    end

    function _M.set_rate(self, rate)
        self.rate = rate * 1000
    end

    function _M.set_burst(self, burst)
        self.burst = burst * 1000
    end

    return _M
end
