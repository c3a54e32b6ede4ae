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
