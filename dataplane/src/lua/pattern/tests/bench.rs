//! Speed against LuaJIT's C functions on common calls. Prints figures, asserts nothing about
//! time: `cargo test --release -p moongate-dataplane --lib pattern::tests::bench -- --ignored --nocapture`.

use std::time::{Duration, Instant};

use super::new_vm;

/// (name, setup, loop body run `ITERATIONS` times)
const CASES: &[(&str, &str, &str)] = &[
    (
        "plain find, 11 bytes",
        r#"local s = "hello world""#,
        r#"local a = s:find("wor", 1, true)"#,
    ),
    (
        "plain find, 1 KiB",
        r#"local s = ("lorem ipsum "):rep(85) .. "needle""#,
        r#"local a = s:find("needle", 1, true)"#,
    ),
    (
        "match ^(%w+)=(%w+)$",
        r#"local s = "key=value""#,
        r#"local k, v = s:match("^(%w+)=(%w+)$")"#,
    ),
    (
        "gsub %s+ on 1 KiB",
        r#"local s = ("word  \t word \n"):rep(73)"#,
        r#"local r = s:gsub("%s+", " ")"#,
    ),
    (
        "gmatch words in 1 KiB",
        r#"local s = ("lorem ipsum dolor "):rep(57)"#,
        r#"for w in s:gmatch("%a+") do end"#,
    ),
];

const ITERATIONS: u32 = 20_000;

fn time(lua: &mlua::Lua, setup: &str, body: &str) -> Duration {
    let chunk = format!("{setup}\nreturn function() for _ = 1, {ITERATIONS} do {body} end end");
    let f: mlua::Function = lua.load(chunk).eval().expect("compile");
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        f.call::<()>(()).expect("run");
        best = best.min(start.elapsed());
    }
    best
}

#[test]
#[ignore = "prints speed figures; run by hand"]
fn speed_against_luajit() {
    let c = new_vm(false);
    let rust = new_vm(true);
    println!("{:<24} {:>12} {:>12} {:>7}", "case", "LuaJIT ns", "Rust ns", "ratio");
    let only = std::env::var("PATTERN_BENCH").unwrap_or_default();
    for (name, setup, body) in CASES.iter().filter(|(name, _, _)| name.contains(only.as_str())) {
        let tc = time(&c, setup, body);
        let tr = time(&rust, setup, body);
        let per = |d: Duration| d.as_nanos() as f64 / f64::from(ITERATIONS);
        println!(
            "{name:<24} {:>12.0} {:>12.0} {:>7.2}",
            per(tc),
            per(tr),
            tr.as_secs_f64() / tc.as_secs_f64()
        );
    }
}

/// What any function written with mlua's safe API pays per call before doing any work: the
/// floor under the figures above.
#[test]
#[ignore = "prints speed figures; run by hand"]
fn mlua_call_overhead() {
    let lua = new_vm(true);
    let no_args = lua.create_function(|_, ()| Ok(())).expect("function");
    let two_ints = lua
        .create_function(|_, (a, b): (i64, i64)| Ok(a + b))
        .expect("function");
    let two_strings = lua
        .create_function(|_, (a, b): (mlua::LuaString, mlua::LuaString)| Ok(a.as_bytes().len() + b.as_bytes().len()))
        .expect("function");
    let four_values = lua
        .create_function(|_, args: mlua::MultiValue| Ok(args.len()))
        .expect("function");
    let g = lua.globals();
    g.set("no_args", no_args).expect("set");
    g.set("two_ints", two_ints).expect("set");
    g.set("two_strings", two_strings).expect("set");
    g.set("four_values", four_values).expect("set");
    for (name, body) in [
        ("LuaJIT s:len()", "local n = s:len()"),
        ("Rust f()", "no_args()"),
        ("Rust f(1, 2)", "local n = two_ints(1, 2)"),
        ("Rust f(s, 'wor') as bytes", "local n = two_strings(s, 'wor')"),
        (
            "Rust f(s, 'wor', 1, true) multi",
            "local n = four_values(s, 'wor', 1, true)",
        ),
    ] {
        let t = time(&lua, r#"local s = "hello world""#, body);
        println!("{name:<34} {:>6.0} ns", t.as_nanos() as f64 / f64::from(ITERATIONS));
    }
}
