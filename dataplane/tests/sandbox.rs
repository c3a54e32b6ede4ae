//! The Lua sandbox as a handler sees it: no bytecode in or out, no ffi, only `traceback` of debug, an `io` without
//! files, no process control, and each LuaRoute with its own globals, standard library copies
//! and `require` space.

mod common;

use common::{IO_TIMEOUT, Server, route};

const PROBE: &str = r#"
local function kind(x) if x == nil then return "nil" end return type(x) end
local function req(name)
  local ok = pcall(require, name)
  return ok and "loaded" or "refused"
end
ngx.say("string.dump=", kind(string.dump))
ngx.say("(''):dump=", kind(("").dump))
ngx.say("io=", kind(io), " require(io)=", req("io"), " io.open=", select(2, io.open("/etc/passwd")))
ngx.say("ffi=", kind(ffi), " require(ffi)=", req("ffi"))
local dnames = {}
for k in pairs(debug) do dnames[#dnames + 1] = k end
ngx.say("debug=", kind(debug), " require(debug)=", req("debug"), " has ", table.concat(dnames, ","),
  " getinfo=", kind(debug.getinfo), " traceback ", debug.traceback("m"):match("^m\nstack traceback:\n") and "ok" or "bad")
ngx.say("package.loadlib=", kind(package and package.loadlib))
ngx.say("os.execute=", kind(os.execute), " os.exit=", kind(os.exit), " os.remove=", kind(os.remove))
ngx.say("dofile=", kind(dofile), " loadfile=", kind(loadfile))
ngx.say("os.time=", kind(os.time))
"#;

#[test]
fn dangerous_functions_are_unavailable() {
    let s = Server::start(&route(
        "sandbox",
        &format!("  locations:\n  - path: /\n    content: |{}", indent(PROBE)),
    ));
    let r = s.get("/");
    assert_eq!(r.status, 200, "{}", s.logs());
    let want = "string.dump=nil\n\
                (''):dump=nil\n\
                io=table require(io)=loaded io.open=/etc/passwd: file access is not allowed in a LuaRoute\n\
                ffi=nil require(ffi)=refused\n\
                debug=table require(debug)=loaded has traceback getinfo=nil traceback ok\n\
                package.loadlib=nil\n\
                os.execute=nil os.exit=nil os.remove=nil\n\
                dofile=nil loadfile=nil\n\
                os.time=function\n";
    assert_eq!(r.text(), want);
    // Libraries often drop io.open's error; the refusal is in the log all the same.
    s.wait_log(
        "io refused: /etc/passwd: file access is not allowed in a LuaRoute",
        IO_TIMEOUT,
    )
    .expect("the refused open is logged");
}

#[test]
fn binary_chunks_are_refused() {
    let s = Server::start(&route(
        "bytecode",
        r#"  locations:
  - path: /
    content: |
      local bc = "\27LJ\2\10\0\0\0\0"
      local f1, e1 = load(bc)
      local f2, e2 = load(bc, "x", "b")
      local f3, e3 = loadstring(bc)
      local f4 = load("return 40 + 2")
      ngx.say(tostring(f1), " ", tostring(f2), " ", tostring(f3), " ", f4())
      ngx.say(tostring(e1 ~= nil), " ", tostring(e2 ~= nil), " ", tostring(e3 ~= nil))
"#,
    ));
    let r = s.get("/");
    assert_eq!(r.status, 200, "{}", s.logs());
    assert_eq!(
        r.text(),
        "nil nil nil 42\ntrue true true\n",
        "binary chunks fail, text chunks load"
    );
}

#[test]
fn routes_have_separate_globals_and_require_spaces() {
    let a = route(
        "alpha",
        r#"  init: |
    who = "alpha"
    string.shout = function(s) return s:upper() .. "!" end
  modules:
    common: return {name = "alpha module"}
    only_alpha: return {}
  locations:
  - path: /a
    content: |
      ngx.say(who, " ", require("common").name, " ", tostring(pcall(require, "only_alpha")), " ", string.shout("hi"))
"#,
    );
    let b = route(
        "beta",
        r#"  init: who = "beta"
  modules:
    common: return {name = "beta module"}
  locations:
  - path: /b
    content: |
      ngx.say(who, " ", require("common").name, " ", tostring(pcall(require, "only_alpha")), " ", tostring(string.shout))
"#,
    );
    let s = Server::start(&format!("{a}---\n{b}"));
    // Twice, in both orders: nothing leaks from one route to the other through the VM they share.
    for _ in 0..2 {
        let ra = s.get("/a");
        assert_eq!(ra.text(), "alpha alpha module true HI!\n", "{}", s.logs());
        let rb = s.get("/b");
        assert_eq!(rb.text(), "beta beta module false nil\n", "{}", s.logs());
    }
}

/// Indents a multi-line Lua block for a YAML `|` scalar under a location key.
fn indent(lua: &str) -> String {
    lua.lines().map(|l| format!("      {l}\n")).collect()
}

#[test]
fn runaway_handlers_are_preempted_even_inside_pcall() {
    let s = Server::builder(&route(
        "spin",
        "  locations:\n  - path: /spin\n    content: |\n      local n = 0\n      while true do n = n + 1 end\n  - path: /sneaky\n    content: |\n      while true do pcall(function() while true do end end) end\n  - path: /ok\n    content: ngx.say('still serving')\n",
    ))
    .arg("--instruction-budget")
    .arg("2000000")
    .start();
    assert_eq!(s.get("/spin").status, 500);
    let line = s
        .wait_log("instruction budget exceeded", std::time::Duration::from_secs(10))
        .expect("logged");
    assert!(
        line.contains("route default/spin, location /spin") && line.contains("content_by_lua(default/spin /spin):2"),
        "{line}"
    );
    assert_eq!(s.get("/sneaky").status, 500, "pcall must not swallow the budget error");
    let r = s.get("/ok");
    assert_eq!((r.status, r.text().as_str()), (200, "still serving\n"));
}
