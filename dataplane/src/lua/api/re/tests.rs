//! Lua-level tests of `ngx.re`; expected values are what lua-nginx-module
//! 0.10.23 (with lua-resty-core) prints for the same scripts.

use mlua::{Lua, Table};

fn lua() -> Lua {
    let lua = Lua::new();
    let ngx = lua.create_table().unwrap();
    super::register(&lua, &ngx).unwrap();
    lua.globals().set("ngx", ngx).unwrap();
    lua
}

/// Runs `code`, which returns values; yields them joined by "|" via tostring.
fn run(code: &str) -> String {
    let lua = lua();
    let wrapped = format!(
        "local function join(...)
             local out = {{}}
             for i = 1, select('#', ...) do out[i] = tostring((select(i, ...))) end
             return table.concat(out, '|')
         end
         return join((function() {code} end)())"
    );
    lua.load(wrapped).eval::<mlua::LuaString>().unwrap().to_string_lossy()
}

#[test]
fn registers_table_on_ngx() {
    let lua = lua();
    let re: Table = lua.globals().get::<Table>("ngx").unwrap().get("re").unwrap();
    for name in ["match", "find", "gmatch", "sub", "gsub"] {
        assert!(re.get::<mlua::Function>(name).is_ok(), "{name}");
    }
}

#[test]
fn match_captures_false_groups_and_names() {
    let code = r#"local m = ngx.re.match("hello, world", "(world)|(hello)|(?<named>howdy)")
        return m[0], m[1], m[2], m[3], m.named, #m"#;
    assert_eq!(run(code), "hello|false|hello|false|false|3");
    assert_eq!(run(r#"return ngx.re.match("hello", "HELLO")"#), "nil");
    assert_eq!(run(r#"return ngx.re.match("hello", "HELLO", "i")[0]"#), "hello");
    let code = r#"local m = ngx.re.match("hello, 1234", "(?<first>[a-z]+), (?<first>[0-9]+)", "D")
        return table.concat(m.first, "-")"#;
    assert_eq!(run(code), "hello-1234");
    let code = r#"local m = ngx.re.match("test", "^(?:(?<a>foo)|(?<b>test))$", "D") return type(m.a), m.b[1]"#;
    assert_eq!(run(code), "nil|test");
}

#[test]
fn match_ctx_pos_and_res_table() {
    let code = r#"local ctx = { pos = 3 } local m = ngx.re.match("1234, hello", "([0-9]+)", "", ctx)
        return m[0], ctx.pos"#;
    assert_eq!(run(code), "34|5");
    let code = r#"local res = {} local m = ngx.re.match("a1b2", "([0-9])", "", nil, res) return m == res, res[1]"#;
    assert_eq!(run(code), "true|1");
    assert_eq!(
        run(r#"return ngx.re.match("abc", "b", nil, { pos = 5 })"#),
        "nil|pcre_exec() failed: -24"
    );
}

#[test]
fn errors_use_nginx_texts() {
    assert_eq!(
        run(r#"return ngx.re.match("x", "(abc")"#),
        r#"nil|pcre_compile() failed: missing ) in "(abc""#
    );
    assert_eq!(
        run(r#"return ngx.re.find("x", "(abc")"#),
        r#"nil|nil|pcre_compile() failed: missing ) in "(abc""#
    );
    let bad_utf8 = r#"return ngx.re.match(string.sub("你好", 1, 4), "你好", "u")"#;
    assert_eq!(run(bad_utf8), "nil|pcre_exec() failed: -10");
    let flag = r#"local ok, err = pcall(ngx.re.match, "x", ".", "Hm") return ok, err"#;
    assert!(run(flag).ends_with(r#"unknown flag "H" (flags "Hm")"#), "{}", run(flag));
    let arg = r#"local ok, err = pcall(ngx.re.match, "x", nil) return ok, err"#;
    assert_eq!(run(arg), "false|bad argument #2 to 'match' (string expected, got nil)");
}

#[test]
fn find_positions_and_nth() {
    assert_eq!(
        run(r#"return ngx.re.find("hello, 1234", "([0-9])([0-9]+)", "jo", nil, 2)"#),
        "9|11"
    );
    assert_eq!(
        run(r#"return ngx.re.find("hello, 1234", "([0-9])([0-9]+)", "", nil, 3)"#),
        "nil|nil|nth out of bound"
    );
    assert_eq!(
        run(r#"return ngx.re.find("hello, 1234", "([0-9])|(hello world)", "", nil, 2)"#),
        "nil|nil"
    );
    assert_eq!(run(r#"return ngx.re.find("hello, world", "[0-9]*")"#), "1|0");
    assert_eq!(run(r#"return ngx.re.find("hello", "x")"#), "nil");
}

#[test]
fn gmatch_iterates_and_steps_over_empty_matches() {
    let code = r#"local out = {} for m in ngx.re.gmatch("hello", "a|") do out[#out + 1] = "[" .. m[0] .. "]" end
        return table.concat(out), type(ngx.re.gmatch("a", "a"))"#;
    assert_eq!(run(code), "[][][][][][]|table");
    let code = r#"local it = ngx.re.gmatch("12 hello 34", "[0-9]", "a") return it()[0], it()[0], it(), it()"#;
    assert_eq!(run(code), "1|2|nil|nil");
    assert_eq!(
        run(r#"return ngx.re.gmatch("x", "(abc")"#),
        r#"nil|pcre_compile() failed: missing ) in "(abc""#
    );
}

#[test]
fn sub_and_gsub_templates() {
    assert_eq!(
        run(r#"return ngx.re.sub("a b c d", "(b) (c)", "[$0] [$1] [${2}] [$3] [$$]")"#),
        "a [b c] [b] [c] [] [$] d|1"
    );
    assert_eq!(
        run(r#"return ngx.re.gsub("{hello, world}", "([a-z])[a-z]+", "[$0,$1]")"#),
        "{[hello,h], [world,w]}|2"
    );
    assert_eq!(run(r#"return ngx.re.gsub("hello", "a|", "b")"#), "bhbeblblbob|6");
    assert_eq!(run(r#"return ngx.re.sub("TestCase", "^ *", "", "o")"#), "TestCase|1");
    assert_eq!(run(r#"return ngx.re.sub("abcd", "(?=c)", ".")"#), "ab.cd|1");
    assert_eq!(run(r#"return ngx.re.sub("hello, 34", "([0-9])", 72)"#), "hello, 724|1");
    assert_eq!(run(r#"return ngx.re.gsub("hello", "x", "y")"#), "hello|0");
    let bad = r#"return ngx.re.sub("b c", "(b)", "[${134")"#;
    assert_eq!(run(bad), "nil|nil|failed to compile the replacement template");
}

#[test]
fn gsub_function_replace_and_errors() {
    let code = r#"return ngx.re.gsub("hello, 34", "([0-9])|(world)", function(m) return "[" .. m[1] .. tostring(m[2]) .. "]" end)"#;
    assert_eq!(run(code), "hello, [3false][4false]|2");
    let nested = r#"return ngx.re.gsub("ab", "(a|b)", function(m) return (ngx.re.gsub(m[1], "(.)", "<$1>")) end)"#;
    assert_eq!(run(nested), "<a><b>|2");
    let thrown =
        r#"local t = {} local ok, err = pcall(ngx.re.gsub, "a", "a", function() error(t) end) return ok, err == t"#;
    assert_eq!(run(thrown), "false|true");
}

#[test]
fn dfa_reports_longest_match_without_groups() {
    assert_eq!(
        run(r#"local m = ngx.re.match("hello", "(he|hell)", "d") return m[0], m[1]"#),
        "hell|nil"
    );
    assert_eq!(
        run(r#"return ngx.re.gsub("hello, 1234 5678", "[0-9]|[0-9][0-9]", "world", "d")"#),
        "hello, worldworld worldworld|4"
    );
    assert_eq!(
        run(r#"return ngx.re.find("hello", "(he|hell)", "d", nil, 1)"#),
        "nil|nil|nth out of bound"
    );
}

#[test]
fn utf8_and_javascript_modes() {
    assert_eq!(
        run(r#"local s = "hello章亦春" local f, t = ngx.re.find(s, "HELLO.{2}", "iu") return s:sub(f, t)"#),
        "hello章亦"
    );
    assert_eq!(run(r#"return ngx.re.match("章", [[\u7AE0]], "uJ")[0]"#), "章");
    assert_eq!(
        run(r#"return ngx.re.gsub("章a", "", "-", "u")"#),
        "nil|nil|pcre_exec() failed: -11"
    );
}
