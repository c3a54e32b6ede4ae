//! A location's `upstream` spec checked and mapped to `pb::Upstream`.
//!
//! In: an [`UpstreamSpec`] and whether this compile may read files
//! ([`FileAccess`]). Out: the `pb::Upstream` as `config.proto` documents it, or
//! problems, each naming the field (`upstream.url`, `upstream.retries.tries`...).
//!
//! Everything the schema checks is checked again here, because standalone mode
//! has no apiserver; and what a schema cannot check (URL and address parsing,
//! durations, relations between fields, files) only here.
//!
//! Invariants of the output: exactly one of `service`, `url`, `servers` is set;
//! `url` is `scheme://authority` only, its path (if any) is `uri`; every
//! duration is 1 ms to 1 h in milliseconds; zeros mean "the default", so a field
//! the spec omits stays zero.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::LazyLock;

use moongate_proto::v1 as pb;

use crate::crd::{
    ActiveHealthSpec, BalancePolicy, BalanceSpec, KeepaliveSpec, PassiveHealthSpec, RetriesSpec, SERVICE_NAME_PATTERN,
    TimeoutsSpec, UpstreamProtocol, UpstreamSpec, UpstreamTlsSpec,
};
use crate::error::Problem;

/// Whether compiling may read files a route names (`tls.caFile`...).
///
/// Only standalone mode may: there the route files are the operator's own. A
/// controller compiling a LuaRoute from the API must never read its own
/// filesystem on a user's behalf (a route naming `/var/run/secrets/...` would
/// ship the controller's credentials to every dataplane).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FileAccess {
    /// A cluster: file fields are refused.
    #[default]
    Refused,
    /// Standalone: absolute paths are read while the routes load.
    Allowed,
}

static SERVICE_NAME: LazyLock<pcre2::bytes::Regex> =
    LazyLock::new(|| pcre2::bytes::Regex::new(SERVICE_NAME_PATTERN).expect("a valid pattern"));

/// The schema's bounds, repeated for standalone mode.
const MAX_SERVERS: usize = 64;
const MAX_WEIGHT: u32 = 1000;
const MAX_DURATION_MS: u64 = 3_600_000;

/// Collects the problems of one upstream, each at `upstream.<field>`.
struct Problems<'a>(&'a mut Vec<Problem>);

impl Problems<'_> {
    fn at(&mut self, field: &str, message: impl Into<String>) {
        let phase = if field.is_empty() {
            "upstream".to_string()
        } else {
            format!("upstream.{field}")
        };
        self.0.push(Problem {
            phase: Some(phase),
            ..Problem::new(message)
        });
    }

    /// `value` parsed as a duration, or a problem at `field` and 0 (the default).
    fn duration(&mut self, field: &str, value: &Option<String>) -> u32 {
        let Some(value) = value else { return 0 };
        match parse_duration_ms(value) {
            Ok(ms) => ms,
            Err(e) => {
                self.at(field, e);
                0
            }
        }
    }

    /// `value` if it is in `min..=max`, else a problem at `field` and 0.
    fn ranged(&mut self, field: &str, value: Option<u32>, min: u32, max: u32) -> u32 {
        match value {
            None => 0,
            Some(v) if (min..=max).contains(&v) => v,
            Some(v) => {
                self.at(field, format!("{v} is out of range {min}..={max}"));
                0
            }
        }
    }

    fn statuses(&mut self, field: &str, statuses: &[i32]) -> Vec<u32> {
        for (i, s) in statuses.iter().enumerate() {
            if !(100..=599).contains(s) {
                self.at(field, format!("status {s} is not an HTTP status (100..=599)"));
            }
            if statuses[..i].contains(s) {
                self.at(field, format!("status {s} is listed twice"));
            }
        }
        statuses.iter().filter_map(|&s| u32::try_from(s).ok()).collect()
    }
}

/// A duration as the schema's `DURATION_PATTERN` writes it (`250ms`, `5s`,
/// `1m`, `1h`), in milliseconds, 1 ms to 1 h.
pub fn parse_duration_ms(s: &str) -> Result<u32, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let scale: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: a whole number and ms, s, m or h, as \"5s\""
            ));
        }
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: a whole number and ms, s, m or h, as \"5s\""))?;
    let ms = number.saturating_mul(scale);
    if !(1..=MAX_DURATION_MS).contains(&ms) {
        return Err(format!("duration {s:?} is out of range 1ms..=1h"));
    }
    Ok(ms as u32)
}

/// A host as an upstream names it: a DNS name, an IPv4 address, or a
/// bracketed IPv6 address.
fn valid_host(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().is_ok();
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Splits `host:port` (`[v6]:port`); the port is required when `port_required`.
pub fn parse_host_port(s: &str, port_required: bool) -> Result<(&str, Option<u16>), String> {
    // A colon after the closing bracket, or the only colon of a non-bracketed host.
    let split = match s.rfind(':') {
        Some(i) if s.starts_with('[') && !s[..i].ends_with(']') => None,
        Some(i) if !s.starts_with('[') && s[..i].contains(':') => {
            return Err(format!("{s:?}: an IPv6 address is written in brackets, [::1]:80"));
        }
        other => other,
    };
    let (host, port) = match split {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    if !valid_host(host) {
        return Err(format!("{s:?}: invalid host {host:?}"));
    }
    let port = match port {
        None if port_required => return Err(format!("{s:?}: a port is required (host:port)")),
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(port),
            _ => return Err(format!("{s:?}: invalid port {p:?} (1..=65535)")),
        },
    };
    Ok((host, port))
}

/// An upstream URL split as `pb::Upstream` carries it: `scheme://authority`,
/// whether it is TLS, and its path (the `proxy_pass` URI part) if it has one.
fn parse_url(s: &str) -> Result<(String, bool, Option<String>), String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("URL {s:?}: the scheme must be http:// or https://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("URL {s:?} has no host"))?
        .as_str();
    if authority.contains('@') {
        return Err(format!("URL {s:?}: user info is not allowed"));
    }
    if uri.query().is_some() || s.contains('#') {
        return Err(format!("URL {s:?}: a query or fragment is not allowed"));
    }
    parse_host_port(authority, false).map_err(|e| format!("URL {e}"))?;
    // `Uri::path` says "/" for both `http://a` and `http://a/`, which nginx
    // tells apart (no URI part vs. the URI part "/"): take the path from the text.
    let rest = &s[s.find("://").map_or(0, |i| i + 3)..];
    let path = rest.find('/').map(|i| rest[i..].to_string());
    let scheme = if tls { "https" } else { "http" };
    Ok((format!("{scheme}://{authority}"), tls, path))
}

fn valid_uri(uri: &str) -> bool {
    uri.starts_with('/') && !uri.contains(['?', '#']) && !uri.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20)
}

/// An HTTP token (RFC 9110): header and cookie names.
fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&b))
}

/// Checks `spec` and maps it to the wire; problems go to `problems`.
pub fn compile_upstream(spec: &UpstreamSpec, files: FileAccess, problems: &mut Vec<Problem>) -> pb::Upstream {
    let mut p = Problems(problems);
    let mut out = pb::Upstream::default();

    let kinds = [spec.service.is_some(), spec.url.is_some(), spec.servers.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 {
        p.at("", "an upstream has exactly one of service (with port), url or servers");
    }
    if let Some(service) = &spec.service {
        if service.len() > 63 || !SERVICE_NAME.is_match(service.as_bytes()).unwrap_or(false) {
            p.at("service", format!("invalid Service name {service:?}: a DNS-1035 label"));
        }
        out.service = service.clone();
        match spec.port {
            Some(0) | None => p.at("port", "a Service port (1..=65535) is required with service"),
            Some(port) => out.port = port.into(),
        }
    } else if spec.port.is_some() {
        p.at("port", "port is only used with service");
    }
    let mut url_tls = None;
    if let Some(url) = &spec.url {
        match parse_url(url) {
            Ok((base, tls, path)) => {
                out.url = base;
                out.uri = path;
                url_tls = Some(tls);
            }
            Err(e) => p.at("url", e),
        }
        if spec.uri.is_some() {
            p.at("uri", "uri is not used with url: the url's path is its URI part");
        }
    }
    if let Some(servers) = &spec.servers {
        if servers.is_empty() || servers.len() > MAX_SERVERS {
            p.at("servers", format!("1 to {MAX_SERVERS} servers"));
        }
        for (i, server) in servers.iter().enumerate() {
            if let Err(e) = parse_host_port(&server.address, true) {
                p.at(&format!("servers[{i}].address"), e);
            }
            let weight = p.ranged(&format!("servers[{i}].weight"), server.weight, 1, MAX_WEIGHT);
            out.servers.push(pb::UpstreamServer {
                address: server.address.clone(),
                weight: weight.max(1),
            });
        }
    }
    if let Some(uri) = &spec.uri
        && spec.url.is_none()
    {
        if valid_uri(uri) {
            out.uri = Some(uri.clone());
        } else {
            p.at(
                "uri",
                format!("invalid URI {uri:?}: starts with '/', no space, query or fragment"),
            );
        }
    }
    out.protocol = match spec.protocol {
        UpstreamProtocol::HTTP1 => pb::UpstreamProtocol::Http1,
        UpstreamProtocol::HTTP2 => pb::UpstreamProtocol::Http2,
    } as i32;
    if let Some(host) = &spec.host {
        if host != "$proxy_host"
            && let Err(e) = parse_host_port(host, false)
        {
            p.at("host", format!("{e}: \"$proxy_host\" or a host[:port]"));
        }
        out.host = Some(host.clone());
    }
    out.tls = match url_tls {
        Some(false) if spec.tls.is_some() => {
            p.at("tls", "tls with an http:// url: write https:// to turn TLS on");
            false
        }
        Some(tls) => tls,
        None => spec.tls.is_some(),
    };
    out.tls_settings = spec.tls.as_ref().map(|tls| compile_tls(tls, files, &mut p));
    out.balance = spec.balance.as_ref().map(|b| compile_balance(b, &mut p));
    out.timeouts = spec.timeouts.as_ref().map(|t| compile_timeouts(t, &mut p));
    out.retry = spec.retries.as_ref().map(|r| compile_retries(r, &mut p));
    out.passive_health = spec.passive_health.as_ref().map(|h| compile_passive(h, &mut p));
    out.active_health = spec.active_health.as_ref().map(|h| compile_active(h, &mut p));
    out.keepalive = spec.keepalive.as_ref().map(|k| compile_keepalive(k, &mut p));
    out
}

/// Reads a PEM file named by `field`, in standalone mode only.
fn read_pem(field: &str, path: &str, files: FileAccess, secret: &str, p: &mut Problems) -> Vec<u8> {
    if files == FileAccess::Refused {
        p.at(
            field,
            format!("files are read in standalone mode only; on a cluster use {secret}"),
        );
        return Vec::new();
    }
    if !Path::new(path).is_absolute() {
        p.at(field, format!("{path:?} must be an absolute path"));
        return Vec::new();
    }
    match std::fs::read(path) {
        Ok(pem) if pem.windows(11).any(|w| w == b"-----BEGIN ") => pem,
        Ok(_) => {
            p.at(field, format!("{path}: not a PEM file (no -----BEGIN line)"));
            Vec::new()
        }
        Err(e) => {
            p.at(field, format!("{path}: {e}"));
            Vec::new()
        }
    }
}

fn compile_tls(tls: &UpstreamTlsSpec, files: FileAccess, p: &mut Problems) -> pb::UpstreamTls {
    let mut out = pb::UpstreamTls {
        insecure_skip_verify: tls.insecure_skip_verify,
        ..Default::default()
    };
    if let Some(name) = &tls.server_name {
        if valid_host(name) && !name.starts_with('[') {
            out.server_name = name.clone();
        } else {
            p.at("tls.serverName", format!("invalid server name {name:?}: a DNS name"));
        }
    }
    // Secrets need a watcher the controller does not have yet; refusing them
    // beats a route that silently verifies against the system roots.
    if tls.ca_secret.is_some() {
        p.at("tls.caSecret", "caSecret is not supported yet");
    }
    if tls.client_secret.is_some() {
        p.at("tls.clientSecret", "clientSecret is not supported yet");
    }
    if tls.ca_file.is_some() && tls.ca_secret.is_some() {
        p.at("tls.caFile", "caFile and caSecret exclude each other");
    }
    if let Some(path) = &tls.ca_file {
        out.ca_pem = read_pem("tls.caFile", path, files, "caSecret", p);
    }
    match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            out.client_cert_pem = read_pem("tls.clientCertFile", cert, files, "clientSecret", p);
            out.client_key_pem = read_pem("tls.clientKeyFile", key, files, "clientSecret", p);
        }
        (Some(_), None) => p.at("tls.clientKeyFile", "clientCertFile needs clientKeyFile"),
        (None, Some(_)) => p.at("tls.clientCertFile", "clientKeyFile needs clientCertFile"),
        (None, None) => {}
    }
    out
}

fn compile_balance(balance: &BalanceSpec, p: &mut Problems) -> pb::Balance {
    let mut out = pb::Balance {
        kind: match balance.policy {
            BalancePolicy::RoundRobin => pb::BalanceKind::RoundRobin,
            BalancePolicy::LeastRequest => pb::BalanceKind::LeastRequest,
            BalancePolicy::ConsistentHash => pb::BalanceKind::ConsistentHash,
        } as i32,
        ..Default::default()
    };
    let Some(on) = &balance.hash_on else {
        if balance.policy == BalancePolicy::ConsistentHash {
            p.at("balance.hashOn", "hashOn is required with policy ConsistentHash");
        }
        return out;
    };
    if balance.policy != BalancePolicy::ConsistentHash {
        p.at("balance.hashOn", "hashOn is only used with policy ConsistentHash");
    }
    let set = [
        on.header.is_some(),
        on.cookie.is_some(),
        on.var.is_some(),
        on.client_ip.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        p.at("balance.hashOn", "exactly one of header, cookie, var or clientIP");
    }
    if let Some(header) = &on.header {
        if !valid_token(header) {
            p.at("balance.hashOn.header", format!("invalid header name {header:?}"));
        }
        out.hash_header = header.clone();
    }
    if let Some(cookie) = &on.cookie {
        if !valid_token(cookie) {
            p.at("balance.hashOn.cookie", format!("invalid cookie name {cookie:?}"));
        }
        out.hash_cookie = cookie.clone();
    }
    if let Some(var) = &on.var {
        if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            p.at(
                "balance.hashOn.var",
                format!("invalid variable name {var:?}, written without '$'"),
            );
        }
        out.hash_var = var.clone();
    }
    match on.client_ip {
        Some(true) => out.hash_client_ip = true,
        Some(false) => p.at("balance.hashOn.clientIP", "clientIP: false hashes on nothing"),
        None => {}
    }
    out
}

fn compile_timeouts(t: &TimeoutsSpec, p: &mut Problems) -> pb::UpstreamTimeouts {
    pb::UpstreamTimeouts {
        connect_ms: p.duration("timeouts.connect", &t.connect),
        send_ms: p.duration("timeouts.send", &t.send),
        read_ms: p.duration("timeouts.read", &t.read),
    }
}

fn compile_retries(r: &RetriesSpec, p: &mut Problems) -> pb::Retry {
    if r.on_status.len() > 16 {
        p.at("retries.onStatus", "at most 16 statuses");
    }
    pb::Retry {
        tries: p.ranged("retries.tries", r.tries, 1, 10),
        on_status: p.statuses("retries.onStatus", &r.on_status),
        no_retry_on_error: r.on_error == Some(false),
        non_idempotent: r.non_idempotent,
        budget_percent: p.ranged("retries.budgetPercent", r.budget_percent, 1, 100),
        min_retries_per_second: p.ranged("retries.minRetriesPerSecond", r.min_retries_per_second, 1, 10_000),
    }
}

fn compile_passive(h: &PassiveHealthSpec, p: &mut Problems) -> pb::PassiveHealth {
    let out = pb::PassiveHealth {
        consecutive_failures: p.ranged("passiveHealth.consecutiveFailures", h.consecutive_failures, 1, 1000),
        base_ejection_ms: p.duration("passiveHealth.baseEjectionTime", &h.base_ejection_time),
        max_ejection_ms: p.duration("passiveHealth.maxEjectionTime", &h.max_ejection_time),
        disabled: h.enabled == Some(false),
    };
    // Compared with the defaults filled in (10 s, 300 s), as the dataplane will.
    let base = if out.base_ejection_ms == 0 {
        10_000
    } else {
        out.base_ejection_ms
    };
    let max = if out.max_ejection_ms == 0 {
        300_000
    } else {
        out.max_ejection_ms
    };
    if base > max {
        p.at(
            "passiveHealth.maxEjectionTime",
            format!("maxEjectionTime ({max}ms) is below baseEjectionTime ({base}ms)"),
        );
    }
    out
}

fn compile_active(h: &ActiveHealthSpec, p: &mut Problems) -> pb::ActiveHealth {
    if !valid_uri(&h.path) {
        p.at(
            "activeHealth.path",
            format!(
                "invalid path {:?}: starts with '/', no space, query or fragment",
                h.path
            ),
        );
    }
    if h.statuses.len() > 32 {
        p.at("activeHealth.statuses", "at most 32 statuses");
    }
    let out = pb::ActiveHealth {
        path: h.path.clone(),
        interval_ms: p.duration("activeHealth.interval", &h.interval),
        timeout_ms: p.duration("activeHealth.timeout", &h.timeout),
        healthy_threshold: p.ranged("activeHealth.healthyThreshold", h.healthy_threshold, 1, 100),
        unhealthy_threshold: p.ranged("activeHealth.unhealthyThreshold", h.unhealthy_threshold, 1, 100),
        statuses: p.statuses("activeHealth.statuses", &h.statuses),
    };
    // With the defaults filled in (5 s, 1 s): a check must end before the next.
    let interval = if out.interval_ms == 0 { 5_000 } else { out.interval_ms };
    let timeout = if out.timeout_ms == 0 { 1_000 } else { out.timeout_ms };
    if timeout > interval {
        p.at(
            "activeHealth.timeout",
            format!("timeout ({timeout}ms) is longer than interval ({interval}ms)"),
        );
    }
    out
}

fn compile_keepalive(k: &KeepaliveSpec, p: &mut Problems) -> pb::Keepalive {
    pb::Keepalive {
        max_idle: p.ranged("keepalive.maxIdle", k.max_idle, 1, 1024),
        idle_timeout_ms: p.duration("keepalive.idleTimeout", &k.idle_timeout),
        max_requests: p.ranged("keepalive.maxRequests", k.max_requests, 1, 1_000_000),
        disabled: k.enabled == Some(false),
    }
}

#[cfg(test)]
mod tests;
