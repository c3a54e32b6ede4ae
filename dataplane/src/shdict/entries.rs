//! The entries of one dict: a hash index over a slab of slots that are linked
//! into one LRU list, plus the byte accounting that decides when the dict is
//! full. In: keys, values and costs from `Dict` (which holds the lock and the
//! clock); out: slot indices, removed slots and eviction results.
//!
//! Invariants:
//! - every `Some` slot is in `map` (under its own key) and in the LRU list
//!   exactly once; `None` slots are in `free` and in neither;
//! - `used` is the sum of `cost` over all live slots;
//! - the LRU list runs from `head` (most recently used) to `tail`;
//! - with a journal (durable dicts only), every key whose stored value, flags
//!   or expiry may have changed since the last `take_dirty` is in it. Keys
//!   are marked by `insert`, `remove`, `slot_mut` and `expire_all`, the only
//!   ways to change what a slot holds; LRU relinking and cost changes are not
//!   persisted and do not mark. Marking also raises the journal's `changed`
//!   flag, which `Dict::locked` takes before releasing the lock to number
//!   the operation (`seq`): an operation that journaled nothing gets no
//!   number.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::{ListItem, Value};

/// End-of-list marker for the LRU links.
const NIL: u32 = u32::MAX;

/// How many rounds of forced eviction one write may do before it reports
/// "no memory", as in lua-nginx-module (each round frees 1 to 3 entries).
const EVICTION_ROUNDS: usize = 30;

/// A stored value: a scalar or a list (lists only come from `lpush`/`rpush`).
#[derive(Debug)]
pub(super) enum Stored {
    Scalar(Value),
    List(VecDeque<ListItem>),
}

#[derive(Debug)]
pub(super) struct Slot {
    pub key: Arc<[u8]>,
    pub value: Stored,
    pub flags: u32,
    /// Unix time in ms after which the entry is expired; 0 = never.
    pub expires: u64,
    /// Bytes charged against the dict for this entry (list nodes included).
    pub cost: u64,
    prev: u32,
    next: u32,
}

/// What a lookup found.
pub(super) enum Found {
    Missing,
    Live(u32),
    Expired(u32),
}

/// Expired for lookups: nginx treats an entry as alive through its expiry ms.
pub(super) fn expired_for_lookup(expires: u64, now: u64) -> bool {
    expires != 0 && expires < now
}

/// Expired for eviction and `flush_expired`/`get_keys`: the expiry ms itself counts.
pub(super) fn expired_for_eviction(expires: u64, now: u64) -> bool {
    expires != 0 && expires <= now
}

#[derive(Debug)]
pub(super) struct Entries {
    map: HashMap<Arc<[u8]>, u32>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    used: u64,
    usable: u64,
    /// Keys changed since the durable store last took them; None for memory
    /// dicts, which then pay nothing for persistence.
    journal: Option<Journal>,
}

/// The changed keys of a durable dict.
#[derive(Debug, Default)]
struct Journal {
    keys: HashSet<Arc<[u8]>>,
    /// A key was marked since the last `take_changed`.
    changed: bool,
}

/// Records `key` as changed; a no-op without a journal.
fn note(journal: &mut Option<Journal>, key: &Arc<[u8]>) {
    if let Some(journal) = journal.as_mut() {
        journal.keys.insert(key.clone());
        journal.changed = true;
    }
}

impl Entries {
    pub fn new(usable: u64) -> Entries {
        Entries {
            map: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            used: 0,
            usable,
            journal: None,
        }
    }

    /// Starts recording changed keys (durable dicts).
    pub fn enable_journal(&mut self) {
        self.journal.get_or_insert_with(Journal::default);
    }

    /// Records `key` as changed; a no-op without a journal.
    pub fn mark_dirty(&mut self, key: &Arc<[u8]>) {
        note(&mut self.journal, key);
    }

    /// Whether a key was marked since the last call (clears the flag).
    pub fn take_changed(&mut self) -> bool {
        self.journal.as_mut().is_some_and(|j| std::mem::take(&mut j.changed))
    }

    /// The keys changed since the last call, leaving the journal empty.
    pub fn take_dirty(&mut self) -> Vec<Arc<[u8]>> {
        match self.journal.as_mut() {
            Some(journal) if !journal.keys.is_empty() => std::mem::take(&mut journal.keys).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// Drops journal entries of keys that are still stored: after a restore
    /// those match the disk, and only the removals need writing.
    pub fn keep_dirty_removals(&mut self) {
        if let Some(journal) = self.journal.as_mut() {
            journal.keys.retain(|key| !self.map.contains_key(key));
        }
    }

    pub fn free_bytes(&self) -> u64 {
        self.usable.saturating_sub(self.used)
    }

    pub fn fits(&self, cost: u64) -> bool {
        cost <= self.free_bytes()
    }

    pub fn slot(&self, idx: u32) -> Option<&Slot> {
        self.slots.get(idx as usize).and_then(Option::as_ref)
    }

    /// A slot to change: marks its key in the journal, since the caller may
    /// change its value, flags or expiry.
    pub fn slot_mut(&mut self, idx: u32) -> Option<&mut Slot> {
        let slot = self.slots.get_mut(idx as usize).and_then(Option::as_mut)?;
        note(&mut self.journal, &slot.key);
        Some(slot)
    }

    /// A slot for relinking only; never marks the journal.
    fn links_mut(&mut self, idx: u32) -> Option<&mut Slot> {
        self.slots.get_mut(idx as usize).and_then(Option::as_mut)
    }

    /// Finds `key` and, like nginx, makes it the most recently used entry
    /// whether or not it has expired.
    pub fn lookup(&mut self, key: &[u8], now: u64) -> Found {
        let Some(&idx) = self.map.get(key) else {
            return Found::Missing;
        };
        self.unlink(idx);
        self.link_front(idx);
        match self.slot(idx) {
            Some(slot) if expired_for_lookup(slot.expires, now) => Found::Expired(idx),
            Some(_) => Found::Live(idx),
            None => Found::Missing,
        }
    }

    /// Finds `key` without touching the LRU order (`ttl`, `expire`).
    pub fn peek(&self, key: &[u8]) -> Option<u32> {
        self.map.get(key).copied()
    }

    /// Adds a new entry as the most recently used one. The caller has checked
    /// that `key` is absent and that `cost` fits.
    pub fn insert(&mut self, key: Arc<[u8]>, value: Stored, flags: u32, expires: u64, cost: u64) -> u32 {
        let slot = Slot {
            key: key.clone(),
            value,
            flags,
            expires,
            cost,
            prev: NIL,
            next: NIL,
        };
        let idx = match self.free.pop() {
            Some(idx) => {
                self.slots[idx as usize] = Some(slot);
                idx
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        note(&mut self.journal, &key);
        match self.map.entry(key) {
            MapEntry::Occupied(mut e) => {
                // Not reachable when callers keep the contract; keep the
                // invariants anyway by dropping the stale slot.
                let old = e.insert(idx);
                self.unlink(old);
                if let Some(stale) = self.slots.get_mut(old as usize).and_then(Option::take) {
                    self.used = self.used.saturating_sub(stale.cost);
                    self.free.push(old);
                }
            }
            MapEntry::Vacant(e) => {
                e.insert(idx);
            }
        }
        self.used += cost;
        self.link_front(idx);
        idx
    }

    /// Removes an entry, returning it (its key can be reused by the caller).
    pub fn remove(&mut self, idx: u32) -> Option<Slot> {
        self.slot(idx)?;
        self.unlink(idx);
        let slot = self.slots.get_mut(idx as usize).and_then(Option::take)?;
        self.map.remove(&slot.key);
        note(&mut self.journal, &slot.key);
        self.free.push(idx);
        self.used = self.used.saturating_sub(slot.cost);
        Some(slot)
    }

    /// Changes the cost charged for an entry (list pushes and pops).
    pub fn recharge(&mut self, idx: u32, cost: u64) {
        if let Some(slot) = self.slots.get_mut(idx as usize).and_then(Option::as_mut) {
            self.used = self.used.saturating_sub(slot.cost) + cost;
            slot.cost = cost;
        }
    }

    /// nginx's `ngx_http_lua_shdict_expire`: with `force`, removes the least
    /// recently used entry unconditionally; then (or without `force`) removes
    /// up to two more tail entries while they have expired. Returns how many
    /// entries were removed.
    pub fn expire_tail(&mut self, force: bool, now: u64) -> usize {
        let mut freed = 0;
        // nginx counts n from 0 (forced) or 1 up to 3; only n == 0 skips the
        // expiry check.
        let mut n = if force { 0 } else { 1 };
        while n < 3 {
            let idx = self.tail;
            let Some(slot) = self.slot(idx) else { break };
            if n != 0 && !expired_for_eviction(slot.expires, now) {
                break;
            }
            n += 1;
            self.remove(idx);
            freed += 1;
        }
        freed
    }

    /// Makes room for `cost` more bytes. Without `may_evict` it only checks.
    /// Returns (fits, forcible) where forcible means unexpired or expired
    /// entries were evicted by force (lua-nginx-module's `forcible`).
    pub fn make_room(&mut self, cost: u64, may_evict: bool, now: u64) -> (bool, bool) {
        if self.fits(cost) {
            return (true, false);
        }
        // Even a value larger than the whole dict evicts first: nginx's
        // shdict set runs its 30 forced expiries before giving up, and reports
        // `forcible` (seen on nginx 1.22: a 100 kB set into a full 64 kB dict
        // returns false, "no memory", true).
        if !may_evict {
            return (false, false);
        }
        let mut forcible = false;
        for _ in 0..EVICTION_ROUNDS {
            if self.expire_tail(true, now) == 0 {
                break;
            }
            forcible = true;
            if self.fits(cost) {
                return (true, true);
            }
        }
        (false, forcible)
    }

    /// Changes the usable bytes, evicting least recently used entries until
    /// what is stored fits.
    pub fn resize(&mut self, usable: u64) {
        self.usable = usable;
        while self.used > self.usable && self.slot(self.tail).is_some() {
            self.remove(self.tail);
        }
    }

    /// Slot indices from least to most recently used.
    pub fn lru_order(&self) -> LruIter<'_> {
        LruIter {
            entries: self,
            next: self.tail,
        }
    }

    /// Marks every entry expired (`flush_all`): nginx sets expires to 1 ms
    /// after the epoch, which keeps `get_stale` working on them.
    pub fn expire_all(&mut self) {
        for slot in self.slots.iter_mut().flatten() {
            slot.expires = 1;
            note(&mut self.journal, &slot.key);
        }
    }

    fn unlink(&mut self, idx: u32) {
        let (prev, next) = match self.slot(idx) {
            Some(s) => (s.prev, s.next),
            None => return,
        };
        match self.links_mut(prev) {
            Some(p) => p.next = next,
            None => {
                if self.head == idx {
                    self.head = next;
                }
            }
        }
        match self.links_mut(next) {
            Some(n) => n.prev = prev,
            None => {
                if self.tail == idx {
                    self.tail = prev;
                }
            }
        }
        if let Some(s) = self.links_mut(idx) {
            s.prev = NIL;
            s.next = NIL;
        }
    }

    fn link_front(&mut self, idx: u32) {
        let old_head = self.head;
        if let Some(s) = self.links_mut(idx) {
            s.prev = NIL;
            s.next = old_head;
        } else {
            return;
        }
        match self.links_mut(old_head) {
            Some(h) => h.prev = idx,
            None => self.tail = idx,
        }
        self.head = idx;
    }
}

/// Walks the LRU list from the tail; see `Entries::lru_order`.
pub(super) struct LruIter<'a> {
    entries: &'a Entries,
    next: u32,
}

impl<'a> Iterator for LruIter<'a> {
    type Item = (u32, &'a Slot);

    fn next(&mut self) -> Option<Self::Item> {
        let idx = self.next;
        let slot = self.entries.slot(idx)?;
        self.next = slot.prev;
        Some((idx, slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(e: &mut Entries, key: &str, cost: u64, expires: u64) -> u32 {
        e.insert(
            Arc::from(key.as_bytes()),
            Stored::Scalar(Value::Bool(true)),
            0,
            expires,
            cost,
        )
    }

    fn order(e: &Entries) -> Vec<String> {
        e.lru_order()
            .map(|(_, s)| String::from_utf8_lossy(&s.key).into_owned())
            .collect()
    }

    #[test]
    fn lookup_moves_entry_to_front() {
        let mut e = Entries::new(1000);
        put(&mut e, "a", 10, 0);
        put(&mut e, "b", 10, 0);
        put(&mut e, "c", 10, 0);
        assert_eq!(order(&e), ["a", "b", "c"]);
        assert!(matches!(e.lookup(b"a", 5), Found::Live(_)));
        assert_eq!(order(&e), ["b", "c", "a"]);
        assert!(matches!(e.lookup(b"zz", 5), Found::Missing));
        assert_eq!(e.used, 30);
    }

    #[test]
    fn remove_keeps_links_and_accounting() {
        let mut e = Entries::new(1000);
        put(&mut e, "a", 10, 0);
        let b = put(&mut e, "b", 20, 0);
        put(&mut e, "c", 30, 0);
        let slot = e.remove(b).map(|s| s.key);
        assert_eq!(slot.as_deref(), Some(&b"b"[..]));
        assert_eq!(order(&e), ["a", "c"]);
        assert_eq!(e.used, 40);
        // The freed slot is reused.
        assert_eq!(put(&mut e, "d", 5, 0), b);
        assert_eq!(order(&e), ["a", "c", "d"]);
        assert!(e.remove(b).is_some());
        assert!(e.remove(b).is_none());
    }

    #[test]
    fn expire_tail_matches_nginx() {
        let mut e = Entries::new(1000);
        put(&mut e, "x1", 10, 5);
        put(&mut e, "x2", 10, 5);
        put(&mut e, "x3", 10, 5);
        put(&mut e, "live", 10, 0);
        // Not forced: at most two expired entries from the tail.
        assert_eq!(e.expire_tail(false, 100), 2);
        assert_eq!(order(&e), ["x3", "live"]);
        // Forced: the tail goes whatever its expiry, then expired ones only.
        assert_eq!(e.expire_tail(true, 100), 1);
        assert_eq!(order(&e), ["live"]);
        assert_eq!(e.expire_tail(false, 100), 0);
        assert_eq!(e.expire_tail(true, 100), 1);
    }

    #[test]
    fn make_room_evicts_lru_and_reports_forcible() {
        let mut e = Entries::new(100);
        put(&mut e, "a", 40, 0);
        put(&mut e, "b", 40, 0);
        assert_eq!(e.make_room(20, true, 1), (true, false));
        assert_eq!(e.make_room(30, false, 1), (false, false));
        assert_eq!(e.make_room(30, true, 1), (true, true));
        assert_eq!(order(&e), ["b"]);
        // Too big for the dict: nginx still evicts before it gives up.
        assert_eq!(e.make_room(101, true, 1), (false, true));
        assert!(order(&e).is_empty());
    }
}
