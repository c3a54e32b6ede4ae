//! Hostname ownership: which namespace a hostname belongs to, and which routes
//! of other namespaces name a hostname they were not given.
//!
//! As a Gateway API listener's hostname belongs to its Gateway, a hostname here
//! belongs to one namespace: the namespace of the oldest route naming it, in
//! dataplane order (creation time, then namespace/name; see
//! [`moongate_proto::snapshot::order`]). Routes without hostnames claim the any-host key
//! [`ANY_HOST`], owned the same way. The owning namespace shares a hostname with
//! `allowedNamespaces`: the set allowed on a hostname is the union of
//! `allowed_namespaces` over the owning namespace's routes that name it, so an
//! allowance is per hostname, and a route of another namespace grants nothing.
//!
//! Why it matters: this decides who can take whose requests (a
//! Regex location of a newer namespace would otherwise beat an older
//! namespace's Prefix location on the same host, bearer tokens included).
//!
//! Invariants of [`taken`]:
//! - Ownership and allowances depend only on which routes name which hostnames
//!   (and their allowances), never on whether a route is refused for another
//!   reason: a refused route still holds the hostnames it names. That keeps
//!   ownership stable: refusing one route can never move another hostname to a
//!   different namespace and so refuse an unrelated route in turn.
//! - A route is refused iff one of its host keys is owned by another namespace
//!   that does not allow the route's namespace (by name or `*`). The caller
//!   refuses it whole, never half a route.
//! - Routes of the owning namespace are never refused here.
//! - The output is the same whatever order the input comes in: routes oldest
//!   first, each route's host keys in declaration order.
//! - Cost is O(total hostnames) with one hash map lookup per hostname, twice.

use std::collections::{HashMap, HashSet};

use moongate_proto::v1 as pb;

use crate::RouteKey;
use crate::index::{ANY_HOST, host_keys};

/// A route names a hostname that belongs to another namespace, which has not
/// allowed the route's namespace on it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostnameTaken {
    /// The refused route.
    pub route: RouteKey,
    /// The hostname, lowercased, or [`ANY_HOST`] for "any host".
    pub hostname: String,
    /// The namespace the hostname belongs to.
    pub owner_namespace: String,
    /// The oldest route of the owning namespace naming the hostname: the one
    /// that made it the owner.
    pub owner_route: RouteKey,
}

impl HostnameTaken {
    /// For the route's status: names the hostname, the owner (namespace and one
    /// route), and what the owner must do to share it, e.g.
    /// `hostname "shop.example.com" belongs to namespace "a" (route a/shop names
    /// it); to serve it from namespace "b", a LuaRoute of namespace "a" that names
    /// "shop.example.com" must list "b" in spec.allowedNamespaces`.
    pub fn message(&self) -> String {
        let owner = &self.owner_route;
        let wanted = &self.route.namespace;
        if self.hostname == ANY_HOST {
            format!(
                "the any-host key \"*\" (LuaRoutes without hostnames) belongs to namespace {:?} (route {owner} \
                 has no hostnames); to serve any host from namespace {wanted:?}, a LuaRoute of namespace {:?} \
                 without hostnames must list {wanted:?} in spec.allowedNamespaces",
                self.owner_namespace, self.owner_namespace
            )
        } else {
            format!(
                "hostname {:?} belongs to namespace {:?} (route {owner} names it); to serve it from namespace \
                 {wanted:?}, a LuaRoute of namespace {:?} that names {:?} must list {wanted:?} in \
                 spec.allowedNamespaces",
                self.hostname, self.owner_namespace, self.owner_namespace, self.hostname
            )
        }
    }
}

/// The namespace a host key belongs to and whom it lets in.
struct Owner<'a> {
    /// Index of the oldest route naming the key; its namespace owns it.
    route: usize,
    allowed: HashSet<&'a str>,
}

/// The routes naming hostnames of other namespaces that did not allow them (see
/// the module doc). Each refused route appears once per such hostname.
pub fn taken<'a>(routes: impl IntoIterator<Item = &'a pb::Route>) -> Vec<HostnameTaken> {
    let mut routes: Vec<&pb::Route> = routes.into_iter().collect();
    routes.sort_by(|a, b| moongate_proto::snapshot::order(a, b));
    let keys: Vec<Vec<String>> = routes.iter().map(|r| host_keys(r)).collect();

    // Oldest first, so the first route to name a key owns it; the owner's
    // later routes add their allowances. All allowances are in before any
    // route is judged, so an allowance added by a newer route counts.
    let mut owners: HashMap<&str, Owner<'a>> = HashMap::new();
    for (i, (&route, keys)) in routes.iter().zip(&keys).enumerate() {
        for key in keys {
            let owner = owners.entry(key.as_str()).or_insert_with(|| Owner {
                route: i,
                allowed: HashSet::new(),
            });
            if routes[owner.route].namespace == route.namespace {
                owner
                    .allowed
                    .extend(route.allowed_namespaces.iter().map(String::as_str));
            }
        }
    }

    let mut out = Vec::new();
    for (route, keys) in routes.iter().zip(&keys) {
        for key in keys {
            let owner = &owners[key.as_str()];
            let owning = routes[owner.route];
            let allowed = owning.namespace == route.namespace
                || owner.allowed.contains("*")
                || owner.allowed.contains(route.namespace.as_str());
            if !allowed {
                out.push(HostnameTaken {
                    route: RouteKey::of(route),
                    hostname: key.clone(),
                    owner_namespace: owning.namespace.clone(),
                    owner_route: RouteKey::of(owning),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(ns: &str, name: &str, created_at: i64, hosts: &[&str], allowed: &[&str]) -> pb::Route {
        pb::Route {
            namespace: ns.to_string(),
            name: name.to_string(),
            created_at,
            hostnames: hosts.iter().map(|h| h.to_string()).collect(),
            allowed_namespaces: allowed.iter().map(|a| a.to_string()).collect(),
            locations: vec![pb::Location {
                path: format!("/{name}"),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn refused(found: &[HostnameTaken]) -> Vec<String> {
        let mut v: Vec<String> = found.iter().map(|t| format!("{}@{}", t.route, t.hostname)).collect();
        v.dedup();
        v
    }

    fn key(ns: &str, name: &str) -> RouteKey {
        RouteKey::new(ns, name)
    }

    #[test]
    fn the_first_namespace_to_name_a_hostname_owns_it() {
        let a1 = route("a", "shop", 10, &["shop.example.com"], &[]);
        let a2 = route("a", "api", 30, &["shop.example.com"], &[]);
        let b = route("b", "json", 20, &["shop.example.com"], &[]);
        let found = taken([&a1, &a2, &b]);
        assert_eq!(
            found,
            vec![HostnameTaken {
                route: key("b", "json"),
                hostname: "shop.example.com".into(),
                owner_namespace: "a".into(),
                owner_route: key("a", "shop"),
            }],
            "a's own newer route stays; b's route is refused"
        );
    }

    #[test]
    fn the_refusal_names_the_hostname_the_owner_and_how_to_get_access() {
        let a = route("team-a", "shop", 10, &["Shop.Example.com"], &[]);
        let b = route("team-b", "json", 20, &["shop.example.com"], &[]);
        let found = taken([&b, &a]);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].message(),
            r#"hostname "shop.example.com" belongs to namespace "team-a" (route team-a/shop names it); to serve it from namespace "team-b", a LuaRoute of namespace "team-a" that names "shop.example.com" must list "team-b" in spec.allowedNamespaces"#
        );
    }

    #[test]
    fn the_owner_allows_a_namespace_by_name_or_any_with_a_star() {
        let by_name = route("a", "shop", 1, &["h"], &["b"]);
        let b = route("b", "json", 2, &["h"], &[]);
        let c = route("c", "other", 3, &["h"], &[]);
        assert_eq!(refused(&taken([&by_name, &b, &c])), ["c/other@h"]);

        let any = route("a", "shop", 1, &["h"], &["*"]);
        assert!(taken([&any, &b, &c]).is_empty());
    }

    #[test]
    fn an_allowance_on_a_newer_route_of_the_owner_counts() {
        // b/json is older than the route that allows it: allowances are
        // gathered before any route is judged.
        let a1 = route("a", "shop", 1, &["h"], &[]);
        let b = route("b", "json", 2, &["h"], &[]);
        let a2 = route("a", "grant", 3, &["h"], &["b"]);
        assert!(taken([&b, &a2, &a1]).is_empty());
    }

    #[test]
    fn an_allowance_covers_only_the_hostnames_of_its_route() {
        // a allows b on h1 only (the route naming h2 allows nobody).
        let a1 = route("a", "one", 1, &["h1"], &["b"]);
        let a2 = route("a", "two", 2, &["h2"], &[]);
        let b = route("b", "both", 3, &["h1", "h2"], &[]);
        let b1 = route("b", "just-one", 4, &["h1"], &[]);
        assert_eq!(refused(&taken([&a1, &a2, &b, &b1])), ["b/both@h2"]);
    }

    #[test]
    fn allowances_on_routes_of_other_namespaces_grant_nothing() {
        let a = route("a", "shop", 1, &["h"], &["b"]);
        // b is allowed, and tries to pass it on to c.
        let b = route("b", "json", 2, &["h"], &["c", "*"]);
        let c = route("c", "other", 3, &["h"], &[]);
        assert_eq!(refused(&taken([&a, &b, &c])), ["c/other@h"]);
    }

    #[test]
    fn ownership_passes_on_when_the_owner_stops_naming_the_hostname() {
        let a1 = route("a", "shop", 1, &["h"], &[]);
        let a2 = route("a", "shop2", 2, &["h"], &[]);
        let b = route("b", "json", 3, &["h"], &[]);
        let c = route("c", "other", 4, &["h"], &[]);
        assert_eq!(refused(&taken([&a1, &a2, &b, &c])), ["b/json@h", "c/other@h"]);
        // a's first route goes: a still owns h through its other, older than b's.
        let found = taken([&a2, &b, &c]);
        assert_eq!(refused(&found), ["b/json@h", "c/other@h"]);
        assert!(found.iter().all(|t| t.owner_route == key("a", "shop2")));
        // Every route of a goes: h passes to b, the next oldest.
        let found = taken([&b, &c]);
        assert_eq!(refused(&found), ["c/other@h"]);
        assert_eq!(found[0].owner_route, key("b", "json"));
        // An a route that renames its host gives h up as well.
        let renamed = route("a", "shop", 1, &["elsewhere"], &[]);
        assert_eq!(refused(&taken([&renamed, &b, &c])), ["c/other@h"]);
        // Ownership is by the oldest route naming h, with no memory: once a's
        // oldest route goes, an older route of b (refused until then) outranks
        // a's newer one, and b owns h. A route deleted and re-created is newer.
        let a3 = route("a", "late", 5, &["h"], &[]);
        let found = taken([&b, &a3]);
        assert_eq!(refused(&found), ["a/late@h"]);
        assert_eq!(found[0].owner_route, key("b", "json"));
    }

    #[test]
    fn the_any_host_key_is_owned_the_same_way() {
        let a = route("a", "catch-all", 1, &[], &[]);
        let named = route("b", "named", 2, &["b.example.com"], &[]);
        let b = route("b", "any", 3, &[], &[]);
        let found = taken([&b, &named, &a]);
        assert_eq!(refused(&found), ["b/any@*"]);
        assert_eq!(found[0].owner_route, key("a", "catch-all"));
        let m = found[0].message();
        assert!(
            m.contains(r#"the any-host key "*""#) && m.contains(r#"namespace "a""#) && m.contains("a/catch-all"),
            "{m}"
        );
        assert!(
            m.contains(r#"without hostnames must list "b" in spec.allowedNamespaces"#),
            "{m}"
        );
        // The key "*" is not a hostname: allowing b on a named host does not let it serve any host.
        let a_named = route("a", "named", 0, &["b.example.com"], &["b"]);
        assert_eq!(refused(&taken([&a, &a_named, &named, &b])), ["b/any@*"]);
        let a_shares = route("a", "catch-all", 1, &[], &["b"]);
        assert!(taken([&a_shares, &named, &b]).is_empty());
    }

    #[test]
    fn every_foreign_hostname_of_a_route_is_reported() {
        let a = route("a", "shop", 1, &["x", "y"], &[]);
        let b = route("b", "mixed", 2, &["y", "mine", "x"], &[]);
        assert_eq!(refused(&taken([&a, &b])), ["b/mixed@y", "b/mixed@x"]);
    }

    #[test]
    fn ties_on_creation_time_break_by_namespace_then_name() {
        let b = route("b", "a", 5, &["h"], &[]);
        let a = route("a", "z", 5, &["h"], &[]);
        let found = taken([&b, &a]);
        assert_eq!(refused(&found), ["b/a@h"]);
        assert_eq!(found[0].owner_route, key("a", "z"));
    }

    #[test]
    fn the_result_does_not_depend_on_the_input_order() {
        let routes = [
            route("a", "one", 1, &["h1", "h2"], &["c"]),
            route("b", "two", 2, &["h1"], &[]),
            route("c", "three", 3, &["h1", "h3"], &[]),
            route("b", "four", 4, &["h3", "h4"], &[]),
            route("a", "five", 5, &["h2"], &["b"]),
            route("d", "six", 6, &[], &[]),
            route("e", "seven", 7, &[], &[]),
        ];
        let want = taken(&routes);
        assert_eq!(
            refused(&want),
            ["b/two@h1", "b/four@h3", "e/seven@*"],
            "b is allowed on h2 only, c on h1 and h2"
        );
        // Every rotation and the reversal of every rotation.
        let mut order: Vec<&pb::Route> = routes.iter().collect();
        for _ in 0..routes.len() {
            order.rotate_left(1);
            assert_eq!(taken(order.iter().copied()), want);
            let reversed: Vec<&pb::Route> = order.iter().rev().copied().collect();
            assert_eq!(taken(reversed), want);
        }
    }

    #[test]
    fn scales_to_thousands_of_routes() {
        // 3000 routes in 20 namespaces, 10 hostnames each, all distinct but one shared.
        let routes: Vec<pb::Route> = (0..3000)
            .map(|i| {
                let hosts: Vec<String> = (0..10).map(|h| format!("h{i}-{h}.example.com")).collect();
                let mut hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
                hosts.push("shared.example.com");
                route(&format!("ns{}", i % 20), &format!("r{i:04}"), i, &hosts, &[])
            })
            .collect();
        let found = taken(&routes);
        // ns0 owns the shared host (route 0); the 19 other namespaces' routes are refused.
        assert_eq!(found.len(), 3000 - 150);
        assert!(found.iter().all(|t| t.owner_route == key("ns0", "r0000")));
    }
}
