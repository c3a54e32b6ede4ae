//! Tenant VMs: one LuaJIT VM per namespace per worker thread.
//!
//! A namespace is a tenant: the routes of one namespace share a VM (and its
//! memory limit), each with its own sandboxed environment, `ngx` copy and
//! `require` space; routes of different namespaces never share a VM, so
//! nothing mutable of one tenant — the collector, the string metatable,
//! pooled coroutines, the PRNG, memory — is ever seen by another.
//! Measured cost of a VM (README, "Behaviour worth knowing"): about 0.5 MiB
//! and 1-2 ms to create.
//!
//! Each config version is loaded route by route (`load_route`); requests
//! keep the `Rc<LoadedConfig>` they started with, so a reload never changes
//! a request in flight. A route that fails to load (its `init` throws, its
//! dict is refused) is left out of the version; the others serve.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use mlua::chunk::ChunkMode;
use mlua::thread::ThreadStatus;
use mlua::{Function, Lua, LuaOptions, StdLib, Table, Thread, Value};

use super::api;
use super::api::timer::Timers;
use super::budget::{Account, HookHandle, Limits, Running};
use crate::config::{Chunk, Config, Phase, Route};
use crate::context::{self, VmPhase};
use crate::durable_timer::DurableTimers;
use crate::error::RouteLoadError;
use crate::sched::Sched;
use crate::shdict::DictStore;

const PRELUDE: &str = include_str!("prelude.lua");
const SANDBOX: &str = include_str!("sandbox.lua");

/// Finished coroutines kept for reuse; more are dropped.
const THREAD_POOL_MAX: usize = 256;

/// What every VM of a worker is created with.
#[derive(Clone, Debug)]
pub struct VmSettings {
    pub worker_id: usize,
    pub worker_count: usize,
    /// Bytes one tenant VM may hold.
    pub memory_limit: usize,
    /// Where cosockets may connect.
    pub sockets: api::socket::SocketPolicy,
}

/// One tenant's VM on one worker.
pub struct Vm {
    /// The namespace whose routes run here.
    pub tenant: Rc<str>,
    lua: Lua,
    hook: HookHandle,
    memory_limit: usize,
    yield_marker: Table,
    base_ngx: Table,
    new_env: Function,
    load_module: Function,
    /// `socket_api(route_id)`: a route's `ngx.socket`, whose sockets pool
    /// connections under that route only (prelude.lua).
    socket_api: Function,
    ngx_metatable: Table,
    threads: RefCell<Vec<Thread>>,
    /// `moongate.timer.cancel`, shared by the tenant's routes.
    cancel_timer: Function,
    /// The functions of `moongate.durable`.
    durable_api: api::durable::Api,
    /// The worker's scheduler, which preempted `init` code waits on.
    sched: Rc<Sched>,
    /// The worker's durable timers, which each route env is installed in.
    durable_timers: Rc<DurableTimers>,
}

/// A config version loaded into a worker: one entry per route of `config`.
pub struct LoadedConfig {
    pub config: Arc<Config>,
    /// Shared with the next version when a route's new version fails to load.
    pub routes: Vec<Rc<LoadedRoute>>,
}

/// A route loaded into its tenant's VM.
pub struct LoadedRoute {
    pub vm: Rc<Vm>,
    /// `namespace/name`, the key of the route's CPU state (`crate::sched`).
    pub key: Rc<str>,
    /// Per location, indexed by `Phase as usize`.
    pub handlers: Vec<[Option<Function>; 7]>,
    init_worker: Option<Function>,
    /// The route's CPU bounds: its own, capped by the operator's.
    pub limits: Limits,
    /// `client_max_body_size`: the route's, capped by the operator's.
    pub max_body: u64,
}

impl LoadedConfig {
    pub fn handler(&self, at: crate::config::LocationRef, phase: Phase) -> Option<&Function> {
        // `LocationRef::NONE` (no location matched) has no handlers.
        self.routes.get(at.route)?.handlers.get(at.location)?[phase as usize].as_ref()
    }
}

impl Vm {
    /// A VM of the worker whose `timers` and `durable_timers` these are: its
    /// timer functions keep them, on the worker's thread, for the VM's life.
    pub fn new(
        tenant: &str,
        settings: &VmSettings,
        dicts: &Arc<DictStore>,
        timers: &Rc<Timers>,
        durable_timers: &Rc<DurableTimers>,
    ) -> mlua::Result<Vm> {
        // No `jit`, `io`, `debug`, `ffi` or `package` at all; `os` loses
        // everything but its clocks in the sandbox.
        let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::BIT | StdLib::OS;
        let lua = Lua::new_with(libs, LuaOptions::new())?;
        Vm::with_lua(lua, tenant, settings, dicts, timers, durable_timers)
    }

    /// Sets up a tenant VM on a fresh `lua` (tests pass one with more
    /// libraries loaded, to inspect the sandbox from outside).
    pub(crate) fn with_lua(
        lua: Lua,
        tenant: &str,
        settings: &VmSettings,
        dicts: &Arc<DictStore>,
        timers: &Rc<Timers>,
        durable_timers: &Rc<DurableTimers>,
    ) -> mlua::Result<Vm> {
        // Lua patterns run in C where the count hook cannot see them: ours
        // count their work (before the sandbox copies the string table).
        super::pattern::install(&lua)?;
        let yield_marker = lua.create_table()?;
        let sockets = api::socket::Sockets::new(settings.sockets.clone());
        let (base_ngx, raw) = api::build(
            &lua,
            &yield_marker,
            settings.worker_id,
            settings.worker_count,
            timers,
            &sockets,
        )?;
        raw.set("libs", super::lib::build(&lua)?)?;
        // `debug.traceback` is the one piece of the debug library a route gets (lua-resty-mlcache
        // hands it to `xpcall`): it reads the running stack and changes nothing. As in Lua, a
        // message that is not a string (nor nil) comes back untouched; the default level 1 is
        // the caller of `traceback`.
        raw.set(
            "traceback",
            lua.create_function(|lua, (msg, level): (mlua::Value, Option<i64>)| {
                let text = match &msg {
                    mlua::Value::Nil => None,
                    mlua::Value::String(s) => Some(s.to_string_lossy()),
                    mlua::Value::Integer(_) | mlua::Value::Number(_) => {
                        lua.coerce_string(msg.clone())?.map(|s| s.to_string_lossy())
                    }
                    _ => return Ok(msg),
                };
                let level = usize::try_from(level.unwrap_or(1)).unwrap_or(0);
                Ok(mlua::Value::String(lua.traceback(text.as_deref(), level)?))
            })?,
        )?;
        lua.load(PRELUDE)
            .set_name("=moongate.prelude")
            .call::<()>((base_ngx.clone(), raw.clone()))?;
        let socket_api: Function = raw.get("socket_api")?;
        let new_env: Function = lua
            .load(SANDBOX)
            .set_name("=moongate.sandbox")
            .call((lua.globals(), raw))?;
        let load_module = lua.create_function(|lua, (bytecode, env): (mlua::LuaString, Table)| {
            lua.load(&*bytecode.as_bytes())
                .set_mode(ChunkMode::Binary)
                .set_environment(env)
                .into_function()
        })?;
        let ngx_metatable = ngx_metatable(&lua)?;
        let cancel_timer = api::timer::cancel_function(&lua, timers)?;
        super::budget::install(&lua)?;
        super::memory::install(&lua, settings.memory_limit)?;
        let hook = HookHandle::of(&lua);
        let durable_api = api::durable::Api::new(&lua, dicts)?;
        Ok(Vm {
            tenant: Rc::from(tenant),
            lua,
            hook,
            memory_limit: settings.memory_limit,
            yield_marker,
            base_ngx,
            new_env,
            load_module,
            socket_api,
            ngx_metatable,
            threads: RefCell::new(Vec::new()),
            cancel_timer,
            durable_api,
            sched: timers.sched().clone(),
            durable_timers: durable_timers.clone(),
        })
    }

    pub fn lua(&self) -> &Lua {
        &self.lua
    }

    pub fn hook(&self) -> HookHandle {
        self.hook
    }

    pub fn yield_marker(&self) -> &Table {
        &self.yield_marker
    }

    /// A CPU account for code of `route` in this VM, running under `limits`
    /// (`route_limits` unless it is `init`).
    pub fn account(&self, route: &Rc<str>, route_limits: Limits, limits: Limits) -> Rc<Account> {
        Account::new(route.clone(), route_limits, limits, self.memory_limit)
    }

    /// Bytes the VM holds.
    pub fn used_memory(&self) -> usize {
        super::memory::used(&self.lua)
    }

    /// Loads `route` (of `config`) into this VM and runs its `init`, as a
    /// coroutine the count hook preempts like a handler, so a heavy `init`
    /// shares the worker with the requests it is serving meanwhile.
    pub async fn load_route(
        self: &Rc<Self>,
        route: &Route,
        config: &Arc<Config>,
        dicts: &DictStore,
        limits: Limits,
        max_body: u64,
    ) -> Result<LoadedRoute, RouteLoadError> {
        let fail = |message: String| RouteLoadError {
            route: route.key.clone(),
            message,
        };
        let lua_fail = |e: mlua::Error| fail(super::error_summary(&e));
        let ngx = deep_copy(&self.lua, &self.base_ngx, &mut Vec::new()).map_err(lua_fail)?;
        ngx.set_metatable(Some(self.ngx_metatable.clone())).map_err(lua_fail)?;
        let sockets: Table = self.socket_api.call(route.id.as_str()).map_err(lua_fail)?;
        ngx.set("socket", sockets).map_err(lua_fail)?;
        let mut route_dicts = Vec::with_capacity(route.shared_dicts.len());
        for d in &route.shared_dicts {
            let dict = dicts
                .declare(&route.namespace, &d.name, d.capacity, d.durable)
                .map_err(|e| fail(e.to_string()))?;
            route_dicts.push((d.name.clone(), dict));
        }
        ngx.set(
            "shared",
            api::shared::shared_table(&self.lua, &route_dicts).map_err(lua_fail)?,
        )
        .map_err(lua_fail)?;

        let modules = self.lua.create_table().map_err(lua_fail)?;
        for (name, chunk) in &route.modules {
            let code = self.lua.create_string(&chunk.bytecode).map_err(lua_fail)?;
            modules.set(name.as_str(), code).map_err(lua_fail)?;
        }
        let env: Table = self
            .new_env
            .call((ngx, modules, self.load_module.clone()))
            .map_err(lua_fail)?;
        self.durable_timers
            .install(&self.lua, &self.yield_marker, &env, route, config, limits)
            .map_err(lua_fail)?;
        let moongate_timer: Table = env
            .raw_get::<Table>("moongate")
            .and_then(|m| m.get("timer"))
            .map_err(lua_fail)?;
        moongate_timer
            .set("cancel", self.cancel_timer.clone())
            .map_err(lua_fail)?;
        self.durable_api.install(&self.lua, &env).map_err(lua_fail)?;
        let load = |chunk: &Chunk| -> Result<Function, RouteLoadError> {
            self.lua
                .load(&chunk.bytecode[..])
                .set_name(&chunk.name)
                .set_mode(ChunkMode::Binary)
                .set_environment(env.clone())
                .into_function()
                .map_err(|e| fail(format!("{}: {e}", chunk.name)))
        };
        let mut handlers = Vec::with_capacity(route.locations.len());
        for loc in &route.locations {
            let mut fns: [Option<Function>; 7] = Default::default();
            for (slot, chunk) in fns.iter_mut().zip(loc.handlers.iter()) {
                *slot = chunk.as_ref().map(load).transpose()?;
            }
            handlers.push(fns);
        }
        let key: Rc<str> = Rc::from(route.id.as_str());
        let init = route.init.as_ref().map(load).transpose()?;
        let init_worker = route.init_worker.as_ref().map(load).transpose()?;
        if let Some(f) = init {
            let account = self.account(&key, limits, limits);
            self.run_preemptible(VmPhase::Init, &account, &f)
                .await
                .map_err(|e| fail(format!("init: {}", super::error_summary(&e))))?;
        }
        Ok(LoadedRoute {
            vm: self.clone(),
            key,
            handlers,
            init_worker,
            limits,
            max_body,
        })
    }

    /// Runs `f` (an `init` or `init_worker` chunk) to its end in a coroutine
    /// on `account`: the hook preempts it into the worker's background lane;
    /// any other yield is an error, as these phases cannot wait on anything.
    async fn run_preemptible(&self, phase: VmPhase, account: &Rc<Account>, f: &Function) -> mlua::Result<()> {
        let thread = self.lua.create_thread(f.clone())?;
        let sched = &self.sched;
        let mut slice = None;
        loop {
            let resumed = crate::context::with_vm_phase(phase, || {
                let _running = Running::enter(account, self.hook);
                thread.resume::<mlua::MultiValue>(())
            });
            drop(slice.take());
            account.yielded();
            let values = resumed?;
            if thread.status() != ThreadStatus::Resumable {
                return Ok(());
            }
            if !(values.is_empty() && super::budget::preempted(false)) {
                return Err(mlua::Error::runtime(format!("attempt to yield from {}", phase.name())));
            }
            slice = Some(sched.background(account.id()).await);
        }
    }

    /// A coroutine ready to run `f`: recycled when one is free.
    pub fn thread(&self, f: &Function) -> mlua::Result<Thread> {
        if let Some(t) = self.threads.borrow_mut().pop()
            && t.reset(f.clone()).is_ok()
        {
            return Ok(t);
        }
        self.lua.create_thread(f.clone())
    }

    /// Returns a coroutine that finished normally to the pool. Errored or
    /// abandoned (yielded) ones cannot be reset in LuaJIT and are dropped.
    /// Route code cannot resume a pooled entry thread it kept a handle to:
    /// the sandbox's `coroutine.resume` refuses threads it did not create
    /// in the current request.
    pub fn recycle(&self, t: Thread) {
        if t.status() == ThreadStatus::Finished {
            let mut pool = self.threads.borrow_mut();
            if pool.len() < THREAD_POOL_MAX {
                pool.push(t);
            }
        }
    }

    pub fn is_yield_marker(&self, v: &Value) -> bool {
        matches!(v, Value::Table(t) if t.to_pointer() == self.yield_marker.to_pointer())
    }
}

impl LoadedRoute {
    /// Runs the route's `initWorker` chunk after its config was committed,
    /// preemptible as `init` is. An error is logged, as nginx does; the
    /// route still serves.
    pub async fn run_init_worker(&self, route: &Route) {
        let Some(f) = &self.init_worker else { return };
        let account = self.vm.account(&self.key, self.limits, self.limits);
        if let Err(e) = self.vm.run_preemptible(VmPhase::InitWorker, &account, f).await {
            tracing::error!(route = %route.id, "init_worker failed: {}", super::error_message(&e));
        }
    }
}

/// Copies a table and its nested tables, keeping metatables (read past
/// `__metatable`), so each route gets its own `ngx` it can change freely.
/// Every metatable of the base `ngx` is protected by `__metatable`, so the
/// shared ones stay out of routes' reach.
fn deep_copy(lua: &Lua, t: &Table, seen: &mut Vec<(usize, Table)>) -> mlua::Result<Table> {
    let key = t.to_pointer() as usize;
    if let Some((_, copy)) = seen.iter().find(|(p, _)| *p == key) {
        return Ok(copy.clone());
    }
    let copy = lua.create_table()?;
    seen.push((key, copy.clone()));
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair?;
        let v = match v {
            Value::Table(inner) => Value::Table(deep_copy(lua, &inner, seen)?),
            v => v,
        };
        copy.raw_set(k, v)?;
    }
    copy.set_metatable(t.metatable())?;
    Ok(copy)
}

/// The metatable of every route's `ngx`: `ngx.status`, `ngx.ctx` and
/// `ngx.headers_sent` live on the request, not in the table.
fn ngx_metatable(lua: &Lua) -> mlua::Result<Table> {
    // ngx.ctx outside a request (timer callbacks, init_worker): the README
    // allows it there with "the same lifetime of the current Lua handler",
    // so one table per coroutine running the handler, dropped with it.
    let handler_ctx = lua.create_table()?;
    let weak_keys = lua.create_table()?;
    weak_keys.set("__mode", "k")?;
    handler_ctx.set_metatable(Some(weak_keys))?;
    let vm_ctx = move |lua: &Lua| -> mlua::Result<Option<Table>> {
        if !matches!(
            context::vm_phase(),
            Some(context::VmPhase::Timer | context::VmPhase::InitWorker)
        ) {
            return Ok(None);
        }
        let thread = lua.current_thread();
        if let Some(t) = handler_ctx.raw_get::<Option<Table>>(&thread)? {
            return Ok(Some(t));
        }
        let t = lua.create_table()?;
        handler_ctx.raw_set(thread, &t)?;
        Ok(Some(t))
    };
    let mt = lua.create_table()?;
    mt.set(
        "__index",
        lua.create_function(move |lua, (_, key): (Value, Value)| {
            let Value::String(key) = key else { return Ok(Value::Nil) };
            match &*key.as_bytes() {
                b"status" => context::with("ngx.status", |r| Ok(Value::Integer(api::output::get_status(r)))),
                b"headers_sent" => context::with("ngx.headers_sent", |r| Ok(Value::Boolean(r.headers_sent))),
                b"is_subrequest" => context::with("ngx.is_subrequest", |r| Ok(Value::Boolean(r.subrequest_depth > 0))),
                b"ctx" => {
                    if let Some(t) = vm_ctx(lua)? {
                        return Ok(Value::Table(t));
                    }
                    let req = context::current("ngx.ctx")?;
                    let existing = req.borrow().ctx.clone();
                    match existing {
                        Some(t) => Ok(Value::Table(t)),
                        None => {
                            let t = lua.create_table()?;
                            req.borrow_mut().ctx = Some(t.clone());
                            Ok(Value::Table(t))
                        }
                    }
                }
                _ => Ok(Value::Nil),
            }
        })?,
    )?;
    mt.set(
        "__newindex",
        lua.create_function(|_, (t, key, value): (Table, Value, Value)| {
            if let Value::String(k) = &key {
                match &*k.as_bytes() {
                    b"status" => return context::with("ngx.status", |r| api::output::set_status(r, value)),
                    b"ctx" => {
                        let Value::Table(ctx) = value else {
                            return Err(mlua::Error::runtime("ctx should be a table while getting a nil"));
                        };
                        return context::with("ngx.ctx", |r| {
                            r.ctx = Some(ctx);
                            Ok(())
                        });
                    }
                    _ => {}
                }
            }
            t.raw_set(key, value)
        })?,
    )?;
    mt.set("__metatable", false)?;
    Ok(mt)
}
