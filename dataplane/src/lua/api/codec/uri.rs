//! URI escaping: `ngx.escape_uri` and `ngx.unescape_uri` with nginx's escape tables
//! (`ngx_escape_uri`) and component unescaping (`ngx_unescape_uri`).

/// Escape tables from lua-nginx-module's `ngx_http_lua_escape_uri`, indexed by the `type` argument
/// of `ngx.escape_uri` (0 URI, 1 args, 2 URI component, 3 HTML, 4 refresh, 5 memcached,
/// 6 mail auth). Each is a 256-bit set of bytes that must be percent-encoded.
#[rustfmt::skip]
const ESCAPE_TABLES: [[u32; 8]; 7] = [
    // URI: " ", "#", "%", "?", %00-%1F, %7F-%FF
    [0xffffffff, 0x80000029, 0x00000000, 0x80000000, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff],
    // args: " ", "#", "%", "+", "?", %00-%1F, %7F-%FF
    [0xffffffff, 0x80000829, 0x00000000, 0x80000000, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff],
    // URI component: not ALPHA, DIGIT, "-", ".", "_", "~", "!", "*", "'", "(", ")"
    [0xffffffff, 0xfc00987d, 0x78000001, 0xb8000001, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff],
    // HTML: " ", "#", """, "%", "'", %00-%1F, %7F-%FF
    [0xffffffff, 0x000000ad, 0x00000000, 0x80000000, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff],
    // refresh: " ", """, "%", "'", %00-%1F, %7F-%FF
    [0xffffffff, 0x00000085, 0x00000000, 0x80000000, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff],
    // memcached: " ", "%", %00-%1F
    [0xffffffff, 0x00000021, 0x00000000, 0x00000000, 0, 0, 0, 0],
    // mail auth: same as memcached
    [0xffffffff, 0x00000021, 0x00000000, 0x00000000, 0, 0, 0, 0],
];
const ESCAPE_URI: usize = 0;
pub(super) const ESCAPE_URI_COMPONENT: usize = 2;

/// Percent-encodes `input` as nginx does: with the URI-component table (what `ngx.escape_uri`
/// uses by default) when `component`, else with the plain URI table (`type` 0).
pub fn escape_uri(input: &[u8], component: bool) -> Vec<u8> {
    escape_with(input, if component { ESCAPE_URI_COMPONENT } else { ESCAPE_URI })
}

/// Percent-encodes `input` with the escape table `table_index` (`ngx.escape_uri`'s `type`).
pub(super) fn escape_with(input: &[u8], table_index: usize) -> Vec<u8> {
    let table = &ESCAPE_TABLES[table_index];
    let mut out = Vec::with_capacity(input.len());
    for &byte in input {
        if table[usize::from(byte >> 5)] & (1 << (byte & 0x1f)) != 0 {
            out.push(b'%');
            out.extend_from_slice(&super::hex_pair(byte, b"0123456789ABCDEF"));
        } else {
            out.push(byte);
        }
    }
    out
}

/// Decodes `%XX` escapes and `+` (as a space), like lua-nginx-module's component unescaping:
/// a `%` not followed by two hex digits is kept literally.
pub fn unescape_uri(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let byte = input[i];
        i += 1;
        match byte {
            b'%' => match (input.get(i).and_then(hex_value), input.get(i + 1).and_then(hex_value)) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            _ => out.push(byte),
        }
    }
    out
}

fn hex_value(byte: &u8) -> Option<u8> {
    char::from(*byte)
        .to_digit(16)
        .and_then(|digit| u8::try_from(digit).ok())
}
