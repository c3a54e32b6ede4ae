-- Walks everything a route's handler can reach, the way a hostile route author
-- would look for a way out: its globals; the environment of every function it
-- can see (`getfenv(f)`); `getfenv(level)` at levels -5..5 from the handler and
-- from inside every kind of callback (pcall, xpcall handlers, coroutines,
-- table.sort comparators, string.gsub and ngx.re.gsub callbacks, metamethods,
-- load readers); the metatable of every value; string methods through
-- `("")[name]`; the values returned by ngx.* APIs; and the errors caught by
-- pcall and coroutine.resume.
--
-- It prints "N violations" and up to 40 of them, each as "where: what". A
-- violation is anything of the host VM's that the sandbox must keep out of
-- reach (os.execute, os.exit, jit, dofile, loadfile, newproxy, an io that opens files, a debug
-- with more than traceback, ffi,
-- package.loadlib, string.dump), a `load`/`loadstring` that accepts a binary
-- chunk, or an error value caught by pcall/coroutine.resume that is not a
-- string (a userdata with a metatable is one more way in).
--
-- The test replaces two placeholders: BYTECODE, a string literal of a valid
-- LuaJIT chunk (of this LuaJIT build), and MODE: "report" prints the
-- violations; "exit" also calls every os.exit it found with 3, and then
-- prints the report (the process must survive); "poison" overwrites, in every
-- table it reached, string.upper, tostring, coroutine.resume/wrap and the
-- __index/__tostring/__call of every metatable it reached, to prove that no
-- other route sees the change.
local BYTECODE = @BYTECODE@
local MODE = "@MODE@"

local type, pcall, next, rawget, rawset, getmetatable, getfenv, tostring =
    type, pcall, next, rawget, rawset, getmetatable, getfenv, tostring
local violations, shown = 0, {}
local seen, queue, tables, metatables, exits = {}, {}, {}, {}, {}

local function flag(where, what)
    violations = violations + 1
    if #shown < 40 then
        shown[#shown + 1] = where .. ": " .. what
    end
end

local function push(v, where)
    local t = type(v)
    if (t == "table" or t == "function" or t == "userdata" or t == "thread") and seen[v] == nil then
        seen[v] = where
        queue[#queue + 1] = v
    end
end

-- Keys whose presence (as a function, table or userdata) in any reachable
-- table means host state leaked into the sandbox.
local FORBIDDEN = {
    jit = "jit", dofile = "dofile", loadfile = "loadfile", newproxy = "newproxy",
    ffi = "ffi", loadlib = "package.loadlib",
    execute = "os.execute", getenv = "os.getenv", tmpname = "os.tmpname",
    rename = "os.rename", dump = "string.dump",
    getregistry = "debug.getregistry", sethook = "debug.sethook",
    getupvalue = "debug.getupvalue", setupvalue = "debug.setupvalue",
}

local function try_binary(f, where)
    local attempts = {
        function() return f(BYTECODE) end,
        function() return f(BYTECODE, "=bc", "b") end,
        function() return f(BYTECODE, "=bc", "bt") end,
        function()
            local given = false
            return f(function()
                if given then return nil end
                given = true
                return BYTECODE
            end)
        end,
    }
    for i, attempt in ipairs(attempts) do
        local ok, chunk = pcall(attempt)
        if ok and type(chunk) == "function" then
            flag(where, "loads a binary chunk (attempt " .. i .. ")")
        end
    end
end

local function check_table(t, where)
    for key, what in next, FORBIDDEN do
        local ok, v = pcall(rawget, t, key)
        local tv = ok and type(v)
        if tv == "function" or tv == "table" or tv == "userdata" then
            flag(where, what)
        end
    end
    -- Routes have a `debug` with only `traceback` (sandbox.lua), which reads the
    -- stack and changes nothing: anything else in a reachable `debug` is one.
    local ok_debug, dbg = pcall(rawget, t, "debug")
    if ok_debug and type(dbg) == "table" then
        for name in next, dbg do
            if name ~= "traceback" then
                flag(where, "debug." .. tostring(name))
            end
        end
    elseif ok_debug and (type(dbg) == "function" or type(dbg) == "userdata") then
        flag(where, "debug")
    end
    -- Routes have an `io` that refuses files (sandbox.lua): what is judged
    -- is whether anything reachable opens a file or runs a command.
    -- A violation is reading what only the host has: a line of
    -- /proc/self/status, or a command's output.
    local function first_line(h)
        if type(h) == "function" then
            return h()
        end
        local ok, read = pcall(function() return h.read end)
        if ok and type(read) == "function" then
            return read(h, "*l")
        end
    end
    for _, name in ipairs({ "open", "popen", "lines" }) do
        local f = rawget(t, name)
        if type(f) == "function" and rawget(t, "write") ~= nil then
            local arg = name == "popen" and "echo host" or "/proc/self/status"
            local ok, handle = pcall(f, arg)
            local got = ok and handle ~= nil and select(2, pcall(first_line, handle))
            if type(got) == "string" and (got == "host" or got:find("^Name:")) then
                flag(where, "io." .. name .. " opens host files or commands")
            end
        end
    end
    local exit, clock = rawget(t, "exit"), rawget(t, "clock")
    if type(exit) == "function" and clock ~= nil then
        flag(where, "os.exit")
        exits[#exits + 1] = exit
    end
    for _, name in ipairs({ "load", "loadstring" }) do
        local f = rawget(t, name)
        if type(f) == "function" then
            try_binary(f, where .. "." .. name)
        end
    end
end

-- getfenv at every level, from wherever `levels` is called.
local function levels(ctx)
    for i = -5, 5 do
        local ok, e = pcall(getfenv, i)
        if ok then
            push(e, ctx .. " getfenv(" .. i .. ")")
        end
    end
end

local function errors_of(f, where)
    local ok, e = pcall(f)
    if not ok and type(e) ~= "string" then
        flag(where .. " via pcall", "error value is a " .. type(e))
        push(e, where .. " error")
    end
    local co = coroutine.create(f)
    local ok2, e2 = coroutine.resume(co)
    if not ok2 and type(e2) ~= "string" then
        flag(where .. " via coroutine.resume", "error value is a " .. type(e2))
        push(e2, where .. " error")
    end
end

-- Roots.
push(_G, "_G")
levels("handler")
pcall(function() levels("pcall") end)
pcall(function() pcall(function() levels("pcall in pcall") end) end)
xpcall(function() error("x") end, function() levels("xpcall handler") end)
pcall(coroutine.wrap(function() levels("coroutine.wrap") end))
coroutine.resume(coroutine.create(function() levels("coroutine") end))
table.sort({ 3, 2, 1 }, function(a, b) levels("table.sort comparator") return a < b end)
string.gsub("a", "a", function() levels("string.gsub callback") end)
pcall(ngx.re.gsub, "a", "a", function() levels("ngx.re.gsub callback") return "" end)
pcall(ngx.re.sub, "a", "a", function() levels("ngx.re.sub callback") return "" end)
local _ = setmetatable({}, { __index = function() levels("__index") end }).x
tostring(setmetatable({}, { __tostring = function() levels("__tostring") return "" end }))
pcall(load, function() levels("load reader") return nil end)
push(coroutine.running(), "coroutine.running()")
for _, v in ipairs({ ngx.header, ngx.var, ngx.arg, ngx.ctx, ngx.null, ngx.shared, ngx.re, ngx.req, ngx.location }) do
    push(v, "ngx value")
    push(getmetatable(v), "getmetatable(ngx value)")
end
for name, dict in next, ngx.shared do
    push(dict, "ngx.shared." .. tostring(name))
end
local api_results = {
    ["ngx.req.get_headers()"] = function() return ngx.req.get_headers() end,
    ["ngx.resp.get_headers()"] = function() return ngx.resp.get_headers() end,
    ["ngx.req.get_uri_args()"] = function() return ngx.req.get_uri_args() end,
    ["ngx.re.match()"] = function() return ngx.re.match("ab", "(a)(b)") end,
    ["ngx.re.gmatch()"] = function() return ngx.re.gmatch("ab", "a") end,
    ["ngx.decode_args()"] = function() return ngx.decode_args("a=1") end,
}
for where, f in next, api_results do
    local ok, v = pcall(f)
    if ok then push(v, where) end
end
local string_mt = getmetatable("")
push(string_mt, 'getmetatable("")')
for _, name in ipairs({ "byte", "char", "dump", "find", "format", "gmatch", "gsub", "len", "lower",
    "match", "rep", "reverse", "sub", "upper" }) do
    local ok, f = pcall(function() return ("")[name] end)
    if ok then push(f, '("").' .. name) end
end
local function bad_arg() end
errors_of(function() ngx.say(bad_arg) end, "ngx.say(function)")
errors_of(function() ngx.say({ bad_arg }) end, "ngx.say({function})")
errors_of(function() ngx.re.find(nil) end, "ngx.re.find(nil)")
errors_of(function() ngx.timer.at("x") end, "ngx.timer.at('x')")
errors_of(function() ngx.req.set_header() end, "ngx.req.set_header()")
errors_of(function() ngx.decode_base64({}) end, "ngx.decode_base64({})")
errors_of(function() ngx.sleep(-1) end, "ngx.sleep(-1)")
errors_of(function() ngx.location.capture() end, "ngx.location.capture()")
errors_of(function() ngx.exec() end, "ngx.exec()")
errors_of(function() ngx.header[{}] = 1 end, "ngx.header[{}]")

-- The walk: every table's keys and values, every value's metatable, every
-- function's environment.
local i = 1
while i <= #queue and i <= 200000 do
    local v = queue[i]
    local where = seen[v]
    local t = type(v)
    if t == "table" then
        tables[#tables + 1] = v
        check_table(v, where)
        local ok = pcall(function()
            for k, x in next, v do
                push(k, where .. "[key]")
                push(x, where .. "." .. tostring(k))
            end
        end)
        if not ok then
            flag(where, "could not be walked")
        end
    end
    if t == "table" or t == "userdata" then
        local ok, mt = pcall(getmetatable, v)
        if ok and type(mt) == "table" then
            metatables[#metatables + 1] = mt
            push(mt, where .. "<mt>")
        end
    end
    if t == "function" then
        local ok, env = pcall(getfenv, v)
        if ok then
            push(env, where .. "<env>")
        end
    end
    i = i + 1
end

if MODE == "exit" then
    for _, exit in ipairs(exits) do
        pcall(exit, 3)
    end
end

if MODE == "poison" then
    local function poisoned() return "POISONED" end
    local function refuse() return false, "POISONED" end
    local touched = 0
    for _, t in ipairs(tables) do
        for key, value in next, { upper = poisoned, tostring = poisoned, resume = refuse, wrap = poisoned,
            format = poisoned, rep = poisoned } do
            if type(rawget(t, key)) == "function" and pcall(rawset, t, key, value) then
                touched = touched + 1
            end
        end
    end
    for _, mt in ipairs(metatables) do
        for _, key in ipairs({ "__index", "__newindex", "__tostring", "__call", "__concat", "__len" }) do
            if rawget(mt, key) ~= nil and pcall(rawset, mt, key, poisoned) then
                touched = touched + 1
            end
        end
    end
    ngx.say("poisoned " .. touched)
    return
end

ngx.say(violations .. " violations")
for _, line in ipairs(shown) do
    ngx.say(line)
end
