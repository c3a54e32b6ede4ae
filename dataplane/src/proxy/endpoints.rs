//! The ready endpoints of the Service ports that routes proxy to, as the
//! controller last sent them. One table per process, shared by the workers.
//!
//! Invariants:
//! - The table changes apart from the routes: an endpoint delta replaces
//!   entries here and reloads no route's Lua.
//! - Readers get an immutable `Arc` of one entry; a change swaps entries, so a
//!   request that picked its endpoints keeps a consistent list.
//! - `generation` grows with every change, so a worker's per-upstream state
//!   (balancer, health) can tell that its endpoint list is stale.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use moongate_proto::v1 as pb;

/// A Service port of a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub service: String,
    pub port: u16,
}

impl ServiceKey {
    pub fn of(e: &pb::ServiceEndpoints) -> ServiceKey {
        ServiceKey {
            namespace: e.namespace.clone(),
            service: e.service.clone(),
            port: u16::try_from(e.port).unwrap_or(0),
        }
    }
}

impl From<&pb::ServiceKey> for ServiceKey {
    fn from(k: &pb::ServiceKey) -> ServiceKey {
        ServiceKey {
            namespace: k.namespace.clone(),
            service: k.service.clone(),
            port: u16::try_from(k.port).unwrap_or(0),
        }
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Service {}/{} port {}", self.namespace, self.service, self.port)
    }
}

/// The endpoints of one Service port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceEndpoints {
    /// Sorted; empty when `problem` says why.
    pub addrs: Vec<SocketAddr>,
    /// Why there is no endpoint, as the controller put it.
    pub problem: Option<String>,
}

impl ServiceEndpoints {
    fn from_proto(e: &pb::ServiceEndpoints) -> ServiceEndpoints {
        let mut addrs: Vec<SocketAddr> = e.endpoints.iter().filter_map(|a| a.parse().ok()).collect();
        addrs.sort();
        addrs.dedup();
        let problem = if !e.problem.is_empty() {
            Some(e.problem.clone())
        } else if addrs.is_empty() {
            Some("no ready endpoints".to_string())
        } else {
            None
        };
        ServiceEndpoints { addrs, problem }
    }
}

#[derive(Default)]
pub struct EndpointTable {
    entries: RwLock<Arc<HashMap<ServiceKey, Arc<ServiceEndpoints>>>>,
    generation: AtomicU64,
}

impl EndpointTable {
    /// Replaces the whole table (a full snapshot).
    pub fn replace(&self, endpoints: &[pb::ServiceEndpoints]) {
        let map = endpoints
            .iter()
            .map(|e| (ServiceKey::of(e), Arc::new(ServiceEndpoints::from_proto(e))))
            .collect();
        self.swap(|_| map);
    }

    /// Applies a delta: `upserted` entries replace theirs, `removed` go.
    pub fn apply(&self, upserted: &[pb::ServiceEndpoints], removed: &[pb::ServiceKey]) {
        if upserted.is_empty() && removed.is_empty() {
            return;
        }
        self.swap(|old| {
            let mut map = old.clone();
            for k in removed {
                map.remove(&ServiceKey::from(k));
            }
            for e in upserted {
                map.insert(ServiceKey::of(e), Arc::new(ServiceEndpoints::from_proto(e)));
            }
            map
        });
    }

    fn swap(
        &self,
        change: impl FnOnce(&HashMap<ServiceKey, Arc<ServiceEndpoints>>) -> HashMap<ServiceKey, Arc<ServiceEndpoints>>,
    ) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        *entries = Arc::new(change(&entries));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The endpoints of `key`; `None` when the controller sent nothing for it.
    pub fn get(&self, key: &ServiceKey) -> Option<Arc<ServiceEndpoints>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    /// Grows with every change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(service: &str, endpoints: &[&str]) -> pb::ServiceEndpoints {
        pb::ServiceEndpoints {
            namespace: "ns".into(),
            service: service.into(),
            port: 80,
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            problem: String::new(),
        }
    }

    fn key(service: &str) -> ServiceKey {
        ServiceKey {
            namespace: "ns".into(),
            service: service.into(),
            port: 80,
        }
    }

    #[test]
    fn a_delta_replaces_and_removes_entries_and_bumps_the_generation() {
        let table = EndpointTable::default();
        table.replace(&[
            eps("web", &["10.0.0.2:80", "10.0.0.1:80"]),
            eps("api", &["10.0.0.3:80"]),
        ]);
        let g = table.generation();
        let web = table.get(&key("web")).unwrap();
        assert_eq!(
            web.addrs,
            ["10.0.0.1:80".parse().unwrap(), "10.0.0.2:80".parse().unwrap()]
        );
        table.apply(
            &[eps("web", &[])],
            &[pb::ServiceKey {
                namespace: "ns".into(),
                service: "api".into(),
                port: 80,
            }],
        );
        assert!(table.generation() > g);
        assert_eq!(
            table.get(&key("web")).unwrap().problem.as_deref(),
            Some("no ready endpoints")
        );
        assert!(table.get(&key("api")).is_none());
        // What a request took before the change stays as it was.
        assert_eq!(web.addrs.len(), 2);
    }
}
