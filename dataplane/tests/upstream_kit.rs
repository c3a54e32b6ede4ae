//! The test upstreams themselves (tests/common/upstream.rs), talked to directly over
//! std sockets (and hyper's HTTP/2 client, and rustls), before any proxy tests trust them.

mod common;

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::upstream::{self, Echo, Upstream};
use common::{IO_TIMEOUT, read_head, read_response};

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: up\r\n\r\n")
}

/// Every byte until EOF; the error when the connection ends otherwise.
fn read_all(r: &mut impl Read) -> (Vec<u8>, Option<std::io::Error>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Some(e)),
        }
    }
}

#[test]
fn echo_describes_method_target_headers_and_body_and_names_itself() {
    let up = Upstream::echo_named("a");
    let mut s = connect(up.addr());
    s.write_all(
        b"POST /p/a%20th?q=1&r HTTP/1.1\r\nHost: up\r\nX-Rep: one\r\nContent-Length: 5\r\nX-Rep: two\r\n\r\nhello",
    )
    .unwrap();
    let resp = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-upstream"), Some("a"));
    let echo = Echo::parse(&resp.body);
    assert_eq!(echo.upstream, "a");
    assert_eq!(echo.version, "HTTP/1.1");
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.target, "/p/a%20th?q=1&r");
    assert_eq!(echo.header("host"), Some("up"));
    assert_eq!(echo.header_all("x-rep"), ["one", "two"]);
    assert_eq!(echo.body_len, 5);
    assert_eq!(echo.body.as_deref(), Some("hello"));
    assert_eq!(echo.body_sha256, upstream::sha256_hex(b"hello"));
}

#[test]
fn echo_counts_requests_and_connections_so_keep_alive_reuse_shows() {
    let up = Upstream::echo();
    let mut r = BufReader::new(connect(up.addr()));
    for _ in 0..3 {
        r.get_mut().write_all(get("/").as_bytes()).unwrap();
        assert_eq!(read_response(&mut r).unwrap().status, 200);
    }
    let mut other = BufReader::new(connect(up.addr()));
    other.get_mut().write_all(get("/").as_bytes()).unwrap();
    assert_eq!(read_response(&mut other).unwrap().status, 200);
    assert_eq!((up.requests(), up.connections()), (4, 2));
}

#[test]
fn echo_query_sets_status_and_sends_a_sized_pattern_plain_or_chunked() {
    let up = Upstream::echo();
    let mut r = BufReader::new(connect(up.addr()));
    r.get_mut().write_all(get("/?status=503").as_bytes()).unwrap();
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(Echo::parse(&resp.body).target, "/?status=503");

    r.get_mut().write_all(get("/?size=100000").as_bytes()).unwrap();
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.header("content-length"), Some("100000"));
    assert!(resp.body == upstream::pattern(100_000));

    r.get_mut()
        .write_all(get("/?size=100000&chunked=1").as_bytes())
        .unwrap();
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert!(resp.body == upstream::pattern(100_000));
    assert_eq!(up.connections(), 1);
}

#[test]
fn echo_delay_holds_the_head_back() {
    let up = Upstream::echo();
    let mut s = connect(up.addr());
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    s.write_all(get("/?delay_ms=600000").as_bytes()).unwrap();
    let err = s.read(&mut [0u8; 1]).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
}

#[test]
fn h2c_echoes_over_http2_prior_knowledge_and_sends_trailers() {
    use http_body_util::{BodyExt, Empty};
    let up = Upstream::h2c();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(up.addr()).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let uri = format!("http://{}/x?trailer=1", up.addr());
        let req = hyper::Request::get(uri).body(Empty::<bytes::Bytes>::new()).unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.headers()["x-upstream"], "h2c");
        let collected = resp.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        let echo = Echo::parse(&collected.to_bytes());
        assert_eq!(echo.version, "HTTP/2.0");
        assert_eq!(echo.target, "/x?trailer=1");
        assert_eq!(echo.authority, Some(up.addr().to_string()));
    });
}

fn tls_client(up: &Upstream, alpn: &[u8]) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(up.ca_pem().as_bytes()).unwrap())
        .unwrap();
    assert_eq!(std::fs::read_to_string(up.ca_file()).unwrap(), up.ca_pem());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, connect(up.addr()));
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).expect("TLS handshake");
    }
    stream
}

#[test]
fn tls_echo_verifies_against_its_ca_and_negotiates_alpn() {
    let up = Upstream::tls("secure");
    assert!(up.url().starts_with("https://127.0.0.1:"));
    let mut s = tls_client(&up, b"http/1.1");
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    s.write_all(b"GET /tls HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(resp.header("x-upstream"), Some("secure"));
    assert_eq!(Echo::parse(&resp.body).target, "/tls");

    let h2 = tls_client(&up, b"h2");
    assert_eq!(h2.conn.alpn_protocol(), Some(&b"h2"[..]));
}

#[test]
fn websocket_echo_accepts_per_rfc_6455_then_echoes_raw_bytes() {
    // The key and accept value of RFC 6455 §1.3.
    assert_eq!(
        upstream::websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    let up = Upstream::websocket_echo();
    let mut r = BufReader::new(connect(up.addr()));
    r.get_mut()
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: up\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let (_, status, headers) = read_head(&mut r).unwrap();
    assert_eq!(status, 101);
    assert!(headers.contains(&("sec-websocket-accept".into(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into())));
    let sent: Vec<u8> = (0..=255u8).collect();
    r.get_mut().write_all(&sent).unwrap();
    let mut back = vec![0u8; sent.len()];
    r.read_exact(&mut back).unwrap();
    assert_eq!(back, sent);
}

#[test]
fn reset_mid_body_sends_part_of_the_declared_body_then_resets() {
    let up = Upstream::reset_mid_body();
    let mut r = BufReader::new(connect(up.addr()));
    r.get_mut().write_all(get("/").as_bytes()).unwrap();
    let (_, status, headers) = read_head(&mut r).unwrap();
    assert_eq!(status, 200);
    assert!(headers.contains(&("content-length".into(), upstream::RESET_DECLARED_LEN.to_string())));
    let (body, err) = read_all(&mut r);
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::ConnectionReset));
    assert!(body == upstream::pattern(1000), "got {} body bytes", body.len());
}

#[test]
fn garbage_status_sends_exactly_an_invalid_status_line_then_closes() {
    let up = Upstream::garbage_status();
    let mut s = connect(up.addr());
    s.write_all(get("/").as_bytes()).unwrap();
    let (bytes, err) = read_all(&mut s);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(bytes, upstream::GARBAGE_STATUS);
    assert_eq!(up.requests(), 1);
}

#[test]
fn early_close_reads_the_head_then_closes_without_a_byte() {
    let up = Upstream::early_close();
    let mut s = connect(up.addr());
    s.write_all(get("/").as_bytes()).unwrap();
    let (bytes, err) = read_all(&mut s);
    assert!(bytes.is_empty() && err.is_none(), "{bytes:?} {err:?}");
}

#[test]
fn stall_never_answers() {
    let up = Upstream::stall();
    let mut s = connect(up.addr());
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    s.write_all(get("/").as_bytes()).unwrap();
    let err = s.read(&mut [0u8; 1]).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
    assert_eq!(up.connections(), 1);
}

#[test]
fn trickle_sends_a_valid_response_in_pieces() {
    let up = Upstream::trickle_len(10, 3, Duration::from_millis(1));
    let mut s = connect(up.addr());
    s.write_all(get("/").as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, upstream::pattern(10));
}

#[test]
fn refused_address_refuses_and_a_dropped_upstream_stops_listening() {
    let err = TcpStream::connect(Upstream::refused()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);

    let up = Upstream::echo();
    let addr = up.addr();
    let mut idle = connect(addr);
    idle.write_all(get("/").as_bytes()).unwrap();
    let mut r = BufReader::new(idle);
    read_response(&mut r).unwrap();
    drop(up);
    let err = TcpStream::connect(addr).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    // The kept-alive connection was closed too.
    let (rest, _) = read_all(&mut r);
    assert!(rest.is_empty());
}
