//! Shared dicts (`lua_shared_dict` / `ngx.shared.DICT`), in memory.
//!
//! In: keys (byte strings), values, expiry times and flags from the Lua
//! binding (`lua::api::shared`) running on any worker thread. Out: the values
//! and the exact lua-nginx-module results (errors, `forcible`).
//!
//! A [`Dict`] is shared by all workers as `Arc<Dict>`; one `Mutex` guards its
//! entries, and every operation takes it exactly once. The [`DictStore`] owns
//! the dicts by (namespace, name) so they survive config reloads.
//!
//! Memory is accounted like nginx's slab allocator (see `entry_cost`), so a
//! dict declared with the same size holds about as much as in OpenResty and
//! fills up in the same way: writes evict least recently used entries and
//! report `forcible`; the `safe_*` variants fail with "no memory" instead.
//!
//! Dicts declared `Durable` are also written behind to redb (see `durable`
//! for the file and the commit rounds, and `seq` for the sequence numbers
//! and the committed watermark that state what a crash can lose); memory
//! dicts never touch the disk.

mod durable;
#[cfg(test)]
mod durable_tests;
mod entries;
mod expiry;
mod list;
mod record;
#[cfg(feature = "fuzzing")]
pub use record::check_roundtrip as fuzz_record_roundtrip;
pub mod seq;
#[cfg(test)]
mod seq_tests;
mod store;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub use durable::{DEFAULT_COMMIT_WINDOW, FILE_NAME as DURABLE_FILE_NAME};
pub use seq::{Sequencer, SyncError, SyncTicket};
pub use store::{DictLimits, DictStore};

use crate::redb_file::HeldElsewhere;

use entries::{Entries, Found, Stored};

/// Longest key lua-nginx-module accepts.
pub const MAX_KEY_LEN: usize = 65535;

/// nginx's page size: the slab unit for large values and for `free_space`.
pub const PAGE_SIZE: u64 = 4096;

/// Bytes nginx spends on one entry besides key and value on 64-bit: the
/// rbtree node up to `color` (32) plus `ngx_http_lua_shdict_node_t` up to
/// `data` (36).
pub const ENTRY_OVERHEAD: u64 = 68;

/// The list head (`ngx_queue_t`) a list entry stores after its key.
const LIST_HEAD: u64 = 16;

/// Bytes per list node besides the value: `ngx_queue_t` + length + type.
pub const LIST_NODE_OVERHEAD: u64 = 21;

/// A scalar value as stored and returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Number(f64),
    Str(Vec<u8>),
}

/// A value borrowed from the dict while its lock is held (`Dict::get_with`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Bool(bool),
    Number(f64),
    Str(&'a [u8]),
}

impl Value {
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Bool(b) => ValueRef::Bool(*b),
            Value::Number(n) => ValueRef::Number(*n),
            Value::Str(s) => ValueRef::Str(s),
        }
    }
}

impl ValueRef<'_> {
    pub fn to_value(self) -> Value {
        match self {
            ValueRef::Bool(b) => Value::Bool(b),
            ValueRef::Number(n) => Value::Number(n),
            ValueRef::Str(s) => Value::Str(s.to_vec()),
        }
    }
}

/// A list element: lists hold only strings and numbers.
#[derive(Debug, Clone, PartialEq)]
pub enum ListItem {
    Number(f64),
    Str(Vec<u8>),
}

/// A value read from the dict with its user flags; `stale` is true when it
/// had expired (only `get_stale` returns those).
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched<T> {
    pub value: T,
    pub flags: u32,
    pub stale: bool,
}

/// Result of a write that may evict: `forcible` is reported on success and
/// on failure alike, as lua-nginx-module does.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome<T> {
    pub result: Result<T, DictError>,
    pub forcible: bool,
}

impl<T> WriteOutcome<T> {
    fn ok(value: T, forcible: bool) -> Self {
        WriteOutcome {
            result: Ok(value),
            forcible,
        }
    }

    fn err(error: DictError) -> Self {
        WriteOutcome {
            result: Err(error),
            forcible: false,
        }
    }
}

/// The store variants of `set`; the `Safe*` ones never evict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Set,
    SafeSet,
    Add,
    SafeAdd,
    Replace,
}

impl StoreOp {
    fn may_evict(self) -> bool {
        !matches!(self, StoreOp::SafeSet | StoreOp::SafeAdd)
    }
}

/// Errors; the messages are lua-nginx-module's, which Lua code compares.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DictError {
    #[error("empty key")]
    EmptyKey,
    #[error("key too long")]
    KeyTooLong,
    #[error("exists")]
    Exists,
    #[error("not found")]
    NotFound,
    #[error("not a number")]
    NotANumber,
    #[error("value is a list")]
    ValueIsList,
    #[error("value not a list")]
    ValueNotList,
    #[error("no memory")]
    NoMemory,
    #[error("attempt to add or replace nil values")]
    NilValue,
    #[error(
        "shared dict \"{name}\" of namespace \"{namespace}\" already exists with {existing} bytes, \
         cannot declare it with {requested} bytes"
    )]
    CapacityMismatch {
        namespace: String,
        name: String,
        existing: u64,
        requested: u64,
    },
    #[error(
        "shared dict \"{name}\" of namespace \"{namespace}\" already exists as {existing}, \
         cannot redeclare it as {requested} before a restart"
    )]
    PersistenceMismatch {
        namespace: String,
        name: String,
        existing: &'static str,
        requested: &'static str,
    },
    #[error("shared dict \"{name}\" of namespace \"{namespace}\" is refused: {requested} bytes, but {why}")]
    OverLimit {
        namespace: String,
        name: String,
        requested: u64,
        why: String,
    },
    /// The durable store is open in another process (another dataplane).
    #[error(transparent)]
    StoreHeldElsewhere(#[from] HeldElsewhere),
}

/// One shared dict. All methods lock once; none panics on any input.
#[derive(Debug)]
pub struct Dict {
    name: String,
    /// Changes only in `resize`, which nothing serving sees.
    capacity: AtomicU64,
    clock: fn() -> u64,
    entries: Mutex<Entries>,
    /// Numbers the changes of a durable dict; None for memory dicts.
    seq: Option<Arc<Sequencer>>,
}

impl Dict {
    /// A dict of `capacity` bytes as declared (`lua_shared_dict NAME SIZE`).
    pub fn new(name: impl Into<String>, capacity: u64) -> Dict {
        Dict::with_clock(name, capacity, unix_ms)
    }

    /// As `new`, reading the time (Unix ms) from `clock`; for tests.
    pub fn with_clock(name: impl Into<String>, capacity: u64, clock: fn() -> u64) -> Dict {
        Dict {
            name: name.into(),
            capacity: AtomicU64::new(capacity),
            clock,
            entries: Mutex::new(Entries::new(usable_bytes(capacity))),
            seq: None,
        }
    }

    /// A dict whose changes are journaled for the durable store and
    /// numbered by `seq`.
    fn durable(name: impl Into<String>, capacity: u64, seq: Arc<Sequencer>) -> Dict {
        let mut entries = Entries::new(usable_bytes(capacity));
        entries.enable_journal();
        Dict {
            name: name.into(),
            capacity: AtomicU64::new(capacity),
            clock: unix_ms,
            entries: Mutex::new(entries),
            seq: Some(seq),
        }
    }

    /// A wait for the commit of every change made so far (this caller's
    /// last one included); None for a dict that is not persisted.
    pub fn sync_ticket(&self) -> Option<SyncTicket> {
        self.seq.as_ref().map(|seq| seq.ticket())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The declared size in bytes (`capacity()`).
    pub fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }

    /// Gives the dict another capacity. Only for a durable dict declared
    /// anew after the version that declared it never served (so no served
    /// code holds it): shrinking evicts the least recently used entries that
    /// no longer fit, as restoring into a smaller dict does, and they are
    /// deleted from disk with the next commit.
    fn resize(&self, capacity: u64) {
        self.capacity.store(capacity, Ordering::Relaxed);
        // Quiet, as restoring: an eviction by config is nobody's write.
        self.locked_quiet(|e, _| e.resize(usable_bytes(capacity)));
    }

    /// Free bytes in whole pages, like nginx's count of free slab pages.
    pub fn free_space(&self) -> u64 {
        self.locked(|e, _| e.free_bytes() / PAGE_SIZE * PAGE_SIZE)
    }

    /// The single entry point to the entries: takes the lock and the time.
    /// Every operation, reads included (they reorder the LRU list and drop
    /// expired entries), runs through here. Durable dicts journal their
    /// changed keys inside `Entries` (the only code that changes slots), so
    /// the write-behind costs the request path a set insert under this lock.
    /// An operation that journaled a change takes its sequence number here,
    /// before the lock is released (the invariant `seq` relies on).
    fn locked<R>(&self, f: impl FnOnce(&mut Entries, u64) -> R) -> R {
        let now = (self.clock)();
        // A panic while locked cannot leave the entries half-updated in a way
        // that breaks memory safety; keep serving rather than poisoning.
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let out = f(&mut entries, now);
        if let Some(seq) = &self.seq
            && entries.take_changed()
        {
            seq.assign();
        }
        out
    }

    /// As `locked`, for the durable store's own bookkeeping (restore, the
    /// commit thread): what it journals is nobody's write and gets no number.
    fn locked_quiet<R>(&self, f: impl FnOnce(&mut Entries, u64) -> R) -> R {
        let now = (self.clock)();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let out = f(&mut entries, now);
        entries.take_changed();
        out
    }

    /// `get`: the live value, or None when absent or expired.
    pub fn get(&self, key: &[u8]) -> Result<Option<Fetched<Value>>, DictError> {
        self.get_with(key, false, |v| v.to_value())
    }

    /// `get_stale`: like `get` but also returns expired values not yet evicted.
    pub fn get_stale(&self, key: &[u8]) -> Result<Option<Fetched<Value>>, DictError> {
        self.get_with(key, true, |v| v.to_value())
    }

    /// `get`/`get_stale` without copying: `f` sees the value under the lock,
    /// so it must not call back into this dict.
    pub fn get_with<R>(
        &self,
        key: &[u8],
        allow_stale: bool,
        f: impl FnOnce(ValueRef<'_>) -> R,
    ) -> Result<Option<Fetched<R>>, DictError> {
        check_key(key)?;
        self.locked(|e, now| {
            if !allow_stale {
                e.expire_tail(false, now);
            }
            let (idx, stale) = match e.lookup(key, now) {
                Found::Missing => return Ok(None),
                Found::Live(idx) => (idx, false),
                Found::Expired(idx) if allow_stale => (idx, true),
                Found::Expired(_) => return Ok(None),
            };
            let Some(slot) = e.slot(idx) else { return Ok(None) };
            match &slot.value {
                Stored::List(_) => Err(DictError::ValueIsList),
                Stored::Scalar(v) => Ok(Some(Fetched {
                    value: f(v.as_ref()),
                    flags: slot.flags,
                    stale,
                })),
            }
        })
    }

    pub fn set(&self, key: &[u8], value: Value, exptime_ms: u64, flags: u32) -> WriteOutcome<()> {
        self.store(StoreOp::Set, key, Some(value), exptime_ms, flags)
    }

    pub fn safe_set(&self, key: &[u8], value: Value, exptime_ms: u64, flags: u32) -> WriteOutcome<()> {
        self.store(StoreOp::SafeSet, key, Some(value), exptime_ms, flags)
    }

    pub fn add(&self, key: &[u8], value: Value, exptime_ms: u64, flags: u32) -> WriteOutcome<()> {
        self.store(StoreOp::Add, key, Some(value), exptime_ms, flags)
    }

    pub fn safe_add(&self, key: &[u8], value: Value, exptime_ms: u64, flags: u32) -> WriteOutcome<()> {
        self.store(StoreOp::SafeAdd, key, Some(value), exptime_ms, flags)
    }

    pub fn replace(&self, key: &[u8], value: Value, exptime_ms: u64, flags: u32) -> WriteOutcome<()> {
        self.store(StoreOp::Replace, key, Some(value), exptime_ms, flags)
    }

    /// `delete` is `set(key, nil)`: succeeds whether or not the key exists.
    pub fn delete(&self, key: &[u8]) -> Result<(), DictError> {
        self.store(StoreOp::Set, key, None, 0, 0).result
    }

    /// All `set` variants (`ngx_http_lua_ffi_shdict_store`). `value: None`
    /// deletes with `Set`/`SafeSet` and is an error for the others.
    /// `exptime_ms` 0 means never expires.
    pub fn store(
        &self,
        op: StoreOp,
        key: &[u8],
        value: Option<Value>,
        exptime_ms: u64,
        flags: u32,
    ) -> WriteOutcome<()> {
        if let Err(e) = check_key(key) {
            return WriteOutcome::err(e);
        }
        if value.is_none() && !matches!(op, StoreOp::Set | StoreOp::SafeSet) {
            return WriteOutcome::err(DictError::NilValue);
        }
        self.locked(|e, now| {
            e.expire_tail(false, now);
            let target = match (op, e.lookup(key, now)) {
                (StoreOp::Replace, Found::Missing | Found::Expired(_)) => {
                    return WriteOutcome::err(DictError::NotFound);
                }
                (StoreOp::Add | StoreOp::SafeAdd, Found::Live(_)) => return WriteOutcome::err(DictError::Exists),
                (_, Found::Missing) => None,
                (_, Found::Live(idx) | Found::Expired(idx)) => Some(idx),
            };
            let Some(value) = value else {
                if let Some(idx) = target {
                    e.remove(idx);
                }
                return WriteOutcome::ok((), false);
            };
            let expires = deadline(now, exptime_ms);
            let cost = entry_cost(key.len(), &value);
            let mut old_key = None;
            if let Some(idx) = target {
                // Same size: update in place, as nginx reuses the node.
                if let Some(slot) = e.slot_mut(idx)
                    && matches!(slot.value, Stored::Scalar(_))
                    && slot.cost == cost
                {
                    slot.value = Stored::Scalar(value);
                    slot.flags = flags;
                    slot.expires = expires;
                    return WriteOutcome::ok((), false);
                }
                // Otherwise nginx frees the old node first, so a failing
                // safe_set leaves the key deleted; so do we.
                old_key = e.remove(idx).map(|slot| slot.key);
            }
            let (fits, forcible) = e.make_room(cost, op.may_evict(), now);
            if !fits {
                return WriteOutcome {
                    result: Err(DictError::NoMemory),
                    forcible,
                };
            }
            let key = old_key.unwrap_or_else(|| Arc::from(key));
            e.insert(key, Stored::Scalar(value), flags, expires, cost);
            WriteOutcome::ok((), forcible)
        })
    }

    /// `incr`: adds `delta` to a live number. A missing or expired key is an
    /// error without `init`; with it the key becomes `init + delta`, expiring
    /// after `init_ttl_ms` (0 = never). `forcible` is only meaningful with
    /// `init` (the binding returns it only then).
    pub fn incr(&self, key: &[u8], delta: f64, init: Option<f64>, init_ttl_ms: u64) -> WriteOutcome<f64> {
        if let Err(e) = check_key(key) {
            return WriteOutcome::err(e);
        }
        self.locked(|e, now| {
            e.expire_tail(false, now);
            let found = e.lookup(key, now);
            if let Found::Live(idx) = found {
                // A live key keeps its expiry and flags.
                return match e.slot_mut(idx).map(|slot| &mut slot.value) {
                    Some(Stored::Scalar(Value::Number(n))) => {
                        *n += delta;
                        WriteOutcome::ok(*n, false)
                    }
                    _ => WriteOutcome::err(DictError::NotANumber),
                };
            }
            let Some(init) = init else {
                return WriteOutcome::err(DictError::NotFound);
            };
            let num = delta + init;
            let value = Value::Number(num);
            let cost = entry_cost(key.len(), &value);
            let expires = deadline(now, init_ttl_ms);
            let mut old_key = None;
            if let Found::Expired(idx) = found {
                if let Some(slot) = e.slot_mut(idx)
                    && matches!(slot.value, Stored::Scalar(_))
                    && slot.cost == cost
                {
                    slot.value = Stored::Scalar(value);
                    slot.flags = 0;
                    slot.expires = expires;
                    return WriteOutcome::ok(num, false);
                }
                old_key = e.remove(idx).map(|slot| slot.key);
            }
            let (fits, forcible) = e.make_room(cost, true, now);
            if !fits {
                return WriteOutcome {
                    result: Err(DictError::NoMemory),
                    forcible,
                };
            }
            let key = old_key.unwrap_or_else(|| Arc::from(key));
            e.insert(key, Stored::Scalar(value), 0, expires, cost);
            WriteOutcome::ok(num, forcible)
        })
    }
}

/// Unix time in milliseconds (0 if the clock is before 1970).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The expiry time for a relative `exptime_ms`; 0 (never) when it is 0.
fn deadline(now: u64, exptime_ms: u64) -> u64 {
    if exptime_ms == 0 {
        0
    } else {
        now.saturating_add(exptime_ms)
    }
}

fn check_key(key: &[u8]) -> Result<(), DictError> {
    if key.is_empty() {
        Err(DictError::EmptyKey)
    } else if key.len() > MAX_KEY_LEN {
        Err(DictError::KeyTooLong)
    } else {
        Ok(())
    }
}

/// What nginx's slab allocator hands out for a request of `n` bytes: a
/// power-of-two chunk (at least 8) up to half a page, whole pages above.
fn slab_size(n: u64) -> u64 {
    if n <= PAGE_SIZE / 2 {
        n.max(8).next_power_of_two()
    } else {
        n.div_ceil(PAGE_SIZE) * PAGE_SIZE
    }
}

/// Bytes of a dict available to entries: nginx loses about three pages to
/// the slab pool header, the dict's own tree and its name, plus page
/// descriptors and partly used pages (approximated as 1/64 of the size).
/// Calibrated so the conformance cases fill up where OpenResty does.
fn usable_bytes(capacity: u64) -> u64 {
    capacity.saturating_sub(3 * PAGE_SIZE).saturating_sub(capacity / 64)
}

fn scalar_len(value: &Value) -> u64 {
    match value {
        Value::Bool(_) => 1,
        Value::Number(_) => 8,
        Value::Str(s) => s.len() as u64,
    }
}

fn entry_cost(key_len: usize, value: &Value) -> u64 {
    slab_size(ENTRY_OVERHEAD + key_len as u64 + scalar_len(value))
}

fn list_entry_cost(key_len: usize) -> u64 {
    slab_size((ENTRY_OVERHEAD + key_len as u64).next_multiple_of(8) + LIST_HEAD)
}

fn list_node_cost(item: &ListItem) -> u64 {
    let len = match item {
        ListItem::Number(_) => 8,
        ListItem::Str(s) => s.len() as u64,
    };
    slab_size(LIST_NODE_OVERHEAD + len)
}
