//! The `LuaRoute` custom resource (`moongate.dev/v1alpha1`), as users write it.
//!
//! These types are the Kubernetes-facing schema only. `compile` turns a spec into
//! the `moongate.v1` protobuf `Route` the dataplane loads.
//!
//! The schema carries every check that needs no Lua (names, paths, sizes,
//! uniqueness), as OpenAPI keywords and CEL rules (`x-kubernetes-validations`), so
//! `kubectl apply` rejects an obviously wrong spec before the controller sees it.
//! Lua syntax, PCRE regexes and phase rules are checked by `compile`, which
//! repeats only some of these (paths, duplicate locations, dict names and sizes):
//! standalone mode, with no apiserver, has only those. The patterns are public
//! so `compile` can share them.
//!
//! Bounds (`maxItems`, `maxProperties`, `maxLength`) are part of the contract: the
//! apiserver estimates each CEL rule's worst-case cost from them when the CRD is
//! installed and refuses rules whose estimate is unbounded.
//!
//! By concern: the route as a whole (`LuaRouteSpec`, `RouteLimits`) here, its
//! `location` blocks, their `upstream`s, its `shared_dict`s, the `status` the controller writes, and
//! the `patterns` and bounds the schema and `compile` share. Everything is
//! re-exported, so users name `crd::X` whatever file `X` lives in.
//!
//! The doc comments on these types and fields are the CRD's descriptions (what
//! `kubectl explain` shows): `crds/luaroute.yaml` is generated from them, and
//! `crd_drift` fails if it is not regenerated after they change.

mod library;
mod location;
mod patterns;
mod shared_dict;
mod status;
#[cfg(test)]
mod tests;
mod upstream;

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use self::library::{LuaLibrary, LuaLibrarySpec, LuaLibraryStatus};
pub use self::location::{LocationSpec, LuaRouteRef, MatchKind};
pub use self::patterns::{
    ADDRESS_PATTERN, DURATION_PATTERN, HOSTNAME_PATTERN, HTTP_TOKEN_PATTERN, MAX_MODULE_NAME, MEDIA_TYPE_PATTERN,
    MIN_INSTRUCTION_BUDGET, MODULE_NAME_MESSAGE, MODULE_NAME_PATTERN, NAMESPACE_OR_ANY_PATTERN, OBJECT_NAME_PATTERN,
    ROUTE_NAME_OR_ANY_PATTERN, SERVICE_NAME_PATTERN, SHARED_DICT_NAME_PATTERN, SIZE_PATTERN, UPSTREAM_HOST_PATTERN,
    UPSTREAM_URI_PATTERN, UPSTREAM_URL_PATTERN, VAR_NAME_PATTERN,
};
pub use self::shared_dict::{Persistence, SharedDictSpec};
pub use self::status::LuaRouteStatus;
pub use self::upstream::{
    ActiveHealthSpec, BalancePolicy, BalanceSpec, HashOnSpec, KeepaliveSpec, PassiveHealthSpec, RetriesSpec,
    TimeoutsSpec, UpstreamProtocol, UpstreamServerSpec, UpstreamSpec, UpstreamTlsSpec,
};

/// A set of OpenResty-style Lua handlers served for some hostnames.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "moongate.dev",
    version = "v1alpha1",
    kind = "LuaRoute",
    namespaced,
    shortname = "lr",
    status = "LuaRouteStatus",
    doc = "LuaRoute is a set of OpenResty-style Lua handlers (nginx `location` blocks with `*_by_lua` phase handlers, shared dicts and Lua modules) served by Moongate dataplanes for some hostnames.",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hostnames"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LuaRouteSpec {
    /// Host names this route serves, matched against the request's `Host` header
    /// (without port), like nginx `server_name`. Lowercase DNS names such as
    /// `api.example.com`, or `*.example.com` for its subdomains; at most 16, no
    /// duplicates. Omitted or empty: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(length(min = 1, max = 253), regex(pattern = HOSTNAME_PATTERN)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub hostnames: Vec<String>,

    /// Other namespaces whose LuaRoutes may serve this route's hostnames too.
    ///
    /// A hostname belongs to one namespace: that of the oldest LuaRoute naming it
    /// (by creation time, then namespace and name). Routes without hostnames
    /// share the any-host key `*`, which belongs to a namespace the same way. A
    /// LuaRoute of another namespace that names an owned hostname is refused
    /// whole (`Accepted=False`, reason `Conflicted`) unless a route of the owning
    /// namespace that names that hostname lists the other namespace here. The
    /// allowance is per hostname: it covers the hostnames of this route only. It
    /// takes effect only on routes of the owning namespace; listed elsewhere it
    /// grants nothing. Ownership follows the routes that exist now: when the
    /// owning namespace's oldest route naming a hostname goes (or is deleted and
    /// re-created, which makes it newer), the hostname belongs to the namespace
    /// of the oldest route still naming it.
    ///
    /// Namespace names, or `*` for any namespace; at most 32, no duplicates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 63), regex(pattern = NAMESPACE_OR_ANY_PATTERN)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub allowed_namespaces: Vec<String>,

    /// The route's nginx `location` blocks (1 to 256), matched by nginx's rules: an
    /// `Exact` match wins; otherwise the longest `Prefix`/`PrefixPriority` match is
    /// remembered, and if it is `PrefixPriority` it wins; otherwise the first
    /// `Regex` or `RegexCaseInsensitive` location in declaration order that matches
    /// wins; otherwise the remembered longest prefix. No two locations may have the
    /// same `match` and `path`.
    //
    // Uniqueness is a list-map keyed by (match, path) rather than a CEL
    // `self.all(x, self.exists_one(...))`: that rule is quadratic, and with 256
    // locations of up to 1024 characters the apiserver estimates it at 2.8 times its
    // per-rule budget and refuses the CRD; even under the estimate, a large object could
    // exceed the 1M runtime limit per call. The list-map check is linear, names the
    // duplicate, and relies on `match` having a default. With server-side apply,
    // locations are owned one by one; their order is still the applied order.
    #[schemars(
        length(min = 1, max = 256),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["match", "path"])
    )]
    pub locations: Vec<LocationSpec>,

    /// `lua_shared_dict` declarations, visible to Lua as `ngx.shared.NAME`. Dicts
    /// are scoped to the route's namespace: routes in one namespace that declare
    /// the same name share the dict. At most 32, names unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])
    )]
    pub shared_dicts: Vec<SharedDictSpec>,

    /// Lua modules by name: the key is the name given to `require` (names of
    /// letters, digits, `_` and `-` joined by dots, such as `resty.mylib` or
    /// `resty.jit-uuid`), the value the module's Lua source, which returns the
    /// module table. Loadable from this route's handlers only. At most 128;
    /// modules shared by several routes belong in a LuaLibrary (`libraries`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 128, "x-kubernetes-validations" = module_names_rule()))]
    pub modules: BTreeMap<String, String>,

    /// LuaLibraries of this route's namespace whose modules this route's
    /// handlers may `require`, by name; at most 16, no duplicates. Each route
    /// loads its own instance of a library's modules. A library module may not
    /// have the name of one of `modules`, nor two named libraries a module of
    /// the same name: the route is refused (`Accepted=False`, reason
    /// `LibraryConflict`). A library that does not exist or has never compiled
    /// refuses the route (`LibraryNotFound`, `LibraryInvalid`), which keeps
    /// serving its last good generation meanwhile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub libraries: Vec<String>,

    /// Lua run once in every Lua VM when the route is loaded (`init_by_lua`):
    /// define globals, `require` modules, fill shared dicts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,

    /// Lua run in every worker after `init`, for each new config version
    /// (`init_worker_by_lua`): typically starts `ngx.timer` jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_worker: Option<String>,

    /// Per-route resource limits. Omitted: the dataplane's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RouteLimits>,
}

/// The schema rule on module names, shared by LuaRoute's and LuaLibrary's
/// `modules`: the same pattern and message `compile` applies.
fn module_names_rule() -> serde_json::Value {
    serde_json::json!([{
        "rule": format!("self.all(k, size(k) <= {MAX_MODULE_NAME} && k.matches('{MODULE_NAME_PATTERN}'))"),
        "message": MODULE_NAME_MESSAGE,
    }])
}

/// Per-route limits.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteLimits {
    /// `client_max_body_size`: the largest request body accepted, as whole bytes
    /// with an optional binary unit (`1m`, `512Ki`, `1048576`). Larger bodies get
    /// 413. Omitted or `0`: the dataplane's `--max-body-size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), regex(pattern = SIZE_PATTERN))]
    pub max_body_size: Option<String>,
    /// Lua VM instructions one handler may run before it is aborted with a 500; at
    /// least 1000. Omitted: the dataplane's `--instruction-budget` (100 million).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_INSTRUCTION_BUDGET), extend("format" = "int64"))]
    pub instruction_budget: Option<u64>,
}
