//! One published version of the fleet's configuration, and the delta between two.
//!
//! Invariants: a `Published` is immutable once built; its `content_hash` is the
//! hash `snapshot::build` computes over the same routes and service endpoints,
//! so a dataplane that applies a delta can check it reached exactly this
//! state. Routes are shared (`Arc`) between versions, so an unchanged route is
//! the same allocation in both and deltas are found by pointer comparison.
//! Endpoints are kept apart from routes: a version that differs from its base
//! only in endpoints has a delta with no route in it, and a dataplane applies
//! it without reloading any Lua. LuaLibraries are kept apart the same way,
//! each once however many routes name it: an edit to a library is a delta of
//! that one library (the routes naming it by name are unchanged), and the
//! dataplane reloads the routes that name it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use moongate_proto::snapshot;
use moongate_proto::v1 as pb;
use moongate_route::{LibraryKey, RouteKey};

/// A Service port of a namespace, ordered as `snapshot::endpoints_order`
/// orders service endpoints (namespace, service, port: the field order).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub service: String,
    pub port: u32,
}

impl ServiceKey {
    pub fn of(e: &pb::ServiceEndpoints) -> ServiceKey {
        ServiceKey {
            namespace: e.namespace.clone(),
            service: e.service.clone(),
            port: e.port,
        }
    }
}

impl From<&ServiceKey> for pb::ServiceKey {
    fn from(k: &ServiceKey) -> pb::ServiceKey {
        pb::ServiceKey {
            namespace: k.namespace.clone(),
            service: k.service.clone(),
            port: k.port,
        }
    }
}

#[derive(Debug, Default)]
pub struct Published {
    pub version: u64,
    pub content_hash: Vec<u8>,
    pub routes: BTreeMap<RouteKey, Arc<pb::Route>>,
    /// The endpoints of every Service port a published route names, by key
    /// (so iteration is `snapshot::endpoints_order`).
    pub endpoints: BTreeMap<ServiceKey, pb::ServiceEndpoints>,
    /// The libraries the published routes name, at the generation they are
    /// served with.
    pub libraries: BTreeMap<LibraryKey, Arc<pb::Library>>,
    /// Built once, then copied to each stream that needs it.
    snapshot: OnceLock<pb::Snapshot>,
    /// Deltas from recent base versions: the sessions of a fleet mostly share
    /// one base, so each delta is computed once, not once per dataplane.
    deltas: Mutex<Vec<(u64, Arc<pb::Delta>)>>,
}

/// Deltas kept per version: the bases in use at once are few (the previous
/// version, and a straggler's older one).
const DELTAS_KEPT: usize = 4;

impl Published {
    /// A version of `routes` with no service endpoints.
    pub fn new(version: u64, routes: BTreeMap<RouteKey, Arc<pb::Route>>) -> Published {
        Published::with_endpoints(version, routes, Vec::new())
    }

    /// A version of `routes` and the endpoints of the Service ports they name.
    /// Should two entries share a key, the last one wins.
    pub fn with_endpoints(
        version: u64,
        routes: BTreeMap<RouteKey, Arc<pb::Route>>,
        endpoints: Vec<pb::ServiceEndpoints>,
    ) -> Published {
        Published::with_libraries(version, routes, endpoints, BTreeMap::new())
    }

    /// A version of `routes`, the endpoints of the Service ports they name,
    /// and the libraries they name.
    pub fn with_libraries(
        version: u64,
        routes: BTreeMap<RouteKey, Arc<pb::Route>>,
        endpoints: Vec<pb::ServiceEndpoints>,
        libraries: BTreeMap<LibraryKey, Arc<pb::Library>>,
    ) -> Published {
        let endpoints: BTreeMap<ServiceKey, pb::ServiceEndpoints> =
            endpoints.into_iter().map(|e| (ServiceKey::of(&e), e)).collect();
        let content_hash = snapshot::content_hash(
            routes.values().map(Arc::as_ref),
            endpoints.values(),
            libraries.values().map(Arc::as_ref),
        );
        Published {
            version,
            content_hash,
            routes,
            endpoints,
            libraries,
            ..Default::default()
        }
    }

    /// The generation of library `key` this version carries, if it carries it.
    pub fn library_generation(&self, key: &LibraryKey) -> Option<i64> {
        self.libraries.get(key).map(|l| l.generation)
    }

    /// The generation of `key` this version carries, if it carries the route.
    pub fn generation(&self, key: &RouteKey) -> Option<i64> {
        self.routes.get(key).map(|r| r.generation)
    }

    pub fn snapshot(&self) -> pb::Snapshot {
        self.snapshot
            .get_or_init(|| {
                let mut routes: Vec<pb::Route> = self.routes.values().map(|r| r.as_ref().clone()).collect();
                routes.sort_by(snapshot::order);
                pb::Snapshot {
                    version: self.version,
                    content_hash: self.content_hash.clone(),
                    routes,
                    // Already in `endpoints_order`: the map's key order.
                    endpoints: self.endpoints.values().cloned().collect(),
                    // Already in `libraries_order`, likewise.
                    libraries: self.libraries.values().map(|l| l.as_ref().clone()).collect(),
                }
            })
            .clone()
    }

    /// What turns `base` into `self`, computed once per base.
    pub fn delta_from(&self, base: &Published) -> Arc<pb::Delta> {
        let mut deltas = self.deltas.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, delta)) = deltas.iter().find(|(v, _)| *v == base.version) {
            return delta.clone();
        }
        let delta = Arc::new(self.compute_delta(base));
        if deltas.len() == DELTAS_KEPT {
            deltas.remove(0);
        }
        deltas.push((base.version, delta.clone()));
        delta
    }

    fn compute_delta(&self, base: &Published) -> pb::Delta {
        let upserted = self
            .routes
            .iter()
            .filter(|(key, route)| !base.routes.get(*key).is_some_and(|old| same(old, route)))
            .map(|(_, route)| route.as_ref().clone())
            .collect();
        let removed = base
            .routes
            .keys()
            .filter(|key| !self.routes.contains_key(*key))
            .map(|key| pb::RouteKey::from(key.clone()))
            .collect();
        let upserted_endpoints = self
            .endpoints
            .iter()
            .filter(|(key, e)| base.endpoints.get(*key) != Some(*e))
            .map(|(_, e)| e.clone())
            .collect();
        let removed_endpoints = base
            .endpoints
            .keys()
            .filter(|key| !self.endpoints.contains_key(*key))
            .map(pb::ServiceKey::from)
            .collect();
        let upserted_libraries = self
            .libraries
            .iter()
            .filter(|(key, l)| {
                !base
                    .libraries
                    .get(*key)
                    .is_some_and(|old| Arc::ptr_eq(old, l) || old == *l)
            })
            .map(|(_, l)| l.as_ref().clone())
            .collect();
        let removed_libraries = base
            .libraries
            .keys()
            .filter(|key| !self.libraries.contains_key(*key))
            .map(|key| pb::LibraryKey::from(key.clone()))
            .collect();
        pb::Delta {
            version: self.version,
            base_version: base.version,
            content_hash: self.content_hash.clone(),
            upserted,
            removed,
            upserted_endpoints,
            removed_endpoints,
            upserted_libraries,
            removed_libraries,
        }
    }
}

fn same(a: &Arc<pb::Route>, b: &Arc<pb::Route>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, generation: i64) -> Arc<pb::Route> {
        Arc::new(pb::Route {
            namespace: "ns".into(),
            name: name.into(),
            generation,
            ..Default::default()
        })
    }

    fn published(version: u64, routes: &[&Arc<pb::Route>]) -> Published {
        Published::new(
            version,
            routes.iter().map(|r| (RouteKey::of(r), Arc::clone(r))).collect(),
        )
    }

    #[test]
    fn delta_carries_changed_and_removed_routes_only() {
        let (a, b1, b2, c) = (route("a", 1), route("b", 1), route("b", 2), route("c", 1));
        let v1 = published(1, &[&a, &b1, &c]);
        let v2 = published(2, &[&a, &b2]);
        let delta = v2.delta_from(&v1);
        assert_eq!(delta.base_version, 1);
        assert_eq!(delta.version, 2);
        assert_eq!(
            delta
                .upserted
                .iter()
                .map(|r| (r.name.as_str(), r.generation))
                .collect::<Vec<_>>(),
            [("b", 2)]
        );
        assert_eq!(delta.removed.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["c"]);
        assert_eq!(delta.content_hash, v2.content_hash);
    }

    #[test]
    fn hash_matches_what_a_dataplane_computes_from_the_snapshot() {
        let v = published(7, &[&route("x", 3), &route("a", 1)]);
        let snap = v.snapshot();
        assert_eq!(snap.content_hash, v.content_hash);
        assert_eq!(
            snapshot::build(snap.routes.clone(), Vec::new(), Vec::new(), 9).content_hash,
            v.content_hash
        );
        assert_ne!(
            published(7, &[&route("x", 4), &route("a", 1)]).content_hash,
            v.content_hash
        );
    }

    fn endpoints(service: &str, addresses: &[&str]) -> pb::ServiceEndpoints {
        pb::ServiceEndpoints {
            namespace: "ns".into(),
            service: service.into(),
            port: 80,
            endpoints: addresses.iter().map(|a| a.to_string()).collect(),
            problem: if addresses.is_empty() {
                "no ready endpoints".into()
            } else {
                String::new()
            },
        }
    }

    fn with_endpoints(version: u64, routes: &[&Arc<pb::Route>], eps: Vec<pb::ServiceEndpoints>) -> Published {
        Published::with_endpoints(
            version,
            routes.iter().map(|r| (RouteKey::of(r), Arc::clone(r))).collect(),
            eps,
        )
    }

    #[test]
    fn the_hash_covers_endpoints_and_agrees_with_the_snapshot() {
        let a = route("a", 1);
        let v = with_endpoints(
            3,
            &[&a],
            vec![endpoints("web", &["10.0.0.2:80"]), endpoints("api", &["10.0.0.1:80"])],
        );
        let snap = v.snapshot();
        let names: Vec<&str> = snap.endpoints.iter().map(|e| e.service.as_str()).collect();
        assert_eq!(names, ["api", "web"], "in endpoints_order");
        let rebuilt = snapshot::build(snap.routes.clone(), snap.endpoints.clone(), Vec::new(), 3);
        assert_eq!(rebuilt.content_hash, v.content_hash);
        assert_eq!(snap.content_hash, v.content_hash);
        assert_ne!(v.content_hash, published(3, &[&a]).content_hash);
    }

    #[test]
    fn an_endpoint_change_is_a_delta_without_routes() {
        let a = route("a", 1);
        let v1 = with_endpoints(
            1,
            &[&a],
            vec![endpoints("web", &["10.0.0.1:80"]), endpoints("api", &["10.0.0.9:80"])],
        );
        let v2 = with_endpoints(
            2,
            &[&a],
            vec![
                endpoints("web", &["10.0.0.1:80", "10.0.0.2:80"]),
                endpoints("api", &["10.0.0.9:80"]),
            ],
        );
        let delta = v2.delta_from(&v1);
        assert!(delta.upserted.is_empty() && delta.removed.is_empty(), "{delta:?}");
        assert_eq!(
            delta.upserted_endpoints,
            [endpoints("web", &["10.0.0.1:80", "10.0.0.2:80"])]
        );
        assert!(delta.removed_endpoints.is_empty());

        let v3 = with_endpoints(3, &[&a], vec![endpoints("api", &["10.0.0.9:80"])]);
        let delta = v3.delta_from(&v2);
        assert!(delta.upserted.is_empty() && delta.upserted_endpoints.is_empty());
        assert_eq!(
            delta.removed_endpoints,
            [pb::ServiceKey {
                namespace: "ns".into(),
                service: "web".into(),
                port: 80
            }]
        );
    }

    #[test]
    fn a_library_edit_is_a_delta_of_that_library_alone() {
        let mut named = pb::Route {
            namespace: "ns".into(),
            name: "a".into(),
            generation: 1,
            libraries: vec!["shared".into()],
            ..Default::default()
        };
        let route = Arc::new(named.clone());
        let library = |generation: i64| {
            Arc::new(pb::Library {
                namespace: "ns".into(),
                name: "shared".into(),
                generation,
                modules: Vec::new(),
            })
        };
        let key = LibraryKey::new("ns", "shared");
        let version = |v: u64, library: &Arc<pb::Library>, route: &Arc<pb::Route>| {
            Published::with_libraries(
                v,
                BTreeMap::from([(RouteKey::of(route), route.clone())]),
                Vec::new(),
                BTreeMap::from([(key.clone(), library.clone())]),
            )
        };
        let v1 = version(1, &library(1), &route);
        let v2 = version(2, &library(2), &route);
        assert_ne!(v1.content_hash, v2.content_hash);
        let delta = v2.delta_from(&v1);
        assert!(delta.upserted.is_empty(), "the route naming it is unchanged");
        assert_eq!(delta.upserted_libraries.len(), 1);
        assert_eq!(delta.upserted_libraries[0].generation, 2);
        assert_eq!(v2.library_generation(&key), Some(2));
        let snap = v2.snapshot();
        assert_eq!(
            snapshot::build(snap.routes.clone(), Vec::new(), snap.libraries.clone(), 9).content_hash,
            v2.content_hash,
            "a dataplane applying the delta reaches the same hash"
        );

        named.libraries.clear();
        let v3 = Published::new(3, BTreeMap::from([(RouteKey::of(&named), Arc::new(named))]));
        let delta = v3.delta_from(&v2);
        assert_eq!(delta.removed_libraries, [pb::LibraryKey::from(key)]);
    }
}
