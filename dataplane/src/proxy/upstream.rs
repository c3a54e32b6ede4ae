//! A location's upstream as the dataplane uses it: the wire `pb::Upstream`
//! checked and turned into durations, header values and parsed addresses
//! once, when the config loads, so a request does no parsing.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use moongate_proto::v1 as pb;

use super::endpoints::ServiceKey;
use super::tls::TlsSettings;

/// nginx's default for `proxy_connect_timeout`, `_send_timeout`, `_read_timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the requests go.
#[derive(Debug)]
pub enum Target {
    /// A Service port of the route's namespace: its endpoints come from the
    /// controller (`EndpointTable`).
    Service(ServiceKey),
    /// Servers named in the route (`url` is one server): a host name is
    /// resolved when a request needs it.
    Servers(Vec<Server>),
}

#[derive(Debug, Clone)]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

/// The Host header sent upstream.
#[derive(Debug)]
pub enum HostHeader {
    /// The client's (ingress-nginx's default).
    Client,
    /// The upstream's host[:port] (nginx's `$proxy_host`, its default).
    Proxy,
    Literal(HeaderValue),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// h2 over TLS, h2c without.
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceKind {
    RoundRobin,
    LeastRequest,
    ConsistentHash,
}

/// What a consistent hash is computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Header(http::HeaderName),
    Cookie(String),
    Var(String),
    ClientIp,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub send: Duration,
    pub read: Duration,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries in all; `None`: as many as there are peers, at most 3.
    pub tries: Option<u32>,
    pub on_status: Vec<u16>,
    pub on_error: bool,
    pub non_idempotent: bool,
    pub budget_percent: u32,
    pub min_retries_per_second: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct PassivePolicy {
    pub enabled: bool,
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

#[derive(Debug, Clone)]
pub struct ActivePolicy {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Empty: 200-399.
    pub statuses: Vec<u16>,
}

impl ActivePolicy {
    pub fn healthy_status(&self, status: u16) -> bool {
        if self.statuses.is_empty() {
            (200..400).contains(&status)
        } else {
            self.statuses.contains(&status)
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct KeepalivePolicy {
    /// 0: no idle connection is kept.
    pub max_idle: usize,
    pub idle_timeout: Duration,
    pub max_requests: u32,
}

#[derive(Debug)]
pub struct Upstream {
    pub target: Target,
    /// `proxy_pass`'s URI part.
    pub uri: Option<Vec<u8>>,
    pub tls: Option<Arc<TlsSettings>>,
    pub protocol: Protocol,
    pub host: HostHeader,
    pub balance: BalanceKind,
    pub hash_on: Option<HashOn>,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub passive: PassivePolicy,
    pub active: Option<ActivePolicy>,
    pub keepalive: KeepalivePolicy,
}

fn ms(v: u32, default: Duration) -> Duration {
    if v == 0 {
        default
    } else {
        Duration::from_millis(v.into())
    }
}

fn or(v: u32, default: u32) -> u32 {
    if v == 0 { default } else { v }
}

/// Splits "host:port", "[v6]:port" or, with `default_port`, a bare host.
pub fn split_host_port(s: &str, default_port: Option<u16>) -> Option<(String, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, rest) = rest.split_once(']')?;
        let port = match rest.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if rest.is_empty() => default_port?,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host.to_string(), port.parse().ok()?)),
        Some(_) => None,
        None => Some((s.to_string(), default_port?)),
    }
}

impl Upstream {
    /// The dataplane's form of `u`, an upstream of a route in `namespace`.
    pub fn from_proto(u: &pb::Upstream, namespace: &str) -> Result<Upstream, String> {
        let target = if !u.service.is_empty() {
            let port = u16::try_from(u.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or("upstream port out of range")?;
            Target::Service(ServiceKey {
                namespace: namespace.to_string(),
                service: u.service.clone(),
                port,
            })
        } else if !u.url.is_empty() {
            let uri: http::Uri = u.url.parse().map_err(|e| format!("upstream url {:?}: {e}", u.url))?;
            let default_port = if u.tls { 443 } else { 80 };
            let authority = uri
                .authority()
                .ok_or_else(|| format!("upstream url {:?} has no host", u.url))?;
            let (host, port) = split_host_port(authority.as_str(), Some(default_port))
                .ok_or_else(|| format!("upstream url {:?}: bad host or port", u.url))?;
            Target::Servers(vec![Server { host, port, weight: 1 }])
        } else if !u.servers.is_empty() {
            let servers = u
                .servers
                .iter()
                .map(|s| {
                    let (host, port) = split_host_port(&s.address, None)
                        .ok_or_else(|| format!("upstream server {:?}: want host:port", s.address))?;
                    Ok(Server {
                        host,
                        port,
                        weight: s.weight.max(1),
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            Target::Servers(servers)
        } else {
            return Err("upstream names no service, url or servers".into());
        };
        let host = match u.host.as_deref() {
            None => HostHeader::Client,
            Some("$proxy_host") => HostHeader::Proxy,
            Some(h) => HostHeader::Literal(
                HeaderValue::from_str(h).map_err(|_| format!("upstream host {h:?} is not a valid header value"))?,
            ),
        };
        let balance = u.balance.clone().unwrap_or_default();
        let (kind, hash_on) = match pb::BalanceKind::try_from(balance.kind).unwrap_or_default() {
            pb::BalanceKind::RoundRobin => (BalanceKind::RoundRobin, None),
            pb::BalanceKind::LeastRequest => (BalanceKind::LeastRequest, None),
            pb::BalanceKind::ConsistentHash => {
                let on = if !balance.hash_header.is_empty() {
                    HashOn::Header(
                        http::HeaderName::from_bytes(balance.hash_header.as_bytes())
                            .map_err(|_| format!("hash header {:?} is not a header name", balance.hash_header))?,
                    )
                } else if !balance.hash_cookie.is_empty() {
                    HashOn::Cookie(balance.hash_cookie.clone())
                } else if !balance.hash_var.is_empty() {
                    HashOn::Var(balance.hash_var.clone())
                } else {
                    HashOn::ClientIp
                };
                (BalanceKind::ConsistentHash, Some(on))
            }
        };
        let t = u.timeouts.unwrap_or_default();
        let r = u.retry.clone().unwrap_or_default();
        let p = u.passive_health.unwrap_or_default();
        let k = u.keepalive.unwrap_or_default();
        let tls = if u.tls {
            let server_name = match &target {
                Target::Servers(s) if s.len() == 1 => s[0].host.clone(),
                _ => String::new(),
            };
            Some(Arc::new(TlsSettings::new(
                &u.tls_settings.clone().unwrap_or_default(),
                &server_name,
                u.protocol(),
            )?))
        } else {
            None
        };
        Ok(Upstream {
            target,
            uri: u.uri.as_ref().map(|s| s.as_bytes().to_vec()),
            tls,
            protocol: match u.protocol() {
                pb::UpstreamProtocol::Http1 => Protocol::Http1,
                pb::UpstreamProtocol::Http2 => Protocol::Http2,
            },
            host,
            balance: kind,
            hash_on,
            timeouts: Timeouts {
                connect: ms(t.connect_ms, DEFAULT_TIMEOUT),
                send: ms(t.send_ms, DEFAULT_TIMEOUT),
                read: ms(t.read_ms, DEFAULT_TIMEOUT),
            },
            retry: RetryPolicy {
                tries: (r.tries != 0).then_some(r.tries),
                on_status: r.on_status.iter().filter_map(|s| u16::try_from(*s).ok()).collect(),
                on_error: !r.no_retry_on_error,
                non_idempotent: r.non_idempotent,
                budget_percent: or(r.budget_percent, 20),
                min_retries_per_second: or(r.min_retries_per_second, 10),
            },
            passive: PassivePolicy {
                enabled: !p.disabled,
                consecutive_failures: or(p.consecutive_failures, 5),
                base_ejection: ms(p.base_ejection_ms, Duration::from_secs(10)),
                max_ejection: ms(p.max_ejection_ms, Duration::from_secs(300)),
            },
            active: u.active_health.as_ref().map(|a| ActivePolicy {
                path: if a.path.is_empty() { "/".into() } else { a.path.clone() },
                interval: ms(a.interval_ms, Duration::from_secs(5)),
                timeout: ms(a.timeout_ms, Duration::from_secs(1)),
                healthy_threshold: or(a.healthy_threshold, 2),
                unhealthy_threshold: or(a.unhealthy_threshold, 3),
                statuses: a.statuses.iter().filter_map(|s| u16::try_from(*s).ok()).collect(),
            }),
            keepalive: KeepalivePolicy {
                max_idle: if k.disabled { 0 } else { or(k.max_idle, 32) as usize },
                idle_timeout: ms(k.idle_timeout_ms, Duration::from_secs(60)),
                max_requests: or(k.max_requests, 1000),
            },
        })
    }

    /// The Host of `$proxy_host` for a peer reached as `host:port`.
    pub fn proxy_host(&self, host: &str, port: u16) -> String {
        let default = if self.tls.is_some() { 443 } else { 80 };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        if port == default {
            host
        } else {
            format!("{host}:{port}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("a.test:81", None), Some(("a.test".into(), 81)));
        assert_eq!(split_host_port("[::1]:8080", None), Some(("::1".into(), 8080)));
        assert_eq!(split_host_port("a.test", Some(80)), Some(("a.test".into(), 80)));
        assert_eq!(split_host_port("a.test", None), None);
        assert_eq!(split_host_port("::1:80", None), None);
        assert_eq!(split_host_port("a:99999", None), None);
    }

    #[test]
    fn a_url_becomes_one_server_with_its_scheme_port() {
        let u = pb::Upstream {
            url: "http://backend.test".into(),
            uri: Some("/v2/".into()),
            ..Default::default()
        };
        let up = Upstream::from_proto(&u, "ns").unwrap();
        match &up.target {
            Target::Servers(s) => assert_eq!((s[0].host.as_str(), s[0].port), ("backend.test", 80)),
            other => panic!("{other:?}"),
        }
        assert_eq!(up.uri.as_deref(), Some(&b"/v2/"[..]));
        assert_eq!(up.timeouts.read, DEFAULT_TIMEOUT);
        assert_eq!(up.proxy_host("backend.test", 80), "backend.test");
        assert_eq!(up.proxy_host("::1", 8080), "[::1]:8080");
    }
}
