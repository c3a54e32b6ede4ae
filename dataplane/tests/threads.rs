//! Light threads (`ngx.thread.spawn`, `wait`, `kill`) through the real
//! binary, with lua-nginx-module's scheduling: a spawned thread runs first
//! until it yields, threads waiting on I/O let the others run, the handler
//! ends when all have ended, and `ngx.exit` or an entry-thread error ends it
//! at once.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::{IO_TIMEOUT, Server, route};

fn serve(lua: &str) -> Server {
    let mut spec = String::from("  locations:\n    - path: /\n      content: |\n");
    for line in lua.lines() {
        spec.push_str("        ");
        spec.push_str(line);
        spec.push('\n');
    }
    Server::builder(&route("t", &spec))
        .arg("--egress-allow")
        .arg("127.0.0.1/32")
        .start()
}

fn body(srv: &Server) -> String {
    let r = srv.get("/");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), srv.logs());
    r.text()
}

#[test]
fn a_spawned_thread_runs_first_and_the_handler_waits_for_it() {
    let srv = serve(
        r#"ngx.say("before")
local t = ngx.thread.spawn(function(a, b)
  ngx.say("in thread ", a + b)
  ngx.sleep(0.001)
  ngx.say("thread again")
  return "r1", "r2"
end, 1, 2)
ngx.say("after spawn: ", coroutine.status(t))
local ok, r1, r2 = ngx.thread.wait(t)
ngx.say("waited: ", tostring(ok), " ", r1, " ", r2, " ", coroutine.status(t))
ngx.thread.spawn(function() ngx.sleep(0.001) ngx.say("orphan done") end)
ngx.say("entry returns")"#,
    );
    assert_eq!(
        body(&srv),
        "before\nin thread 3\nafter spawn: running\nthread again\nwaited: true r1 r2 dead\nentry returns\norphan done\n"
    );
}

#[test]
fn threads_waiting_on_sockets_run_concurrently() {
    // The server answers each of two connections only once both are open:
    // if the threads ran one after the other, the first receive would wait
    // for a connection that never comes and time out.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut a, _) = listener.accept().unwrap();
        let (mut b, _) = listener.accept().unwrap();
        a.write_all(b"one\n").unwrap();
        b.write_all(b"two\n").unwrap();
        for mut c in [a, b] {
            c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let _ = c.read_to_end(&mut Vec::new());
        }
    });
    let srv = serve(&format!(
        r#"local function fetch()
  local sock = ngx.socket.tcp()
  sock:settimeout(20000)
  assert(sock:connect("127.0.0.1", {port}))
  local line, err = sock:receive()
  sock:close()
  return line or err
end
local a = ngx.thread.spawn(fetch)
local b = ngx.thread.spawn(fetch)
local _, x = ngx.thread.wait(a)
local _, y = ngx.thread.wait(b)
local got = {{x, y}}
table.sort(got)
ngx.say(table.concat(got, " "))"#
    ));
    assert_eq!(body(&srv), "one two\n");
    server.join().unwrap();
}

#[test]
fn wait_and_kill_report_errors_as_documented() {
    let srv = serve(
        r#"local bad = ngx.thread.spawn(function() error("bad thing") end)
ngx.say("bad: ", coroutine.status(bad))
ngx.say("wait bad: ", table.concat({tostring(select(1, ngx.thread.wait(bad))), select(2, ngx.thread.wait(bad)) or "?"}, " "))
local sleeper = ngx.thread.spawn(function() ngx.sleep(1000) ngx.say("never") end)
ngx.say("kill: ", ngx.thread.kill(sleeper))
ngx.say("kill again: ", select(2, ngx.thread.kill(sleeper)))
local done = ngx.thread.spawn(function() return 1 end)
ngx.say("kill ended: ", select(2, ngx.thread.kill(done)))
local ok, err = pcall(ngx.thread.wait, coroutine.create(function() end))
ngx.say("foreign: ", err)"#,
    );
    let out = body(&srv);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "bad: zombie", "{out}");
    // The first wait reaps it (false, the message without its position);
    // the second finds it already waited for.
    assert_eq!(lines[1], "wait bad: false already waited or killed", "{out}");
    assert_eq!(lines[2], "kill: 1", "{out}");
    assert_eq!(lines[3], "kill again: already waited or killed", "{out}");
    assert_eq!(lines[4], "kill ended: already terminated", "{out}");
    assert!(
        lines[5].ends_with("only the parent coroutine can wait on the thread"),
        "{out}"
    );
    assert!(!out.contains("never"));
    srv.wait_log("lua user thread aborted", IO_TIMEOUT)
        .expect("the thread error is logged");
}

#[test]
fn the_error_a_thread_dies_of_reaches_wait_without_its_position() {
    let srv = serve(
        r#"local t = ngx.thread.spawn(function() ngx.sleep(0.001) error("f done") end)
local ok, err = ngx.thread.wait(t)
ngx.say(tostring(ok), " [", err, "]")"#,
    );
    assert_eq!(body(&srv), "false [f done]\n");
}

#[test]
fn ngx_exit_in_a_thread_ends_the_request_and_every_thread() {
    // The other thread sleeps far past the client's timeout: the response
    // arrives only because the exit killed it.
    let srv = serve(
        r#"ngx.thread.spawn(function() ngx.sleep(100000) ngx.say("never") end)
ngx.thread.spawn(function()
  ngx.say("exiting")
  ngx.exit(ngx.HTTP_OK)
end)
ngx.sleep(100000)"#,
    );
    assert_eq!(body(&srv), "exiting\n");
}

#[test]
fn an_entry_thread_error_ends_the_request_with_500() {
    let srv = serve(
        r#"ngx.thread.spawn(function() ngx.sleep(100000) end)
error("entry failed")"#,
    );
    assert_eq!(srv.get("/").status, 500);
    srv.wait_log("entry failed", IO_TIMEOUT).unwrap();
}
