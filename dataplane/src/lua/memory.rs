//! Memory of a tenant VM: its limit, and what its allocations cost.
//!
//! **The limit** is mlua's (`Lua::set_memory_limit`): an allocation past it
//! fails with Lua's `not enough memory`, which fails the request (or timer)
//! that asked for it — a 500 and `moongate_lua_memory_errors_total` — and
//! not the worker. It is per tenant VM: the routes of one namespace on one
//! worker share it.
//!
//! **The cost.** C code that does work proportional to its input almost
//! always allocates its result (string concatenation, `string.rep`,
//! `table.concat`, `string.format`, new tables, growing ones), and the
//! collector's work follows allocation too. So every VM's allocator is
//! wrapped: the bytes it hands out are charged to the running code's CPU
//! account (`budget`) at the next hook, or at once for a large block, so a
//! loop that copies megabytes per instruction is preempted like one that
//! runs many instructions.
//!
//! The wrapper delegates to mlua's allocator, which keeps enforcing the
//! limit. mlua then no longer recognises its allocator, so it creates its
//! C closures under a protected call (safe) and cannot free its small
//! limit record at close (leaked once per VM, 32 bytes).

use std::cell::Cell;
use std::os::raw::c_void;

use mlua::ffi;

/// A block this large is charged when it is allocated, not at the next hook.
const LARGE: usize = 64 << 10;

thread_local! {
    /// Bytes allocated by Lua on this thread since the hook last charged them.
    static UNCHARGED: Cell<usize> = const { Cell::new(0) };
}

/// Takes the bytes allocated since the last call (the hook charges them).
pub fn take_uncharged() -> usize {
    UNCHARGED.with(|u| u.replace(0))
}

/// The wrapped allocator's state; owned by the VM's app data, which mlua
/// drops after closing the state.
struct Wrapped {
    inner: ffi::lua_Alloc,
    inner_ud: *mut c_void,
    used: Cell<usize>,
}

struct Owner(#[allow(dead_code)] Box<Wrapped>);

/// Sets `lua`'s memory limit and wraps its allocator. Call once, on a new VM.
pub fn install(lua: &mlua::Lua, limit: usize) -> mlua::Result<()> {
    // First, so that mlua protects every allocation it makes (its
    // "unlikely memory error" shortcut is off once a limit is set).
    lua.set_memory_limit(limit)?;
    let mut wrapped = Box::new(Wrapped {
        inner: allocate,
        inner_ud: std::ptr::null_mut(),
        used: Cell::new(0),
    });
    let ud: *mut Wrapped = &mut *wrapped;
    // SAFETY: reads and replaces the allocator of a state no Lua is running
    // on; `wrapped` stays at the same address (boxed) for the state's life.
    unsafe {
        lua.exec_raw::<()>((), |state| {
            let mut inner_ud = std::ptr::null_mut();
            let inner = ffi::lua_getallocf(state, &mut inner_ud);
            (*ud).inner = inner;
            (*ud).inner_ud = inner_ud;
            ffi::lua_setallocf(state, allocate, ud.cast());
        })?;
    }
    lua.set_app_data(Owner(wrapped));
    Ok(())
}

/// Bytes the VM holds now.
pub fn used(lua: &mlua::Lua) -> usize {
    // SAFETY: the allocator data is ours (installed by `install`) and lives as long as the state.
    unsafe {
        let mut ud = std::ptr::null_mut();
        let mut used = 0;
        let _ = lua.exec_raw::<()>((), |state| {
            let f = ffi::lua_getallocf(state, &mut ud);
            if std::ptr::fn_addr_eq(f, allocate as ffi::lua_Alloc) && !ud.is_null() {
                used = (*(ud as *const Wrapped)).used.get();
            }
        });
        used
    }
}

/// Must not unwind (`lua_Alloc` is `extern "C"`): it only does arithmetic
/// and `budget::charge_allocation`, which never raises.
unsafe extern "C" fn allocate(ud: *mut c_void, ptr: *mut c_void, osize: usize, nsize: usize) -> *mut c_void {
    // SAFETY: `ud` is the `Wrapped` installed with this function.
    let w = unsafe { &*(ud as *const Wrapped) };
    // SAFETY: the same contract as ours, forwarded.
    let out = unsafe { (w.inner)(w.inner_ud, ptr, osize, nsize) };
    let old = if ptr.is_null() { 0 } else { osize };
    if nsize == 0 {
        w.used.set(w.used.get().saturating_sub(old));
    } else if !out.is_null() {
        w.used.set(w.used.get().saturating_sub(old) + nsize);
        if nsize > old {
            let grown = nsize - old;
            if grown >= LARGE {
                super::budget::charge_allocation(grown);
            } else {
                UNCHARGED.with(|u| u.set(u.get() + grown));
            }
        }
    }
    out
}
