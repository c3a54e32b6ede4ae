//! `cjson` and `cjson.safe` against the real thing: one Lua corpus runs under
//! Debian's `luajit` with its `lua-cjson`, and as the content handler of a
//! real Moongate route; the two outputs must agree line for line.
//!
//! Debian packages the original lua-cjson 2.1.0 (mpx), not OpenResty's fork,
//! so the differential corpus sticks to what both share; the OpenResty
//! additions (`empty_array`, `array_mt`, `encode_empty_table_as_object`,
//! `encode_escape_forward_slash`, precision up to 16, ...) are checked in a
//! second corpus against expectations read from openresty/lua-cjson.
//! Multi-key objects print in a canonical form (sorted keys), since key
//! order is the VM's table order. Besides hand-picked cases the corpus runs
//! a fixed pseudo-random sequence of mutated JSON texts, numbers at random
//! precisions and random nested values, identical in both runs.
//!
//! `scripts/test.sh` installs a `luajit` (Debian's `luajit2` package,
//! OpenResty's LuaJIT) and `lua-cjson`; without them the differential test
//! fails, it does not skip.

mod common;

use std::process::Command;

use common::{Server, route};

/// Helpers both runs share: `out` prints a line, `show` makes bytes
/// printable, `canon` prints a value with sorted keys, `E`/`D` print one
/// encode/decode case, `P` one call of anything.
const PRELUDE: &str = r##"
local out = (ngx and ngx.say) or print
local cjson = require "cjson"
local safe = require "cjson.safe"
local function show(s)
  return (tostring(s):gsub("[%c\128-\255\\]", function(c) return string.format("\\%03d", c:byte()) end))
end
local function strip(e)
  -- The chunk name and line differ between the runs; whether there is a
  -- position must not.
  e = tostring(e)
  local rest = e:match("^[^\n]-:%d+: (.*)$")
  if rest then return "@" .. rest end
  return e
end
local canon
canon = function(v, seen)
  local t = type(v)
  if v == nil then return "nil" end
  if v == cjson.null then return "null" end
  if t == "number" then
    if v ~= v then return "NaN" end
    return string.format("%.17g", v)
  end
  if t == "string" then return '"' .. show(v) .. '"' end
  if t == "boolean" then return tostring(v) end
  if t ~= "table" then return t end
  seen = seen or 0
  if seen > 50 then return "..." end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if type(a) ~= type(b) then return type(a) < type(b) end
    if type(a) == "number" or type(a) == "string" then return a < b end
    return tostring(a) < tostring(b)
  end)
  local parts = {}
  for _, k in ipairs(keys) do
    parts[#parts + 1] = canon(k, seen + 1) .. "=" .. canon(v[k], seen + 1)
  end
  local mt = getmetatable(v)
  local tag = ""
  if mt ~= nil then
    tag = (mt == cjson.array_mt and "array_mt" or mt == cjson.empty_array_mt and "empty_array_mt" or "mt")
  end
  return tag .. "{" .. table.concat(parts, ",") .. "}"
end
local function results(ok, ...)
  if not ok then return "ERR " .. strip((...)) end
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do
    local v = select(i, ...)
    parts[i] = type(v) == "string" and show(v) or canon(v)
  end
  return table.concat(parts, " | ")
end
local function P(name, f, ...)
  out(name .. ": " .. results(pcall(f, ...)))
end
local function E(name, v, c)
  c = c or cjson
  local ok, s = pcall(c.encode, v)
  if ok then out(name .. ": " .. show(s)) else out(name .. ": ERR " .. strip(s)) end
end
-- Encodes where key order may differ: the length and the decoded form.
local function EC(name, v, c)
  c = c or cjson
  local ok, s = pcall(c.encode, v)
  if ok then out(name .. ": #" .. #s .. " " .. canon(cjson.decode(s))) else out(name .. ": ERR " .. strip(s)) end
end
local function D(name, s, c)
  c = c or cjson
  out(name .. ": " .. results(pcall(c.decode, s)))
end
"##;

/// The differential corpus: what lua-cjson 2.1.0 and OpenResty's 2.1.0.x
/// agree on.
const CORPUS: &str = r##"
out("name: " .. cjson._NAME)
out("null is light userdata: " .. type(cjson.null) .. " " .. tostring(cjson.decode("null") == cjson.null))
out("safe null: " .. tostring(safe.null == cjson.null))

-- Encoding scalars.
E("nil", nil)
E("true", true)
E("false", false)
E("null", cjson.null)
for _, n in ipairs({0, -0, 1, -1, 10, 0.1, 0.5, 1/3, 2/3, -1.5, 100, 1e14, 1e15, 1e16, 1e-4, 1e-5,
                    123456789012345, 12345678901234, 2^53, 2^53 + 1, -2^63, 2^64, 1e308, 1.7976931348623157e308,
                    5e-324, 2.2250738585072014e-308, 3.14159265358979, 99999999999999.5, 0.000123456789012345}) do
  E("number " .. string.format("%.17g", n), n)
end
E("-0 literal", -0.0)
E("inf", math.huge)
E("-inf", -math.huge)
E("nan", 0/0)
E("empty string", "")
E("hello", "hello")
E("slash", "a/b")
E("quote backslash", 'a"b\\c')
E("controls", "\0\1\2\7\8\9\10\11\12\13\14\31\127")
E("high bytes", "\128\255\254")
E("utf8", "h\195\169llo \226\130\172 \240\159\152\128")
local octets = {}
for i = 0, 255 do octets[#octets + 1] = string.char(i) end
E("all octets", table.concat(octets))
E("long string", string.rep("ab/", 50))

-- Encoding tables.
E("empty table", {})
E("array", {1, 2, 3})
E("nested", {{{}}, {1, {2}}})
E("array with null", {cjson.null, 1, cjson.null})
E("hole", {1, nil, 3})
E("sparse 4 of 3", {[1] = 1, [2] = 2, [4] = 4})
E("index 10 alone", {[10] = "x"})
E("index 11 alone", {[11] = "x"})
E("index 12 of 6", {1, 2, 3, 4, 5, 6, [12] = 12})
E("index 13 of 6", {1, 2, 3, 4, 5, 6, [13] = 13})
E("key 0", {[0] = 1})
E("key -1", {[-1] = 1})
E("key 1.5", {[1.5] = 1})
E("key 1e20", {[1e20] = 1})
E("key 2^31", {[2^31] = 1})
E("string key", {a = 1})
E("numeric string key", {["2"] = "two"})
EC("mixed", {1, 2, a = 3})
EC("object", {a = 1, b = {c = {d = "e"}}, ["/"] = "\0"})
EC("number keys object", {[1] = 1, [100] = 2, [0.5] = 3})
E("bool key", {[true] = 1})
E("table key", {[{}] = 1})
E("function", print)
E("function in table", {f = print})
E("function in array", {1, print})
E("thread", coroutine.create(function() end))
E("nan in array", {1, 0/0})
E("inf key", {[math.huge] = 1})

-- Nesting and cycles.
local deep = "x"
for _ = 1, 1000 do deep = {deep} end
local ok, s = pcall(cjson.encode, deep)
out("depth 1000: " .. tostring(ok) .. " " .. (ok and #s or strip(s)))
E("depth 1001", {deep})
local cycle = {}
cycle[1] = cycle
E("cycle", cycle)
local ocycle = {}
ocycle.me = ocycle
E("object cycle", ocycle)
P("encode_max_depth(5)", cjson.encode_max_depth, 5)
E("depth 5", {{{{{"nested"}}}}})
E("depth 6", {{{{{{"nested"}}}}}})
E("object depth 6", {a = {b = {c = {d = {e = {f = 1}}}}}})
E("cycle at 5", cycle)
P("encode_max_depth()", cjson.encode_max_depth)
P("encode_max_depth(1000)", cjson.encode_max_depth, 1000)

-- Sparse-array settings.
P("encode_sparse_array()", cjson.encode_sparse_array)
P("encode_sparse_array(true, 2, 3)", cjson.encode_sparse_array, true, 2, 3)
E("sparse [3]", {[3] = "sparse test"})
E("sparse [1],[4]", {[1] = "one", [4] = "sparse test"})
EC("sparse [1],[5] converted", {[1] = "one", [5] = "sparse test"})
P("encode_sparse_array(false)", cjson.encode_sparse_array, false)
E("sparse [1],[5] refused", {[1] = "one", [5] = "sparse test"})
P("encode_sparse_array(nil, 0)", cjson.encode_sparse_array, nil, 0)
E("ratio 0 [20]", {[20] = 1})
P("encode_sparse_array('on', 1, 0)", cjson.encode_sparse_array, "on", 1, 0)
EC("ratio 1 {1,2,[4]}", {1, 2, [4] = 4})
E("ratio 1 {1,2,3}", {1, 2, 3})
P("encode_sparse_array('off', 2, 10)", cjson.encode_sparse_array, "off", 2, 10)
P("sparse bad option", cjson.encode_sparse_array, "maybe")
P("sparse number option", cjson.encode_sparse_array, 1)
P("sparse table option", cjson.encode_sparse_array, {})
P("sparse ratio -1", cjson.encode_sparse_array, nil, -1)
P("sparse safe string", cjson.encode_sparse_array, nil, nil, "x")
P("sparse safe numeric string", cjson.encode_sparse_array, nil, nil, "10")
P("sparse too many", cjson.encode_sparse_array, true, 2, 10, 4)
P("sparse named error", function() local r = cjson.encode_sparse_array(true, -1) return r end)
P("sparse after partial set", cjson.encode_sparse_array)
P("sparse reset", cjson.encode_sparse_array, false, 2, 10)

-- Number settings.
for _, p in ipairs({1, 2, 3, 5, 10, 13, 14}) do
  P("encode_number_precision(" .. p .. ")", cjson.encode_number_precision, p)
  E("pi at " .. p, {math.pi, 1/3 * 1e20, 123.456, 0.1, 1e-7, 2^53, 9.5, 2.5})
end
P("precision 0", cjson.encode_number_precision, 0)
P("precision 17", cjson.encode_number_precision, 17)
P("precision 5.7", cjson.encode_number_precision, 5.7)
P("precision '6'", cjson.encode_number_precision, "6")
P("precision 'x'", cjson.encode_number_precision, "x")
P("precision true", cjson.encode_number_precision, true)
P("precision()", cjson.encode_number_precision)
P("precision(14)", cjson.encode_number_precision, 14)
P("precision too many", cjson.encode_number_precision, 14, 1)

P("encode_invalid_numbers()", cjson.encode_invalid_numbers)
P("encode_invalid_numbers(true)", cjson.encode_invalid_numbers, true)
E("nan on", {0/0, math.huge, -math.huge})
EC("inf key on", {[math.huge] = 1})
P("encode_invalid_numbers('null')", cjson.encode_invalid_numbers, "null")
E("nan null", {0/0, math.huge, -math.huge})
P("encode_invalid_numbers()", cjson.encode_invalid_numbers)
P("encode_invalid_numbers('on')", cjson.encode_invalid_numbers, "on")
P("encode_invalid_numbers('maybe')", cjson.encode_invalid_numbers, "maybe")
P("encode_invalid_numbers('off')", cjson.encode_invalid_numbers, "off")
P("encode_invalid_numbers(false)", cjson.encode_invalid_numbers, false)
E("nan off", 0/0)

P("encode_keep_buffer()", cjson.encode_keep_buffer)
P("encode_keep_buffer(false)", cjson.encode_keep_buffer, false)
E("no buffer", {1, "two"})
E("no buffer error", {print})
P("encode_keep_buffer('on')", cjson.encode_keep_buffer, "on")
P("encode_keep_buffer(nil)", cjson.encode_keep_buffer, nil)

-- encode's arguments and positions.
P("encode no args", cjson.encode)
P("encode two args", cjson.encode, 1, 2)
P("encode named", function() local r = cjson.encode() return r end)
P("encode error positioned", function() local r = cjson.encode(print) return r end)
P("decode error positioned", function() local r = cjson.decode("[") return r end)
P("decode arg positioned", function() local r = cjson.decode({}) return r end)

-- Decoding.
D("string", '"test string"')
D("numbers", '[ 0.0, -5e3, -1, 0.3e-3, 1023.2, 0e10 ]')
D("null", 'null')
D("true", 'true')
D("false", 'false')
D("numeric keys", '{ "1": "one", "3": "three" }')
D("string keys", '{ "a": "a", "b": "b" }')
D("array", '[ "one", null, "three" ]')
D("empty array", '[]')
D("empty object", '{}')
D("nested empties", '[[],{},[{}]]')
D("duplicate keys", '{"a":1,"a":2,"b":[1],"b":{"c":null}}')
D("whitespace", ' \t\r\n [ 1 , \n 2 ] \n ')
D("vertical tab", '\v[1]')
D("nested", '{"a":[1,{"b":null,"c":[true,false]}],"d":{"e":"f"}}')
D("UTF-16BE", '\0"\0"')
D("UTF-16LE", '"\0"\0')
D("UTF-32BE", '\0\0\0"')
D("UTF-32LE", '"\0\0\0')
D("nul after value", '[1]\0garbage')
D("nul in string", '"a\0b"')
D("nul single", '\0')
D("partial", '{ "unexpected eof": ')
D("extra comma", '{ "extra data": true }, false')
D("bad escape", [[ { "bad escape \q code" } ]])
D("bad unicode", [[ { "bad unicode \u0f6 escape" } ]])
D("bad keyword", ' [ "bad barewood", test ] ')
D("-+12", '[ -+12 ]')
D("-v", '-v')
D("bad exponent", '[ 0.4eg10 ]')
D("empty", '')
D("spaces", '   ')
D("open array", '[')
D("close array", ']')
D("open object", '{')
D("key only", '{"a"}')
D("no value", '{"a":}')
D("object trailing comma", '{"a":1,}')
D("array trailing comma", '[1,]')
D("array no comma", '[1 2]')
D("number key", '{1:2}')
D("object no comma", '{"a":1 "b":2}')
D("nul", 'nul')
D("tru", 'tru')
D("falsey", 'falsey')
D("truex", 'truex')
D("nullnull", 'null null')
D("two values", '1 2')
D("colon", ':')
D("comma", ',')
D("single quote", "'a'")
D("unterminated", '"abc')
D("unterminated escape", '"abc\\')
D("raw control", '"a\tb\1c"')
D("raw high bytes", '"\255\254\128"')
D("escapes", [["\/\b\f\n\r\t\"\\"]])
D("bad escape x", [["\x41"]])
D("unicode e9", [["\u00e9"]])
D("unicode upper", [["\u00E9\u20AC"]])
D("unicode 0000", [["a\u0000b"]])
D("unicode 007f", [["\u007f"]])
D("unicode 0800", [["\u0800\uffff"]])
D("surrogate pair", [["\uD83D\uDE00"]])
D("single F800", [["\uF800"]])
D("swapped surrogates", [["\uDC00\uD800"]])
D("duplicate high", [["\uDB00\uDB00"]])
D("missing low", [["\uDB00"]])
D("invalid low", [["\uDB00\uD"]])
D("high then text", [["\uDB00abcdef"]])
D("short hex", [["\u12"]])
D("bad hex", [["\u12G4"]])

-- Numbers.
for _, s in ipairs({'0', '-0', '1', '-1', '1.5', '1e5', '1E5', '1e+5', '1e-5', '0.1', '1e999', '-1e999', '1e-400',
                    '12345678901234567890', '9007199254740993', '1.7976931348623157e308', '4.9e-324',
                    '0x6.ffp1', '0x10', '0X1F', '0x', '0xg', '[ 0123, 00.33 ]', '[ +Inf, Inf, -Inf ]',
                    '[ +Infinity, Infinity, -Infinity ]', '[ +NaN, NaN, -NaN ]', 'Infrared', 'Noodle',
                    'nan', 'inf', '-inf', 'infinity', 'nAn', 'iNf', 'NaN(123)', '+1', '+', '-', '.5', '1.',
                    '01', '- 1', '1e', '1e+', '2.', '0e10', '1.2.3', '1..2', '--1', '1-', '0.0000001',
                    '123456789.123456789', '[1e2,2E-2,-0.0]'}) do
  D("number " .. s, s)
end
P("decode_invalid_numbers()", cjson.decode_invalid_numbers)
P("decode_invalid_numbers(false)", cjson.decode_invalid_numbers, false)
for _, s in ipairs({'0x6', '[ 0123, 00.33 ]', '[ +Inf, Inf, -Inf ]', '[ +Infinity, Infinity, -Infinity ]',
                    '[ +NaN, NaN, -NaN ]', 'nan', 'inf', '-inf', '+1', '-0', '0', '0.5', '1e5', '-01', '1e999',
                    '0x', 'Infrared'}) do
  D("strict " .. s, s)
end
P("decode_invalid_numbers('on')", cjson.decode_invalid_numbers, "on")
P("decode_invalid_numbers('bad')", cjson.decode_invalid_numbers, "bad")
P("decode_invalid_numbers(true, 1)", cjson.decode_invalid_numbers, true, 1)

-- Decode nesting.
P("decode_max_depth(5)", cjson.decode_max_depth, 5)
D("array at limit", '[[[[[ "nested" ]]]]]')
D("array over limit", '[[[[[[ "nested" ]]]]]]')
D("object at limit", '{"a":{"b":{"c":{"d":{"e":"nested"}}}}}')
D("object over limit", '{"a":{"b":{"c":{"d":{"e":{"f":"nested"}}}}}}')
D("spaced over limit", '[ [ [ [ [ [ 1 ] ] ] ] ] ]')
P("decode_max_depth()", cjson.decode_max_depth)
P("decode_max_depth(1000)", cjson.decode_max_depth, 1000)
D("deep 1100", string.rep("[", 1100) .. '1100' .. string.rep("]", 1100))
local ok2, v = pcall(cjson.decode, string.rep("[", 1000) .. '1' .. string.rep("]", 1000))
out("deep 1000: " .. tostring(ok2))
D("deep objects 1001", string.rep('{"a":', 1001) .. '1' .. string.rep("}", 1001))
P("decode_max_depth(0)", cjson.decode_max_depth, 0)
P("decode_max_depth(-5)", cjson.decode_max_depth, -5)

-- decode's arguments.
P("decode no args", cjson.decode)
P("decode two args", cjson.decode, "1", "2")
P("decode table", cjson.decode, {})
P("decode nil", cjson.decode, nil)
P("decode boolean", cjson.decode, true)
P("decode number", cjson.decode, 123)
P("decode float", cjson.decode, 1.5)

-- Round trips.
for _, s in ipairs({'[1,2,3]', '{"a":[1,2,{"b":"c"}]}', '"\\u00e9\\/"', '[null,true,false,0.1,-0,1e+300]'}) do
  local ok3, r = pcall(function() return cjson.encode(cjson.decode(s)) end)
  out("roundtrip " .. s .. ": " .. (ok3 and canon(cjson.decode(r)) or strip(r)))
end
local all = table.concat(octets)
out("octets roundtrip: " .. tostring(cjson.decode(cjson.encode(all)) == all))

-- cjson.safe.
D("safe ok", '[1,"a"]', safe)
out("safe bad: " .. results(pcall(safe.decode, "[")))
out("safe bad token: " .. results(pcall(safe.decode, "[1,?]")))
out("safe encode function: " .. results(pcall(safe.encode, print)))
out("safe encode cycle: " .. results(pcall(safe.encode, cycle)))
out("safe decode table: " .. results(pcall(safe.decode, {})))
out("safe decode no args: " .. results(pcall(safe.decode)))
out("safe encode two args: " .. results(pcall(safe.encode, 1, 2)))
out("safe named: " .. results(pcall(function() local a, b = safe.decode() return a, b end)))
out("safe nil: " .. results(pcall(safe.encode, nil)))
out("safe utf16: " .. results(pcall(safe.decode, "\0[")))
out("safe depth: " .. results(pcall(safe.decode, string.rep("[", 1001))))
P("cjson depth setting", cjson.encode_max_depth, 3)
P("safe depth setting untouched", safe.encode_max_depth)
out("safe deep ok: " .. results(pcall(safe.encode, {{{{1}}}})))
out("cjson deep refused: " .. results(pcall(cjson.encode, {{{{1}}}})))
P("cjson depth reset", cjson.encode_max_depth, 1000)

-- cjson.new().
local c2 = cjson.new()
P("new encode_max_depth(2)", c2.encode_max_depth, 2)
P("parent untouched", cjson.encode_max_depth)
out("new refuses: " .. results(pcall(c2.encode, {{{1}}})))
out("parent encodes: " .. results(pcall(cjson.encode, {{{1}}})))
out("new null: " .. tostring(c2.null == cjson.null))
P("new invalid numbers default", c2.encode_invalid_numbers)
P("new sparse defaults", c2.encode_sparse_array)
local s2 = safe.new()
out("safe.new is safe: " .. results(pcall(s2.decode, "[")))
local c3 = c2.new()
P("new of new defaults", c3.encode_max_depth)
local c4 = cjson.new()
P("new precision", c4.encode_number_precision, 3)
out("new precision used: " .. c4.encode(math.pi) .. " parent: " .. cjson.encode(math.pi))

-- Metatables other than upstream's own do not change how a table encodes.
E("__index ignored", setmetatable({1, 2}, {__index = function() error("no") end}))
EC("__pairs ignored", setmetatable({a = 1}, {__pairs = function() error("no") end}))
E("__tostring ignored", setmetatable({}, {__tostring = function() return "x" end}))
E("protected metatable", setmetatable({"x"}, {__metatable = false}))

-- Fuzz: a fixed pseudo-random sequence (Park-Miller, exact in doubles) so
-- both runs see the same inputs.
local seed = 42
local function rand(n)
  seed = (seed * 16807) % 2147483647
  return seed % n
end
for i = 1, 300 do
  local m = rand(2^31) / 2^31
  local e = rand(600) - 300
  local n = (rand(2) == 0 and -1 or 1) * m * 10 ^ e
  if i % 7 == 0 then n = rand(2^31) - 2^30 end
  if i % 11 == 0 then n = rand(100000) / 1000 end
  local p = 1 + rand(14)
  cjson.encode_number_precision(p)
  out("fuzz number " .. i .. " p" .. p .. ": " .. cjson.encode(n) .. " " .. canon(cjson.decode(cjson.encode(n))))
end
cjson.encode_number_precision(14)
local seeds = {'{"a":[1,2.5e3,{"b":null}],"c":"d\\u00e9\\n"}', '[true,false,null,-0.5,"x\\/y"]',
               '{"k":{"k":{"k":[[],{}]}}}', '"\\ud83d\\ude00 tail"', '[1e5,-2E-3,0x1F,Infinity]'}
local alphabet = '{}[],:"\\ u0123456789abcdefnrtlsxEe.-+/\0\t\n'
for i = 1, 600 do
  local s = seeds[1 + rand(#seeds)]
  for _ = 1, 1 + rand(3) do
    local at = 1 + rand(#s + 1)
    local op = rand(3)
    if op == 0 then
      s = s:sub(1, at - 1) .. s:sub(at + 1)
    elseif op == 1 then
      local c = 1 + rand(#alphabet)
      s = s:sub(1, at - 1) .. alphabet:sub(c, c) .. s:sub(at)
    else
      s = s:sub(1, at) .. s:sub(at, at + rand(4)) .. s:sub(at + 1)
    end
  end
  out("fuzz decode " .. i .. " " .. show(s) .. ": " .. results(pcall(cjson.decode, s)))
end
local function gen(depth)
  local k = rand(depth > 3 and 5 or 8)
  if k == 0 then return rand(1000) / 8 end
  if k == 1 then return ({"a", "/", "\"", "\1", "\255", ""})[1 + rand(6)] end
  if k == 2 then return rand(2) == 0 end
  if k == 3 then return cjson.null end
  if k == 4 then return {} end
  if k == 5 then return {[({"x", "y/", "\0"})[1 + rand(3)]] = gen(depth + 1)} end
  local t = {}
  for j = 1, rand(5) do t[j] = gen(depth + 1) end
  if rand(4) == 0 then t[#t + 2 + rand(3)] = true end
  return t
end
for i = 1, 200 do
  E("fuzz encode " .. i, gen(0))
end
"##;

/// OpenResty's additions, and where it differs from 2.1.0, as
/// openresty/lua-cjson's source and README say (expected output follows
/// each line after `=>`).
const OPENRESTY: &str = r##"
local function check(name, got, want)
  out(name .. ": " .. (got == want and "ok" or ("got " .. show(got) .. " want " .. show(want))))
end
local function enc(v, c)
  local ok, s = pcall((c or cjson).encode, v)
  return ok and s or ("ERR " .. strip(s))
end
check("version", cjson._VERSION:match("^2%.1%.0%.%d+$") ~= nil, true)
check("null is ngx.null", cjson.null == ngx.null, true)
check("empty_array is light userdata", type(cjson.empty_array), "userdata")
check("empty_array not null", cjson.empty_array ~= cjson.null, true)
check("encode empty_array", enc(cjson.empty_array), "[]")
check("empty_array in object", enc({a = cjson.empty_array}), '{"a":[]}')
check("array_mt empty", enc(setmetatable({}, cjson.array_mt)), "[]")
check("array_mt holes", enc(setmetatable({1, 2, nil, 4}, cjson.array_mt)), "[1,2,null,4]")
local am = setmetatable({1, 2}, cjson.array_mt)
am.x = 1
check("array_mt ignores hash part", enc(am), "[1,2]")
check("empty_array_mt empty", enc(setmetatable({}, cjson.empty_array_mt)), "[]")
check("empty_array_mt nonempty", enc(setmetatable({1, 2}, cjson.empty_array_mt)), "[1,2]")
check("empty_array_mt object", enc(setmetatable({a = 1}, cjson.empty_array_mt)), "[]")
check("__len means array", enc(setmetatable({1, 2, 3}, {__len = function() return 1 end})), "[1,2,3]")
check("safe shares array_mt", safe.array_mt == cjson.array_mt, true)
check("new shares array_mt", cjson.new().array_mt == cjson.array_mt, true)
check("encode_empty_table_as_object()", results(pcall(cjson.encode_empty_table_as_object)), "true")
check("encode_empty_table_as_object(false)", results(pcall(cjson.encode_empty_table_as_object, false)), "false")
check("empty as array", enc({}), "[]")
check("nested empty as array", enc({a = {}}), '{"a":[]}')
check("encode_empty_table_as_object('on')", results(pcall(cjson.encode_empty_table_as_object, "on")), "true")
check("empty as object", enc({}), "{}")
check("decode_array_with_array_mt()", results(pcall(cjson.decode_array_with_array_mt)), "false")
check("decode without array_mt", getmetatable(cjson.decode("[]")), nil)
check("decode_array_with_array_mt(true)", results(pcall(cjson.decode_array_with_array_mt, true)), "true")
check("decoded array has array_mt", getmetatable(cjson.decode("[1]")) == cjson.array_mt, true)
check("decoded object has none", getmetatable(cjson.decode("{}")), nil)
check("decoded empty array stays array", cjson.encode(cjson.decode('{"a":[]}')), '{"a":[]}')
cjson.decode_array_with_array_mt(false)
check("encode_escape_forward_slash()", results(pcall(cjson.encode_escape_forward_slash)), "true")
check("slash escaped", enc("a/b"), "\"a\\/b\"")
check("encode_escape_forward_slash(false)", results(pcall(cjson.encode_escape_forward_slash, false)), "false")
check("slash plain", enc("a/b"), '"a/b"')
check("other instance still escapes", enc("a/b", safe), "\"a\\/b\"")
cjson.encode_escape_forward_slash(true)
check("skip default", results(pcall(cjson.encode_skip_unsupported_value_types)), "false")
check("skip(true)", results(pcall(cjson.encode_skip_unsupported_value_types, true)), "true")
check("skip in array", enc({print, 1, print, 2, print}), "[1,2]")
check("skip in object", enc({f = print}), "{}")
check("skip top level", enc(print), "")
cjson.encode_skip_unsupported_value_types(false)
check("precision 15", results(pcall(cjson.encode_number_precision, 15)), "15")
check("at 15", enc(0.1 + 0.2), "0.3")
check("precision 16", results(pcall(cjson.encode_number_precision, 16)), "16")
check("at 16", enc(0.1 + 0.2), "0.3")
check("at 16 third", enc(1 / 3), "0.3333333333333333")
check("at 16 pi", enc(math.pi), "3.141592653589793")
check("precision 17", results(pcall(cjson.encode_number_precision, 17)),
      "ERR bad argument #1 to '?' (expected integer between 1 and 16)")
cjson.encode_number_precision(14)
check("bad option", results(pcall(cjson.encode_empty_table_as_object, "yes")),
      "ERR bad argument #1 to '?' (invalid option 'yes')")
check("too many", results(pcall(cjson.decode_array_with_array_mt, true, true)),
      "ERR bad argument #2 to '?' (found too many arguments)")
"##;

fn script(body: &str) -> String {
    format!("{PRELUDE}\n{body}")
}

/// Runs `lua` under Debian's luajit with its lua-cjson; the output lines.
fn reference(lua: &str) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("corpus.lua");
    std::fs::write(&path, lua).expect("write corpus");
    let run = Command::new("luajit").arg(&path).output().unwrap_or_else(|e| {
        panic!("cannot run luajit ({e}): the differential test needs Debian's luajit and lua-cjson (scripts/test.sh installs them: apt-get install luajit2 lua-cjson)")
    });
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "the corpus failed under luajit with lua-cjson ({}); is lua-cjson installed (apt-get install lua-cjson)?\n{stderr}",
        run.status
    );
    String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Runs `lua` as the content handler of a Moongate route; the output lines.
fn moongate(lua: &str) -> Vec<String> {
    let content: String = lua.lines().map(|l| format!("      {l}\n")).collect();
    let s = Server::start(&route(
        "cjson",
        &format!("  locations:\n  - path: /\n    content: |\n{content}"),
    ));
    let r = s.get("/");
    assert_eq!(r.status, 200, "the corpus route failed: {}\n{}", r.text(), s.logs());
    r.text().lines().map(str::to_string).collect()
}

/// Where OpenResty's lua-cjson deliberately differs from the 2.1.0 Debian
/// ships: (reference line, Moongate line). Each must occur, so the list
/// cannot rot.
const OPENRESTY_DIFFERS: &[(&str, &str)] = &[
    // 2.1.0.x says "Infinity" in full.
    (
        "inf: ERR Cannot serialise number: must not be NaN or Inf",
        "inf: ERR Cannot serialise number: must not be NaN or Infinity",
    ),
    (
        "-inf: ERR Cannot serialise number: must not be NaN or Inf",
        "-inf: ERR Cannot serialise number: must not be NaN or Infinity",
    ),
    (
        "nan: ERR Cannot serialise number: must not be NaN or Inf",
        "nan: ERR Cannot serialise number: must not be NaN or Infinity",
    ),
    (
        "nan in array: ERR Cannot serialise number: must not be NaN or Inf",
        "nan in array: ERR Cannot serialise number: must not be NaN or Infinity",
    ),
    (
        "inf key: ERR Cannot serialise number: must not be NaN or Inf",
        "inf key: ERR Cannot serialise number: must not be NaN or Infinity",
    ),
    (
        "nan off: ERR Cannot serialise number: must not be NaN or Inf",
        "nan off: ERR Cannot serialise number: must not be NaN or Infinity",
    ),
    // 2.1.0.x writes JavaScript's names, not printf's.
    ("nan on: [nan,inf,-inf]", "nan on: [NaN,Infinity,-Infinity]"),
    ("inf key on: #9 {\"inf\"=1}", "inf key on: #14 {\"Infinity\"=1}"),
    // 2.1.0.x allows a precision up to 16.
    (
        "precision 17: ERR bad argument #1 to '?' (expected integer between 1 and 14)",
        "precision 17: ERR bad argument #1 to '?' (expected integer between 1 and 16)",
    ),
    (
        "precision 0: ERR bad argument #1 to '?' (expected integer between 1 and 14)",
        "precision 0: ERR bad argument #1 to '?' (expected integer between 1 and 16)",
    ),
];

fn assert_same(reference: &[String], ours: &[String]) {
    let mut known_seen = vec![false; OPENRESTY_DIFFERS.len()];
    for (i, (want, got)) in reference.iter().zip(ours).enumerate() {
        if got == want {
            continue;
        }
        match OPENRESTY_DIFFERS.iter().position(|(r, m)| r == want && m == got) {
            Some(k) => known_seen[k] = true,
            None => panic!(
                "line {} differs from lua-cjson:\n  lua-cjson: {want}\n  Moongate:  {got}",
                i + 1
            ),
        }
    }
    assert_eq!(
        ours.len(),
        reference.len(),
        "Moongate printed {} lines, lua-cjson {}; first extra: {:?}",
        ours.len(),
        reference.len(),
        ours.get(reference.len()).or(reference.get(ours.len()))
    );
    for (k, seen) in known_seen.iter().enumerate() {
        assert!(seen, "the known difference {:?} did not occur", OPENRESTY_DIFFERS[k]);
    }
}

#[test]
fn corpus_matches_lua_cjson() {
    let lua = script(CORPUS);
    let want = reference(&lua);
    assert!(want.len() > 300, "the reference printed only {} lines", want.len());
    let got = moongate(&lua);
    assert_same(&want, &got);
}

#[test]
fn openresty_additions_behave_as_upstream_documents() {
    let got = moongate(&script(OPENRESTY));
    let bad: Vec<&String> = got.iter().filter(|l| !l.ends_with(": ok")).collect();
    assert!(bad.is_empty(), "{bad:#?}");
    assert!(got.len() >= 40, "{got:#?}");
}

#[test]
fn each_route_has_its_own_settings() {
    let a = "  hostnames: [a.test]\n  locations:\n  - path: /set\n    content: |\n      local cjson = require \"cjson\"\n      cjson.encode_empty_table_as_object(false)\n      cjson.encode_escape_forward_slash(false)\n      ngx.say(cjson.encode({}), cjson.encode(\"/\"))\n  - path: /get\n    content: |\n      local cjson = require \"cjson\"\n      ngx.say(cjson.encode({}), cjson.encode(\"/\"), tostring(require(\"cjson.safe\").encode_empty_table_as_object()))\n";
    let b = "  hostnames: [b.test]\n  locations:\n  - path: /\n    content: |\n      local cjson = require \"cjson\"\n      ngx.say(cjson.encode({}), cjson.encode(\"/\"), tostring(cjson.encode_empty_table_as_object()))\n";
    let s = Server::start(&format!("{}\n---\n{}", route("a", a), route("b", b)));
    assert_eq!(s.get_host("a.test", "/set").text(), "[]\"/\"\n");
    assert_eq!(
        s.get_host("b.test", "/").text(),
        "{}\"\\/\"true\n",
        "route B saw route A's settings"
    );
    // Route A keeps its own across requests; its cjson.safe is another instance.
    assert_eq!(s.get_host("a.test", "/get").text(), "[]\"/\"true\n");
}

/// Inputs that would crash or hang a careless implementation fail with
/// upstream's errors, or abort on the route's own limits, and the worker
/// lives on.
#[test]
fn hostile_inputs_fail_cleanly() {
    let prelude = r#"
      local cjson = require "cjson"
      local function try(name, f)
        local ok, e = pcall(f)
        ngx.say(name, ": ", tostring(ok), " ", tostring(e):sub(1, 60))
      end
      cjson.encode_max_depth(2147483647)
      cjson.decode_max_depth(2147483647)
"#;
    let deep = r#"
      local cycle = {}
      cycle[1] = cycle
      try("cycle", function() return cjson.encode(cycle) end)
      local ocycle = {}
      ocycle.k = ocycle
      try("object cycle", function() return cjson.encode(ocycle) end)
      try("deep decode", function() return cjson.decode(string.rep("[", 1000000)) end)
      try("deep objects", function() return cjson.decode(string.rep('{"a":', 300000)) end)
      ngx.say("alive")
"#;
    let huge = r#"
      local s = string.rep("\1", 1024 * 1024)
      local many = {}
      for i = 1, 400 do many[i] = s end
      try("huge output", function() return #cjson.encode(many) end)
"#;
    let sparse = r#"
      cjson.encode_sparse_array(false, 0)
      try("huge sparse", function() return #cjson.encode({[2^30] = 1}) end)
"#;
    let location = |path: &str, body: &str| format!("  - path: {path}\n    content: |{prelude}{body}");
    let s = Server::start(&route(
        "hostile",
        &format!(
            "  locations:\n{}{}{}",
            location("/deep", deep),
            location("/huge", huge),
            location("/sparse", sparse)
        ),
    ));
    let text = s.get("/deep").text();
    for needle in [
        "cycle: false Cannot serialise, excessive nesting (",
        "object cycle: false Cannot serialise, excessive nesting (",
        "deep decode: false Found too many nested data structures (",
        "deep objects: false Found too many nested data structures (",
        "alive",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}\n{}", s.logs());
    }
    // Output past what the route may build, or work past its budget: the
    // call fails or the request is aborted, promptly either way.
    for (path, needle) in [("/huge", "huge output: false"), ("/sparse", "huge sparse: false")] {
        let started = std::time::Instant::now();
        let r = s.get(path);
        assert!(
            r.status == 500 || r.text().contains(needle),
            "{path}: {} {}\n{}",
            r.status,
            r.text(),
            s.logs()
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{path} took {:?}",
            started.elapsed()
        );
    }
    assert!(s.get("/deep").text().contains("alive"), "the worker serves on");
}
