//! One LuaJIT VM per worker thread.
//!
//! A `Vm` is created once per worker. Each config version is loaded into it
//! as a `LoadedConfig`: per route a fresh sandboxed environment with its own
//! `ngx` copy and `require` space, and the handler functions from the
//! snapshot's bytecode. Requests keep the `Rc<LoadedConfig>` they started with,
//! so a reload never changes a request in flight.

use std::cell::RefCell;
use std::sync::Arc;

use mlua::chunk::ChunkMode;
use mlua::thread::ThreadStatus;
use mlua::{Function, Lua, LuaOptions, StdLib, Table, Thread, Value};

use super::api;
use crate::config::{Chunk, Config, Phase};
use crate::error::{Error, Result};
use crate::request;
use crate::shdict::DictStore;

const PRELUDE: &str = include_str!("prelude.lua");
const SANDBOX: &str = include_str!("sandbox.lua");

/// Finished coroutines kept for reuse; more are dropped.
const THREAD_POOL_MAX: usize = 256;

pub struct Vm {
    lua: Lua,
    yield_marker: Table,
    base_ngx: Table,
    new_env: Function,
    load_module: Function,
    ngx_metatable: Table,
    threads: RefCell<Vec<Thread>>,
    dicts: Arc<DictStore>,
    /// Instruction budget of `init`, `init_worker` and timer callbacks.
    budget: u64,
    /// `moongate.timer.cancel`, shared by every route.
    cancel_timer: Function,
}

/// A config version loaded into one VM.
pub struct LoadedConfig {
    pub config: Arc<Config>,
    pub routes: Vec<LoadedRoute>,
}

pub struct LoadedRoute {
    /// Per location, indexed by `Phase as usize`.
    pub handlers: Vec<[Option<Function>; 6]>,
    init_worker: Option<Function>,
}

impl LoadedConfig {
    pub fn handler(&self, at: crate::config::LocationRef, phase: Phase) -> Option<&Function> {
        // `LocationRef::NONE` (no location matched) has no handlers.
        self.routes.get(at.route)?.handlers.get(at.location)?[phase as usize].as_ref()
    }
}

impl Vm {
    pub fn new(worker_id: usize, worker_count: usize, budget: u64, dicts: Arc<DictStore>) -> mlua::Result<Vm> {
        let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::BIT | StdLib::OS | StdLib::JIT;
        let lua = Lua::new_with(libs, LuaOptions::new())?;
        super::pattern::install(&lua)?;
        let yield_marker = lua.create_table()?;
        let (base_ngx, raw) = api::build(&lua, &yield_marker, worker_id, worker_count)?;
        let errmsg: Function = raw.get("errmsg")?;
        lua.load(PRELUDE)
            .set_name("=moongate.prelude")
            .call::<()>((base_ngx.clone(), raw))?;
        let new_env: Function =
            lua.load(SANDBOX)
                .set_name("=moongate.sandbox")
                .call((lua.globals(), errmsg, super::budget::EXCEEDED))?;
        let load_module = lua.create_function(|lua, (bytecode, env): (mlua::LuaString, Table)| {
            lua.load(&*bytecode.as_bytes())
                .set_mode(ChunkMode::Binary)
                .set_environment(env)
                .into_function()
        })?;
        let ngx_metatable = ngx_metatable(&lua)?;
        super::budget::install(&lua)?;
        crate::durable_timer::attach(&lua, &yield_marker, &dicts);
        let cancel_timer = api::timer::cancel_function(&lua)?;
        Ok(Vm {
            lua,
            yield_marker,
            base_ngx,
            new_env,
            load_module,
            ngx_metatable,
            threads: RefCell::new(Vec::new()),
            dicts,
            budget,
            cancel_timer,
        })
    }

    pub fn lua(&self) -> &Lua {
        &self.lua
    }

    /// Loads every route of `config` and runs their `init` chunks. Fails without
    /// side effects on the serving config.
    pub fn load(&self, config: Arc<Config>) -> Result<LoadedConfig> {
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let fail = |e: mlua::Error| Error::Load {
                route: route.id.clone(),
                message: e.to_string(),
            };
            let ngx = deep_copy(&self.lua, &self.base_ngx, &mut Vec::new()).map_err(fail)?;
            ngx.set_metatable(Some(self.ngx_metatable.clone())).map_err(fail)?;
            let mut dicts = Vec::with_capacity(route.shared_dicts.len());
            for d in &route.shared_dicts {
                let dict = self
                    .dicts
                    .declare(&route.namespace, &d.name, d.capacity, d.durable)
                    .map_err(|e| Error::Load {
                        route: route.id.clone(),
                        message: e.to_string(),
                    })?;
                dicts.push((d.name.clone(), dict));
            }
            ngx.set("shared", api::shared::shared_table(&self.lua, &dicts).map_err(fail)?)
                .map_err(fail)?;

            let modules = self.lua.create_table().map_err(fail)?;
            for (name, chunk) in &route.modules {
                modules
                    .set(name.as_str(), self.lua.create_string(&chunk.bytecode).map_err(fail)?)
                    .map_err(fail)?;
            }
            let env: Table = self
                .new_env
                .call((ngx, modules, self.load_module.clone()))
                .map_err(fail)?;
            crate::durable_timer::install(&self.lua, &env, route, &config).map_err(fail)?;
            let moongate_timer: Table = env
                .raw_get::<Table>("moongate")
                .and_then(|m| m.get("timer"))
                .map_err(fail)?;
            moongate_timer.set("cancel", self.cancel_timer.clone()).map_err(fail)?;
            let load = |chunk: &Chunk| -> Result<Function> {
                self.lua
                    .load(&chunk.bytecode[..])
                    .set_name(&chunk.name)
                    .set_mode(ChunkMode::Binary)
                    .set_environment(env.clone())
                    .into_function()
                    .map_err(|e| Error::Load {
                        route: route.id.clone(),
                        message: format!("{}: {e}", chunk.name),
                    })
            };
            let mut handlers = Vec::with_capacity(route.locations.len());
            for loc in &route.locations {
                let mut fns: [Option<Function>; 6] = Default::default();
                for (slot, chunk) in fns.iter_mut().zip(loc.handlers.iter()) {
                    *slot = chunk.as_ref().map(load).transpose()?;
                }
                handlers.push(fns);
            }
            if let Some(init) = &route.init {
                let f = load(init)?;
                super::with_vm_phase("init", || {
                    super::budget::with_vm_budget(self.budget, || f.call::<()>(()))
                })
                .map_err(|e| Error::Load {
                    route: route.id.clone(),
                    message: format!("init: {e}"),
                })?;
            }
            let init_worker = route.init_worker.as_ref().map(load).transpose()?;
            routes.push(LoadedRoute { handlers, init_worker });
        }
        Ok(LoadedConfig { config, routes })
    }

    /// Runs the `initWorker` chunks of a config that was just committed. An
    /// error is logged, as nginx does; the config still serves.
    pub fn run_init_worker(&self, loaded: &LoadedConfig) {
        for (route, rt) in loaded.config.routes.iter().zip(&loaded.routes) {
            if let Some(f) = &rt.init_worker
                && let Err(e) = super::with_vm_phase("init_worker", || {
                    super::budget::with_vm_budget(self.budget, || f.call::<()>(()))
                })
            {
                tracing::error!(route = %route.id, "init_worker failed: {e}");
            }
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

/// Copies a table and its nested tables, keeping metatables (read past
/// `__metatable`), so each route gets its own `ngx` it can change freely.
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
    let mt = lua.create_table()?;
    mt.set(
        "__index",
        lua.create_function(|lua, (_, key): (Value, Value)| {
            let Value::String(key) = key else { return Ok(Value::Nil) };
            match &*key.as_bytes() {
                b"status" => request::with("ngx.status", |r| Ok(Value::Integer(api::output::get_status(r)))),
                b"headers_sent" => request::with("ngx.headers_sent", |r| Ok(Value::Boolean(r.headers_sent))),
                b"is_subrequest" => request::with("ngx.is_subrequest", |r| Ok(Value::Boolean(r.subrequest_depth > 0))),
                b"ctx" => {
                    let req = request::current("ngx.ctx")?;
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
                    b"status" => return request::with("ngx.status", |r| api::output::set_status(r, value)),
                    b"ctx" => {
                        let Value::Table(ctx) = value else {
                            return Err(mlua::Error::runtime("ctx should be a table while getting a nil"));
                        };
                        return request::with("ngx.ctx", |r| {
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
