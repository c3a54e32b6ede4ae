//! Unit tests of the pieces whose output must match C byte for byte.

use super::decode::strtod;
use super::encode::{escape, fmt_g};

#[test]
fn numbers_print_as_c_g_with_the_precision() {
    let cases: &[(f64, i32, &str)] = &[
        (0.0, 14, "0"),
        (-0.0, 14, "-0"),
        (1.0, 14, "1"),
        (-5.0, 14, "-5"),
        (0.1, 14, "0.1"),
        (1.0 / 3.0, 14, "0.33333333333333"),
        (2.0 / 3.0, 14, "0.66666666666667"),
        (1e15, 14, "1e+15"),
        (123456789012345.0, 14, "1.2345678901234e+14"),
        (12345678901234.0, 14, "12345678901234"),
        (0.0001, 14, "0.0001"),
        (0.00001, 14, "1e-05"),
        (1e300, 14, "1e+300"),
        (5e-324, 14, "4.9406564584125e-324"),
        (99999999999999.5, 14, "1e+14"),
        (1.23456, 1, "1"),
        (1.23456, 3, "1.23"),
        (0.1, 16, "0.1"),
        (0.1 + 0.2, 16, "0.3"),
        (0.1 + 0.2, 17, "0.30000000000000004"),
        (9.5, 1, "1e+01"),
        (2.5, 1, "2"),
    ];
    for &(n, p, want) in cases {
        let got = fmt_g(n, p);
        assert_eq!(got, want, "%.{p}g of {n:e}");
    }
}

#[test]
fn escapes_follow_upstreams_table() {
    assert_eq!(escape(b'"', true), Some("\\\""));
    assert_eq!(escape(b'\\', true), Some("\\\\"));
    assert_eq!(escape(b'/', true), Some("\\/"));
    assert_eq!(escape(b'/', false), None);
    assert_eq!(escape(0, true), Some("\\u0000"));
    assert_eq!(escape(8, true), Some("\\b"));
    assert_eq!(escape(9, true), Some("\\t"));
    assert_eq!(escape(10, true), Some("\\n"));
    assert_eq!(escape(11, true), Some("\\u000b"));
    assert_eq!(escape(12, true), Some("\\f"));
    assert_eq!(escape(13, true), Some("\\r"));
    assert_eq!(escape(0x1f, true), Some("\\u001f"));
    assert_eq!(escape(0x7f, true), Some("\\u007f"));
    for b in [b' ', b'a', b'~', 0x80, 0xff] {
        assert_eq!(escape(b, true), None, "{b:#x}");
    }
}

#[test]
fn strtod_takes_what_glibc_takes() {
    let ok = |s: &str, v: f64, used: usize| {
        let (got, n) = strtod(s.as_bytes()).unwrap_or_else(|| panic!("{s}: nothing"));
        assert_eq!((got.to_bits(), n), (v.to_bits(), used), "{s}");
    };
    ok("0", 0.0, 1);
    ok("-0", -0.0, 2);
    ok("12]", 12.0, 2);
    ok("1.5e3,", 1500.0, 5);
    ok("1e", 1.0, 1);
    ok("1e+", 1.0, 1);
    ok("1.", 1.0, 2);
    ok(".5", 0.5, 2);
    ok("+12", 12.0, 3);
    ok("0123", 123.0, 4);
    ok("0x10", 16.0, 4);
    ok("0x6.ffp1", 13.9921875, 8);
    ok("0x", 0.0, 1);
    ok("0x.8", 0.5, 4);
    ok("1e999", f64::INFINITY, 5);
    ok("-Infinity", f64::NEG_INFINITY, 9);
    ok("Infrared", f64::INFINITY, 3);
    ok("1.7976931348623157e308", f64::MAX, 22);
    let (nan, n) = strtod(b"nan(12ab)x").unwrap();
    assert!(nan.is_nan() && n == 9);
    let (nan, n) = strtod(b"NaN(").unwrap();
    assert!(nan.is_nan() && n == 3);
    for bad in ["", "-", "+", ".", "-v", "+-1", "e5", "x"] {
        assert!(strtod(bad.as_bytes()).is_none(), "{bad}");
    }
}

/// Encoding charges the running code: a huge sparse array (ratio 0 allows
/// any) stops at the C-call allowance instead of spinning.
#[test]
fn encoding_is_charged_and_stopped() {
    let lua = mlua::Lua::new();
    crate::lua::budget::set_standin_limits(1_000_000, 1 << 30);
    let libs = lua.create_table().unwrap();
    super::register(&lua, &libs).unwrap();
    let make: mlua::Function = libs.get("cjson").unwrap();
    let m: mlua::Table = make.call((mlua::Value::Nil, lua.create_table().unwrap())).unwrap();
    lua.globals().set("cjson", m).unwrap();
    let started = std::time::Instant::now();
    let e: String = lua
        .load("cjson.encode_sparse_array(false, 0) local ok, e = pcall(cjson.encode, {[2^30] = 1}) return tostring(e)")
        .eval()
        .unwrap();
    assert!(e.contains(crate::lua::budget::EXCEEDED), "{e}");
    assert!(crate::lua::budget::standin_charged() >= 1_000_000);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
