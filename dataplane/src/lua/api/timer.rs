//! `ngx.timer.at`, `ngx.timer.every`, `ngx.timer.running_count` and
//! `ngx.timer.pending_count`, with OpenResty semantics: the callback runs in
//! its own coroutine (it may `ngx.sleep`), outside any request, with
//! `premature` as its first argument; on shutdown pending timers fire at once
//! with `premature = true`.
//!
//! Limits are per route, as nginx's are per worker (`lua_max_pending_timers`
//! 1024, `lua_max_running_timers` 256), and also per namespace and per worker,
//! so one tenant filling its pool never starves another's. The counts Lua
//! reads are the route's own. A timer run spends its route's CPU (see
//! `crate::sched`'s timer bucket): across all its resumes, a callback cannot
//! use more than its route's budget, refilled over time.
//!
//! **Where the state lives.** Everything a worker knows about its timers —
//! the counts, the cancel handles, the shutdown signal, the next handle and
//! the scheduler they run on — is in one [`Timers`], created by the worker
//! when it starts and owned by it (`Worker::timers`). Nothing here is
//! ambient: the `ngx.timer` and `moongate.timer.cancel` functions capture an
//! `Rc` of it when their VM is created (VMs never leave their worker
//! thread; it holds no Lua value, so that is no cycle), each timer task
//! holds one, and the worker's server loop calls [`Timers::shutdown`] and
//! [`Timers::active`]. Only this module touches its fields; it imports
//! nothing of the worker.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use mlua::thread::ThreadStatus;
use mlua::{Function, Lua, MultiValue, Table, Value};
use tokio::sync::Notify;

use super::OP_SLEEP;
use crate::lua::args::{NO_VALUE, bad_argument, bad_type};
use crate::lua::budget::{self, HookHandle, Limits, Running};
use crate::sched::Sched;

/// Per route, as OpenResty's per-worker defaults.
pub const MAX_PENDING: usize = 1024;
pub const MAX_RUNNING: usize = 256;
/// Per namespace.
pub const MAX_PENDING_NAMESPACE: usize = 4 * MAX_PENDING;
pub const MAX_RUNNING_NAMESPACE: usize = 4 * MAX_RUNNING;
/// Per worker.
pub const MAX_PENDING_WORKER: usize = 16 * MAX_PENDING;
pub const MAX_RUNNING_WORKER: usize = 16 * MAX_RUNNING;

/// Pending and running timers of one route, one namespace, or the worker.
#[derive(Default, Clone, Copy)]
struct Counts {
    pending: usize,
    running: usize,
}

/// Where a timer's counts are kept: its route and its namespace.
#[derive(Clone)]
struct Owner {
    route: Rc<str>,
    namespace: Rc<str>,
}

impl Owner {
    fn of(route: &Rc<str>) -> Owner {
        let namespace = route.split_once('/').map_or("", |(ns, _)| ns);
        Owner {
            route: route.clone(),
            namespace: Rc::from(namespace),
        }
    }
}

/// One worker's timers: created by the worker at start, shared (`Rc`) with
/// the timer functions of its VMs and its timer tasks, all on its thread.
pub struct Timers {
    /// The worker's scheduler, which timer runs (and `init` code) wait on.
    sched: Rc<Sched>,
    /// By route (`ns/name`), namespace (`ns`) and the worker (``).
    counts: RefCell<HashMap<Rc<str>, Counts>>,
    /// Fires every pending timer prematurely.
    shutdown: Notify,
    /// The handle of the next timer.
    next_id: Cell<u64>,
    /// Handles of this worker's pending timers.
    cancels: RefCell<HashMap<u64, Rc<Cancel>>>,
}

impl Timers {
    pub fn new(sched: Rc<Sched>) -> Timers {
        Timers {
            sched,
            counts: RefCell::default(),
            shutdown: Notify::new(),
            next_id: Cell::new(1),
            cancels: RefCell::default(),
        }
    }

    /// The worker's scheduler.
    pub fn sched(&self) -> &Rc<Sched> {
        &self.sched
    }

    /// Fires every pending timer of this worker with `premature = true`.
    pub fn shutdown(&self) {
        self.shutdown.notify_waiters();
    }

    /// Timers pending or running on this worker.
    pub fn active(&self) -> usize {
        self.counts.borrow().get("").map_or(0, |w| w.pending + w.running)
    }

    /// Applies `f` to the route's, the namespace's and the worker's counts.
    fn update(&self, owner: &Owner, f: impl Fn(&mut Counts)) {
        let mut c = self.counts.borrow_mut();
        for key in [&*owner.route, &*owner.namespace, ""] {
            let counts = c.entry(Rc::from(key)).or_default();
            f(counts);
            if counts.pending == 0 && counts.running == 0 && !key.is_empty() {
                c.remove(key);
            }
        }
    }

    fn counts(&self, owner: &Owner) -> [Counts; 3] {
        let c = self.counts.borrow();
        [&*owner.route, &*owner.namespace, ""].map(|k| c.get(k).copied().unwrap_or_default())
    }

    /// Whether a new pending timer of `owner` is refused.
    fn pending_full(&self, owner: &Owner) -> bool {
        let [route, namespace, worker] = self.counts(owner);
        route.pending >= MAX_PENDING
            || namespace.pending >= MAX_PENDING_NAMESPACE
            || worker.pending >= MAX_PENDING_WORKER
    }

    fn running_full(&self, owner: &Owner) -> bool {
        let [route, namespace, worker] = self.counts(owner);
        route.running >= MAX_RUNNING
            || namespace.running >= MAX_RUNNING_NAMESPACE
            || worker.running >= MAX_RUNNING_WORKER
    }

    /// The running route's counts, as `running_count`/`pending_count` report them.
    fn own_counts(&self) -> Counts {
        budget::running().map_or_else(Counts::default, |a| self.counts(&Owner::of(a.route()))[0])
    }
}

/// Sets `ngx.timer`, whose functions keep `timers` (the VM's worker's).
pub fn register(lua: &Lua, ngx: &Table, yield_marker: &Table, timers: &Rc<Timers>) -> mlua::Result<()> {
    let timer = lua.create_table()?;
    for (name, every) in [("at", false), ("every", true)] {
        let marker = yield_marker.clone();
        let timers = timers.clone();
        timer.set(
            name,
            lua.create_function(move |lua, args: MultiValue| create(lua, &timers, &marker, name, every, args))?,
        )?;
    }
    let t = timers.clone();
    timer.set(
        "running_count",
        lua.create_function(move |_, ()| Ok(t.own_counts().running))?,
    )?;
    let t = timers.clone();
    timer.set(
        "pending_count",
        lua.create_function(move |_, ()| Ok(t.own_counts().pending))?,
    )?;
    ngx.set("timer", timer)?;
    Ok(())
}

fn create(
    lua: &Lua,
    timers: &Rc<Timers>,
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
            let got = other.map_or(NO_VALUE, |v| v.type_name());
            return Err(mlua::Error::runtime(bad_type(1, api, "number", got)));
        }
    };
    if delay.is_nan() || delay < 0.0 || (every && delay == 0.0) {
        return Err(mlua::Error::runtime(if every {
            bad_argument(1, "every", "delay must be > 0")
        } else {
            bad_argument(1, "at", "delay must be >= 0")
        }));
    }
    let callback = match args.next() {
        Some(Value::Function(f)) => f,
        other => {
            let got = other.map_or(NO_VALUE, |v| v.type_name());
            return Err(mlua::Error::runtime(bad_type(2, api, "function", got)));
        }
    };
    if crate::context::exiting() {
        return Ok((None, Some("process exiting".into())));
    }
    let Some(account) = budget::running() else {
        return Err(mlua::Error::runtime("ngx.timer: no route is running"));
    };
    let owner = Owner::of(account.route());
    if timers.pending_full(&owner) {
        return Ok((None, Some("too many pending timers".into())));
    }
    let extra: Vec<Value> = args.collect();
    let site = crate::context::log_prefix();
    timers.update(&owner, |c| c.pending += 1);
    let id = timers.next_id.replace(timers.next_id.get() + 1);
    let cancel = Rc::new(Cancel {
        cancelled: Cell::new(false),
        pending: Cell::new(true),
        notify: Notify::new(),
        owner: RefCell::new(Some(owner.clone())),
    });
    timers.cancels.borrow_mut().insert(id, cancel.clone());
    let timer = Timer {
        timers: timers.clone(),
        run: Run {
            lua: lua.clone(),
            marker: marker.clone(),
            hook: HookHandle::of(lua),
            route: account.route().clone(),
            limits: account.route_limits(),
            max_string: account.max_string(),
            sched: timers.sched.clone(),
        },
        callback,
        extra,
        site,
        id,
        cancel,
        owner,
    };
    tokio::task::spawn_local(timer.run(Duration::from_secs_f64(delay.min(1e9)), every));
    // A truthy handle, as OpenResty's `1`, that `moongate.timer.cancel` takes.
    Ok((Some(id as i64), None))
}

/// A pending timer's cancellation signal.
struct Cancel {
    cancelled: Cell<bool>,
    /// Waiting to fire (counted as pending), as opposed to running.
    pending: Cell<bool>,
    notify: Notify,
    owner: RefCell<Option<Owner>>,
}

/// `moongate.timer.cancel(handle)`: stops a pending `ngx.timer.at`/`every`
/// timer (its callback never runs, not even prematurely). Returns `true`, or
/// `nil, "not found"` for a timer that already ran, was cancelled or is unknown.
pub fn cancel_function(lua: &Lua, timers: &Rc<Timers>) -> mlua::Result<Function> {
    let timers = timers.clone();
    lua.create_function(move |_, handle: Value| {
        let id = match handle {
            Value::Integer(i) => u64::try_from(i).ok(),
            Value::Number(n) if n >= 1.0 && n.fract() == 0.0 => Some(n as u64),
            other => {
                return Err(mlua::Error::runtime(bad_type(
                    1,
                    "cancel",
                    "timer handle",
                    other.type_name(),
                )));
            }
        };
        let cancel = id.and_then(|id| timers.cancels.borrow_mut().remove(&id));
        match cancel {
            Some(cancel) => {
                cancel.cancelled.set(true);
                if cancel.pending.replace(false)
                    && let Some(owner) = cancel.owner.borrow().as_ref()
                {
                    timers.update(owner, |c| c.pending -= 1);
                }
                cancel.notify.notify_one();
                Ok((Some(true), None))
            }
            None => Ok((None, Some("not found"))),
        }
    })
}

/// What a timer's callback runs with: its VM and its route's CPU bounds.
pub(crate) struct Run {
    pub lua: Lua,
    pub marker: Table,
    pub hook: HookHandle,
    pub route: Rc<str>,
    pub limits: Limits,
    /// The largest string the callback may build outside the VM.
    pub max_string: usize,
    /// The worker's scheduler, whose background lane and timer buckets the
    /// run draws on.
    pub sched: Rc<Sched>,
}

struct Timer {
    timers: Rc<Timers>,
    run: Run,
    callback: Function,
    extra: Vec<Value>,
    /// Where the timer was created, for log lines.
    site: String,
    id: u64,
    cancel: Rc<Cancel>,
    owner: Owner,
}

impl Timer {
    async fn run(self, delay: Duration, every: bool) {
        let timers = &*self.timers;
        loop {
            let premature = if crate::context::exiting() {
                true
            } else if delay.is_zero() {
                // Like nginx's 0 ms timer: run on the next turn of the event loop.
                tokio::task::yield_now().await;
                false
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => false,
                    _ = timers.shutdown.notified() => true,
                    _ = self.cancel.notify.notified() => false,
                }
            };
            if self.cancel.cancelled.get() {
                // `cancel` already took it off the pending count.
                return;
            }
            self.cancel.pending.set(false);
            timers.update(&self.owner, |c| c.pending -= 1);
            if timers.running_full(&self.owner) {
                tracing::error!("{}lua_max_running_timers are not enough", self.site);
                timers.cancels.borrow_mut().remove(&self.id);
                return;
            }
            timers.update(&self.owner, |c| c.running += 1);
            self.fire(premature).await;
            timers.update(&self.owner, |c| c.running -= 1);
            if !every || premature || crate::context::exiting() || self.cancel.cancelled.get() {
                timers.cancels.borrow_mut().remove(&self.id);
                return;
            }
            self.cancel.pending.set(true);
            timers.update(&self.owner, |c| c.pending += 1);
        }
    }

    /// Runs the callback in a coroutine, serving `ngx.sleep` yields.
    async fn fire(&self, premature: bool) {
        let args = std::iter::once(Value::Boolean(premature))
            .chain(self.extra.iter().cloned())
            .collect();
        if let Err(e) = drive(&self.run, &self.callback, args).await {
            tracing::error!("{}timer: lua entry thread aborted: {e}", self.site);
        }
    }
}

/// Runs `callback(args...)` to completion in its own coroutine, outside any
/// request, serving `ngx.sleep` yields; shared with durable timers. The run
/// has one CPU account across its resumes, capped by its route's timer
/// bucket; past a slice it waits in the worker's background lane. An error
/// (returned as its message, with the chunk and line) is counted in
/// `moongate_timer_callback_errors_total`; the caller logs it with context.
pub(crate) async fn drive(run: &Run, callback: &Function, mut args: MultiValue) -> Result<(), String> {
    let thread = run.lua.create_thread(callback.clone()).map_err(|e| {
        crate::metrics::timer_callback_error();
        format!("cannot create a coroutine: {e}")
    })?;
    let sched = &run.sched;
    let account = budget::Account::new(run.route.clone(), run.limits, run.limits, run.max_string);
    // A route that was just aborted for CPU starts in the background.
    if sched.is_penalized(&run.route) {
        account.demote();
    }
    loop {
        let slice = if account.demoted() {
            Some(sched.background(account.id()).await)
        } else {
            sched.foreground(account.id());
            None
        };
        let allowance = sched.timer_allowance(&run.route, run.limits.budget);
        if allowance == 0 {
            // The route's timers spent their bucket: this run ends like one
            // that ran out itself.
            crate::metrics::budget_exceeded();
            crate::metrics::timer_callback_error();
            sched.penalize(&run.route);
            return Err(format!(
                "{}: the route's timers used up their CPU budget",
                budget::EXCEEDED
            ));
        }
        account.set_left(allowance);
        let before = account.spent();
        let result = crate::context::with_vm_phase(crate::context::VmPhase::Timer, || {
            let _running = Running::enter(&account, run.hook);
            thread.resume::<MultiValue>(args)
        });
        drop(slice);
        account.yielded();
        sched.timer_spent(&run.route, account.spent() - before);
        let values = match result {
            Ok(v) => v,
            Err(e) => {
                if account.exceeded().is_some() {
                    sched.penalize(&run.route);
                }
                crate::metrics::timer_callback_error();
                return Err(crate::lua::error_message(&e));
            }
        };
        if thread.status() != ThreadStatus::Resumable {
            return Ok(());
        }
        if values.is_empty() && budget::preempted(false) {
            account.demote();
            args = MultiValue::new();
            continue;
        }
        let mut values = values.into_iter();
        let is_marker = matches!(values.next(), Some(Value::Table(t)) if t.to_pointer() == run.marker.to_pointer());
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
            args = super::durable::wait(&run.lua, values.next()).await;
        } else if op == super::OP_AWAIT {
            if let Some(parked) = super::pending::take() {
                let answer = parked.await;
                super::time::update_cached_time();
                args = answer(&run.lua).map_err(|e| crate::lua::error_message(&e))?;
            }
        } else if op == super::OP_SPAWN || op == super::OP_WAIT || op == super::OP_KILL {
            // Light threads are scheduled by the request driver only.
            return Err("ngx.thread.* is not supported in timer callbacks yet".to_string());
        } else if is_marker {
            // ngx.exit() and friends end a timer's coroutine.
            return Ok(());
        } else {
            tokio::task::yield_now().await;
        }
    }
}
