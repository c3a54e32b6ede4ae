//! What a worker keeps per upstream between requests: the peers it resolved
//! and their balancer, passive and active health, the retry budget, and the
//! upstream's metric handles.
//!
//! Invariants:
//! - The peer set is rebuilt when its source changed: the Service's entry in
//!   the `EndpointTable` (by generation) or, for named servers, when their
//!   names were resolved more than `RESOLVE_TTL` ago. Health is keyed by
//!   address, so it survives a rebuild.
//! - The state lives as long as the config's location: a new config gets new
//!   state (its upstream may differ), keyed by the location's `Upstream`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::balance::{Balancer, Peer, Policy};
use super::endpoints::EndpointTable;
use super::health::{ActiveHealth, PassiveConfig, PassiveHealth};
use super::retry::RetryBudget;
use super::upstream::{BalanceKind, Target, Upstream};

/// How long resolved host names are used before they are looked up again.
const RESOLVE_TTL: Duration = Duration::from_secs(30);

/// One peer as a try uses it.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// The name it was reached by: TLS verification, SNI, `$proxy_host`.
    pub host: String,
    pub port: u16,
}

pub struct PeerSet {
    pub balancer: Balancer,
    pub info: Vec<PeerInfo>,
    /// Where it came from: the table generation, or when names were resolved.
    source: Source,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Table(u64),
    Resolved(Instant),
}

/// Why an upstream has no peer to try.
#[derive(Debug)]
pub enum NoPeers {
    /// A Service with no ready endpoint (or unknown): 503.
    Service(String),
    /// Names that did not resolve: 502.
    Resolve(String),
}

pub struct UpstreamState {
    pub upstream: Arc<Upstream>,
    peers: RefCell<Option<Rc<PeerSet>>>,
    pub passive: PassiveHealth,
    pub active: Option<ActiveHealth>,
    pub budget: RetryBudget,
    pub metrics: crate::metrics::UpstreamMetrics,
}

impl UpstreamState {
    pub fn new(upstream: Arc<Upstream>, route: &str, label: String) -> UpstreamState {
        let p = upstream.passive;
        let retry = &upstream.retry;
        UpstreamState {
            passive: PassiveHealth::new(PassiveConfig {
                consecutive_failures: p.consecutive_failures,
                base_ejection: p.base_ejection,
                max_ejection: p.max_ejection,
                enabled: p.enabled,
            }),
            active: upstream
                .active
                .as_ref()
                .map(|a| ActiveHealth::new(a.healthy_threshold, a.unhealthy_threshold)),
            budget: RetryBudget::new(retry.budget_percent, retry.min_retries_per_second),
            metrics: crate::metrics::UpstreamMetrics::new(route, &label),
            peers: RefCell::new(None),
            upstream,
        }
    }

    fn policy(&self) -> Policy {
        match self.upstream.balance {
            BalanceKind::RoundRobin => Policy::RoundRobin,
            BalanceKind::LeastRequest => Policy::LeastRequest,
            BalanceKind::ConsistentHash => Policy::ConsistentHash,
        }
    }

    /// The current peers, rebuilt if their source changed.
    pub async fn peers(&self, table: &EndpointTable) -> Result<Rc<PeerSet>, NoPeers> {
        let now = Instant::now();
        match &self.upstream.target {
            Target::Service(key) => {
                let generation = table.generation();
                if let Some(p) = self.peers.borrow().as_ref()
                    && p.source == Source::Table(generation)
                {
                    return Ok(p.clone());
                }
                let Some(endpoints) = table.get(key) else {
                    return Err(NoPeers::Service(format!("{key}: no endpoints known")));
                };
                if let Some(problem) = &endpoints.problem {
                    return Err(NoPeers::Service(format!("{key}: {problem}")));
                }
                let host = format!("{}.{}.svc", key.service, key.namespace);
                let info: Vec<PeerInfo> = endpoints
                    .addrs
                    .iter()
                    .map(|a| PeerInfo {
                        addr: *a,
                        host: host.clone(),
                        port: key.port,
                    })
                    .collect();
                Ok(self.install(info, vec![1; endpoints.addrs.len()], Source::Table(generation)))
            }
            Target::Servers(servers) => {
                if let Some(p) = self.peers.borrow().as_ref()
                    && let Source::Resolved(at) = p.source
                    && now.duration_since(at) < RESOLVE_TTL
                {
                    return Ok(p.clone());
                }
                let mut info = Vec::new();
                let mut weights = Vec::new();
                let mut failures = Vec::new();
                for s in servers {
                    match resolve(&s.host, s.port).await {
                        Ok(addrs) => {
                            for addr in addrs {
                                info.push(PeerInfo {
                                    addr,
                                    host: s.host.clone(),
                                    port: s.port,
                                });
                                weights.push(s.weight);
                            }
                        }
                        Err(e) => failures.push(format!("{}:{}: {e}", s.host, s.port)),
                    }
                }
                if info.is_empty() {
                    // Keep serving the last resolution rather than none.
                    if let Some(p) = self.peers.borrow().as_ref() {
                        return Ok(p.clone());
                    }
                    return Err(NoPeers::Resolve(failures.join("; ")));
                }
                Ok(self.install(info, weights, Source::Resolved(now)))
            }
        }
    }

    fn install(&self, info: Vec<PeerInfo>, weights: Vec<u32>, source: Source) -> Rc<PeerSet> {
        let peers = info
            .iter()
            .zip(&weights)
            .map(|(p, w)| Peer {
                addr: p.addr,
                weight: (*w).max(1),
            })
            .collect();
        // Health of addresses no longer among the peers is forgotten.
        let live: Vec<SocketAddr> = info.iter().map(|p| p.addr).collect();
        self.passive.retain(|a| live.contains(&a));
        if let Some(active) = &self.active {
            active.retain(|a| live.contains(&a));
        }
        let set = Rc::new(PeerSet {
            balancer: Balancer::new(self.policy(), peers),
            info,
            source,
        });
        *self.peers.borrow_mut() = Some(set.clone());
        set
    }

    /// Whether `addr` may get requests now: not ejected, and healthy by the
    /// active checks if there are any.
    pub fn usable(&self, addr: SocketAddr, now: Instant) -> bool {
        self.passive.usable(addr, now) && self.active.as_ref().is_none_or(|a| a.healthy(addr))
    }
}

/// `host:port` as socket addresses: an IP literal at once, a name through
/// the system resolver (off the worker thread).
async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// Active health checks of one upstream on this worker: every interval,
/// `GET path` to each peer on a fresh connection; the results feed
/// `ActiveHealth`. The task ends when the upstream's state is dropped (a
/// new config without it).
pub fn spawn_checker(state: &Rc<UpstreamState>, table: Arc<EndpointTable>, egress: Arc<super::egress::EgressPolicy>) {
    let Some(policy) = state.upstream.active.clone() else {
        return;
    };
    let weak = Rc::downgrade(state);
    tokio::task::spawn_local(async move {
        let mut tick = tokio::time::interval(policy.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { return };
            let Ok(peers) = state.peers(&table).await else { continue };
            for peer in &peers.info {
                if egress.check(peer.addr).is_err() {
                    continue;
                }
                let healthy = check_once(&state.upstream, peer, &policy).await;
                if let Some(active) = &state.active
                    && let Some(now_healthy) = active.record(peer.addr, healthy)
                {
                    if now_healthy {
                        tracing::info!("upstream {} is healthy again (active check {})", peer.addr, policy.path);
                    } else {
                        tracing::warn!(
                            "upstream {} failed its active checks ({}); no requests go to it",
                            peer.addr,
                            policy.path
                        );
                        state.metrics.ejection();
                    }
                }
            }
        }
    });
}

async fn check_once(up: &Upstream, peer: &PeerInfo, policy: &super::upstream::ActivePolicy) -> bool {
    use super::pool::{Sender, connect};
    let attempt = async {
        let conn = connect(peer.addr, &peer.host, up.tls.as_ref(), up.protocol, policy.timeout)
            .await
            .ok()?;
        let host = up.proxy_host(&peer.host, peer.port);
        let request = |absolute: bool| {
            let uri = if absolute {
                let scheme = if up.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{host}{}", policy.path)
            } else {
                policy.path.clone()
            };
            http::Request::get(uri)
                .header(http::header::HOST, host.as_str())
                .header(http::header::USER_AGENT, "moongate-health-check")
                .body(super::body::ProxyBody::Empty)
                .ok()
        };
        let status = match conn.sender {
            Sender::H1(mut s) => s.send_request(request(false)?).await.ok()?.status(),
            Sender::H2(mut s) => {
                let mut req = request(true)?;
                req.headers_mut().remove(http::header::HOST);
                s.send_request(req).await.ok()?.status()
            }
        };
        Some(policy.healthy_status(status.as_u16()))
    };
    tokio::time::timeout(policy.timeout, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
