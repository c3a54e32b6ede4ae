//! The Lua side of a worker: one LuaJIT VM per worker thread (`vm`), the
//! sandbox every route's code runs in, and the `ngx` API (`api`).

pub mod api;
pub mod args;
// The FFI modules: LuaJIT's C API (instruction hooks, the allocator), POSIX
// signals and pthread stack bounds have no safe binding. Each `unsafe` block in
// them carries its SAFETY argument; nothing else in the crate may use unsafe.
#[allow(unsafe_code)]
pub mod budget;
#[allow(unsafe_code)]
pub mod memory;
pub mod pattern;
#[allow(unsafe_code)]
pub mod stack;
pub mod vm;
#[allow(unsafe_code)]
pub mod watchdog;

#[cfg(test)]
#[allow(unsafe_code)]
mod sandbox_tests;

use std::cell::Cell;

use crate::config::Phase;

thread_local! {
    /// The phase of Lua running outside any request on this thread: "init",
    /// "init_worker" or "timer".
    static VM_PHASE: Cell<&'static str> = const { Cell::new("init") };
    static EXITING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the VM-level phase set (for code that runs without a request).
pub fn with_vm_phase<R>(phase: &'static str, f: impl FnOnce() -> R) -> R {
    let prev = VM_PHASE.with(|p| p.replace(phase));
    let r = f();
    VM_PHASE.with(|p| p.set(prev));
    r
}

pub fn set_exiting() {
    EXITING.with(|e| e.set(true));
}

pub fn exiting() -> bool {
    EXITING.with(|e| e.get())
}

/// What `ngx.get_phase()` returns here and now.
pub fn phase_name() -> &'static str {
    match crate::request::current("ngx.get_phase") {
        Ok(r) => r.try_borrow().map(|r| r.phase.name()).unwrap_or("content"),
        Err(_) => VM_PHASE.with(|p| p.get()),
    }
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
    }
}

/// The context name when no request is current.
pub fn phase_context() -> &'static str {
    match VM_PHASE.with(|p| p.get()) {
        "init_worker" => "init_worker_by_lua*",
        "timer" => "ngx.timer",
        _ => "init_by_lua*",
    }
}

/// "route default/hello, location /hello, phase content: " for log lines from Lua.
pub fn log_context() -> String {
    match crate::request::current("ngx.log") {
        Ok(r) => match r.try_borrow() {
            Ok(r) => format!("{}, phase {}: ", r.site, r.phase.name()),
            Err(_) => String::new(),
        },
        Err(_) => format!("{}: ", VM_PHASE.with(|p| p.get())),
    }
}

/// `error_message` without the stack traceback mlua appends: one line, for
/// reports (a route that failed to load) rather than logs of a request.
pub fn error_summary(e: &mlua::Error) -> String {
    let message = error_message(e);
    match message.split_once("\nstack traceback:") {
        Some((head, _)) => head.to_string(),
        None => message,
    }
}

/// The message a Lua script should see for an error: the innermost runtime
/// error, without mlua's "runtime error: " prefix and traceback.
pub fn error_message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } => error_message(cause),
        mlua::Error::WithContext { cause, .. } => error_message(cause),
        mlua::Error::RuntimeError(msg) | mlua::Error::SyntaxError { message: msg, .. } => msg.clone(),
        mlua::Error::MemoryError(msg) => format!("not enough memory: {msg}"),
        other => other.to_string(),
    }
}
