-- lua-resty-websocket's protocol module (resty.websocket.protocol, 0.08 API:
-- recv_frame, build_frame, send_frame, new_tab), compiled in the requiring
-- route's environment. Upstream unmasks payloads through an ffi char buffer;
-- here the native `xor` does it. Error strings are upstream's, word for word.
local natives = ...
local xor = natives.xor

local bit = require "bit"
local byte, char, sub = string.byte, string.char, string.sub
local band, bor, lshift, rshift = bit.band, bit.bor, bit.lshift, bit.rshift
local rand = math.random
local type, tostring = type, tostring

local new_tab = require "table.new"

local _M = new_tab(0, 5)
_M.new_tab = new_tab
_M._VERSION = '0.08'

local types = {
    [0x0] = "continuation",
    [0x1] = "text",
    [0x2] = "binary",
    [0x8] = "close",
    [0x9] = "ping",
    [0xa] = "pong",
}

function _M.recv_frame(sock, max_payload_len, force_masking)
    local data, err = sock:receive(2)
    if not data then
        return nil, nil, "failed to receive the first 2 bytes: " .. err
    end
    local fst, snd = byte(data, 1, 2)
    local fin = band(fst, 0x80) ~= 0
    if band(fst, 0x70) ~= 0 then
        return nil, nil, "bad RSV1, RSV2, or RSV3 bits"
    end
    local opcode = band(fst, 0x0f)
    if opcode >= 0x3 and opcode <= 0x7 then
        return nil, nil, "reserved non-control frames"
    end
    if opcode >= 0xb and opcode <= 0xf then
        return nil, nil, "reserved control frames"
    end
    local mask = band(snd, 0x80) ~= 0
    if force_masking and not mask then
        return nil, nil, "frame unmasked"
    end
    local payload_len = band(snd, 0x7f)
    if payload_len == 126 then
        local data, err = sock:receive(2)
        if not data then
            return nil, nil, "failed to receive the 2 byte payload length: " .. (err or "unknown")
        end
        payload_len = bor(lshift(byte(data, 1), 8), byte(data, 2))
    elseif payload_len == 127 then
        local data, err = sock:receive(8)
        if not data then
            return nil, nil, "failed to receive the 8 byte payload length: " .. (err or "unknown")
        end
        if byte(data, 1) ~= 0 or byte(data, 2) ~= 0 or byte(data, 3) ~= 0 or byte(data, 4) ~= 0 then
            return nil, nil, "payload len too large"
        end
        local fifth = byte(data, 5)
        if band(fifth, 0x80) ~= 0 then
            return nil, nil, "payload len too large"
        end
        payload_len = bor(lshift(fifth, 24), lshift(byte(data, 6), 16), lshift(byte(data, 7), 8), byte(data, 8))
    end
    if band(opcode, 0x8) ~= 0 then
        if payload_len > 125 then
            return nil, nil, "too long payload for control frame"
        end
        if not fin then
            return nil, nil, "fragmented control frame"
        end
    end
    if payload_len > max_payload_len then
        return nil, nil, "exceeding max payload len"
    end
    local rest = mask and payload_len + 4 or payload_len
    local data
    if rest > 0 then
        data, err = sock:receive(rest)
        if not data then
            return nil, nil, "failed to read masking-len and payload: " .. (err or "unknown")
        end
    else
        data = ""
    end
    local payload = data
    if mask then
        payload = xor(sub(data, 5), sub(data, 1, 4))
    end
    if opcode == 0x8 then
        if payload_len > 0 then
            if payload_len < 2 then
                return nil, nil, "close frame with a body must carry a 2-byte status code"
            end
            local code = bor(lshift(byte(payload, 1), 8), byte(payload, 2))
            return sub(payload, 3), "close", code
        end
        return "", "close", nil
    end
    return payload, types[opcode], not fin and "again" or nil
end

local function build_frame(fin, opcode, payload_len, payload, masking)
    local fst = fin and bor(0x80, opcode) or opcode
    local snd, extra_len_bytes
    if payload_len <= 125 then
        snd = payload_len
        extra_len_bytes = ""
    elseif payload_len <= 65535 then
        snd = 126
        extra_len_bytes = char(band(rshift(payload_len, 8), 0xff), band(payload_len, 0xff))
    else
        if band(payload_len, 0x7fffffff) < payload_len then
            return nil, "payload too big"
        end
        snd = 127
        -- As upstream: 31-bit lengths only.
        extra_len_bytes = char(0, 0, 0, 0, band(rshift(payload_len, 24), 0xff), band(rshift(payload_len, 16), 0xff),
                               band(rshift(payload_len, 8), 0xff), band(payload_len, 0xff))
    end
    local masking_key
    if masking then
        snd = bor(snd, 0x80)
        local key = rand(0xffffffff)
        masking_key = char(band(rshift(key, 24), 0xff), band(rshift(key, 16), 0xff), band(rshift(key, 8), 0xff),
                           band(key, 0xff))
        payload = xor(payload, masking_key)
    else
        masking_key = ""
    end
    return char(fst, snd) .. extra_len_bytes .. masking_key .. payload
end
_M.build_frame = build_frame

function _M.send_frame(sock, fin, opcode, payload, max_payload_len, masking)
    if not payload then
        payload = ""
    elseif type(payload) ~= "string" then
        payload = tostring(payload)
    end
    local payload_len = #payload
    if payload_len > max_payload_len then
        return nil, "payload too big"
    end
    if band(opcode, 0x8) ~= 0 then
        if payload_len > 125 then
            return nil, "too much payload for control frame"
        end
        if not fin then
            return nil, "fragmented control frame"
        end
    end
    local frame, err = build_frame(fin, opcode, payload_len, payload, masking)
    if not frame then
        return nil, "failed to build frame: " .. err
    end
    local bytes, err = sock:send(frame)
    if not bytes then
        return nil, "failed to send frame: " .. err
    end
    return bytes
end

return _M
