//! The request lifecycle, as lua-nginx-module runs it:
//! location match → rewrite → access → content → header_filter → body_filter → log.
//!
//! Rewrite, access and content handlers run as coroutines ("entry threads").
//! When a handler yields to us (`ngx.sleep`, `ngx.flush`, `ngx.req.read_body`,
//! `ngx.exit`, …) we do the I/O on tokio and resume it; `ngx.exit`/`ngx.exec`
//! abandon the coroutine at once. The filters and the log handler run as plain
//! calls, where nginx forbids yielding too. Each phase's own rules live in its
//! module, handing the response to the connection in `send`; this file drives them.

mod access;
mod body_filter;
mod content;
mod log;
mod proxy;
mod req_socket;
mod rewrite;
mod send;
mod subrequest;
mod threads;
mod upgrade;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mlua::thread::ThreadStatus;
use mlua::{Function, MultiValue, Value};
use tokio::sync::mpsc;

use crate::config::{self, LocationRef, Phase, ServerId};
use crate::context::{Current, call_plain};
use crate::lua::api;
use crate::lua::budget::{self, Account, Running};
use crate::lua::vm::LoadedConfig;
use crate::request::{self, Body, Exit, RequestState, SharedRequest};
use crate::response::body::{Piece, ResponseBody};
use crate::worker::Worker;
use threads::{LightThreads, Verdict};

/// nginx allows 10 internal redirects before "rewrite or internal redirection cycle".
const MAX_REDIRECTS: u8 = 10;

pub type Response = http::Response<ResponseBody>;

/// Where the connection came from and arrived.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// How a rewrite/access/content handler ended.
enum HandlerEnd {
    /// Returned normally.
    Done,
    /// `ngx.exit`, `ngx.exec`, `ngx.redirect`, `ngx.req.set_uri(…, true)`.
    Exit(Exit),
    /// A Lua error (already logged).
    Error,
    /// The driver must end the request with this status (e.g. 413 while reading the body).
    Abort(u16),
}

/// What the request does after a phase.
enum Flow {
    Next,
    /// Internal redirect: match locations again.
    Redirect,
    Finish(Finish),
}

/// How the response ends.
enum Finish {
    /// Send what the handlers produced.
    Output,
    /// nginx's special response for this status (headers kept, body replaced).
    Status(u16),
    /// Close the connection without a response (444).
    Close,
    /// Break off a response already started (an upstream failed mid-body):
    /// the client must not take a truncated body for a complete one.
    Abort,
}

pub struct Lifecycle {
    worker: Rc<Worker>,
    loaded: Rc<LoadedConfig>,
    req: SharedRequest,
    body_stream: Option<Incoming>,
    /// Where the head goes; `None` for a subrequest, whose response is captured.
    head: Option<HeadSlot>,
    /// The response head has not been handed to the connection yet.
    head_pending: bool,
    stream_tx: Option<mpsc::Sender<Piece>>,
    /// Trailers to end a streamed body with (a proxied gRPC response's).
    trailers: Option<http::HeaderMap>,
    /// Set for a subrequest: the response is captured here instead of sent.
    captured: Option<subrequest::Captured>,
    /// The client connection's switch to another protocol, for a request
    /// that asks for one (`Upgrade: websocket`).
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The client's body stream went to an upstream try: no other try can
    /// send it again.
    body_streamed: bool,
    /// `ngx.req.socket()`'s read-ahead.
    req_sock: req_socket::ReqSocket,
    /// `ngx.req.socket(true)`: closed when the request ends, not when the
    /// collector gets to it.
    raw_socket: Option<crate::lua::api::socket::tcp::TcpSocket>,
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        if let Some(sock) = self.raw_socket.take() {
            sock.close();
        }
    }
}

/// Where a lifecycle puts its response head for the connection to send.
/// Invariant: the connection polls the lifecycle and takes the head right
/// after each poll; the lifecycle puts it there at most once.
pub type HeadSlot = Rc<std::cell::Cell<Option<Response>>>;

/// Serves one request. The response head is put in `head` as soon as it is
/// known; the future then goes on to stream the body and run the log
/// phase. Finishing without a head means: close the connection.
pub async fn run(worker: Rc<Worker>, mut request: http::Request<Incoming>, conn: ConnInfo, head: HeadSlot) {
    crate::lua::api::time::update_cached_time();
    worker.sched.foreground(0);
    let loaded = worker.config();
    let upgrade = request
        .headers()
        .contains_key(http::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let request_uri = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .as_bytes()
        .to_vec();
    let uri = request::normalize_path(parts.uri.path().as_bytes());
    let mut state = RequestState::new(
        conn.remote,
        conn.local,
        parts.method,
        parts.version,
        request_uri,
        uri.clone().unwrap_or_default(),
        parts.uri.query().map(|q| q.as_bytes().to_vec()),
        parts.headers,
    );
    state.start_time = crate::lua::api::time::cached_now();
    let server = select_server(&loaded.config, &state, parts.uri.authority());
    if let Some(server) = server {
        state.server = server;
    }
    let mut lc = Lifecycle {
        worker,
        loaded,
        req: Rc::new(std::cell::RefCell::new(state)),
        body_stream: Some(body),
        head: Some(head),
        head_pending: true,
        stream_tx: None,
        trailers: None,
        captured: None,
        upgrade,
        body_streamed: false,
        req_sock: Default::default(),
        raw_socket: None,
    };
    let finish = if uri.is_none() || server.is_none() {
        Finish::Status(400)
    } else {
        lc.main().await
    };
    lc.finish(finish).await;
    let status = { (!lc.req.borrow().close).then(|| lc.req.borrow().effective_status()) };
    crate::metrics::response(status);
    log::run(&lc);
    if let Some(body) = lc.body_stream.take() {
        tokio::task::spawn_local(linger(body));
    }
}

/// nginx's lingering close: the unread body of a request answered early (a
/// 413, a handler that never read it) is read and dropped, for at most
/// `LINGERING_TIME` and while data keeps coming, so that closing the
/// connection with data still arriving does not reset it before the client
/// has read the response.
async fn linger(mut body: Incoming) {
    const LINGERING_TIME: Duration = Duration::from_secs(30);
    const LINGERING_TIMEOUT: Duration = Duration::from_secs(5);
    let deadline = tokio::time::Instant::now() + LINGERING_TIME;
    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(
        deadline.min(tokio::time::Instant::now() + LINGERING_TIMEOUT),
        body.frame(),
    )
    .await
    {}
}

impl Lifecycle {
    async fn main(&mut self) -> Finish {
        loop {
            let found = {
                let r = self.req.borrow();
                self.loaded.config.find_location(r.server, &r.uri)
            };
            let Some(at) = found else {
                return Finish::Status(404);
            };
            if let Some(status) = self.may_enter(at) {
                return Finish::Status(status);
            }
            if let Some(status) = self.enter_location(at) {
                return Finish::Status(status);
            }
            if self.loaded.config.location(at).need_request_body
                && let Err(status) = self.read_body().await
            {
                return Finish::Status(status);
            }
            let flow = match rewrite::run(self, at).await {
                Flow::Next => match access::run(self, at).await {
                    Flow::Next => content::run(self, at).await,
                    other => other,
                },
                other => other,
            };
            match flow {
                Flow::Next => return Finish::Output,
                Flow::Finish(f) => return f,
                Flow::Redirect => {
                    let mut r = self.req.borrow_mut();
                    r.redirects += 1;
                    if r.redirects > MAX_REDIRECTS {
                        tracing::error!(site = %r.site, "rewrite or internal redirection cycle");
                        return Finish::Status(500);
                    }
                }
            }
        }
    }

    /// Whether the request may enter `at`: a client only a location that is
    /// not `internal` (else 404, as nginx), and a subrequest or internal
    /// redirect only its caller's own route's locations or those that allow
    /// the caller (else 403).
    fn may_enter(&self, at: LocationRef) -> Option<u16> {
        let config = &self.loaded.config;
        let r = self.req.borrow();
        match r.caller {
            None if config.location(at).internal => Some(404),
            Some(caller) if !config.admits(caller, at) => {
                tracing::error!(
                    "{}: refused a subrequest or internal redirect from route {}: the location does not allow it (allowFrom)",
                    config.location(at).site,
                    config.routes[caller].id
                );
                Some(403)
            }
            _ => None,
        }
    }

    /// Points the request at a location; returns a status if it must stop here.
    fn enter_location(&mut self, at: LocationRef) -> Option<u16> {
        let config = &self.loaded.config;
        let loc = config.location(at);
        let max_body = self.max_body(at);
        let mut r = self.req.borrow_mut();
        r.location = at;
        r.hook = self.loaded.routes[at.route].vm.hook();
        r.site = loc.site.clone();
        r.vars = loc.vars.iter().map(|(n, v)| (n.clone(), Some(v.clone()))).collect();
        // A subrequest's `vars` option overrides or adds variables.
        for (name, value) in std::mem::take(&mut r.preset_vars) {
            if !r.set_var(&name, Some(value.clone())) {
                r.vars.push((name, Some(value)));
            }
        }
        r.captures = config.captures(at, &r.uri);
        r.header_filter = self.loaded.handler(at, Phase::HeaderFilter).cloned();
        r.default_type = loc.default_type.clone();
        r.output.keep_chunks = self.loaded.handler(at, Phase::BodyFilter).is_some();
        let too_large = r
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > max_body);
        if too_large && matches!(r.body, Body::Unread) {
            tracing::error!(site = %r.site, "client intended to send too large body");
            return Some(413);
        }
        None
    }

    /// The CPU account for a handler of the current location, reset for a
    /// new handler of a main request; a subrequest's handlers run on its
    /// parent's (the tree shares one budget).
    fn account(&self) -> Rc<Account> {
        let at = self.req.borrow().location;
        let route = &self.loaded.routes[at.route];
        let mut r = self.req.borrow_mut();
        match &r.account {
            Some(a) if r.subrequest_depth > 0 => a.clone(),
            Some(a) if *a.route() == route.key => {
                a.reset();
                a.clone()
            }
            _ => {
                let a = route.vm.account(&route.key, route.limits, route.limits);
                r.account = Some(a.clone());
                a
            }
        }
    }

    /// `client_max_body_size` of the route of location `at`.
    fn max_body(&self, at: LocationRef) -> u64 {
        self.loaded
            .routes
            .get(at.route)
            .map_or(self.worker.settings.max_body, |r| r.max_body)
    }

    /// Reads the whole request body into memory, bounded by the body limit.
    async fn read_body(&mut self) -> Result<(), u16> {
        if !matches!(self.req.borrow().body, Body::Unread) {
            return Ok(());
        }
        let max = self.max_body(self.req.borrow().location);
        let mut buf = BytesMut::new();
        // On 413 the rest stays in `body_stream`, to be drained (`linger`).
        if let Some(stream) = self.body_stream.as_mut() {
            while let Some(frame) = stream.frame().await {
                // The client went away or sent a malformed body.
                let frame = frame.map_err(|_| 400u16)?;
                if let Some(data) = frame.data_ref() {
                    if (buf.len() + data.len()) as u64 > max {
                        tracing::error!(site = %self.req.borrow().site, "client intended to send too large body");
                        return Err(413);
                    }
                    buf.extend_from_slice(data);
                }
            }
            self.body_stream = None;
        }
        self.req.borrow_mut().body = Body::Read(buf.freeze());
        Ok(())
    }

    /// Runs an entry-thread handler, and the light threads it spawns, to
    /// their end, serving their yields (`threads`). Past a slice of CPU the
    /// handler waits in the worker's background lane (`crate::sched`) before
    /// it goes on.
    async fn run_handler(&mut self, phase: Phase, f: &Function) -> HandlerEnd {
        let at = self.req.borrow().location;
        let route = &self.loaded.routes[at.route];
        let (vm, key) = (route.vm.clone(), route.key.clone());
        let sched = self.worker.sched.clone();
        let account = self.account();
        {
            let mut r = self.req.borrow_mut();
            r.phase = phase;
            r.exit = None;
        }
        let entry = match vm.thread(f) {
            Ok(t) => t,
            Err(e) => return self.lua_error(phase, &e),
        };
        // A route that was just aborted for CPU starts in the background.
        if sched.is_penalized(&key) {
            account.demote();
        }
        let lua = vm.lua();
        let mut lights = LightThreads::new(entry.clone());
        loop {
            let Some((id, args)) = lights.next_ready() else {
                if !lights.has_parked() {
                    // Every thread ended (or waits on one that never will).
                    vm.recycle(entry);
                    return HandlerEnd::Done;
                }
                let (id, answer) = lights.next_answer().await;
                api::time::update_cached_time();
                match answer(lua) {
                    Ok(values) => lights.answered(id, values),
                    Err(e) if id == threads::ENTRY => return self.lua_error(phase, &e),
                    Err(e) => self.user_thread_failed(&mut lights, phase, id, &e),
                }
                continue;
            };
            let thread = lights.co(id).clone();
            let slice = if account.demoted() {
                Some(sched.background(account.id()).await)
            } else {
                sched.foreground(account.id());
                None
            };
            let result = {
                let _current = Current::enter(&self.req);
                let _running = Running::enter(&account, vm.hook());
                thread.resume::<MultiValue>(args)
            };
            drop(slice);
            account.yielded();
            let values = match result {
                Ok(v) => v,
                Err(e) => {
                    if account.exceeded().is_some() {
                        sched.penalize(&key);
                        return self.lua_error(phase, &e);
                    }
                    if id == threads::ENTRY {
                        return self.lua_error(phase, &e);
                    }
                    self.user_thread_failed(&mut lights, phase, id, &e);
                    continue;
                }
            };
            if thread.status() != ThreadStatus::Resumable {
                if let Err(e) = lights.ended(lua, id, Ok(values)) {
                    return self.lua_error(phase, &e);
                }
                continue;
            }
            let preempted = values.is_empty() && budget::preempted(false);
            let mut values = values.into_iter();
            let first = values.next();
            let op = match first {
                Some(v) if vm.is_yield_marker(&v) => match values.next() {
                    Some(Value::Integer(op)) => op,
                    Some(Value::Number(op)) => op as i64,
                    _ => 0,
                },
                // A plain coroutine.yield(): the others run first.
                _ => 0,
            };
            let mut args = MultiValue::new();
            match op {
                _ if preempted => {
                    account.demote();
                    lights.resume_now(id, args);
                    continue;
                }
                api::OP_EXIT => {
                    let exit = self.req.borrow_mut().exit.take();
                    return HandlerEnd::Exit(exit.unwrap_or(Exit::Status(0)));
                }
                api::OP_SLEEP => {
                    let secs = match values.next() {
                        Some(Value::Integer(i)) => i as f64,
                        Some(Value::Number(n)) => n,
                        Some(Value::String(s)) => s.to_str().ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0.0),
                        _ => 0.0,
                    };
                    let nap = Duration::from_secs_f64(secs.clamp(0.0, 1e9));
                    lights.park(
                        id,
                        Box::pin(async move {
                            tokio::time::sleep(nap).await;
                            api::pending::answer(|_| Ok(MultiValue::from_vec(vec![Value::Integer(1)])))
                        }),
                    );
                    continue;
                }
                api::OP_AWAIT => {
                    match api::pending::take() {
                        Some(parked) => lights.park(id, parked),
                        None => lights.resume_now(id, args),
                    }
                    continue;
                }
                api::OP_SPAWN => {
                    let Some(Value::Thread(co)) = values.next() else {
                        return self.lua_error(phase, &mlua::Error::runtime("bad spawn request"));
                    };
                    lights.spawn(id, co, values.collect());
                    continue;
                }
                api::OP_WAIT | api::OP_KILL => {
                    let targets: Vec<Value> = values.collect();
                    let verdict = if op == api::OP_WAIT {
                        lights.wait(lua, id, &targets)
                    } else {
                        lights.kill(lua, id, targets.first().unwrap_or(&Value::Nil))
                    };
                    match verdict {
                        Ok(Verdict::Now(values)) => lights.resume_now(id, values),
                        Ok(Verdict::Later) => {}
                        Ok(Verdict::Raise(msg)) => {
                            // The prelude raises it in the caller.
                            let raise = vm.yield_marker().clone();
                            let msg = lua.create_string(msg).map(Value::String).unwrap_or(Value::Nil);
                            lights.resume_now(id, MultiValue::from_vec(vec![Value::Table(raise), msg]));
                        }
                        Err(e) => return self.lua_error(phase, &e),
                    }
                    continue;
                }
                api::OP_FLUSH => {
                    self.flush(false).await;
                    args.push_back(Value::Integer(1));
                }
                api::OP_EOF => {
                    self.flush(true).await;
                    args.push_back(Value::Integer(1));
                }
                api::OP_CAPTURE => {
                    let list = match values.next() {
                        Some(Value::Table(t)) => t,
                        _ => return self.lua_error(phase, &mlua::Error::runtime("bad capture request")),
                    };
                    match self.capture(lua, list).await {
                        Ok(results) => args = results,
                        Err(e) => {
                            // The prelude raises it inside the handler, as nginx does.
                            let msg = match lua.create_string(crate::lua::error_message(&e)) {
                                Ok(s) => s,
                                Err(e) => return self.lua_error(phase, &e),
                            };
                            args.push_back(Value::Boolean(false));
                            args.push_back(Value::String(msg));
                        }
                    }
                    if account.exceeded().is_some() {
                        // The subrequests spent the budget: the handler ends
                        // with the error when it is resumed.
                        sched.penalize(&key);
                    }
                }
                api::OP_DURABLE_SYNC => args = api::durable::wait(lua, values.next()).await,
                api::OP_REQ_SOCKET => match self.req_socket(lua, values).await {
                    Ok(values) => args = values,
                    Err(e) if id == threads::ENTRY => return self.lua_error(phase, &e),
                    Err(e) => {
                        self.user_thread_failed(&mut lights, phase, id, &e);
                        continue;
                    }
                },
                api::OP_READ_BODY => {
                    if let Err(status) = self.read_body().await {
                        return HandlerEnd::Abort(status);
                    }
                }
                _ => {
                    tokio::task::yield_now().await;
                    lights.resume_later(id);
                    continue;
                }
            }
            lights.resume_now(id, args);
        }
    }

    /// A user light thread died of a Lua error: logged as nginx logs it; the
    /// other threads go on, and its parent's `wait` gets `false, err`.
    fn user_thread_failed(&self, lights: &mut LightThreads, phase: Phase, id: threads::Id, e: &mlua::Error) {
        let msg = crate::lua::error_summary(e);
        crate::metrics::lua_error(phase);
        // `wait` gets the message as lua-nginx-module hands it over: without
        // the "chunk:line: " position `error()` put in front.
        let bare = match msg.split_once(": ") {
            Some((at, rest)) if at.rsplit_once(':').is_some_and(|(_, line)| line.parse::<u32>().is_ok()) => rest,
            _ => &msg,
        }
        .to_string();
        tracing::error!(
            "{}, phase {}: lua user thread aborted: {msg}",
            self.req.borrow().site,
            phase.name()
        );
        if let Err(e) = lights.ended(
            self.loaded.routes[self.req.borrow().location.route].vm.lua(),
            id,
            Err(bare),
        ) {
            crate::lua::log_error(&self.req.borrow().site, phase, &e);
        }
    }

    fn lua_error(&self, phase: Phase, e: &mlua::Error) -> HandlerEnd {
        crate::lua::log_error(&self.req.borrow().site, phase, e);
        HandlerEnd::Error
    }
}

/// `call_plain` for the driver's filters and log handler: logs the error.
fn call_filter(lc: &Lifecycle, phase: Phase, f: &Function) -> bool {
    match call_plain(&lc.req, phase, f) {
        Ok(()) => true,
        Err(e) => {
            crate::lua::log_error(&lc.req.borrow().site, phase, &e);
            false
        }
    }
}

/// The virtual server a request arrived on, from its Host header (or the
/// authority of its target, as HTTP/2 and absolute-form requests carry it);
/// `None` for a request nginx answers with 400: an HTTP/1.1 request without
/// Host, with more than one (RFC 9112 §3.2), or with a malformed one.
fn select_server(
    config: &config::Config,
    r: &RequestState,
    authority: Option<&http::uri::Authority>,
) -> Option<ServerId> {
    let mut hosts = r.headers.get_all(http::header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return None,
        (Some(h), None) => h.as_bytes(),
        (None, _) => match authority {
            Some(a) => a.host().as_bytes(),
            None if r.version == http::Version::HTTP_11 => return None,
            None => return Some(ServerId::ANY),
        },
    };
    let host = request::host_of(host)?;
    if !config.has_hostnames() {
        return Some(ServerId::ANY);
    }
    Some(config.server(&config::normalize_host(&host)))
}

/// What a rewrite or access handler's end means for the request.
fn early_phase_flow(lc: &mut Lifecycle, end: HandlerEnd) -> Flow {
    let sent = lc.req.borrow().headers_sent;
    match end {
        HandlerEnd::Done | HandlerEnd::Exit(Exit::Status(0)) => Flow::Next,
        HandlerEnd::Exit(Exit::Exec { uri, args }) => internal_redirect(lc, uri, args),
        HandlerEnd::Exit(Exit::Status(status)) => Flow::Finish(exit_finish(status, sent)),
        HandlerEnd::Error => Flow::Finish(if sent { Finish::Output } else { Finish::Status(500) }),
        HandlerEnd::Abort(status) => Flow::Finish(Finish::Status(status)),
    }
}

/// `ngx.exit(status)` after which the request ends.
fn exit_finish(status: i64, headers_sent: bool) -> Finish {
    match status {
        // ngx.ERROR terminates the request: no response, like 444.
        444 | -1 => Finish::Close,
        _ if headers_sent => Finish::Output,
        0 => Finish::Output,
        s if s < 0 => Finish::Status(500),
        s if (200..1000).contains(&s) => Finish::Status(s as u16),
        _ => Finish::Output,
    }
}

/// `ngx.exec`: the request restarts at the rewrite phase of the new location,
/// with a fresh `ngx.ctx`.
fn internal_redirect(lc: &mut Lifecycle, uri: Vec<u8>, args: Option<Vec<u8>>) -> Flow {
    let mut r = lc.req.borrow_mut();
    r.caller = Some(r.location.route);
    match request::normalize_path(&uri) {
        Some(path) => r.uri = path,
        None => return Flow::Finish(Finish::Status(400)),
    }
    r.args = args;
    r.internal = true;
    r.ctx = None;
    Flow::Redirect
}
