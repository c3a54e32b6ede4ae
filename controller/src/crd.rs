//! The `LuaRoute` custom resource (`moongate.dev/v1alpha1`), as users write it.
//!
//! These types are the Kubernetes-facing schema only. `compile` turns a spec into
//! the `moongate.v1` protobuf `Route` the dataplane loads.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A set of OpenResty-style Lua handlers served for some hostnames.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "moongate.dev",
    version = "v1alpha1",
    kind = "LuaRoute",
    namespaced,
    shortname = "lr",
    status = "LuaRouteStatus",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hostnames"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LuaRouteSpec {
    /// Host names this route serves (the `Host` header, without port). Omitted or
    /// empty: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,

    /// Locations, matched by nginx's rules: exact, then the longest prefix; a
    /// `PrefixPriority` longest prefix stops the search; otherwise regexes in
    /// declaration order, then the longest prefix.
    pub locations: Vec<LocationSpec>,

    /// `lua_shared_dict` declarations, visible as `ngx.shared.NAME`. Dicts are
    /// scoped to the route's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_dicts: Vec<SharedDictSpec>,

    /// Lua modules by name, loadable with `require("name")` from this route only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub modules: BTreeMap<String, String>,

    /// Lua run once in every Lua VM when the route is loaded (`init_by_lua`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,

    /// Lua run in every worker after `init`, for each new config version
    /// (`init_worker_by_lua`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_worker: Option<String>,

    /// Per-route resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RouteLimits>,
}

/// One nginx `location` block.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocationSpec {
    /// The URI prefix, the exact URI, or a PCRE regex, depending on `match`.
    pub path: String,

    /// How `path` is matched. Default `Prefix`.
    #[serde(default, rename = "match")]
    pub match_kind: MatchKind,

    /// nginx `set $name value` for this location, readable and writable as `ngx.var.name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,

    /// `rewrite_by_lua`: runs first, may change the URI and `ngx.exec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// `access_by_lua`: runs after rewrite; typically authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
    /// `content_by_lua`: produces the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// `header_filter_by_lua`: runs when the response headers are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_filter: Option<String>,
    /// `body_filter_by_lua`: runs on each chunk of the response body (`ngx.arg[1]`, `ngx.arg[2]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_filter: Option<String>,
    /// `log_by_lua`: runs after the response has been sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,

    /// `default_type`: the Content-Type when a handler sets none. Default `text/plain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_type: Option<String>,

    /// `lua_need_request_body on`: read the request body before the rewrite phase.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub need_request_body: bool,

    /// A backend Service to proxy to when the location has no `content` handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamRef>,
}

/// nginx location modifiers.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MatchKind {
    /// `location /path`
    #[default]
    Prefix,
    /// `location = /path`
    Exact,
    /// `location ^~ /path`: a longest-prefix match that skips the regex search.
    PrefixPriority,
    /// `location ~ regex`
    Regex,
    /// `location ~* regex`
    RegexCaseInsensitive,
}

/// A Kubernetes Service to proxy to.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamRef {
    /// Service name, in the route's namespace.
    pub service: String,
    /// Service port.
    pub port: u16,
}

/// A `lua_shared_dict`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SharedDictSpec {
    /// The dict's name: `ngx.shared.NAME`.
    pub name: String,
    /// Size as a quantity, e.g. `1Mi`, `512Ki`, `10m` (nginx units) or bytes.
    pub capacity: String,
    /// `Memory` (default) or `Durable` (persisted, survives restarts).
    #[serde(default)]
    pub persistence: Persistence,
}

/// Where a shared dict lives.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Persistence {
    /// In memory only, lost on restart (as in OpenResty).
    #[default]
    Memory,
    /// Written behind to disk and restored at start.
    Durable,
}

/// Per-route limits.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteLimits {
    /// `client_max_body_size`, as a quantity. Larger bodies get 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_size: Option<String>,
    /// Lua VM instructions one handler may run before it is aborted with a 500
    /// (default: the dataplane's `--instruction-budget`, 100 million).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction_budget: Option<u64>,
}

/// What the controller observed of a LuaRoute.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LuaRouteStatus {
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `ResolvedRefs` and `Programmed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    /// Dataplanes that ACKed a version containing this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub programmed_dataplanes: Option<u32>,
    /// Dataplanes connected to the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_dataplanes: Option<u32>,
}
