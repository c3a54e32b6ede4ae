//! Durable timers, beyond OpenResty:
//! `moongate.timer.at_durable(delay, "module.function", args...)`.
//!
//! In: calls from route code, and the timers earlier processes stored. Out:
//! the callback `require(module)[function](false, args...)` run once at its
//! fire time in its own coroutine (it may `ngx.sleep`), in the env of its
//! route in the config being served then; and the timer's record, stored in
//! the durable dicts' redb file (`shdict::durable`, table `moongate.timers`)
//! from creation until the callback finished.
//!
//! The callback is named by reference, never stored as a function: a stored
//! closure could not bring its upvalues back after a restart, and naming a
//! module function means the code that runs is the code of the route's
//! config being served at fire time. Arguments are plain data (`codec`).
//!
//! **Crash guarantee.** Creation and completion are both write-behind, in
//! the dicts' group commits, and each takes a durable sequence number
//! (`shdict::seq`; `moongate.durable.last_seq()` right after `at_durable`).
//! A timer is stored exactly when a completed commit covers its creation's
//! number (the committed watermark reached it; `moongate.durable.sync()`
//! waits for that); a crash before that loses it. Its deletion is queued
//! when the callback finishes (success or error), so it fires again after a
//! crash only if that crash came before a commit covered the deletion, or
//! while the callback ran. Otherwise each stored timer fires exactly once. A graceful
//! shutdown never runs durable timers prematurely: pending ones stay stored
//! (the final commit flushes queued changes) and fire after the next start.
//!
//! **Where they run.** A timer created by a worker fires on that worker. At
//! the first commit of a config each worker re-arms its share of the stored
//! timers — those whose id hashes (FNV-1a) to its index — past fire times
//! firing at once. A timer whose route, module or function is gone at fire
//! time, or whose record does not decode, is dropped: logged, counted
//! (`moongate_durable_timers_dropped_total`) and deleted.
//!
//! Without a data dir (or with the file unavailable) timers work the same in
//! memory only, with one warning per process.
//!
//! **Where the state lives.** A worker's durable timers — the store they
//! are persisted in, the routes of the config being prepared and of the one
//! being served, whether the stored timers were re-armed, how many are
//! pending — are one [`DurableTimers`], created by the worker when it starts
//! and owned by it. Nothing here is ambient: the glue hands it on
//! explicitly. `Worker::new` creates it; each tenant VM keeps an `Rc` of it
//! from its creation, and `Vm::load_route` calls [`DurableTimers::install`]
//! per route env (whose `at_durable` keeps a `Weak` of it: the state holds
//! the VM, so a strong reference would be a cycle); the worker calls
//! [`DurableTimers::commit`] and [`DurableTimers::abort`] as configs are
//! committed and aborted; each armed timer's task holds an `Rc` until it
//! fires. All of it stays on the worker's thread (`Rc`, not `Send`), as the
//! VMs do. Only this module touches its fields; it imports nothing of the
//! worker or of `lua::vm`.

pub mod codec;
#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::rc::Rc;

use mlua::{Function, Lua, MultiValue, Table, Value};

use crate::config::{Config, Route};
use crate::lua::api::timer::Run;
use crate::lua::args::{NO_VALUE, bad_argument, bad_type};
use crate::lua::budget::{Account, HookHandle, Limits, Running};
use crate::sched::Sched;
use crate::shdict::DictStore;
use codec::Record;

/// Durable timers waiting on one worker beyond which `at_durable` refuses.
pub const MAX_PENDING: usize = 4096;

/// The longest delay honoured, as for `ngx.timer.at`.
const MAX_DELAY_SECS: f64 = 1e9;

const API: &str = "at_durable";

/// A route's env as loaded into its tenant's VM.
#[derive(Clone)]
struct RouteEnv {
    /// The tenant VM, its yield marker and hook.
    lua: Lua,
    marker: Table,
    hook: HookHandle,
    key: Rc<str>,
    limits: Limits,
    /// The sandbox's own `require` (taken at install: a route may replace its
    /// global `require`, not this one).
    require: Function,
    modules: Vec<String>,
}

/// The routes of one config version, by route id (`namespace/name`).
struct Routes {
    config: Arc<Config>,
    routes: HashMap<String, RouteEnv>,
}

/// One worker's durable timers (see the module doc for who holds it).
pub struct DurableTimers {
    /// The worker's index and the worker count: which stored timers are its.
    worker_id: usize,
    workers: usize,
    /// Where the worker's timers are stored.
    dicts: Arc<DictStore>,
    /// The worker's scheduler, which callbacks run on.
    sched: Rc<Sched>,
    /// Routes of the config being loaded (`Prepare`), not yet serving.
    prepared: RefCell<Option<Routes>>,
    /// Routes of the config being served: where timers fire.
    current: RefCell<Option<Routes>>,
    /// Whether the timers stored by earlier processes were re-armed.
    rearmed: Cell<bool>,
    /// Timers waiting to fire.
    pending: Cell<usize>,
}

impl DurableTimers {
    /// Glue, in `Worker::new`: the state of worker `worker_id` (of
    /// `workers`), whose timers are persisted in `dicts` and run on `sched`.
    pub fn new(worker_id: usize, workers: usize, dicts: Arc<DictStore>, sched: Rc<Sched>) -> DurableTimers {
        DurableTimers {
            worker_id,
            workers,
            dicts,
            sched,
            prepared: RefCell::new(None),
            current: RefCell::new(None),
            rearmed: Cell::new(false),
            pending: Cell::new(0),
        }
    }

    /// Glue, in `Vm::load_route` per route, after its env is built: sets
    /// `moongate.timer.at_durable` in `env` and records the env so timers of this
    /// route fire in it once `config` is committed.
    pub fn install(
        self: &Rc<Self>,
        lua: &Lua,
        marker: &Table,
        env: &Table,
        route: &Route,
        config: &Arc<Config>,
        limits: Limits,
    ) -> mlua::Result<()> {
        let require: Function = env.raw_get("require")?;
        let modules: Vec<String> = route.modules.iter().map(|(name, _)| name.clone()).collect();
        let namespace = route.namespace.clone();
        let name = route
            .id
            .strip_prefix(&format!("{namespace}/"))
            .unwrap_or(&route.id)
            .to_string();
        let names = modules.clone();
        // Weak: this state holds the VM (`RouteEnv`), which holds the function.
        let timers = Rc::downgrade(self);
        let create = lua.create_function(move |_, args: MultiValue| match timers.upgrade() {
            Some(timers) => timers.at_durable(&namespace, &name, &names, args),
            None => Ok((None, Some("durable timers are not available here".into()))),
        })?;
        // The Lua wrapper passes `require` in: a Rust closure holding a Lua value
        // that (through the env) holds the closure would be a cycle the GC cannot
        // see, leaking every config's env.
        let wrapper: Function = lua
            .load("local create, require = ...\nreturn function(...) return create(require, ...) end")
            .set_name("=moongate.timer")
            .call((create, require.clone()))?;
        let timer = lua.create_table()?;
        timer.set("at_durable", wrapper)?;
        let moongate = lua.create_table()?;
        moongate.set("timer", timer)?;
        env.raw_set("moongate", moongate)?;
        {
            let mut p = self.prepared.borrow_mut();
            if !p.as_ref().is_some_and(|r| Arc::ptr_eq(&r.config, config)) {
                *p = Some(Routes {
                    config: config.clone(),
                    routes: HashMap::new(),
                });
            }
            if let Some(r) = p.as_mut() {
                r.routes.insert(
                    route.id.clone(),
                    RouteEnv {
                        lua: lua.clone(),
                        marker: marker.clone(),
                        hook: HookHandle::of(lua),
                        key: Rc::from(route.id.as_str()),
                        limits,
                        require,
                        modules,
                    },
                );
            }
        }
        Ok(())
    }

    /// Glue, in `Worker::handle(Commit)` once `config` serves: timers fire in its
    /// routes from now on (the prepared routes it kept). The first call on a
    /// worker also re-arms its share of the timers stored by earlier processes.
    pub fn commit(self: &Rc<Self>, config: &Arc<Config>) {
        let prepared = self.prepared.borrow_mut().take();
        let mut routes = Routes {
            config: config.clone(),
            routes: HashMap::new(),
        };
        if let Some(mut prepared) = prepared {
            for route in &config.routes {
                if let Some(env) = prepared.routes.remove(&route.id) {
                    routes.routes.insert(route.id.clone(), env);
                }
            }
        }
        *self.current.borrow_mut() = Some(routes);
        if !self.rearmed.replace(true) {
            self.rearm();
        }
    }

    /// Glue, in `Worker::handle(Abort)`: forgets the prepared routes.
    pub fn abort(&self) {
        self.prepared.borrow_mut().take();
    }

    /// Durable timers pending (not yet firing) on this worker.
    pub fn pending(&self) -> usize {
        self.pending.get()
    }

    fn rearm(self: &Rc<Self>) {
        let (worker_id, workers, dicts) = (self.worker_id, self.workers, &self.dicts);
        let rows = dicts.take_restored_timers(|id| owner(id, workers) == worker_id);
        let mut armed = 0usize;
        for (id, bytes) in rows {
            let Ok(id) = String::from_utf8(id) else {
                // Never written by us; cannot be deleted through the &str API either.
                tracing::error!(
                    worker = worker_id,
                    "ignoring a stored durable timer with a non-UTF-8 id"
                );
                crate::metrics::durable_timer_dropped();
                continue;
            };
            match codec::decode(&bytes) {
                Ok(rec) => {
                    self.schedule(id, rec);
                    armed += 1;
                }
                Err(e) => {
                    tracing::error!(worker = worker_id, timer = %id, error = %e,
                        "dropping a durable timer whose record does not decode");
                    crate::metrics::durable_timer_dropped();
                    dicts.delete_timer(&id);
                }
            }
        }
        if armed > 0 {
            tracing::info!(worker = worker_id, timers = armed, "re-armed durable timers");
        }
    }

    /// `moongate.timer.at_durable(require, delay, "module.function", args...)`
    /// (the wrapper put `require` first).
    fn at_durable(
        self: &Rc<Self>,
        namespace: &str,
        route: &str,
        modules: &[String],
        args: MultiValue,
    ) -> mlua::Result<(Option<String>, Option<String>)> {
        let mut args = args.into_iter();
        let Some(Value::Function(require)) = args.next() else {
            return Err(mlua::Error::runtime("moongate.timer: internal error (no require)"));
        };
        if crate::context::vm_phase() == Some(crate::context::VmPhase::Init) {
            // A config being prepared may never serve; and every worker runs init.
            return Err(mlua::Error::runtime("API disabled in the context of init_by_lua*"));
        }
        let delay = match args.next() {
            Some(Value::Integer(i)) => i as f64,
            Some(Value::Number(n)) => n,
            other => {
                let got = other.as_ref().map_or(NO_VALUE, Value::type_name);
                return Err(mlua::Error::runtime(bad_type(1, API, "number", got)));
            }
        };
        if delay.is_nan() || delay < 0.0 {
            return Err(mlua::Error::runtime(bad_argument(1, API, "delay must be >= 0")));
        }
        let callback = match args.next() {
            Some(Value::String(s)) => s.to_str()?.to_string(),
            other => {
                let got = other.as_ref().map_or(NO_VALUE, Value::type_name);
                return Err(mlua::Error::runtime(bad_type(2, API, "string", got)));
            }
        };
        check_callback(&require, modules, &callback)?;
        let extra: Vec<Value> = args.collect();
        let stored =
            codec::args_from_lua(&extra).map_err(|(i, why)| mlua::Error::runtime(bad_argument(i + 3, API, &why)))?;
        if crate::context::exiting() {
            return Ok((None, Some("process exiting".into())));
        }
        if self.pending() >= MAX_PENDING {
            return Ok((None, Some("too many pending durable timers".into())));
        }
        let rec = Record {
            namespace: namespace.to_string(),
            route: route.to_string(),
            callback,
            fire_at_ms: unix_ms().saturating_add((delay.min(MAX_DELAY_SECS) * 1000.0) as u64),
            args: stored,
        };
        let id = new_id();
        if !self.dicts.put_timer(&id, codec::encode(&rec)) {
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "durable timers kept in memory only: no usable data dir; they will not survive a restart"
                );
            }
        }
        self.schedule(id.clone(), rec);
        Ok((Some(id), None))
    }

    /// Waits for the fire time on this worker, then fires. On shutdown the wait
    /// is simply abandoned: the timer stays stored for the next start.
    fn schedule(self: &Rc<Self>, id: String, rec: Record) {
        self.pending.set(self.pending.get() + 1);
        let timers = self.clone();
        tokio::task::spawn_local(async move {
            let wait = rec.fire_at_ms.saturating_sub(unix_ms());
            if wait == 0 {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            timers.pending.set(timers.pending.get().saturating_sub(1));
            if crate::context::exiting() {
                return;
            }
            timers.fire(&id, &rec).await;
        });
    }

    /// Runs timer `id` now, then logs, counts and queues its deletion, whatever
    /// the outcome: a callback that failed once would fail again.
    async fn fire(&self, id: &str, rec: &Record) -> Outcome {
        let outcome = self.run(rec).await;
        let route = rec.route_id();
        match &outcome {
            Outcome::Completed => crate::metrics::durable_timer_fired(),
            Outcome::Failed(e) => {
                crate::metrics::durable_timer_fired();
                tracing::error!(route = %route, timer = %id, callback = %rec.callback, "durable timer callback failed: {e}");
            }
            Outcome::Dropped(why) => {
                crate::metrics::durable_timer_dropped();
                tracing::warn!(route = %route, timer = %id, callback = %rec.callback, "durable timer dropped: {why}");
            }
        }
        self.dicts.delete_timer(id);
        outcome
    }

    async fn run(&self, rec: &Record) -> Outcome {
        let route_id = rec.route_id();
        let env = self
            .current
            .borrow()
            .as_ref()
            .and_then(|c| c.routes.get(&route_id).cloned());
        let Some(env) = env else {
            return Outcome::Dropped(format!("route {route_id} is not in the config being served"));
        };
        let Some((module, function)) = split_callback(&rec.callback) else {
            return Outcome::Dropped(format!("malformed callback \"{}\"", rec.callback));
        };
        if !env.modules.iter().any(|m| m == module) {
            return Outcome::Dropped(format!("route {route_id} has no module '{module}'"));
        }
        let account = Account::new(env.key.clone(), env.limits, env.limits, usize::MAX);
        let loaded = crate::context::with_vm_phase(crate::context::VmPhase::Timer, || {
            let _running = Running::enter(&account, env.hook);
            env.require.call::<Value>(module)
        });
        let exported = match loaded {
            Ok(v) => v,
            Err(e) => {
                crate::metrics::timer_callback_error();
                return Outcome::Failed(crate::lua::error_message(&e));
            }
        };
        let callback = match exported {
            Value::Table(t) => t.get::<Value>(function).ok(),
            _ => None,
        };
        let Some(Value::Function(callback)) = callback else {
            return Outcome::Dropped(format!("module '{module}' has no function '{function}'"));
        };
        let mut args = MultiValue::new();
        args.push_back(Value::Boolean(false));
        for a in &rec.args {
            match codec::to_lua(&env.lua, a) {
                Ok(v) => args.push_back(v),
                Err(e) => {
                    crate::metrics::timer_callback_error();
                    return Outcome::Failed(format!("cannot build the arguments: {e}"));
                }
            }
        }
        let run = Run {
            lua: env.lua.clone(),
            marker: env.marker.clone(),
            hook: env.hook,
            route: env.key.clone(),
            limits: env.limits,
            max_string: usize::MAX,
            sched: self.sched.clone(),
        };
        match crate::lua::api::timer::drive(&run, &callback, args).await {
            Ok(()) => Outcome::Completed,
            Err(e) => Outcome::Failed(e),
        }
    }
}

/// The worker that re-arms the stored timer `id`: stable across restarts
/// with the same worker count.
pub fn owner(id: &[u8], workers: usize) -> usize {
    let hash = id.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % workers.max(1) as u64) as usize
}

/// How a firing ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The callback ran to its end.
    Completed,
    /// The callback (or loading its module) raised this error.
    Failed(String),
    /// Not run, for this reason.
    Dropped(String),
}

/// Raises unless `callback` is `"module.function"` naming a function of one
/// of the route's modules (loading the module if it was not yet).
fn check_callback(require: &Function, modules: &[String], callback: &str) -> mlua::Result<()> {
    let Some((module, function)) = split_callback(callback) else {
        let why = format!("\"module.function\" expected, got \"{callback}\"");
        return Err(mlua::Error::runtime(bad_argument(2, API, &why)));
    };
    if !modules.iter().any(|m| m == module) {
        let why = format!("no module '{module}' in this LuaRoute");
        return Err(mlua::Error::runtime(bad_argument(2, API, &why)));
    }
    let exported: Value = require.call(module)?;
    let found = match exported {
        Value::Table(t) => matches!(t.get::<Value>(function)?, Value::Function(_)),
        _ => false,
    };
    if !found {
        let why = format!("module '{module}' has no function '{function}'");
        return Err(mlua::Error::runtime(bad_argument(2, API, &why)));
    }
    Ok(())
}

/// `"a.b.run"` → `("a.b", "run")`: module names may contain dots.
pub fn split_callback(callback: &str) -> Option<(&str, &str)> {
    let (module, function) = callback.rsplit_once('.')?;
    (!module.is_empty() && !function.is_empty()).then_some((module, function))
}

/// Unique across workers and restarts: time, process and a counter.
fn new_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:x}-{:x}-{:x}",
        unix_ms(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
