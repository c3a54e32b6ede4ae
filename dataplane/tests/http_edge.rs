//! Bad input at the HTTP edge: malformed request lines, oversized heads and
//! bodies (Content-Length and chunked, server-wide and per-route limits), and
//! clients that vanish mid-body without leaking file descriptors.

mod common;

use std::io::{BufReader, Write};
use std::time::Duration;

use common::{Response, Server, read_response, route, wait_for};

fn server(extra: &[&str]) -> Server {
    let yaml = route(
        "edge",
        r#"  locations:
  - path: /
    content: ngx.say("ok ", ngx.var.uri)
  - path: /need
    needRequestBody: true
    content: |
      local body = ngx.req.get_body_data() or ""
      ngx.say("need ", #body)
  - path: /read
    content: |
      ngx.req.read_body()
      local body = ngx.req.get_body_data() or ""
      ngx.say("read ", #body)
"#,
    );
    let mut b = Server::builder(&yaml);
    for a in extra {
        b = b.arg(a);
    }
    b.start()
}

/// Sends `raw` in one write (ignoring a reset: the server may answer and
/// close before reading everything) and reads the response.
fn send(s: &Server, raw: &[u8]) -> Response {
    let mut stream = s.connect();
    let _ = stream.write_all(raw);
    read_response(&mut BufReader::new(stream)).unwrap_or_else(|e| panic!("no response: {e}; logs:\n{}", s.logs()))
}

#[test]
fn malformed_request_line_is_400() {
    let s = server(&[]);
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/9.9 extra\r\n\r\n",
        b"GET\x01/ HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let r = send(&s, bad);
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(bad));
    }
    assert_eq!(s.get("/still").text(), "ok /still\n", "the server keeps serving");
}

#[test]
fn request_head_over_max_header_size_is_431() {
    let s = server(&["--max-header-size", "16Ki"]);
    let head = |n: usize| {
        format!(
            "GET /h HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(n)
        )
    };
    let r = send(&s, head(12 * 1024).as_bytes());
    assert_eq!(r.status, 200, "a head under the limit is served");
    let r = send(&s, head(32 * 1024).as_bytes());
    assert_eq!(r.status, 431, "a head over the limit: {r:?}");
    assert_eq!(s.get("/after").status, 200);
}

#[test]
fn content_length_over_the_limit_is_413() {
    let s = server(&["--max-body-size", "1Ki"]);
    for path in ["/need", "/read"] {
        // Only the head: the server must refuse on Content-Length alone.
        let r = send(
            &s,
            format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(r.status, 413, "{path}: {r:?}");
        // Under the limit is read and seen by the handler.
        let body = "x".repeat(1000);
        let r = send(
            &s,
            format!(
                "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{body}"
            )
            .as_bytes(),
        );
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.text(), format!("{} 1000\n", &path[1..]));
    }
    let logged = s.wait_log("client intended to send too large body", Duration::from_secs(10));
    assert!(logged.is_some(), "{}", s.logs());
}

/// nginx's lingering close: a client that sends all of a large body the
/// server answered early (413 on Content-Length or mid-stream, or a handler
/// that never reads it) gets to write it all and reads the response, rather
/// than a reset from a close with its data still arriving.
#[test]
fn a_body_answered_early_is_drained_so_the_client_reads_the_response() {
    let s = server(&["--max-body-size", "1Mi"]);
    let big = "b".repeat(16 << 20);
    let cases = [
        ("/need", format!("Content-Length: {}\r\n", big.len()), big.clone(), 413),
        (
            "/read",
            "Transfer-Encoding: chunked\r\n".to_string(),
            format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len()),
            413,
        ),
        (
            "/",
            "Transfer-Encoding: chunked\r\n".to_string(),
            format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len()),
            200,
        ),
    ];
    for (path, framing, body, status) in cases {
        let mut stream = s.connect();
        stream
            .write_all(
                format!("POST {path} HTTP/1.1\r\nHost: localhost\r\n{framing}Connection: close\r\n\r\n").as_bytes(),
            )
            .unwrap();
        stream
            .write_all(body.as_bytes())
            .unwrap_or_else(|e| panic!("{path}: the body could not be sent: {e}"));
        let r = read_response(&mut BufReader::new(stream)).unwrap_or_else(|e| panic!("{path}: no response: {e}"));
        assert_eq!(r.status, status, "{path}: {r:?}");
    }
}

#[test]
fn chunked_body_over_the_limit_is_413() {
    let s = server(&["--max-body-size", "1Ki"]);
    for path in ["/need", "/read"] {
        let mut raw = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        for _ in 0..4 {
            raw.extend_from_slice(format!("200\r\n{}\r\n", "y".repeat(512)).as_bytes());
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        let r = send(&s, &raw);
        assert_eq!(r.status, 413, "{path}: 2 KiB chunked over a 1 KiB limit: {r:?}");

        let small = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        );
        let r = send(&s, small.as_bytes());
        assert_eq!((r.status, r.text()), (200, format!("{} 11\n", &path[1..])), "{path}");
    }
}

#[test]
fn route_limit_overrides_the_server_default() {
    let s = Server::start(&route(
        "limited",
        r#"  limits: {maxBodySize: "16"}
  locations:
  - path: /
    needRequestBody: true
    content: ngx.say(#(ngx.req.get_body_data() or ""))
"#,
    ));
    let post = |n: usize| {
        format!(
            "POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n{}",
            "z".repeat(n)
        )
    };
    assert_eq!(send(&s, post(16).as_bytes()).text(), "16\n");
    assert_eq!(
        send(&s, post(17).as_bytes()).status,
        413,
        "the route's 16-byte limit, not the 1Mi default"
    );
}

#[test]
fn half_sent_bodies_do_not_leak_descriptors() {
    let mut s = server(&[]);
    assert_eq!(s.get("/warm").status, 200);
    let baseline = s.fd_count();
    for i in 0..200 {
        let path = if i % 2 == 0 { "/need" } else { "/read" };
        let mut c = s.connect();
        c.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n{}",
                "h".repeat(500)
            )
            .as_bytes(),
        )
        .unwrap();
        drop(c);
    }
    let r = s.get("/alive");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "ok /alive\n"),
        "still serving after 200 aborted uploads"
    );
    let settled = wait_for(Duration::from_secs(30), || {
        let n = s.fd_count();
        (n <= baseline + 4).then_some(n)
    });
    assert!(
        settled.is_some(),
        "fds stayed at {} (baseline {baseline})",
        s.fd_count()
    );
    assert!(s.try_wait().is_none(), "the process is still running");
}

#[test]
fn paths_are_normalized_and_escaping_the_root_is_400() {
    let s = server(&[]);
    assert_eq!(s.get("/a/../b/./c").text(), "ok /b/c\n", "dot segments are merged");
    assert_eq!(s.get("/x%20y/%2e%2e/z").text(), "ok /z\n", "after percent-decoding");
    assert_eq!(s.get("//double//slash").text(), "ok /double/slash\n", "merge_slashes");
    assert_eq!(s.get("/../etc/passwd").status, 400, "above the root");
}

#[test]
fn head_gets_headers_without_a_body() {
    let s = server(&[]);
    let mut stream = s.connect();
    stream
        .write_all(b"HEAD /h HTTP/1.1\r\nHost: localhost\r\n\r\nGET /after-head HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(stream);
    let head = common::read_response_to(&mut r, true).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/plain"));
    // The next response on the connection starts right after the head: no body bytes in between.
    let next = read_response(&mut r).unwrap();
    assert_eq!(next.text(), "ok /after-head\n");
}

#[test]
fn exit_444_closes_the_connection_without_a_response() {
    let s = Server::start(&route(
        "close",
        "  locations:\n  - path: /\n    content: ngx.exit(444)\n",
    ));
    let got = s.raw_bytes(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
}
