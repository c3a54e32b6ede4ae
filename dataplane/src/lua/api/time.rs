//! `ngx.*` time functions over nginx-style cached time.
//!
//! In: the system clock, read only by [`update_cached_time`] (the core calls it when a request
//! starts, as nginx refreshes its clock once per event-loop iteration) and by `ngx.update_time()`;
//! Lua arguments of the formatting/parsing functions.
//! Out: `ngx.time/now/today/localtime/utctime` read the cached time of the current thread;
//! `ngx.http_time/cookie_time/parse_http_time` convert given values with
//! [`crate::response::date`]. [`cached_now`] serves `ngx.req.start_time`.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use mlua::{Lua, Table, Value};

use crate::lua::args::runtime_error;
use crate::response::date::{cookie_time, date_time, gmtime, http_time, parse_http_time};

/// The clock as nginx caches it: whole seconds, milliseconds, and the local UTC offset in minutes.
#[derive(Clone, Copy)]
struct CachedTime {
    sec: i64,
    msec: u32,
    gmtoff_minutes: i64,
}

thread_local! {
    static CACHED: Cell<Option<CachedTime>> = const { Cell::new(None) };
}

/// Re-reads the system clock into this thread's cached time.
pub fn update_cached_time() {
    CACHED.with(|cached| cached.set(Some(read_clock(cached.get()))));
}

fn read_clock(previous: Option<CachedTime>) -> CachedTime {
    // A clock before 1970 is a broken host; nginx would print 1970 dates for it as well.
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let sec = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    let msec = since_epoch.subsec_millis();
    // Like nginx, only ask libc for the zone offset when the second changes.
    let gmtoff_minutes = match previous {
        Some(previous) if previous.sec == sec => previous.gmtoff_minutes,
        _ => local_gmtoff_minutes(sec),
    };
    CachedTime {
        sec,
        msec,
        gmtoff_minutes,
    }
}

fn cached() -> CachedTime {
    CACHED.with(|cached| match cached.get() {
        Some(time) => time,
        None => {
            let time = read_clock(None);
            cached.set(Some(time));
            time
        }
    })
}

/// The cached time as seconds with a millisecond fraction (`ngx.now()`).
pub fn cached_now() -> f64 {
    let time = cached();
    time.sec as f64 + f64::from(time.msec) / 1000.0
}

/// The cached time in whole seconds (`ngx.time()`).
pub fn cached_time() -> i64 {
    cached().sec
}

// FFI: libc's localtime_r, for nginx's `$time_local` offset; std has no time zones.
#[allow(unsafe_code)]
fn local_gmtoff_minutes(sec: i64) -> i64 {
    // time_t is 64-bit on every Linux target the dataplane is built for.
    let t: libc::time_t = sec;
    // SAFETY: `tm` is plain old data for which all-zero bytes are a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers refer to live, properly aligned locals; localtime_r is the
    // thread-safe variant and writes only into `tm`.
    let result = unsafe { libc::localtime_r(&t, &mut tm) };
    if result.is_null() { 0 } else { tm.tm_gmtoff / 60 }
}

/// The FFI `long` conversion resty.core applies to a Lua number (truncation toward zero).
fn number_arg(lua: &Lua, value: &Value) -> mlua::Result<i64> {
    match value {
        Value::Integer(i) => Ok(*i),
        Value::Number(n) => Ok(*n as i64),
        _ => Err(runtime_error(lua, 1, "number argument only")),
    }
}

/// Sets the time functions on the `ngx` table.
pub fn register(lua: &Lua, ngx: &Table) -> mlua::Result<()> {
    ngx.raw_set("time", lua.create_function(|_, ()| Ok(cached_time()))?)?;
    ngx.raw_set("now", lua.create_function(|_, ()| Ok(cached_now()))?)?;
    ngx.raw_set(
        "update_time",
        lua.create_function(|_, ()| {
            update_cached_time();
            Ok(())
        })?,
    )?;
    ngx.raw_set(
        "today",
        lua.create_function(|_, ()| {
            let time = cached();
            let tm = gmtime(time.sec + time.gmtoff_minutes * 60);
            Ok(format!("{:04}-{:02}-{:02}", tm.year, tm.mon, tm.mday))
        })?,
    )?;
    ngx.raw_set(
        "localtime",
        lua.create_function(|_, ()| {
            let time = cached();
            Ok(date_time(&gmtime(time.sec + time.gmtoff_minutes * 60)))
        })?,
    )?;
    ngx.raw_set(
        "utctime",
        lua.create_function(|_, ()| Ok(date_time(&gmtime(cached().sec))))?,
    )?;
    ngx.raw_set(
        "http_time",
        lua.create_function(|lua, value: Value| Ok(http_time(number_arg(lua, &value)?)))?,
    )?;
    ngx.raw_set(
        "cookie_time",
        lua.create_function(|lua, value: Value| Ok(cookie_time(number_arg(lua, &value)?)))?,
    )?;
    ngx.raw_set(
        "parse_http_time",
        lua.create_function(|lua, value: Value| match value {
            Value::String(s) => Ok(parse_http_time(&s.as_bytes())),
            _ => Err(runtime_error(lua, 1, "string argument only")),
        })?,
    )?;
    Ok(())
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

    #[test]
    fn formats_like_nginx() {
        assert_eq!(http_time(1290079655), "Thu, 18 Nov 2010 11:27:35 GMT");
        assert_eq!(cookie_time(1290079655), "Thu, 18-Nov-10 11:27:35 GMT");
        assert_eq!(http_time(951782400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_time(4107542400), "Mon, 01 Mar 2100 00:00:00 GMT");
        assert_eq!(http_time(68256000), "Wed, 01 Mar 1972 00:00:00 GMT");
        assert_eq!(cookie_time(0), "Thu, 01-Jan-70 00:00:00 GMT");
        assert_eq!(cookie_time(2177452800), "Sat, 01-Jan-2039 00:00:00 GMT");
        // Clamped to the range ngx_gmtime supports.
        assert_eq!(http_time(-5), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_time(253402300800), "Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(cookie_time(i64::MAX), "Fri, 31-Dec-9999 23:59:59 GMT");
        assert_eq!(date_time(&gmtime(1290079655)), "2010-11-18 11:27:35");
    }

    #[test]
    fn parses_like_nginx() {
        for text in [
            "Thu, 18 Nov 2010 11:27:35 GMT",
            "Thursday, 18-Nov-10 11:27:35 GMT",
            "Thu Nov 18 11:27:35 2010",
            "xx, 18 Nov 2010 11:27:35",
        ] {
            assert_eq!(parse_http_time(text.as_bytes()), Some(1290079655), "{text}");
        }
        assert_eq!(parse_http_time(b"Thu Nov  8 11:27:35 2010"), Some(1289215655));
        assert_eq!(parse_http_time(b"Wed, 01 Jan 0001 00:00:00 GMT"), Some(-62135596800));
        assert_eq!(parse_http_time(b"Wed, 31 Dec 1969 23:59:58 GMT"), Some(-2));
        for bad in [
            "abc",
            "",
            "Wed, 31 Dec 1969 23:59:59 GMT",
            "Thu, 29 Feb 2001 00:00:00 GMT",
            "Thu, 18 Nov 2010 24:00:00",
        ] {
            assert_eq!(parse_http_time(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(parse_http_time(b"Thu, 18 Nov 2010 11:27:3"), None);
        for t in (0..4_000_000_000i64).step_by(7_777_777) {
            assert_eq!(parse_http_time(http_time(t).as_bytes()), Some(t));
        }
    }

    #[test]
    fn cached_time_moves_only_on_update() {
        let lua = lua_with_ngx();
        update_cached_time();
        let before: f64 = lua.load("return ngx.now()").eval().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (same, time): (f64, i64) = lua.load("return ngx.now(), ngx.time()").eval().unwrap();
        assert_eq!(before, same);
        assert_eq!(time, before.floor() as i64);
        assert_eq!(cached_now(), before);
        let after: f64 = lua.load("ngx.update_time() return ngx.now()").eval().unwrap();
        assert!(after - before >= 0.019, "{before} -> {after}");
        assert_eq!(after, (after * 1000.0).round() / 1000.0);
    }

    #[test]
    fn lua_functions_and_errors() {
        let lua = lua_with_ngx();
        let (utc, local, today): (String, String, String) = lua
            .load("return ngx.utctime(), ngx.localtime(), ngx.today()")
            .eval()
            .unwrap();
        for (text, len) in [(&utc, 19), (&local, 19), (&today, 10)] {
            assert_eq!(text.len(), len, "{text}");
            assert!(text.starts_with("20") && text.as_bytes()[4] == b'-', "{text}");
        }
        assert_eq!(utc, date_time(&gmtime(cached_time())));
        let converted: (String, String, Option<i64>, Option<i64>) = lua
            .load(
                "return ngx.http_time(1290079655.9), ngx.cookie_time(1290079655), \
                   ngx.parse_http_time('Thu, 18 Nov 2010 11:27:35 GMT'), ngx.parse_http_time('abc')",
            )
            .eval()
            .unwrap();
        assert_eq!(converted.0, "Thu, 18 Nov 2010 11:27:35 GMT");
        assert_eq!(converted.1, "Thu, 18-Nov-10 11:27:35 GMT");
        assert_eq!((converted.2, converted.3), (Some(1290079655), None));
        for (code, message) in [
            ("ngx.http_time('1')", "t:1: number argument only"),
            ("ngx.cookie_time()", "t:1: number argument only"),
            ("ngx.parse_http_time(5)", "t:1: string argument only"),
        ] {
            let err = lua.load(code).set_name("=t").exec().unwrap_err();
            let mlua::Error::CallbackError { cause, .. } = err else {
                panic!("{err}")
            };
            assert_eq!(cause.to_string(), format!("runtime error: {message}"));
        }
    }
}
