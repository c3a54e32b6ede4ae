-- resty.limit.count: lua-resty-limit-traffic's fixed-window request count.
-- Run once per VM; returns the constructor `function(ngx) -> module`. Pure
-- Lua upstream too; this is the variant for lua-nginx-module >= 0.10.12,
-- whose `incr` takes an init_ttl (ours does): the first commit of a window
-- creates the counter at `limit` with the window as its TTL, every commit
-- takes one, and a counter below zero rejects.
local setmetatable, assert = setmetatable, assert

return function(ngx)
    local ngx_shared = ngx.shared

    local _M = { _VERSION = "0.09" }
    local mt = { __index = _M }

    function _M.new(dict_name, limit, window)
        local dict = ngx_shared[dict_name]
        if not dict then
            return nil, "shared dict not found"
        end
        assert(limit > 0 and window > 0)
        local self = {
            dict = dict,
            limit = limit,
            window = window,
        }
        return setmetatable(self, mt)
    end

    function _M.incoming(self, key, commit)
        local dict = self.dict
        local limit = self.limit
        local remaining, err
        if commit then
            remaining, err = dict:incr(key, -1, limit, self.window)
            if not remaining then
                return nil, err
            end
        else
            remaining = (dict:get(key) or limit) - 1
        end
        if remaining < 0 then
            return nil, "rejected"
        end
        return 0, remaining
    end

    -- Gives back one commit; returns the remaining count.
    function _M.uncommit(self, key)
        assert(key)
        local remaining, err = self.dict:incr(key, 1)
        if not remaining then
            if err == "not found" then
                remaining = self.limit
            else
                return nil, err
            end
        end
        return remaining
    end

    return _M
end
