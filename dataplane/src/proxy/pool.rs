//! Upstream connections and the per-worker keep-alive pool.
//!
//! hyper's client connection API is used directly rather than hyper-util's
//! pooled `Client`: a try must go to the endpoint the balancer chose, report
//! its connect time (`$upstream_connect_time`), respect a per-location
//! connect timeout and a maximum of requests per connection, and stay on the
//! worker's thread with `!Send` bodies; the pooled client offers none of these.
//!
//! Invariants:
//! - An HTTP/1.1 connection is in the idle list only when hyper says it is
//!   ready for a new request: after the previous response was read to its
//!   end. A connection the peer closed or reset while idle is closed by its
//!   connection task, which `is_closed` reports, and is dropped at checkout.
//! - Idle connections are kept at most `idle_timeout` and `max_idle` per key;
//!   a connection serves at most `max_requests` requests.
//! - An HTTP/2 connection is shared by all requests to its key while it is
//!   open; it is not counted against `max_idle`.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::body::ProxyBody;
use super::tls::TlsSettings;
use super::upstream::{KeepalivePolicy, Protocol};
use crate::http::LocalExec;

/// What a connection is for: one pool list per key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: SocketAddr,
    /// The TLS settings' identity (an upstream's own `Arc`), and the host
    /// verified: a connection verified for one name never serves another.
    pub tls: Option<(usize, String)>,
    pub h2: bool,
}

pub enum Sender {
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

/// A connection checked out for one request.
pub struct Conn {
    pub sender: Sender,
    pub key: PoolKey,
    /// Requests sent on it before this one.
    pub uses: u32,
    /// The connection came from the pool (a failure on it may be a race
    /// with the peer closing it, which is worth one more try).
    pub reused: bool,
}

struct Idle {
    sender: http1::SendRequest<ProxyBody>,
    /// `idle_timeout` after it was put back.
    expires: Instant,
    uses: u32,
}

/// Why a connection could not be made.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Io(std::io::Error),
    Tls(std::io::Error),
    Handshake(hyper::Error),
    /// TLS succeeded but the peer did not agree to HTTP/2.
    NoH2,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => f.write_str("upstream timed out while connecting"),
            ConnectError::Io(e) => write!(f, "connect() failed ({e})"),
            ConnectError::Tls(e) => write!(f, "SSL handshake failed ({e})"),
            ConnectError::Handshake(e) => write!(f, "HTTP handshake failed ({e})"),
            ConnectError::NoH2 => f.write_str("the upstream did not negotiate h2 (ALPN)"),
        }
    }
}

/// Connections open and idle, per worker.
#[derive(Default)]
pub struct Pool {
    idle: RefCell<HashMap<PoolKey, VecDeque<Idle>>>,
    h2: RefCell<HashMap<PoolKey, http2::SendRequest<ProxyBody>>>,
    /// The task closing expired idle connections runs (started at the first put).
    sweeping: std::cell::Cell<bool>,
}

/// How often expired idle connections are closed when no request comes to
/// close them at checkout.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Pool {
    /// An idle connection for `key`, if a usable one is pooled.
    pub fn checkout(&self, key: &PoolKey, now: Instant) -> Option<Conn> {
        if key.h2 {
            let mut h2 = self.h2.borrow_mut();
            match h2.get(key) {
                Some(s) if !s.is_closed() && s.is_ready() => {
                    return Some(Conn {
                        sender: Sender::H2(s.clone()),
                        key: key.clone(),
                        uses: 1,
                        reused: true,
                    });
                }
                Some(_) => {
                    h2.remove(key);
                }
                None => {}
            }
            return None;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(key)?;
        let mut found = None;
        // Most recent first: the warmest connection, least likely closed.
        while let Some(c) = list.pop_back() {
            crate::metrics::upstream_idle(-1);
            if c.sender.is_closed() || !c.sender.is_ready() || now >= c.expires {
                continue;
            }
            found = Some(c);
            break;
        }
        if list.is_empty() {
            idle.remove(key);
        }
        found.map(|c| Conn {
            sender: Sender::H1(c.sender),
            key: key.clone(),
            uses: c.uses,
            reused: true,
        })
    }

    /// Takes back a connection whose response ended, once hyper says it is
    /// ready for another request; closes it instead when the policy says so.
    pub fn release(self: &Rc<Self>, conn: Conn, keepalive: KeepalivePolicy) {
        let Sender::H1(mut sender) = conn.sender else {
            return;
        };
        let uses = conn.uses + 1;
        if keepalive.max_idle == 0 || uses >= keepalive.max_requests || sender.is_closed() {
            return;
        }
        let pool = self.clone();
        let key = conn.key;
        // Usually ready at once; otherwise hyper is still finishing the
        // previous exchange (or the peer closes): wait a little for it.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match sender.poll_ready(&mut cx) {
            std::task::Poll::Ready(Ok(())) => pool.put(key, sender, uses, keepalive),
            std::task::Poll::Ready(Err(_)) => {}
            std::task::Poll::Pending => {
                tokio::task::spawn_local(async move {
                    if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), sender.ready()).await {
                        pool.put(key, sender, uses, keepalive);
                    }
                });
            }
        }
    }

    fn put(
        self: &Rc<Self>,
        key: PoolKey,
        sender: http1::SendRequest<ProxyBody>,
        uses: u32,
        keepalive: KeepalivePolicy,
    ) {
        let now = Instant::now();
        {
            let mut idle = self.idle.borrow_mut();
            let list = idle.entry(key).or_default();
            // Expired ones go first; then the oldest beyond the limit.
            let before = list.len();
            list.retain(|c| !c.sender.is_closed() && now < c.expires);
            while list.len() >= keepalive.max_idle {
                list.pop_front();
            }
            let after = list.len();
            list.push_back(Idle {
                sender,
                expires: now + keepalive.idle_timeout,
                uses,
            });
            crate::metrics::upstream_idle(after as i64 + 1 - before as i64);
        }
        if !self.sweeping.replace(true) {
            let pool = Rc::downgrade(self);
            tokio::task::spawn_local(async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                loop {
                    tick.tick().await;
                    let Some(pool) = pool.upgrade() else { return };
                    pool.sweep(Instant::now());
                }
            });
        }
    }

    /// Closes idle connections past their idle timeout or closed by the peer.
    fn sweep(&self, now: Instant) {
        let mut idle = self.idle.borrow_mut();
        idle.retain(|_, list| {
            let before = list.len();
            list.retain(|c| !c.sender.is_closed() && now < c.expires);
            crate::metrics::upstream_idle(list.len() as i64 - before as i64);
            !list.is_empty()
        });
    }

    /// Shares a new HTTP/2 connection for later requests to its key.
    pub fn share_h2(&self, key: &PoolKey, sender: &http2::SendRequest<ProxyBody>) {
        self.h2.borrow_mut().insert(key.clone(), sender.clone());
    }
}

/// Opens a connection to `addr` (TLS verified for `host` when `tls`), within
/// `timeout` for TCP and TLS together, as nginx's `proxy_connect_timeout`.
pub async fn connect(
    addr: SocketAddr,
    host: &str,
    tls: Option<&Arc<TlsSettings>>,
    protocol: Protocol,
    timeout: Duration,
) -> Result<Conn, ConnectError> {
    let key = PoolKey {
        addr,
        tls: tls.map(|t| (Arc::as_ptr(t) as usize, host.to_string())),
        h2: protocol == Protocol::Http2,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout)?
        .map_err(ConnectError::Io)?;
    let _ = tcp.set_nodelay(true);
    let sender = match tls {
        None => handshake(TokioIo::new(tcp), protocol).await?,
        Some(tls) => {
            let stream = tokio::time::timeout_at(deadline, tls.connect(host, tcp))
                .await
                .map_err(|_| ConnectError::Timeout)?
                .map_err(ConnectError::Tls)?;
            let alpn_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            if protocol == Protocol::Http2 && !alpn_h2 {
                return Err(ConnectError::NoH2);
            }
            handshake(TokioIo::new(stream), protocol).await?
        }
    };
    crate::metrics::upstream_connection_opened();
    Ok(Conn {
        sender,
        key,
        uses: 0,
        reused: false,
    })
}

async fn handshake<T>(io: TokioIo<T>, protocol: Protocol) -> Result<Sender, ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match protocol {
        Protocol::Http1 => {
            let (sender, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(ConnectError::Handshake)?;
            tokio::task::spawn_local(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!("upstream connection ended: {e}");
                }
                crate::metrics::upstream_connection_closed();
            });
            Ok(Sender::H1(sender))
        }
        Protocol::Http2 => {
            let (sender, conn) = http2::Builder::new(LocalExec)
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(ConnectError::Handshake)?;
            tokio::task::spawn_local(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("upstream h2 connection ended: {e}");
                }
                crate::metrics::upstream_connection_closed();
            });
            Ok(Sender::H2(sender))
        }
    }
}
