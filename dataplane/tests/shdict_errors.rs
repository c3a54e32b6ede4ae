//! Bad input to `ngx.shared.DICT` gets the results lua-nginx-module gives.
//! The expected lines were produced by nginx 1.22.1 + lua-nginx-module 0.10.23
//! running the same handler (only the chunk name of the last line differs).

mod common;

use common::{Server, route};

const HANDLER: &str = r#"      local d = ngx.shared.d
      local function try(label, f, ...)
        local ok, a, b, c = pcall(f, ...)
        ngx.say(label, ": ", tostring(ok), " ", tostring(a), " ", tostring(b), " ", tostring(c))
      end
      try("set no key", d.set, d)
      try("set empty key", d.set, d, "", 1)
      try("set long key", d.set, d, string.rep("k", 65536), 1)
      try("set 65535 key", d.set, d, string.rep("k", 65535), 1)
      try("set table", d.set, d, "k", {})
      try("set function", d.set, d, "k", print)
      try("dot call", d.get, "k")
      try("get nil key", d.get, d, nil)
      try("incr not number", function() d:set("s", "str") return d:incr("s", 1) end)
      try("lpush on number", function() d:set("num", 1) return d:lpush("num", 1) end)
      try("too large", ngx.shared.tiny.set, ngx.shared.tiny, "big", string.rep("x", 20000))
      try("safe_set too large", ngx.shared.tiny.safe_set, ngx.shared.tiny, "big", string.rep("x", 20000))
      try("add exists", function() d:set("e", 1) return d:add("e", 2) end)
      try("replace missing", d.replace, d, "missing", 1)
      try("expire missing", d.expire, d, "missing", 1)
      try("ttl missing", d.ttl, d, "missing")
      try("missing dict", function() return ngx.shared.nope:get("k") end)
"#;

#[test]
fn dict_bad_input_matches_lua_nginx_module() {
    let content: String = HANDLER.lines().map(|l| format!("\n{l}")).collect();
    let s = Server::start(&route(
        "bad",
        &format!(
            "  sharedDicts: [{{name: d, capacity: 1m}}, {{name: tiny, capacity: 12k}}]\n  locations:\n  - path: /t\n    content: |{content}\n"
        ),
    ));
    let r = s.get("/t");
    assert_eq!(r.status, 200, "{}", s.logs());
    let want = "\
set no key: true nil nil key nil
set empty key: true nil empty key nil
set long key: true nil key too long nil
set 65535 key: true true nil false
set table: true nil bad value type nil
set function: true nil bad value type nil
dot call: false bad \"zone\" argument nil nil
get nil key: true nil nil key nil
incr not number: true nil not a number nil
lpush on number: true nil value not a list nil
too large: true false no memory false
safe_set too large: true false no memory false
add exists: true false exists false
replace missing: true false not found false
expire missing: true nil not found nil
ttl missing: true nil not found nil
missing dict: false content_by_lua(default/bad /t):22: attempt to index field 'nope' (a nil value) nil nil
";
    assert_eq!(r.text(), want);
}
