//! The per-request context: the one module where request state is ambient.
//!
//! Why anything is ambient at all: LuaJIT calls the `ngx.*` functions with
//! Lua arguments only, so a Rust callback cannot be handed the request it
//! serves. The phase driver therefore makes a request *current* around every
//! coroutine resume and every filter or log call ([`Current::enter`],
//! [`call_plain`]), and the API reads it back ([`with`], [`current`]).
//! Everything else is passed explicitly: the phase driver hands its
//! `Lifecycle` to each phase, and the response head goes back to the
//! connection through the lifecycle's own slot.
//!
//! Invariants:
//! - A request is current only while Lua runs on its behalf, on the worker
//!   thread serving it; [`Current`] restores the previous one when dropped, so
//!   nesting (a header filter run by `ngx.say` inside content, a subrequest
//!   inside its parent) unwinds correctly.
//! - Outside that window the context is the VM's own phase ([`VmPhase`]:
//!   init, init_worker or a timer), and an API that needs a request fails with
//!   nginx's "API disabled in the context of …" instead of touching a finished
//!   request (Envoy's "dead handle" rule).
//!
//! The other `thread_local!`s of the crate are not request state but the
//! machinery of the thread Lua runs on, reached from C callbacks that carry
//! no context (the instruction hook, the allocator, the watchdog's signal
//! handler) or caches nginx also keeps per worker: `lua::budget` (the running
//! account), `lua::watchdog`, `lua::memory`, `lua::stack` (this thread's stack
//! floor), `lua::pattern` (callback nesting), `lua::api::re` (compiled
//! regexes), `lua::api::time` (the cached clock) and `shdict::seq` (this
//! worker's last durable write). None of them holds a request.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use mlua::Function;

use crate::config::Phase;
use crate::lua::budget::{self, Running};
use crate::request::{RequestState, SharedRequest};

/// The phase of Lua running outside any request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmPhase {
    Init,
    InitWorker,
    Timer,
}

impl VmPhase {
    /// The name `ngx.get_phase()` returns.
    pub fn name(self) -> &'static str {
        match self {
            VmPhase::Init => "init",
            VmPhase::InitWorker => "init_worker",
            VmPhase::Timer => "timer",
        }
    }

    /// nginx's name for the context in "API disabled in the context of …".
    fn context(self) -> &'static str {
        match self {
            VmPhase::Init => "init_by_lua*",
            VmPhase::InitWorker => "init_worker_by_lua*",
            VmPhase::Timer => "ngx.timer",
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<SharedRequest>> = const { RefCell::new(None) };
    static VM_PHASE: Cell<VmPhase> = const { Cell::new(VmPhase::Init) };
    /// The worker is shutting down (`ngx.worker.exiting()`).
    static EXITING: Cell<bool> = const { Cell::new(false) };
}

/// Makes a request current for the Lua API until dropped; restores the previous one.
pub struct Current {
    previous: Option<SharedRequest>,
}

impl Current {
    pub fn enter(request: &SharedRequest) -> Current {
        let previous = CURRENT.with(|c| c.replace(Some(request.clone())));
        Current { previous }
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// The current request, or nginx's "API disabled in the context of …" when
/// none is. `_api` names the caller for the reader; nginx's message does not.
pub fn current(_api: &str) -> mlua::Result<SharedRequest> {
    CURRENT.with(|c| c.borrow().clone()).ok_or_else(no_request)
}

pub fn has_current() -> bool {
    CURRENT.with(|c| c.borrow().is_some())
}

/// nginx's refusal outside a request: the context alone, as scripts compare it.
fn no_request() -> mlua::Error {
    let context = VM_PHASE.with(Cell::get).context();
    mlua::Error::runtime(format!("API disabled in the context of {context}"))
}

/// Runs `f` on the current request.
pub fn with<R>(api: &str, f: impl FnOnce(&mut RequestState) -> mlua::Result<R>) -> mlua::Result<R> {
    let request = current(api)?;
    let mut state = request
        .try_borrow_mut()
        .map_err(|_| mlua::Error::runtime(format!("{api}: request is busy")))?;
    f(&mut state)
}

/// Fails with nginx's message when the request's phase is not in `allowed`.
/// The `ngx` APIs with a README context line go through `lua::api::phases`.
pub fn check_phase(state: &RequestState, allowed: &[Phase]) -> mlua::Result<()> {
    if allowed.contains(&state.phase) {
        Ok(())
    } else {
        Err(disabled(state.phase))
    }
}

/// lua-nginx-module's error for an API called in a phase that forbids it:
/// the context alone, word for word, since scripts match on it.
pub fn disabled(phase: Phase) -> mlua::Error {
    mlua::Error::runtime(format!("API disabled in the context of {}", context_name(phase)))
}

/// nginx's name for a phase context in "API disabled in the context of …".
pub fn context_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Rewrite => "rewrite_by_lua*",
        Phase::Access => "access_by_lua*",
        Phase::Content => "content_by_lua*",
        Phase::HeaderFilter => "header_filter_by_lua*",
        Phase::BodyFilter => "body_filter_by_lua*",
        Phase::Log => "log_by_lua*",
        Phase::Balancer => "balancer_by_lua*",
    }
}

/// Runs `f` with the VM-level phase set (for code that runs without a request).
pub fn with_vm_phase<R>(phase: VmPhase, f: impl FnOnce() -> R) -> R {
    let prev = VM_PHASE.with(|p| p.replace(phase));
    let r = f();
    VM_PHASE.with(|p| p.set(prev));
    r
}

pub fn set_exiting() {
    EXITING.with(|e| e.set(true));
}

pub fn exiting() -> bool {
    EXITING.with(Cell::get)
}

/// The VM's own phase when no request is current; `None` while one is.
pub fn vm_phase() -> Option<VmPhase> {
    (!has_current()).then(|| VM_PHASE.with(Cell::get))
}

/// What `ngx.get_phase()` returns here and now.
pub fn phase_name() -> &'static str {
    match CURRENT.with(|c| c.borrow().clone()) {
        Some(r) => r.try_borrow().map(|r| r.phase.name()).unwrap_or("content"),
        None => VM_PHASE.with(Cell::get).name(),
    }
}

/// "route default/hello, location /hello, phase content: " for log lines from Lua.
pub fn log_prefix() -> String {
    match CURRENT.with(|c| c.borrow().clone()) {
        Some(r) => match r.try_borrow() {
            Ok(r) => format!("{}, phase {}: ", r.site, r.phase.name()),
            Err(_) => String::new(),
        },
        None => format!("{}: ", VM_PHASE.with(Cell::get).name()),
    }
}

/// Calls a filter or log handler (no yields allowed) with the request
/// current, on the request's account: the running handler's when a filter
/// runs inside it (`ngx.say` sends the headers), a fresh budget otherwise.
pub fn call_plain(req: &SharedRequest, phase: Phase, f: &Function) -> Result<(), mlua::Error> {
    let (account, hook, previous) = {
        let mut r = req.borrow_mut();
        let account = r.account.clone();
        (account, r.hook, std::mem::replace(&mut r.phase, phase))
    };
    let result = {
        let _current = Current::enter(req);
        match account {
            Some(account) => {
                let nested = budget::running().is_some_and(|a| Rc::ptr_eq(&a, &account));
                if !nested && req.borrow().subrequest_depth == 0 {
                    account.reset();
                }
                let _running = Running::enter(&account, hook);
                f.call::<()>(())
            }
            None => f.call::<()>(()),
        }
    };
    req.borrow_mut().phase = previous;
    result
}
