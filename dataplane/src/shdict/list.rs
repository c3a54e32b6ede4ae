//! List values of a dict: `lpush`, `rpush`, `lpop`, `rpop`, `llen`.
//!
//! In: a key and list items; out: list lengths and popped items, with
//! lua-nginx-module's rules: pushes never evict other entries (they fail with
//! "no memory"), pushing to an expired key starts a new list, and a list that
//! becomes empty is deleted.

use std::collections::VecDeque;
use std::sync::Arc;

use super::entries::{Found, Stored};
use super::{Dict, DictError, ListItem, check_key, list_entry_cost, list_node_cost};

#[derive(Clone, Copy)]
enum End {
    Front,
    Back,
}

impl Dict {
    /// Pushes at the head; returns the new length.
    pub fn lpush(&self, key: &[u8], item: ListItem) -> Result<usize, DictError> {
        self.push(key, item, End::Front)
    }

    /// Pushes at the tail; returns the new length.
    pub fn rpush(&self, key: &[u8], item: ListItem) -> Result<usize, DictError> {
        self.push(key, item, End::Back)
    }

    /// Pops from the head; None when the key is absent or expired.
    pub fn lpop(&self, key: &[u8]) -> Result<Option<ListItem>, DictError> {
        self.pop(key, End::Front)
    }

    /// Pops from the tail; None when the key is absent or expired.
    pub fn rpop(&self, key: &[u8]) -> Result<Option<ListItem>, DictError> {
        self.pop(key, End::Back)
    }

    /// The list's length; 0 when the key is absent or expired.
    pub fn llen(&self, key: &[u8]) -> Result<usize, DictError> {
        check_key(key)?;
        self.locked(|e, now| {
            e.expire_tail(false, now);
            let Found::Live(idx) = e.lookup(key, now) else {
                return Ok(0);
            };
            match e.slot(idx).map(|slot| &slot.value) {
                Some(Stored::List(list)) => Ok(list.len()),
                Some(Stored::Scalar(_)) => Err(DictError::ValueNotList),
                None => Ok(0),
            }
        })
    }

    fn push(&self, key: &[u8], item: ListItem, end: End) -> Result<usize, DictError> {
        check_key(key)?;
        self.locked(|e, now| {
            e.expire_tail(false, now);
            let mut old_key = None;
            let existing = match e.lookup(key, now) {
                Found::Live(idx) => match e.slot(idx).map(|slot| &slot.value) {
                    Some(Stored::List(_)) => Some(idx),
                    _ => return Err(DictError::ValueNotList),
                },
                Found::Expired(idx) => {
                    if let Some(slot) = e.slot_mut(idx)
                        && let Stored::List(list) = &mut slot.value
                    {
                        // An expired list is reused, emptied and immortal.
                        list.clear();
                        slot.expires = 0;
                        e.recharge(idx, list_entry_cost(key.len()));
                        Some(idx)
                    } else {
                        old_key = e.remove(idx).map(|slot| slot.key);
                        None
                    }
                }
                Found::Missing => None,
            };
            let idx = match existing {
                Some(idx) => idx,
                None => {
                    let cost = list_entry_cost(key.len());
                    if !e.fits(cost) {
                        return Err(DictError::NoMemory);
                    }
                    let key = old_key.unwrap_or_else(|| Arc::from(key));
                    e.insert(key, Stored::List(VecDeque::new()), 0, 0, cost)
                }
            };
            let node_cost = list_node_cost(&item);
            if !e.fits(node_cost) {
                // nginx drops a list it just created when the first node
                // does not fit.
                if e.slot(idx)
                    .is_some_and(|slot| matches!(&slot.value, Stored::List(l) if l.is_empty()))
                {
                    e.remove(idx);
                }
                return Err(DictError::NoMemory);
            }
            let Some(slot) = e.slot_mut(idx) else {
                return Err(DictError::NotFound);
            };
            let Stored::List(list) = &mut slot.value else {
                return Err(DictError::ValueNotList);
            };
            match end {
                End::Front => list.push_front(item),
                End::Back => list.push_back(item),
            }
            let len = list.len();
            let cost = slot.cost + node_cost;
            e.recharge(idx, cost);
            Ok(len)
        })
    }

    fn pop(&self, key: &[u8], end: End) -> Result<Option<ListItem>, DictError> {
        check_key(key)?;
        self.locked(|e, now| {
            e.expire_tail(false, now);
            let Found::Live(idx) = e.lookup(key, now) else {
                return Ok(None);
            };
            let Some(slot) = e.slot_mut(idx) else { return Ok(None) };
            let Stored::List(list) = &mut slot.value else {
                return Err(DictError::ValueNotList);
            };
            let item = match end {
                End::Front => list.pop_front(),
                End::Back => list.pop_back(),
            };
            let now_empty = list.is_empty();
            let cost = slot.cost.saturating_sub(item.as_ref().map_or(0, list_node_cost));
            if now_empty {
                e.remove(idx);
            } else {
                e.recharge(idx, cost);
            }
            Ok(item)
        })
    }
}
