//! Parked I/O: how an `ngx` function that must wait hands its work to the
//! driver of the Lua thread that called it.
//!
//! A Rust API function that cannot answer at once parks a future here and
//! returns the yield marker; its Lua wrapper (prelude.lua, `await`) then
//! yields `(marker, OP_AWAIT)` to the driver, which takes the future, awaits
//! it (other light threads and requests run meanwhile), and resumes the Lua
//! thread with the values the future's answer builds.
//!
//! Invariant: at most one future is parked, from the Rust call that parks it
//! to the driver's `take` right after the resume returns; no other Lua runs
//! on this thread in between. A driver that finds a future it does not serve
//! (a yield that never reached it) drops it, which cancels the I/O.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;

use mlua::{Lua, MultiValue};

/// Builds the values the parked Lua thread is resumed with; runs on the
/// worker's thread with the VM at hand.
pub type Answer = Box<dyn FnOnce(&Lua) -> mlua::Result<MultiValue>>;

/// A parked operation: I/O with its timeout, ending in the answer.
pub type Parked = Pin<Box<dyn Future<Output = Answer>>>;

thread_local! {
    static PARKED: RefCell<Option<Parked>> = const { RefCell::new(None) };
}

/// Parks `op` for the driver; the caller returns the yield marker next.
pub fn park(op: impl Future<Output = Answer> + 'static) {
    PARKED.with(|p| *p.borrow_mut() = Some(Box::pin(op)));
}

/// The parked operation, if the Lua code just yielded one.
pub fn take() -> Option<Parked> {
    PARKED.with(|p| p.borrow_mut().take())
}

/// An answer of plain values known now.
pub fn answer(build: impl FnOnce(&Lua) -> mlua::Result<MultiValue> + 'static) -> Answer {
    Box::new(build)
}
