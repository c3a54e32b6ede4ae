//! Lua string patterns as route code sees them in the real dataplane: the Rust
//! `string.find/match/gmatch/gsub` are the ones in a route's sandbox, their errors reach
//! `pcall` as the plain strings LuaJIT raises, and recursion through a `gsub` callback, which
//! crashes a worker running LuaJIT's C `gsub`, fails the one call and leaves the worker serving.

mod common;

use common::{Server, route};

const PROBE: &str = r#"
local ok, e = pcall(function() local a = string.find(nil, "x") return a end)
ngx.say("error type=", type(e), " text=", e)
ok, e = pcall(function() local a = ("x"):match("%") return a end)
ngx.say("pattern error=", e)
ngx.say("find=", table.concat({ ("key=value"):find("^(%w+)=(%w+)$") }, ","))
ngx.say("gsub=", (("a  b \t c"):gsub("%s+", " ")))
local words = {}
for w in ("one two three"):gmatch("%a+") do words[#words + 1] = w end
ngx.say("gmatch=", table.concat(words, "|"))
local function deep(n)
  if n == 0 then return "" end
  return (("x"):gsub("x", function() return deep(n - 1) end))
end
ok, e = pcall(deep, 100000)
ngx.say("deep ok=", tostring(ok), " error ends with C stack overflow=", tostring(e:sub(-16) == "C stack overflow"))
"#;

fn indent(lua: &str) -> String {
    lua.lines().map(|l| format!("      {l}\n")).collect()
}

#[test]
fn route_code_gets_the_rust_pattern_functions_with_luajit_semantics() {
    // The recursion below is one unpreemptible stretch (Lua called back from
    // Rust): the operator's stretch limit is raised to the whole budget, so
    // that the C stack guard, not a slow machine's CPU clock, is what ends it.
    let s = Server::builder(&route(
        "patterns",
        &format!(
            "  locations:\n  - path: /probe\n    content: |\n{}  - path: /ok\n    content: ngx.say('still serving')\n",
            indent(PROBE)
        ),
    ))
    .arg("--max-unpreemptible")
    .arg("100000000")
    .start();
    let r = s.get("/probe");
    assert_eq!(r.status, 200, "{}", s.logs());
    let text = r.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert!(
        lines[0].starts_with("error type=string text=")
            && lines[0].ends_with(": bad argument #1 to 'find' (string expected, got nil)"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("pattern error=") && lines[1].ends_with(": malformed pattern (ends with '%')"),
        "{text}"
    );
    assert_eq!(lines[2], "find=1,9,key,value");
    assert_eq!(lines[3], "gsub=a b c");
    assert_eq!(lines[4], "gmatch=one|two|three");
    assert_eq!(lines[5], "deep ok=false error ends with C stack overflow=true");
    // The worker that ran the recursion is alive and serving.
    let r = s.get("/ok");
    assert_eq!(
        (r.status, r.text()),
        (200, "still serving\n".to_string()),
        "{}",
        s.logs()
    );
}
