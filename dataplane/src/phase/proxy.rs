//! The content phase of a location with an `upstream`: nginx's proxy module.
//!
//! Each try picks a peer (the location's `balancer` handler, else the
//! upstream's balancer, skipping peers already tried and those ejected),
//! checks it against the operator's egress policy, takes a pooled connection
//! or opens one, and sends the request. A try that fails (connect error or
//! timeout, or a status listed in `retries.onStatus`) moves to another peer
//! while tries remain, the method is idempotent (or allowed), the body can
//! be sent again and the retry budget allows it. The first response that
//! stands becomes the response: its status and headers go through the
//! header filter, its body streams through the body filter chunk by chunk,
//! as the client takes it (the bounded stream channel is the backpressure).
//!
//! Errors map as nginx maps them: no ready endpoint 503; refused,
//! unreachable or an invalid response 502; connect or read timeout 504; a
//! failure after the head has gone out aborts the client connection.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{Finish, Flow, Lifecycle, call_filter};
use crate::config::{LocationRef, Phase};
use crate::proxy::body::ProxyBody;
use crate::proxy::pool::{self, Conn, ConnectError, PoolKey, Sender};
use crate::proxy::request as upstream_request;
use crate::proxy::state::{NoPeers, PeerInfo, PeerSet, UpstreamState};
use crate::proxy::upstream::{HashOn, Protocol, Timeouts, Upstream};
use crate::proxy::{BalancerCall, UpstreamTry};
use crate::request::Body;
use crate::response::head::send_header;

/// Why a try failed.
enum TryError {
    Connect(ConnectError),
    /// Sending the request or reading the head failed.
    Send(String),
    Timeout(&'static str),
    /// The client's body broke off or was too large.
    Client(u16, String),
}

impl TryError {
    /// nginx's status for it.
    fn status(&self) -> u16 {
        match self {
            TryError::Connect(ConnectError::Timeout) | TryError::Timeout(_) => 504,
            TryError::Connect(_) | TryError::Send(_) => 502,
            TryError::Client(status, _) => *status,
        }
    }

    fn describe(&self) -> String {
        match self {
            TryError::Connect(e) => format!("{e} while connecting to upstream"),
            TryError::Send(e) => format!("upstream failed ({e}) while reading response header from upstream"),
            TryError::Timeout(what) => format!("upstream timed out while {what}"),
            TryError::Client(_, e) => format!("{e} while sending request to upstream"),
        }
    }
}

/// A response head, with the connection it came on.
struct Answer {
    response: http::Response<Incoming>,
    conn: Conn,
}

pub(super) async fn run(lc: &mut Lifecycle, at: LocationRef) -> Flow {
    let Some(up) = lc.loaded.config.location(at).upstream.clone() else {
        return Flow::Finish(Finish::Status(404));
    };
    let state = lc.worker.upstream_state(&lc.loaded.config, at, &up);
    let site = lc.req.borrow().site.clone();
    let balancer = lc.loaded.handler(at, Phase::Balancer).cloned();
    let peers = match state.peers(&lc.worker.endpoints).await {
        Ok(p) => Some(p),
        // A Lua balancer picks its own peers; the upstream's are a fallback.
        Err(_) if balancer.is_some() => None,
        Err(NoPeers::Service(why)) => {
            tracing::error!("{site}: no live upstreams while connecting to upstream: {why}");
            state.metrics.no_endpoints();
            return Flow::Finish(Finish::Status(503));
        }
        Err(NoPeers::Resolve(why)) => {
            tracing::error!("{site}: upstream could not be resolved: {why}");
            return Flow::Finish(Finish::Status(502));
        }
    };
    let (idempotent, upgrade) = {
        let r = lc.req.borrow();
        let idempotent = !matches!(r.method.as_str(), "POST" | "PATCH" | "LOCK");
        let upgrade = lc.upgrade.is_some() && upstream_request::wants_upgrade(&r.headers);
        (idempotent, upgrade)
    };
    let peer_count = peers.as_ref().map_or(1, |p| p.info.len());
    let mut max_tries = up.retry.tries.unwrap_or(peer_count.min(3) as u32).max(1);
    // nginx buffers the request body (`proxy_request_buffering on`), so a
    // retry can send it again. A small body of known length is read whole
    // when a retry may need it; a larger or chunked one streams through and
    // cannot be retried once sent.
    if max_tries > 1
        && (idempotent || up.retry.non_idempotent)
        && small_body_pending(lc)
        && let Err(status) = lc.read_body().await
    {
        return Flow::Finish(Finish::Status(status));
    }
    state.budget.deposit(Instant::now());
    let hash_key = hash_key(lc, &up);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last_failure: Option<(String, u16)> = None;
    let mut status = None;
    let mut attempt = 0;
    while attempt < max_tries {
        let now = Instant::now();
        if attempt > 0 {
            if !(idempotent || up.retry.non_idempotent) || !body_replayable(lc) {
                break;
            }
            if !state.budget.withdraw(now) {
                tracing::warn!("{site}: retry budget exhausted, not retrying");
                break;
            }
            state.metrics.retry();
        }
        attempt += 1;
        let mut timeouts = up.timeouts;
        let chosen = match &balancer {
            Some(f) => match lua_balancer(lc, f, last_failure.clone(), &mut timeouts, &mut max_tries).await {
                Ok(Some(peer)) => Some((peer, None)),
                Ok(None) => pick(&state, peers.as_deref(), hash_key.as_deref(), &tried, now, attempt == 1),
                Err(status) => return Flow::Finish(Finish::Status(status)),
            },
            None => pick(&state, peers.as_deref(), hash_key.as_deref(), &tried, now, attempt == 1),
        };
        let Some((peer, index)) = chosen else {
            if tried.is_empty() {
                tracing::error!("{site}: no live upstreams while connecting to upstream");
            }
            break;
        };
        tried.push(peer.addr);
        if let Err(refusal) = lc.worker.settings.egress.check(peer.addr) {
            tracing::error!("{site}: {refusal}, upstream: {}", peer.addr);
            state.metrics.egress_refused();
            record_try(lc, &peer, Some(502), None, None);
            status = Some(502);
            last_failure = Some(("failed".into(), 502));
            continue;
        }
        if let (Some(set), Some(i)) = (&peers, index) {
            set.balancer.start(i);
        }
        let started = Instant::now();
        let outcome = try_once(lc, &up, &peer, upgrade, timeouts).await;
        if let (Some(set), Some(i)) = (&peers, index) {
            set.balancer.finish(i, started.elapsed(), Instant::now());
        }
        match outcome {
            Ok((answer, connect_time)) => {
                let code = answer.response.status().as_u16();
                let header_time = started.elapsed();
                let retryable = up.retry.on_status.contains(&code) && attempt < max_tries;
                if retryable && (idempotent || up.retry.non_idempotent) && body_replayable(lc) {
                    tracing::warn!(
                        "{site}: upstream answered {code}, trying another, upstream: {}",
                        peer.addr
                    );
                    failed(&state, peer.addr, &site);
                    state.metrics.response(code);
                    record_try(lc, &peer, Some(code), Some(connect_time), Some(header_time));
                    last_failure = Some(("failed".into(), code));
                    status = Some(code);
                    continue;
                }
                state.passive.success(peer.addr);
                state.metrics.response(code);
                state.metrics.observe(header_time);
                record_try(lc, &peer, Some(code), Some(connect_time), Some(header_time));
                return deliver(lc, &up, &state, answer, started, upgrade, timeouts).await;
            }
            Err(e) => {
                tracing::error!("{site}: {}, upstream: {}", e.describe(), peer.addr);
                if let TryError::Client(code, _) = e {
                    return Flow::Finish(Finish::Status(code));
                }
                if matches!(e, TryError::Connect(_)) {
                    state.metrics.connect_error();
                }
                failed(&state, peer.addr, &site);
                state.metrics.response(0);
                let code = e.status();
                record_try(lc, &peer, Some(code), None, None);
                last_failure = Some(("failed".into(), code));
                status = Some(code);
                if !up.retry.on_error {
                    break;
                }
            }
        }
    }
    Flow::Finish(Finish::Status(status.unwrap_or(502)))
}

fn failed(state: &UpstreamState, addr: SocketAddr, site: &str) {
    if let Some(ejected) = state.passive.failure(addr, Instant::now()) {
        tracing::warn!("{site}: upstream {addr} ejected for {ejected:?} after consecutive failures");
        state.metrics.ejection();
    }
}

/// The next peer from the upstream's balancer. On the first try, when every
/// peer is ejected, one is tried anyway (nginx does the same when all its
/// servers are marked failed), rather than failing with no try at all.
fn pick(
    state: &UpstreamState,
    peers: Option<&PeerSet>,
    hash_key: Option<&[u8]>,
    tried: &[SocketAddr],
    now: Instant,
    first: bool,
) -> Option<(PeerInfo, Option<usize>)> {
    let peers = peers?;
    let untried = |i: usize| !tried.contains(&peers.info[i].addr);
    let i = peers
        .balancer
        .pick(hash_key, |i| untried(i) && state.usable(peers.info[i].addr, now))
        .or_else(|| {
            if first {
                peers.balancer.pick(hash_key, untried)
            } else {
                None
            }
        })?;
    Some((peers.info[i].clone(), Some(i)))
}

/// What a consistent hash is computed over, for this request.
fn hash_key(lc: &Lifecycle, up: &Upstream) -> Option<Vec<u8>> {
    let r = lc.req.borrow();
    match up.hash_on.as_ref()? {
        HashOn::Header(name) => r.headers.get(name).map(|v| v.as_bytes().to_vec()),
        HashOn::Cookie(name) => crate::lua::api::var::lookup(&r, &format!("cookie_{name}")),
        HashOn::Var(name) => crate::lua::api::var::lookup(&r, name),
        HashOn::ClientIp => Some(r.remote_addr.ip().to_string().into_bytes()),
    }
}

/// Bodies up to this size (by Content-Length) are read whole before the
/// first try when a retry may need to send them again.
const REPLAYABLE_BODY: u64 = 64 * 1024;

/// Whether the client's body is still unread, not empty, and of a known
/// length of at most `REPLAYABLE_BODY`.
fn small_body_pending(lc: &Lifecycle) -> bool {
    let r = lc.req.borrow();
    if !matches!(r.body, Body::Unread) || r.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return false;
    }
    let Some(stream) = lc.body_stream.as_ref() else {
        return false;
    };
    !http_body::Body::is_end_stream(stream)
        && r.headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|len| len <= REPLAYABLE_BODY)
}

/// Whether another try can send the body again: it is held whole, or the
/// client's stream has not been handed to a try yet.
fn body_replayable(lc: &Lifecycle) -> bool {
    match lc.req.borrow().body {
        Body::Unread => lc.body_stream.is_some() || !lc.body_streamed,
        _ => true,
    }
}

fn record_try(
    lc: &Lifecycle,
    peer: &PeerInfo,
    status: Option<u16>,
    connect: Option<Duration>,
    header: Option<Duration>,
) {
    lc.req.borrow_mut().upstream_tries.push(UpstreamTry {
        addr: peer.addr,
        status,
        connect,
        header,
        response: header,
    });
}

/// Runs the location's `balancer` handler for one try; its
/// `set_current_peer` gives the peer (`None`: the upstream's balancer picks).
async fn lua_balancer(
    lc: &mut Lifecycle,
    f: &mlua::Function,
    last_failure: Option<(String, u16)>,
    timeouts: &mut Timeouts,
    max_tries: &mut u32,
) -> Result<Option<PeerInfo>, u16> {
    lc.req.borrow_mut().balancer = Some(BalancerCall {
        last_failure,
        timeouts: Some(*timeouts),
        ..Default::default()
    });
    let ok = call_filter(lc, Phase::Balancer, f);
    let call = lc.req.borrow_mut().balancer.take().unwrap_or_default();
    if !ok {
        return Err(500);
    }
    *max_tries = max_tries.saturating_add(call.more_tries);
    if let Some(t) = call.timeouts {
        *timeouts = t;
    }
    let Some((host, port)) = call.peer else {
        return Ok(None);
    };
    let addr = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => match tokio::net::lookup_host((host.as_str(), port))
            .await
            .ok()
            .and_then(|mut a| a.next())
        {
            Some(a) => a,
            None => {
                tracing::error!(
                    "{}: balancer: could not resolve the peer {host}:{port} set by ngx.balancer.set_current_peer",
                    lc.req.borrow().site
                );
                return Err(502);
            }
        },
    };
    Ok(Some(PeerInfo { addr, host, port }))
}

/// One try: a connection (pooled or new), the request, the response head.
async fn try_once(
    lc: &mut Lifecycle,
    up: &Upstream,
    peer: &PeerInfo,
    upgrade: bool,
    timeouts: Timeouts,
) -> Result<(Answer, Duration), TryError> {
    let pool = lc.worker.pool.clone();
    let h2 = up.protocol == Protocol::Http2 && !upgrade;
    let protocol = if h2 { Protocol::Http2 } else { Protocol::Http1 };
    let key = PoolKey {
        addr: peer.addr,
        tls: up
            .tls
            .as_ref()
            .map(|t| (std::sync::Arc::as_ptr(t) as usize, peer.host.clone())),
        h2,
    };
    let mut request = build_request(lc, up, peer, h2, upgrade);
    let mut fresh_tried = false;
    loop {
        let now = Instant::now();
        let pooled = if fresh_tried { None } else { pool.checkout(&key, now) };
        let (mut conn, connect_time) = match pooled {
            Some(c) => (c, Duration::ZERO),
            None => {
                fresh_tried = true;
                let t0 = Instant::now();
                let c = pool::connect(peer.addr, &peer.host, up.tls.as_ref(), protocol, timeouts.connect)
                    .await
                    .map_err(|e| {
                        restore_body(
                            lc,
                            std::mem::replace(&mut request, http::Request::new(ProxyBody::Empty)),
                        );
                        TryError::Connect(e)
                    })?;
                if let Sender::H2(s) = &c.sender {
                    pool.share_h2(&key, s);
                }
                (c, t0.elapsed())
            }
        };
        let streaming = matches!(request.body(), ProxyBody::Client { .. });
        lc.body_streamed |= streaming;
        let sent = match &mut conn.sender {
            Sender::H1(s) => send_with_timeouts(s.try_send_request(request), streaming, timeouts).await,
            Sender::H2(s) => send_with_timeouts(s.try_send_request(request), streaming, timeouts).await,
        };
        match sent {
            Ok(response) => return Ok((Answer { response, conn }, connect_time)),
            Err(SendFailure::Timeout(what)) => return Err(TryError::Timeout(what)),
            Err(SendFailure::Error(mut e)) => {
                let unsent = e.take_message();
                let client = client_error(e.error());
                match unsent {
                    // A pooled connection the peer closed as we took it: once
                    // more on a fresh one, as the request never left.
                    Some(req) if conn.reused && !fresh_tried => {
                        request = req;
                        fresh_tried = true;
                        continue;
                    }
                    Some(req) => {
                        lc.body_streamed = false;
                        restore_body(lc, req);
                    }
                    None => {}
                }
                return Err(client.unwrap_or_else(|| TryError::Send(e.error().to_string())));
            }
        }
    }
}

/// A failure the client's body caused: too large (413) or broken off (400).
fn client_error(e: &hyper::Error) -> Option<TryError> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<crate::proxy::body::TooLarge>() {
            return Some(TryError::Client(413, s.to_string()));
        }
        source = s.source();
    }
    e.is_user().then(|| TryError::Client(400, format!("client body: {e}")))
}

enum SendFailure {
    Timeout(&'static str),
    Error(Box<hyper::client::conn::TrySendError<http::Request<ProxyBody>>>),
}

/// Waits for the response head within nginx's timeouts: `proxy_read_timeout`
/// for the head once the body has been sent, `proxy_send_timeout` while a
/// streamed body is still going out (hyper resolves at the head, which may
/// come before or after the body is done; a long upload that keeps going is
/// not a timeout).
async fn send_with_timeouts(
    send: impl std::future::Future<
        Output = Result<http::Response<Incoming>, hyper::client::conn::TrySendError<http::Request<ProxyBody>>>,
    >,
    streaming: bool,
    timeouts: Timeouts,
) -> Result<http::Response<Incoming>, SendFailure> {
    let limit = if streaming {
        timeouts.send.max(timeouts.read)
    } else {
        timeouts.read
    };
    match tokio::time::timeout(limit, send).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(SendFailure::Error(Box::new(e))),
        Err(_) => Err(SendFailure::Timeout("reading response header from upstream")),
    }
}

/// Gives the client's body back to the lifecycle when a try did not send it.
fn restore_body(lc: &mut Lifecycle, request: http::Request<ProxyBody>) {
    if let ProxyBody::Client { body, .. } = request.into_body() {
        lc.body_stream = Some(body);
    }
}

/// The upstream request for this try, taking the client's body stream.
fn build_request(
    lc: &mut Lifecycle,
    up: &Upstream,
    peer: &PeerInfo,
    h2: bool,
    upgrade: bool,
) -> http::Request<ProxyBody> {
    let max_body = lc.max_body(lc.req.borrow().location);
    let (body, body_len) = match &lc.req.borrow().body {
        Body::Read(b) => (ProxyBody::Full(Some(b.clone())), Some(b.len() as u64)),
        Body::Discarded => (ProxyBody::Empty, Some(0)),
        Body::Unread => match lc.body_stream.take() {
            // A request without a body (most GETs) sends none, and can be retried.
            Some(body) if http_body::Body::is_end_stream(&body) => (ProxyBody::Empty, Some(0)),
            Some(body) => (
                ProxyBody::Client {
                    body,
                    remaining: max_body,
                },
                None,
            ),
            None => (ProxyBody::Empty, Some(0)),
        },
    };
    let r = lc.req.borrow();
    let location = lc.loaded.config.location(r.location);
    let prefix: Option<&[u8]> = match location.kind {
        moongate_route::location::LocationKind::Regex { .. } => None,
        _ => Some(location.path.as_bytes()),
    };
    let target = upstream_request::target(&r, up, prefix);
    let proxy_host = up.proxy_host(&peer.host, peer.port);
    let mut headers = upstream_request::headers(&r, up, &proxy_host, body_len, upgrade);
    let uri = if h2 {
        // HTTP/2 carries the authority and scheme as pseudo-headers.
        let authority = headers
            .remove(http::header::HOST)
            .and_then(|h| h.to_str().ok().map(String::from))
            .unwrap_or(proxy_host);
        let scheme = if up.tls.is_some() { "https" } else { "http" };
        let mut abs = format!("{scheme}://{authority}").into_bytes();
        abs.extend_from_slice(&target);
        http::Uri::try_from(abs)
    } else {
        http::Uri::try_from(target)
    };
    let mut req = http::Request::new(body);
    *req.method_mut() = r.method.clone();
    *req.uri_mut() = uri.unwrap_or_else(|_| http::Uri::from_static("/"));
    *req.version_mut() = if h2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    *req.headers_mut() = headers;
    req
}

/// Hands the upstream's response to the client: head through the header
/// filter, body through the body filter, then the connection back to the
/// pool if the body ended cleanly.
async fn deliver(
    lc: &mut Lifecycle,
    up: &Upstream,
    state: &Rc<UpstreamState>,
    answer: Answer,
    started: Instant,
    upgrade: bool,
    timeouts: Timeouts,
) -> Flow {
    let Answer { mut response, conn } = answer;
    let switching = response.status() == http::StatusCode::SWITCHING_PROTOCOLS && upgrade;
    let upstream_upgrade = switching.then(|| hyper::upgrade::on(&mut response));
    let (parts, mut body) = response.into_parts();
    {
        let mut r = lc.req.borrow_mut();
        r.status = parts.status.as_u16();
        let upstream = upstream_request::response_headers(parts.headers, switching);
        // Headers a handler set before proxying (`ngx.header.X` in rewrite or
        // access) stay, as nginx adds the upstream's to headers_out; where
        // both have a header, the upstream's wins.
        let mut headers = std::mem::take(&mut r.resp_headers);
        for name in upstream.keys() {
            headers.remove(name);
        }
        headers.extend(upstream);
        r.no_default_type = !headers.contains_key(http::header::CONTENT_TYPE);
        r.resp_headers = headers;
    }
    if let Some(upstream_upgrade) = upstream_upgrade {
        return super::upgrade::splice(lc, upstream_upgrade, conn.key.addr);
    }
    send_header(&lc.req);
    if lc.req.borrow().close {
        return Flow::Finish(Finish::Close);
    }
    let site = lc.req.borrow().site.clone();
    loop {
        let frame = match tokio::time::timeout(timeouts.read, body.frame()).await {
            Err(_) => {
                tracing::error!(
                    "{site}: upstream timed out while reading upstream, upstream: {}",
                    conn.key.addr
                );
                return Flow::Finish(Finish::Abort);
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::error!(
                    "{site}: upstream prematurely closed connection while reading upstream ({e}), upstream: {}",
                    conn.key.addr
                );
                failed(state, conn.key.addr, &site);
                return Flow::Finish(Finish::Abort);
            }
            Ok(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    continue;
                }
                if lc.head_pending && http_body::Body::is_end_stream(&body) {
                    // The whole body came with the head (the usual small
                    // response): it goes out in one piece with the head, with
                    // no stream to feed.
                    lc.req.borrow_mut().output.push(&data);
                    break;
                }
                lc.send_body(data).await;
                if lc.req.borrow().close {
                    return Flow::Finish(Finish::Abort);
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    lc.trailers = Some(trailers);
                }
            }
        }
    }
    if let Some(t) = lc.req.borrow_mut().upstream_tries.last_mut() {
        t.response = Some(started.elapsed());
    }
    lc.worker.pool.release(conn, up.keepalive);
    lc.flush(true).await;
    Flow::Finish(Finish::Output)
}
