//! The controller's table of LuaRoutes: each route's latest object, its
//! compilation, and the verdicts that become its status.
//!
//! Invariants:
//! - A route is compiled once per generation; status-only updates (our own
//!   writes) do not recompile.
//! - A route whose newest generation is invalid keeps its last good generation
//!   in the published config, so a bad edit never takes a working route down.
//!   (That memory is per controller process; see `Entry::last_good`.)
//! - A route naming a hostname another namespace owns and did not share is
//!   left out entirely; of two routes claiming the same location on the same
//!   host, the older keeps it and the newer is left out entirely (`index::admit`).
//! - A route is published only with every LuaLibrary it names, linked by
//!   `library::link` (same namespace, no module name twice). When its current
//!   generation cannot be (a library missing, never compiled, or clashing),
//!   its status says so (`LibraryNotFound`, `LibraryInvalid`,
//!   `LibraryConflict`) and the generation it was last published with keeps
//!   serving, if it still links. Libraries travel apart from routes
//!   (`Built::libraries`), each once, at the generation `LibraryTable::serving`
//!   picks.
//! - Endpoints never enter a route: `build` returns them apart, one
//!   `pb::ServiceEndpoints` per (namespace, Service, port) that a *published*
//!   route's location names, so an EndpointSlice change changes no route.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use moongate_proto::v1 as pb;

use crate::endpoints::{EndpointIndex, Resolution};
pub use crate::libraries::Unresolved;
use crate::libraries::{LibraryTable, LibraryVerdicts};
use crate::published::ServiceKey;
use moongate_route::compile::{Compiler, compile_route};
use moongate_route::crd::{LuaLibrary, LuaRoute, LuaRouteStatus};
use moongate_route::library::{self, LinkError};
use moongate_route::{LibraryKey, Problem, RouteKey};

/// Why a route (generation) is or isn't in the published config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acceptance {
    Accepted,
    /// The Lua or the spec is invalid; each problem names location, phase and line.
    Invalid(String),
    /// Another, older route holds one of its hostnames (of another namespace,
    /// which did not allow this one) or one of its locations.
    Conflicted(String),
    /// A LuaLibrary it names is missing, has never compiled, or defines a
    /// module it or another named library defines too.
    Unlinked(Unresolved),
}

/// What the controller concluded about one LuaRoute.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub generation: i64,
    pub acceptance: Acceptance,
    /// `Err` when an upstream Service is missing, or a library the route
    /// names is not served as it is now (missing, invalid, clashing).
    pub resolved_refs: Result<(), Unresolved>,
    /// The generation in the published config (the current one, or the last
    /// good one when the current is invalid), if any.
    pub published_generation: Option<i64>,
    pub reference: k8s_openapi::api::core::v1::ObjectReference,
    /// The status as last read from the API server.
    pub status: Option<LuaRouteStatus>,
}

pub type Verdicts = BTreeMap<RouteKey, Verdict>;

struct Entry {
    object: LuaRoute,
    compiled: Result<Arc<pb::Route>, Vec<Problem>>,
    /// The newest generation that compiled. Not persisted: after a controller
    /// restart an invalid route has no good generation until it is fixed.
    last_good: Option<Arc<pb::Route>>,
    /// `last_good` or `compiled` with upstream endpoints filled in; kept so an
    /// unchanged route stays the same allocation across versions.
    resolved: Option<Arc<pb::Route>>,
    /// The generation last published: served on when the current one
    /// cannot be linked to its libraries.
    published: Option<Arc<pb::Route>>,
}

#[derive(Default)]
pub struct RouteTable {
    compiler: Compiler,
    routes: BTreeMap<RouteKey, Entry>,
    endpoints: EndpointIndex,
    /// By (namespace, name).
    services: HashMap<(String, String), Service>,
    libraries: LibraryTable,
}

fn in_scope(scope: Option<&str>, namespace: &str) -> bool {
    scope.is_none_or(|s| s == namespace)
}

pub fn key_of<K: ResourceExt>(object: &K) -> RouteKey {
    RouteKey::new(object.namespace().unwrap_or_default(), object.name_any())
}

fn service_key(service: &Service) -> (String, String) {
    (service.namespace().unwrap_or_default(), service.name_any())
}

impl RouteTable {
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Replaces every route in `scope` (a namespace, or all) with a fresh list.
    pub fn relist_routes(&mut self, scope: Option<&str>, objects: Vec<LuaRoute>) {
        let listed: std::collections::HashSet<RouteKey> = objects.iter().map(key_of).collect();
        self.routes
            .retain(|key, _| !in_scope(scope, &key.namespace) || listed.contains(key));
        for object in objects {
            self.upsert(object);
        }
    }

    /// Records the newest state of a LuaRoute, compiling it if its spec changed.
    pub fn upsert(&mut self, object: LuaRoute) {
        let key = key_of(&object);
        if let Some(entry) = self.routes.get_mut(&key)
            && entry.object.spec == object.spec
            && entry.object.metadata.generation == object.metadata.generation
            && entry.object.metadata.uid == object.metadata.uid
        {
            // A status or metadata update: nothing to compile.
            entry.object = object;
            return;
        }
        let created_at = object
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second());
        let compiled = compile_route(&self.compiler, &object, created_at).map(|mut route| {
            route.generation = object.metadata.generation.unwrap_or(0);
            Arc::new(route)
        });
        match &compiled {
            Ok(_) => {
                tracing::info!(route = %key, generation = ?object.metadata.generation, "compiled")
            }
            Err(problems) => {
                for p in problems {
                    tracing::warn!("rejected: {p}");
                }
            }
        }
        let same_object = self
            .routes
            .get(&key)
            .is_some_and(|e| e.object.metadata.uid == object.metadata.uid);
        let last_good = match &compiled {
            Ok(route) => Some(route.clone()),
            Err(_) if same_object => self.routes.get(&key).and_then(|e| e.last_good.clone()),
            Err(_) => None,
        };
        let previous = self.routes.get(&key).filter(|_| same_object);
        let resolved = previous.and_then(|e| e.resolved.clone());
        let published = previous.and_then(|e| e.published.clone());
        self.routes.insert(
            key,
            Entry {
                object,
                compiled,
                last_good,
                resolved,
                published,
            },
        );
    }

    pub fn remove(&mut self, key: &RouteKey) {
        self.routes.remove(key);
    }

    pub fn upsert_library(&mut self, object: LuaLibrary) {
        self.libraries.upsert(&self.compiler, object);
    }

    pub fn remove_library(&mut self, key: &LibraryKey) {
        self.libraries.remove(key);
    }

    pub fn relist_libraries(&mut self, scope: Option<&str>, objects: Vec<LuaLibrary>) {
        self.libraries.relist(&self.compiler, scope, objects);
    }

    /// The libraries `route` names at the generation each is served with, and
    /// what is stale about them; `Err` when the route cannot be linked.
    fn link(&self, route: &pb::Route) -> Result<(Vec<Arc<pb::Library>>, Vec<Unresolved>), Unresolved> {
        let mut libraries = Vec::with_capacity(route.libraries.len());
        let mut stale = Vec::new();
        for key in library::named(route) {
            let (served, why) = self.libraries.serving(&key)?;
            libraries.push(served);
            stale.extend(why);
        }
        library::link(route, |key| {
            libraries.iter().find(|l| LibraryKey::of(l) == *key).map(Arc::as_ref)
        })
        .map_err(|e| Unresolved {
            reason: match e {
                LinkError::Missing(_) => "LibraryNotFound",
                LinkError::Conflict { .. } => "LibraryConflict",
            },
            message: e.to_string(),
        })?;
        Ok((libraries, stale))
    }

    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        self.endpoints.apply(slice);
    }

    pub fn delete_slice(&mut self, slice: &EndpointSlice) {
        self.endpoints.delete(slice);
    }

    pub fn relist_slices(&mut self, scope: Option<&str>, slices: Vec<EndpointSlice>) {
        self.endpoints.clear(scope);
        for slice in &slices {
            self.endpoints.apply(slice);
        }
    }

    pub fn apply_service(&mut self, service: Service) {
        self.services.insert(service_key(&service), service);
    }

    pub fn delete_service(&mut self, service: &Service) {
        self.services.remove(&service_key(service));
    }

    pub fn relist_services(&mut self, scope: Option<&str>, services: Vec<Service>) {
        self.services.retain(|(namespace, _), _| !in_scope(scope, namespace));
        for service in services {
            self.apply_service(service);
        }
    }

    /// Resolves upstreams, drops conflicting routes, and returns the routes to
    /// publish, the endpoints of the Service ports they name, and every
    /// route's verdict.
    pub fn build(&mut self) -> Built {
        let mut verdicts = Verdicts::new();
        let mut candidates: Vec<(RouteKey, Arc<pb::Route>)> = Vec::new();
        let mut linked: BTreeMap<RouteKey, Vec<Arc<pb::Library>>> = BTreeMap::new();
        let mut naming: BTreeMap<LibraryKey, Vec<RouteKey>> = BTreeMap::new();
        let keys: Vec<RouteKey> = self.routes.keys().cloned().collect();
        for key in keys {
            let (resolved, refs) = self.resolve(&key);
            let entry = &self.routes[&key];
            for name in &entry.object.spec.libraries {
                naming
                    .entry(LibraryKey::new(&key.namespace, name))
                    .or_default()
                    .push(key.clone());
            }
            let mut unresolved: Vec<Unresolved> = refs.err().into_iter().collect();
            let mut unlinked = None;
            // The current (or last good) generation with its libraries; else
            // the generation last published, if it still links.
            let chosen = resolved.and_then(|route| match self.link(&route) {
                Ok((libraries, stale)) => {
                    unresolved.extend(stale);
                    Some((route, libraries))
                }
                Err(why) => {
                    unresolved.push(why.clone());
                    if entry.compiled.is_ok() {
                        unlinked = Some(why);
                    }
                    let previous = entry.published.clone().filter(|p| !Arc::ptr_eq(p, &route))?;
                    let (libraries, _) = self.link(&previous).ok()?;
                    Some((previous, libraries))
                }
            });
            let acceptance = match (&entry.compiled, unlinked) {
                (Err(problems), _) => {
                    Acceptance::Invalid(problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
                }
                (Ok(_), Some(why)) => Acceptance::Unlinked(why),
                (Ok(_), None) => Acceptance::Accepted,
            };
            let resolved_refs = match unresolved.first() {
                None => Ok(()),
                Some(first) => Err(Unresolved {
                    reason: first.reason,
                    message: unresolved
                        .iter()
                        .map(|u| u.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; "),
                }),
            };
            let verdict = Verdict {
                generation: entry.object.metadata.generation.unwrap_or(0),
                acceptance,
                resolved_refs,
                published_generation: None,
                reference: object_reference(&entry.object),
                status: entry.object.status.clone(),
            };
            let entry = self.routes.get_mut(&key).expect("key taken from the map");
            entry.resolved = chosen.as_ref().map(|(route, _)| route.clone());
            if let Some((route, libraries)) = chosen {
                candidates.push((key.clone(), route));
                linked.insert(key.clone(), libraries);
            }
            verdicts.insert(key, verdict);
        }
        let refusals = moongate_route::index::admit(candidates.iter().map(|(_, r)| r.as_ref()));
        for refusal in &refusals {
            if let Some(v) = verdicts.get_mut(refusal.route())
                && !matches!(v.acceptance, Acceptance::Conflicted(_))
            {
                // The route's first refusal is enough to act on; it names the
                // route holding the hostname or location.
                v.acceptance = Acceptance::Conflicted(refusal.message());
            }
        }
        let conflicted: std::collections::HashSet<&RouteKey> = refusals.iter().map(|r| r.route()).collect();
        let publish: BTreeMap<RouteKey, Arc<pb::Route>> = candidates
            .into_iter()
            .filter(|(key, _)| !conflicted.contains(key))
            .collect();
        for (key, route) in &publish {
            if let Some(v) = verdicts.get_mut(key) {
                v.published_generation = Some(route.generation);
            }
            if let Some(entry) = self.routes.get_mut(key) {
                entry.published = Some(route.clone());
            }
        }
        let libraries: BTreeMap<LibraryKey, Arc<pb::Library>> = publish
            .keys()
            .filter_map(|key| linked.remove(key))
            .flatten()
            .map(|l| (LibraryKey::of(&l), l))
            .collect();
        let library_verdicts = self.libraries.verdicts(&libraries, &naming);
        // Tombstones serve only the routes that name them now, or were just
        // published naming them.
        let still_named: BTreeSet<LibraryKey> = naming
            .keys()
            .cloned()
            .chain(publish.values().flat_map(|r| library::named(r)))
            .collect();
        self.libraries.forget_unnamed(&still_named);
        let named: BTreeSet<ServiceKey> = publish
            .values()
            .flat_map(|route| {
                route.locations.iter().filter_map(|l| {
                    let upstream = l.upstream.as_ref().filter(|u| !u.service.is_empty())?;
                    Some(ServiceKey {
                        namespace: route.namespace.clone(),
                        service: upstream.service.clone(),
                        port: upstream.port,
                    })
                })
            })
            .collect();
        let endpoints = named.into_iter().map(|key| self.lookup(&key).into_proto(key)).collect();
        Built {
            routes: publish,
            endpoints,
            libraries,
            verdicts,
            library_verdicts,
        }
    }

    /// The ready endpoints of a Service port, or why there are none.
    fn lookup(&self, key: &ServiceKey) -> Lookup {
        let name = format!("{}/{}", key.namespace, key.service);
        let Some(service) = self.services.get(&(key.namespace.clone(), key.service.clone())) else {
            return Lookup::Missing(format!("Service {name} not found"));
        };
        let Some(port_name) = u16::try_from(key.port)
            .ok()
            .and_then(|port| crate::endpoints::port_name(service, port))
        else {
            return Lookup::Missing(format!("Service {name} has no TCP port {}", key.port));
        };
        match self.endpoints.resolve(&key.namespace, &key.service, Some(&port_name)) {
            Resolution::Endpoints(endpoints) => Lookup::Endpoints(endpoints),
            Resolution::NoSuchService | Resolution::NoReadyEndpoints => Lookup::NoReady,
        }
    }

    /// The route to publish for `key` (current or last good generation), and
    /// whether every Service it names exists with the named port. No ready
    /// endpoint is not a reference error: pods come and go.
    fn resolve(&self, key: &RouteKey) -> (Option<Arc<pb::Route>>, Result<(), Unresolved>) {
        let entry = &self.routes[key];
        let Some(base) = entry.compiled.as_ref().ok().or(entry.last_good.as_ref()) else {
            return (None, Ok(()));
        };
        let mut missing = Vec::new();
        for location in &base.locations {
            let Some(upstream) = location.upstream.as_ref().filter(|u| !u.service.is_empty()) else {
                continue;
            };
            let service = ServiceKey {
                namespace: key.namespace.clone(),
                service: upstream.service.clone(),
                port: upstream.port,
            };
            if let Lookup::Missing(why) = self.lookup(&service) {
                missing.push(why);
            }
        }
        let refs = if missing.is_empty() {
            Ok(())
        } else {
            Err(Unresolved {
                reason: "BackendNotFound",
                message: missing.join("; "),
            })
        };
        (Some(base.clone()), refs)
    }
}

/// What [`RouteTable::build`] found.
#[derive(Debug, Default)]
pub struct Built {
    pub routes: BTreeMap<RouteKey, Arc<pb::Route>>,
    /// In `snapshot::endpoints_order`, one per Service port a published route names.
    pub endpoints: Vec<pb::ServiceEndpoints>,
    /// The libraries the published routes name, at the generation served.
    pub libraries: BTreeMap<LibraryKey, Arc<pb::Library>>,
    pub verdicts: Verdicts,
    pub library_verdicts: LibraryVerdicts,
}

/// A Service port's endpoints, as [`RouteTable::lookup`] finds them.
enum Lookup {
    Endpoints(Vec<String>),
    /// The Service and port exist, but no endpoint is ready.
    NoReady,
    /// The Service or its port does not exist; the route's ResolvedRefs says so.
    Missing(String),
}

impl Lookup {
    fn into_proto(self, key: ServiceKey) -> pb::ServiceEndpoints {
        let (endpoints, problem) = match self {
            Lookup::Endpoints(endpoints) => (endpoints, String::new()),
            Lookup::NoReady => (Vec::new(), "no ready endpoints".to_string()),
            Lookup::Missing(why) => (Vec::new(), why),
        };
        pb::ServiceEndpoints {
            namespace: key.namespace,
            service: key.service,
            port: key.port,
            endpoints,
            problem,
        }
    }
}

fn object_reference(route: &LuaRoute) -> k8s_openapi::api::core::v1::ObjectReference {
    use kube::Resource;
    route.object_ref(&())
}

#[cfg(test)]
mod tests {
    use super::*;
    use moongate_route::source::parse_routes;

    fn route(name: &str, generation: i64, created: i64, content: &str, extra: &str) -> LuaRoute {
        let yaml = format!(
            "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  hostnames: [h.test]\n  locations:\n    - path: /{name}\n      content: {content:?}\n{extra}"
        );
        let mut r = parse_routes(&yaml, None).unwrap().remove(0);
        r.metadata.generation = Some(generation);
        r.metadata.uid = Some(format!("uid-{name}"));
        r.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
        ));
        r
    }

    fn key(name: &str) -> RouteKey {
        RouteKey::new("ns", name)
    }

    #[test]
    fn an_invalid_generation_keeps_the_last_good_one_published() {
        let mut table = RouteTable::default();
        table.upsert(route("a", 1, 100, "ngx.say(1)", ""));
        let published = table.build().routes;
        let first = published[&key("a")].clone();
        table.upsert(route("a", 2, 100, "ngx.say(", ""));
        let Built {
            routes: published,
            verdicts,
            ..
        } = table.build();
        assert!(
            Arc::ptr_eq(&published[&key("a")], &first),
            "generation 1 stays, the same allocation"
        );
        let verdict = &verdicts[&key("a")];
        assert_eq!(verdict.generation, 2);
        assert_eq!(verdict.published_generation, Some(1));
        match &verdict.acceptance {
            Acceptance::Invalid(m) => assert!(m.contains("line 1") && m.contains("content"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Deleted and re-created (a new uid) with bad Lua: nothing good to keep.
        table.remove(&key("a"));
        let mut again = route("a", 1, 200, "ngx.say(", "");
        again.metadata.uid = Some("uid-other".into());
        table.upsert(again);
        let published = table.build().routes;
        assert!(!published.contains_key(&key("a")));
    }

    #[test]
    fn the_newer_of_two_routes_claiming_a_location_is_left_out() {
        let mut table = RouteTable::default();
        table.upsert(route("old", 1, 100, "ngx.say(1)", ""));
        let mut newer = route("new", 1, 200, "ngx.say(2)", "");
        newer.spec.locations[0].path = "/old".into();
        table.upsert(newer);
        let Built {
            routes: published,
            verdicts,
            ..
        } = table.build();
        assert!(published.contains_key(&key("old")) && !published.contains_key(&key("new")));
        match &verdicts[&key("new")].acceptance {
            Acceptance::Conflicted(m) => assert!(m.contains("ns/old"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(verdicts[&key("old")].acceptance, Acceptance::Accepted);
    }

    #[test]
    fn a_missing_service_or_port_is_a_resolved_refs_error_but_the_route_is_served() {
        let mut table = RouteTable::default();
        let upstream = "    - path: /api\n      upstream: {service: backend, port: 8080}\n";
        table.upsert(route("a", 1, 100, "ngx.say(1)", upstream));
        let Built {
            routes: published,
            verdicts,
            ..
        } = table.build();
        assert!(published.contains_key(&key("a")));
        let refs = verdicts[&key("a")].resolved_refs.clone().unwrap_err();
        assert_eq!(refs.reason, "BackendNotFound");
        assert!(refs.message.contains("Service ns/backend not found"), "{refs:?}");

        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "backend", "namespace": "ns"},
            "spec": {"ports": [{"port": 9090, "protocol": "TCP"}]}
        }))
        .unwrap();
        table.apply_service(service);
        let verdicts = table.build().verdicts;
        let refs = verdicts[&key("a")].resolved_refs.clone().unwrap_err();
        assert!(refs.message.contains("has no TCP port 8080"), "{refs:?}");
    }

    #[test]
    fn a_status_only_update_does_not_recompile() {
        let mut table = RouteTable::default();
        table.upsert(route("a", 1, 100, "ngx.say(1)", ""));
        let before = table.build().routes;
        let mut same = route("a", 1, 100, "ngx.say(1)", "");
        same.status = Some(LuaRouteStatus::default());
        table.upsert(same);
        let Built {
            routes: after,
            verdicts,
            ..
        } = table.build();
        assert!(Arc::ptr_eq(&before[&key("a")], &after[&key("a")]));
        assert!(
            verdicts[&key("a")].status.is_some(),
            "the newest status is kept for the writer"
        );
    }

    #[test]
    fn a_route_of_another_namespace_is_refused_the_hostname_until_the_owner_allows_it() {
        let mut table = RouteTable::default();
        table.upsert(route("shop", 1, 100, "ngx.say(1)", ""));
        let mut json = route("json", 1, 200, "ngx.say(2)", "");
        json.metadata.namespace = Some("other".into());
        table.upsert(json);
        let other = RouteKey::new("other", "json");
        let Built {
            routes: published,
            verdicts,
            ..
        } = table.build();
        assert!(published.contains_key(&key("shop")) && !published.contains_key(&other));
        match &verdicts[&other].acceptance {
            Acceptance::Conflicted(m) => assert!(
                m.contains(r#"hostname "h.test" belongs to namespace "ns""#)
                    && m.contains("ns/shop")
                    && m.contains(r#"must list "other" in spec.allowedNamespaces"#),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(verdicts[&other].published_generation, None);

        let mut shop = route("shop", 2, 100, "ngx.say(1)", "");
        shop.spec.allowed_namespaces = vec!["other".into()];
        table.upsert(shop);
        let Built {
            routes: published,
            verdicts,
            ..
        } = table.build();
        assert!(published.contains_key(&key("shop")) && published.contains_key(&other));
        assert_eq!(verdicts[&other].acceptance, Acceptance::Accepted);
        assert_eq!(verdicts[&other].published_generation, Some(1));
    }

    fn backend_service() -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "backend", "namespace": "ns"},
            "spec": {"ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}
        }))
        .unwrap()
    }

    fn backend_slice(addresses: &[&str]) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "backend-abc",
                "namespace": "ns",
                "labels": {"kubernetes.io/service-name": "backend"}
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 9000, "protocol": "TCP"}],
            "endpoints": addresses
                .iter()
                .map(|a| serde_json::json!({"addresses": [a], "conditions": {"ready": true}}))
                .collect::<Vec<_>>()
        }))
        .unwrap()
    }

    fn publish(table: &mut RouteTable, version: u64) -> (crate::published::Published, Verdicts) {
        let built = table.build();
        let published =
            crate::published::Published::with_libraries(version, built.routes, built.endpoints, built.libraries);
        (published, built.verdicts)
    }

    const UPSTREAM: &str = "    - path: /api\n      upstream: {service: backend, port: 8080}\n";

    #[test]
    fn an_endpoint_slice_change_is_a_delta_of_endpoints_only() {
        let mut table = RouteTable::default();
        table.upsert(route("a", 1, 100, "ngx.say(1)", UPSTREAM));
        table.apply_service(backend_service());
        table.apply_slice(&backend_slice(&["10.0.0.1"]));
        let (v1, verdicts) = publish(&mut table, 1);
        assert_eq!(verdicts[&key("a")].resolved_refs, Ok(()));
        assert_eq!(
            v1.snapshot().endpoints,
            [pb::ServiceEndpoints {
                namespace: "ns".into(),
                service: "backend".into(),
                port: 8080,
                endpoints: vec!["10.0.0.1:9000".into()],
                problem: String::new(),
            }]
        );
        let route_before = v1.routes[&key("a")].clone();

        table.apply_slice(&backend_slice(&["10.0.0.1", "10.0.0.2"]));
        let (v2, verdicts) = publish(&mut table, 2);
        assert_ne!(v2.content_hash, v1.content_hash, "a new version is published");
        assert!(
            Arc::ptr_eq(&v2.routes[&key("a")], &route_before),
            "the route is untouched"
        );
        let delta = v2.delta_from(&v1);
        assert!(delta.upserted.is_empty() && delta.removed.is_empty(), "{delta:?}");
        assert_eq!(delta.upserted_endpoints.len(), 1);
        assert_eq!(
            delta.upserted_endpoints[0].endpoints,
            ["10.0.0.1:9000", "10.0.0.2:9000"]
        );
        assert!(delta.removed_endpoints.is_empty());
        assert_eq!(verdicts[&key("a")].resolved_refs, Ok(()));

        // No ready endpoint: an entry saying so, and still no reference error.
        table.apply_slice(&backend_slice(&[]));
        let (v3, verdicts) = publish(&mut table, 3);
        assert_eq!(v3.snapshot().endpoints[0].problem, "no ready endpoints");
        assert_eq!(verdicts[&key("a")].resolved_refs, Ok(()));
    }

    #[test]
    fn missing_services_and_ports_are_published_with_their_problem() {
        let mut table = RouteTable::default();
        table.upsert(route("a", 1, 100, "ngx.say(1)", UPSTREAM));
        let (v, _) = publish(&mut table, 1);
        assert_eq!(v.snapshot().endpoints[0].problem, "Service ns/backend not found");
        table.upsert(route(
            "a",
            2,
            100,
            "ngx.say(1)",
            "    - path: /api\n      upstream: {service: backend, port: 81}\n",
        ));
        table.apply_service(backend_service());
        let (v, _) = publish(&mut table, 2);
        let endpoints = v.snapshot().endpoints;
        assert_eq!(endpoints.len(), 1, "only the port the route names now");
        assert_eq!(endpoints[0].problem, "Service ns/backend has no TCP port 81");
    }

    #[test]
    fn removing_the_last_route_naming_a_service_removes_its_endpoints() {
        let mut table = RouteTable::default();
        table.upsert(route("a", 1, 100, "ngx.say(1)", UPSTREAM));
        table.upsert(route(
            "b",
            1,
            100,
            "ngx.say(1)",
            UPSTREAM.replace("/api", "/b-api").as_str(),
        ));
        table.apply_service(backend_service());
        table.apply_slice(&backend_slice(&["10.0.0.1"]));
        let (v1, _) = publish(&mut table, 1);
        table.remove(&key("a"));
        let (v2, _) = publish(&mut table, 2);
        let delta = v2.delta_from(&v1);
        assert!(delta.removed_endpoints.is_empty(), "b still names it");
        assert!(delta.upserted_endpoints.is_empty());
        table.remove(&key("b"));
        let (v3, _) = publish(&mut table, 3);
        let delta = v3.delta_from(&v2);
        assert_eq!(delta.removed.len(), 1);
        assert_eq!(
            delta.removed_endpoints,
            [pb::ServiceKey {
                namespace: "ns".into(),
                service: "backend".into(),
                port: 8080
            }]
        );
        assert!(v3.snapshot().endpoints.is_empty());
    }

    #[test]
    fn a_route_left_out_names_no_endpoints() {
        let mut table = RouteTable::default();
        table.upsert(route("old", 1, 100, "ngx.say(1)", ""));
        let mut newer = route("new", 1, 200, "ngx.say(2)", UPSTREAM);
        newer.spec.locations[0].path = "/old".into();
        table.upsert(newer);
        let built = table.build();
        assert!(!built.routes.contains_key(&key("new")));
        assert!(built.endpoints.is_empty(), "{:?}", built.endpoints);
    }

    fn library(namespace: &str, name: &str, generation: i64, source: &str) -> LuaLibrary {
        let yaml = format!(
            "apiVersion: moongate.dev/v1alpha1\nkind: LuaLibrary\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  modules:\n    resty.jit-uuid: {source:?}\n"
        );
        let mut l = moongate_route::source::parse_documents(&yaml, None)
            .unwrap()
            .libraries
            .remove(0);
        l.metadata.generation = Some(generation);
        l.metadata.uid = Some(format!("uid-lib-{name}"));
        l
    }

    fn with_libraries(name: &str, generation: i64, libraries: &str) -> LuaRoute {
        let mut r = route(name, generation, 100, "ngx.say(1)", "");
        r.spec.libraries = libraries
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        r
    }

    #[test]
    fn routes_of_a_namespace_share_a_library_and_an_edit_is_a_delta_of_the_library_alone() {
        let mut table = RouteTable::default();
        table.upsert(with_libraries("a", 1, "shared"));
        table.upsert(with_libraries("b", 1, "shared"));
        table.upsert_library(library("ns", "shared", 1, "return {v = 1}"));
        let (v1, verdicts) = publish(&mut table, 1);
        assert_eq!(v1.routes.len(), 2);
        assert_eq!(v1.libraries.len(), 1, "carried once");
        assert_eq!(verdicts[&key("a")].resolved_refs, Ok(()));

        table.upsert_library(library("ns", "shared", 2, "return {v = 2}"));
        let built = table.build();
        let verdict = &built.library_verdicts[&LibraryKey::new("ns", "shared")];
        assert_eq!(verdict.published_generation, Some(2));
        assert_eq!(verdict.routes, [key("a"), key("b")]);
        let v2 = crate::published::Published::with_libraries(2, built.routes, built.endpoints, built.libraries);
        let delta = v2.delta_from(&v1);
        assert!(delta.upserted.is_empty(), "no route changes: {:?}", delta.upserted);
        assert_eq!(delta.upserted_libraries.len(), 1);
        assert_eq!(delta.upserted_libraries[0].generation, 2);
    }

    #[test]
    fn a_broken_library_edit_keeps_its_last_good_generation_serving() {
        let mut table = RouteTable::default();
        table.upsert(with_libraries("a", 1, "shared"));
        table.upsert_library(library("ns", "shared", 1, "return {}"));
        let (v1, _) = publish(&mut table, 1);
        table.upsert_library(library("ns", "shared", 2, "return {"));
        let built = table.build();
        assert!(Arc::ptr_eq(
            &built.libraries[&LibraryKey::new("ns", "shared")],
            &v1.libraries[&LibraryKey::new("ns", "shared")]
        ));
        let verdict = &built.verdicts[&key("a")];
        assert_eq!(verdict.acceptance, Acceptance::Accepted, "the route itself is fine");
        let refs = verdict.resolved_refs.clone().unwrap_err();
        assert_eq!(refs.reason, "LibraryInvalid");
        assert!(
            refs.message.contains("generation 2 of LuaLibrary ns/shared is invalid")
                && refs.message.contains("module resty.jit-uuid: line 1")
                && refs.message.ends_with("keep its generation 1"),
            "{}",
            refs.message
        );
        let library = &built.library_verdicts[&LibraryKey::new("ns", "shared")];
        assert!(library.accepted.as_ref().unwrap_err().contains("line 1"));
        assert_eq!(library.serving_generation, Some(1));
    }

    #[test]
    fn a_route_naming_a_missing_library_keeps_its_last_published_generation() {
        let mut table = RouteTable::default();
        table.upsert(with_libraries("a", 1, ""));
        let first = table.build().routes[&key("a")].clone();
        table.upsert(with_libraries("a", 2, "nowhere"));
        let built = table.build();
        assert!(
            Arc::ptr_eq(&built.routes[&key("a")], &first),
            "generation 1 keeps serving"
        );
        let verdict = &built.verdicts[&key("a")];
        assert_eq!(verdict.published_generation, Some(1));
        match &verdict.acceptance {
            Acceptance::Unlinked(u) => {
                assert_eq!(u.reason, "LibraryNotFound");
                assert_eq!(u.message, "LuaLibrary ns/nowhere not found");
            }
            other => panic!("{other:?}"),
        }
        // A library of the same name in another namespace does not count.
        table.upsert_library(library("other", "nowhere", 1, "return {}"));
        assert_eq!(table.build().verdicts[&key("a")].published_generation, Some(1));
        // Created in the route's namespace: generation 2 goes out.
        table.upsert_library(library("ns", "nowhere", 1, "return {}"));
        let built = table.build();
        assert_eq!(built.verdicts[&key("a")].published_generation, Some(2));
        assert_eq!(built.verdicts[&key("a")].acceptance, Acceptance::Accepted);
    }

    #[test]
    fn a_library_that_never_compiled_refuses_a_new_route_and_a_clash_is_named() {
        let mut table = RouteTable::default();
        table.upsert_library(library("ns", "shared", 1, "return {"));
        table.upsert(with_libraries("a", 1, "shared"));
        let built = table.build();
        assert!(built.routes.is_empty());
        match &built.verdicts[&key("a")].acceptance {
            Acceptance::Unlinked(u) => assert_eq!(u.reason, "LibraryInvalid", "{u:?}"),
            other => panic!("{other:?}"),
        }
        let mut own = with_libraries("b", 1, "good");
        own.spec.modules.insert("resty.jit-uuid".into(), "return {}".into());
        table.upsert(own);
        table.upsert_library(library("ns", "good", 1, "return {}"));
        match &table.build().verdicts[&key("b")].acceptance {
            Acceptance::Unlinked(u) => {
                assert_eq!(u.reason, "LibraryConflict");
                assert!(
                    u.message.contains(r#"module "resty.jit-uuid" of library "good""#),
                    "{}",
                    u.message
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_deleted_library_keeps_serving_the_routes_naming_it_until_they_stop() {
        let mut table = RouteTable::default();
        table.upsert(with_libraries("a", 1, "shared"));
        table.upsert_library(library("ns", "shared", 1, "return {}"));
        table.build();
        table.remove_library(&LibraryKey::new("ns", "shared"));
        let built = table.build();
        assert_eq!(built.libraries.len(), 1, "the tombstone serves generation 1");
        assert!(built.library_verdicts.is_empty(), "no status for a deleted library");
        let refs = built.verdicts[&key("a")].resolved_refs.clone().unwrap_err();
        assert_eq!(refs.reason, "LibraryNotFound");
        table.upsert(with_libraries("a", 2, ""));
        let built = table.build();
        assert!(built.libraries.is_empty());
        table.upsert(with_libraries("a", 3, "shared"));
        assert!(
            matches!(table.build().verdicts[&key("a")].acceptance, Acceptance::Unlinked(_)),
            "the tombstone went when no route named it"
        );
    }
}
