//! The basics over real sockets: nginx location selection, `ngx.say` output,
//! status and Content-Type defaults, HTTP/1.1 keep-alive, HTTP/1.0, and h2c
//! with prior knowledge (raw frames; the workspace has no HTTP/2 client).

mod common;

use std::io::{BufReader, Read, Write};

use common::{Server, read_response, route};

fn locations_server() -> Server {
    Server::start(&route(
        "basic",
        r#"  locations:
  - path: /
    content: ngx.say("root ", ngx.var.uri)
  - path: /docs/
    content: ngx.say("prefix docs")
  - path: /docs/exact
    match: Exact
    content: ngx.say("exact")
  - path: /images/
    match: PrefixPriority
    content: ngx.say("images priority")
  - path: '\.(gif|jpg)$'
    match: RegexCaseInsensitive
    content: ngx.say("image regex")
  - path: '^/api/(\w+)$'
    match: Regex
    content: ngx.say("api ", ngx.var[1])
  - path: /json
    match: Exact
    defaultType: application/json
    content: ngx.say('{"ok":true}')
  - path: /html
    match: Exact
    defaultType: application/json
    content: |
      ngx.header.content_type = "text/html; charset=utf-8"
      ngx.say("<p>hi</p>")
  - path: /created
    match: Exact
    content: |
      ngx.status = 201
      ngx.header["X-Thing"] = "made"
      ngx.say("created")
  - path: /exit404
    match: Exact
    content: ngx.exit(404)
"#,
    ))
}

#[test]
fn location_selection_follows_nginx_rules() {
    let s = locations_server();
    let cases = [
        ("/docs/exact", "exact\n"),
        ("/docs/exact/more", "prefix docs\n"),
        ("/docs/readme", "prefix docs\n"),
        ("/docs/pic.JPG", "image regex\n"),
        ("/images/pic.gif", "images priority\n"),
        ("/api/users", "api users\n"),
        ("/api/users/1", "root /api/users/1\n"),
        ("/elsewhere", "root /elsewhere\n"),
        ("/elsewhere?x=1", "root /elsewhere\n"),
    ];
    for (path, want) in cases {
        let r = s.get(path);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.text(), want, "{path}");
    }
}

#[test]
fn say_status_and_content_type() {
    let s = locations_server();
    let r = s.get("/anything");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain"),
        "default_type defaults to text/plain"
    );

    let r = s.get("/json");
    assert_eq!(r.text(), "{\"ok\":true}\n");
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "defaultType applies"
    );

    let r = s.get("/html");
    assert_eq!(
        r.header("content-type"),
        Some("text/html; charset=utf-8"),
        "a handler's type wins"
    );

    let r = s.get("/created");
    assert_eq!(r.status, 201);
    assert_eq!(r.header("x-thing"), Some("made"));
    assert_eq!(r.text(), "created\n");

    let r = s.get("/exit404");
    assert_eq!(r.status, 404);
    assert!(
        r.text().contains("404 Not Found"),
        "nginx-style error page: {}",
        r.text()
    );
}

#[test]
fn keep_alive_serves_two_requests_on_one_connection() {
    let s = locations_server();
    let stream = s.connect();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    w.write_all(b"GET /docs/exact HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let first = read_response(&mut r).unwrap();
    assert_eq!((first.status, first.text().as_str()), (200, "exact\n"));
    assert_ne!(first.header("connection"), Some("close"));
    w.write_all(b"GET /api/second HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let second = read_response(&mut r).unwrap();
    assert_eq!((second.status, second.text().as_str()), (200, "api second\n"));

    // Pipelined: both requests in one write, answered in order.
    w.write_all(b"GET /api/p1 HTTP/1.1\r\nHost: localhost\r\n\r\nGET /api/p2 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut r).unwrap().text(), "api p1\n");
    assert_eq!(read_response(&mut r).unwrap().text(), "api p2\n");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "connection closes after `Connection: close`: {rest:?}");
}

#[test]
fn http_1_0_request() {
    let s = locations_server();
    let mut stream = s.connect();
    stream.write_all(b"GET /api/old HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    // HTTP/1.0 without keep-alive: the server closes after the response.
    stream.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1."), "{text}");
    assert!(text.contains(" 200 "), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding: chunked"),
        "no chunked to 1.0 clients: {text}"
    );
    assert!(text.ends_with("api old\n"), "{text}");
}

mod h2 {
    //! Just enough HTTP/2 framing and HPACK for a GET with prior knowledge.

    use std::io::{Read, Write};

    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const SETTINGS: u8 = 4;
    pub const GOAWAY: u8 = 7;
    pub const END_STREAM: u8 = 1;
    pub const END_HEADERS: u8 = 4;
    pub const ACK: u8 = 1;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn literal(index: u8, value: &str) -> Vec<u8> {
        // Literal header field without indexing, indexed name, no Huffman.
        assert!(value.len() < 127);
        let mut v = vec![index, value.len() as u8];
        v.extend_from_slice(value.as_bytes());
        v
    }

    /// HEADERS for `GET path` on `stream`, ending the stream.
    pub fn get(stream: u32, path: &str) -> Vec<u8> {
        let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
        block.extend(literal(4, path)); // :path
        block.extend(literal(1, "localhost")); // :authority
        frame(HEADERS, END_STREAM | END_HEADERS, stream, &block)
    }

    pub fn read_frame(r: &mut impl Read) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
        let mut head = [0u8; 9];
        r.read_exact(&mut head)?;
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        r.read_exact(&mut payload)?;
        Ok((head[3], head[4], stream, payload))
    }

    pub fn write(w: &mut impl Write, bytes: &[u8]) {
        w.write_all(bytes).expect("write h2 frame");
    }
}

#[test]
fn h2c_prior_knowledge_multiplexes_two_streams() {
    let s = Server::start(&route(
        "h2",
        r#"  locations:
  - path: /
    content: |
      ngx.sleep(0.05)
      ngx.say("h2 ", ngx.var.uri, " ", ngx.var.server_protocol)
"#,
    ));
    let mut conn = s.connect();
    h2::write(&mut conn, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    h2::write(&mut conn, &h2::frame(h2::SETTINGS, 0, 0, &[]));
    h2::write(&mut conn, &h2::get(1, "/one"));
    h2::write(&mut conn, &h2::get(3, "/two"));
    let mut status_first_byte = std::collections::HashMap::new();
    let mut bodies: std::collections::HashMap<u32, Vec<u8>> = std::collections::HashMap::new();
    let mut ended = std::collections::HashSet::new();
    let mut reader = conn.try_clone().unwrap();
    while ended.len() < 2 {
        let (kind, flags, stream, payload) = h2::read_frame(&mut reader).expect("read h2 frame");
        match kind {
            h2::SETTINGS if flags & h2::ACK == 0 => h2::write(&mut conn, &h2::frame(h2::SETTINGS, h2::ACK, 0, &[])),
            h2::HEADERS => {
                status_first_byte.insert(stream, payload.first().copied());
            }
            h2::DATA => bodies.entry(stream).or_default().extend_from_slice(&payload),
            h2::GOAWAY => panic!("server sent GOAWAY: {payload:?}"),
            _ => {}
        }
        if (kind == h2::DATA || kind == h2::HEADERS) && flags & h2::END_STREAM != 0 {
            ended.insert(stream);
        }
    }
    // HPACK static table entry 8 is `:status: 200`.
    assert_eq!(status_first_byte.get(&1), Some(&Some(0x88)), "stream 1 status 200");
    assert_eq!(status_first_byte.get(&3), Some(&Some(0x88)), "stream 3 status 200");
    assert_eq!(String::from_utf8_lossy(&bodies[&1]), "h2 /one HTTP/2.0\n");
    assert_eq!(String::from_utf8_lossy(&bodies[&3]), "h2 /two HTTP/2.0\n");
}

#[test]
fn unmatched_uri_is_a_plain_404_that_runs_no_handler() {
    let s = Server::start(&route(
        "nomatch",
        r#"  locations:
  - path: /a
    content: ngx.say("a")
    headerFilter: ngx.header["X-Filtered"] = "by /a"
    bodyFilter: ngx.arg[1] = string.upper(ngx.arg[1])
    log: ngx.log(ngx.ERR, "log of /a ran for ", ngx.var.uri)
"#,
    ));
    let r = s.get("/zzz");
    assert_eq!(r.status, 404);
    assert!(
        r.text().contains("<title>404 Not Found</title>"),
        "no body filter on a 404 page: {}",
        r.text()
    );
    assert_eq!(r.header("x-filtered"), None);
    assert_eq!(s.get("/a").text(), "A\n");
    s.wait_log("log of /a ran for /a", std::time::Duration::from_secs(10))
        .expect("log phase of /a ran");
    assert!(
        !s.logs().contains("log of /a ran for /zzz"),
        "/a's log handler ran for an unmatched URI:\n{}",
        s.logs()
    );
}

#[test]
fn empty_config_answers_404() {
    // An empty file is a valid config with no routes.
    let s = Server::start("");
    let r = s.raw_bytes(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let text = String::from_utf8_lossy(&r);
    assert!(text.starts_with("HTTP/1.1 404 "), "got {text:?}; logs:\n{}", s.logs());
    assert!(!s.logs().contains("panicked"), "{}", s.logs());
}
