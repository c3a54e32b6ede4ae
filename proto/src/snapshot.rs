//! Snapshot ordering and content hashing: the controller builds snapshots and
//! deltas with these, and a dataplane checks what it applied with them, so they
//! live beside the wire contract rather than on either side of it.
//!
//! Invariant: `content_hash` depends only on the set of routes, never on the
//! order they come in; `order` is the order a dataplane resolves overlapping
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

/// A snapshot of `routes` at `version`: routes in dataplane order, hashed.
pub fn build(mut routes: Vec<pb::Route>, version: u64) -> pb::Snapshot {
    routes.sort_by(order);
    pb::Snapshot {
        version,
        content_hash: content_hash(routes.iter()),
        routes,
    }
}

/// SHA-256 over the routes' encodings in dataplane order, whatever order they
/// come in: the controller and a dataplane applying a delta must agree on it.
pub fn content_hash<'a>(routes: impl Iterator<Item = &'a pb::Route>) -> Vec<u8> {
    let mut routes: Vec<&pb::Route> = routes.collect();
    routes.sort_by(|a, b| order(a, b));
    let mut hasher = Sha256::new();
    let mut buf = Vec::new();
    for route in routes {
        buf.clear();
        route.encode(&mut buf).expect("a Vec grows as needed");
        hasher.update(&buf);
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
        let snapshot = build(vec![route("b", "x", 1), route("a", "y", 2), route("a", "x", 1)], 3);
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
        assert_eq!(content_hash([&a, &b].into_iter()), content_hash([&b, &a].into_iter()));
        let changed = route("b", "y", 3);
        assert_ne!(
            content_hash([&a, &b].into_iter()),
            content_hash([&a, &changed].into_iter())
        );
    }
}
