//! The hostnames × locations index over accepted routes: which routes are
//! refused, by hostname ownership ([`crate::hostnames`]) and by location
//! conflicts, and why. [`admit`] is the one place both rules run, for the
//! controller and for standalone mode alike.
//!
//! **Order of the rules:** hostname ownership first: a route naming a hostname
//! of another namespace that did not allow it is refused. Location conflicts
//! are then found among the routes that remain, so a refused route claims no
//! location and cannot push out a route of the owning namespace.
//!
//! **Location conflicts.**
//! Routes are taken in dataplane order (creation time, then namespace/name; see
//! [`moongate_proto::snapshot::order`]). A route *claims* every (hostname, location) pair it
//! serves: each of its hostnames (or the key `*` when its hostname list is empty,
//! meaning "any host") crossed with each of its locations, a location being a
//! match kind plus a path — one nginx `location` line.
//!
//! Two routes conflict when they claim the same pair: the same nginx `location`
//! twice on the same `server`. The older route keeps the pair; the newer route is
//! in conflict. Hostnames are compared literally after ASCII lowercasing: `*` is
//! only the any-host key, and `*.example.com` is just a name, with no wildcard
//! matching. Which locations are the same is [`LocationKey`]'s rule, the one the
//! dataplane's location index applies too.
//!
//! **What the caller does with a refusal:** it drops the route *entirely*
//! from what it pushes to dataplanes (never half a route) and reports
//! [`Refusal::message`] on that route's status. [`retain_admitted`] does the
//! dropping.
//!
//! Invariants of [`conflicts`]:
//! - Routes are processed oldest first; a route is kept iff none of its pairs is
//!   claimed by a route kept before it. A dropped route claims nothing, so a route
//!   that overlaps only a dropped one is kept, and dropping a route can never
//!   create a conflict among the kept ones.
//! - Every reported `owner` is a kept route, and no kept route appears as
//!   `route`; every dropped route has at least one conflict.
//! - A route never conflicts with itself (repeated hostnames are harmless).
//! - The output is the same whatever order the input comes in: routes oldest
//!   first, then each route's locations in declaration order, then its hostnames
//!   in declaration order.
//! - Cost is O(total pairs) with one hash map lookup per pair.

use std::collections::{HashMap, HashSet};

use moongate_proto::snapshot::order;
use moongate_proto::v1 as pb;

use crate::RouteKey;
use crate::hostnames::{self, HostnameTaken};
use crate::location::LocationKey;
pub use crate::location::nginx_location;

/// The any-host key: a route with an empty hostname list.
pub const ANY_HOST: &str = "*";

/// A newer route serves a (hostname, location) pair an older route already serves.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Conflict {
    /// The newer route, the one to drop.
    pub route: RouteKey,
    /// The hostname both serve, lowercased, or `*` for "any host".
    pub hostname: String,
    /// The location in nginx notation: `= /exact`, `/prefix`, `^~ /p`, `~ re`, `~* re`.
    pub location: String,
    /// The older route that keeps the pair.
    pub owner: RouteKey,
}

impl Conflict {
    /// For the route's status, e.g.
    /// `location "= /hello" on host "a.example.com" is already served by default/older`.
    pub fn message(&self) -> String {
        format!(
            "location {:?} on host {:?} is already served by {}",
            self.location, self.hostname, self.owner
        )
    }
}

/// The keys a route claims on: its lowercased hostnames, or `*` when it has
/// none; in declaration order, without repeats.
pub(crate) fn host_keys(route: &pb::Route) -> Vec<String> {
    if route.hostnames.is_empty() {
        return vec![ANY_HOST.to_string()];
    }
    let mut seen = HashSet::with_capacity(route.hostnames.len());
    route
        .hostnames
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .filter(|h| seen.insert(h.clone()))
        .collect()
}

/// The conflicts among `routes` (see the module doc for the rules). Routes named
/// in [`Conflict::route`] are to be dropped; all others are kept.
pub fn conflicts<'a>(routes: impl IntoIterator<Item = &'a pb::Route>) -> Vec<Conflict> {
    let mut routes: Vec<&pb::Route> = routes.into_iter().collect();
    routes.sort_by(|a, b| order(a, b));

    // (hostname, location) -> index into `routes` of the kept owner.
    let mut owners: HashMap<(String, LocationKey<'_>), usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let hosts = host_keys(route);
        let before = out.len();
        for location in &route.locations {
            for host in &hosts {
                // A borrowed lookup would need a custom key type; hostnames are short.
                let key = (host.clone(), LocationKey::of(location));
                if let Some(&owner) = owners.get(&key)
                    && owner != i
                {
                    let owner = routes[owner];
                    out.push(Conflict {
                        route: RouteKey::of(route),
                        hostname: host.clone(),
                        location: nginx_location(location),
                        owner: RouteKey::of(owner),
                    });
                }
            }
        }
        if out.len() == before {
            for location in &route.locations {
                for host in &hosts {
                    owners.entry((host.clone(), LocationKey::of(location))).or_insert(i);
                }
            }
        }
    }
    out
}

/// Why a route is left out of what dataplanes serve.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// It names a hostname another namespace owns and did not share with it.
    Hostname(HostnameTaken),
    /// An older route serves one of its (hostname, location) pairs.
    Location(Conflict),
}

impl Refusal {
    /// Namespace and name of the refused route.
    pub fn route(&self) -> &RouteKey {
        match self {
            Refusal::Hostname(t) => &t.route,
            Refusal::Location(c) => &c.route,
        }
    }

    /// The older route that holds what the refused route wanted.
    pub fn holder(&self) -> &RouteKey {
        match self {
            Refusal::Hostname(t) => &t.owner_route,
            Refusal::Location(c) => &c.owner,
        }
    }

    /// For the route's status: names the hostname (and location), the route
    /// holding it and, for a hostname, how to get access.
    pub fn message(&self) -> String {
        match self {
            Refusal::Hostname(t) => t.message(),
            Refusal::Location(c) => c.message(),
        }
    }
}

/// The refusals among `routes` (see the module doc): first every hostname a
/// route may not serve, oldest route first, then the location conflicts among
/// the routes that remain. Routes named in [`Refusal::route`] are to be
/// dropped whole; all others are kept. Independent of the input order.
pub fn admit<'a>(routes: impl IntoIterator<Item = &'a pb::Route>) -> Vec<Refusal> {
    let routes: Vec<&pb::Route> = routes.into_iter().collect();
    let taken = hostnames::taken(routes.iter().copied());
    let refused: HashSet<&RouteKey> = taken.iter().map(|t| &t.route).collect();
    let remaining = routes.iter().copied().filter(|r| !refused.contains(&RouteKey::of(r)));
    let conflicts = conflicts(remaining);
    taken
        .into_iter()
        .map(Refusal::Hostname)
        .chain(conflicts.into_iter().map(Refusal::Location))
        .collect()
}

/// Removes the routes [`admit`] refuses from `routes` and returns the
/// refusals, so the caller can push what remains and report the rest.
pub fn retain_admitted(routes: &mut Vec<pb::Route>) -> Vec<Refusal> {
    let found = admit(routes.iter());
    if !found.is_empty() {
        let dropped: HashSet<&RouteKey> = found.iter().map(Refusal::route).collect();
        routes.retain(|r| !dropped.contains(&RouteKey::of(r)));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(kind: pb::MatchKind, path: &str) -> pb::Location {
        pb::Location {
            path: path.to_string(),
            match_kind: kind as i32,
            ..Default::default()
        }
    }

    fn route(ns: &str, name: &str, created_at: i64, hosts: &[&str], locations: Vec<pb::Location>) -> pb::Route {
        pb::Route {
            namespace: ns.to_string(),
            name: name.to_string(),
            created_at,
            hostnames: hosts.iter().map(|h| h.to_string()).collect(),
            locations,
            ..Default::default()
        }
    }

    fn dropped(cs: &[Conflict]) -> Vec<String> {
        let mut v: Vec<String> = cs.iter().map(|c| c.route.to_string()).collect();
        v.dedup();
        v
    }

    use pb::MatchKind::*;

    #[test]
    fn newer_route_with_same_exact_location_conflicts() {
        let old = route("default", "older", 10, &["a.example.com"], vec![loc(Exact, "/hello")]);
        let new = route("team", "newer", 20, &["a.example.com"], vec![loc(Exact, "/hello")]);
        // Input order must not matter: the newer one is reported either way.
        for input in [vec![&old, &new], vec![&new, &old]] {
            let cs = conflicts(input);
            assert_eq!(
                cs,
                vec![Conflict {
                    route: RouteKey::new("team", "newer"),
                    hostname: "a.example.com".into(),
                    location: "= /hello".into(),
                    owner: RouteKey::new("default", "older"),
                }]
            );
            assert_eq!(
                cs[0].message(),
                r#"location "= /hello" on host "a.example.com" is already served by default/older"#
            );
        }
    }

    #[test]
    fn ties_on_creation_time_break_by_namespace_then_name() {
        let a = route("a", "z", 5, &["h"], vec![loc(Prefix, "/")]);
        let b = route("b", "a", 5, &["h"], vec![loc(Prefix, "/")]);
        let b2 = route("b", "b", 5, &["h"], vec![loc(Prefix, "/")]);
        let cs = conflicts([&b2, &b, &a]);
        assert_eq!(dropped(&cs), vec!["b/a", "b/b"]);
        assert!(cs.iter().all(|c| c.owner == RouteKey::new("a", "z")));
    }

    #[test]
    fn different_kind_path_or_host_do_not_conflict() {
        let routes = [
            route("ns", "r1", 1, &["a"], vec![loc(Exact, "/p")]),
            route("ns", "r2", 2, &["a"], vec![loc(Prefix, "/p")]),
            route("ns", "r3", 3, &["a"], vec![loc(PrefixPriority, "/q")]),
            route("ns", "r4", 4, &["a"], vec![loc(Regex, "^/p")]),
            route("ns", "r5", 5, &["a"], vec![loc(RegexCaseInsensitive, "^/p")]),
            route("ns", "r6", 6, &["b"], vec![loc(Exact, "/p")]),
            route("ns", "r7", 7, &["a"], vec![loc(Exact, "/p/")]),
        ];
        assert!(conflicts(&routes).is_empty());
    }

    #[test]
    fn every_kind_is_reported_in_nginx_notation() {
        let kinds = [
            (Exact, "/e", "= /e"),
            (Prefix, "/p", "/p"),
            (PrefixPriority, "/pp", "^~ /pp"),
            (Regex, "^/r", "~ ^/r"),
            (RegexCaseInsensitive, "^/ri", "~* ^/ri"),
        ];
        for (kind, path, want) in kinds {
            let routes = [
                route("ns", "old", 1, &["h"], vec![loc(kind, path)]),
                route("ns", "new", 2, &["h"], vec![loc(kind, path)]),
            ];
            let cs = conflicts(&routes);
            assert_eq!(cs.len(), 1, "{want}");
            assert_eq!(cs[0].location, want);
        }
    }

    #[test]
    fn empty_hostnames_is_its_own_any_host_key() {
        let any1 = route("ns", "any1", 1, &[], vec![loc(Exact, "/x")]);
        let named = route("ns", "named", 2, &["a.example.com"], vec![loc(Exact, "/x")]);
        let any2 = route("ns", "any2", 3, &[], vec![loc(Exact, "/x")]);
        let cs = conflicts([&any1, &named, &any2]);
        assert_eq!(dropped(&cs), vec!["ns/any2"]);
        assert_eq!(cs[0].hostname, "*");
        assert_eq!(cs[0].owner, RouteKey::new("ns", "any1"));
    }

    #[test]
    fn wildcard_hostnames_are_literal_and_case_is_ignored() {
        let wild = route("ns", "wild", 1, &["*.example.com"], vec![loc(Prefix, "/")]);
        let concrete = route("ns", "concrete", 2, &["a.example.com"], vec![loc(Prefix, "/")]);
        let wild2 = route("ns", "wild2", 3, &["*.EXAMPLE.com"], vec![loc(Prefix, "/")]);
        let cs = conflicts([&wild, &concrete, &wild2]);
        assert_eq!(dropped(&cs), vec!["ns/wild2"]);
        assert_eq!(cs[0].hostname, "*.example.com");
    }

    #[test]
    fn reports_every_overlapping_pair_in_declaration_order() {
        let old = route(
            "ns",
            "old",
            1,
            &["a", "b", "c"],
            vec![loc(Exact, "/1"), loc(Exact, "/2"), loc(Exact, "/3")],
        );
        let new = route(
            "ns",
            "new",
            2,
            &["c", "x", "a"],
            vec![loc(Exact, "/3"), loc(Exact, "/9"), loc(Exact, "/1")],
        );
        let got: Vec<(String, String)> = conflicts([&new, &old])
            .into_iter()
            .map(|c| (c.hostname, c.location))
            .collect();
        let want = [("c", "= /3"), ("a", "= /3"), ("c", "= /1"), ("a", "= /1")];
        assert_eq!(
            got,
            want.iter()
                .map(|(h, l)| (h.to_string(), l.to_string()))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_route_overlapping_only_a_dropped_route_is_kept() {
        // r2 conflicts with r1 on /a and is dropped; r3 overlaps only r2 (on /b),
        // which claims nothing once dropped, so r3 is kept. r4 then conflicts with
        // r3 (the kept owner of /b), not with r2.
        let r1 = route("ns", "r1", 1, &["h"], vec![loc(Exact, "/a")]);
        let r2 = route("ns", "r2", 2, &["h"], vec![loc(Exact, "/a"), loc(Exact, "/b")]);
        let r3 = route("ns", "r3", 3, &["h"], vec![loc(Exact, "/b")]);
        let r4 = route("ns", "r4", 4, &["h"], vec![loc(Exact, "/b")]);
        let cs = conflicts([&r4, &r3, &r2, &r1]);
        assert_eq!(dropped(&cs), vec!["ns/r2", "ns/r4"]);
        assert_eq!(cs.len(), 2, "{cs:?}");
        assert_eq!(cs[0].owner.name, "r1");
        assert_eq!(cs[1].owner.name, "r3");
    }

    #[test]
    fn a_route_never_conflicts_with_itself() {
        let r = route("ns", "r", 1, &["h", "H", "h"], vec![loc(Exact, "/a"), loc(Exact, "/a")]);
        assert!(conflicts([&r]).is_empty());
    }

    #[test]
    fn retain_admitted_drops_whole_routes() {
        let mut routes = vec![
            route("ns", "new", 2, &["h"], vec![loc(Exact, "/a"), loc(Exact, "/only-new")]),
            route("ns", "old", 1, &["h"], vec![loc(Exact, "/a")]),
            route("ns", "other", 3, &["h"], vec![loc(Exact, "/only-new")]),
        ];
        let refusals = retain_admitted(&mut routes);
        assert_eq!(refusals.len(), 1);
        assert_eq!(refusals[0].route(), &RouteKey::new("ns", "new"));
        let kept: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(kept, vec!["old", "other"]);
    }

    #[test]
    fn a_route_with_one_foreign_hostname_among_others_is_refused_whole() {
        let mut routes = vec![
            route("a", "shop", 1, &["shop.example.com"], vec![loc(Prefix, "/")]),
            route(
                "b",
                "mixed",
                2,
                &["b.example.com", "shop.example.com", "b2.example.com"],
                vec![loc(Prefix, "/"), loc(Regex, r"\.json$")],
            ),
            route("b", "own", 3, &["b3.example.com"], vec![loc(Prefix, "/")]),
        ];
        let refusals = retain_admitted(&mut routes);
        assert_eq!(refusals.len(), 1, "{refusals:?}");
        match &refusals[0] {
            Refusal::Hostname(t) => {
                assert_eq!(t.route, RouteKey::new("b", "mixed"));
                assert_eq!(t.hostname, "shop.example.com");
                assert_eq!(t.owner_route, RouteKey::new("a", "shop"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(refusals[0].holder(), &RouteKey::new("a", "shop"));
        let kept: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(kept, ["shop", "own"], "none of b/mixed's hostnames is served");
    }

    #[test]
    fn a_route_refused_its_hostname_claims_no_location() {
        // b/json is refused on h; a's newer route with b's location is not in
        // conflict with it. Among the remaining routes, conflicts are as before.
        let routes = [
            route("a", "shop", 1, &["h"], vec![loc(Prefix, "/")]),
            route("b", "json", 2, &["h"], vec![loc(Regex, r"\.json$")]),
            route("a", "json", 3, &["h"], vec![loc(Regex, r"\.json$")]),
            route("a", "again", 4, &["h"], vec![loc(Prefix, "/")]),
        ];
        let refusals = admit(&routes);
        let got: Vec<(String, &str)> = refusals
            .iter()
            .map(|r| {
                let kind = match r {
                    Refusal::Hostname(_) => "hostname",
                    Refusal::Location(_) => "location",
                };
                (r.route().to_string(), kind)
            })
            .collect();
        assert_eq!(
            got,
            [("b/json".to_string(), "hostname"), ("a/again".to_string(), "location")]
        );
        assert_eq!(refusals[1].holder(), &RouteKey::new("a", "shop"));
    }

    #[test]
    fn an_allowed_namespace_meets_the_usual_location_conflicts() {
        let mut owner = route("a", "shop", 1, &["h"], vec![loc(Prefix, "/")]);
        owner.allowed_namespaces = vec!["b".into()];
        let routes = [
            owner,
            route("b", "json", 2, &["h"], vec![loc(Regex, r"\.json$")]),
            route("b", "root", 3, &["h"], vec![loc(Prefix, "/")]),
        ];
        let refusals = admit(&routes);
        assert_eq!(refusals.len(), 1, "{refusals:?}");
        match &refusals[0] {
            Refusal::Location(c) => {
                assert_eq!(c.route, RouteKey::new("b", "root"));
                assert_eq!(c.owner, RouteKey::new("a", "shop"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn admit_does_not_depend_on_the_input_order() {
        let mut owner = route("a", "shop", 1, &["h", "k"], vec![loc(Prefix, "/")]);
        owner.allowed_namespaces = vec!["c".into()];
        let routes = [
            owner,
            route("b", "json", 2, &["h"], vec![loc(Regex, r"\.json$")]),
            route("c", "json", 3, &["h"], vec![loc(Regex, r"\.json$")]),
            route("c", "root", 4, &["k"], vec![loc(Prefix, "/")]),
            route("c", "json2", 5, &["h"], vec![loc(Regex, r"\.json$")]),
        ];
        let want = admit(&routes);
        let names: Vec<&str> = want.iter().map(|r| r.route().name.as_str()).collect();
        assert_eq!(names, ["json", "root", "json2"]);
        assert!(matches!(&want[0], Refusal::Hostname(t) if t.route.namespace == "b"));
        let mut order: Vec<&pb::Route> = routes.iter().collect();
        for _ in 0..routes.len() {
            order.rotate_left(1);
            assert_eq!(admit(order.iter().copied()), want);
            assert_eq!(admit(order.iter().rev().copied()), want);
        }
    }

    #[test]
    fn scales_to_thousands_of_routes() {
        // 3000 routes, 10 hosts, 20 locations each; every 100th collides with route 0.
        let mut routes: Vec<pb::Route> = (0..3000)
            .map(|i| {
                let hosts: Vec<String> = (0..10).map(|h| format!("h{i}-{h}.example.com")).collect();
                let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
                let locs = (0..20).map(|l| loc(Prefix, &format!("/r{i}/l{l}"))).collect();
                route("ns", &format!("r{i:04}"), i, &hosts, locs)
            })
            .collect();
        for i in (100..3000).step_by(100) {
            routes[i as usize].hostnames.push("h0-0.example.com".into());
            routes[i as usize].locations.push(loc(Prefix, "/r0/l0"));
        }
        let start = std::time::Instant::now();
        let cs = conflicts(&routes);
        assert_eq!(cs.len(), 29);
        assert!(cs.iter().all(|c| c.owner.name == "r0000"));
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
}
