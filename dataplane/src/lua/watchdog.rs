//! The CPU watchdog: charges the C work the count hook cannot see.
//!
//! The count hook charges instructions, but one instruction can copy a
//! megabyte (`s .. "y"` whose result is already interned allocates nothing)
//! or compare two long strings, and the hook only comes every
//! `HOOK_INTERVAL` instructions. So a thread of its own samples every
//! worker's CPU clock every [`PERIOD`]. When a worker ran the same Lua
//! account for a whole period and used much more CPU than was charged for it
//! (instructions, allocations and explicit charges, at
//! `budget::NS_PER_UNIT`), the difference is left for the worker's next hook
//! to charge, and the worker is sent [`SIGNAL`], whose handler makes that
//! hook fire at the next instruction. So C work is charged within about a
//! period of CPU, and budgets, slices and the unpreemptible bound hold for it.
//!
//! Plain Lua is charged by instruction count alone (deterministic); only a
//! period whose CPU is well beyond its instructions (`C_HEAVY`) is charged by
//! CPU. Thread CPU time does not count time the thread was descheduled, so
//! a loaded machine does not inflate the charges.
//!
//! Signal safety: the handler reads one thread-local pointer (const
//! initialised, no destructor) and calls `lua_sethook`, which only stores the
//! hook's fields while the hook mask is unchanged (LuaJIT rewrites its
//! dispatch table only when the mask changes).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use mlua::ffi;

/// How often the watchdog samples the workers' CPU clocks.
pub const PERIOD: Duration = Duration::from_millis(1);
/// The signal that makes a worker's hook fire soon.
const SIGNAL: libc::c_int = libc::SIGURG;
/// A period is charged by CPU when its CPU is this many times what its
/// charges account for…
const C_HEAVY: u64 = 4;
/// …and at least this much more (units).
const MIN_EXCESS: u64 = 100_000;

/// One worker thread's CPU account, shared with the watchdog.
struct Meter {
    thread: libc::pthread_t,
    clock: libc::clockid_t,
    /// The id of the account running Lua on the thread; 0 when none is.
    run: AtomicU64,
    /// Units charged on the thread so far.
    charged: AtomicU64,
    /// Units the watchdog found and the hook has not charged yet, and the
    /// account (run) they belong to.
    pending: Mutex<(u64, u64)>,
}

static METERS: Mutex<Vec<Arc<Meter>>> = Mutex::new(Vec::new());

thread_local! {
    static METER: std::cell::RefCell<Option<Arc<Meter>>> = const { std::cell::RefCell::new(None) };
    /// The state of the VM running Lua on this thread, for the signal handler.
    static HOOK_STATE: Cell<*mut ffi::lua_State> = const { Cell::new(std::ptr::null_mut()) };
}

/// Puts the calling (worker) thread under the watchdog until the guard drops.
pub fn watch_this_thread() -> Watched {
    static START: Once = Once::new();
    START.call_once(|| {
        install_handler();
        let _ = std::thread::Builder::new().name("moongate-watchdog".into()).spawn(run);
    });
    // SAFETY: pthread_self is always valid; the clock id is read into `clock`.
    let (thread, clock) = unsafe {
        let thread = libc::pthread_self();
        let mut clock: libc::clockid_t = 0;
        if libc::pthread_getcpuclockid(thread, &mut clock) != 0 {
            return Watched(None);
        }
        (thread, clock)
    };
    let meter = Arc::new(Meter {
        thread,
        clock,
        run: AtomicU64::new(0),
        charged: AtomicU64::new(0),
        pending: Mutex::new((0, 0)),
    });
    METERS.lock().unwrap_or_else(|e| e.into_inner()).push(meter.clone());
    METER.with(|m| *m.borrow_mut() = Some(meter.clone()));
    Watched(Some(meter))
}

/// A thread under the watchdog; dropping it (at thread exit) ends that.
pub struct Watched(Option<Arc<Meter>>);

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(meter) = self.0.take() {
            METERS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|m| !Arc::ptr_eq(m, &meter));
            METER.with(|m| *m.borrow_mut() = None);
        }
    }
}

/// Lua of account `run` starts running on VM `state` (0/null: none does).
pub(super) fn running(run: u64, state: *mut ffi::lua_State) {
    HOOK_STATE.with(|s| s.set(state));
    METER.with(|m| {
        if let Some(m) = m.borrow().as_ref() {
            m.run.store(run, Ordering::Release);
        }
    });
}

/// Records `units` charged on this thread.
pub(super) fn charged(units: u64) {
    METER.with(|m| {
        if let Some(m) = m.borrow().as_ref() {
            m.charged.fetch_add(units, Ordering::Relaxed);
        }
    });
}

/// Takes the units the watchdog found uncharged for account `run` (already
/// counted as charged); findings for another account are dropped.
pub(super) fn take_pending(run: u64) -> u64 {
    METER.with(|m| {
        let m = m.borrow();
        let Some(m) = m.as_ref() else { return 0 };
        let mut pending = m.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (for_run, units) = std::mem::take(&mut *pending);
        if for_run == run { units } else { 0 }
    })
}

fn install_handler() {
    extern "C" fn on_signal(_: libc::c_int) {
        let state = HOOK_STATE.with(Cell::get);
        if !state.is_null() {
            super::budget::HookHandle::from_raw(state).fire_soon();
        }
    }
    // SAFETY: installs a handler that only does async-signal-safe work (see
    // the module docs); SA_RESTART keeps interrupted system calls going.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(SIGNAL, &action, std::ptr::null_mut());
    }
}

/// The calling thread's CPU time in nanoseconds (0 if unreadable): what C
/// work is charged by, since wall time also counts the time a loaded
/// machine kept the thread off the CPU.
pub fn thread_cpu_ns() -> u64 {
    cpu_ns(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or(0)
}

fn cpu_ns(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes into `ts`; an exited thread's clock is an error, not UB.
    (unsafe { libc::clock_gettime(clock, &mut ts) } == 0)
        .then(|| u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// The watchdog thread.
fn run() {
    // Per meter: (run, cpu, charged) at the last sample.
    let mut last: Vec<(Arc<Meter>, u64, u64, u64)> = Vec::new();
    loop {
        std::thread::sleep(PERIOD);
        // Held while signalling: a thread unregisters (under this lock)
        // before it exits, so every thread signalled is alive.
        let meters = METERS.lock().unwrap_or_else(|e| e.into_inner());
        last.retain(|(m, ..)| meters.iter().any(|x| Arc::ptr_eq(x, m)));
        for meter in meters.iter() {
            let run = meter.run.load(Ordering::Acquire);
            let Some(cpu) = cpu_ns(meter.clock) else { continue };
            let charged = meter.charged.load(Ordering::Relaxed);
            match last.iter_mut().find(|(m, ..)| Arc::ptr_eq(m, meter)) {
                Some((_, last_run, last_cpu, last_charged)) => {
                    if run != 0 && run == *last_run {
                        let used = cpu.saturating_sub(*last_cpu) / super::budget::NS_PER_UNIT;
                        let accounted = charged.saturating_sub(*last_charged);
                        if used > accounted.saturating_mul(C_HEAVY) && used - accounted > MIN_EXCESS {
                            let excess = used - accounted;
                            {
                                let mut pending = meter.pending.lock().unwrap_or_else(|e| e.into_inner());
                                let units = if pending.0 == run { pending.1 } else { 0 };
                                *pending = (run, units + excess);
                            }
                            meter.charged.fetch_add(excess, Ordering::Relaxed);
                            // SAFETY: the thread is registered, so alive.
                            unsafe { libc::pthread_kill(meter.thread, SIGNAL) };
                        }
                    }
                    (*last_run, *last_cpu, *last_charged) = (run, cpu, meter.charged.load(Ordering::Relaxed));
                }
                None => last.push((meter.clone(), run, cpu, charged)),
            }
        }
    }
}
