//! Expiry and whole-dict operations: `ttl`, `expire`, `flush_all`,
//! `flush_expired`, `get_keys`.
//!
//! In: keys and times; out: remaining lifetimes, counts and key lists with
//! lua-nginx-module's semantics (`ttl`/`expire` see expired entries that are
//! still stored; `flush_all` only marks entries expired).

use std::sync::Arc;

use super::entries::expired_for_eviction;
use super::{Dict, DictError, check_key, deadline};

impl Dict {
    /// Remaining lifetime in ms: 0 when the key never expires, negative when
    /// it has expired but is still stored. `NotFound` when absent.
    pub fn ttl(&self, key: &[u8]) -> Result<i64, DictError> {
        check_key(key)?;
        self.locked(|e, now| {
            let slot = e.peek(key).and_then(|idx| e.slot(idx)).ok_or(DictError::NotFound)?;
            if slot.expires == 0 {
                return Ok(0);
            }
            Ok(i64::try_from(slot.expires)
                .unwrap_or(i64::MAX)
                .saturating_sub(i64::try_from(now).unwrap_or(0)))
        })
    }

    /// Sets the key to expire `exptime_ms` from now (0 = never). Works on
    /// expired entries still stored, reviving them, as nginx does.
    pub fn expire(&self, key: &[u8], exptime_ms: u64) -> Result<(), DictError> {
        check_key(key)?;
        self.locked(|e, now| {
            let idx = e.peek(key).ok_or(DictError::NotFound)?;
            let slot = e.slot_mut(idx).ok_or(DictError::NotFound)?;
            slot.expires = deadline(now, exptime_ms);
            Ok(())
        })
    }

    /// Marks every entry expired (`get_stale` still sees them until they are
    /// evicted) and frees up to three of them right away, like nginx.
    pub fn flush_all(&self) {
        self.locked(|e, now| {
            e.expire_all();
            e.expire_tail(true, now);
        })
    }

    /// Removes expired entries, least recently used first, at most `max`
    /// of them (0 = all). Returns how many were removed.
    pub fn flush_expired(&self, max: usize) -> usize {
        self.locked(|e, now| {
            let limit = if max == 0 { usize::MAX } else { max };
            let doomed: Vec<u32> = e
                .lru_order()
                .filter(|(_, slot)| expired_for_eviction(slot.expires, now))
                .map(|(idx, _)| idx)
                .take(limit)
                .collect();
            for &idx in &doomed {
                e.remove(idx);
            }
            doomed.len()
        })
    }

    /// Keys of unexpired entries, least recently used first, at most `max`
    /// of them (0 = all; lua-nginx-module's default is 1024).
    pub fn get_keys(&self, max: usize) -> Vec<Arc<[u8]>> {
        self.locked(|e, now| {
            let limit = if max == 0 { usize::MAX } else { max };
            e.lru_order()
                .filter(|(_, slot)| !expired_for_eviction(slot.expires, now))
                .map(|(_, slot)| slot.key.clone())
                .take(limit)
                .collect()
        })
    }
}
