//! `ngx.location.capture` and `capture_multi`: subrequests, run in-process
//! through the same lifecycle (location match, rewrite, access, content,
//! header and body filters — not log), with the response captured into a Lua
//! table `{status, header, body, truncated}` instead of sent.
//!
//! A subrequest inherits the parent's headers, and its body for POST/PUT-like
//! methods unless `body` is given; `args`, `method`, `ctx`, `vars` and
//! `copy_all_vars` follow lua-nginx-module. `capture_multi` runs its
//! subrequests one after another (nginx interleaves them; the results are the same).

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method};
use mlua::{Lua, MultiValue, Table, Value};

use super::{Finish, Lifecycle};
use crate::lua::api::{codec, req::METHODS};
use crate::lua::args::{bad_argument, bad_type};
use crate::request::{Body, RequestState};

/// nginx's limit on nested subrequests.
const MAX_DEPTH: u8 = 50;
/// nginx's limit on the subrequests of one request, all levels together.
const MAX_SUBREQUESTS: u32 = 65535;

/// What a subrequest produced.
#[derive(Default)]
pub(super) struct Captured {
    status: u16,
    headers: HeaderMap,
    body: BytesMut,
    /// The body went past the VM's memory limit and was cut there.
    truncated: bool,
}

impl Captured {
    pub(super) fn record_head(&mut self, r: &RequestState) {
        self.status = r.effective_status();
        self.headers = r.resp_headers.clone();
    }

    pub(super) fn append(&mut self, body: &[u8]) {
        let room = crate::lua::budget::max_string_len().saturating_sub(self.body.len());
        if body.len() > room {
            self.truncated = true;
        }
        self.body.extend_from_slice(&body[..body.len().min(room)]);
    }
}

struct Spec {
    method: Method,
    uri: Vec<u8>,
    args: Option<Vec<u8>>,
    body: Option<Bytes>,
    ctx: Option<Table>,
    vars: Vec<(String, Vec<u8>)>,
    copy_all_vars: bool,
}

impl Lifecycle {
    /// Runs the subrequests described by `list` (`{{uri, opts}, …}`) and returns
    /// one result table each.
    pub(super) async fn capture(&mut self, lua: &Lua, list: Table) -> mlua::Result<MultiValue> {
        let mut specs = Vec::new();
        for item in list.sequence_values::<Table>() {
            specs.push(spec(lua, &item?)?);
        }
        let mut results = MultiValue::new();
        for spec in specs {
            let captured = self.run_subrequest(spec).await?;
            results.push_back(Value::Table(result_table(lua, captured)?));
        }
        Ok(results)
    }

    async fn run_subrequest(&mut self, spec: Spec) -> mlua::Result<Captured> {
        let state = {
            let parent = self.req.borrow();
            if parent.subrequest_depth >= MAX_DEPTH {
                return Err(mlua::Error::runtime("subrequests cycle"));
            }
            if parent.subrequests.get() >= MAX_SUBREQUESTS {
                return Err(mlua::Error::runtime(format!(
                    "request reached the limit of {MAX_SUBREQUESTS} subrequests"
                )));
            }
            parent.subrequests.set(parent.subrequests.get() + 1);
            self.refuse_foreign_state(&parent, &spec)?;
            sub_state(&parent, spec)
        };
        let mut sub = Lifecycle {
            worker: self.worker.clone(),
            loaded: self.loaded.clone(),
            req: Rc::new(std::cell::RefCell::new(state)),
            body_stream: None,
            head: None,
            head_pending: true,
            stream_tx: None,
            trailers: None,
            captured: Some(Captured::default()),
            upgrade: None,
            body_streamed: false,
            req_sock: Default::default(),
            raw_socket: None,
        };
        // Boxed: a subrequest's handlers may capture again (async recursion).
        let finish: std::pin::Pin<Box<dyn std::future::Future<Output = Finish> + '_>> = Box::pin(sub.main());
        let finish = finish.await;
        let finish: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> = Box::pin(sub.finish(finish));
        finish.await;
        let mut captured = sub.captured.take().unwrap_or_default();
        if captured.status == 0 {
            // Terminated without a response (ngx.ERROR, 444): nginx reports 500.
            captured.status = 500;
        }
        Ok(captured)
    }
}

impl Lifecycle {
    /// `ctx` (a table of the caller's VM, which may hold its functions) and
    /// `vars` may only go to a location of the caller's own route: another
    /// route's handlers would run the caller's code, or trust variables its
    /// own checks set.
    fn refuse_foreign_state(&self, parent: &RequestState, spec: &Spec) -> mlua::Result<()> {
        if spec.ctx.is_none() && spec.vars.is_empty() && !spec.copy_all_vars {
            return Ok(());
        }
        let config = &self.loaded.config;
        let target =
            crate::request::normalize_path(&spec.uri).and_then(|uri| config.find_location(parent.server, &uri));
        match target {
            Some(at) if at.route != parent.location.route => Err(mlua::Error::runtime(format!(
                "ctx and vars cannot be passed to {}, a location of another route",
                config.location(at).site
            ))),
            _ => Ok(()),
        }
    }
}

fn spec(lua: &Lua, item: &Table) -> mlua::Result<Spec> {
    let uri = match item.raw_get::<Value>(1)? {
        Value::String(s) => s.as_bytes().to_vec(),
        other => {
            return Err(mlua::Error::runtime(bad_type(
                1,
                "capture",
                "string",
                other.type_name(),
            )));
        }
    };
    if uri.is_empty() {
        return Err(mlua::Error::runtime(bad_argument(1, "capture", "uri is empty")));
    }
    let (path, query) = match uri.iter().position(|&b| b == b'?') {
        Some(q) => (uri[..q].to_vec(), Some(uri[q + 1..].to_vec())),
        None => (uri, None),
    };
    let mut spec = Spec {
        method: Method::GET,
        uri: path,
        args: query,
        body: None,
        ctx: None,
        vars: Vec::new(),
        copy_all_vars: false,
    };
    let opts = match item.raw_get::<Value>(2)? {
        Value::Table(t) => t,
        Value::Nil => return Ok(spec),
        other => {
            return Err(mlua::Error::runtime(bad_type(2, "capture", "table", other.type_name())));
        }
    };
    if let Some(id) = opts.get::<Option<i64>>("method")? {
        let name = METHODS
            .iter()
            .find(|(_, v)| *v == id)
            .map(|(n, _)| *n)
            .ok_or_else(|| mlua::Error::runtime(format!("unsupported HTTP method: {id}")))?;
        spec.method = Method::from_bytes(name.as_bytes()).map_err(mlua::Error::external)?;
    }
    match opts.get::<Value>("args")? {
        Value::Nil => {}
        Value::String(s) => spec.args = Some(s.as_bytes().to_vec()),
        Value::Table(t) => spec.args = Some(codec::encode_args(lua, &t)?),
        other => {
            return Err(mlua::Error::runtime(format!(
                "Bad args option value: {}",
                other.type_name()
            )));
        }
    }
    if let Some(body) = opts.get::<Option<mlua::LuaString>>("body")? {
        spec.body = Some(Bytes::copy_from_slice(&body.as_bytes()));
    }
    match opts.get::<Value>("ctx")? {
        Value::Table(t) => spec.ctx = Some(t),
        Value::Nil => {}
        _ => return Err(mlua::Error::runtime("Bad ctx option value type")),
    }
    if let Some(vars) = opts.get::<Option<Table>>("vars")? {
        for pair in vars.pairs::<mlua::LuaString, Value>() {
            let (k, v) = pair?;
            let v = match v {
                Value::String(s) => s.as_bytes().to_vec(),
                Value::Integer(i) => crate::lua::api::fmt_number(i as f64).into_bytes(),
                Value::Number(n) => crate::lua::api::fmt_number(n).into_bytes(),
                _ => return Err(mlua::Error::runtime("Bad vars option value type")),
            };
            spec.vars.push((k.to_str()?.to_string(), v));
        }
    }
    spec.copy_all_vars = opts.get::<Option<bool>>("copy_all_vars")?.unwrap_or(false)
        || opts.get::<Option<bool>>("share_all_vars")?.unwrap_or(false);
    Ok(spec)
}

fn sub_state(parent: &RequestState, spec: Spec) -> RequestState {
    let inherit_body = matches!(spec.method, Method::POST | Method::PUT | Method::PATCH);
    let mut headers = parent.headers.clone();
    let body = match (spec.body, &parent.body) {
        (Some(b), _) => {
            headers.insert(http::header::CONTENT_LENGTH, b.len().into());
            Body::Read(b)
        }
        (None, Body::Read(b)) if inherit_body => Body::Read(b.clone()),
        _ => {
            headers.remove(http::header::CONTENT_LENGTH);
            Body::Read(Bytes::new())
        }
    };
    let mut request_uri = spec.uri.clone();
    if let Some(a) = &spec.args {
        request_uri.push(b'?');
        request_uri.extend_from_slice(a);
    }
    let mut state = RequestState::new(
        parent.remote_addr,
        parent.server_addr,
        spec.method,
        parent.version,
        request_uri,
        spec.uri.clone(),
        spec.args,
        headers,
    );
    state.body = body;
    state.internal = true;
    state.server = parent.server;
    state.caller = Some(parent.location.route);
    state.account = parent.account.clone();
    state.hook = parent.hook;
    state.subrequests = parent.subrequests.clone();
    state.start_time = parent.start_time;
    state.subrequest_depth = parent.subrequest_depth + 1;
    state.ctx = spec.ctx;
    state.preset_vars = spec.vars;
    if spec.copy_all_vars {
        state
            .preset_vars
            .extend(parent.vars.iter().filter_map(|(n, v)| Some((n.clone(), v.clone()?))));
    }
    state
}

fn result_table(lua: &Lua, captured: Captured) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("status", captured.status)?;
    t.set("body", lua.create_string(&captured.body)?)?;
    t.set("truncated", captured.truncated)?;
    let header = lua.create_table()?;
    for (name, value) in &captured.headers {
        // Lowercase keys; the lookup metatable finds `res.header["Content-Type"]` too.
        let key = name.as_str();
        let v = lua.create_string(value.as_bytes())?;
        match header.raw_get::<Value>(key)? {
            Value::Nil => header.raw_set(key, v)?,
            Value::Table(list) => list.raw_push(v)?,
            prev => header.raw_set(key, lua.create_sequence_from([prev, Value::String(v)])?)?,
        }
    }
    header.set_metatable(Some(crate::lua::api::header::lookup_metatable(lua)?))?;
    t.set("header", header)?;
    Ok(t)
}
