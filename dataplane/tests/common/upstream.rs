//! Test upstreams for the reverse proxy: real TCP servers on `127.0.0.1:0`, each on
//! its own thread with its own current-thread tokio runtime, so plain sync `#[test]`s
//! can start them. Dropping an [`Upstream`] stops its accept loop and drops the
//! runtime, which cancels every connection task and so closes every socket.
//!
//! Well-behaved servers (hyper) answer with a JSON description of the request they
//! received (see [`Echo`]); query parameters shape the answer:
//! `status=N`, `size=N` (N bytes of [`pattern`] instead of the JSON), `chunked=1`
//! (no Content-Length: chunked on HTTP/1.1), `delay_ms=N` (before the head),
//! `trailer=1` (a `grpc-status: 0` trailer; HTTP/2, or HTTP/1.1 when the client sent
//! `TE: trailers`). Every answer carries `x-upstream: <name>`.
//!
//! Misbehaving servers write hand-made bytes on a tokio `TcpStream`.
//!
//! Invariant: `connections()` counts accepted TCP connections and is incremented
//! before the connection is served, so once a client has a response its connection is
//! counted; `requests()` counts requests (or request heads, for the raw servers).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha1::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Bodies up to this size are copied into the echo's `body` field (when UTF-8).
pub const ECHO_BODY_LIMIT: usize = 64 * 1024;

/// What `reset_mid_body()` declares in Content-Length (it never sends that much).
pub const RESET_DECLARED_LEN: usize = 1_000_000;

/// The invalid status line `garbage_status()` answers with.
pub const GARBAGE_STATUS: &[u8] = b"HTTP/1.1 abc nonsense\r\n\r\n";

/// A running test upstream; stopped on drop.
pub struct Upstream {
    addr: SocketAddr,
    scheme: &'static str,
    counters: Arc<Counters>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    tls: Option<TlsFiles>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicUsize,
    connections: AtomicUsize,
}

struct TlsFiles {
    ca_pem: String,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

#[derive(Clone)]
enum Behaviour {
    Http(Arc<EchoConfig>),
    ResetAfter(usize),
    Stall,
    Reply(&'static [u8]),
    Trickle {
        total: usize,
        per_tick: usize,
        tick: Duration,
    },
    EarlyClose,
}

struct EchoConfig {
    name: String,
    protocol: Protocol,
    websocket: bool,
}

enum Protocol {
    Http1,
    H2c,
    Tls(tokio_rustls::TlsAcceptor),
}

impl Upstream {
    /// HTTP/1.1 keep-alive echo named `"echo"`.
    pub fn echo() -> Upstream {
        Upstream::echo_named("echo")
    }

    /// HTTP/1.1 keep-alive echo answering with `x-upstream: name`.
    pub fn echo_named(name: &str) -> Upstream {
        Upstream::http(name, Protocol::Http1, false)
    }

    /// The echo over HTTP/2 with prior knowledge (cleartext), named `"h2c"`.
    pub fn h2c() -> Upstream {
        Upstream::h2c_named("h2c")
    }

    pub fn h2c_named(name: &str) -> Upstream {
        Upstream::http(name, Protocol::H2c, false)
    }

    /// The echo over TLS, ALPN `h2` or `http/1.1` (HTTP/1.1 without ALPN), with a fresh
    /// CA and a server certificate for `localhost` and `127.0.0.1`.
    pub fn tls(name: &str) -> Upstream {
        let (config, ca_pem) = tls_server_config();
        let dir = tempfile::tempdir().expect("temp dir for the CA");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).expect("write CA PEM");
        let mut up = Upstream::http(name, Protocol::Tls(tokio_rustls::TlsAcceptor::from(config)), false);
        up.scheme = "https";
        up.tls = Some(TlsFiles {
            ca_pem,
            ca_file,
            _dir: dir,
        });
        up
    }

    /// HTTP/1.1: `Upgrade: websocket` gets a 101 with the RFC 6455 accept key, then
    /// every byte is echoed back raw (no framing). Other requests get the echo.
    pub fn websocket_echo() -> Upstream {
        Upstream::http("websocket", Protocol::Http1, true)
    }

    /// Sends a valid head declaring `Content-Length: 1000000`, 1000 body bytes, then resets.
    pub fn reset_mid_body() -> Upstream {
        Upstream::reset_after(1000)
    }

    /// As `reset_mid_body`, after `body_bytes` of [`pattern`]. SO_LINGER 0 then
    /// close: the peer sees RST. The bytes are written before the reset, so on
    /// loopback they are in the peer's receive queue, which Linux keeps readable.
    pub fn reset_after(body_bytes: usize) -> Upstream {
        assert!(body_bytes < RESET_DECLARED_LEN);
        Upstream::spawn(Behaviour::ResetAfter(body_bytes), "http")
    }

    /// Accepts, reads and discards forever, never answers.
    pub fn stall() -> Upstream {
        Upstream::spawn(Behaviour::Stall, "http")
    }

    /// Answers every request head with [`GARBAGE_STATUS`], then closes.
    pub fn garbage_status() -> Upstream {
        Upstream::raw_reply(GARBAGE_STATUS)
    }

    /// Answers every request head with exactly `bytes`, then closes (FIN).
    pub fn raw_reply(bytes: &'static [u8]) -> Upstream {
        Upstream::spawn(Behaviour::Reply(bytes), "http")
    }

    /// A valid 200 with a 64-byte [`pattern`] body, `bytes_per_tick` every `tick`.
    pub fn trickle(bytes_per_tick: usize, tick: Duration) -> Upstream {
        Upstream::trickle_len(64, bytes_per_tick, tick)
    }

    /// As `trickle`, with a body of `total` bytes.
    pub fn trickle_len(total: usize, bytes_per_tick: usize, tick: Duration) -> Upstream {
        assert!(bytes_per_tick > 0);
        Upstream::spawn(
            Behaviour::Trickle {
                total,
                per_tick: bytes_per_tick,
                tick,
            },
            "http",
        )
    }

    /// Reads the request head, then closes (FIN) without answering.
    pub fn early_close() -> Upstream {
        Upstream::spawn(Behaviour::EarlyClose, "http")
    }

    /// An address where nothing listens: a port bound, then released. Another process
    /// could take it meanwhile; on loopback with ephemeral ports that is unlikely.
    pub fn refused() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("local addr")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`, or `https://…` for `tls()`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Requests (or request heads) received so far.
    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::SeqCst)
    }

    /// The CA that issued the server certificate, PEM. Panics unless `tls()`.
    pub fn ca_pem(&self) -> &str {
        &self.tls.as_ref().expect("ca_pem() on a non-TLS upstream").ca_pem
    }

    /// A file holding `ca_pem()`, for route YAML; lives as long as the upstream.
    pub fn ca_file(&self) -> &Path {
        &self.tls.as_ref().expect("ca_file() on a non-TLS upstream").ca_file
    }

    fn http(name: &str, protocol: Protocol, websocket: bool) -> Upstream {
        let config = EchoConfig {
            name: name.to_string(),
            protocol,
            websocket,
        };
        Upstream::spawn(Behaviour::Http(Arc::new(config)), "http")
    }

    fn spawn(behaviour: Behaviour, scheme: &'static str) -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let counters = Arc::new(Counters::default());
        let (stop, mut stopped) = oneshot::channel::<()>();
        let c = counters.clone();
        let thread = std::thread::Builder::new()
            .name(format!("upstream-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("upstream runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    loop {
                        tokio::select! {
                            _ = &mut stopped => break,
                            accepted = listener.accept() => {
                                let Ok((stream, _)) = accepted else { continue };
                                c.connections.fetch_add(1, Ordering::SeqCst);
                                let _ = stream.set_nodelay(true);
                                tokio::spawn(serve(behaviour.clone(), stream, c.clone()));
                            }
                        }
                    }
                });
                // Dropping `rt` here cancels the connection tasks and closes their sockets.
            })
            .expect("spawn upstream thread");
        Upstream {
            addr,
            scheme,
            counters,
            stop: Some(stop),
            thread: Some(thread),
            tls: None,
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `len` deterministic bytes: `i % 251`, a prime period, so no chunk or buffer
/// boundary lines up with a repeat and a dropped or duplicated block shows.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2).
pub fn websocket_accept(key: &str) -> String {
    let mut h = sha1::Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The request an echo upstream saw, parsed from its JSON answer.
#[derive(Debug, Clone)]
pub struct Echo {
    pub upstream: String,
    /// `HTTP/1.1`, `HTTP/2.0`, …
    pub version: String,
    pub method: String,
    /// Path and query as received (the whole URI for an HTTP/1 absolute-form target).
    pub target: String,
    /// The URI authority: `:authority` on HTTP/2, the absolute-form's on HTTP/1.
    pub authority: Option<String>,
    /// Lowercased names. hyper's `HeaderMap` groups by name in order of first
    /// appearance; values of one name stay in order.
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    pub body_sha256: String,
    /// The body, when at most [`ECHO_BODY_LIMIT`] bytes and UTF-8.
    pub body: Option<String>,
}

impl Echo {
    /// Parses an echo answer; panics, showing it, when it is not one.
    pub fn parse(body: &[u8]) -> Echo {
        let v: serde_json::Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("not an echo ({e}): {}", String::from_utf8_lossy(body)));
        let s = |k: &str| v[k].as_str().map(str::to_string);
        let need = |k: &str| s(k).unwrap_or_else(|| panic!("echo without {k}: {v}"));
        Echo {
            upstream: need("upstream"),
            version: need("version"),
            method: need("method"),
            target: need("target"),
            authority: s("authority"),
            headers: v["headers"]
                .as_array()
                .unwrap_or_else(|| panic!("echo without headers: {v}"))
                .iter()
                .map(|h| (h[0].as_str().unwrap().to_string(), h[1].as_str().unwrap().to_string()))
                .collect(),
            body_len: v["body_len"].as_u64().expect("body_len") as usize,
            body_sha256: need("body_sha256"),
            body: s("body"),
        }
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

// --- serving ----------------------------------------------------------------

type Body = BoxBody<Bytes, Infallible>;

async fn serve(behaviour: Behaviour, mut stream: TcpStream, counters: Arc<Counters>) {
    match behaviour {
        Behaviour::Http(config) => serve_http(config, stream, counters).await,
        Behaviour::Stall => {
            let mut buf = [0u8; 8192];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        }
        raw => {
            if read_head(&mut stream).await {
                counters.requests.fetch_add(1, Ordering::SeqCst);
                let _ = misbehave(raw, stream).await;
            }
        }
    }
}

async fn serve_http(config: Arc<EchoConfig>, stream: TcpStream, counters: Arc<Counters>) {
    let svc_config = config.clone();
    let svc = service_fn(move |req| echo(req, svc_config.clone(), counters.clone()));
    match &config.protocol {
        Protocol::Http1 => serve_h1(stream, svc).await,
        Protocol::H2c => serve_h2(stream, svc).await,
        Protocol::Tls(acceptor) => {
            let Ok(tls) = acceptor.accept(stream).await else { return };
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                serve_h2(tls, svc).await
            } else {
                serve_h1(tls, svc).await
            }
        }
    }
}

async fn serve_h1<I, S>(io: I, svc: S)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    let _ = conn.await;
}

async fn serve_h2<I, S>(io: I, svc: S)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(io), svc);
    let _ = conn.await;
}

#[derive(Default)]
struct Query {
    status: Option<u16>,
    size: Option<usize>,
    delay_ms: Option<u64>,
    chunked: bool,
    trailer: bool,
}

impl Query {
    fn parse(query: Option<&str>) -> Query {
        let mut q = Query::default();
        for pair in query.unwrap_or_default().split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "status" => q.status = v.parse().ok(),
                "size" => q.size = v.parse().ok(),
                "delay_ms" => q.delay_ms = v.parse().ok(),
                "chunked" => q.chunked = v == "1",
                "trailer" => q.trailer = v == "1",
                _ => {}
            }
        }
        q
    }
}

async fn echo(
    req: Request<Incoming>,
    config: Arc<EchoConfig>,
    counters: Arc<Counters>,
) -> Result<Response<Body>, Infallible> {
    counters.requests.fetch_add(1, Ordering::SeqCst);
    if config.websocket && is_websocket_upgrade(&req) {
        return Ok(websocket_upgrade(req, &config.name));
    }
    let query = Query::parse(req.uri().query());
    let uri = req.uri();
    let target = if req.version() < hyper::Version::HTTP_2 && uri.authority().is_some() {
        uri.to_string()
    } else {
        uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default()
    };
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut description = serde_json::json!({
        "upstream": config.name,
        "version": format!("{:?}", req.version()),
        "method": req.method().as_str(),
        "target": target,
        "authority": uri.authority().map(|a| a.as_str().to_string()),
        "headers": headers,
    });
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                &config.name,
                format!("reading the body: {e}"),
            ));
        }
    };
    description["body_len"] = body.len().into();
    description["body_sha256"] = sha256_hex(&body).into();
    description["body"] = match std::str::from_utf8(&body) {
        Ok(text) if body.len() <= ECHO_BODY_LIMIT => text.into(),
        _ => serde_json::Value::Null,
    };

    if let Some(ms) = query.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let Ok(status) = StatusCode::from_u16(query.status.unwrap_or(200)) else {
        return Ok(plain(StatusCode::BAD_REQUEST, &config.name, "bad ?status".into()));
    };
    let (content, content_type) = match query.size {
        Some(n) => (Bytes::from(pattern(n)), "application/octet-stream"),
        None => (Bytes::from(description.to_string()), "application/json"),
    };
    let body = if query.chunked || query.trailer {
        // No size hint: chunked on HTTP/1.1, DATA frames without content-length on HTTP/2.
        let mut frames: Vec<Frame<Bytes>> = (0..content.len())
            .step_by(16 * 1024)
            .map(|i| Frame::data(content.slice(i..content.len().min(i + 16 * 1024))))
            .collect();
        if query.trailer {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            frames.push(Frame::trailers(trailers));
        }
        StreamBody::new(tokio_stream::iter(frames.into_iter().map(Ok))).boxed()
    } else {
        Full::new(content).boxed()
    };
    Ok(Response::builder()
        .status(status)
        .header("x-upstream", &config.name)
        .header("content-type", content_type)
        .body(body)
        .unwrap())
}

fn plain(status: StatusCode, name: &str, text: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("x-upstream", name)
        .body(Full::new(Bytes::from(text)).boxed())
        .unwrap()
}

fn is_websocket_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Answers 101 and, once hyper hands over the connection, copies it back to itself.
fn websocket_upgrade(req: Request<Incoming>, name: &str) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").and_then(|k| k.to_str().ok()) else {
        return plain(StatusCode::BAD_REQUEST, name, "no Sec-WebSocket-Key".into());
    };
    let accept = websocket_accept(key);
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept)
        .header("x-upstream", name)
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}

// --- misbehaving servers ----------------------------------------------------

/// Reads until the end of a request head; false on EOF or error before it.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        if seen.windows(4).any(|w| w == b"\r\n\r\n") {
            return true;
        }
    }
}

/// Half-closes (FIN), then drains until the peer closes: closing with unread input
/// would make Linux send RST instead, which is not what these servers promise.
async fn close_gracefully(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut buf = [0u8; 8192];
    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
}

async fn misbehave(behaviour: Behaviour, mut stream: TcpStream) -> std::io::Result<()> {
    match behaviour {
        Behaviour::ResetAfter(sent) => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {RESET_DECLARED_LEN}\r\n\r\n");
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&pattern(sent)).await?;
            stream.flush().await?;
            socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
            drop(stream);
        }
        Behaviour::Reply(bytes) => {
            stream.write_all(bytes).await?;
            close_gracefully(stream).await;
        }
        Behaviour::Trickle { total, per_tick, tick } => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n");
            stream.write_all(head.as_bytes()).await?;
            let body = pattern(total);
            for piece in body.chunks(per_tick) {
                tokio::time::sleep(tick).await;
                stream.write_all(piece).await?;
            }
            close_gracefully(stream).await;
        }
        Behaviour::EarlyClose => close_gracefully(stream).await,
        Behaviour::Http(_) | Behaviour::Stall => unreachable!("served elsewhere"),
    }
    Ok(())
}

// --- TLS ----------------------------------------------------------------------

/// A fresh CA and a server certificate it issued for `localhost` and `127.0.0.1`;
/// returns the server config (ALPN h2, http/1.1) and the CA certificate PEM.
fn tls_server_config() -> (Arc<rustls::ServerConfig>, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "moongate test upstream CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("SANs");
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).expect("sign server certificate");

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .expect("server certificate");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (Arc::new(config), ca_cert.pem())
}
