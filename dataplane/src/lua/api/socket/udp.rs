//! `ngx.socket.udp`: the UDP and datagram unix cosocket (`setpeername`,
//! `send`, `receive`, `settimeout`, `close`), under the same egress policy
//! as TCP.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use mlua::{AnyUserData, IntoLuaMulti, Lua, MultiValue, Table, UserData, Value};

use super::{DEFAULT_TIMEOUT, Permit, Sockets, os_error, port_arg, timeout_ms};
use crate::lua::api::pending::{self, answer};
use crate::lua::args::{bad_type, type_name};

/// lua-nginx-module's receive buffer: the most one `receive` returns.
const MAX_DATAGRAM: usize = 8192;

enum Peer {
    Inet(tokio::net::UdpSocket),
    Unix(tokio::net::UnixDatagram),
}

impl Peer {
    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Peer::Inet(s) => s.recv(buf).await,
            Peer::Unix(s) => s.recv(buf).await,
        }
    }

    /// One non-blocking `send(2)`. Not tokio's `try_send`: that answers
    /// WouldBlock until the reactor has seen the socket writable, which a
    /// fresh socket never has; the kernel itself only refuses when its
    /// buffer is full.
    fn send_now(&self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            Peer::Inet(s) => socket2::SockRef::from(s).send(data),
            Peer::Unix(s) => socket2::SockRef::from(s).send(data),
        }
    }
}

struct State {
    sockets: Rc<Sockets>,
    peer: Option<Rc<Peer>>,
    /// The peer's place in the tenant's open sockets; dropped with it.
    permit: Option<Permit>,
    generation: u64,
    read_timeout: Option<Duration>,
    owner: u64,
}

#[derive(Clone)]
struct UdpSocket(Rc<RefCell<State>>);

impl UserData for UdpSocket {}

pub fn register(lua: &Lua, t: &Table, sockets: &Rc<Sockets>, marker: &Table) -> mlua::Result<()> {
    let s = sockets.clone();
    t.set(
        "udp_new",
        lua.create_function(move |_, ()| {
            crate::lua::api::check_may_yield("ngx.socket.udp")?;
            Ok(UdpSocket(Rc::new(RefCell::new(State {
                sockets: s.clone(),
                peer: None,
                permit: None,
                generation: 0,
                read_timeout: None,
                owner: crate::lua::budget::execution(),
            }))))
        })?,
    )?;
    let m = marker.clone();
    t.set(
        "udp_setpeername",
        lua.create_function(move |lua, (ud, host, port): (AnyUserData, Value, Value)| {
            let st = state(&ud, "setpeername")?;
            setpeername(lua, &st, host, port, &m)
        })?,
    )?;
    t.set(
        "udp_send",
        lua.create_function(|lua, (ud, data): (AnyUserData, Value)| {
            let st = state(&ud, "send")?;
            let mut bytes = BytesMut::new();
            crate::lua::api::output::append_value(&mut bytes, &data, "send", 2)?;
            let Some(peer) = st.borrow().peer.clone() else {
                return (Value::Nil, "closed").into_lua_multi(lua);
            };
            // A datagram goes out whole or not at all; a full socket buffer
            // is an error, as nginx's non-blocking send reports it.
            match peer.send_now(&bytes) {
                Ok(_) => 1.into_lua_multi(lua),
                Err(e) => (Value::Nil, os_error(&e)).into_lua_multi(lua),
            }
        })?,
    )?;
    let m = marker.clone();
    t.set(
        "udp_receive",
        lua.create_function(move |lua, (ud, size): (AnyUserData, Option<f64>)| {
            let st = state(&ud, "receive")?;
            let size = size.map_or(MAX_DATAGRAM, |n| (n.max(1.0) as usize).min(MAX_DATAGRAM));
            let s = st.borrow();
            let Some(peer) = s.peer.clone() else {
                return (Value::Nil, "closed").into_lua_multi(lua);
            };
            let timeout = s.read_timeout.unwrap_or(DEFAULT_TIMEOUT);
            drop(s);
            pending::park(async move {
                let mut buf = vec![0u8; size];
                let got = tokio::time::timeout(timeout, peer.recv(&mut buf)).await;
                answer(move |lua| match got {
                    Ok(Ok(n)) => lua.create_string(&buf[..n])?.into_lua_multi(lua),
                    Ok(Err(e)) => (Value::Nil, os_error(&e)).into_lua_multi(lua),
                    Err(_) => (Value::Nil, "timeout").into_lua_multi(lua),
                })
            });
            Value::Table(m.clone()).into_lua_multi(lua)
        })?,
    )?;
    t.set(
        "udp_settimeout",
        lua.create_function(|_, (ud, ms): (AnyUserData, Option<f64>)| {
            let st = state(&ud, "settimeout")?;
            st.borrow_mut().read_timeout = timeout_ms(ms)?;
            Ok(())
        })?,
    )?;
    t.set(
        "udp_close",
        lua.create_function(|lua, ud: AnyUserData| {
            let st = state(&ud, "close")?;
            let mut s = st.borrow_mut();
            s.generation += 1;
            s.permit = None;
            match s.peer.take() {
                Some(_) => 1.into_lua_multi(lua),
                None => (Value::Nil, "closed").into_lua_multi(lua),
            }
        })?,
    )?;
    Ok(())
}

fn state(ud: &AnyUserData, method: &str) -> mlua::Result<Rc<RefCell<State>>> {
    let st = ud
        .borrow::<UdpSocket>()
        .map_err(|_| mlua::Error::runtime(bad_type(1, method, "udp socket", "userdata")))?
        .0
        .clone();
    if st.borrow().owner != crate::lua::budget::execution() {
        return Err(mlua::Error::runtime("bad request"));
    }
    crate::lua::api::check_may_yield(&format!("udpsock:{method}"))?;
    Ok(st)
}

fn setpeername(
    lua: &Lua,
    st: &Rc<RefCell<State>>,
    host: Value,
    port: Value,
    marker: &Table,
) -> mlua::Result<MultiValue> {
    let host = match host {
        Value::String(s) => s.to_str()?.to_string(),
        other => {
            return Err(mlua::Error::runtime(bad_type(
                2,
                "setpeername",
                "string",
                type_name(&other),
            )));
        }
    };
    let mut s = st.borrow_mut();
    s.peer = None;
    s.permit = None;
    s.generation += 1;
    let generation = s.generation;
    let sockets = s.sockets.clone();
    drop(s);
    let site = crate::context::log_prefix();
    let permit = match sockets.permit(&site) {
        Ok(permit) => permit,
        Err(e) => return (Value::Nil, e).into_lua_multi(lua),
    };
    let st = st.clone();
    if let Some(path) = host.strip_prefix("unix:") {
        if let Err(e) = sockets.check_unix(path, &site) {
            return (Value::Nil, e).into_lua_multi(lua);
        }
        let peer = tokio::net::UnixDatagram::unbound().and_then(|d| d.connect(path).map(|()| d));
        return match peer {
            Ok(d) => {
                let mut s = st.borrow_mut();
                s.peer = Some(Rc::new(Peer::Unix(d)));
                s.permit = Some(permit);
                1.into_lua_multi(lua)
            }
            Err(e) => (Value::Nil, os_error(&e)).into_lua_multi(lua),
        };
    }
    let port = match port_arg(&port, 3, "setpeername")? {
        Ok(port) => port,
        Err(bad) => return (Value::Nil, bad).into_lua_multi(lua),
    };
    pending::park(async move {
        let result = async {
            let mut last = String::new();
            for addr in sockets.allowed(&host, port, DEFAULT_TIMEOUT, &site).await? {
                let local: SocketAddr = if addr.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let socket = tokio::net::UdpSocket::bind(local).await.map_err(|e| os_error(&e))?;
                match socket.connect(addr).await {
                    Ok(()) => return Ok(socket),
                    Err(e) => last = os_error(&e),
                }
            }
            Err(last)
        }
        .await;
        answer(move |lua| {
            let mut s = st.borrow_mut();
            if s.generation != generation {
                return (Value::Nil, "closed").into_lua_multi(lua);
            }
            match result {
                Ok(socket) => {
                    s.peer = Some(Rc::new(Peer::Inet(socket)));
                    s.permit = Some(permit);
                    1.into_lua_multi(lua)
                }
                Err(e) => (Value::Nil, e).into_lua_multi(lua),
            }
        })
    });
    Value::Table(marker.clone()).into_lua_multi(lua)
}
