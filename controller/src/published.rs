//! One published version of the fleet's configuration, and the delta between two.
//!
//! Invariants: a `Published` is immutable once built; its `content_hash` is the
//! hash `snapshot::build` computes over the same routes, so a dataplane that
//! applies a delta can check it reached exactly this state. Routes are shared
//! (`Arc`) between versions, so an unchanged route is the same allocation in
//! both and deltas are found by pointer comparison.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use moongate_proto::snapshot;
use moongate_proto::v1 as pb;
use moongate_route::RouteKey;

#[derive(Debug, Default)]
pub struct Published {
    pub version: u64,
    pub content_hash: Vec<u8>,
    pub routes: BTreeMap<RouteKey, Arc<pb::Route>>,
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
    pub fn new(version: u64, routes: BTreeMap<RouteKey, Arc<pb::Route>>) -> Published {
        let content_hash = snapshot::content_hash(routes.values().map(Arc::as_ref), std::iter::empty());
        Published {
            version,
            content_hash,
            routes,
            ..Default::default()
        }
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
                    endpoints: Vec::new(),
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
        pb::Delta {
            version: self.version,
            base_version: base.version,
            content_hash: self.content_hash.clone(),
            upserted,
            removed,
            ..Default::default()
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
            snapshot::build(snap.routes.clone(), Vec::new(), 9).content_hash,
            v.content_hash
        );
        assert_ne!(
            published(7, &[&route("x", 4), &route("a", 1)]).content_hash,
            v.content_hash
        );
    }
}
