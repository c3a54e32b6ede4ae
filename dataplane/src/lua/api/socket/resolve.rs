//! Host name resolution for cosockets: async (the system resolver on
//! tokio's blocking pool, so a worker never waits on DNS), bounded by the
//! connect timeout, and cached per VM for [`TTL`], as nginx's `resolver
//! ... valid=` caches. Addresses are checked against the egress policy by
//! the caller after resolution, every time, cached or not.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long a resolved name is reused.
const TTL: Duration = Duration::from_secs(30);
/// Names cached at most; the cache is emptied when full.
const MAX_NAMES: usize = 1024;

#[derive(Default)]
pub struct Resolver {
    cache: RefCell<HashMap<String, (Vec<IpAddr>, Instant)>>,
}

impl Resolver {
    /// The addresses of `host` (an IP literal resolves to itself), or
    /// nginx's "HOST could not be resolved (…)".
    pub async fn resolve(&self, host: &str, timeout: std::time::Duration) -> Result<Vec<IpAddr>, String> {
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let now = Instant::now();
        if let Some((ips, until)) = self.cache.borrow().get(host)
            && *until > now
        {
            return Ok(ips.clone());
        }
        let lookup = tokio::net::lookup_host((host.to_string(), 0));
        let ips: Vec<IpAddr> = match tokio::time::timeout(timeout, lookup).await {
            Err(_) => return Err(format!("{host} could not be resolved (110: Operation timed out)")),
            Ok(Err(_)) => return Err(format!("{host} could not be resolved (3: Host not found)")),
            Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
        };
        if ips.is_empty() {
            return Err(format!("{host} could not be resolved (3: Host not found)"));
        }
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= MAX_NAMES {
            cache.clear();
        }
        cache.insert(host.to_string(), (ips.clone(), now + TTL));
        Ok(ips)
    }
}
