//! The reverse proxy through the real binary, against real upstreams on
//! loopback (`common::upstream`): what nginx's `proxy_pass` sends and how it
//! maps upstream failures, keep-alive, retries and ejection, balancing, the
//! Lua balancer, streaming, WebSocket, HTTP/2, TLS and the egress policy.

mod common;

use std::io::{BufReader, Read, Write};

use common::upstream::{Echo, Upstream};
use common::{IO_TIMEOUT, Server, read_head, read_response, route};

/// Loopback is refused by the egress policy unless allowed.
fn serve(locations: &str) -> Server {
    Server::builder(&route("p", &format!("  locations:\n{locations}")))
        .arg("--egress-allow")
        .arg("127.0.0.1/32")
        .start()
}

fn get(srv: &Server, path: &str, extra: &str) -> common::Response {
    srv.try_get_host("shop.test", path, extra)
        .unwrap_or_else(|e| panic!("GET {path}: {e}; logs:\n{}", srv.logs()))
}

fn echo(srv: &Server, path: &str, extra: &str) -> Echo {
    let r = get(srv, path, extra);
    assert_eq!(r.status, 200, "{path}: {}\n{}", r.text(), srv.logs());
    Echo::parse(&r.body)
}

#[test]
fn the_uri_passes_as_nginx_passes_it() {
    let up = Upstream::echo();
    let srv = serve(&format!(
        "    - path: /raw/\n      upstream: {{url: \"{u}\"}}\n    - path: /api/\n      upstream: {{url: \"{u}/v2/\"}}\n    - path: /moved/\n      rewrite: ngx.req.set_uri(\"/other place\")\n      upstream: {{url: \"{u}/v2/\"}}\n",
        u = up.url()
    ));
    // No URI part: the client's bytes, unnormalized.
    assert_eq!(echo(&srv, "/raw/a/./b//c?x=%20y", "").target, "/raw/a/./b//c?x=%20y");
    // A URI part replaces the matched prefix of the normalized URI.
    assert_eq!(echo(&srv, "/api/users/../u?id=1", "").target, "/v2/u?id=1");
    // After set_uri the whole changed URI passes, escaped; the URI part is ignored.
    assert_eq!(echo(&srv, "/moved/x?a=1", "").target, "/other%20place?a=1");
}

#[test]
fn what_lua_changes_reaches_the_upstream() {
    let up = Upstream::echo();
    let srv = serve(&format!(
        "    - path: /\n      access: |\n        ngx.req.set_uri_args(\"a=1&b=2\")\n        ngx.req.set_header(\"X-Added\", \"yes\")\n        ngx.req.clear_header(\"X-Gone\")\n        ngx.req.set_method(ngx.HTTP_POST)\n        ngx.req.read_body()\n        ngx.req.set_body_data(\"new body\")\n      upstream: {{url: \"{}\"}}\n",
        up.url()
    ));
    let e = echo(&srv, "/x?old=1", "X-Gone: 1\r\n");
    assert_eq!(e.method, "POST");
    assert_eq!(e.target, "/x?a=1&b=2");
    assert_eq!(e.header("x-added"), Some("yes"));
    assert_eq!(e.header("x-gone"), None);
    assert_eq!(e.body.as_deref(), Some("new body"));
    assert_eq!(e.header("content-length"), Some("8"));
}

#[test]
fn host_forwarding_and_hop_by_hop_headers() {
    let up = Upstream::echo();
    let srv = serve(&format!(
        "    - path: /client/\n      upstream: {{url: \"{u}\"}}\n    - path: /proxy/\n      upstream: {{url: \"{u}\", host: \"$proxy_host\"}}\n    - path: /literal/\n      upstream: {{url: \"{u}\", host: api.internal}}\n",
        u = up.url()
    ));
    let e = echo(
        &srv,
        "/client/",
        "X-Forwarded-For: 1.1.1.1\r\nX-Real-IP: 6.6.6.6\r\nConnection: keep-alive, x-secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nTE: gzip\r\nX-Kept: k\r\n",
    );
    assert_eq!(e.header("host"), Some("shop.test"));
    assert_eq!(e.header("x-forwarded-for"), Some("1.1.1.1, 127.0.0.1"));
    assert_eq!(e.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(e.header("x-forwarded-proto"), Some("http"));
    assert_eq!(e.header("x-forwarded-host"), Some("shop.test"));
    assert_eq!(e.header("x-forwarded-port"), Some(srv.port.to_string().as_str()));
    assert_eq!(e.header("x-kept"), Some("k"));
    for gone in ["x-secret", "keep-alive", "te"] {
        assert_eq!(e.header(gone), None, "{gone} reached the upstream");
    }
    assert_eq!(
        echo(&srv, "/proxy/", "").header("host"),
        Some(format!("127.0.0.1:{}", up.port()).as_str())
    );
    assert_eq!(echo(&srv, "/literal/", "").header("host"), Some("api.internal"));
}

#[test]
fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let up = Upstream::echo();
    let srv = serve(&format!("    - path: /\n      upstream: {{url: \"{}\"}}\n", up.url()));
    let mut s = srv.connect();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let head = read_head(&mut r).unwrap();
    assert_eq!(head.1, 100, "no 100 Continue before the body");
    s.write_all(b"hello").unwrap();
    let resp = read_response(&mut r).unwrap();
    let e = Echo::parse(&resp.body);
    assert_eq!(e.body.as_deref(), Some("hello"));
    assert_eq!(e.header("expect"), None);
}

#[test]
fn filters_and_log_see_the_upstream_response() {
    let up = Upstream::echo_named("a");
    let srv = serve(&format!(
        "    - path: /\n      upstream: {{url: \"{}\"}}\n      headerFilter: |\n        ngx.header[\"X-Seen\"] = ngx.status .. \" \" .. ngx.header[\"x-upstream\"]\n        ngx.header.content_length = nil\n      bodyFilter: |\n        ngx.arg[1] = string.upper(ngx.arg[1])\n        if ngx.arg[2] then ngx.arg[1] = ngx.arg[1] .. \"<END>\" end\n      log: |\n        ngx.log(ngx.ERR, \"UPSTREAM addr=\", ngx.var.upstream_addr, \" status=\", ngx.var.upstream_status,\n          \" connect=\", ngx.var.upstream_connect_time, \" header=\", ngx.var.upstream_header_time,\n          \" response=\", ngx.var.upstream_response_time)\n",
        up.url()
    ));
    let r = get(&srv, "/?size=100", "");
    assert_eq!(r.header("x-seen"), Some("200 a"));
    let want = String::from_utf8(common::upstream::pattern(100))
        .unwrap()
        .to_uppercase()
        + "<END>";
    assert_eq!(r.text(), want);
    let line = srv.wait_log("UPSTREAM addr=", IO_TIMEOUT).expect("log phase ran");
    assert!(line.contains(&format!("addr={} status=200", up.addr())), "{line}");
    let time = regex_like_seconds(&line, "response=");
    assert!(time, "{line}");
}

/// Whether `key` is followed by seconds with three decimals, as nginx logs them.
fn regex_like_seconds(line: &str, key: &str) -> bool {
    line.split(key).nth(1).is_some_and(|rest| {
        let v: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        v.split_once('.').is_some_and(|(_, frac)| frac.len() == 3)
    })
}

#[test]
fn upstream_connections_are_kept_alive_within_the_limits() {
    let (a, b, c) = (Upstream::echo(), Upstream::echo(), Upstream::echo());
    let srv = serve(&format!(
        "    - path: /a/\n      upstream: {{url: \"{}\"}}\n    - path: /b/\n      upstream: {{url: \"{}\", keepalive: {{maxRequests: 2}}}}\n    - path: /c/\n      upstream: {{url: \"{}\", keepalive: {{enabled: false}}}}\n",
        a.url(),
        b.url(),
        c.url()
    ));
    for _ in 0..5 {
        echo(&srv, "/a/", "");
    }
    assert_eq!((a.requests(), a.connections()), (5, 1));
    for _ in 0..4 {
        echo(&srv, "/b/", "");
    }
    assert_eq!((b.requests(), b.connections()), (4, 2));
    for _ in 0..3 {
        echo(&srv, "/c/", "");
    }
    assert_eq!((c.requests(), c.connections()), (3, 3));
}

#[test]
fn upstream_failures_map_as_nginx_maps_them() {
    let stall = Upstream::stall();
    let garbage = Upstream::garbage_status();
    let early = Upstream::early_close();
    let good = Upstream::echo();
    let refused = Upstream::refused();
    let srv = serve(&format!(
        "    - path: /refused/\n      upstream: {{url: \"http://{refused}\"}}\n    - path: /stall/\n      upstream: {{url: \"{}\", timeouts: {{read: 300ms}}}}\n    - path: /garbage/\n      upstream: {{url: \"{}\"}}\n    - path: /early/\n      upstream: {{url: \"{}\"}}\n    - path: /good/\n      upstream: {{url: \"{}\"}}\n",
        stall.url(),
        garbage.url(),
        early.url(),
        good.url()
    ));
    for (path, status, addr) in [
        ("/refused/", 502, refused.to_string()),
        ("/stall/", 504, stall.addr().to_string()),
        ("/garbage/", 502, garbage.addr().to_string()),
        ("/early/", 502, early.addr().to_string()),
    ] {
        let from = srv.log_count();
        assert_eq!(get(&srv, path, "").status, status, "{path}");
        let line = srv
            .wait_log_since(from, &format!("upstream: {addr}"), IO_TIMEOUT)
            .unwrap_or_else(|| panic!("{path}: no log line naming {addr}:\n{}", srv.logs()));
        assert!(line.contains(&format!("route default/p, location {path}")), "{line}");
        if status == 504 {
            assert!(line.contains("timed out"), "{line}");
        }
        // The next request to a good upstream is unaffected.
        echo(&srv, "/good/", "");
    }
}

#[test]
fn a_reset_mid_body_aborts_the_client_connection() {
    let up = Upstream::reset_mid_body();
    let srv = serve(&format!("    - path: /\n      upstream: {{url: \"{}\"}}\n", up.url()));
    let mut s = srv.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let head = read_head(&mut r).unwrap();
    assert_eq!(head.1, 200);
    let mut body = Vec::new();
    let _ = r.read_to_end(&mut body);
    assert!(
        body.len() < common::upstream::RESET_DECLARED_LEN,
        "a truncated body passed as complete ({} bytes)",
        body.len()
    );
    srv.wait_log("prematurely closed", IO_TIMEOUT).expect("logged");
}

#[test]
fn a_service_without_endpoints_is_a_503() {
    let srv = serve("    - path: /\n      upstream: {service: web, port: 80}\n");
    assert_eq!(get(&srv, "/", "").status, 503);
    let line = srv.wait_log("no live upstreams", IO_TIMEOUT).expect("logged");
    assert!(line.contains("web"), "{line}");
}

#[test]
fn the_egress_policy_refuses_loopback_metadata_and_its_own_ports() {
    let up = Upstream::echo();
    let yaml = format!(
        "    - path: /loop/\n      upstream: {{url: \"{}\"}}\n    - path: /meta/\n      upstream: {{url: \"http://169.254.169.254/\"}}\n",
        up.url()
    );
    let srv = Server::start(&route("p", &format!("  locations:\n{yaml}")));
    assert_eq!(get(&srv, "/loop/", "").status, 502);
    srv.wait_log("refused: loopback", IO_TIMEOUT).expect("loopback refused");
    assert_eq!(get(&srv, "/meta/", "").status, 502);
    srv.wait_log("cloud metadata", IO_TIMEOUT).expect("metadata refused");
    assert_eq!(up.connections(), 0);

    // Loopback allowed: the dataplane's own admin port still is not.
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let own = Server::builder(&route(
        "p",
        &format!("  locations:\n    - path: /\n      upstream: {{url: \"http://127.0.0.1:{admin}\"}}\n"),
    ))
    .arg("--egress-allow")
    .arg("127.0.0.0/8")
    .arg("--admin")
    .arg(&format!("127.0.0.1:{admin}"))
    .start();
    assert_eq!(get(&own, "/", "").status, 502);
    own.wait_log("own", IO_TIMEOUT).expect("own socket refused");
}

#[test]
fn retries_go_to_another_peer_for_idempotent_methods() {
    let failing = Upstream::raw_reply(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
    let good = Upstream::echo_named("good");
    let refused = Upstream::refused();
    let srv = serve(&format!(
        "    - path: /error/\n      upstream:\n        servers: [{{address: \"{refused}\"}}, {{address: \"{g}\"}}]\n        retries: {{tries: 2}}\n        passiveHealth: {{enabled: false}}\n      log: ngx.log(ngx.ERR, \"TRIES \", ngx.var.upstream_addr, \" \", ngx.var.upstream_status)\n    - path: /status/\n      upstream:\n        servers: [{{address: \"{f}\"}}, {{address: \"{g}\"}}]\n        retries: {{tries: 2, onStatus: [503]}}\n        passiveHealth: {{enabled: false}}\n    - path: /post/\n      upstream:\n        servers: [{{address: \"{f}\"}}, {{address: \"{g}\"}}]\n        retries: {{tries: 2, onStatus: [503]}}\n        passiveHealth: {{enabled: false}}\n    - path: /put/\n      upstream:\n        servers: [{{address: \"{f}\"}}, {{address: \"{g}\"}}]\n        retries: {{tries: 2, onStatus: [503]}}\n        passiveHealth: {{enabled: false}}\n    - path: /noretry/\n      upstream:\n        servers: [{{address: \"{refused}\"}}, {{address: \"{g}\"}}]\n        retries: {{onError: false}}\n        passiveHealth: {{enabled: false}}\n",
        g = good.addr(),
        f = failing.addr(),
    ));
    assert_eq!(echo(&srv, "/error/", "").upstream, "good");
    let line = srv.wait_log("TRIES ", IO_TIMEOUT).unwrap();
    assert!(
        line.contains(&format!("TRIES {refused}, {} 502, 200", good.addr())),
        "{line}"
    );
    assert_eq!(echo(&srv, "/status/", "").upstream, "good");
    // POST is not idempotent: its 503 stands, and the good peer never sees it
    // (a location of its own, so round-robin starts at the failing peer).
    let before = good.requests();
    let r = srv
        .try_raw(b"POST /post/ HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(good.requests(), before);
    // PUT is idempotent: its small body is held, so the retry sends it again.
    let r = srv
        .try_raw(b"PUT /put/ HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        .unwrap();
    assert_eq!(r.status, 200, "{}", srv.logs());
    let e = Echo::parse(&r.body);
    assert_eq!((e.upstream.as_str(), e.body.as_deref()), ("good", Some("hello")));
    assert_eq!(get(&srv, "/noretry/", "").status, 502);
}

#[test]
fn a_failing_peer_is_ejected() {
    let good = Upstream::echo_named("good");
    let refused = Upstream::refused();
    let srv = serve(&format!(
        "    - path: /\n      upstream:\n        servers: [{{address: \"{refused}\"}}, {{address: \"{}\"}}]\n        retries: {{tries: 1}}\n        passiveHealth: {{consecutiveFailures: 1, baseEjectionTime: 300s}}\n",
        good.addr()
    ));
    assert_eq!(get(&srv, "/", "").status, 502, "round-robin starts with the first peer");
    srv.wait_log("ejected", IO_TIMEOUT).expect("ejection logged");
    for _ in 0..10 {
        assert_eq!(echo(&srv, "/", "").upstream, "good");
    }
}

#[test]
fn balancing_by_weight_and_by_hash() {
    let (a, b) = (Upstream::echo_named("a"), Upstream::echo_named("b"));
    let srv = serve(&format!(
        "    - path: /wrr/\n      upstream: {{servers: [{{address: \"{a}\", weight: 3}}, {{address: \"{b}\"}}]}}\n    - path: /hash/\n      upstream:\n        servers: [{{address: \"{a}\"}}, {{address: \"{b}\"}}]\n        balance: {{policy: ConsistentHash, hashOn: {{header: x-user}}}}\n    - path: /least/\n      upstream:\n        servers: [{{address: \"{a}\"}}, {{address: \"{b}\"}}]\n        balance: {{policy: LeastRequest}}\n",
        a = a.addr(),
        b = b.addr()
    ));
    let names: Vec<String> = (0..8).map(|_| echo(&srv, "/wrr/", "").upstream).collect();
    assert_eq!(names.iter().filter(|n| *n == "a").count(), 6, "{names:?}");
    let mut seen = std::collections::HashSet::new();
    for user in 0..20 {
        let header = format!("X-User: u{user}\r\n");
        let first = echo(&srv, "/hash/", &header).upstream;
        assert_eq!(echo(&srv, "/hash/", &header).upstream, first, "user {user} moved");
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "20 users all hashed to one peer");
    let least: std::collections::HashSet<String> = (0..20).map(|_| echo(&srv, "/least/", "").upstream).collect();
    assert_eq!(least.len(), 2);
}

#[test]
fn a_lua_balancer_picks_the_peer_of_each_try() {
    let (a, b) = (Upstream::echo_named("a"), Upstream::echo_named("b"));
    let refused = Upstream::refused();
    let srv = serve(&format!(
        "    - path: /pick/\n      upstream: {{servers: [{{address: \"{a}\"}}]}}\n      balancer: |\n        local b = require \"ngx.balancer\"\n        assert(b.set_current_peer(\"127.0.0.1\", {bp}))\n    - path: /retry/\n      upstream: {{servers: [{{address: \"{a}\"}}], passiveHealth: {{enabled: false}}}}\n      balancer: |\n        local b = require \"ngx.balancer\"\n        local state, status = b.get_last_failure()\n        if state == nil then\n          b.set_more_tries(1)\n          assert(b.set_current_peer(\"{rh}\", {rp}))\n        else\n          ngx.log(ngx.ERR, \"LAST \", state, \" \", status)\n          assert(b.set_current_peer(\"127.0.0.1\", {bp}))\n        end\n    - path: /bad/\n      upstream: {{servers: [{{address: \"{a}\"}}]}}\n      balancer: |\n        require(\"ngx.balancer\").set_current_peer(\"no-such-host.invalid\", 80)\n    - path: /throws/\n      upstream: {{servers: [{{address: \"{a}\"}}]}}\n      balancer: error(\"boom\")\n    - path: /content/\n      content: |\n        local ok, err = pcall(require(\"ngx.balancer\").set_current_peer, \"127.0.0.1\", 80)\n        ngx.say(err)\n",
        a = a.addr(),
        bp = b.port(),
        rh = refused.ip(),
        rp = refused.port(),
    ));
    assert_eq!(echo(&srv, "/pick/", "").upstream, "b");
    assert_eq!(echo(&srv, "/retry/", "").upstream, "b");
    srv.wait_log("LAST failed 502", IO_TIMEOUT).expect("get_last_failure");
    assert_eq!(get(&srv, "/bad/", "").status, 502);
    assert_eq!(get(&srv, "/throws/", "").status, 500);
    assert!(
        get(&srv, "/content/", "")
            .text()
            .contains("API disabled in the context of content_by_lua*")
    );
    assert_eq!(a.requests(), 0, "the balancer's choice stands");
}

/// The process's peak resident memory, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_gigabyte_streams_both_ways_in_bounded_memory() {
    const GIB: usize = 1 << 30;
    let up = Upstream::echo();
    let srv = Server::builder(&route(
        "p",
        &format!(
            "  locations:\n    - path: /\n      upstream: {{url: \"{}\"}}\n",
            up.url()
        ),
    ))
    .arg("--egress-allow")
    .arg("127.0.0.1/32")
    .arg("--max-body-size")
    .arg("2Gi")
    .start();
    echo(&srv, "/warm", "");
    let before = peak_rss_kib(srv.pid());

    // Download.
    let mut s = srv.connect();
    s.write_all(format!("GET /?size={GIB} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut r = BufReader::with_capacity(1 << 20, s);
    let head = read_head(&mut r).unwrap();
    assert_eq!(head.1, 200);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0usize;
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, GIB);

    // Upload, chunked, generated as it goes.
    let mut s = srv.connect();
    s.write_all(b"PUT / HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .unwrap();
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0;
    while sent < GIB {
        write!(s, "{:x}\r\n", chunk.len()).unwrap();
        s.write_all(&chunk).unwrap();
        s.write_all(b"\r\n").unwrap();
        sent += chunk.len();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let resp = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(Echo::parse(&resp.body).body_len, GIB);

    let grown = peak_rss_kib(srv.pid()).saturating_sub(before);
    assert!(grown < 32 * 1024, "peak RSS grew by {grown} KiB while 2 GiB streamed");
}

#[test]
fn a_websocket_is_spliced_through() {
    let up = Upstream::websocket_echo();
    let srv = serve(&format!("    - path: /\n      upstream: {{url: \"{}\"}}\n", up.url()));
    let mut s = srv.connect();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    s.write_all(
        format!("GET /ws HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let head = read_head(&mut r).unwrap();
    assert_eq!(head.1, 101);
    let accept = head
        .2
        .iter()
        .find(|(n, _)| n == "sec-websocket-accept")
        .map(|(_, v)| v.clone());
    assert_eq!(accept, Some(common::upstream::websocket_accept(key)));
    s.write_all(b"ping through the proxy").unwrap();
    let mut got = vec![0u8; 22];
    r.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping through the proxy");
}

#[test]
fn http2_to_the_upstream_with_trailers() {
    let up = Upstream::h2c();
    let srv = serve(&format!(
        "    - path: /\n      upstream: {{url: \"{}\", protocol: HTTP2}}\n",
        up.url()
    ));
    assert_eq!(echo(&srv, "/", "").version, "HTTP/2.0");
    // gRPC's shape: HTTP/2 on both sides, `TE: trailers`, and a trailer at the end.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use http_body_util::{BodyExt, Empty};
        let tcp = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get("http://shop.test/grpc?trailer=1")
            .header("te", "trailers")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let collected = resp.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().expect("trailers passed")["grpc-status"], "0");
        let e = Echo::parse(&collected.to_bytes());
        assert_eq!(e.header("te"), Some("trailers"));
    });
}

#[test]
fn upstream_tls_is_verified() {
    let up = Upstream::tls("a");
    let srv = serve(&format!(
        "    - path: /ca/\n      upstream: {{url: \"https://127.0.0.1:{p}\", tls: {{serverName: localhost, caFile: \"{ca}\"}}}}\n    - path: /h2/\n      upstream: {{url: \"https://127.0.0.1:{p}\", protocol: HTTP2, tls: {{serverName: localhost, caFile: \"{ca}\"}}}}\n    - path: /system/\n      upstream: {{url: \"https://127.0.0.1:{p}\", tls: {{serverName: localhost}}}}\n    - path: /insecure/\n      upstream: {{url: \"https://127.0.0.1:{p}\", tls: {{insecureSkipVerify: true}}}}\n",
        p = up.port(),
        ca = up.ca_file().display()
    ));
    assert_eq!(echo(&srv, "/ca/", "").version, "HTTP/1.1");
    assert_eq!(echo(&srv, "/h2/", "").version, "HTTP/2.0");
    assert_eq!(get(&srv, "/system/", "").status, 502);
    srv.wait_log("SSL handshake failed", IO_TIMEOUT)
        .expect("the TLS failure is logged");
    echo(&srv, "/insecure/", "");
}

#[test]
fn active_checks_take_a_failing_peer_out() {
    let bad = Upstream::garbage_status();
    let good = Upstream::echo_named("good");
    let srv = serve(&format!(
        "    - path: /\n      upstream:\n        servers: [{{address: \"{}\"}}, {{address: \"{}\"}}]\n        activeHealth: {{path: /healthz, interval: 100ms, timeout: 100ms, unhealthyThreshold: 1}}\n        passiveHealth: {{enabled: false}}\n        retries: {{tries: 1}}\n",
        bad.addr(),
        good.addr()
    ));
    srv.wait_log("failed its active checks", IO_TIMEOUT)
        .expect("the bad peer is found out");
    for _ in 0..10 {
        assert_eq!(echo(&srv, "/", "").upstream, "good");
    }
}

/// nginx from Debian as the upstream, serving static files: what it answers
/// passes through unchanged (validators, 404, ranges, HEAD, a 1 MiB body), the
/// request it sees is the one nginx's `proxy_pass` would send, and one pooled
/// connection carries the requests one after another (nginx's own
/// `$connection` and `$connection_requests` say so).
#[test]
fn nginx_serving_static_files_is_a_real_upstream() {
    let small = common::upstream::pattern(1024);
    let large = common::upstream::pattern(1 << 20);
    let nginx = common::daemon::Daemon::nginx(
        "    root {root};\n    location = /seen { return 200 \"$request_uri|$http_host|$http_x_forwarded_for|$http_connection\"; }\n",
        &[("static/1k.bin", &small), ("static/1m.bin", &large)],
    );
    let srv = serve(&format!(
        "    - path: /files/\n      upstream: {{url: \"{u}/static/\"}}\n    - path: /seen\n      upstream: {{url: \"{u}\"}}\n",
        u = nginx.url()
    ));

    let r = get(&srv, "/files/1k.bin", "");
    assert_eq!(r.status, 200, "{}", srv.logs());
    assert_eq!(r.body, small);
    assert_eq!(r.header("content-length"), Some("1024"));
    assert!(r.header("etag").is_some_and(|e| e.starts_with('"')), "{:?}", r.headers);
    assert!(r.header("last-modified").is_some(), "{:?}", r.headers);
    let etag = r.header("etag").unwrap().to_owned();
    assert_eq!(
        get(&srv, "/files/1k.bin", &format!("If-None-Match: {etag}\r\n")).status,
        304
    );
    let range = get(&srv, "/files/1k.bin", "Range: bytes=10-19\r\n");
    assert_eq!(range.status, 206);
    assert_eq!(range.header("content-range"), Some("bytes 10-19/1024"));
    assert_eq!(range.body, &small[10..20]);
    let missing = get(&srv, "/files/none", "");
    assert_eq!(missing.status, 404);
    assert!(
        missing.text().contains("nginx"),
        "nginx's own 404 page: {}",
        missing.text()
    );
    let mut conn = srv.connect();
    conn.write_all(b"HEAD /files/1k.bin HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let head = common::read_response_to(&mut BufReader::new(conn), true).unwrap();
    assert_eq!(
        (head.status, head.header("content-length"), head.body.len()),
        (200, Some("1024"), 0)
    );
    let big = get(&srv, "/files/1m.bin", "");
    assert_eq!(big.status, 200);
    assert_eq!(
        common::upstream::sha256_hex(&big.body),
        common::upstream::sha256_hex(&large)
    );

    let seen = get(&srv, "/seen?q=1", "X-Forwarded-For: 10.1.1.1\r\n");
    assert_eq!(
        seen.text(),
        "/seen?q=1|shop.test|10.1.1.1, 127.0.0.1|",
        "keep-alive, no Connection header"
    );

    // The requests above came one after another, so one pooled connection
    // served them all (a 404 and a 304 leave it reusable).
    let log = nginx.access_log();
    assert_eq!(log.len(), 7, "{log:?}");
    let connections: std::collections::HashSet<&str> = log.iter().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(connections.len(), 1, "{log:?}");
    assert!(log.last().unwrap().ends_with(" 7"), "{log:?}");
}

/// The response head of a proxied request is the upstream's plus what Lua
/// set before proxying (nginx keeps headers_out), and never a Content-Type
/// the upstream did not send; `default_type` is for responses Lua makes,
/// and a header filter can still remove it.
#[test]
fn proxied_heads_keep_lua_headers_and_get_no_default_type() {
    let bare = Upstream::raw_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Up: 1\r\n\r\nabc");
    let srv = serve(&format!(
        "    - path: /bare/\n      defaultType: text/html\n      upstream: {{url: \"http://{b}\"}}\n      rewrite: |\n        ngx.header.blah = \"foo\"\n        ngx.header[\"X-Up\"] = \"lua\"\n    - path: /local\n      content: ngx.say(\"hi\")\n      headerFilter: ngx.header.content_type = nil\n    - path: /typed\n      defaultType: text/html\n      content: ngx.say(\"hi\")\n",
        b = bare.addr()
    ));
    let r = get(&srv, "/bare/", "");
    assert_eq!((r.status, r.text().as_str()), (200, "abc"), "{}", srv.logs());
    assert_eq!(r.header("content-type"), None);
    assert_eq!(r.header("blah"), Some("foo"));
    let x_up: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n == "x-up")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(x_up, ["1", "lua"]);
    let r = get(&srv, "/local", "");
    assert_eq!((r.text().as_str(), r.header("content-type")), ("hi\n", None));
    assert_eq!(get(&srv, "/typed", "").header("content-type"), Some("text/html"));
}
