//! The Lua side of a worker: one LuaJIT VM per tenant namespace (`vm`), the
//! sandbox every route's code runs in, the `ngx` API (`api`) and the one helper
//! for its argument errors (`args`).

pub mod api;
pub mod args;
// The FFI modules: LuaJIT's C API (instruction hooks, the allocator), POSIX
// signals and pthread stack bounds have no safe binding. Each `unsafe` block in
// them carries its SAFETY argument; nothing else in the crate may use unsafe.
#[allow(unsafe_code)]
pub mod budget;
pub mod lib;
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

use crate::config::Phase;

/// Logs a Lua error of a request's handler with its route, location, phase and line.
pub fn log_error(site: &str, phase: Phase, e: &mlua::Error) {
    crate::metrics::lua_error(phase);
    if matches!(e, mlua::Error::MemoryError(_)) || error_message(e).contains("not enough memory") {
        crate::metrics::lua_memory_error();
    }
    let msg = error_message(e);
    tracing::error!("{site}, phase {}: lua error: {msg}", phase.name());
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
