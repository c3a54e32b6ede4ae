//! A route's nginx `location` blocks: what they match, their handlers, where
//! they proxy to and which other routes may reach them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::patterns::{MEDIA_TYPE_PATTERN, NAMESPACE_OR_ANY_PATTERN, ROUTE_NAME_OR_ANY_PATTERN, VAR_NAME_PATTERN};
use super::upstream::UpstreamSpec;

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
    {
        "rule": "!has(self.balancer) || has(self.upstream)",
        "message": "balancer (balancer_by_lua) picks the peers of an upstream: it requires upstream",
        "fieldPath": ".balancer",
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

    /// Where to proxy requests to (nginx `proxy_pass`), for a location without
    /// a `content` handler: a Service port, a URL or a list of servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamSpec>,

    /// `balancer_by_lua`: runs for each try of the `upstream` and may pick its
    /// peer (`ngx.balancer.set_current_peer`) instead of `balance`. Requires
    /// `upstream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancer: Option<String>,

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
