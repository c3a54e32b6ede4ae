//! The dataplane's own view of a config snapshot, converted from `moongate.v1`
//! at the boundary: digests are checked, regexes compiled and routes linked to
//! the libraries they name here, so a bad snapshot is rejected before any
//! worker sees it.
//!
//! A library's chunks are verified once and shared (`Arc`) by the routes that
//! name it: after linking, a route's `modules` are its own followed by its
//! libraries', and each route still loads them into its own sandbox. The
//! linking rule (same namespace, no module name twice) is
//! `moongate_route::library::link`, the controller's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use moongate_proto::v1 as pb;
use pcre2::bytes::{Regex, RegexBuilder};
use sha2::{Digest, Sha256};

use moongate_route::library::link;
use moongate_route::location::{LocationKey, LocationKind};
use moongate_route::{LibraryKey, RouteKey};

use crate::error::{Error, Result};
use crate::proxy::upstream::Upstream;

/// The request phases that run Lua, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Rewrite = 0,
    Access = 1,
    Content = 2,
    HeaderFilter = 3,
    BodyFilter = 4,
    Log = 5,
    /// `balancer_by_lua`: picks the peer of each proxy try.
    Balancer = 6,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Rewrite,
        Phase::Access,
        Phase::Content,
        Phase::HeaderFilter,
        Phase::BodyFilter,
        Phase::Log,
        Phase::Balancer,
    ];

    /// The name `ngx.get_phase()` returns.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Rewrite => "rewrite",
            Phase::Access => "access",
            Phase::Content => "content",
            Phase::HeaderFilter => "header_filter",
            Phase::BodyFilter => "body_filter",
            Phase::Log => "log",
            Phase::Balancer => "balancer",
        }
    }
}

/// A compiled Lua chunk, digest already verified.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub name: String,
    pub bytecode: Vec<u8>,
}

impl Chunk {
    fn verified(route: &RouteKey, chunk: &pb::Chunk) -> Result<Chunk> {
        Chunk::verified_digest(chunk).map_err(|message| Error::Load {
            route: route.clone(),
            message,
        })
    }

    /// The chunk if its digest matches; else why not.
    fn verified_digest(chunk: &pb::Chunk) -> std::result::Result<Chunk, String> {
        if Sha256::digest(&chunk.bytecode).as_slice() != chunk.digest.as_slice() {
            return Err(format!("chunk {}: digest mismatch", chunk.name));
        }
        Ok(Chunk {
            name: chunk.name.clone(),
            bytecode: chunk.bytecode.clone(),
        })
    }
}

#[derive(Debug)]
pub struct Location {
    /// "route default/hello, location /hello", for log lines.
    pub site: Arc<str>,
    pub path: String,
    pub kind: LocationKind,
    regex: Option<Regex>,
    /// `set $name value`, in order.
    pub vars: Vec<(String, Vec<u8>)>,
    /// Indexed by `Phase as usize`.
    pub handlers: [Option<Chunk>; 7],
    pub default_type: Option<String>,
    pub need_request_body: bool,
    /// Where the content phase proxies to, if it does.
    pub upstream: Option<Arc<Upstream>>,
    /// nginx `internal`: only subrequests and internal redirects may enter;
    /// a client request matching it gets 404 (the phase driver enforces that).
    pub internal: bool,
    /// Routes besides this location's own whose subrequests and internal
    /// redirects may enter it; see [`Location::admits`].
    pub allow_from: Vec<RouteSelector>,
}

/// Routes selected by namespace and name (`allowFrom`); `None` is "any".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSelector {
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl RouteSelector {
    /// Converts `allowFrom` as the controller sends it: an empty namespace is
    /// `own_namespace`, an empty name or `*` is any, a namespace `*` is any.
    fn from_proto(r: &pb::RouteRef, own_namespace: &str) -> RouteSelector {
        let any = |s: &str| s.is_empty() || s == "*";
        RouteSelector {
            namespace: match r.namespace.as_str() {
                "" => Some(own_namespace.to_string()),
                "*" => None,
                ns => Some(ns.to_string()),
            },
            name: (!any(&r.name)).then(|| r.name.clone()),
        }
    }

    pub fn selects(&self, route: &Route) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == route.namespace)
            && self.name.as_deref().is_none_or(|name| name == route.name)
    }
}

impl Location {
    /// Whether a subrequest (`ngx.location.capture*`) or internal redirect
    /// (`ngx.exec`, `ngx.req.set_uri(uri, true)`) issued by a handler of
    /// `caller` may enter this location, which belongs to `own`: always from
    /// `own` itself, otherwise only when `allow_from` selects `caller`.
    /// Whether the request came from a client (`internal`) and whether `caller`
    /// serves the hostname are the caller's checks, not this one's.
    pub fn admits(&self, own: &Route, caller: &Route) -> bool {
        (caller.namespace == own.namespace && caller.name == own.name)
            || self.allow_from.iter().any(|s| s.selects(caller))
    }
}

#[derive(Clone, Debug)]
pub struct DictDecl {
    pub name: String,
    pub capacity: u64,
    pub durable: bool,
}

#[derive(Debug)]
pub struct Route {
    pub key: RouteKey,
    /// `key` as text (`namespace/name`), for log lines and per-route maps.
    pub id: String,
    pub namespace: String,
    /// Lowercase, without a trailing dot; empty: any host.
    pub hostnames: Vec<String>,
    pub name: String,
    pub locations: Vec<Location>,
    /// The route's own modules, then those of the libraries it names.
    pub modules: Vec<(String, Arc<Chunk>)>,
    pub init: Option<Chunk>,
    pub init_worker: Option<Chunk>,
    pub shared_dicts: Vec<DictDecl>,
    /// Bytes; 0 means the server default.
    pub max_body: u64,
    pub instruction_budget: u64,
}

/// A location as (route index, location index) into `Config::routes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocationRef {
    pub route: usize,
    pub location: usize,
}

impl LocationRef {
    /// A request that matched no location.
    pub const NONE: LocationRef = LocationRef {
        route: usize::MAX,
        location: usize::MAX,
    };
}

/// A virtual server of a config: the routes of one hostname, or of any host.
/// A request is matched to one when it arrives and stays on it: its
/// subrequests and internal redirects only ever reach this server's locations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerId(usize);

/// The locations of one virtual server, indexed for nginx's selection rules.
#[derive(Debug, Default)]
struct Server {
    exact: HashMap<Vec<u8>, LocationRef>,
    /// Longest first; `true` marks `^~`.
    prefixes: Vec<(Vec<u8>, bool, LocationRef)>,
    /// Declaration order.
    regexes: Vec<LocationRef>,
}

#[derive(Debug)]
pub struct Config {
    pub version: u64,
    pub content_hash: Vec<u8>,
    pub routes: Vec<Arc<Route>>,
    /// `servers[0]` serves hosts no route names.
    servers: Vec<Server>,
    by_host: HashMap<String, ServerId>,
}

/// The server of hosts no route names.
const ANY_HOST: ServerId = ServerId(0);

impl ServerId {
    /// The server of hosts no route names.
    pub const ANY: ServerId = ANY_HOST;
}

impl TryFrom<&pb::Snapshot> for Config {
    type Error = Error;

    fn try_from(snapshot: &pb::Snapshot) -> Result<Config> {
        let by_key: HashMap<LibraryKey, &pb::Library> =
            snapshot.libraries.iter().map(|l| (LibraryKey::of(l), l)).collect();
        let mut libraries: HashMap<LibraryKey, Vec<(String, Arc<Chunk>)>> =
            HashMap::with_capacity(snapshot.libraries.len());
        for l in &snapshot.libraries {
            let key = LibraryKey::of(l);
            let mut modules = Vec::with_capacity(l.modules.len());
            for m in &l.modules {
                if let Some(c) = &m.chunk {
                    let chunk = Chunk::verified_digest(c).map_err(|message| Error::Library {
                        library: key.clone(),
                        message,
                    })?;
                    modules.push((m.name.clone(), Arc::new(chunk)));
                }
            }
            libraries.insert(key, modules);
        }
        let mut routes = Vec::with_capacity(snapshot.routes.len());
        for r in &snapshot.routes {
            let mut route = route_from_proto(r)?;
            let linked = link(r, |key| by_key.get(key).copied()).map_err(|e| Error::Load {
                route: route.key.clone(),
                message: format!("libraries: {e}"),
            })?;
            for l in linked {
                route.modules.extend(libraries[&LibraryKey::of(l)].iter().cloned());
            }
            routes.push(Arc::new(route));
        }
        Ok(Config::index(snapshot.version, snapshot.content_hash.clone(), routes))
    }
}

impl Config {
    /// Indexes `routes`, in dataplane order, into virtual servers.
    fn index(version: u64, content_hash: Vec<u8>, routes: Vec<Arc<Route>>) -> Config {
        let mut servers = vec![Server::default()];
        // Per server, the locations taken so far. The first route to declare a
        // location keeps it, by the rule the controller refuses the later
        // route with (`LocationKey`); this holds for whatever reaches a
        // dataplane without that check (a restored or hand-built snapshot).
        let mut claimed: Vec<HashSet<LocationKey<'_>>> = vec![HashSet::new()];
        let mut by_host: HashMap<String, ServerId> = HashMap::new();
        for (ri, r) in routes.iter().enumerate() {
            let ids: Vec<ServerId> = if r.hostnames.is_empty() {
                vec![ANY_HOST]
            } else {
                // A host named by several routes gets all their locations, in route order.
                let mut ids: Vec<ServerId> = r
                    .hostnames
                    .iter()
                    .map(|h| {
                        *by_host.entry(h.clone()).or_insert_with(|| {
                            servers.push(Server::default());
                            claimed.push(HashSet::new());
                            ServerId(servers.len() - 1)
                        })
                    })
                    .collect();
                ids.dedup();
                ids
            };
            for id in ids {
                for (li, loc) in r.locations.iter().enumerate() {
                    if !claimed[id.0].insert(LocationKey::new(loc.kind, &loc.path)) {
                        continue;
                    }
                    servers[id.0].add(
                        &loc.path,
                        loc.kind,
                        LocationRef {
                            route: ri,
                            location: li,
                        },
                    );
                }
            }
        }
        for s in &mut servers {
            s.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        }
        Config {
            version,
            content_hash,
            routes,
            servers,
            by_host,
        }
    }

    /// This version with `routes` instead of its own, as served when some of
    /// its routes failed to load (they are left out, or replaced by their
    /// serving version).
    pub fn with_routes(&self, routes: Vec<Arc<Route>>) -> Config {
        Config::index(self.version, self.content_hash.clone(), routes)
    }
}

fn route_from_proto(r: &pb::Route) -> Result<Route> {
    let key = RouteKey::of(r);
    let id = key.to_string();
    let chunk = |c: &Option<pb::Chunk>| c.as_ref().map(|c| Chunk::verified(&key, c)).transpose();
    let mut locations = Vec::with_capacity(r.locations.len());
    for l in &r.locations {
        let kind = LocationKind::from_wire(l.match_kind);
        let regex = if let LocationKind::Regex { caseless } = kind {
            let re = RegexBuilder::new()
                .caseless(caseless)
                .jit_if_available(true)
                .build(&l.path)
                .map_err(|e| Error::Load {
                    route: key.clone(),
                    message: format!("location {}: invalid regex: {e}", l.path),
                })?;
            Some(re)
        } else {
            None
        };
        locations.push(Location {
            site: Arc::from(format!("route {id}, location {}", l.path)),
            path: l.path.clone(),
            kind,
            regex,
            vars: l
                .vars
                .iter()
                .map(|v| (v.name.clone(), v.value.clone().into_bytes()))
                .collect(),
            handlers: [
                chunk(&l.rewrite)?,
                chunk(&l.access)?,
                chunk(&l.content)?,
                chunk(&l.header_filter)?,
                chunk(&l.body_filter)?,
                chunk(&l.log)?,
                chunk(&l.balancer)?,
            ],
            default_type: l.default_type.clone(),
            need_request_body: l.need_request_body,
            upstream: l
                .upstream
                .as_ref()
                .map(|u| {
                    if u.uri.is_some() && matches!(kind, LocationKind::Regex { .. }) {
                        return Err(
                            "a regex location cannot replace a URI prefix (upstream uri), as in nginx".to_string(),
                        );
                    }
                    Upstream::from_proto(u, &r.namespace).map(Arc::new)
                })
                .transpose()
                .map_err(|message| Error::Load {
                    route: key.clone(),
                    message: format!("location {}: {message}", l.path),
                })?,
            internal: l.internal,
            allow_from: l
                .allow_from
                .iter()
                .map(|a| RouteSelector::from_proto(a, &r.namespace))
                .collect(),
        });
    }
    let mut modules = Vec::with_capacity(r.modules.len());
    for m in &r.modules {
        if let Some(c) = &m.chunk {
            modules.push((m.name.clone(), Arc::new(Chunk::verified(&key, c)?)));
        }
    }
    let limits = r.limits.unwrap_or_default();
    Ok(Route {
        key: key.clone(),
        id: id.clone(),
        namespace: r.namespace.clone(),
        hostnames: r.hostnames.iter().map(|h| normalize_host(h.as_bytes())).collect(),
        name: r.name.clone(),
        locations,
        modules,
        init: chunk(&r.init)?,
        init_worker: chunk(&r.init_worker)?,
        shared_dicts: r
            .shared_dicts
            .iter()
            .map(|d| DictDecl {
                name: d.name.clone(),
                capacity: d.capacity_bytes,
                durable: d.persistence == pb::Persistence::Durable as i32,
            })
            .collect(),
        max_body: limits.max_body_bytes,
        instruction_budget: limits.instruction_budget,
    })
}

impl Server {
    /// Adds a location no earlier route of this server declared.
    fn add(&mut self, path: &str, kind: LocationKind, at: LocationRef) {
        match kind {
            LocationKind::Exact => {
                self.exact.insert(path.as_bytes().to_vec(), at);
            }
            LocationKind::Prefix | LocationKind::PrefixPriority => {
                self.prefixes
                    .push((path.as_bytes().to_vec(), kind == LocationKind::PrefixPriority, at));
            }
            LocationKind::Regex { .. } => self.regexes.push(at),
        }
    }
}

/// A hostname as servers are keyed: lowercase, without a trailing dot (as
/// nginx compares `server_name`).
pub fn normalize_host(host: &[u8]) -> String {
    let host = host.strip_suffix(b".").unwrap_or(host);
    String::from_utf8_lossy(host).to_ascii_lowercase()
}

impl Config {
    /// Whether any route names hostnames (else the Host header needs no parsing).
    pub fn has_hostnames(&self) -> bool {
        !self.by_host.is_empty()
    }

    /// The virtual server of `host` (as `normalize_host` makes it).
    pub fn server(&self, host: &str) -> ServerId {
        self.by_host.get(host).copied().unwrap_or(ANY_HOST)
    }

    /// Selects the location of `server` for the normalized URI path, by
    /// nginx's rules: exact; else the longest prefix, final if `^~`; else the
    /// first matching regex; else that longest prefix.
    pub fn find_location(&self, server: ServerId, uri: &[u8]) -> Option<LocationRef> {
        let server = &self.servers[server.0];
        if let Some(at) = server.exact.get(uri) {
            return Some(*at);
        }
        let prefix = server.prefixes.iter().find(|(p, _, _)| uri.starts_with(p));
        if let Some((_, true, at)) = prefix {
            return Some(*at);
        }
        for at in &server.regexes {
            let loc = &self.routes[at.route].locations[at.location];
            if loc.regex.as_ref().is_some_and(|re| re.is_match(uri).unwrap_or(false)) {
                return Some(*at);
            }
        }
        prefix.map(|(_, _, at)| *at)
    }

    /// `$0`, `$1`, … of a regex location matched against `uri`; empty otherwise.
    pub fn captures(&self, at: LocationRef, uri: &[u8]) -> Vec<Option<Vec<u8>>> {
        let Some(re) = &self.location(at).regex else {
            return Vec::new();
        };
        match re.captures(uri) {
            Ok(Some(caps)) => (0..caps.len())
                .map(|i| caps.get(i).map(|m| m.as_bytes().to_vec()))
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn location(&self, at: LocationRef) -> &Location {
        &self.routes[at.route].locations[at.location]
    }

    /// Whether a subrequest or internal redirect issued by a handler of route
    /// `caller` (an index into `routes`) may enter `target`: see
    /// [`Location::admits`].
    /// An index outside `routes` (such as [`LocationRef::NONE`]) admits nothing.
    pub fn admits(&self, caller: usize, target: LocationRef) -> bool {
        let (Some(own), Some(calling)) = (self.routes.get(target.route), self.routes.get(caller)) else {
            return false;
        };
        own.locations
            .get(target.location)
            .is_some_and(|location| location.admits(own, calling))
    }
}

#[cfg(test)]
mod tests;
