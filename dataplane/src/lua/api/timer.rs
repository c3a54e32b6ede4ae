//! `ngx.timer.at`, `ngx.timer.every`, `ngx.timer.running_count` and
//! `ngx.timer.pending_count`, with OpenResty semantics: the callback runs in
//! its own coroutine (it may `ngx.sleep`), outside any request, with
//! `premature` as its first argument; on shutdown pending timers fire at once
//! with `premature = true`. Counts and limits are per worker, as per nginx
//! worker (`lua_max_pending_timers` 1024, `lua_max_running_timers` 256).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use mlua::thread::ThreadStatus;
use mlua::{Function, Lua, MultiValue, Table, Value};
use tokio::sync::Notify;

use super::OP_SLEEP;

pub const MAX_PENDING: usize = 1024;
pub const MAX_RUNNING: usize = 256;

/// Instructions a timer callback may run per resume (it may sleep between).
const TIMER_BUDGET: u64 = crate::worker::DEFAULT_INSTRUCTION_BUDGET;

thread_local! {
    static PENDING: Cell<usize> = const { Cell::new(0) };
    static RUNNING: Cell<usize> = const { Cell::new(0) };
    static SHUTDOWN: Rc<Notify> = Rc::new(Notify::new());
    /// Handles of this worker's pending timers.
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
    static CANCELS: std::cell::RefCell<std::collections::HashMap<u64, Rc<Cancel>>> = Default::default();
}

/// Fires every pending timer of this worker with `premature = true`.
pub fn shutdown() {
    SHUTDOWN.with(|n| n.notify_waiters());
}

/// Timers pending or running on this worker.
pub fn active() -> usize {
    PENDING.with(Cell::get) + RUNNING.with(Cell::get)
}

pub fn register(lua: &Lua, ngx: &Table, yield_marker: &Table) -> mlua::Result<()> {
    let timer = lua.create_table()?;
    for (name, every) in [("at", false), ("every", true)] {
        let marker = yield_marker.clone();
        timer.set(
            name,
            lua.create_function(move |lua, args: MultiValue| create(lua, &marker, name, every, args))?,
        )?;
    }
    timer.set(
        "running_count",
        lua.create_function(|_, ()| Ok(RUNNING.with(Cell::get)))?,
    )?;
    timer.set(
        "pending_count",
        lua.create_function(|_, ()| Ok(PENDING.with(Cell::get)))?,
    )?;
    ngx.set("timer", timer)?;
    Ok(())
}

fn create(
    lua: &Lua,
    marker: &Table,
    api: &str,
    every: bool,
    args: MultiValue,
) -> mlua::Result<(Option<i64>, Option<String>)> {
    let mut args = args.into_iter();
    let delay = match args.next() {
        Some(Value::Integer(i)) => i as f64,
        Some(Value::Number(n)) => n,
        other => {
            return Err(mlua::Error::runtime(format!(
                "bad argument #1 to '{api}' (number expected, got {})",
                other.map_or("no value", |v| v.type_name())
            )));
        }
    };
    if delay.is_nan() || delay < 0.0 || (every && delay == 0.0) {
        return Err(mlua::Error::runtime(if every {
            "bad argument #1 to 'every' (delay must be > 0)"
        } else {
            "bad argument #1 to 'at' (delay must be >= 0)"
        }));
    }
    let callback = match args.next() {
        Some(Value::Function(f)) => f,
        other => {
            return Err(mlua::Error::runtime(format!(
                "bad argument #2 to '{api}' (function expected, got {})",
                other.map_or("no value", |v| v.type_name())
            )));
        }
    };
    if crate::lua::exiting() {
        return Ok((None, Some("process exiting".into())));
    }
    if PENDING.with(Cell::get) >= MAX_PENDING {
        return Ok((None, Some("too many pending timers".into())));
    }
    let extra: Vec<Value> = args.collect();
    let site = crate::lua::log_context();
    PENDING.with(|p| p.set(p.get() + 1));
    let id = NEXT_ID.with(|n| n.replace(n.get() + 1));
    let cancel = Rc::new(Cancel {
        cancelled: Cell::new(false),
        pending: Cell::new(true),
        notify: Notify::new(),
    });
    CANCELS.with(|c| c.borrow_mut().insert(id, cancel.clone()));
    let timer = Timer {
        lua: lua.clone(),
        marker: marker.clone(),
        callback,
        extra,
        site,
        id,
        cancel,
    };
    tokio::task::spawn_local(timer.run(Duration::from_secs_f64(delay.min(1e9)), every));
    // A truthy handle, as OpenResty's `1`, that `moongate.timer.cancel` takes.
    Ok((Some(id as i64), None))
}

/// A pending timer's cancellation signal.
struct Cancel {
    cancelled: Cell<bool>,
    /// Waiting to fire (counted in `PENDING`), as opposed to running.
    pending: Cell<bool>,
    notify: Notify,
}

/// `moongate.timer.cancel(handle)`: stops a pending `ngx.timer.at`/`every`
/// timer (its callback never runs, not even prematurely). Returns `true`, or
/// `nil, "not found"` for a timer that already ran, was cancelled or is unknown.
pub fn cancel_function(lua: &Lua) -> mlua::Result<Function> {
    lua.create_function(|_, handle: Value| {
        let id = match handle {
            Value::Integer(i) => u64::try_from(i).ok(),
            Value::Number(n) if n >= 1.0 && n.fract() == 0.0 => Some(n as u64),
            other => {
                return Err(mlua::Error::runtime(format!(
                    "bad argument #1 to 'cancel' (timer handle expected, got {})",
                    other.type_name()
                )));
            }
        };
        match id.and_then(|id| CANCELS.with(|c| c.borrow_mut().remove(&id))) {
            Some(cancel) => {
                cancel.cancelled.set(true);
                if cancel.pending.replace(false) {
                    PENDING.with(|p| p.set(p.get() - 1));
                }
                cancel.notify.notify_one();
                Ok((Some(true), None))
            }
            None => Ok((None, Some("not found"))),
        }
    })
}

struct Timer {
    lua: Lua,
    marker: Table,
    callback: Function,
    extra: Vec<Value>,
    /// Where the timer was created, for log lines.
    site: String,
    id: u64,
    cancel: Rc<Cancel>,
}

impl Timer {
    async fn run(self, delay: Duration, every: bool) {
        let shutdown = SHUTDOWN.with(Rc::clone);
        loop {
            let premature = if crate::lua::exiting() {
                true
            } else if delay.is_zero() {
                // Like nginx's 0 ms timer: run on the next turn of the event loop.
                tokio::task::yield_now().await;
                false
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => false,
                    _ = shutdown.notified() => true,
                    _ = self.cancel.notify.notified() => false,
                }
            };
            if self.cancel.cancelled.get() {
                // `cancel` already took it off the pending count.
                return;
            }
            self.cancel.pending.set(false);
            PENDING.with(|p| p.set(p.get() - 1));
            if RUNNING.with(Cell::get) >= MAX_RUNNING {
                tracing::error!("{}lua_max_running_timers are not enough", self.site);
                CANCELS.with(|c| c.borrow_mut().remove(&self.id));
                return;
            }
            RUNNING.with(|r| r.set(r.get() + 1));
            self.fire(premature).await;
            RUNNING.with(|r| r.set(r.get() - 1));
            if !every || premature || crate::lua::exiting() || self.cancel.cancelled.get() {
                CANCELS.with(|c| c.borrow_mut().remove(&self.id));
                return;
            }
            self.cancel.pending.set(true);
            PENDING.with(|p| p.set(p.get() + 1));
        }
    }

    /// Runs the callback in a coroutine, serving `ngx.sleep` yields.
    async fn fire(&self, premature: bool) {
        let args = std::iter::once(Value::Boolean(premature))
            .chain(self.extra.iter().cloned())
            .collect();
        if let Err(e) = drive(&self.lua, &self.marker, &self.callback, args).await {
            tracing::error!("{}timer: lua entry thread aborted: {e}", self.site);
        }
    }
}

/// Runs `callback(args...)` to completion in its own coroutine, outside any
/// request, serving `ngx.sleep` yields; shared with durable timers. An error
/// (returned as its message, with the chunk and line) is counted in
/// `moongate_timer_callback_errors_total`; the caller logs it with context.
pub(crate) async fn drive(lua: &Lua, marker: &Table, callback: &Function, mut args: MultiValue) -> Result<(), String> {
    let thread = lua.create_thread(callback.clone()).map_err(|e| {
        crate::metrics::timer_callback_error();
        format!("cannot create a coroutine: {e}")
    })?;
    loop {
        let result = crate::lua::with_vm_phase("timer", || {
            crate::lua::budget::with_vm_budget(TIMER_BUDGET, || thread.resume::<MultiValue>(args))
        });
        let values = match result {
            Ok(v) => v,
            Err(e) => {
                crate::metrics::timer_callback_error();
                return Err(crate::lua::error_message(&e));
            }
        };
        if thread.status() != ThreadStatus::Resumable {
            return Ok(());
        }
        let mut values = values.into_iter();
        let is_marker = matches!(values.next(), Some(Value::Table(t)) if t.to_pointer() == marker.to_pointer());
        let op = match values.next() {
            Some(Value::Integer(op)) if is_marker => op,
            _ => 0,
        };
        args = MultiValue::new();
        if op == OP_SLEEP {
            let secs = match values.next() {
                Some(Value::Integer(i)) => i as f64,
                Some(Value::Number(n)) => n,
                _ => 0.0,
            };
            tokio::time::sleep(Duration::from_secs_f64(secs.clamp(0.0, 1e9))).await;
            super::time::update_cached_time();
        } else if op == super::OP_DURABLE_SYNC {
            args = super::durable::wait(lua, values.next()).await;
        } else if is_marker {
            // ngx.exit() and friends end a timer's coroutine.
            return Ok(());
        } else {
            tokio::task::yield_now().await;
        }
    }
}
