//! Preemption: every handler runs under an instruction budget, so a runaway
//! script (`while true do end`) fails its own request with a 500 instead of
//! hanging the worker, which OpenResty cannot do.
//!
//! A count hook fires every `HOOK_INTERVAL` VM instructions and charges them
//! to the request current at that moment (or to the VM-level budget of
//! `init`, `init_worker` and timers). JIT-compiled traces never call the
//! hook, so `install` turns the compiler off: user code runs in LuaJIT's
//! interpreter, as DESIGN.md decides (handlers spend their time in Rust APIs).

use std::cell::Cell;

use mlua::{HookTriggers, Lua, VmState};

/// Instructions between two hook calls: the granularity of the budget.
pub const HOOK_INTERVAL: u32 = 1000;

/// How the error of a handler past its budget begins. The sandbox's `pcall`
/// re-raises such errors, so user code cannot swallow them.
pub const EXCEEDED: &str = "instruction budget exceeded";

thread_local! {
    /// Remaining instructions for Lua running outside any request.
    static VM_BUDGET: Cell<u64> = const { Cell::new(u64::MAX) };
}

pub fn install(lua: &Lua) -> mlua::Result<()> {
    lua.load("jit.off()").set_name("=moongate.budget").exec()?;
    lua.set_global_hook(HookTriggers::new().every_nth_instruction(HOOK_INTERVAL), |_, debug| {
        if charge_hook_interval() {
            crate::metrics::budget_exceeded();
            // Name where the script was when it ran out, as a Lua error would.
            let source = debug.source();
            let at = match (source.short_src, debug.current_line()) {
                (Some(src), Some(line)) => format!(" at {src}:{line}"),
                _ => String::new(),
            };
            return Err(mlua::Error::runtime(format!("{EXCEEDED}{at}")));
        }
        Ok(VmState::Continue)
    })
}

/// Runs `f` (init, init_worker, a timer callback) with `budget` instructions.
pub fn with_vm_budget<R>(budget: u64, f: impl FnOnce() -> R) -> R {
    let previous = VM_BUDGET.with(|b| b.replace(budget));
    let r = f();
    VM_BUDGET.with(|b| b.set(previous));
    r
}

/// Charges one hook interval; `true` when the budget is spent.
fn charge_hook_interval() -> bool {
    let step = u64::from(HOOK_INTERVAL);
    match crate::request::current("budget") {
        Ok(req) => match req.try_borrow_mut() {
            Ok(mut r) => {
                let left = r.budget.saturating_sub(step);
                r.budget = left;
                left == 0
            }
            Err(_) => false,
        },
        Err(_) => VM_BUDGET.with(|b| {
            let left = b.get().saturating_sub(step);
            b.set(left);
            left == 0
        }),
    }
}

// ---------------------------------------------------------------------------
// STAND-INS for the C-function budget contract used by `lua::pattern`.
// The lead replaces this block with the real budget and memory limit; until
// then a thread-local allowance (unlimited unless a test sets it) stands in.
// ---------------------------------------------------------------------------

thread_local! {
    /// Stand-in: work units the running Lua may still spend outside the VM.
    static STANDIN_C_ALLOWANCE: Cell<u64> = const { Cell::new(u64::MAX) };
    /// Stand-in: the largest string a C function may build.
    static STANDIN_MAX_STRING_LEN: Cell<usize> = const { Cell::new(64 << 20) };
    /// Stand-in: every unit passed to `charge` on this thread (tests read it).
    static STANDIN_CHARGED: Cell<u64> = const { Cell::new(0) };
}

/// Work units (about one VM instruction each) the running Lua may still spend in one C call
/// before it must be stopped.
pub fn c_allowance() -> u64 {
    STANDIN_C_ALLOWANCE.with(|a| a.get())
}

/// Charges `units` of work done outside the VM to the running Lua. Returns the (uncatchable) budget
/// error when the running Lua is over its budget; it always fails when `units >= c_allowance()`.
pub fn charge(units: u64) -> mlua::Result<()> {
    STANDIN_CHARGED.with(|c| c.set(c.get().saturating_add(units)));
    STANDIN_C_ALLOWANCE.with(|a| {
        let left = a.get();
        if units >= left {
            a.set(0);
            return Err(mlua::Error::runtime(EXCEEDED));
        }
        a.set(left - units);
        Ok(())
    })
}

/// The longest string a C function may build for the running Lua (stand-in for the VM's memory
/// limit).
pub fn max_string_len() -> usize {
    STANDIN_MAX_STRING_LEN.with(|m| m.get())
}

/// Stand-in only: sets what `c_allowance` and `max_string_len` return on this thread, and
/// zeroes `standin_charged` (tests).
pub fn set_standin_limits(c_allowance: u64, max_string_len: usize) {
    STANDIN_C_ALLOWANCE.with(|a| a.set(c_allowance));
    STANDIN_MAX_STRING_LEN.with(|m| m.set(max_string_len));
    STANDIN_CHARGED.with(|c| c.set(0));
}

/// Stand-in only: the units charged on this thread since `set_standin_limits` (tests).
pub fn standin_charged() -> u64 {
    STANDIN_CHARGED.with(|c| c.get())
}
