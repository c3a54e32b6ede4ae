//! The C stack guard. LuaJIT bounds its own Lua stack but not the C stack:
//! recursion that passes through C (a `table.sort` comparator that sorts
//! again, nested coroutines, an `ngx.re.gsub` callback calling gsub, our own
//! Rust walking a nested table) grows the worker thread's stack until the
//! process dies. Every such path checks [`exhausted`] — the count hook at
//! least every `HOOK_INTERVAL` instructions, Rust recursion at each level —
//! and raises `C stack overflow` while a margin is left.
//!
//! The margin must exceed what can be used between two checks: at most a
//! few hundred C-call levels in one hook interval, a few KiB each, plus one
//! Rust callback. Worker threads get [`WORKER_STACK`] so the margin is a
//! small part of it.

use std::cell::Cell;

/// The stack size of worker threads.
pub const WORKER_STACK: usize = 16 << 20;

thread_local! {
    /// The lowest usable address of this thread's stack plus the margin;
    /// 0 until computed, `usize::MAX` if unknown (no guard).
    static FLOOR: Cell<usize> = const { Cell::new(0) };
}

/// Whether this thread's stack is down to its safety margin.
pub fn exhausted() -> bool {
    let floor = FLOOR.with(|f| {
        if f.get() == 0 {
            f.set(compute_floor());
        }
        f.get()
    });
    floor != usize::MAX && stack_pointer() < floor
}

/// A Lua error when the stack is down to its margin, for Rust recursion.
pub fn check() -> mlua::Result<()> {
    if exhausted() {
        Err(mlua::Error::runtime("C stack overflow"))
    } else {
        Ok(())
    }
}

#[inline(never)]
fn stack_pointer() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

fn compute_floor() -> usize {
    match stack_bounds() {
        Some((low, size)) => low + (size / 8).clamp(256 << 10, 2 << 20),
        None => usize::MAX,
    }
}

/// The lowest address and the size of the calling thread's stack.
fn stack_bounds() -> Option<(usize, usize)> {
    // SAFETY: pthread_getattr_np fills `attr` for the calling thread, which
    // is destroyed after reading the stack from it.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let ok = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        (ok && !addr.is_null()).then_some((addr as usize, size))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_guard_trips_before_the_stack_ends() {
        fn recurse(depth: usize) -> usize {
            if super::exhausted() {
                return depth;
            }
            let pad = std::hint::black_box([0u8; 512]);
            recurse(depth + 1) + pad[0] as usize
        }
        // A thread of known size: the guard must stop the recursion, not SIGSEGV.
        let depth = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| recurse(0))
            .unwrap()
            .join()
            .unwrap();
        assert!(depth > 100, "the guard left room to recurse ({depth})");
    }
}
