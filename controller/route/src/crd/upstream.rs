//! Where a location proxies to, as nginx's `proxy_pass` and `upstream {}`
//! blocks, and how: TLS, balancing, timeouts, retries, health and keepalive.
//!
//! The schema checks shapes (one of `service`/`url`/`servers`, ranges,
//! patterns); `compile` checks what a pattern cannot (URL and address parsing,
//! durations, files) and maps the spec to `pb::Upstream`, whose zero values
//! mean "the default" — so every default documented here is the dataplane's.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::patterns::{
    ADDRESS_PATTERN, DURATION_PATTERN, HTTP_TOKEN_PATTERN, SERVICE_NAME_PATTERN, UPSTREAM_HOST_PATTERN,
    UPSTREAM_URI_PATTERN, UPSTREAM_URL_PATTERN, VAR_NAME_PATTERN,
};

/// Where to proxy requests to (nginx `proxy_pass`): exactly one of a
/// Kubernetes Service port (`service` and `port`), a URL (`url`), or a static
/// list of servers (`servers`, an nginx `upstream {}` block).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.service) ? 1 : 0) + (has(self.url) ? 1 : 0) + (has(self.servers) ? 1 : 0) == 1",
        "message": "an upstream has exactly one of service (with port), url or servers",
        "fieldPath": ".service",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "has(self.service) == has(self.port)",
        "message": "port is required with service, and only with service",
        "fieldPath": ".port",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "!has(self.uri) || !has(self.url)",
        "message": "uri is not used with url: the url's path is its URI part",
        "fieldPath": ".uri",
        "reason": "FieldValueForbidden",
    },
]))]
pub struct UpstreamSpec {
    /// A Service of the route's own namespace (a DNS-1035 label): requests go
    /// to the ready endpoints of its `port`, as the controller resolves them
    /// from EndpointSlices. Requires `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = SERVICE_NAME_PATTERN))]
    pub service: Option<String>,
    /// The Service port number (1-65535), as in the Service's `spec.ports[].port`.
    /// Required with `service`, not allowed otherwise.
    // schemars writes `uint16`, a format the apiserver warns about at every apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535), extend("format" = "int32"))]
    pub port: Option<u16>,
    /// nginx `proxy_pass URL`: `http://` or `https://` (TLS on, with the
    /// defaults of `tls`), a host name or IP address (`[v6]` bracketed), an
    /// optional port (default 80 or 443) and an optional path, which is the
    /// `proxy_pass` URI part (see `uri`). No user info, query or fragment. A
    /// host name is resolved by the dataplane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 8, max = 2048), regex(pattern = UPSTREAM_URL_PATTERN))]
    pub url: Option<String>,
    /// An nginx `upstream {}` block: 1 to 64 servers, each `host:port` or
    /// `[v6]:port`, with a weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub servers: Option<Vec<UpstreamServerSpec>>,
    /// The URI part of `proxy_pass` for `service` and `servers` (with `url`,
    /// the url's path is it): when set, the part of the normalized request URI
    /// that matched the location's prefix is replaced by it (`proxy_pass
    /// http://u/new/;`); omitted, the request URI passes unchanged. Starts with
    /// `/`; no query or fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = UPSTREAM_URI_PATTERN))]
    pub uri: Option<String>,
    /// The HTTP version spoken to the upstream: `HTTP1` (default) or `HTTP2`
    /// (h2 negotiated by ALPN over TLS, h2c by prior knowledge over plain TCP).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// The Host header sent upstream (`proxy_set_header Host`). Omitted: the
    /// client's Host, as ingress-nginx does; `$proxy_host`: the upstream's
    /// `host[:port]`, nginx's default; anything else: that literal `host[:port]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 261), regex(pattern = UPSTREAM_HOST_PATTERN))]
    pub host: Option<String>,
    /// TLS to the upstream (`proxy_ssl_*`). With `service` or `servers`, its
    /// presence turns TLS on (an `https` `proxy_pass`); with `url`, the scheme
    /// decides and this only tunes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsSpec>,
    /// How a try picks its endpoint. Omitted: `RoundRobin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<BalanceSpec>,
    /// `proxy_connect_timeout`, `proxy_send_timeout`, `proxy_read_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsSpec>,
    /// `proxy_next_upstream`: when a try fails, which failures are retried on
    /// another endpoint, and how often.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetriesSpec>,
    /// Outlier ejection (nginx `max_fails`/`fail_timeout`, with back-off).
    /// Omitted: on, with the defaults below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive_health: Option<PassiveHealthSpec>,
    /// Active health checks: `GET path` to every endpoint each interval.
    /// Omitted: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_health: Option<ActiveHealthSpec>,
    /// Idle upstream connections kept per worker (`keepalive` in `upstream {}`).
    /// Omitted: on, with the defaults below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<KeepaliveSpec>,
}

/// One `server` line of an nginx `upstream {}` block.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamServerSpec {
    /// `host:port`, `ip:port` or `[ipv6]:port`. A host name is resolved by the
    /// dataplane.
    #[schemars(length(min = 3, max = 261), regex(pattern = ADDRESS_PATTERN))]
    pub address: String,
    /// `weight=N`: the server's share of the requests, 1 to 1000. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000), extend("format" = "int32"))]
    pub weight: Option<u32>,
}

/// The HTTP version spoken to the upstream.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    #[default]
    HTTP1,
    /// HTTP/2: h2 over TLS, h2c over plain TCP.
    HTTP2,
}

/// TLS to the upstream.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTlsSpec {
    /// `proxy_ssl_name`: the SNI name sent and the name the certificate is
    /// verified for. Omitted: the upstream's host (an IP address sends no SNI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = super::patterns::HOSTNAME_PATTERN))]
    pub server_name: Option<String>,
    /// `proxy_ssl_trusted_certificate`, standalone mode only: an absolute path
    /// to a PEM CA bundle, read when the routes load. Omitted (and no
    /// `caSecret`): the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub ca_file: Option<String>,
    /// On a cluster: a Secret of the route's namespace whose `ca.crt` key holds
    /// the PEM CA bundle. Not supported yet: a route naming it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub ca_secret: Option<String>,
    /// `proxy_ssl_verify off`: accept any certificate. Default false (verify);
    /// the dataplane honours it only when its operator allows it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
    /// `proxy_ssl_certificate`, standalone mode only: an absolute path to the
    /// PEM client certificate chain for mutual TLS. With `clientKeyFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub client_cert_file: Option<String>,
    /// `proxy_ssl_certificate_key`, standalone mode only: an absolute path to
    /// the PEM private key of `clientCertFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub client_key_file: Option<String>,
    /// On a cluster: a `kubernetes.io/tls` Secret of the route's namespace
    /// holding the client certificate. Not supported yet: a route naming it is
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_secret: Option<String>,
}

/// How a try picks its endpoint.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.hashOn) == (has(self.policy) && self.policy == 'ConsistentHash')",
    "message": "hashOn is required with policy ConsistentHash, and only with it",
    "fieldPath": ".hashOn",
    "reason": "FieldValueInvalid",
}]))]
pub struct BalanceSpec {
    /// `RoundRobin` (smooth weighted, nginx's default), `LeastRequest` (power
    /// of two choices on outstanding requests, weighted by latency) or
    /// `ConsistentHash` (nginx `hash $key consistent`, on `hashOn`).
    #[serde(default)]
    pub policy: BalancePolicy,
    /// What `ConsistentHash` hashes: exactly one of `header`, `cookie`, `var`,
    /// `clientIP`. Required for `ConsistentHash`, not allowed otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOnSpec>,
}

/// Load-balancing policies.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BalancePolicy {
    /// Smooth weighted round-robin.
    #[default]
    RoundRobin,
    /// Fewest outstanding requests of two random endpoints, weighted by latency.
    LeastRequest,
    /// A consistent-hash ring on `hashOn`.
    ConsistentHash,
}

/// The key of a consistent hash: exactly one field.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.header) ? 1 : 0) + (has(self.cookie) ? 1 : 0) + (has(self.var) ? 1 : 0) + (has(self.clientIP) ? 1 : 0) == 1",
    "message": "hashOn has exactly one of header, cookie, var or clientIP",
    "fieldPath": ".header",
    "reason": "FieldValueInvalid",
}]))]
pub struct HashOnSpec {
    /// A request header's value (`hash $http_x_user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = HTTP_TOKEN_PATTERN))]
    pub header: Option<String>,
    /// A request cookie's value (`hash $cookie_sid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = HTTP_TOKEN_PATTERN))]
    pub cookie: Option<String>,
    /// An nginx variable, without `$` (`request_uri`, or one of `vars`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = VAR_NAME_PATTERN))]
    pub var: Option<String>,
    /// `true`: the client's address (`hash $remote_addr`).
    #[serde(default, rename = "clientIP", skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<bool>,
}

/// Upstream timeouts: durations such as `250ms`, `5s`, `1m`, `1h`, each from
/// 1ms to 1h. Each omitted one is 60s, as nginx.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// `proxy_connect_timeout`: to establish the connection (and TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 16), regex(pattern = DURATION_PATTERN))]
    pub connect: Option<String>,
    /// `proxy_send_timeout`: between two writes of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 16), regex(pattern = DURATION_PATTERN))]
    pub send: Option<String>,
    /// `proxy_read_timeout`: between two reads of the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 16), regex(pattern = DURATION_PATTERN))]
    pub read: Option<String>,
}

/// `proxy_next_upstream`, with a retry budget.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetriesSpec {
    /// `proxy_next_upstream_tries`: tries in all, the first included, 1 to 10.
    /// Omitted: as many as there are endpoints, at most 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10), extend("format" = "int32"))]
    pub tries: Option<u32>,
    /// Upstream response statuses that count as a failed try (`http_502`,
    /// `http_503`...), 100 to 599; at most 16. Omitted: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(range(min = 100, max = 599)),
        extend("x-kubernetes-list-type" = "set")
    )]
    // i32, not u16: schemars writes `uint16` on list items with no way to override it.
    pub on_status: Vec<i32>,
    /// Retry a connect error or timeout (`error timeout`). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<bool>,
    /// `non_idempotent`: retry POST, PATCH and LOCK requests too. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_idempotent: bool,
    /// Retries may add at most this percent (1-100) of the requests in flight.
    /// Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100), extend("format" = "int32"))]
    pub budget_percent: Option<u32>,
    /// Retries allowed per second whatever the budget (1-10000). Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000), extend("format" = "int32"))]
    pub min_retries_per_second: Option<u32>,
}

/// Outlier ejection: an endpoint failing `consecutiveFailures` times in a row
/// is left out for `baseEjectionTime`, doubling each time it is ejected again,
/// up to `maxEjectionTime`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PassiveHealthSpec {
    /// `max_fails`: failures in a row that eject, 1 to 1000. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000), extend("format" = "int32"))]
    pub consecutive_failures: Option<u32>,
    /// `fail_timeout`: the first ejection's length (1ms to 1h). Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 16), regex(pattern = DURATION_PATTERN))]
    pub base_ejection_time: Option<String>,
    /// The longest ejection (1ms to 1h), at least `baseEjectionTime`. Default 300s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 16), regex(pattern = DURATION_PATTERN))]
    pub max_ejection_time: Option<String>,
    /// `false`: never eject (nginx `max_fails=0`). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Active health checks.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActiveHealthSpec {
    /// The path each check requests (`GET path`), starting with `/`.
    #[schemars(length(min = 1, max = 1024), regex(pattern = UPSTREAM_URI_PATTERN))]
    pub path: String,
    /// Between two checks of an endpoint (1ms to 1h). Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 16), regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
    /// A check that takes longer fails (1ms to 1h), at most `interval`. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 16), regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// Passing checks in a row that bring an endpoint back, 1 to 100. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100), extend("format" = "int32"))]
    pub healthy_threshold: Option<u32>,
    /// Failing checks in a row that take an endpoint out, 1 to 100. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100), extend("format" = "int32"))]
    pub unhealthy_threshold: Option<u32>,
    /// Statuses that pass, 100 to 599; at most 32. Omitted: 200-399.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(range(min = 100, max = 599)),
        extend("x-kubernetes-list-type" = "set")
    )]
    // i32 for the format, as `RetriesSpec::on_status`.
    pub statuses: Vec<i32>,
}

/// Idle upstream connections kept per worker.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeepaliveSpec {
    /// `keepalive N`: idle connections kept per endpoint per worker, 1 to
    /// 1024. Default 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024), extend("format" = "int32"))]
    pub max_idle: Option<u32>,
    /// `keepalive_timeout`: an idle connection is closed after this (1ms to
    /// 1h). Default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 16), regex(pattern = DURATION_PATTERN))]
    pub idle_timeout: Option<String>,
    /// `keepalive_requests`: requests per connection, then it is closed, 1 to
    /// 1000000. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000), extend("format" = "int32"))]
    pub max_requests: Option<u32>,
    /// `false`: keep no idle connection (one request per connection). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}
