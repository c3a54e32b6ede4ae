//! Cosockets through the real binary: `ngx.socket.tcp`/`udp` against real
//! servers on loopback (redis-server and memcached from Debian, and raw
//! servers of the test's own), with lua-resty-redis and lua-resty-memcached
//! from Debian's packages, unmodified; TLS to a test upstream (`common::upstream`); and the
//! egress policy around them.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use common::daemon::Daemon;
use common::upstream::Upstream;
use common::{IO_TIMEOUT, Server, module, route};

/// A Debian-packaged Lua library's source.
fn debian_lua(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e} (scripts/test.sh installs the package)"))
}

fn serve(spec: &str) -> Server {
    Server::builder(&route("c", spec)).loopback_egress().start()
}

fn body(srv: &Server, path: &str) -> String {
    let r = srv.get(path);
    assert_eq!(r.status, 200, "{path}: {}\n{}", r.text(), srv.logs());
    r.text()
}

#[test]
fn lua_resty_redis_runs_unmodified_against_redis_server() {
    let redis = Daemon::redis();
    let lib = module("resty.redis", &debian_lua("/usr/share/lua/5.1/nginx/redis.lua"));
    let handler = format!(
        r#"local redis = require "resty.redis"
local red = redis:new()
red:set_timeouts(1000, 1000, 1000)
local ok, err = red:connect("127.0.0.1", {port})
if not ok then ngx.say("connect: ", err) return end
ngx.say("reused ", red:get_reused_times())
assert(red:set("dog", "an animal"))
ngx.say("dog: ", red:get("dog"))
ngx.say("nokey null: ", red:get("nokey") == ngx.null)
red:init_pipeline()
red:incr("n")
red:incr("n")
red:lpush("l", "a", "b")
local results = red:commit_pipeline()
ngx.say("pipeline: ", table.concat(results, ","))
local bad, err = red:incr("dog")
ngx.say("incr dog: ", tostring(bad), " ", err)
assert(red:set_keepalive(10000, 10))"#,
        port = redis.addr().port()
    );
    let doc = |name: &str| {
        route(
            name,
            &format!(
                "  modules:\n{lib}{}",
                content(&handler).replace("path: /", &format!("path: /{name}"))
            ),
        )
    };
    let srv = Server::builder(&format!("{}---\n{}", doc("a"), doc("b")))
        .loopback_egress()
        .start();
    assert_eq!(
        body(&srv, "/a"),
        "reused 0\ndog: an animal\nnokey null: true\npipeline: 1,2,2\nincr dog: false ERR value is not an integer or out of range\n"
    );
    // The pooled connection serves the route's next request…
    let again = body(&srv, "/a");
    assert!(
        again.starts_with("reused 1\n") && again.contains("pipeline: 3,4,4\n"),
        "{again}"
    );
    // …and never another route's, though it is idle in the same worker.
    let other = body(&srv, "/b");
    assert!(other.starts_with("reused 0\n"), "{other}");
}

#[test]
fn lua_resty_memcached_runs_unmodified_against_memcached() {
    let memcached = Daemon::memcached();
    let lib = debian_lua("/usr/share/lua/5.1/nginx/memcached.lua");
    let srv = serve(&format!(
        "  modules:\n{}  locations:\n    - path: /\n      content: |\n        local memcached = require \"resty.memcached\"\n        local memc = memcached:new()\n        memc:set_timeout(1000)\n        assert(memc:connect(\"127.0.0.1\", {port}))\n        assert(memc:set(\"dog\", 32))\n        local v, flags = memc:get(\"dog\")\n        ngx.say(\"dog: \", v, \" flags \", flags)\n        ngx.say(\"missing: \", tostring((memc:get(\"cat\"))))\n        local ok, err = memc:add(\"dog\", 1)\n        ngx.say(\"add again: \", tostring(ok), \" \", err)\n        ngx.say(\"incr: \", memc:incr(\"dog\", 10))\n        memc:set_keepalive(10000, 10)\n",
        module("resty.memcached", &lib),
        port = memcached.addr().port()
    ));
    assert_eq!(
        body(&srv, "/"),
        "dog: 32 flags 0\nmissing: nil\nadd again: nil NOT_STORED\nincr: 42\n"
    );
}

/// A server for one connection: writes `script`, half-closes when `close`
/// (the client then sees the end of the stream), and returns everything the
/// client sent until it closed.
fn scripted(script: &'static [u8], close: bool) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let thread = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        conn.write_all(script).unwrap();
        if close {
            conn.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let mut data = Vec::new();
        let _ = conn.read_to_end(&mut data);
        data
    });
    (port, thread)
}

fn content(lua: &str) -> String {
    let mut out = String::from("  locations:\n    - path: /\n      content: |\n");
    for line in lua.lines() {
        out.push_str("        ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[test]
fn receive_patterns_behave_as_lua_nginx_module_documents() {
    let (port, server) = scripted(
        b"line one\r\nline\r two\nABCDEhello, world! -agentzh\r\n--abcedhb tail",
        true,
    );
    let srv = serve(&content(&format!(
        r#"local sock = ngx.socket.tcp()
sock:settimeout(5000)
assert(sock:connect("127.0.0.1", {port}))
ngx.say("sent ", sock:send({{"GET", " ", {{"/", 1}}, "\r\n"}}))
ngx.say("[", sock:receive(), "]")
ngx.say("[", sock:receive("*l"), "]")
ngx.say("[", sock:receive(5), "]")
ngx.say("[", sock:receive(0), "]")
local reader = sock:receiveuntil("\r\n--abcedhb")
while true do
  local data, err = reader(4)
  if not data then ngx.say("done ", tostring(err)) break end
  ngx.say("chunk [", data, "]")
end
ngx.say("any [", sock:receiveany(3), "]")
local data, err, partial = sock:receive(100)
ngx.say("short: ", tostring(data), " ", err, " [", partial, "]")
ngx.say("after close: ", select(2, sock:receive()))
ngx.say("close: ", tostring(sock:close()))
ngx.say("close again: ", select(2, sock:close()))
local ok, err = pcall(sock.receive, sock, "*x")
ngx.say(err)"#
    )));
    assert_eq!(
        body(&srv, "/"),
        "sent 8\n[line one]\n[line two]\n[ABCDE]\n[]\nchunk [hell]\nchunk [o, w]\nchunk [orld]\nchunk [! -a]\nchunk [gent]\nchunk [zh]\ndone nil\nany [ ta]\nshort: nil closed [il]\nafter close: closed\nclose: 1\nclose again: closed\nbad argument #2 to 'receive' (bad pattern argument)\n"
    );
    assert_eq!(server.join().unwrap(), b"GET /1\r\n");
}

#[test]
fn a_read_timeout_returns_the_partial_and_keeps_the_connection() {
    // The server sends "ab", then the rest only once asked: the first read
    // can only end by its timeout.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        conn.write_all(b"ab").unwrap();
        let mut line = String::new();
        BufReader::new(conn.try_clone().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line, "more\n");
        conn.write_all(b"cd\n").unwrap();
    });
    let srv = serve(&content(&format!(
        r#"local sock = ngx.socket.tcp()
assert(sock:connect("127.0.0.1", {port}))
sock:settimeouts(5000, 5000, 50)
local data, err, partial = sock:receive()
ngx.say(tostring(data), " ", err, " [", partial, "]")
assert(sock:send("more\n"))
sock:settimeout(5000)
ngx.say("then [", sock:receive(), "]")"#
    )));
    assert_eq!(body(&srv, "/"), "nil timeout [ab]\nthen [cd]\n");
    server.join().unwrap();
}

#[test]
fn the_egress_policy_refuses_what_the_operator_did_not_allow() {
    let (port, _server) = scripted(b"", true);
    let srv = Server::start(&route(
        "c",
        &content(&format!(
            r#"local function try(...)
  local sock = ngx.socket.tcp()
  sock:settimeout(2000)
  local ok, err = sock:connect(...)
  ngx.say(tostring(ok), " ", err)
end
try("127.0.0.1", {port})
try("localhost", {port})
try("169.254.169.254", 80)
try("unix:/var/run/docker.sock")
local u = ngx.socket.udp()
ngx.say(select(2, u:setpeername("127.0.0.1", 53)))"#
        )),
    ));
    let out = body(&srv, "/");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        lines[0].starts_with(&format!("nil egress to 127.0.0.1:{port} refused: loopback address")),
        "{out}"
    );
    // Checked after resolution: the name does not get around the rule.
    assert!(
        lines[1].starts_with("nil egress to ") && lines[1].contains("loopback"),
        "{out}"
    );
    assert!(lines[2].contains("cloud metadata"), "{out}");
    assert!(lines[3].contains("unix sockets are not allowed"), "{out}");
    assert!(lines[4].contains("refused: loopback"), "{out}");
    srv.wait_log("cosocket connect to 127.0.0.1", IO_TIMEOUT)
        .expect("refusal logged");
}

#[test]
fn the_gateway_itself_is_refused_even_when_loopback_is_allowed() {
    let srv = serve(&content(
        r#"local sock = ngx.socket.tcp()
local ok, err = sock:connect("127.0.0.1", tonumber(ngx.var.server_port))
ngx.say(tostring(ok), " ", err)"#,
    ));
    let out = body(&srv, "/");
    assert!(out.contains("own socket") && out.starts_with("nil "), "{out}");
}

#[test]
fn cosockets_are_refused_where_nginx_refuses_them() {
    let srv = serve(
        "  locations:\n    - path: /\n      content: ngx.say('ok')\n      headerFilter: |\n        local ok, err = pcall(ngx.socket.tcp)\n        ngx.header['X-Hf'] = err\n      log: |\n        local ok, err = pcall(ngx.socket.tcp)\n        ngx.log(ngx.ERR, 'LOG PHASE ', err)\n",
    );
    let r = srv.get("/");
    assert_eq!(r.status, 200);
    assert!(
        r.header("x-hf")
            .is_some_and(|h| h.starts_with("API disabled in the context of header_filter_by_lua*")),
        "{:?}",
        r.headers
    );
    let line = srv.wait_log("LOG PHASE", IO_TIMEOUT).unwrap();
    assert!(line.contains("API disabled in the context of log_by_lua*"), "{line}");
}

#[test]
fn the_request_body_reads_as_a_socket() {
    let srv = serve(&content(
        r#"local sock, err = ngx.req.socket()
if not sock then ngx.say("no socket: ", err) return end
sock:settimeout(5000)
ngx.say("line [", sock:receive(), "]")
local reader = sock:receiveuntil("--b", {inclusive = true})
ngx.say("part [", reader(), "]")
ngx.say("two [", sock:receive(2), "]")
local data, err, partial = sock:receive(100)
ngx.say(tostring(data), " ", err, " [", partial, "]")
ngx.say("again: ", select(2, ngx.req.socket()))"#,
    ));
    let r = srv
        .try_raw(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 21\r\nConnection: close\r\n\r\nfirst\r\nhello--bXYtail",
        )
        .unwrap();
    assert_eq!(
        r.text(),
        "line [first]\npart [hello--b]\ntwo [XY]\nnil closed [tail]\nagain: request body already exists\n"
    );
    let r = srv.get("/");
    assert_eq!(r.text(), "no socket: no body\n");
}

#[test]
fn cosockets_work_in_timer_callbacks() {
    let (port, server) = scripted(b"from timer\n", false);
    let srv = serve(&format!(
        "  sharedDicts: [{{name: d, capacity: 1m}}]\n  locations:\n    - path: /start\n      content: |\n        assert(ngx.timer.at(0, function()\n          local sock = ngx.socket.tcp()\n          sock:settimeout(5000)\n          assert(sock:connect(\"127.0.0.1\", {port}))\n          assert(sock:send(\"hi\\n\"))\n          ngx.shared.d:set(\"got\", sock:receive())\n          sock:close()\n        end))\n        ngx.say(\"started\")\n    - path: /got\n      content: ngx.say(ngx.shared.d:get(\"got\"))\n"
    ));
    assert_eq!(body(&srv, "/start"), "started\n");
    let got = common::wait_for(IO_TIMEOUT, || {
        let text = body(&srv, "/got");
        (text != "nil\n").then_some(text)
    });
    assert_eq!(got.as_deref(), Some("from timer\n"), "{}", srv.logs());
    assert_eq!(server.join().unwrap(), b"hi\n");
}

/// The `backlog` connect option: a pool opens at most `pool_size`
/// connections; further connects queue (at most `backlog` of them), get the
/// next pooled connection or freed slot, or time out at the connect timeout.
#[test]
fn a_pool_with_a_backlog_queues_refuses_and_times_out_connects() {
    let memcached = Daemon::memcached();
    let srv = serve(&content(&format!(
        r#"local opts = {{pool_size = 1, backlog = 1}}
local first = assert(ngx.socket.connect("127.0.0.1", {port}, opts))
local queued = ngx.thread.spawn(function()
  local sock, err = ngx.socket.connect("127.0.0.1", {port}, opts)
  if not sock then return "queued: " .. err end
  local reused = sock:getreusedtimes()
  sock:close()
  return "queued got the pooled connection, reused " .. reused
end)
local refused, err = ngx.socket.connect("127.0.0.1", {port}, opts)
ngx.say("third: ", tostring(refused), " ", err)
assert(first:setkeepalive())
ngx.say(select(2, ngx.thread.wait(queued)))
-- The queued one closed its connection: the slot is free again.
local again = assert(ngx.socket.connect("127.0.0.1", {port}, opts))
ngx.say("after close: reused ", again:getreusedtimes())
local late = ngx.socket.tcp()
late:settimeouts(20, 1000, 1000)
ngx.say("while held: ", select(2, late:connect("127.0.0.1", {port}, opts)))
again:close()
local bad = pcall(ngx.socket.connect, "127.0.0.1", {port}, {{backlog = -1}})
ngx.say("negative backlog raises: ", not bad)"#,
        port = memcached.addr().port()
    )));
    assert_eq!(
        body(&srv, "/"),
        "third: nil too many waiting connect operations\n\
         queued got the pooled connection, reused 1\n\
         after close: reused 0\n\
         while held: timeout\n\
         negative backlog raises: true\n"
    );
}

/// `ngx.socket.udp` against memcached's UDP protocol (an 8-byte frame
/// header, then the command): the first datagram on a fresh socket goes out
/// at once, and the answer carries the request id back.
#[test]
fn udp_talks_to_memcached_and_reports_bad_peers() {
    let memcached = Daemon::memcached();
    let srv = serve(&content(&format!(
        r#"local udp = ngx.socket.udp()
udp:settimeout(2000)
assert(udp:setpeername("127.0.0.1", "{port}"))
assert(udp:send("\0\7\0\0\0\1\0\0version\r\n"))
local data = assert(udp:receive())
ngx.say("id ", data:byte(2), " seq ", data:byte(4), " total ", data:byte(6), " ", data:sub(9, 16))
ngx.say("close: ", udp:close())
ngx.say("send closed: ", select(2, udp:send("x")))
ngx.say("bad port: ", select(2, ngx.socket.udp():setpeername("127.0.0.1", 65536)))"#,
        port = memcached.addr().port()
    )));
    assert_eq!(
        body(&srv, "/"),
        "id 7 seq 0 total 1 VERSION \nclose: 1\nsend closed: closed\nbad port: bad port number: 65536\n"
    );
}

/// lua-resty-websocket (Debian's lua-nginx-websocket, unmodified) on both
/// ends: its server on the raw request socket (`ngx.req.socket(true)` after
/// the 101), its client on a cosocket to the gateway's own port, with the
/// frame protocol from Moongate's built-in.
#[test]
fn lua_resty_websocket_server_and_client_run_unmodified() {
    let dir = "/usr/share/lua/5.1/nginx/websocket";
    let modules = format!(
        "{}{}",
        module("nginx.websocket.server", &debian_lua(&format!("{dir}/server.lua"))),
        module("nginx.websocket.client", &debian_lua(&format!("{dir}/client.lua")))
    );
    let server = r#"local server = require "nginx.websocket.server"
local wb, err = server:new{timeout = 5000, max_payload_len = 65535}
if not wb then
  ngx.log(ngx.ERR, "failed to new websocket: ", err)
  return ngx.exit(444)
end
while true do
  local data, typ, err = wb:recv_frame()
  if not data then
    ngx.log(ngx.ERR, "failed to receive a frame: ", err)
    return ngx.exit(444)
  end
  if typ == "close" then
    wb:send_close(1000, "bye " .. tostring(err))
    return
  elseif typ == "ping" then
    wb:send_pong(data)
  elseif typ == "text" then
    wb:send_text("echo: " .. data)
  end
end"#;
    let client = r#"local client = require "nginx.websocket.client"
local wb = client:new{timeout = 5000}
local ok, err = wb:connect("ws://127.0.0.1:" .. ngx.var.server_port .. "/ws")
if not ok then ngx.say("connect: ", err) return end
assert(wb:send_text(string.rep("x", 200)))
local data, typ = wb:recv_frame()
ngx.say(typ, " ", #data, " ", data:sub(1, 8))
assert(wb:send_ping("are you there"))
data, typ = wb:recv_frame()
ngx.say(typ, " ", data)
assert(wb:send_close(1000, "done"))
local msg, typ, code = wb:recv_frame()
ngx.say(typ, " ", code, " ", msg)
ngx.say("raw socket without an upgrade: ", select(2, ngx.req.socket(true)))"#;
    let mut spec = format!("  modules:\n{modules}  locations:\n");
    for (path, lua) in [("/ws", server), ("/client", client)] {
        spec.push_str(&format!("    - path: {path}\n      content: |\n"));
        for line in lua.lines() {
            spec.push_str(&format!("        {line}\n"));
        }
    }
    let srv = Server::builder(&route("c", &spec))
        .arg("--egress-allow")
        .arg("127.0.0.1/32")
        .arg("--egress-allow-self")
        .start();
    assert_eq!(
        body(&srv, "/client"),
        "text 206 echo: xx\npong are you there\nclose 1000 bye 1000\n\
         raw socket without an upgrade: raw request socket needs a request asking for an Upgrade\n"
    );
}

/// `--cosocket-max-open`: a tenant's open connections (in use, pooled or
/// UDP) are capped, so one tenant cannot take the worker's descriptors.
#[test]
fn a_tenant_holds_at_most_max_open_cosockets() {
    let memcached = Daemon::memcached();
    let spec = content(&format!(
        r#"local a = assert(ngx.socket.connect("127.0.0.1", {port}))
local udp = ngx.socket.udp()
assert(udp:setpeername("127.0.0.1", {port}))
ngx.say("third: ", select(2, ngx.socket.connect("127.0.0.1", {port})))
ngx.say("udp: ", select(2, ngx.socket.udp():setpeername("127.0.0.1", {port})))
assert(a:setkeepalive())
ngx.say("while pooled: ", select(2, ngx.socket.connect("127.0.0.1", {port}, {{pool = "other"}})))
udp:close()
local b = assert(ngx.socket.connect("127.0.0.1", {port}, {{pool = "other"}}))
ngx.say("after close: ", b:getreusedtimes())
b:close()"#,
        port = memcached.addr().port()
    ));
    let srv = Server::builder(&route("c", &spec))
        .arg("--egress-allow")
        .arg("127.0.0.1/32")
        .arg("--cosocket-max-open")
        .arg("2")
        .start();
    let refused = "too many open sockets: this tenant holds 2 (the operator's limit, --cosocket-max-open)";
    assert_eq!(
        body(&srv, "/"),
        format!("third: {refused}\nudp: {refused}\nwhile pooled: {refused}\nafter close: 0\n")
    );
}

/// A pooled TLS connection comes back TLS: `sslhandshake` on it returns at once, as
/// lua-nginx-module's does for a handshaked connection (lua-resty-http calls it after
/// every `connect`); a fresh connection to a certificate no trusted CA signed fails
/// verification with a reason.
#[test]
fn sslhandshake_on_a_reused_tls_connection_returns_at_once() {
    let upstream = Upstream::tls("tls");
    let srv = serve(&content(&format!(
        r#"local function fetch(verify)
  local sock = ngx.socket.tcp()
  sock:settimeout(5000)
  assert(sock:connect("127.0.0.1", {port}))
  local reused = sock:getreusedtimes()
  local ok, err = sock:sslhandshake(nil, "127.0.0.1", verify)
  if not ok then
    ngx.say(reused, " handshake: ", err)
    return
  end
  assert(sock:send("GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
  local status = sock:receive("*l")
  local length
  repeat
    local line = sock:receive("*l")
    length = length or tonumber(line:lower():match("^content%-length:%s*(%d+)"))
  until line == ""
  assert(sock:receive(length))
  ngx.say(reused, " ", status, " again: ", tostring(sock:sslhandshake(nil, "127.0.0.1", false)))
  assert(sock:setkeepalive())
end
fetch(true)
fetch(false)
fetch(true)"#,
        port = upstream.port()
    )));
    let out = body(&srv, "/");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("0 handshake: certificate verify failed"), "{out}");
    assert_eq!(lines[1], "0 HTTP/1.1 200 OK again: true");
    assert_eq!(lines[2], "1 HTTP/1.1 200 OK again: true");
    // The failed handshake's connection and the one that served both requests.
    assert_eq!(upstream.connections(), 2);
    assert_eq!(upstream.requests(), 2);
}
