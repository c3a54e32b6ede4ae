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
        if charge() {
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
fn charge() -> bool {
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
