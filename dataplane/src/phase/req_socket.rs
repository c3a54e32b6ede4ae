//! `ngx.req.socket()`: the request body read as a cosocket (`receive` with a
//! size, `*l` or `*a`, `receiveuntil`, `settimeout`), as lua-resty-upload
//! reads multipart bodies. The driver serves its reads (`OP_REQ_SOCKET`)
//! from the client's body stream, frame by frame, so a large upload is never
//! held whole; the body limit still applies to what is read.
//!
//!
//! The raw form (`ngx.req.socket(true)`) is the client's connection itself,
//! after a protocol switch: the driver sends the 101 head, waits for hyper
//! to hand the connection over, and attaches it to a tcp cosocket object,
//! which the request closes when it ends.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use mlua::{AnyUserData, IntoLuaMulti, Lua, MultiValue, Value};

use hyper_util::rt::TokioIo;

use super::Lifecycle;
use crate::lua::api::socket::tcp::{self, Found, Want};
use crate::response::body::{Piece, ResponseBody};
use crate::response::head::send_header;

/// lua-nginx-module's `lua_socket_read_timeout` default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Body bytes read from the client and not yet returned to Lua.
#[derive(Default)]
pub(super) struct ReqSocket {
    buf: BytesMut,
    timeout: Option<Duration>,
    /// Bytes taken from the client so far, for the body limit.
    read: u64,
}

impl Lifecycle {
    /// Sends the 101 head, then attaches the switched connection to `ud`.
    async fn raw_req_socket(&mut self, lua: &Lua, ud: &AnyUserData) -> mlua::Result<MultiValue> {
        let Some(upgrade) = self.upgrade.take() else {
            return (Value::Nil, "duplicate call").into_lua_multi(lua);
        };
        send_header(&self.req);
        self.req.borrow_mut().eof = true;
        if self.head_pending {
            self.head_pending = false;
            let head = self.response(ResponseBody::empty());
            self.put_head(head);
        } else if let Some(stx) = self.stream_tx.take() {
            // The head went out with ngx.send_headers/ngx.flush; a 101 has no body.
            let _ = stx.send(Piece::End).await;
        }
        let timeout = self.req_sock.timeout.unwrap_or(DEFAULT_TIMEOUT);
        match tokio::time::timeout(timeout, upgrade).await {
            Ok(Ok(upgraded)) => {
                let sock = tcp::TcpSocket::attach_downstream(ud, Box::new(TokioIo::new(upgraded)))?;
                self.raw_socket = Some(sock);
                true.into_lua_multi(lua)
            }
            Ok(Err(e)) => (Value::Nil, format!("protocol switch failed: {e}")).into_lua_multi(lua),
            Err(_) => (Value::Nil, "timeout").into_lua_multi(lua),
        }
    }

    /// Serves one request-socket call: `(method, args...)`.
    pub(super) async fn req_socket(
        &mut self,
        lua: &Lua,
        mut values: impl Iterator<Item = Value>,
    ) -> mlua::Result<MultiValue> {
        let method = match values.next() {
            Some(Value::String(s)) => s.to_str()?.to_string(),
            _ => return Err(mlua::Error::runtime("bad request socket call")),
        };
        let want = match method.as_str() {
            "settimeout" => {
                let ms = match values.next() {
                    Some(Value::Integer(n)) => n as f64,
                    Some(Value::Number(n)) => n,
                    _ => 0.0,
                };
                self.req_sock.timeout = (ms > 0.0).then(|| Duration::from_secs_f64(ms / 1000.0));
                return Ok(MultiValue::new());
            }
            "raw" => {
                let Some(Value::UserData(ud)) = values.next() else {
                    return Err(mlua::Error::runtime("bad request socket call"));
                };
                return self.raw_req_socket(lua, &ud).await;
            }
            "receive" => tcp::receive_pattern(&values.next().unwrap_or(Value::Nil))?,
            "until" => {
                let Some(Value::UserData(it)) = values.next() else {
                    return Err(mlua::Error::runtime("bad request socket call"));
                };
                let size = values.next().unwrap_or(Value::Nil);
                match tcp::until_want(lua, &it as &AnyUserData, size)? {
                    Some(want) => want,
                    None => return Value::Nil.into_lua_multi(lua),
                }
            }
            _ => return Err(mlua::Error::runtime("bad request socket call")),
        };
        if matches!(want, Want::Bytes(0)) {
            return lua.create_string("")?.into_lua_multi(lua);
        }
        let timeout = self.req_sock.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let max = self.max_body(self.req.borrow().location);
        loop {
            let eof = self.body_stream.is_none();
            if let Found::Data(data, used) = tcp::find(&self.req_sock.buf, &want, eof) {
                self.req_sock.buf.advance(used);
                return lua.create_string(&data)?.into_lua_multi(lua);
            }
            if eof {
                let partial = tcp::partial(&self.req_sock.buf, &want);
                self.req_sock.buf.clear();
                return (Value::Nil, "closed", lua.create_string(&partial)?).into_lua_multi(lua);
            }
            let Some(stream) = self.body_stream.as_mut() else {
                continue;
            };
            let frame = match tokio::time::timeout(timeout, stream.frame()).await {
                Err(_) => {
                    let partial = tcp::partial(&self.req_sock.buf, &want);
                    self.req_sock.buf.clear();
                    return (Value::Nil, "timeout", lua.create_string(&partial)?).into_lua_multi(lua);
                }
                Ok(None) => {
                    self.body_stream = None;
                    continue;
                }
                Ok(Some(Err(_))) => {
                    // The client went away mid-body.
                    self.body_stream = None;
                    let partial = tcp::partial(&self.req_sock.buf, &want);
                    self.req_sock.buf.clear();
                    return (Value::Nil, "client aborted", lua.create_string(&partial)?).into_lua_multi(lua);
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Some(data) = frame.data_ref() {
                self.req_sock.read += data.len() as u64;
                if self.req_sock.read > max {
                    tracing::error!(site = %self.req.borrow().site, "client intended to send too large body");
                    return (Value::Nil, "client intended to send too large body").into_lua_multi(lua);
                }
                crate::lua::budget::charge_bytes(data.len())?;
                self.req_sock.buf.extend_from_slice(data);
            }
        }
    }
}
