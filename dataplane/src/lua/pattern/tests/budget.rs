//! Bounded work: pathological patterns, huge results and deep callback recursion end with an
//! error charged to the running Lua, never with a hung or crashed worker. Limits are set through
//! the budget stand-ins (thread-local; each test runs on its own thread).

use super::new_vm;
use crate::lua::budget::{self, EXCEEDED, set_standin_limits, standin_charged};
use crate::lua::error_message;
use crate::lua::pattern::engine::{MAX_DEPTH, MatchError, Matcher, PatternError};

const PATHOLOGICAL: &str = r#"local s, p = ("a"):rep(3000), ("a*"):rep(20) .. "b""#;

/// Runs `chunk` in a VM with our functions, expecting an error; returns its message.
fn error_of(chunk: &str) -> String {
    let lua = new_vm(true);
    match lua.load(chunk).exec() {
        Ok(()) => panic!("{chunk} succeeded"),
        Err(e) => error_message(&e),
    }
}

#[test]
fn a_backtracking_pattern_stops_at_the_allowance_in_every_function() {
    const ALLOWANCE: u64 = 2_000_000;
    for call in [
        "string.find(s, p)",
        "string.match(s, p)",
        "string.gmatch(s, p)()",
        "string.gsub(s, p, 'x')",
        "string.gsub(s, p, function() end)",
        "s:find(p, 1, false)",
    ] {
        set_standin_limits(ALLOWANCE, 64 << 20);
        let message = error_of(&format!("{PATHOLOGICAL} return {call}"));
        assert!(message.starts_with(EXCEEDED), "{call}: {message}");
        let charged = standin_charged();
        // Exactly what the matcher was allowed, plus at most one item's cost.
        assert!(
            (ALLOWANCE..ALLOWANCE + 64).contains(&charged),
            "{call}: charged {charged}"
        );
        assert_eq!(budget::c_allowance(), 0, "{call}");
    }
}

#[test]
fn the_matcher_stops_exactly_at_its_step_limit() {
    let subject = vec![b'a'; 3000];
    let pattern = b"a*a*a*a*a*a*a*a*a*a*b";
    let mut m = Matcher::new(&subject, pattern, 12_345);
    assert_eq!(m.search(0, false), Err(MatchError::StepLimit));
    assert_eq!(m.steps(), 12_345);
    // With room enough the same matcher finishes: `b` never matches.
    let mut m = Matcher::new(b"aaaa", pattern, u64::MAX);
    assert_eq!(m.search(0, false), Ok(None));
    assert!(m.steps() > 0);
}

#[test]
fn work_within_the_allowance_is_charged_and_succeeds() {
    set_standin_limits(1_000_000, 64 << 20);
    let lua = new_vm(true);
    let (a, b): (i64, i64) = lua.load(r#"return ("a"):rep(100):find("a*b*$")"#).eval().expect("find");
    assert_eq!((a, b), (1, 100));
    let charged = standin_charged();
    assert!(charged > 100 && charged < 1_000_000, "charged {charged}");
    assert_eq!(budget::c_allowance(), 1_000_000 - charged);
}

#[test]
fn gmatch_charges_every_iteration_against_the_running_budget() {
    set_standin_limits(10_000, 64 << 20);
    let lua = new_vm(true);
    let it: mlua::Function = lua
        .load(r#"return (("word "):rep(10000)):gmatch("%a+")"#)
        .eval()
        .expect("gmatch");
    let mut charged = Vec::new();
    let stopped = loop {
        match it.call::<Option<String>>(()) {
            Ok(Some(w)) => {
                assert_eq!(w, "word");
                charged.push(standin_charged());
            }
            Ok(None) => panic!("10000 words matched within 10000 units"),
            Err(e) => break error_message(&e),
        }
    };
    assert!(stopped.starts_with(EXCEEDED), "{stopped}");
    assert!(charged.len() > 100, "{} iterations", charged.len());
    assert!(charged.windows(2).all(|w| w[1] > w[0]), "every iteration is charged");
}

#[test]
fn gsub_charges_the_bytes_it_copies() {
    let lua = new_vm(true);
    let cost = |repl: &str| {
        set_standin_limits(u64::MAX / 2, 64 << 20);
        let n: i64 = lua
            .load(format!(r#"return select(2, (("x"):rep(16000)):gsub("x", "{repl}"))"#))
            .eval()
            .expect("gsub");
        assert_eq!(n, 16000);
        standin_charged()
    };
    let small = cost("y");
    let big = cost(&"y".repeat(16));
    // 16000 × 15 more bytes is 15000 more units at 16 bytes a unit.
    assert!(big - small >= 15_000 - 1, "small {small}, big {big}");
}

#[test]
fn gsub_stops_a_result_that_would_exceed_the_allowance() {
    set_standin_limits(10_000, 64 << 20);
    let message = error_of(r#"return (("x"):rep(10000)):gsub("x", ("y"):rep(100))"#);
    assert!(message.starts_with(EXCEEDED), "{message}");
    assert!(standin_charged() < 10_000 + 16, "charged {}", standin_charged());
}

#[test]
fn gsub_refuses_a_result_longer_than_the_string_limit() {
    set_standin_limits(u64::MAX, 1 << 20);
    assert_eq!(
        error_of(r#"return (("x"):rep(1000)):gsub("x", ("y"):rep(2000))"#),
        "not enough memory"
    );
    // Just under the limit is fine.
    let lua = new_vm(true);
    let len: i64 = lua
        .load(r#"return #(("x"):rep(1000)):gsub("x", ("y"):rep(1048))"#)
        .eval()
        .expect("gsub");
    assert_eq!(len, 1_048_000);
}

#[test]
fn a_plain_find_over_a_long_subject_stops_at_the_allowance() {
    set_standin_limits(1_000, 64 << 20);
    let message = error_of(r#"return (("a"):rep(1000000)):find("b", 1, true)"#);
    assert!(message.starts_with(EXCEEDED), "{message}");
    assert!(standin_charged() < 1_000 + 16, "charged {}", standin_charged());
    set_standin_limits(1_000_000, 64 << 20);
    let lua = new_vm(true);
    let at: i64 = lua
        .load(r#"return (("a"):rep(1000000) .. "b"):find("b", 1, true)"#)
        .eval()
        .expect("find");
    assert_eq!(at, 1_000_001);
}

/// 100000 levels of `gsub` → callback → `gsub` on a worker-sized stack: the 201st nested call
/// fails with "C stack overflow" and the error unwinds all the way out; LuaJIT's C `gsub`
/// crashes the process here.
#[test]
fn recursion_through_gsub_callbacks_fails_cleanly_on_a_2_mib_stack() {
    let worker = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let lua = new_vm(true);
            let chunk = r#"
                depth = 0
                local function f(n)
                  depth = depth + 1
                  if n == 0 then return "" end
                  return (("x"):gsub("x", function() return f(n - 1) end))
                end
                return f(100000)
            "#;
            let message = match lua.load(chunk).exec() {
                Ok(()) => panic!("100000 nested gsub calls succeeded"),
                Err(e) => error_message(&e),
            };
            let depth: i64 = lua.globals().get("depth").expect("depth");
            (message, depth)
        })
        .expect("spawn");
    let (message, depth) = worker.join().expect("the thread did not crash");
    assert!(message.ends_with(": C stack overflow"), "{message}");
    assert_eq!(depth, 201, "200 nested calls run, the 201st is refused");
}

/// The native stack the matcher needs at its deepest recursion, which the engine's header
/// states. `a*` recurses through `max_expand`, the largest frames (`a-` and `a?` take half).
#[test]
fn deepest_pattern_recursion_uses_a_small_known_stack() {
    let pattern = "a*".repeat(MAX_DEPTH as usize - 1);
    let mut m = Matcher::new(b"aaa", pattern.as_bytes(), u64::MAX);
    assert_eq!(m.search(0, true), Ok(Some((0, 3))));
    let used = m.stack_used();
    println!(
        "stack used at depth {MAX_DEPTH}: {used} bytes ({} per level)",
        used / MAX_DEPTH as usize
    );
    assert!(used > 0 && used < 96 << 10, "{used} bytes");
    let pattern = "a*".repeat(MAX_DEPTH as usize);
    let mut m = Matcher::new(b"aaa", pattern.as_bytes(), u64::MAX);
    assert_eq!(m.search(0, true), Err(MatchError::Pattern(PatternError::TooComplex)));
}

/// Work the step count must see even though it happens inside one "step" of the C algorithm:
/// scanning a long `[set]`, `%b` scanning to the end of the subject, a back-reference compare.
/// Each would take seconds in C (quadratic in the subject); here each stops at the allowance.
#[test]
fn quadratic_work_inside_single_items_is_counted() {
    const ALLOWANCE: u64 = 1_000_000;
    for call in [
        r#"string.find(("b"):rep(20000), "[" .. ("a"):rep(20000) .. "]")"#,
        r#"string.find(("("):rep(100000), "%b()")"#,
        r#"string.find(("a"):rep(100000), "^(.*)%1b")"#,
        r#"string.find(("a"):rep(100000) .. "b", "(.-)%1b")"#,
    ] {
        set_standin_limits(ALLOWANCE, 64 << 20);
        let message = error_of(&format!("return {call}"));
        assert!(message.starts_with(EXCEEDED), "{call}: {message}");
        let charged = standin_charged();
        assert!(
            (ALLOWANCE..ALLOWANCE + 40_002).contains(&charged),
            "{call}: charged {charged}"
        );
    }
}
