-- resty.limit.traffic: lua-resty-limit-traffic's aggregator of limiters
-- (resty.limit.req/count/conn objects, or anything with their
-- `incoming`/`uncommit`). Run once per VM; returns the constructor
-- `function() -> module`.
--
-- `combine` asks every limiter without committing except the last (which it
-- commits at once), then commits the others in order; when one of those
-- rejects, it uncommits the ones committed before it and the last, so a
-- rejected request leaves no trace in any limiter. `states[i]` gets each
-- limiter's second result (excess, remaining, conn). The delay is the
-- largest delay.
local max = math.max

return function()
    local _M = { _VERSION = "0.09" }

    function _M.combine(limiters, keys, states)
        local n = #limiters
        local max_delay = 0
        for i = 1, n do
            local lim = limiters[i]
            local delay, err = lim:incoming(keys[i], i == n)
            if not delay then
                return nil, err
            end
            if i == n then
                if states then
                    states[i] = err
                end
                max_delay = delay
            end
        end
        for i = 1, n - 1 do
            local lim = limiters[i]
            local delay, err = lim:incoming(keys[i], true)
            if not delay then
                for j = 1, i - 1 do
                    -- Errors here are ignored, as upstream ignores them.
                    limiters[j]:uncommit(keys[j])
                end
                limiters[n]:uncommit(keys[n])
                return nil, err
            end
            if states then
                states[i] = err
            end
            max_delay = max(max_delay, delay)
        end
        return max_delay
    end

    return _M
end
