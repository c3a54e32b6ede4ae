//! `ngx.*` string codecs: digests, base64, URI escaping, query-argument (de)serialisation and
//! `ngx.quote_sql_str`.
//!
//! In: Lua values passed by handlers, or raw bytes from the core (query strings, request bodies).
//! Out: Lua strings/tables, or byte vectors for the core (`escape_uri`, `unescape_uri`,
//! `encode_args`, `decode_args*`).
//!
//! Behaviour follows lua-nginx-module 0.10.23 with lua-resty-core loaded, which is what OpenResty
//! runs: the digest, base64 and URI functions are resty.core's Lua wrappers (non-strings go through
//! `tostring`, `nil`/`false` become ""), while `hmac_sha1`, `quote_sql_str`, `encode_args` and
//! `decode_args` are lua-nginx-module C functions (strict arity, `luaL_check*` argument errors).
//! Error messages carry the same "chunk:line: " prefix Lua's `luaL_where` would add.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use mlua::{Function, Lua, LuaString, MultiValue, Table, Value};
use sha1::Sha1;

/// `ngx.decode_args` / `ngx.req.get_*_args` limit when the caller gives none.
pub const DEFAULT_MAX_ARGS: usize = 100;

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
const ESCAPE_URI_COMPONENT: usize = 2;

/// The two hex digits of `byte` in the given digit set (nginx escapes upper-case, md5 is lower-case;
/// too small a job for a dependency).
fn hex_pair(byte: u8, digits: &[u8; 16]) -> [u8; 2] {
    [digits[usize::from(byte >> 4)], digits[usize::from(byte & 0xf)]]
}

/// Percent-encodes `input` as nginx does: with the URI-component table (what `ngx.escape_uri`
/// uses by default) when `component`, else with the plain URI table (`type` 0).
pub fn escape_uri(input: &[u8], component: bool) -> Vec<u8> {
    escape_with(input, if component { ESCAPE_URI_COMPONENT } else { ESCAPE_URI })
}

fn escape_with(input: &[u8], table_index: usize) -> Vec<u8> {
    let table = &ESCAPE_TABLES[table_index];
    let mut out = Vec::with_capacity(input.len());
    for &byte in input {
        if table[usize::from(byte >> 5)] & (1 << (byte & 0x1f)) != 0 {
            out.push(b'%');
            out.extend_from_slice(&hex_pair(byte, b"0123456789ABCDEF"));
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

/// Parses a query string into a Lua table, ignoring the truncation flag; `max_args == 0` means
/// no limit. See [`decode_args_with_truncation`].
pub fn decode_args(lua: &Lua, args: &[u8], max_args: usize) -> mlua::Result<Table> {
    decode_args_with_truncation(lua, args, max_args).map(|(table, _)| table)
}

/// Parses a query string the way `ngx.decode_args` and `ngx.req.get_post_args` do: keys and values
/// are unescaped, a key without `=` maps to `true`, repeated keys collect their values in an array,
/// empty keys are dropped. Parsing stops after `max_args` `&`-separated pieces (0 = no limit), in
/// which case the flag is `true` (Lua then returns "truncated" as second value).
pub fn decode_args_with_truncation(lua: &Lua, args: &[u8], max_args: usize) -> mlua::Result<(Table, bool)> {
    let table = lua.create_table_with_capacity(0, 4)?;
    // nginx counts every `&`, including those ending empty or key-less pieces.
    for (count, piece) in args.split(|&byte| byte == b'&').enumerate() {
        if max_args > 0 && count == max_args {
            return Ok((table, true));
        }
        add_arg(lua, &table, piece)?;
    }
    Ok((table, false))
}

/// Parses a query string the way resty.core's `ngx.req.get_uri_args` does: the limit counts
/// `&`-separated pieces up front (truncated when there are more than `max_args`, 0 = no limit), then
/// keeps the first that many pieces with a non-empty key.
pub fn decode_uri_args(lua: &Lua, args: &[u8], max_args: usize) -> mlua::Result<(Table, bool)> {
    let table = lua.create_table_with_capacity(0, 4)?;
    let pieces = args.iter().filter(|&&byte| byte == b'&').count() + 1;
    let truncated = max_args > 0 && pieces > max_args;
    let limit = if truncated { max_args } else { pieces };
    let mut kept = 0;
    for piece in args.split(|&byte| byte == b'&') {
        if kept == limit {
            break;
        }
        if add_arg(lua, &table, piece)? {
            kept += 1;
        }
    }
    Ok((table, truncated))
}

/// Adds one `key[=value]` piece to `table`; returns whether it had a non-empty key.
fn add_arg(lua: &Lua, table: &Table, piece: &[u8]) -> mlua::Result<bool> {
    let (key, value) = match piece.iter().position(|&byte| byte == b'=') {
        Some(eq) => (unescape_uri(&piece[..eq]), Some(&piece[eq + 1..])),
        None => (unescape_uri(piece), None),
    };
    if key.is_empty() {
        return Ok(false);
    }
    let value = match value {
        Some(raw) => Value::String(lua.create_string(unescape_uri(raw))?),
        None => Value::Boolean(true),
    };
    let key = lua.create_string(key)?;
    match table.raw_get::<Value>(&key)? {
        Value::Nil => table.raw_set(key, value)?,
        Value::Table(values) => values.raw_push(value)?,
        previous => table.raw_set(key, lua.create_sequence_from([previous, value])?)?,
    }
    Ok(true)
}

/// Serialises a Lua table into a query string as `ngx.encode_args` and `ngx.req.set_uri_args` do:
/// pairs in table traversal order, keys and values escaped as URI components, `true` giving a bare
/// key, `false` skipped, array values repeating the key. Errors as lua-nginx-module raises them.
pub fn encode_args(lua: &Lua, table: &Table) -> mlua::Result<Vec<u8>> {
    let mut pairs: Vec<Vec<u8>> = Vec::new();
    for entry in table.pairs::<Value, Value>() {
        let (key, value) = entry?;
        let Value::String(key) = key else {
            let message = "attempt to use a non-string key in the \"args\" option table";
            return Err(runtime_error(lua, 1, message));
        };
        let key = escape_with(&key.as_bytes(), ESCAPE_URI_COMPONENT);
        match value {
            Value::Table(values) => {
                for entry in values.pairs::<Value, Value>() {
                    let (_, value) = entry?;
                    pairs.extend(encode_pair(lua, &key, value)?);
                }
            }
            value => pairs.extend(encode_pair(lua, &key, value)?),
        }
    }
    Ok(pairs.join(&b'&'))
}

/// One `key=value` (or bare `key`) for `encode_args`; `None` when the value is `false`.
fn encode_pair(lua: &Lua, key: &[u8], value: Value) -> mlua::Result<Option<Vec<u8>>> {
    let value = match value {
        Value::Boolean(false) => return Ok(None),
        Value::Boolean(true) => return Ok(Some(key.to_vec())),
        Value::String(_) | Value::Integer(_) | Value::Number(_) => lua.coerce_string(value)?,
        other => {
            let message = format!("attempt to use {} as query arg value", lua_type_name(&other));
            return Err(runtime_error(lua, 1, &message));
        }
    };
    let Some(value) = value else { return Ok(None) };
    let mut pair = key.to_vec();
    pair.push(b'=');
    pair.extend_from_slice(&escape_with(&value.as_bytes(), ESCAPE_URI_COMPONENT));
    Ok(Some(pair))
}

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

/// Decodes standard base64 as nginx's `ngx_decode_base64`: input ends at the first `=`, padding is
/// optional and unused trailing bits are ignored; any other byte outside the alphabet fails.
pub fn decode_base64(input: &[u8]) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone),
    );
    let end = input.iter().position(|&byte| byte == b'=').unwrap_or(input.len());
    let data = &input[..end];
    // The crate rejects these too, but checking first keeps "nil on bad input" independent of its
    // error variants.
    if data.len() % 4 == 1
        || !data
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || byte == b'+' || byte == b'/')
    {
        return None;
    }
    LENIENT.decode(data).ok()
}

/// Sets the codec functions on the `ngx` table.
pub fn register(lua: &Lua, ngx: &Table) -> mlua::Result<()> {
    // resty.core captures `tostring` when it loads; do the same so a later sandbox cannot change it.
    let tostring: Function = lua.globals().raw_get("tostring")?;

    // Functions taking one loosely coerced string and returning a string.
    type BytesFn = fn(&[u8]) -> Vec<u8>;
    let string_functions: [(&str, BytesFn); 4] = [
        ("md5", |s| {
            Md5::digest(s)
                .iter()
                .flat_map(|&byte| hex_pair(byte, b"0123456789abcdef"))
                .collect()
        }),
        ("md5_bin", |s| Md5::digest(s).to_vec()),
        ("sha1_bin", |s| Sha1::digest(s).to_vec()),
        ("unescape_uri", unescape_uri),
    ];
    for (name, f) in string_functions {
        let tostring = tostring.clone();
        let function =
            lua.create_function(move |lua, arg: Value| lua.create_string(f(&loose_bytes(&tostring, arg)?)))?;
        ngx.raw_set(name, function)?;
    }
    // nginx's crc32_short only uses a smaller table; both compute the same CRC-32.
    for name in ["crc32_short", "crc32_long"] {
        let tostring = tostring.clone();
        let function = lua.create_function(move |_, arg: Value| Ok(crc32fast::hash(&loose_bytes(&tostring, arg)?)))?;
        ngx.raw_set(name, function)?;
    }

    let to_string = tostring.clone();
    let encode_base64 = lua.create_function(move |lua, (arg, no_padding): (Value, Value)| {
        let bytes = loose_bytes(&to_string, arg)?;
        let engine = match no_padding {
            Value::Nil | Value::Boolean(false) => &base64::engine::general_purpose::STANDARD,
            Value::Boolean(true) => &base64::engine::general_purpose::STANDARD_NO_PAD,
            other => {
                let message = format!("bad no_padding: boolean expected, got {}", lua_type_name(&other));
                return Err(runtime_error(lua, 1, &message));
            }
        };
        lua.create_string(engine.encode(bytes))
    })?;
    ngx.raw_set("encode_base64", encode_base64)?;

    let decode_base64 = lua.create_function(|lua, arg: Value| match arg {
        Value::String(s) => decode_base64(&s.as_bytes())
            .map(|bytes| lua.create_string(bytes))
            .transpose(),
        _ => Err(runtime_error(lua, 1, "string argument only")),
    })?;
    ngx.raw_set("decode_base64", decode_base64)?;

    let to_string = tostring.clone();
    let escape = lua.create_function(move |lua, (arg, kind): (Value, Value)| {
        let bytes = loose_bytes(&to_string, arg)?;
        // resty.core raises these with level 3, i.e. at the caller's caller.
        let table_index = match kind {
            Value::Nil => ESCAPE_URI_COMPONENT,
            Value::Integer(_) | Value::Number(_) => {
                let number = lua.coerce_number(kind.clone())?.unwrap_or_default();
                if !(0.0..=6.0).contains(&number) && !number.is_nan() {
                    let shown = lua
                        .coerce_string(kind)?
                        .map(|s| s.to_string_lossy())
                        .unwrap_or_default();
                    return Err(runtime_error(lua, 2, &format!("\"type\" {shown} out of range")));
                }
                // The FFI call converts to a C int by truncation; NaN passes the range check there too.
                number as usize
            }
            _ => return Err(runtime_error(lua, 2, "\"type\" is not a number")),
        };
        lua.create_string(escape_with(&bytes, table_index))
    })?;
    ngx.raw_set("escape_uri", escape)?;

    let hmac_sha1 = lua.create_function(|lua, args: MultiValue| {
        if args.len() != 2 {
            let message = format!("expecting 2 arguments, but got {}", args.len());
            return Err(runtime_error(lua, 1, &message));
        }
        let key = check_bytes(lua, &args[0], 1)?;
        let message = check_bytes(lua, &args[1], 2)?;
        let mut mac = Hmac::<Sha1>::new_from_slice(&key).map_err(mlua::Error::external)?;
        mac.update(&message);
        lua.create_string(mac.finalize().into_bytes())
    })?;
    ngx.raw_set("hmac_sha1", hmac_sha1)?;

    let quote = lua.create_function(|lua, args: MultiValue| {
        if args.len() != 1 {
            return Err(runtime_error(lua, 1, "expecting one argument"));
        }
        lua.create_string(quote_sql_str(&check_bytes(lua, &args[0], 1)?))
    })?;
    ngx.raw_set("quote_sql_str", quote)?;

    let encode = lua.create_function(|lua, args: MultiValue| {
        if args.len() != 1 {
            let message = format!("expecting 1 argument but seen {}", args.len());
            return Err(runtime_error(lua, 1, &message));
        }
        match &args[0] {
            Value::Table(table) => lua.create_string(encode_args(lua, table)?),
            other => Err(type_error(lua, 1, "table", other)),
        }
    })?;
    ngx.raw_set("encode_args", encode)?;

    let decode = lua.create_function(|lua, args: MultiValue| {
        if args.len() != 1 && args.len() != 2 {
            let message = format!("expecting 1 or 2 arguments but seen {}", args.len());
            return Err(runtime_error(lua, 1, &message));
        }
        let query = check_bytes(lua, &args[0], 1)?;
        let max_args = if args.len() == 2 {
            match lua.coerce_number(args[1].clone())? {
                // luaL_checkint: truncate to a C int; zero and negatives mean "no limit".
                Some(number) => usize::try_from(number as i64 as i32).unwrap_or(0),
                None => return Err(type_error(lua, 2, "number", &args[1])),
            }
        } else {
            DEFAULT_MAX_ARGS
        };
        let (table, truncated) = decode_args_with_truncation(lua, &query, max_args)?;
        let mut results = MultiValue::new();
        results.push_back(Value::Table(table));
        if truncated {
            results.push_back(Value::String(lua.create_string("truncated")?));
        }
        Ok(results)
    })?;
    ngx.raw_set("decode_args", decode)?;
    Ok(())
}

/// resty.core's argument coercion: strings as they are, `nil`/`false` as "", anything else through
/// `tostring`.
fn loose_bytes(tostring: &Function, value: Value) -> mlua::Result<Vec<u8>> {
    let converted = match value {
        Value::Nil | Value::Boolean(false) => return Ok(Vec::new()),
        Value::String(s) => s,
        // LuaJIT's tostring itself rejects a __tostring that returns a non-string.
        other => tostring.call::<LuaString>(other)?,
    };
    Ok(converted.as_bytes().to_vec())
}

/// `luaL_checklstring` on argument `narg`: strings, and numbers as Lua formats them.
fn check_bytes(lua: &Lua, value: &Value, narg: usize) -> mlua::Result<Vec<u8>> {
    let converted = match value {
        Value::String(s) => Some(s.clone()),
        Value::Integer(_) | Value::Number(_) => lua.coerce_string(value.clone())?,
        _ => None,
    };
    converted
        .map(|s| s.as_bytes().to_vec())
        .ok_or_else(|| type_error(lua, narg, "string", value))
}

/// `luaL_argerror` for a wrong type: "bad argument #N to 'f' (string expected, got table)".
fn type_error(lua: &Lua, narg: usize, expected: &str, got: &Value) -> mlua::Error {
    arg_error(lua, narg, &format!("{expected} expected, got {}", lua_type_name(got)))
}

/// `luaL_typename`: the names Lua itself reports (light userdata is "userdata", FFI data "cdata").
pub fn lua_type_name(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Boolean(_) => "boolean",
        Value::Integer(_) | Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Table(_) => "table",
        Value::Function(_) => "function",
        Value::Thread(_) => "thread",
        Value::LightUserData(_) | Value::UserData(_) | Value::Error(_) => "userdata",
        _ => "cdata",
    }
}

/// `luaL_where(L, level)` as seen from inside a Rust callback (level 0 is the callback itself):
/// "chunkname:line: " when that frame is Lua code, "" otherwise.
pub fn lua_where(lua: &Lua, level: usize) -> String {
    lua.inspect_stack(level, |debug| {
        let line = debug.current_line().filter(|&line| line > 0)?;
        let source = debug.source();
        Some(format!("{}:{line}: ", source.short_src.as_deref().unwrap_or("?")))
    })
    .flatten()
    .unwrap_or_default()
}

/// A `luaL_error`-style runtime error positioned at stack `level` (1 = the calling Lua code).
pub fn runtime_error(lua: &Lua, level: usize, message: &str) -> mlua::Error {
    mlua::Error::RuntimeError(format!("{}{message}", lua_where(lua, level)))
}

/// A `luaL_argerror`-style error: "bad argument #N to 'name' (msg)", with the function name taken
/// from the call site as Lua does ('?' when unknown, e.g. when called through `pcall`).
pub fn arg_error(lua: &Lua, narg: usize, message: &str) -> mlua::Error {
    let (name, is_method) = lua
        .inspect_stack(0, |debug| {
            let names = debug.names();
            (
                names.name.map(|name| name.into_owned()),
                names.name_what == Some("method"),
            )
        })
        .unwrap_or((None, false));
    let name = name.unwrap_or_else(|| "?".to_owned());
    let text = match (is_method, narg) {
        (true, 1) => format!("calling '{name}' on bad self ({message})"),
        (true, _) => format!("bad argument #{} to '{name}' ({message})", narg - 1),
        (false, _) => format!("bad argument #{narg} to '{name}' ({message})"),
    };
    runtime_error(lua, 1, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lua_with_ngx() -> Lua {
        let lua = Lua::new();
        let ngx = lua.create_table().unwrap();
        register(&lua, &ngx).unwrap();
        lua.globals().set("ngx", ngx).unwrap();
        lua
    }

    fn eval<T: mlua::FromLuaMulti>(lua: &Lua, code: &str) -> T {
        lua.load(code).set_name("=t").eval().unwrap()
    }

    /// The message of the error `code` raises, without mlua's wrapping.
    fn error_of(lua: &Lua, code: &str) -> String {
        match lua.load(code).set_name("=t").exec().unwrap_err() {
            mlua::Error::CallbackError { cause, .. } => match cause.as_ref() {
                mlua::Error::RuntimeError(message) => message.clone(),
                other => other.to_string(),
            },
            other => other.to_string(),
        }
    }

    #[test]
    fn escapes_with_nginx_tables() {
        assert_eq!(escape_uri(b"-_.!~*'()", true), b"-_.!~*'()");
        assert_eq!(escape_uri(b",$@|`\xff\x00", true), b"%2C%24%40%7C%60%FF%00");
        assert_eq!(
            escape_uri(b"https://x/q?a=b c#\r", false),
            b"https://x/q%3Fa=b%20c%23%0D"
        );
        assert_eq!(escape_uri(b"<>[]{}\\\" ", false), b"<>[]{}\\\"%20");
        assert_eq!(unescape_uri(b"%ua%%20%au+x%4"), b"%ua% %au x%4");
        assert_eq!(unescape_uri(b"good%20job%"), b"good job%");
        assert_eq!(quote_sql_str(b"a\tb\0\x1a'\"\\\xe4"), b"'a\\tb\\0\\Z\\'\\\"\\\\\xe4'");
        assert_eq!(decode_base64(b"aGVsbG8=garbage").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64(b"aGVsbG9").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64(b"==").as_deref(), Some(&b""[..]));
        assert!(decode_base64(b"aGVsb").is_none() && decode_base64(b"-_").is_none() && decode_base64(b"^*~").is_none());
    }

    #[test]
    fn digests_and_codecs_from_lua() {
        let lua = lua_with_ngx();
        let hashes: (String, String, String, usize, f64) = eval(
            &lua,
            "return ngx.md5('hello'), ngx.md5(nil), ngx.md5(45), #ngx.md5_bin(false), ngx.crc32_long('hello, world')",
        );
        assert_eq!(hashes.0, "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(
            (hashes.1.as_str(), hashes.2.as_str()),
            ("d41d8cd98f00b204e9800998ecf8427e", "6c8349cc7260ae62e3b1396831a8398f")
        );
        assert_eq!((hashes.3, hashes.4), (16, 4289425978.0));
        let b64: (String, String, String) = eval(
            &lua,
            "return ngx.encode_base64(ngx.hmac_sha1('thisisverysecretstuff', 'some string we want to sign')), \
             ngx.encode_base64(ngx.sha1_bin(512)), ngx.encode_base64('hello', true)",
        );
        assert_eq!(
            b64,
            (
                "R/pvxzHC4NLtj7S+kXFg/NePTmk=".into(),
                "zgmxJ9SPg4aKRWReJG07UvS97L4=".into(),
                "aGVsbG8".into()
            )
        );
        let decoded: (Option<String>, String) =
            eval(&lua, "return ngx.decode_base64('^*~'), ngx.decode_base64('aGVsbG8=')");
        assert_eq!(decoded, (None, "hello".into()));
        let escaped: (String, String, String) = eval(
            &lua,
            "return ngx.escape_uri('a b+c', 1.5), ngx.escape_uri('a/b', 0), ngx.escape_uri(nil)",
        );
        assert_eq!(escaped, ("a%20b%2Bc".into(), "a/b".into(), String::new()));
    }

    #[test]
    fn argument_errors_match_lua_nginx_module() {
        let lua = lua_with_ngx();
        for (code, message) in [
            ("ngx.decode_base64(32)", "t:1: string argument only"),
            (
                "ngx.encode_base64('w', 0)",
                "t:1: bad no_padding: boolean expected, got number",
            ),
            // resty.core raises escape_uri's errors one level further up.
            (
                "local f = function() ngx.escape_uri('w', 10) end\nf()",
                "t:2: \"type\" 10 out of range",
            ),
            ("local x = ngx.escape_uri('w', '2')", "\"type\" is not a number"),
            (
                "ngx.hmac_sha1('k', {})",
                "t:1: bad argument #2 to 'hmac_sha1' (string expected, got table)",
            ),
            ("ngx.hmac_sha1('k')", "t:1: expecting 2 arguments, but got 1"),
            ("ngx.quote_sql_str()", "t:1: expecting one argument"),
            (
                "ngx.decode_args('a', 'x')",
                "t:1: bad argument #2 to 'decode_args' (number expected, got string)",
            ),
            ("ngx.encode_args()", "t:1: expecting 1 argument but seen 0"),
            (
                "ngx.encode_args({1})",
                "t:1: attempt to use a non-string key in the \"args\" option table",
            ),
            (
                "ngx.encode_args({a = print})",
                "t:1: attempt to use function as query arg value",
            ),
            (
                "ngx.encode_args({a = {{}}})",
                "t:1: attempt to use table as query arg value",
            ),
            // Positions are those of the running coroutine.
            (
                "coroutine.wrap(function()\n ngx.quote_sql_str({})\n end)()",
                "t:2: bad argument #1 to 'quote_sql_str' (string expected, got table)",
            ),
        ] {
            assert_eq!(error_of(&lua, code), message, "{code}");
        }
        // Through pcall the callee has no name and no calling Lua line, as in LuaJIT.
        let via_pcall: String = eval(
            &lua,
            "local ok, err = pcall(ngx.encode_args, true) return tostring(err)",
        );
        assert!(
            via_pcall.contains(" bad argument #1 to '?' (table expected, got boolean)\n"),
            "{via_pcall}"
        );
    }

    #[test]
    fn encodes_and_decodes_args_like_nginx() {
        let lua = lua_with_ngx();
        let encoded: (String, String, String) = eval(
            &lua,
            "return ngx.encode_args({a = {'x', true, false, 3, 'y z'}}), ngx.encode_args({['a b'] = true, c = false}), \
             ngx.encode_args({foo = ',$@|`'})",
        );
        assert_eq!(
            encoded,
            ("a=x&a&a=3&a=y%20z".into(), "a%20b".into(), "foo=%2C%24%40%7C%60".into())
        );
        let summary: String = eval(
            &lua,
            "local t, err = ngx.decode_args('a+b=c+d%20e&%3D=%26&f&a=1&a&a=2&&=x&g=')\n\
             return table.concat({t['a b'], t['='], tostring(t.f), t.a[1], tostring(t.a[2]), t.a[3], t.g, \
             tostring(err), tostring(t[''])}, '|')",
        );
        assert_eq!(summary, "c d e|&|true|1|true|2||nil|nil");
        let counts: (usize, Option<String>, usize, Option<String>, usize) = eval(
            &lua,
            "local function n(t) local c = 0 for _ in pairs(t) do c = c + 1 end return c end\n\
             local a, e1 = ngx.decode_args('a&b&c', 1.7)\n local b, e2 = ngx.decode_args('a&b&', 2)\n\
             return n(a), e1, n(b), e2, n(ngx.decode_args('a&b&c', -1))",
        );
        assert_eq!(counts, (1, Some("truncated".into()), 2, Some("truncated".into()), 3));
        // `get_uri_args` counts pieces first, then keeps that many non-empty keys.
        let (table, truncated) = decode_uri_args(&lua, b"&&&a", 2).unwrap();
        assert!(truncated && table.get::<bool>("a").unwrap());
        let (table, truncated) = decode_args_with_truncation(&lua, b"&&&a", 2).unwrap();
        assert!(truncated && table.is_empty());
        let (table, truncated) = decode_uri_args(&lua, b"foo=3&bar&baz=2", 2).unwrap();
        assert!(truncated && table.get::<String>("foo").unwrap() == "3" && table.get::<bool>("bar").unwrap());
        assert!(decode_args(&lua, b"", 0).unwrap().is_empty());
        let table: Table = eval(&lua, "return {b = 1.5}");
        assert_eq!(encode_args(&lua, &table).unwrap(), b"b=1.5");
    }
}
