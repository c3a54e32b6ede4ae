//! A worker: one OS thread with a single-threaded tokio runtime, its own Lua VM
//! and its own SO_REUSEPORT listener (thread-per-core, no locks on the request
//! path). The control thread talks to it over `Control` messages: config
//! versions are loaded in two steps (`Prepare` on every worker, then `Commit`
//! or `Abort`) so a snapshot that fails to load anywhere is applied nowhere.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;
use crate::lua::vm::{LoadedConfig, Vm};
use crate::shdict::DictStore;

/// The default instruction budget of a handler: about a tenth of a second of
/// interpreted Lua, far beyond what a gateway handler needs.
pub const DEFAULT_INSTRUCTION_BUDGET: u64 = 100_000_000;

/// Server-wide settings, fixed at start.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `client_max_body_size` when a route sets none.
    pub max_body: u64,
    /// Request head limit; larger heads get 431.
    pub max_header: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    pub workers: usize,
    /// Lua instructions one handler may run when its route sets no budget.
    pub instruction_budget: u64,
}

pub enum Control {
    /// Load this config into the VM and hold it, unapplied.
    Prepare {
        config: Arc<Config>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Serve the prepared config from now on.
    Commit,
    /// Forget the prepared config.
    Abort,
}

pub struct Worker {
    pub id: usize,
    pub vm: Vm,
    pub settings: Arc<Settings>,
    current: RefCell<Rc<LoadedConfig>>,
    pending: RefCell<Option<Rc<LoadedConfig>>>,
    serving: std::cell::Cell<bool>,
}

impl Worker {
    pub fn new(id: usize, settings: Arc<Settings>, dicts: Arc<DictStore>) -> crate::Result<Worker> {
        let vm = Vm::new(id, settings.workers, settings.instruction_budget, dicts).map_err(|e| crate::Error::Load {
            route: "-".into(),
            message: format!("creating the Lua VM: {e}"),
        })?;
        let empty = Arc::new(Config::try_from(&moongate_proto::v1::Snapshot::default())?);
        let current = vm.load(empty)?;
        Ok(Worker {
            id,
            vm,
            settings,
            current: RefCell::new(Rc::new(current)),
            pending: RefCell::new(None),
            serving: std::cell::Cell::new(false),
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

    pub fn handle(&self, msg: Control) {
        match msg {
            Control::Prepare { config, reply } => {
                let version = config.version;
                let result = self.vm.load(config).map(|loaded| {
                    *self.pending.borrow_mut() = Some(Rc::new(loaded));
                });
                if let Err(e) = &result {
                    tracing::error!(worker = self.id, version, "config failed to load: {e}");
                }
                let _ = reply.send(result.map_err(|e| e.to_string()));
            }
            Control::Commit => {
                if let Some(loaded) = self.pending.borrow_mut().take() {
                    crate::durable_timer::commit(self.id, self.settings.workers, &loaded.config);
                    self.vm.run_init_worker(&loaded);
                    *self.current.borrow_mut() = loaded;
                    self.serving.set(true);
                }
            }
            Control::Abort => {
                self.pending.borrow_mut().take();
            }
        }
    }
}

/// The control thread's handle on all workers.
pub struct Workers {
    senders: Vec<mpsc::UnboundedSender<Control>>,
    shutdown: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    pub fn new(
        senders: Vec<mpsc::UnboundedSender<Control>>,
        shutdown: watch::Sender<bool>,
        threads: Vec<std::thread::JoinHandle<()>>,
    ) -> Self {
        Workers {
            senders,
            shutdown,
            threads,
        }
    }

    /// Loads `config` into every worker's VM, then switches all of them, or none.
    pub async fn apply(&self, config: Arc<Config>) -> crate::Result<()> {
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
        for (id, rx) in replies.into_iter().enumerate() {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(message)) => failure = failure.or(Some(crate::Error::Rejected(message))),
                Err(_) => failure = failure.or(Some(crate::Error::WorkerGone(id))),
            }
        }
        let msg = || {
            if failure.is_some() {
                Control::Abort
            } else {
                Control::Commit
            }
        };
        for tx in &self.senders {
            let _ = tx.send(msg());
        }
        failure.map_or(Ok(()), Err)
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

/// Loads `config` into a throwaway VM, as `--check` does: bytecode, `init`
/// chunks and shared dict declarations are all exercised.
pub fn check_loads(config: Arc<Config>) -> crate::Result<()> {
    let vm =
        Vm::new(0, 1, DEFAULT_INSTRUCTION_BUDGET, Arc::new(DictStore::default())).map_err(|e| crate::Error::Load {
            route: "-".into(),
            message: format!("creating the Lua VM: {e}"),
        })?;
    vm.load(config).map(|_| ())
}
