//! Snapshot ordering and content hashing: the controller builds snapshots and
//! deltas with these, and a dataplane checks what it applied with them, so they
//! live beside the wire contract rather than on either side of it.
//!
//! Invariant: `content_hash` depends only on the set of routes, the set of
//! service endpoints and the set of libraries, never on the order they come in; `order` is the order a dataplane resolves overlapping
//! routes in (creation time, then namespace, then name).

use std::cmp::Ordering;

use prost::Message;
use sha2::{Digest, Sha256};

use crate::v1 as pb;

/// The order a dataplane resolves overlapping routes in: the oldest route
/// first (creation time), then namespace/name.
pub fn order(a: &pb::Route, b: &pb::Route) -> Ordering {
    (a.created_at, &a.namespace, &a.name).cmp(&(b.created_at, &b.namespace, &b.name))
}

/// The order service endpoints are sent and hashed in: namespace, service, port.
pub fn endpoints_order(a: &pb::ServiceEndpoints, b: &pb::ServiceEndpoints) -> Ordering {
    endpoints_key(a).cmp(&endpoints_key(b))
}

fn endpoints_key(e: &pb::ServiceEndpoints) -> (&str, &str, u32) {
    (&e.namespace, &e.service, e.port)
}

/// The order libraries are sent and hashed in: namespace, name.
pub fn libraries_order(a: &pb::Library, b: &pb::Library) -> Ordering {
    (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
}

/// A snapshot of `routes`, `endpoints` and `libraries` at `version`: routes
/// in dataplane order, endpoints and libraries in key order, hashed.
pub fn build(
    mut routes: Vec<pb::Route>,
    mut endpoints: Vec<pb::ServiceEndpoints>,
    mut libraries: Vec<pb::Library>,
    version: u64,
) -> pb::Snapshot {
    routes.sort_by(order);
    endpoints.sort_by(endpoints_order);
    libraries.sort_by(libraries_order);
    pb::Snapshot {
        version,
        content_hash: content_hash(routes.iter(), endpoints.iter(), libraries.iter()),
        routes,
        endpoints,
        libraries,
    }
}

/// SHA-256 over the routes' encodings in dataplane order, then the endpoints'
/// and the libraries' in key order, whatever order they come in: the
/// controller and a dataplane applying a delta must agree on it.
pub fn content_hash<'a, 'b, 'c>(
    routes: impl Iterator<Item = &'a pb::Route>,
    endpoints: impl Iterator<Item = &'b pb::ServiceEndpoints>,
    libraries: impl Iterator<Item = &'c pb::Library>,
) -> Vec<u8> {
    let mut routes: Vec<&pb::Route> = routes.collect();
    routes.sort_by(|a, b| order(a, b));
    let mut endpoints: Vec<&pb::ServiceEndpoints> = endpoints.collect();
    endpoints.sort_by(|a, b| endpoints_order(a, b));
    let mut hasher = Sha256::new();
    let mut buf = Vec::new();
    for route in routes {
        buf.clear();
        route.encode(&mut buf).expect("a Vec grows as needed");
        hasher.update(&buf);
    }
    // A separator, so that no set of routes hashes like routes plus endpoints.
    hasher.update(b"\0endpoints\0");
    for e in endpoints {
        buf.clear();
        e.encode(&mut buf).expect("a Vec grows as needed");
        hasher.update(&buf);
    }
    // Without libraries the hash is what it was before they existed, so a
    // dataplane's persisted snapshot still matches after an upgrade.
    let mut libraries: Vec<&pb::Library> = libraries.collect();
    if !libraries.is_empty() {
        libraries.sort_by(|a, b| libraries_order(a, b));
        hasher.update(b"\0libraries\0");
        for l in libraries {
            buf.clear();
            l.encode(&mut buf).expect("a Vec grows as needed");
            hasher.update(&buf);
        }
    }
    hasher.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(namespace: &str, name: &str, created_at: i64) -> pb::Route {
        pb::Route {
            namespace: namespace.into(),
            name: name.into(),
            created_at,
            ..Default::default()
        }
    }

    #[test]
    fn oldest_first_then_namespace_then_name() {
        let snapshot = build(
            vec![route("b", "x", 1), route("a", "y", 2), route("a", "x", 1)],
            Vec::new(),
            Vec::new(),
            3,
        );
        let names: Vec<_> = snapshot
            .routes
            .iter()
            .map(|r| (r.namespace.as_str(), r.name.as_str()))
            .collect();
        assert_eq!(names, [("a", "x"), ("b", "x"), ("a", "y")]);
        assert_eq!(snapshot.version, 3);
    }

    #[test]
    fn the_hash_ignores_input_order_but_not_content() {
        let (a, b) = (route("a", "x", 1), route("b", "y", 2));
        let none = std::iter::empty;
        assert_eq!(
            content_hash([&a, &b].into_iter(), none(), std::iter::empty()),
            content_hash([&b, &a].into_iter(), none(), std::iter::empty())
        );
        let changed = route("b", "y", 3);
        assert_ne!(
            content_hash([&a, &b].into_iter(), none(), std::iter::empty()),
            content_hash([&a, &changed].into_iter(), none(), std::iter::empty())
        );
    }

    #[test]
    fn the_hash_covers_endpoints_whatever_their_order() {
        let a = route("a", "x", 1);
        let ep = |service: &str, endpoints: &[&str]| pb::ServiceEndpoints {
            namespace: "a".into(),
            service: service.into(),
            port: 80,
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            problem: String::new(),
        };
        let (web, api) = (ep("web", &["10.0.0.1:80"]), ep("api", &["10.0.0.2:80"]));
        let hash =
            |eps: &[&pb::ServiceEndpoints]| content_hash(std::iter::once(&a), eps.iter().copied(), std::iter::empty());
        assert_eq!(hash(&[&web, &api]), hash(&[&api, &web]));
        assert_ne!(hash(&[&web, &api]), hash(&[&web]));
        assert_ne!(hash(&[&web]), hash(&[&ep("web", &["10.0.0.3:80"])]));
    }

    #[test]
    fn the_hash_covers_libraries_whatever_their_order() {
        let a = route("a", "x", 1);
        let lib = |name: &str, generation: i64| pb::Library {
            namespace: "a".into(),
            name: name.into(),
            generation,
            modules: Vec::new(),
        };
        let (one, two) = (lib("one", 1), lib("two", 1));
        let hash = |libs: &[&pb::Library]| content_hash(std::iter::once(&a), std::iter::empty(), libs.iter().copied());
        assert_eq!(hash(&[&one, &two]), hash(&[&two, &one]));
        assert_ne!(hash(&[&one, &two]), hash(&[&one]));
        assert_ne!(hash(&[&one]), hash(&[&lib("one", 2)]));
        assert_eq!(
            hash(&[]),
            content_hash(std::iter::once(&a), std::iter::empty(), std::iter::empty())
        );
    }
}
