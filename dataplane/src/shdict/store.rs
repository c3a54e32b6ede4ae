//! The process's shared dicts by (namespace, name), and the durable store
//! behind the durable ones.
//!
//! In: declarations from config loads (`declare`), durable timer changes;
//! out: `Arc<Dict>`s that survive reloads, the sequencer of durable writes,
//! and refusals (capacity or persistence changed, store held elsewhere).
//!
//! **Declarations are staged.** A config version declares its dicts while
//! it is prepared on every worker, before anyone knows whether it will
//! serve. A new dict is staged until the control thread settles the version
//! (`commit_declared`, `abort_declared`): only the dicts of routes that serve
//! become permanent; those of an aborted version, or of a route that failed
//! to load, are forgotten, so a later version may declare them again with
//! another capacity or persistence. Within one version a staged dict is
//! binding like a permanent one (two routes of a namespace declaring one
//! dict with different sizes still conflict). A forgotten memory dict is
//! dropped with what it held; a forgotten durable dict stays attached to
//! its table (`DurableStore::attach`), so declaring it again gets its data
//! back, at the new capacity.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::durable::DurableStore;
use super::{Dict, DictError, Sequencer};
use crate::redb_file::HeldElsewhere;

/// All dicts of the process by (namespace, name). Dicts are created on first
/// declaration and kept across config reloads, as nginx keeps shared memory
/// zones across reloads.
#[derive(Debug, Default)]
pub struct DictStore {
    dicts: Mutex<HashMap<(String, String), Declared>>,
    /// Where durable dicts are persisted; None: they stay in memory.
    pub(super) durable: Option<DurableStore>,
    limits: DictLimits,
}

/// The operator's ceilings on what routes may declare.
#[derive(Clone, Copy, Debug)]
pub struct DictLimits {
    /// The largest capacity of one dict.
    pub max_capacity: u64,
    /// The most capacity one namespace may declare over all its dicts.
    pub max_namespace_total: u64,
}

impl Default for DictLimits {
    fn default() -> Self {
        DictLimits {
            max_capacity: u64::MAX,
            max_namespace_total: u64::MAX,
        }
    }
}

#[derive(Debug)]
struct Declared {
    dict: Arc<Dict>,
    /// As declared, whether or not its store could be used.
    durable: bool,
    /// Declared by a version not settled yet (see the module header).
    staged: bool,
}

impl DictStore {
    /// A store without persistence: durable dicts stay in memory (warned).
    pub fn new() -> DictStore {
        DictStore::default()
    }

    /// A store persisting durable dicts in `dir` (created when the first
    /// durable dict is declared), committing every `commit_window`
    /// ([`super::DEFAULT_COMMIT_WINDOW`] is 10 ms). Never fails: a bad or unusable
    /// file is handled (logged, counted, moved aside) when first opened.
    pub fn with_data_dir(dir: &Path, commit_window: Duration) -> DictStore {
        DictStore {
            dicts: Mutex::default(),
            durable: Some(DurableStore::new(dir, commit_window)),
            limits: DictLimits::default(),
        }
    }

    /// This store, refusing declarations over `limits`.
    pub fn with_limits(mut self, limits: DictLimits) -> DictStore {
        self.limits = limits;
        self
    }

    /// The memory dict (namespace, name); see `declare`.
    pub fn dict(&self, namespace: &str, name: &str, capacity: u64) -> Result<Arc<Dict>, DictError> {
        self.declare(namespace, name, capacity, false)
    }

    /// The dict (namespace, name), created with `capacity` bytes if new, and
    /// restored from disk if `durable` (which reads the disk: call it when
    /// loading config, not per request). A redeclaration with another
    /// capacity or persistence is an error naming both (nginx refuses to
    /// resize a zone on reload, too). A new dict is staged until the next
    /// `commit_declared` or `abort_declared`.
    pub fn declare(&self, namespace: &str, name: &str, capacity: u64, durable: bool) -> Result<Arc<Dict>, DictError> {
        let mut dicts = self.dicts.lock().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_string(), name.to_string());
        if let Some(found) = dicts.get(&key) {
            let dict = &found.dict;
            if dict.capacity() != capacity {
                return Err(DictError::CapacityMismatch {
                    namespace: key.0,
                    name: key.1,
                    existing: dict.capacity(),
                    requested: capacity,
                });
            }
            if found.durable != durable {
                let word = |d: bool| if d { "Durable" } else { "Memory" };
                return Err(DictError::PersistenceMismatch {
                    namespace: key.0,
                    name: key.1,
                    existing: word(found.durable),
                    requested: word(durable),
                });
            }
            return Ok(dict.clone());
        }
        if capacity > self.limits.max_capacity {
            return Err(DictError::OverLimit {
                namespace: key.0,
                name: key.1,
                requested: capacity,
                why: format!(
                    "the largest dict allowed is {} bytes (--max-shared-dict-size)",
                    self.limits.max_capacity
                ),
            });
        }
        let declared: u64 = dicts
            .iter()
            .filter(|((ns, _), _)| *ns == key.0)
            .map(|(_, d)| d.dict.capacity())
            .sum();
        if declared.saturating_add(capacity) > self.limits.max_namespace_total {
            return Err(DictError::OverLimit {
                namespace: key.0,
                name: key.1,
                requested: capacity,
                why: format!(
                    "the namespace already declares {declared} bytes of {} allowed (--max-namespace-shared-dicts)",
                    self.limits.max_namespace_total
                ),
            });
        }
        let dict = match (&self.durable, durable) {
            (Some(store), true) => store.attach(namespace, name, capacity)?,
            (None, true) => {
                tracing::warn!(
                    namespace,
                    dict = name,
                    "durable shared dict kept in memory only: no data dir configured"
                );
                Arc::new(Dict::new(format!("{namespace}/{name}"), capacity))
            }
            (_, false) => Arc::new(Dict::new(format!("{namespace}/{name}"), capacity)),
        };
        dicts.insert(
            key,
            Declared {
                dict: dict.clone(),
                durable,
                staged: true,
            },
        );
        Ok(dict)
    }

    /// Settles the version being committed: of the dicts staged since the
    /// last settlement, those in `served` (namespace, name) — the dicts of
    /// the routes that serve from now on — become permanent; the others
    /// were declared by routes that failed to load and are forgotten.
    pub fn commit_declared<'a>(&self, served: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let served: HashSet<(&str, &str)> = served.into_iter().collect();
        self.settle(|(namespace, name)| served.contains(&(namespace.as_str(), name.as_str())));
    }

    /// Settles an aborted version: every dict staged since the last
    /// settlement is forgotten.
    pub fn abort_declared(&self) {
        self.settle(|_| false);
    }

    fn settle(&self, keep: impl Fn(&(String, String)) -> bool) {
        let mut dicts = self.dicts.lock().unwrap_or_else(|e| e.into_inner());
        dicts.retain(|key, declared| {
            if !declared.staged {
                return true;
            }
            if keep(key) {
                declared.staged = false;
                return true;
            }
            tracing::debug!(namespace = %key.0, dict = %key.1,
                "forgetting a shared dict declared by a version that does not serve");
            false
        });
    }

    /// Opens the durable store now if its file exists (call at start): an
    /// error when another process (dataplane) holds it. Without it, the file
    /// opens at the first durable declaration.
    pub fn open_existing(&self) -> Result<(), HeldElsewhere> {
        self.durable.as_ref().map_or(Ok(()), |s| s.open_existing())
    }

    /// The sequence numbers and committed watermark of durable writes; None
    /// without a data dir.
    pub fn sequencer(&self) -> Option<&Arc<Sequencer>> {
        self.durable.as_ref().map(|s| s.sequencer())
    }

    /// The dict (namespace, name) if it was ever declared.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Dict>> {
        let dicts = self.dicts.lock().unwrap_or_else(|e| e.into_inner());
        dicts
            .get(&(namespace.to_string(), name.to_string()))
            .map(|d| d.dict.clone())
    }

    /// Queues durable timer `id` with its `record` (opaque bytes) for the
    /// next group commit, in the same file and transaction as the durable
    /// dicts. False when it cannot be persisted (no data dir, file
    /// unavailable or closed): the caller keeps the timer in memory only.
    pub fn put_timer(&self, id: &str, record: Vec<u8>) -> bool {
        self.durable.as_ref().is_some_and(|s| s.queue_timer(id, Some(record)))
    }

    /// Queues the deletion of durable timer `id` (write-behind, as `put_timer`).
    pub fn delete_timer(&self, id: &str) {
        if let Some(store) = &self.durable {
            store.queue_timer(id, None);
        }
    }

    /// Takes the (id, record) rows of the durable timers earlier processes
    /// left in the file, for which `keep(id)` is true; each row is handed
    /// out once per process. Empty without a data dir or a file.
    pub fn take_restored_timers(&self, keep: impl FnMut(&[u8]) -> bool) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.durable
            .as_ref()
            .map_or_else(Vec::new, |s| s.take_restored_timers(keep))
    }

    /// For graceful shutdown: commits every pending durable change, stops
    /// the commit thread and closes the file (blocking for one commit).
    /// Durable dicts keep working in memory afterwards, unpersisted.
    /// Idempotent; dropping the store does the same.
    pub fn flush_and_close(&self) {
        if let Some(store) = &self.durable {
            store.close();
        }
    }
}

impl Drop for DictStore {
    fn drop(&mut self) {
        self.flush_and_close();
    }
}
