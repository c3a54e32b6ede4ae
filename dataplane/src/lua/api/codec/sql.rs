//! `ngx.quote_sql_str`.

/// MySQL-style quoting of `ngx.quote_sql_str`: single-quoted, with NUL, backspace, newline, CR,
/// tab, ^Z, backslash and both quote characters backslash-escaped.
pub fn quote_sql_str(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + 2);
    out.push(b'\'');
    for &byte in input {
        let escaped = match byte {
            0 => b'0',
            0x08 => b'b',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x1a => b'Z',
            b'\\' | b'\'' | b'"' => byte,
            _ => {
                out.push(byte);
                continue;
            }
        };
        out.extend_from_slice(&[b'\\', escaped]);
    }
    out.push(b'\'');
    out
}
