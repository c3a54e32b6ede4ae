//! Preemption and CPU accounting: every piece of route code runs on an
//! [`Account`], so a runaway script fails its own request (or timer) instead
//! of hanging the worker or starving other routes, which OpenResty cannot do.
//!
//! A count hook fires every [`HOOK_INTERVAL`] VM instructions and charges
//! them to the account running at that moment. Work done outside the VM on
//! behalf of the script (Lua patterns, `string.rep`, PCRE2, the collector…)
//! is charged in instruction-equivalents by the code that does it
//! ([`charge`], [`c_allowance`]), so no C path escapes the count.
//! JIT-compiled traces never call the hook, so the VM runs with the JIT off
//! (`Vm::new`).
//!
//! Three bounds, all operator ceilings a route can only lower:
//! - **budget**: what one handler (or one timer run, across its yields) may
//!   spend in all. Past it the account is *exceeded*: sticky, so the error
//!   it raises is re-raised by the sandbox's `pcall`, `xpcall`,
//!   `coroutine.resume` and `coroutine.wrap` — nothing can swallow it.
//! - **slice**: where the code can yield (entry threads and the coroutines
//!   they resume, at any instruction, even inside `pcall`), the hook yields
//!   it every `slice` instructions and the driver puts it in the worker's
//!   background lane (`crate::sched`), so other requests run in between.
//! - **unpreemptible**: where it cannot yield (inside a C function that
//!   called back into Lua, such as a `table.sort` comparator; in filters,
//!   log handlers), one stretch may run at most this much before it is
//!   aborted, which bounds how long a hostile route can hold the worker.
//!
//! C work is charged by the code that does it where it can bound it up
//! front (Lua patterns, PCRE2's match limit), by the VM's allocator for what
//! it allocates (`memory`), and by the CPU watchdog (`watchdog`) for the rest
//! (a concatenation that copies a megabyte and allocates nothing).
//!
//! The hook also guards the C stack (`super::stack`): recursion through C
//! functions is bounded by the thread's real stack, not by luck.
//!
//! Invariant: an account is *running* (`Running::enter`) exactly while Lua
//! may run on its behalf; the hook charges whatever account is running, and
//! code running with none is charged to [`FALLBACK`] limits.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use mlua::ffi;

/// Instructions between two hook calls: the granularity of every bound.
pub const HOOK_INTERVAL: u32 = 1000;

/// How the error of code past its budget begins.
pub const EXCEEDED: &str = "instruction budget exceeded";

/// Nanoseconds of CPU per work unit, for work charged by time (PCRE2, the
/// collector, the watchdog): what an interpreted instruction with the hook
/// costs (100 million took 0.2 s on the machine measured).
pub const NS_PER_UNIT: u64 = 2;

/// Bytes allocated, copied or scanned by C code per work unit: allocating,
/// filling and hashing a new string runs at a few bytes per nanosecond.
pub const BYTES_PER_UNIT: u64 = 4;

/// The bounds an account runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Total work of one handler, or of one timer run across its yields.
    pub budget: u64,
    /// Work between two preemptions where the code can yield.
    pub slice: u64,
    /// Longest stretch where the code cannot yield.
    pub unpreemptible: u64,
}

/// Used when Lua runs with no account (it should not): small, so a bug
/// cannot hang a worker.
pub const FALLBACK: Limits = Limits {
    budget: 10_000_000,
    slice: 10_000_000,
    unpreemptible: 10_000_000,
};

/// Why an account stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exceeded {
    Budget,
    Unpreemptible,
}

/// The CPU account of one request (reset at each handler), timer run, or
/// `init`. It is also the *execution* that owns the coroutines created on
/// it (`execution`).
#[derive(Debug)]
pub struct Account {
    id: u64,
    /// The route (`namespace/name`) whose code runs on it.
    route: Rc<str>,
    /// What a new handler or timer of that route runs under.
    route_limits: Limits,
    limits: Limits,
    left: Cell<u64>,
    /// Work since the code last yielded to the driver.
    since_yield: Cell<u64>,
    exceeded: Cell<Option<Exceeded>>,
    /// The code ran a whole slice: the rest of it runs in the background
    /// lane (`sched`), for the account's life.
    demoted: Cell<bool>,
    /// Work charged over the account's life (what the CPU meter records).
    spent: Cell<u64>,
    /// The largest string the code may build outside the VM (its VM's
    /// memory limit).
    max_string: usize,
}

impl Account {
    /// An account of `route`'s code, running under `limits` (usually the
    /// route's own, `route_limits`).
    pub fn new(route: Rc<str>, route_limits: Limits, limits: Limits, max_string: usize) -> Rc<Account> {
        // Unique in the process, so ids never repeat on one thread either.
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Rc::new(Account {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            route,
            route_limits,
            limits,
            left: Cell::new(limits.budget),
            since_yield: Cell::new(0),
            exceeded: Cell::new(None),
            demoted: Cell::new(false),
            spent: Cell::new(0),
            max_string,
        })
    }

    /// Starts a new handler on this account: a full budget, a fresh stretch.
    pub fn reset(&self) {
        self.left.set(self.limits.budget);
        self.since_yield.set(0);
        self.exceeded.set(None);
    }

    /// The code yielded to the driver: a new stretch begins.
    pub fn yielded(&self) {
        self.since_yield.set(0);
    }

    /// Sets what the code may still spend: a timer run resumes with what
    /// its route's timer bucket holds, so a long-lived timer is bounded by
    /// the bucket's refill rate, not by one budget over its whole life.
    pub fn set_left(&self, units: u64) {
        self.left.set(units);
    }

    pub fn exceeded(&self) -> Option<Exceeded> {
        self.exceeded.get()
    }

    pub fn spent(&self) -> u64 {
        self.spent.get()
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn route(&self) -> &Rc<str> {
        &self.route
    }

    /// The execution this account is (see [`execution`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the code ran a whole slice; see `demoted`.
    pub fn demoted(&self) -> bool {
        self.demoted.get()
    }

    pub fn demote(&self) {
        self.demoted.set(true);
    }

    pub fn route_limits(&self) -> Limits {
        self.route_limits
    }

    pub fn max_string(&self) -> usize {
        self.max_string
    }

    fn charge(&self, units: u64) {
        super::watchdog::charged(units);
        self.charge_uncounted(units);
    }

    /// Charges units the watchdog already counts as charged.
    fn charge_uncounted(&self, units: u64) {
        self.spent.set(self.spent.get().saturating_add(units));
        self.since_yield.set(self.since_yield.get().saturating_add(units));
        let left = self.left.get().saturating_sub(units);
        self.left.set(left);
        if left == 0 && self.exceeded.get().is_none() {
            self.exceeded.set(Some(Exceeded::Budget));
            crate::metrics::budget_exceeded();
        }
    }

    fn exceed(&self, why: Exceeded) {
        if self.exceeded.get().is_none() {
            self.exceeded.set(Some(why));
            crate::metrics::budget_exceeded();
        }
    }

    /// Work a single C call may still do before it must be stopped.
    fn allowance(&self) -> u64 {
        let stretch = self.limits.unpreemptible.saturating_sub(self.since_yield.get());
        self.left.get().min(stretch)
    }
}

/// A VM's main state, for re-arming its hook. The VM outlives every
/// `Running` that names it.
#[derive(Clone, Copy, Debug)]
pub struct HookHandle(*mut ffi::lua_State);

impl HookHandle {
    pub(super) fn from_raw(state: *mut ffi::lua_State) -> HookHandle {
        HookHandle(state)
    }
}

impl HookHandle {
    /// The hook handle of `lua`.
    pub fn of(lua: &mlua::Lua) -> HookHandle {
        // SAFETY: exec_raw hands us a valid state of this VM; the main state
        // lives as long as the VM.
        let mut state = std::ptr::null_mut();
        let _ = unsafe { lua.exec_raw::<()>((), |l| state = l) };
        HookHandle(state)
    }

    /// A handle for code that runs no Lua (tests of the accounting).
    pub const NONE: HookHandle = HookHandle(std::ptr::null_mut());

    /// Makes the hook fire at the next instruction, so a slice that C work
    /// used up ends at once instead of up to `HOOK_INTERVAL` instructions later.
    pub(super) fn fire_soon(self) {
        if !self.0.is_null() {
            // SAFETY: a live state of the running VM; sets hook fields only.
            unsafe { ffi::lua_sethook(self.0, Some(hook), ffi::LUA_MASKCOUNT, 1) };
        }
    }
}

thread_local! {
    static RUNNING: RefCell<Option<(Rc<Account>, HookHandle)>> = const { RefCell::new(None) };
    /// The hook yielded the running coroutine to end a slice; taken by the
    /// driver (or a `coroutine.resume` that cannot pass it up).
    static PREEMPTED: Cell<bool> = const { Cell::new(false) };
    /// The account that last ran here: work found after it ran belongs to it.
    static LAST_RUN: Cell<u64> = const { Cell::new(0) };
}

/// Makes `account` the running one until dropped; restores the previous one
/// (a subrequest's or header filter's Lua runs inside its parent's).
pub struct Running {
    previous: Option<(Rc<Account>, HookHandle)>,
}

impl Running {
    /// `vm` is the VM whose code runs on the account now.
    pub fn enter(account: &Rc<Account>, vm: HookHandle) -> Running {
        if LAST_RUN.with(|l| l.replace(account.id)) != account.id {
            // Allocations and watchdog findings of another account's run
            // are not this one's to pay.
            super::memory::take_uncharged();
        }
        super::watchdog::running(account.id, vm.0);
        let previous = RUNNING.with(|r| r.replace(Some((account.clone(), vm))));
        Running { previous }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let previous = self.previous.take();
        match &previous {
            Some((a, vm)) => super::watchdog::running(a.id, vm.0),
            None => super::watchdog::running(0, std::ptr::null_mut()),
        }
        RUNNING.with(|r| *r.borrow_mut() = previous);
    }
}

fn with_running<R>(f: impl FnOnce(Option<&Account>) -> R) -> R {
    RUNNING.with(|r| f(r.borrow().as_ref().map(|(a, _)| &**a)))
}

/// The account running now, if any.
pub fn running() -> Option<Rc<Account>> {
    RUNNING.with(|r| r.borrow().as_ref().map(|(a, _)| a.clone()))
}

/// The execution running now (0: none): coroutines belong to the one that
/// created them. Ids are never reused on a thread.
pub fn execution() -> u64 {
    with_running(|a| a.map_or(0, |a| a.id))
}

/// Whether the running code is past its budget (the sandbox's catchers
/// re-raise then).
pub fn aborted() -> bool {
    with_running(|a| a.is_some_and(|a| a.exceeded().is_some()))
}

/// Takes the "yielded to end a slice" mark. `keep` leaves it for an outer
/// resumer (a `coroutine.resume` passing the yield up).
pub fn preempted(keep: bool) -> bool {
    PREEMPTED.with(|p| if keep { p.get() } else { p.replace(false) })
}

/// Work units the running code may still spend in one C call.
pub fn c_allowance() -> u64 {
    with_running(|a| a.map_or(FALLBACK.unpreemptible, Account::allowance))
}

/// Charges `units` of work done outside the VM to the running code. Fails
/// with the budget error when it is over its budget, and always when
/// `units >= c_allowance()`.
pub fn charge(units: u64) -> mlua::Result<()> {
    RUNNING.with(|r| {
        let r = r.borrow();
        let Some((a, vm)) = r.as_ref() else {
            return if units >= FALLBACK.unpreemptible {
                Err(exceeded_error(Exceeded::Unpreemptible, None))
            } else {
                Ok(())
            };
        };
        let allowance = a.allowance();
        a.charge(units);
        if units >= allowance {
            a.exceed(Exceeded::Unpreemptible);
        }
        if let Some(why) = a.exceeded() {
            return Err(exceeded_error(why, None));
        }
        if a.since_yield.get() >= a.limits.slice {
            vm.fire_soon();
        }
        Ok(())
    })
}

/// Charges `bytes` of memcpy-class C work.
pub fn charge_bytes(bytes: usize) -> mlua::Result<()> {
    charge(bytes as u64 / BYTES_PER_UNIT)
}

/// Charges bytes the VM's allocator handed out (`memory`). Never raises:
/// when the allocation ends a slice or the budget, the hook fires at the
/// next instruction and acts there.
pub(super) fn charge_allocation(bytes: usize) {
    RUNNING.with(|r| {
        let Ok(r) = r.try_borrow() else { return };
        if let Some((a, vm)) = r.as_ref() {
            a.charge(bytes as u64 / BYTES_PER_UNIT);
            if a.exceeded().is_some() || a.since_yield.get() >= a.limits.slice {
                vm.fire_soon();
            }
        }
    })
}

/// A point on the calling thread's CPU clock, where some C work starts.
pub struct CpuStart(u64);

impl CpuStart {
    pub fn now() -> CpuStart {
        CpuStart(super::watchdog::thread_cpu_ns())
    }
}

/// Charges the C work done since `start` by the CPU it took on this thread.
/// Never by wall time: a thread kept off the CPU by a loaded machine did no
/// work meanwhile, and charging it would abort innocent handlers.
pub fn charge_cpu_since(start: CpuStart) -> mlua::Result<()> {
    let ns = super::watchdog::thread_cpu_ns().saturating_sub(start.0);
    charge(ns / NS_PER_UNIT)
}

/// The largest string the running code may build outside the VM.
pub fn max_string_len() -> usize {
    with_running(|a| a.map_or(1 << 20, |a| a.max_string))
}

fn exceeded_error(why: Exceeded, at: Option<String>) -> mlua::Error {
    mlua::Error::runtime(exceeded_message(why, at))
}

fn exceeded_message(why: Exceeded, at: Option<String>) -> String {
    let at = at.map(|at| format!(" at {at}")).unwrap_or_default();
    match why {
        Exceeded::Budget => format!("{EXCEEDED}{at}"),
        Exceeded::Unpreemptible => format!(
            "{EXCEEDED}{at}: too long without a point where it can be preempted \
             (inside a C function that calls back into Lua, or in a filter or log handler)"
        ),
    }
}

unsafe extern "C-unwind" {
    // LuaJIT exports it (Lua 5.3 API); mlua-sys does not declare it for 5.1.
    fn lua_isyieldable(l: *mut ffi::lua_State) -> std::os::raw::c_int;
}

/// What the hook must do.
enum Verdict {
    Continue,
    Yield,
    Fail(String),
}

fn verdict(yieldable: bool, instructions: u64) -> Verdict {
    if super::stack::exhausted() {
        return Verdict::Fail("C stack overflow".into());
    }
    with_running(|a| {
        let Some(a) = a else {
            return Verdict::Continue;
        };
        a.charge(instructions + super::memory::take_uncharged() as u64 / BYTES_PER_UNIT);
        a.charge_uncounted(super::watchdog::take_pending(a.id));
        if let Some(why) = a.exceeded() {
            return Verdict::Fail(exceeded_message(why, None));
        }
        let stretch = a.since_yield.get();
        if yieldable {
            if stretch >= a.limits.slice {
                return Verdict::Yield;
            }
        } else if stretch >= a.limits.unpreemptible {
            a.exceed(Exceeded::Unpreemptible);
            return Verdict::Fail(exceeded_message(Exceeded::Unpreemptible, None));
        }
        Verdict::Continue
    })
}

/// The count hook. It either returns, yields the running coroutine (only
/// where LuaJIT allows it: its own frames, not across a C call), or raises.
///
/// # Safety
/// Called by LuaJIT with a valid state. No Rust value with a destructor is
/// alive when it calls `lua_yield` or `lua_error`, which unwind through it.
unsafe extern "C-unwind" fn hook(state: *mut ffi::lua_State, ar: *mut ffi::lua_Debug) {
    // SAFETY: `state` is the running coroutine; these only read or set its
    // global hook fields.
    let (yieldable, count) = unsafe {
        let count = ffi::lua_gethookcount(state);
        if count != HOOK_INTERVAL as std::os::raw::c_int {
            // `fire_soon` armed an early call: back to the normal interval.
            ffi::lua_sethook(
                state,
                Some(hook),
                ffi::LUA_MASKCOUNT,
                HOOK_INTERVAL as std::os::raw::c_int,
            );
        }
        (lua_isyieldable(state) != 0, u64::try_from(count).unwrap_or(0))
    };
    match verdict(yieldable, count) {
        Verdict::Continue => {}
        Verdict::Yield => {
            PREEMPTED.with(|p| p.set(true));
            // SAFETY: the state is yieldable (checked above); a yield from a
            // count hook yields no values and resumes right here.
            unsafe { ffi::lua_yield(state, 0) };
        }
        Verdict::Fail(message) => {
            // Name where the code was, as a Lua error would.
            // SAFETY: `ar` is the hook's own activation record.
            let at = unsafe {
                if ffi::lua_getinfo(state, c"Sl".as_ptr(), ar) != 0 && (*ar).currentline > 0 {
                    let src = std::ffi::CStr::from_ptr((*ar).short_src.as_ptr()).to_string_lossy();
                    format!("{src}:{}: ", (*ar).currentline)
                } else {
                    String::new()
                }
            };
            let text = format!("{at}{message}");
            // SAFETY: pushes a copy of `text`; then nothing with a destructor
            // is left alive in this frame before the error unwinds it.
            unsafe { ffi::lua_pushlstring(state, text.as_ptr().cast(), text.len()) };
            drop(text);
            drop(message);
            unsafe { ffi::lua_error(state) };
        }
    }
}

/// Turns the JIT off and installs the hook on a fresh VM.
pub fn install(lua: &mlua::Lua) -> mlua::Result<()> {
    unsafe extern "C-unwind" {
        fn luaJIT_setmode(
            l: *mut ffi::lua_State,
            idx: std::os::raw::c_int,
            mode: std::os::raw::c_int,
        ) -> std::os::raw::c_int;
    }
    // LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF: JIT-compiled traces never call
    // the hook, so nothing may be compiled.
    const ENGINE_OFF: std::os::raw::c_int = 0;
    // SAFETY: both calls only set fields of the VM's global state.
    unsafe {
        lua.exec_raw::<()>((), |state| {
            luaJIT_setmode(state, 0, ENGINE_OFF);
            ffi::lua_sethook(
                state,
                Some(hook),
                ffi::LUA_MASKCOUNT,
                HOOK_INTERVAL as std::os::raw::c_int,
            );
        })
    }
}

/// For the pattern tests: makes a fresh account the running one on this
/// thread, whose single C call may do `c_allowance` work, with strings up to
/// `max_string_len`.
#[cfg(test)]
pub fn set_standin_limits(c_allowance: u64, max_string_len: usize) {
    let limits = Limits {
        budget: u64::MAX / 2,
        slice: u64::MAX / 2,
        unpreemptible: c_allowance.min(u64::MAX / 2),
    };
    let account = Account::new(Rc::from("test/patterns"), limits, limits, max_string_len);
    RUNNING.with(|r| *r.borrow_mut() = Some((account, HookHandle::NONE)));
}

/// For the pattern tests: what the account of `set_standin_limits` was charged.
#[cfg(test)]
pub fn standin_charged() -> u64 {
    running().map_or(0, |a| a.spent())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(budget: u64) -> Limits {
        Limits {
            budget,
            slice: 5_000,
            unpreemptible: 20_000,
        }
    }

    fn account(budget: u64) -> Rc<Account> {
        Account::new(Rc::from("ns/r"), limits(budget), limits(budget), 1 << 20)
    }

    #[test]
    fn c_work_past_the_allowance_fails_and_stays_failed() {
        let a = account(1_000_000);
        let _running = Running::enter(&a, HookHandle::NONE);
        assert_eq!(c_allowance(), 20_000, "a C call gets at most one unpreemptible stretch");
        assert!(charge(10_000).is_ok());
        assert_eq!(c_allowance(), 10_000);
        let e = charge(10_000).unwrap_err().to_string();
        assert!(e.contains(EXCEEDED), "{e}");
        assert!(aborted(), "exceeding is sticky");
        assert!(charge(1).is_err());
    }

    #[test]
    fn the_budget_ends_an_account_and_reset_starts_a_new_handler() {
        let a = account(15_000);
        let _running = Running::enter(&a, HookHandle::NONE);
        assert!(charge(9_000).is_ok());
        a.yielded();
        assert!(
            charge(9_000).is_err(),
            "past the budget even though each stretch was short"
        );
        assert_eq!(a.exceeded(), Some(Exceeded::Budget));
        a.reset();
        assert!(!aborted());
        assert!(charge(9_000).is_ok());
    }

    #[test]
    fn running_accounts_nest() {
        let outer = account(1_000_000);
        let inner = account(1_000_000);
        let _o = Running::enter(&outer, HookHandle::NONE);
        {
            let _i = Running::enter(&inner, HookHandle::NONE);
            charge(100).unwrap();
        }
        charge(10).unwrap();
        assert_eq!((outer.spent(), inner.spent()), (10, 100));
    }
}
