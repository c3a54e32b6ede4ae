-- resty.lrucache and resty.lrucache.pureffi: lua-resty-lrucache's API and
-- behaviour without the FFI. Run once per VM; returns the two constructors
-- (`function(ngx, env) -> module`), each called once per route.
--
-- Both keep, per cache, a circular doubly-linked list of nodes headed by a
-- sentinel (most recently used first) and a key -> node table. Upstream
-- preallocates `max_items` FFI nodes; nodes here are Lua tables created on
-- demand, which nothing outside can tell apart, except that a huge
-- `max_items` costs nothing until it is used.
--
-- Invariants (per cache):
--   * `num_items` is the number of nodes linked in the list, at most
--     floor(max_items) (upstream's FFI array holds floor(max_items) nodes);
--   * every linked node is `key2node[node.key]`, and no other node is in
--     `key2node`;
--   * a `get` of a present key moves its node to the head, expired or not,
--     and `set` always does; eviction takes the tail.
--
-- The two classes differ as upstream's do: `resty.lrucache` keeps values in a
-- Lua table keyed by the key itself (any non-nil key; a nil value reads as a
-- miss and the node stays), `resty.lrucache.pureffi` turns keys into strings
-- with tostring (so 1 and "1" are one key) and a nil value is a hit on nil.
local setmetatable, type, floor, error = setmetatable, type, math.floor, error

-- The `uint32_t user_flags` field: what LuaJIT stores for a number assigned
-- to it (conversion through a 64-bit integer, then truncation).
local TWO32 = 4294967296
local function user_flags(flags)
    if type(flags) == "number" and flags >= 0 then
        if flags < 9.2e18 then
            local f = floor(flags)
            if f >= TWO32 then
                f = f % TWO32
            end
            return f
        end
    end
    return 0
end

local function unlink(node)
    local prev, nxt = node.prev, node.next
    prev.next = nxt
    nxt.prev = prev
end

local function link_head(head, node)
    local first = head.next
    node.next = first
    node.prev = head
    first.prev = node
    head.next = node
end

local function new_head()
    local head = {}
    head.prev = head
    head.next = head
    return head
end

-- The slot count of a cache of `size` (checked `size >= 1` already).
local function slots_of(size)
    local slots = floor(size)
    if slots ~= slots then
        -- FFI's `ffi.new` refuses a NaN size.
        error("bad argument #2 to 'new' (size too large)", 3)
    end
    return slots
end

local function make(ngx, env, pureffi)
    local ngx_now = ngx.now
    -- The route's tostring: a key's __tostring runs as preemptible route code.
    local tostring = env.tostring

    local _M = { _VERSION = pureffi and "0.09" or "0.15" }
    local mt = { __index = _M }

    local function new_cache(size)
        local self = {
            key2node = {},
            cache_queue = new_head(),
            num_items = 0,
            max_items = size,
            slots = slots_of(size),
        }
        if not pureffi then
            self.hasht = {}
        end
        return setmetatable(self, mt)
    end

    if pureffi then
        -- `load_factor` only sizes upstream's FFI hash table; it is checked
        -- the same way (the same comparisons, so the same errors).
        function _M.new(size, load_factor)
            if size < 1 then
                return nil, "size too small"
            end
            if load_factor and load_factor > 1 then
                load_factor = 1
            elseif load_factor and load_factor < 0.1 then
                load_factor = 0.1
            end
            return new_cache(size)
        end
    else
        function _M.new(size)
            if size < 1 then
                return nil, "size too small"
            end
            return new_cache(size)
        end
    end

    function _M.count(self)
        return self.num_items
    end

    function _M.capacity(self)
        return self.max_items
    end

    if pureffi then
        function _M.get(self, key)
            if type(key) ~= "string" then
                key = tostring(key)
            end
            local node = self.key2node[key]
            if not node then
                return nil
            end
            unlink(node)
            link_head(self.cache_queue, node)
            local expire = node.expire
            if expire >= 0 and expire < ngx_now() then
                return nil, node.val, node.flags
            end
            return node.val, nil, node.flags
        end
    else
        function _M.get(self, key)
            local val = self.hasht[key]
            if val == nil then
                return nil
            end
            local node = self.key2node[key]
            unlink(node)
            link_head(self.cache_queue, node)
            local expire = node.expire
            if expire >= 0 and expire < ngx_now() then
                return nil, val, node.flags
            end
            return val, nil, node.flags
        end
    end

    function _M.delete(self, key)
        if pureffi then
            if type(key) ~= "string" then
                key = tostring(key)
            end
        else
            self.hasht[key] = nil
        end
        local key2node = self.key2node
        local node = key2node[key]
        if not node then
            return false
        end
        key2node[key] = nil
        unlink(node)
        self.num_items = self.num_items - 1
        return true
    end

    function _M.set(self, key, value, ttl, flags)
        if pureffi then
            if type(key) ~= "string" then
                key = tostring(key)
            end
        else
            -- Raises "table index is nil" for a nil key, as upstream.
            self.hasht[key] = value
        end
        local key2node = self.key2node
        local node = key2node[key]
        local head = self.cache_queue
        if not node then
            if self.num_items < self.slots then
                node = {}
                self.num_items = self.num_items + 1
            else
                -- Evict the least recently used key and reuse its node.
                node = head.prev
                unlink(node)
                local oldkey = node.key
                if not pureffi then
                    self.hasht[oldkey] = nil
                end
                key2node[oldkey] = nil
            end
            node.key = key
            key2node[key] = node
        else
            unlink(node)
        end
        -- `node` is unlinked here.
        link_head(head, node)
        if pureffi then
            node.val = value
        end
        if ttl then
            node.expire = ngx_now() + ttl
        else
            node.expire = -1
        end
        node.flags = user_flags(flags)
    end

    function _M.get_keys(self, max_count, res)
        if not max_count or max_count == 0 then
            max_count = self.num_items
        end
        if not res then
            res = {}
        end
        local head = self.cache_queue
        local node = head.next
        local i = 0
        while node ~= head do
            if i >= max_count then
                break
            end
            i = i + 1
            res[i] = node.key
            node = node.next
        end
        res[i + 1] = nil
        return res
    end

    function _M.flush_all(self)
        self.key2node = {}
        if not pureffi then
            self.hasht = {}
        end
        self.cache_queue = new_head()
        self.num_items = 0
    end

    return _M
end

return function(ngx, env)
    return make(ngx, env, false)
end, function(ngx, env)
    return make(ngx, env, true)
end
