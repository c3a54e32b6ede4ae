//! The built-in libraries (`lua/lib`) through the real binary: routes `require` each module
//! and their outputs are checked against known vectors (RFC 1321, FIPS 180 "abc" digests,
//! FIPS-197) and against Debian's `openssl enc`, run by the test, for AES and its key
//! derivation (EVP_BytesToKey, which `openssl enc -md <digest> -S <salt>` uses), and against
//! `openssl dgst -hmac` for `resty.hmac`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, route};

/// Indents a multi-line Lua block for a YAML `|` scalar under a location key.
fn indent(lua: &str) -> String {
    lua.lines().map(|l| format!("      {l}\n")).collect()
}

fn location(path: &str, lua: &str) -> String {
    format!("  - path: {path}\n    match: Exact\n    content: |\n{}", indent(lua))
}

/// `openssl enc -e <args>` of `plain`, in hex; the `Salted__` header, if any, removed.
fn openssl_hex(args: &[&str], plain: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .arg("enc")
        .arg("-e")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl (Debian's openssl package) must be installed");
    child.stdin.take().unwrap().write_all(plain).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl enc {args:?} failed");
    let mut bytes = out.stdout.as_slice();
    if bytes.starts_with(b"Salted__") {
        bytes = &bytes[16..];
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const PLAIN: &str = "Moongate says hello to AES, at some length.";

#[test]
fn resty_aes_matches_openssl_enc() {
    // (lua cipher, lua hash, salt, openssl args)
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "aes.cipher(128, 'cbc')",
            "aes.hash.md5",
            "'01234567'",
            &[
                "-aes-128-cbc",
                "-md",
                "md5",
                "-pass",
                "pass:secret",
                "-S",
                "3031323334353637",
            ],
        ),
        (
            "aes.cipher(192, 'cbc')",
            "aes.hash.sha1",
            "'abcdefgh'",
            &[
                "-aes-192-cbc",
                "-md",
                "sha1",
                "-pass",
                "pass:secret",
                "-S",
                "6162636465666768",
            ],
        ),
        (
            "aes.cipher(256, 'cbc')",
            "aes.hash.sha256",
            "nil",
            &["-aes-256-cbc", "-md", "sha256", "-pass", "pass:secret", "-nosalt"],
        ),
        (
            "aes.cipher(256, 'ecb')",
            "aes.hash.sha512",
            "'saltsalt'",
            &[
                "-aes-256-ecb",
                "-md",
                "sha512",
                "-pass",
                "pass:secret",
                "-S",
                "73616c7473616c74",
            ],
        ),
        (
            "aes.cipher(128, 'ecb')",
            "nil",
            "nil",
            &["-aes-128-ecb", "-md", "md5", "-pass", "pass:secret", "-nosalt"],
        ),
        (
            "nil",
            "aes.hash.sha384",
            "'01234567'",
            &[
                "-aes-128-cbc",
                "-md",
                "sha384",
                "-pass",
                "pass:secret",
                "-S",
                "3031323334353637",
            ],
        ),
    ];
    let mut lua = String::from(
        "local aes = require 'resty.aes'\nlocal str = require 'resty.string'\nlocal plain = ngx.unescape_uri(ngx.var.arg_p)\n",
    );
    for (cipher, hash, salt, _) in cases {
        lua.push_str(&format!(
            "do\n  local a = assert(aes:new('secret', {salt}, {cipher}, {hash}))\n  local c = a:encrypt(plain)\n  assert(a:decrypt(c) == plain, 'round trip')\n  assert(a:encrypt(plain) == c, 'same IV every call')\n  ngx.say(str.to_hex(c))\nend\n"
        ));
    }
    // Raw key and IV, `{iv = ...}` form: `openssl enc -K -iv`.
    lua.push_str(
        "do\n  local a = assert(aes:new('0123456789abcdef', nil, aes.cipher(128, 'cbc'), {iv = 'fedcba9876543210'}))\n  ngx.say(str.to_hex(a:encrypt(plain)))\n  local b = assert(aes:new('k', nil, aes.cipher(256, 'cbc'), {iv = 'fedcba9876543210', method = function(k) return string.rep(k, 32) end}))\n  ngx.say(str.to_hex(b:encrypt(plain)))\nend\n",
    );
    lua.push_str(
        "local a = aes:new('secret')\nngx.say(tostring(a:decrypt('short')), ' ', tostring(a:decrypt('')))\n\
         ngx.say(select(2, aes:new('secret', 'short')), ' ', select(2, aes:new('k', nil, nil, {iv = 'x'})), ' ', select(2, aes:new('k', nil, nil, {iv = 'fedcba9876543210'})))\n\
         ngx.say(select('#', pcall(aes.cipher, 128, 'ctr')), ' ', tostring(select(2, pcall(aes.cipher, 128, 'ctr'))))\n",
    );
    let s = Server::start(&route("aes", &format!("  locations:\n{}", location("/aes", &lua))));
    let r = s.get(&format!("/aes?p={}", PLAIN.replace(' ', "%20")));
    assert_eq!(r.status, 200, "{}", s.logs());
    let text = r.text();
    let lines: Vec<&str> = text.lines().collect();
    for (i, (.., args)) in cases.iter().enumerate() {
        assert_eq!(lines[i], openssl_hex(args, PLAIN.as_bytes()), "case {i}: {args:?}");
    }
    let raw = openssl_hex(
        &[
            "-aes-128-cbc",
            "-K",
            "30313233343536373839616263646566",
            "-iv",
            "66656463626139383736353433323130",
        ],
        PLAIN.as_bytes(),
    );
    assert_eq!(lines[cases.len()], raw);
    let key256 = "6b".repeat(32);
    let raw256 = openssl_hex(
        &["-aes-256-cbc", "-K", &key256, "-iv", "66656463626139383736353433323130"],
        PLAIN.as_bytes(),
    );
    assert_eq!(lines[cases.len() + 1], raw256);
    assert_eq!(lines[cases.len() + 2], "nil nil");
    assert_eq!(
        lines[cases.len() + 3],
        "salt must be 8 characters or nil bad iv bad key length"
    );
    assert!(lines[cases.len() + 4].starts_with("2 "), "{text}");
    assert!(
        lines[cases.len() + 4].contains("aes-128-ctr is not available"),
        "{text}"
    );
}

#[test]
fn digests_string_and_random() {
    let lua = r#"
local str = require "resty.string"
for _, name in ipairs({"md5", "sha1", "sha224", "sha256", "sha384", "sha512"}) do
    local h = require("resty." .. name):new()
    h:update("a")
    h:update("bc")
    local d = h:final()
    h:reset()
    h:update("abc")
    assert(h:final() == d, name .. " reset")
    ngx.say(name, " ", str.to_hex(d))
end
local m = require("resty.md5"):new()
m:update("")
ngx.say("empty ", str.to_hex(m:final()))
ngx.say(str.atoi("12345"), " ", str.atoi("12a"), " ", str.atoi(""))
local random = require "resty.random"
local a, b = random.bytes(16), random.bytes(16, true)
ngx.say(#a, " ", #b, " ", tostring(a ~= b), " ", #random.bytes(0), " ", tostring(random.bytes(-1)), " ", tostring(random.bytes("x")))
ngx.say(tostring(select(2, pcall(m.update, m, {}))))
"#;
    let s = Server::start(&route("digests", &format!("  locations:\n{}", location("/d", lua))));
    let r = s.get("/d");
    assert_eq!(r.status, 200, "{}", s.logs());
    let text = r.text();
    let want = [
        "md5 900150983cd24fb0d6963f7d28e17f72",
        "sha1 a9993e364706816aba3e25717850c26c9cd0d89d",
        "sha224 23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7",
        "sha256 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "sha384 cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7",
        "sha512 ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "empty d41d8cd98f00b204e9800998ecf8427e",
        "12345 -1 -1",
        "16 16 true 0 nil nil",
    ];
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..want.len()], &want[..], "{text}");
    assert!(lines[want.len()].contains("string expected, got table"), "{text}");
}

/// `openssl dgst -<digest> -hmac <key>` of `message`, in hex.
fn openssl_hmac_hex(digest: &str, key: &str, message: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", &format!("-{digest}"), "-hmac", key, "-r"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl (Debian's openssl package) must be installed");
    child.stdin.take().unwrap().write_all(message.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl dgst -{digest} -hmac failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// lua-resty-hmac's README use, checked against `openssl dgst -hmac`; and the `resty.evp`
/// lua-resty-jwt loads, which refuses RSA with a reason.
#[test]
fn resty_hmac_matches_openssl_and_evp_refuses_rsa() {
    let lua = r#"
local hmac = require "resty.hmac"
local str = require "resty.string"
for _, algo in ipairs({"MD5", "SHA1", "SHA256", "SHA384", "SHA512"}) do
    local h = hmac:new("key", hmac.ALGOS[algo])
    assert(h:update("The quick "))
    local hex = h:final("brown fox", true)
    assert(h:reset())
    local again = str.to_hex(h:final("The quick brown fox"))
    ngx.say(algo, " ", hex, " ", tostring(hex == again))
end
ngx.say("default ", hmac:new("key"):final("The quick brown fox", true))
ngx.say("bad algo ", tostring(select(2, pcall(hmac.new, hmac, "key", "SHA3"))))
local evp = require "resty.evp"
ngx.say("evp ", evp.CONST.SHA256_DIGEST, " ", tostring(evp.RSAVerifier:new("cert")), " ", select(2, evp.Cert:new("pem")))
"#;
    let s = Server::start(&route("hmac", &format!("  locations:\n{}", location("/h", lua))));
    let r = s.get("/h");
    assert_eq!(r.status, 200, "{}", s.logs());
    let text = r.text();
    let lines: Vec<&str> = text.lines().collect();
    let message = "The quick brown fox";
    for (line, digest) in lines.iter().zip(["md5", "sha1", "sha256", "sha384", "sha512"]) {
        let want = format!(
            "{} {} true",
            digest.to_uppercase(),
            openssl_hmac_hex(digest, "key", message)
        );
        assert_eq!(*line, want, "{text}");
    }
    assert_eq!(lines[5], format!("default {}", openssl_hmac_hex("md5", "key", message)));
    assert!(
        lines[6].starts_with("bad algo ") && lines[6].contains("hash from hmac.ALGOS expected"),
        "{text}"
    );
    assert_eq!(
        lines[7],
        "evp SHA256 nil RSA keys and X.509 certificates are not supported in Moongate (resty.evp); use HS256/HS384/HS512"
    );
}

#[test]
fn table_extensions_are_per_route() {
    let a = route(
        "tables",
        &format!(
            "  locations:\n{}",
            location(
                "/t",
                r#"
local before = tostring(table.new)
local new = require "table.new"
local t = new(10, 4)
t[1], t[2], t.x = 1, 2, 3
local nkeys, isempty, isarray, clear = require "table.nkeys", require "table.isempty", require "table.isarray", require "table.clear"
ngx.say(before, " ", tostring(table.new == new), " ", nkeys(t), " ", tostring(isempty(t)), " ", tostring(isarray(t)), " ", tostring(isarray({1, nil, 3})))
clear(t)
ngx.say(nkeys(t), " ", tostring(isempty(t)), " ", tostring(select(2, pcall(new))))
"#
            )
        ),
    );
    let b = route(
        "plain",
        &format!(
            "  locations:\n{}",
            location("/p", "ngx.say(tostring(table.new), ' ', tostring(table.nkeys))")
        ),
    );
    let s = Server::start(&format!("{a}---\n{b}"));
    let text = s.get("/t").text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "nil true 3 false false true", "{}", s.logs());
    assert!(lines[1].starts_with("0 true "), "{text}");
    assert!(
        lines[1].contains("bad argument #1 to '?' (number expected, got no value)"),
        "{text}"
    );
    // Another route's `table` never sees what this one required.
    assert_eq!(s.get("/p").text(), "nil nil\n");
    // The same route's later requests keep what it required.
    let again = s.get("/t").text();
    assert!(
        again.starts_with("function: ") && again.contains(" true 3 false false true\n"),
        "{again}"
    );
}

#[test]
fn io_loads_but_refuses_files() {
    let lua = r#"
local open = io.open
local f, err = open("/etc/passwd", "r")
ngx.say(tostring(f), " ", err)
ngx.say(tostring(io.popen("id")), " ", select(2, io.popen("id")))
ngx.say(tostring(select(2, pcall(io.lines, "/etc/hostname"))))
ngx.say(io.type(io.stdout), " ", tostring(io.type(f)))
assert(io.write("written by io.write\n") == io.stdout)
io.stderr:write("written to stderr ", 42)
ngx.say("done")
"#;
    let s = Server::start(&route("io", &format!("  locations:\n{}", location("/io", lua))));
    let r = s.get("/io");
    let text = r.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "nil /etc/passwd: file access is not allowed in a LuaRoute",
        "{}",
        s.logs()
    );
    assert_eq!(lines[1], "nil id: file access is not allowed in a LuaRoute");
    assert!(lines[2].contains("/etc/hostname: file access is not allowed"), "{text}");
    assert_eq!(lines[3], "file nil");
    assert_eq!(lines[4], "done");
    let timeout = Duration::from_secs(30);
    assert!(s.wait_log("written by io.write", timeout).is_some(), "{}", s.logs());
    assert!(s.wait_log("written to stderr 42", timeout).is_some(), "{}", s.logs());
}

#[test]
fn resty_core_ngx_modules() {
    let lua = r#"
-- Before the first ngx.say, which sends the headers.
local resp = require "ngx.resp"
ngx.header["X-Multi"] = "one"
resp.add_header("X-Multi", "two")
resp.add_header("X-Other", {"a", "b"})
local b64 = require "ngx.base64"
ngx.say(b64.encode_base64url("\251\255\254hi"), " ", require("resty.string").to_hex(b64.decode_base64url("-__-aGk")), " ", select(2, b64.decode_base64url("+/")), " ", select(2, b64.encode_base64url(1)))
local process = require "ngx.process"
ngx.say(process.type(), " ", process.get_master_pid(), " ", select(2, process.enable_privileged_agent()))
local errlog = require "ngx.errlog"
errlog.raw_log(ngx.ERR, "raw log line from a route")
ngx.say(type(errlog.get_sys_filter_level()), " ", select(2, errlog.set_filter_level(ngx.WARN)), " ", tostring(select(2, pcall(errlog.raw_log, "x", "y"))))
ngx.say(tostring(require("resty.core")), " ", type(require("resty.core.base")))
"#;
    let s = Server::start(&route("ngxmods", &format!("  locations:\n{}", location("/n", lua))));
    let r = s.get("/n");
    let text = r.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "-__-aGk fbfffe6869 invalid input must provide a string",
        "{}",
        s.logs()
    );
    assert_eq!(
        lines[1],
        format!("worker {} API disabled in the current context", s.pid())
    );
    assert!(
        lines[2].starts_with("number directive \"lua_capture_error_log\" is not set "),
        "{text}"
    );
    assert!(
        lines[2].contains("bad argument #1 to 'raw_log' (must be a number)"),
        "{text}"
    );
    assert_eq!(lines[3], "true table");
    let multi: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n == "x-multi")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(multi, ["one", "two"]);
    let other: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n == "x-other")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(other, ["a", "b"]);
    assert!(
        s.wait_log("raw log line from a route", Duration::from_secs(30))
            .is_some(),
        "{}",
        s.logs()
    );
}

/// Work that grows with the input is charged to the running code's budget: each loop below
/// runs only a few hundred VM instructions itself, far under the budget, and is aborted only
/// because the library charges what it does in C.
#[test]
fn library_work_is_charged_to_the_budget() {
    let cases = [
        (
            "/digest",
            "local h = require('resty.sha256'):new()\nlocal s = string.rep('x', 1048576)\nfor i = 1, 400 do h:update(s) end\nngx.say('finished')",
        ),
        (
            "/hex",
            "local to_hex = require('resty.string').to_hex\nlocal s = string.rep('x', 1048576)\nfor i = 1, 200 do to_hex(s) end\nngx.say('finished')",
        ),
        (
            "/nkeys",
            "local nkeys = require 'table.nkeys'\nlocal t = {}\nfor i = 1, 20000 do t[i] = i end\nfor i = 1, 5000 do nkeys(t) end\nngx.say('finished')",
        ),
        (
            "/aes",
            "local aes = require('resty.aes')\nlocal a = aes:new('k', nil, nil, nil, 100000000)\nngx.say('finished')",
        ),
    ];
    let mut spec = String::from("  limits: {instructionBudget: 20000000}\n  locations:\n");
    for (path, lua) in &cases {
        spec.push_str(&location(path, lua));
    }
    let s = Server::start(&route("budget", &spec));
    for (path, _) in &cases {
        let from = s.log_count();
        let r = s.get(path);
        assert_eq!(r.status, 500, "{path}: {}", r.text());
        assert!(
            s.wait_log_since(from, "instruction budget exceeded", Duration::from_secs(30))
                .is_some(),
            "{path}: {}",
            s.logs_since(from)
        );
    }
}
