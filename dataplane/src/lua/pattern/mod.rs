//! `string.find`, `string.match`, `string.gmatch` and `string.gsub` in Rust, with bounded work.
//!
//! LuaJIT's versions are C functions: the instruction-count hook that preempts runaway Lua
//! (`budget`) cannot see time spent inside them, so a backtracking pattern holds the worker for
//! as long as it likes, and a `gsub` callback that calls `gsub` again, thousands deep, overflows
//! the worker's C stack. `install` puts these replacements into the VM's `string` table (which
//! the string metatable's `__index` also is, and which every route environment copies later).
//!
//! For every call that finishes they behave as LuaJIT's: same results, same argument coercion,
//! same error messages (see `args`). They differ where LuaJIT would not stop:
//!   * work is metered (`Meter`) and charged to the running Lua with `budget::charge`: the
//!     matcher's steps (`engine`), plus one unit per 16 bytes copied into new strings. A call
//!     stops as soon as it would spend `budget::c_allowance()`, with the budget error;
//!   * `gsub` refuses to build a result longer than `budget::max_string_len()`, with LuaJIT's
//!     "not enough memory";
//!   * Lua called back from `gsub` (a replacement function, a replacement table's metamethods)
//!     nests at most `MAX_CALLBACK_DEPTH` deep, then fails with "C stack overflow" (Lua 5.1's
//!     message for the same limit), so no recursion through a callback overflows the stack.
//!
//! Known difference: an error value that is not a string, thrown by a `gsub` replacement
//! function or metamethod, reaches the caller converted to a string (`tostring` of it): an
//! mlua callback can only raise an mlua error, never an arbitrary Lua value.

mod args;
mod classes;
pub mod engine;
mod gsub;
#[cfg(test)]
mod tests;

use std::cell::Cell;

use mlua::{Function, Lua, MultiValue, Table, Value};

use self::args::Args;
use self::engine::{Capture, MatchError, Matcher};
use crate::lua::args::caller_error;
use crate::lua::budget;

/// Most `gsub` calls with a Lua replacement active at once on one thread. One level (`gsub` →
/// mlua → LuaJIT → the Lua callback → mlua → `gsub`) takes about 3.1 KiB of native stack in a
/// release build (measured: 619 KiB between the 1st and the 200th), so the limit keeps the
/// recursion within a third of a worker thread's 2 MiB.
pub const MAX_CALLBACK_DEPTH: u32 = 200;

/// Bytes copied into new strings per unit of work.
const BYTES_PER_UNIT: usize = 16;

/// Replaces `find`, `match`, `gmatch` and `gsub` in the global `string` table.
pub fn install(lua: &Lua) -> mlua::Result<()> {
    let string: Table = lua.globals().raw_get("string")?;
    let callbacks = gsub::Callbacks::new(lua)?;
    string.raw_set(
        "find",
        lua.create_function(|lua, args: MultiValue| find(lua, &args, true))?,
    )?;
    string.raw_set(
        "match",
        lua.create_function(|lua, args: MultiValue| find(lua, &args, false))?,
    )?;
    string.raw_set(
        "gmatch",
        lua.create_function(|lua, args: MultiValue| gmatch(lua, &args))?,
    )?;
    string.raw_set(
        "gsub",
        lua.create_function(move |lua, args: MultiValue| gsub::gsub(lua, &args, &callbacks))?,
    )?;
    Ok(())
}

/// `string.find` (`positions`) and `string.match` (`str_find_aux`).
fn find(lua: &Lua, args: &MultiValue, positions: bool) -> mlua::Result<MultiValue> {
    let args = Args::new(lua, args);
    let subject = args.string(1)?;
    let pattern = args.string(2)?;
    let init = args.opt_int32(3, 1)?;
    let src = subject.as_bytes();
    let pat = pattern.as_bytes();
    let start = start_offset(init, src.len());
    let mut meter = Meter::start();
    let mut out = MultiValue::new();
    if positions && (args.truthy(4) || !engine::has_specials(&pat)) {
        match find_plain(&src[start..], &pat, &mut meter)? {
            Some(at) => {
                out.push_back(Value::Integer((start + at + 1) as i64));
                out.push_back(Value::Integer((start + at + pat.len()) as i64));
            }
            None => out.push_back(Value::Nil),
        }
        meter.settle()?;
        return Ok(out);
    }
    let (anchored, pat) = engine::split_anchor(engine::c_string(&pat));
    let mut matcher = Matcher::new(&src, pat, meter.matcher_limit());
    let found = matcher.search(start, anchored);
    meter.add(matcher.take_steps())?;
    match found.map_err(|e| meter.match_error(lua, e))? {
        None => out.push_back(Value::Nil),
        Some((begin, end)) if positions => {
            out.push_back(Value::Integer(begin as i64 + 1));
            out.push_back(Value::Integer(end as i64));
            push_captures(lua, &matcher, begin, end, false, &mut out, &mut meter)?;
        }
        Some((begin, end)) => push_captures(lua, &matcher, begin, end, true, &mut out, &mut meter)?,
    }
    meter.settle()?;
    Ok(out)
}

/// The 0-based offset where a search starts, from `init` (1-based, negative from the end),
/// clamped to the subject as LuaJIT 2.1 clamps it (an `init` past the end searches at the end).
fn start_offset(init: i32, len: usize) -> usize {
    let init = i64::from(init);
    let start = if init < 0 { init + len as i64 } else { init - 1 };
    start.clamp(0, len as i64) as usize
}

/// A plain search, stopped when scanning further would exceed the allowance.
fn find_plain(haystack: &[u8], needle: &[u8], meter: &mut Meter) -> mlua::Result<Option<usize>> {
    let affordable = usize::try_from(meter.matcher_limit().saturating_mul(BYTES_PER_UNIT as u64)).unwrap_or(usize::MAX);
    let window = haystack.len().min(affordable.saturating_add(needle.len()));
    let found = engine::find_plain(&haystack[..window], needle);
    meter.add(1)?;
    meter.add_bytes(found.map_or(window, |at| at + needle.len()))?;
    if found.is_none() && window < haystack.len() {
        return Err(meter.exhausted());
    }
    Ok(found)
}

/// `string.gmatch`: an iterator over the matches, each call charged on its own.
fn gmatch(lua: &Lua, args: &MultiValue) -> mlua::Result<Function> {
    let args = Args::new(lua, args);
    let subject = args.string(1)?.into_owned();
    let pattern = args.string(2)?.into_owned();
    // Where the next search starts; past the end once the last (empty) match was at the end.
    let next = Cell::new(0usize);
    lua.create_function(move |lua, ()| {
        let src = subject.as_bytes();
        let pat = pattern.as_bytes();
        let mut meter = Meter::start();
        // LuaJIT 2.1's gmatch has no anchor: a leading '^' is an ordinary character.
        let mut matcher = Matcher::new(&src, &pat, meter.matcher_limit());
        let found = matcher.search(next.get(), false);
        meter.add(matcher.take_steps())?;
        let mut out = MultiValue::new();
        if let Some((begin, end)) = found.map_err(|e| meter.match_error(lua, e))? {
            // An empty match moves on by one byte, so the iteration always ends.
            next.set(if end == begin { end + 1 } else { end });
            push_captures(lua, &matcher, begin, end, true, &mut out, &mut meter)?;
        }
        meter.settle()?;
        Ok(out)
    })
}

/// Appends the captures of the match `begin..end` (`push_captures`).
fn push_captures(
    lua: &Lua,
    matcher: &Matcher,
    begin: usize,
    end: usize,
    whole_if_none: bool,
    out: &mut MultiValue,
    meter: &mut Meter,
) -> mlua::Result<()> {
    for i in 0..matcher.capture_count(whole_if_none) {
        out.push_back(capture_value(lua, matcher, i, begin, end, meter)?);
    }
    Ok(())
}

/// Capture `i` as a Lua value: a string, or an integer for a position capture.
fn capture_value(
    lua: &Lua,
    matcher: &Matcher,
    i: usize,
    begin: usize,
    end: usize,
    meter: &mut Meter,
) -> mlua::Result<Value> {
    match matcher.capture(i, begin, end) {
        Ok(Capture::Bytes(bytes)) => {
            meter.add_bytes(bytes.len())?;
            Ok(Value::String(lua.create_string(bytes)?))
        }
        Ok(Capture::Position(at)) => Ok(Value::Integer(at as i64)),
        Err(e) => Err(caller_error(lua, e.message())),
    }
}

/// The work of one call (or one `gmatch` step), against the allowance of the running Lua.
///
/// Invariant: `spent < allowance` between calls that succeed; reaching the allowance is the
/// budget error. Work not yet charged when the meter is dropped (on an error path) is charged
/// then, so no path does work for free.
pub(super) struct Meter {
    allowance: u64,
    spent: u64,
    /// Bytes copied but not yet counted in `spent` (fewer than `BYTES_PER_UNIT`).
    uncounted_bytes: usize,
}

impl Meter {
    fn start() -> Meter {
        Meter {
            allowance: budget::c_allowance(),
            spent: 0,
            uncounted_bytes: 0,
        }
    }

    /// Steps a matcher may take before this call reaches its allowance.
    #[inline]
    fn matcher_limit(&self) -> u64 {
        self.allowance.saturating_sub(self.spent)
    }

    #[inline]
    fn add(&mut self, units: u64) -> mlua::Result<()> {
        self.spent = self.spent.saturating_add(units);
        if self.spent >= self.allowance {
            return Err(self.exhausted());
        }
        Ok(())
    }

    /// Counts `n` bytes copied into a new string.
    #[inline]
    fn add_bytes(&mut self, n: usize) -> mlua::Result<()> {
        let bytes = self.uncounted_bytes + n;
        self.uncounted_bytes = bytes % BYTES_PER_UNIT;
        self.add((bytes / BYTES_PER_UNIT) as u64)
    }

    /// Charges the work so far to the running Lua (before Lua runs again, or at the end).
    fn settle(&mut self) -> mlua::Result<()> {
        budget::charge(std::mem::take(&mut self.spent))?;
        self.refresh();
        Ok(())
    }

    /// Takes the allowance anew, after Lua code ran and spent some of the budget.
    fn refresh(&mut self) {
        self.allowance = budget::c_allowance();
    }

    /// The budget error, once the call has spent its allowance: `charge` fails for that much.
    fn exhausted(&mut self) -> mlua::Error {
        match budget::charge(std::mem::take(&mut self.spent)) {
            Err(e) => e,
            // Unreachable by `charge`'s contract; stopping is what matters.
            Ok(()) => mlua::Error::runtime(budget::EXCEEDED),
        }
    }

    /// The Lua error for a match that stopped without a result.
    fn match_error(&mut self, lua: &Lua, e: MatchError) -> mlua::Error {
        match e {
            MatchError::StepLimit => self.exhausted(),
            MatchError::Pattern(e) => caller_error(lua, e.message()),
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if self.spent > 0 {
            // An error is already on its way out; the charge still lowers the budget, so the
            // next check stops a script that is over it.
            let _ = budget::charge(self.spent);
        }
    }
}

/// Counts the `gsub` calls that may call back into Lua, nested on this thread.
///
/// A thread-local because what it protects is the thread's native stack, shared by every VM
/// and coroutine running on the thread.
struct CallbackNesting(());

thread_local! {
    static CALLBACK_DEPTH: Cell<u32> = const { Cell::new(0) };
}

impl CallbackNesting {
    fn enter(lua: &Lua) -> mlua::Result<CallbackNesting> {
        CALLBACK_DEPTH.with(|depth| {
            if depth.get() >= MAX_CALLBACK_DEPTH {
                return Err(caller_error(lua, "C stack overflow"));
            }
            depth.set(depth.get() + 1);
            Ok(CallbackNesting(()))
        })
    }
}

impl Drop for CallbackNesting {
    fn drop(&mut self) {
        CALLBACK_DEPTH.with(|depth| depth.set(depth.get() - 1));
    }
}
