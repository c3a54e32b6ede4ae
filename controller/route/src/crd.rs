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

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A DNS-1123 subdomain (lowercase labels of at most 63 characters), optionally
/// with a leading `*.` wildcard label. The whole name is at most 253
/// characters.
pub const HOSTNAME_PATTERN: &str =
    r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
/// A DNS-1035 label, as Kubernetes requires of Service names.
pub const SERVICE_NAME_PATTERN: &str = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$";
/// What `quantity::parse_bytes` accepts: a whole number of bytes with an
/// optional binary unit, Kubernetes-style (`Ki`, `Mi`, `Gi`) or nginx-style
/// (`k`, `m`, `g`).
pub const SIZE_PATTERN: &str = r"^[0-9]+([kKmMgG]|Ki|Mi|Gi)?$";
/// Shared dict names, as `compile` accepts them (nginx allows `lua_shared_dict
/// my-cache`, read from Lua as `ngx.shared["my-cache"]`).
pub const SHARED_DICT_NAME_PATTERN: &str = r"^[A-Za-z0-9_-]+$";
/// A media type for `default_type`: `type/subtype`, optionally with parameters.
pub const MEDIA_TYPE_PATTERN: &str = r"^[A-Za-z0-9][-A-Za-z0-9!#$&^_.+]*/[A-Za-z0-9][-A-Za-z0-9!#$&^_.+]*( *;[ -~]*)?$";
/// Lua module names for `require`: identifiers joined by dots (`resty.http`).
/// Written with `[.]` rather than `\.` so it needs no escaping inside a CEL
/// string literal.
pub const MODULE_NAME_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*([.][A-Za-z_][A-Za-z0-9_]*)*$";
/// nginx variable names (`set $name`), as `compile` accepts them.
pub const VAR_NAME_PATTERN: &str = "^[A-Za-z0-9_]+$";
/// A namespace name (a DNS-1123 label, at most 63 characters by `maxLength`),
/// or `*` for any namespace.
pub const NAMESPACE_OR_ANY_PATTERN: &str = r"^(\*|[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)$";
/// A LuaRoute name (a DNS-1123 subdomain as the apiserver checks custom
/// resource names: no per-label limit, at most 253 characters by `maxLength`),
/// or `*` for any.
pub const ROUTE_NAME_OR_ANY_PATTERN: &str = r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)$";

/// The fewest Lua VM instructions a route may budget per handler.
pub const MIN_INSTRUCTION_BUDGET: u64 = 1000;

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

    /// Lua modules by name: the key is the name given to `require` (Lua identifiers
    /// joined by dots, such as `resty.mylib`), the value the module's Lua source,
    /// which returns the module table. Loadable from this route's handlers only. At
    /// most 128.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 128,
        "x-kubernetes-validations" = [{
            "rule": format!("self.all(k, k.matches('{MODULE_NAME_PATTERN}'))"),
            "message": "module names must be Lua identifiers joined by dots, such as resty.mylib",
        }]
    ))]
    pub modules: BTreeMap<String, String>,

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

/// One nginx `location` block: a path to match and the Lua handlers, in phase
/// order, that serve the requests it matches. A location without `content` or
/// `upstream` answers 404, as nginx's static module would.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.match) && self.match in ['Regex', 'RegexCaseInsensitive']) || self.path.startsWith('/')",
        "message": "path must start with '/' unless match is Regex or RegexCaseInsensitive",
        "fieldPath": ".path",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "!has(self.content) || !has(self.upstream)",
        "message": "a location has either content (content_by_lua) or upstream (proxy to a Service), not both",
        "fieldPath": ".upstream",
        "reason": "FieldValueForbidden",
    },
]))]
pub struct LocationSpec {
    /// What to match the request URI (normalized, without the query string)
    /// against, depending on `match`: the URI prefix (`/api/`), the exact URI
    /// (`/healthz`), or a PCRE regex (`\.php$`; captures are `ngx.var[1]`...).
    /// Prefixes and exact URIs start with `/`. At most 1024 characters.
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,

    /// How `path` is matched, as nginx's location modifiers: `Prefix` (`location
    /// /path`, the default), `Exact` (`location = /path`), `PrefixPriority`
    /// (`location ^~ /path`: a longest prefix that skips the regex search), `Regex`
    /// (`location ~ regex`) or `RegexCaseInsensitive` (`location ~* regex`).
    #[serde(default, rename = "match")]
    pub match_kind: MatchKind,

    /// nginx `set $name value` for this location: variables readable and writable
    /// from Lua as `ngx.var.name`. Names are letters, digits and `_`; at most 64.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 64,
        "x-kubernetes-validations" = [{
            "rule": format!("self.all(k, k.matches('{VAR_NAME_PATTERN}'))"),
            "message": "variable names may contain only letters, digits and '_'",
        }]
    ))]
    pub vars: BTreeMap<String, String>,

    /// `rewrite_by_lua`: runs first, may change the URI (`ngx.req.set_uri`) and
    /// `ngx.exec`, `ngx.redirect` or `ngx.exit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// `access_by_lua`: runs after rewrite; typically authentication and
    /// authorization (`ngx.exit(403)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
    /// `content_by_lua`: produces the response (`ngx.say`, `ngx.print`,
    /// `ngx.status`). Not together with `upstream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// `header_filter_by_lua`: runs when the response headers are sent, may change
    /// `ngx.status` and `ngx.header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_filter: Option<String>,
    /// `body_filter_by_lua`: runs on each chunk of the response body (`ngx.arg[1]`,
    /// the chunk; `ngx.arg[2]`, true on the last one), may rewrite it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_filter: Option<String>,
    /// `log_by_lua`: runs after the response has been sent; cannot change it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,

    /// `default_type`: the Content-Type when a handler sets none, a media type such
    /// as `application/json` or `text/html; charset=utf-8`. Default `text/plain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255), regex(pattern = MEDIA_TYPE_PATTERN))]
    pub default_type: Option<String>,

    /// `lua_need_request_body on`: read the whole request body before the rewrite
    /// phase, so handlers can use `ngx.req.get_body_data()` without
    /// `ngx.req.read_body()`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub need_request_body: bool,

    /// A backend Service to proxy requests to (like nginx `proxy_pass`), for a
    /// location without a `content` handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamRef>,

    /// nginx `internal`: only subrequests (`ngx.location.capture`,
    /// `ngx.location.capture_multi`) and internal redirects (`ngx.exec`,
    /// `ngx.req.set_uri(uri, true)`) reach this location; a client request that
    /// matches it gets 404. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,

    /// Other LuaRoutes whose subrequests and internal redirects (`ngx.exec`) may
    /// reach this location. They must serve the same hostname to try at all.
    /// Each entry selects routes by `namespace` (omitted: this route's namespace;
    /// `*`: any) and `name` (omitted or `*`: any route of that namespace).
    /// Omitted or empty: only this route's own handlers reach it by subrequest or
    /// internal redirect; client requests still reach it unless it is
    /// `internal`. At most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub allow_from: Vec<LuaRouteRef>,
}

/// LuaRoutes selected by namespace and name, for a location's `allowFrom`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LuaRouteRef {
    /// The routes' namespace, or `*` for any namespace. Omitted: the namespace of
    /// the route this location belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = NAMESPACE_OR_ANY_PATTERN))]
    pub namespace: Option<String>,
    /// The LuaRoute's name, or `*` for any route of the namespace. Omitted: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = ROUTE_NAME_OR_ANY_PATTERN))]
    pub name: Option<String>,
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
    /// The Service's name (a DNS-1035 label), in the route's namespace. Requests go
    /// to its ready endpoints.
    #[schemars(length(min = 1, max = 63), regex(pattern = SERVICE_NAME_PATTERN))]
    pub service: String,
    /// The Service port number (1-65535), as in the Service's `spec.ports[].port`.
    // schemars writes `uint16`, a format the apiserver warns about at every apply.
    #[schemars(range(min = 1, max = 65535), extend("format" = "int32"))]
    pub port: u16,
}

/// A `lua_shared_dict`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SharedDictSpec {
    /// The dict's name, as in `lua_shared_dict NAME SIZE`: letters, digits, `_` and
    /// `-`, at most 64 characters. Lua reads it as `ngx.shared.NAME` (or
    /// `ngx.shared["NAME"]`). Unique within the route.
    #[schemars(length(min = 1, max = 64), regex(pattern = SHARED_DICT_NAME_PATTERN))]
    pub name: String,
    /// The dict's size: whole bytes with an optional binary unit, Kubernetes-style
    /// (`512Ki`, `1Mi`, `2Gi`) or nginx-style (`512k`, `10m`, `1g`, either case);
    /// `m` is always mebibytes, never milli. At least 8k.
    #[schemars(length(min = 1, max = 32), regex(pattern = SIZE_PATTERN))]
    pub capacity: String,
    /// `Memory` (default: in memory, lost on restart, as in OpenResty) or `Durable`
    /// (written behind to disk and restored at start).
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
    #[schemars(extend("format" = "int64"))]
    pub programmed_dataplanes: Option<u32>,
    /// Dataplanes connected to the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int64"))]
    pub total_dataplanes: Option<u32>,
    /// The first rejection a dataplane reported for this route's current
    /// generation: `dataplane NAME: MESSAGE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nack_message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantity::parse_bytes;
    use kube::CustomResourceExt;
    use serde_json::{Value, json};

    fn schema() -> Value {
        let crd = serde_json::to_value(LuaRoute::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    fn spec() -> Value {
        schema()["properties"]["spec"].clone()
    }

    fn location() -> Value {
        spec()["properties"]["locations"]["items"].clone()
    }

    /// The CEL rules at a schema node, as (rule, message) pairs.
    fn rules(at: &Value) -> Vec<(String, String)> {
        at["x-kubernetes-validations"]
            .as_array()
            .map(|rules| {
                rules
                    .iter()
                    .map(|r| {
                        (
                            r["rule"].as_str().unwrap().to_string(),
                            r["message"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A schema `pattern`, anchored as the apiserver (Go RE2) reads it; pcre2 agrees
    /// with RE2 on these simple patterns.
    fn pattern(at: &Value) -> pcre2::bytes::Regex {
        let p = at["pattern"].as_str().unwrap_or_else(|| panic!("no pattern at {at}"));
        pcre2::bytes::Regex::new(p).unwrap()
    }

    fn matches(re: &pcre2::bytes::Regex, s: &str) -> bool {
        re.is_match(s.as_bytes()).unwrap()
    }

    #[test]
    fn hostnames_are_bounded_unique_dns_names() {
        let h = &spec()["properties"]["hostnames"];
        assert_eq!(h["maxItems"], 16);
        assert_eq!(h["x-kubernetes-list-type"], "set");
        assert_eq!(h["items"]["maxLength"], 253);
        assert_eq!(h["items"]["minLength"], 1);
        assert_eq!(h["items"]["pattern"], HOSTNAME_PATTERN);
        let re = pattern(&h["items"]);
        for ok in [
            "example.com",
            "a.b-c.example.com",
            "*.example.com",
            "localhost",
            "10.0.0.1",
            "xn--bcher-kva.example",
            &format!("{}.com", "a".repeat(63)),
        ] {
            assert!(matches(&re, ok), "{ok} should be accepted");
        }
        for bad in [
            "",
            "Example.com",
            "*",
            "*.",
            "a.*.example.com",
            "www.example.*",
            "example.com:8080",
            "http://example.com",
            "-a.example.com",
            "a-.example.com",
            "a..b",
            ".example.com",
            "example.com.",
            "exa mple.com",
            "exa_mple.com",
            &format!("{}.com", "a".repeat(64)),
        ] {
            assert!(!matches(&re, bad), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn locations_are_bounded_and_unique_by_match_and_path() {
        let l = &spec()["properties"]["locations"];
        assert_eq!(l["minItems"], 1);
        assert_eq!(l["maxItems"], 256);
        assert_eq!(l["x-kubernetes-list-type"], "map");
        assert_eq!(l["x-kubernetes-list-map-keys"], json!(["match", "path"]));
        // A list-map key must be required or defaulted.
        assert_eq!(l["items"]["required"], json!(["path"]));
        assert_eq!(l["items"]["properties"]["match"]["default"], "Prefix");
        assert_eq!(
            l["items"]["properties"]["match"]["enum"],
            json!(["Prefix", "Exact", "PrefixPriority", "Regex", "RegexCaseInsensitive"])
        );
        assert!(rules(l).is_empty(), "uniqueness needs no quadratic CEL rule");
    }

    #[test]
    fn a_location_checks_its_path_and_handlers() {
        let loc = location();
        assert_eq!(loc["required"], json!(["path"]));
        let path = &loc["properties"]["path"];
        assert_eq!(path["minLength"], 1);
        assert_eq!(path["maxLength"], 1024);

        let cel = loc["x-kubernetes-validations"].as_array().unwrap();
        assert_eq!(cel.len(), 2);
        assert_eq!(
            cel[0]["rule"],
            "(has(self.match) && self.match in ['Regex', 'RegexCaseInsensitive']) || self.path.startsWith('/')"
        );
        assert_eq!(cel[0]["fieldPath"], ".path");
        assert_eq!(cel[0]["reason"], "FieldValueInvalid");
        assert_eq!(cel[1]["rule"], "!has(self.content) || !has(self.upstream)");
        assert_eq!(cel[1]["fieldPath"], ".upstream");
        assert_eq!(cel[1]["reason"], "FieldValueForbidden");

        // No rule demands a handler: a location without content or upstream is a 404,
        // as in nginx, and one with only filters is fine.
        assert!(
            !cel.iter()
                .any(|r| r["rule"].as_str().unwrap().contains("has(self.rewrite)"))
        );

        let vars = &loc["properties"]["vars"];
        assert_eq!(vars["maxProperties"], 64);
        assert_eq!(
            rules(vars)[0].0,
            format!("self.all(k, k.matches('{VAR_NAME_PATTERN}'))")
        );

        let default_type = &loc["properties"]["defaultType"];
        assert_eq!(default_type["maxLength"], 255);
        assert_eq!(default_type["nullable"], true);
        let re = pattern(default_type);
        for ok in [
            "text/plain",
            "application/json",
            "application/vnd.api+json",
            "text/html; charset=utf-8",
        ] {
            assert!(matches(&re, ok), "{ok} should be accepted");
        }
        for bad in [
            "",
            "json",
            "text/",
            "/json",
            "text/html\r\nX-Evil: 1",
            "text html/plain",
        ] {
            assert!(!matches(&re, bad), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn upstream_names_a_service_port() {
        let u = &location()["properties"]["upstream"];
        assert_eq!(u["required"], json!(["port", "service"]));
        assert_eq!(u["properties"]["port"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(u["properties"]["port"]["maximum"].as_f64(), Some(65535.0));
        let service = &u["properties"]["service"];
        assert_eq!(service["maxLength"], 63);
        let re = pattern(service);
        for ok in ["web", "my-svc", "a1", "a"] {
            assert!(matches(&re, ok), "{ok} should be accepted");
        }
        for bad in ["", "1web", "Web", "my_svc", "my.svc", "web-", &"a".repeat(64)] {
            assert!(!matches(&re, bad), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn shared_dicts_are_unique_by_name_with_parseable_capacities() {
        let d = &spec()["properties"]["sharedDicts"];
        assert_eq!(d["maxItems"], 32);
        assert_eq!(d["x-kubernetes-list-type"], "map");
        assert_eq!(d["x-kubernetes-list-map-keys"], json!(["name"]));
        // A list-map key must be required (or defaulted).
        assert!(d["items"]["required"].as_array().unwrap().contains(&json!("name")));

        let name = &d["items"]["properties"]["name"];
        assert_eq!(name["maxLength"], 64);
        let re = pattern(name);
        for ok in ["counters", "my_cache", "plugin-limit-req", "_x", "Cache2"] {
            assert!(matches(&re, ok), "{ok} should be accepted");
        }
        for bad in ["", "my cache", "a.b", "ngx.shared", "é"] {
            assert!(!matches(&re, bad), "{bad:?} should be rejected");
        }

        let capacity = &d["items"]["properties"]["capacity"];
        assert_eq!(capacity["maxLength"], 32);
        assert_sizes_agree_with_parse_bytes(&pattern(capacity));
    }

    /// The size pattern accepts exactly what `parse_bytes` parses (short of overflow).
    fn assert_sizes_agree_with_parse_bytes(re: &pcre2::bytes::Regex) {
        let mut inputs: Vec<String> = [
            "", "Mi", "1.5Mi", "-1", "1 Mi", " 1Mi", "1MiB", "1mi", "1KI", "0x10", "1e6",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for unit in [
            "", "k", "K", "Ki", "m", "M", "Mi", "g", "G", "Gi", "Ti", "T", "t", "b", "B", "kB", "Kib", "i",
        ] {
            inputs.push(format!("8{unit}"));
            inputs.push(format!("1024{unit}"));
        }
        for s in inputs {
            assert_eq!(
                matches(re, &s),
                parse_bytes(&s).is_ok() && !s.contains(' '),
                "pattern and parse_bytes disagree on {s:?}"
            );
        }
    }

    #[test]
    fn module_names_are_dotted_lua_identifiers() {
        let m = &spec()["properties"]["modules"];
        assert_eq!(m["maxProperties"], 128);
        assert_eq!(m["additionalProperties"]["type"], "string");
        let (rule, message) = &rules(m)[0];
        assert_eq!(rule, &format!("self.all(k, k.matches('{MODULE_NAME_PATTERN}'))"));
        assert!(message.contains("resty.mylib"));
        // The pattern sits in a single-quoted CEL string: no quote or backslash to escape.
        assert!(!MODULE_NAME_PATTERN.contains(['\'', '\\']));
        assert!(!VAR_NAME_PATTERN.contains(['\'', '\\']));
        let re = pcre2::bytes::Regex::new(MODULE_NAME_PATTERN).unwrap();
        for ok in ["util", "resty.http", "my_lib.v2.core", "_private"] {
            assert!(matches(&re, ok), "{ok} should be accepted");
        }
        for bad in [
            "",
            "2fast",
            "resty..http",
            ".resty",
            "resty.",
            "resty/http",
            "lua-cjson",
            "a.1b",
        ] {
            assert!(!matches(&re, bad), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn limits_have_floors_and_sizes() {
        let l = &spec()["properties"]["limits"]["properties"];
        // JSONSchemaProps keeps bounds as f64.
        assert_eq!(
            l["instructionBudget"]["minimum"].as_f64(),
            Some(MIN_INSTRUCTION_BUDGET as f64)
        );
        assert_eq!(l["instructionBudget"]["nullable"], true);
        assert_eq!(l["maxBodySize"]["maxLength"], 32);
        assert_sizes_agree_with_parse_bytes(&pattern(&l["maxBodySize"]));
    }

    /// The apiserver refuses a CEL rule whose worst-case cost it cannot bound, and
    /// estimates that cost from `maxItems`/`maxProperties`: every list and map in the
    /// spec is bounded.
    #[test]
    fn every_list_and_map_in_the_spec_is_bounded() {
        fn walk(at: &str, s: &Value, unbounded: &mut Vec<String>) {
            match s["type"].as_str() {
                Some("array") if s.get("maxItems").is_none() => unbounded.push(at.to_string()),
                Some("object") if s.get("additionalProperties").is_some() && s.get("maxProperties").is_none() => {
                    unbounded.push(at.to_string())
                }
                _ => {}
            }
            if let Some(props) = s["properties"].as_object() {
                for (name, p) in props {
                    walk(&format!("{at}.{name}"), p, unbounded);
                }
            }
            if let Some(items) = s.get("items") {
                walk(&format!("{at}[]"), items, unbounded);
            }
        }
        let mut unbounded = Vec::new();
        walk("spec", &spec(), &mut unbounded);
        assert!(unbounded.is_empty(), "unbounded lists or maps: {unbounded:?}");
    }

    /// Every CEL rule carries a message, and none is left to the derive's own
    /// structural rewriting to mangle.
    #[test]
    fn every_cel_rule_has_a_message() {
        fn walk(s: &Value, found: &mut usize) {
            for r in s["x-kubernetes-validations"].as_array().into_iter().flatten() {
                assert!(
                    r["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "rule without message: {r}"
                );
                let rule = r["rule"].as_str().unwrap();
                assert_eq!(
                    rule.matches('(').count(),
                    rule.matches(')').count(),
                    "unbalanced: {rule}"
                );
                assert_eq!(rule.matches('\'').count() % 2, 0, "unbalanced quotes: {rule}");
                *found += 1;
            }
            for p in s["properties"].as_object().into_iter().flat_map(|p| p.values()) {
                walk(p, found);
            }
            if let Some(items) = s.get("items") {
                walk(items, found);
            }
            if let Some(values) = s.get("additionalProperties") {
                walk(values, found);
            }
        }
        let mut found = 0;
        walk(&schema(), &mut found);
        assert_eq!(found, 4);
    }

    /// The apiserver warns about formats it does not know (`uint16`, `uint64`...) on
    /// every `kubectl apply` of the CRD.
    #[test]
    fn every_integer_format_is_one_kubernetes_knows() {
        fn walk(at: &str, s: &Value, unknown: &mut Vec<String>) {
            if let Some(f) = s["format"].as_str()
                && !["int32", "int64", "date-time"].contains(&f)
            {
                unknown.push(format!("{at}: {f}"));
            }
            for (name, p) in s["properties"].as_object().into_iter().flatten() {
                walk(&format!("{at}.{name}"), p, unknown);
            }
            if let Some(items) = s.get("items") {
                walk(&format!("{at}[]"), items, unknown);
            }
        }
        let mut unknown = Vec::new();
        walk("", &schema(), &mut unknown);
        assert!(unknown.is_empty(), "formats the apiserver warns about: {unknown:?}");
    }

    #[test]
    fn allowed_namespaces_are_a_bounded_set_of_namespace_names_or_a_star() {
        let a = &spec()["properties"]["allowedNamespaces"];
        assert_eq!(a["type"], "array");
        assert_eq!(a["maxItems"], 32);
        assert_eq!(a["x-kubernetes-list-type"], "set");
        assert_eq!(a["items"]["minLength"], 1);
        assert_eq!(a["items"]["maxLength"], 63);
        assert_eq!(a["items"]["pattern"], NAMESPACE_OR_ANY_PATTERN);
        let doc = a["description"].as_str().unwrap();
        assert!(
            doc.starts_with("Other namespaces whose LuaRoutes may serve this route's hostnames too."),
            "{doc}"
        );
        for told in [
            "oldest LuaRoute",
            "`*`",
            "Conflicted",
            "per hostname",
            "owning namespace",
        ] {
            assert!(doc.contains(told), "kubectl explain should say {told:?}: {doc}");
        }
        let re = pattern(&a["items"]);
        for ok in ["b", "team-b", "*", "default", "0ns", &"a".repeat(63)] {
            assert!(matches(&re, ok), "{ok} should be accepted");
        }
        for bad in [
            "",
            "B",
            "team_b",
            "a.b",
            "-a",
            "a-",
            "*.a",
            "a*",
            "**",
            " *",
            &"a".repeat(64),
        ] {
            assert!(!matches(&re, bad), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn a_location_may_be_internal_and_name_the_routes_allowed_in() {
        let loc = location();
        let internal = &loc["properties"]["internal"];
        assert_eq!(internal["type"], "boolean");
        assert!(internal["description"].as_str().unwrap().contains("404"));

        let allow = &loc["properties"]["allowFrom"];
        assert_eq!(allow["type"], "array");
        assert_eq!(allow["maxItems"], 16);
        let doc = allow["description"].as_str().unwrap();
        assert!(doc.contains("ngx.exec") && doc.contains("same hostname"), "{doc}");
        let entry = &allow["items"];
        assert!(entry.get("required").is_none(), "namespace and name both default");
        let namespace = &entry["properties"]["namespace"];
        assert_eq!(namespace["maxLength"], 63);
        assert_eq!(namespace["pattern"], NAMESPACE_OR_ANY_PATTERN);
        let name = &entry["properties"]["name"];
        assert_eq!(name["maxLength"], 253);
        let re = pattern(name);
        for ok in ["shop", "shop.v2", "*", "a-b.c-d", "0", &"a".repeat(100)] {
            assert!(matches(&re, ok), "{ok} should be accepted");
        }
        for bad in ["", "Shop", "shop_", ".a", "a.", "a..b", "*a", "a.*", "a b"] {
            assert!(!matches(&re, bad), "{bad:?} should be rejected");
        }
        // The entry is closed: a misspelt field is refused, not ignored.
        let parsed: Result<LuaRouteRef, _> = serde_json::from_value(json!({"namespce": "b"}));
        assert!(parsed.unwrap_err().to_string().contains("namespce"));
    }

    #[test]
    fn printer_columns_and_description_survive() {
        let crd = serde_json::to_value(LuaRoute::crd()).unwrap();
        let columns: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["Hosts", "Accepted", "Programmed", "Age"]);
        assert!(
            schema()["description"]
                .as_str()
                .unwrap()
                .starts_with("LuaRoute is a set of OpenResty-style Lua handlers")
        );
    }
}
