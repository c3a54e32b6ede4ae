//! A worker: one OS thread with a single-threaded tokio runtime, one Lua VM
//! per tenant (namespace) and its own SO_REUSEPORT listener
//! (thread-per-core, no locks on the request path). The control thread talks
//! to it over `Control` messages: config versions are loaded in two steps
//! (`Prepare` on every worker, then `Commit` or `Abort`) so every worker
//! serves the same routes.
//!
//! A route that fails to load on any worker (its `init` throws, a dict it
//! declares is refused) keeps serving its previous version on every worker,
//! or is left out if it had none, and is reported; the other routes are
//! applied. Only a failure that cannot be pinned on a route aborts the
//! version.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{Config, LocationRef};
use crate::durable_timer::DurableTimers;
use crate::error::RouteLoadError;
use crate::lua::api::timer::Timers;
use crate::lua::budget::Limits;
use crate::lua::vm::{LoadedConfig, LoadedRoute, Vm, VmSettings};
use crate::proxy::egress::EgressPolicy;
use crate::proxy::endpoints::EndpointTable;
use crate::proxy::pool::Pool;
use crate::proxy::state::UpstreamState;
use crate::proxy::upstream::{Target, Upstream};
use crate::sched::Sched;
use crate::shdict::DictStore;

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;

/// The default instruction budget of a handler: about a tenth of a second of
/// interpreted Lua, far beyond what a gateway handler needs.
pub const DEFAULT_INSTRUCTION_BUDGET: u64 = 100_000_000;
/// Instructions between two preemptions of code that can yield: about a
/// tenth of a millisecond.
pub const DEFAULT_SLICE: u64 = 100_000;
/// The longest stretch of code that cannot yield (a C callback, a filter):
/// about two milliseconds, which bounds how long one request can hold a
/// worker that others are waiting on.
pub const DEFAULT_UNPREEMPTIBLE: u64 = 1_000_000;
/// Bytes one tenant VM may hold on one worker.
pub const DEFAULT_MEMORY_LIMIT: usize = 128 << 20;

/// Server-wide settings, fixed at start. The limits are ceilings: a route
/// can lower them, never raise them.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `client_max_body_size` ceiling and default.
    pub max_body: u64,
    /// Request head limit; larger heads get 431.
    pub max_header: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    pub workers: usize,
    /// CPU bounds of route code; `budget` is the ceiling of a route's
    /// `limits.instructionBudget`.
    pub cpu: Limits,
    /// Bytes one tenant VM may hold.
    pub memory_limit: usize,
    /// Where proxying and cosockets may connect.
    pub egress: Arc<EgressPolicy>,
    /// Directories whose unix sockets cosockets may connect to.
    pub unix_allow: Vec<std::path::PathBuf>,
    /// Open cosockets one tenant VM may hold.
    pub cosocket_max_open: usize,
}

impl Settings {
    /// The CPU bounds of a route that asks for `budget` (0: the default).
    pub fn route_limits(&self, budget: u64) -> Limits {
        let budget = if budget == 0 {
            self.cpu.budget
        } else {
            budget.min(self.cpu.budget)
        };
        Limits {
            budget,
            slice: self.cpu.slice.min(budget),
            unpreemptible: self.cpu.unpreemptible.min(budget),
        }
    }

    /// The body limit of a route that asks for `max_body` (0: the default).
    pub fn route_max_body(&self, max_body: u64) -> u64 {
        if max_body == 0 {
            self.max_body
        } else {
            max_body.min(self.max_body)
        }
    }
}

/// Where a committed route comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// The prepared version's route at this index.
    Prepared(usize),
    /// The serving version's route at this index (the new one failed).
    Serving(usize),
}

/// What a worker reports for a prepared version.
pub type Prepared = Result<Vec<(usize, RouteLoadError)>, crate::Error>;

pub enum Control {
    /// Load this config into the VMs and hold it, unapplied; reply with the
    /// routes (by index) that failed to load.
    Prepare {
        config: Arc<Config>,
        reply: oneshot::Sender<Prepared>,
    },
    /// Serve `config` from now on: `sources[i]` says where the loaded form of
    /// `config.routes[i]` is.
    Commit {
        config: Arc<Config>,
        sources: Arc<Vec<Source>>,
    },
    /// Forget the prepared config.
    Abort,
}

/// What every worker of the process shares.
#[derive(Clone)]
pub struct Shared {
    pub settings: Arc<Settings>,
    pub dicts: Arc<DictStore>,
    pub endpoints: Arc<EndpointTable>,
}

pub struct Worker {
    pub id: usize,
    pub settings: Arc<Settings>,
    pub sched: Rc<Sched>,
    /// This worker's `ngx.timer` state, shared with its VMs.
    pub timers: Rc<Timers>,
    /// This worker's durable timers, shared with its VMs.
    durable_timers: Rc<DurableTimers>,
    dicts: Arc<DictStore>,
    /// The Service endpoints, shared by all workers.
    pub endpoints: Arc<EndpointTable>,
    /// Upstream connections kept alive.
    pub pool: Rc<Pool>,
    /// Per-upstream state, by the identity of the location's `Upstream`.
    upstreams: RefCell<HashMap<usize, Rc<UpstreamState>>>,
    tenants: RefCell<HashMap<Rc<str>, Rc<Vm>>>,
    current: RefCell<Rc<LoadedConfig>>,
    pending: RefCell<Option<Vec<Option<Rc<LoadedRoute>>>>>,
    serving: Cell<bool>,
}

impl Worker {
    pub fn new(id: usize, shared: Shared) -> crate::Result<Worker> {
        let Shared {
            settings,
            dicts,
            endpoints,
        } = shared;
        let empty = Arc::new(Config::try_from(&moongate_proto::v1::Snapshot::default())?);
        let sched = Rc::new(Sched::default());
        let timers = Rc::new(Timers::new(sched.clone()));
        let durable_timers = Rc::new(DurableTimers::new(id, settings.workers, dicts.clone(), sched.clone()));
        Ok(Worker {
            id,
            settings,
            sched,
            timers,
            durable_timers,
            dicts,
            endpoints,
            pool: Rc::default(),
            upstreams: RefCell::default(),
            tenants: RefCell::new(HashMap::new()),
            current: RefCell::new(Rc::new(LoadedConfig {
                config: empty,
                routes: Vec::new(),
            })),
            pending: RefCell::new(None),
            serving: Cell::new(false),
        })
    }

    /// Whether a config has been committed, so requests can be served.
    pub fn serving(&self) -> bool {
        self.serving.get()
    }

    /// The config new requests use; a request keeps the one it started with.
    pub fn config(&self) -> Rc<LoadedConfig> {
        self.current.borrow().clone()
    }

    /// The VM of `namespace`, created at its first route.
    fn tenant(&self, namespace: &str) -> mlua::Result<Rc<Vm>> {
        if let Some(vm) = self.tenants.borrow().get(namespace) {
            return Ok(vm.clone());
        }
        let settings = VmSettings {
            worker_id: self.id,
            worker_count: self.settings.workers,
            memory_limit: self.settings.memory_limit,
            sockets: crate::lua::api::socket::SocketPolicy {
                egress: self.settings.egress.clone(),
                unix_allow: self.settings.unix_allow.clone(),
                max_open: self.settings.cosocket_max_open,
            },
        };
        let vm = Rc::new(Vm::new(
            namespace,
            &settings,
            &self.dicts,
            &self.timers,
            &self.durable_timers,
        )?);
        self.tenants.borrow_mut().insert(vm.tenant.clone(), vm.clone());
        crate::metrics::tenant_vms(self.id, self.tenants.borrow().len());
        Ok(vm)
    }

    async fn prepare(&self, config: &Arc<Config>) -> Vec<(usize, RouteLoadError)> {
        let mut loaded = Vec::with_capacity(config.routes.len());
        let mut failed = Vec::new();
        for (i, route) in config.routes.iter().enumerate() {
            let result = match self.tenant(&route.namespace) {
                Ok(vm) => {
                    vm.load_route(
                        route,
                        config,
                        &self.dicts,
                        self.settings.route_limits(route.instruction_budget),
                        self.settings.route_max_body(route.max_body),
                    )
                    .await
                }
                Err(e) => Err(RouteLoadError {
                    route: route.key.clone(),
                    message: format!("creating the Lua VM of namespace {}: {e}", route.namespace),
                }),
            };
            match result {
                Ok(r) => loaded.push(Some(Rc::new(r))),
                Err(e) => {
                    tracing::debug!(worker = self.id, version = config.version, "{e}");
                    loaded.push(None);
                    failed.push((i, e));
                }
            }
        }
        *self.pending.borrow_mut() = Some(loaded);
        failed
    }

    /// Handles one control message; awaits `init`/`init_worker` code, which
    /// shares the worker with the requests in flight.
    pub async fn handle(&self, msg: Control) {
        match msg {
            Control::Prepare { config, reply } => {
                let _ = reply.send(Ok(self.prepare(&config).await));
            }
            Control::Commit { config, sources } => {
                let Some(mut pending) = self.pending.borrow_mut().take() else {
                    return;
                };
                let serving = self.config();
                let routes: Vec<Rc<LoadedRoute>> = sources
                    .iter()
                    .filter_map(|source| match *source {
                        Source::Prepared(i) => pending.get_mut(i)?.take(),
                        Source::Serving(i) => serving.routes.get(i).cloned(),
                    })
                    .collect();
                if routes.len() != config.routes.len() {
                    // A route failed here but not elsewhere and the control
                    // thread did not leave it out: never serve a half config.
                    tracing::error!(
                        worker = self.id,
                        "internal error: committed routes differ from the prepared ones"
                    );
                    return;
                }
                let loaded = LoadedConfig { config, routes };
                self.durable_timers.commit(&loaded.config);
                let loaded = Rc::new(loaded);
                *self.current.borrow_mut() = loaded.clone();
                for ((route, lr), source) in loaded.config.routes.iter().zip(&loaded.routes).zip(sources.iter()) {
                    if matches!(source, Source::Prepared(_)) {
                        lr.run_init_worker(route).await;
                    }
                }
                self.serving.set(true);
                self.drop_idle_tenants();
                self.sync_upstreams();
            }
            Control::Abort => {
                self.pending.borrow_mut().take();
                self.durable_timers.abort();
            }
        }
    }

    /// This worker's state for the upstream of location `at`.
    pub fn upstream_state(&self, config: &Config, at: LocationRef, up: &Arc<Upstream>) -> Rc<UpstreamState> {
        let id = Arc::as_ptr(up) as usize;
        if let Some(s) = self.upstreams.borrow().get(&id) {
            return s.clone();
        }
        let route = &config.routes[at.route];
        let label = match &up.target {
            Target::Service(k) => format!("{}/{}:{}", k.namespace, k.service, k.port),
            Target::Servers(s) => {
                let first = s.first().map(|s| format!("{}:{}", s.host, s.port)).unwrap_or_default();
                if s.len() > 1 {
                    format!("{first}+{}", s.len() - 1)
                } else {
                    first
                }
            }
        };
        let state = Rc::new(UpstreamState::new(up.clone(), &route.id, label));
        crate::proxy::state::spawn_checker(&state, self.endpoints.clone(), self.settings.egress.clone());
        self.upstreams.borrow_mut().insert(id, state.clone());
        state
    }

    /// Makes the upstream state of the served config's locations (so their
    /// active health checks start with the config, not at the first
    /// request) and forgets that of locations it no longer has.
    fn sync_upstreams(&self) {
        let current = self.current.borrow().clone();
        let config = &current.config;
        let mut live = std::collections::HashSet::new();
        for (i, route) in config.routes.iter().enumerate() {
            for (j, loc) in route.locations.iter().enumerate() {
                if let Some(up) = &loc.upstream {
                    live.insert(Arc::as_ptr(up) as usize);
                    self.upstream_state(config, LocationRef { route: i, location: j }, up);
                }
            }
        }
        self.upstreams.borrow_mut().retain(|id, _| live.contains(id));
    }

    /// Forgets the VMs of namespaces the served config no longer has; a VM
    /// lives on while requests or timers still hold it.
    fn drop_idle_tenants(&self) {
        let current = self.current.borrow();
        let mut tenants = self.tenants.borrow_mut();
        tenants.retain(|ns, _| current.config.routes.iter().any(|r| r.namespace.as_str() == &**ns));
        crate::metrics::tenant_vms(self.id, tenants.len());
    }
}

/// What applying a version did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Routes whose new version failed to load: why, and whether their
    /// previous version keeps serving (else they are left out).
    pub failed: BTreeMap<moongate_route::RouteKey, Failed>,
}

impl Applied {
    /// Logs and counts the routes that failed to load.
    pub fn log(&self) {
        crate::metrics::routes_failed(self.failed.len());
        for (route, failed) in &self.failed {
            tracing::error!(route = %route, "route failed to load, the other routes serve: {failed}");
        }
    }
}

#[derive(Debug, Clone)]
pub struct Failed {
    pub message: String,
    pub kept_previous: bool,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.kept_previous {
            "its previous version keeps serving"
        } else {
            "it is not served"
        };
        write!(f, "{}; {what}", self.message)
    }
}

/// The control thread's handle on all workers.
pub struct Workers {
    senders: Vec<mpsc::UnboundedSender<Control>>,
    shutdown: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// What every worker serves.
    serving: std::sync::Mutex<Option<Arc<Config>>>,
    /// The workers' dicts, whose declarations each version settles.
    dicts: Arc<DictStore>,
    /// The Service endpoints the workers proxy to; changed apart from the routes.
    endpoints: Arc<EndpointTable>,
}

impl Workers {
    pub fn new(
        senders: Vec<mpsc::UnboundedSender<Control>>,
        shutdown: watch::Sender<bool>,
        threads: Vec<std::thread::JoinHandle<()>>,
        dicts: Arc<DictStore>,
        endpoints: Arc<EndpointTable>,
    ) -> Self {
        Workers {
            senders,
            shutdown,
            threads,
            serving: std::sync::Mutex::new(None),
            dicts,
            endpoints,
        }
    }

    /// The Service endpoints every worker proxies to.
    pub fn endpoints(&self) -> &Arc<EndpointTable> {
        &self.endpoints
    }

    /// Loads `config` into every worker, then switches all of them to it;
    /// a route that failed to load on any worker keeps its serving version
    /// (or is left out). The shared dicts the version declared are kept only
    /// for the routes that serve (`DictStore::commit_declared`).
    pub async fn apply(&self, config: Arc<Config>) -> crate::Result<Applied> {
        let mut replies = Vec::with_capacity(self.senders.len());
        for (id, tx) in self.senders.iter().enumerate() {
            let (reply, rx) = oneshot::channel();
            tx.send(Control::Prepare {
                config: config.clone(),
                reply,
            })
            .map_err(|_| crate::Error::WorkerGone(id))?;
            replies.push(rx);
        }
        let mut failure = None;
        let mut failed: BTreeMap<usize, RouteLoadError> = BTreeMap::new();
        for (id, rx) in replies.into_iter().enumerate() {
            match rx.await {
                Ok(Ok(routes)) => {
                    for (i, e) in routes {
                        failed.entry(i).or_insert(e);
                    }
                }
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(_) => failure = failure.or(Some(crate::Error::WorkerGone(id))),
            }
        }
        if let Some(e) = failure {
            // Every worker has replied: the version's declarations are all made.
            self.dicts.abort_declared();
            for tx in &self.senders {
                let _ = tx.send(Control::Abort);
            }
            return Err(e);
        }
        let mut serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        let mut sources = Vec::with_capacity(config.routes.len());
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut report = Applied::default();
        for (i, route) in config.routes.iter().enumerate() {
            let Some(e) = failed.remove(&i) else {
                sources.push(Source::Prepared(i));
                routes.push(route.clone());
                continue;
            };
            let previous = serving.as_ref().and_then(|s| {
                s.routes
                    .iter()
                    .position(|r| r.key == route.key)
                    .map(|j| (j, s.routes[j].clone()))
            });
            if let Some((j, old)) = &previous {
                sources.push(Source::Serving(*j));
                routes.push(old.clone());
            }
            report.failed.insert(
                e.route,
                Failed {
                    message: e.message,
                    kept_previous: previous.is_some(),
                },
            );
        }
        let committed = if report.failed.is_empty() {
            config
        } else {
            Arc::new(config.with_routes(routes))
        };
        self.dicts.commit_declared(
            committed
                .routes
                .iter()
                .flat_map(|r| r.shared_dicts.iter().map(|d| (r.namespace.as_str(), d.name.as_str()))),
        );
        let sources = Arc::new(sources);
        for tx in &self.senders {
            let _ = tx.send(Control::Commit {
                config: committed.clone(),
                sources: sources.clone(),
            });
        }
        *serving = Some(committed);
        Ok(report)
    }

    pub fn len(&self) -> usize {
        self.senders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Stops accepting, lets in-flight requests finish (bounded), joins the threads.
    pub fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Loads `config` into throwaway VMs, as `--check` does: bytecode, `init`
/// chunks and shared dict declarations are all exercised. Fails naming
/// every route that does not load.
pub fn check_loads(config: Arc<Config>, settings: Arc<Settings>, dicts: Arc<DictStore>) -> crate::Result<()> {
    let worker = Worker::new(
        0,
        Shared {
            settings,
            dicts,
            endpoints: Arc::default(),
        },
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| crate::Error::Io {
            path: "runtime".into(),
            source,
        })?;
    let local = tokio::task::LocalSet::new();
    let failed: Vec<RouteLoadError> = local.block_on(&runtime, async {
        // Preempted init code waits for the background lane.
        tokio::task::spawn_local(worker.sched.clone().dispatch());
        worker.prepare(&config).await.into_iter().map(|(_, e)| e).collect()
    });
    if failed.is_empty() {
        Ok(())
    } else {
        Err(crate::Error::RoutesFailed(failed))
    }
}
