//! `ngx.socket.tcp`: the TCP and stream unix cosocket.
//!
//! The object Lua sees is a table holding a [`TcpSocket`] userdata at index 1
//! (as lua-nginx-module's does), with methods from the prelude that call the
//! primitives registered here and yield when one parks.
//!
//! A connection is split into a read half and a write half, so one light
//! thread may read while another writes (lua-nginx-module allows that); an
//! operation takes its half out of the state while it runs, and its answer
//! puts it back only if the socket still holds the same connection
//! (`generation`), so a `close` or a reconnect meanwhile wins.

use std::cell::RefCell;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use mlua::{AnyUserData, IntoLuaMulti, Lua, MultiValue, Table, UserData, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use super::pool::{PoolKey, Pooled, Slot, Slots};
use super::{DEFAULT_KEEPALIVE, DEFAULT_POOL_SIZE, DEFAULT_TIMEOUT, MAX_BUFFERED, READ_CHUNK, Sockets};
use super::{os_error, port_arg, timeout_ms};
use crate::lua::api::pending::{self, answer};
use crate::lua::args::{bad_argument, bad_type, type_name};

pub trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin + ?Sized> Io for T {}

/// A connection: plain TCP, a unix stream, or TLS over either.
pub type Stream = Box<dyn Io>;

enum Conn {
    Closed,
    Connecting,
    Open {
        reader: Option<ReadHalf<Stream>>,
        writer: Option<WriteHalf<Stream>>,
    },
}

impl Conn {
    /// Why an operation that needs the whole socket (connect, close,
    /// setkeepalive, sslhandshake) must wait: another light thread is in
    /// the middle of using it. lua-nginx-module's words and order.
    fn busy(&self) -> Option<&'static str> {
        match self {
            Conn::Connecting => Some("socket busy connecting"),
            Conn::Open { reader: None, .. } => Some("socket busy reading"),
            Conn::Open { writer: None, .. } => Some("socket busy writing"),
            _ => None,
        }
    }
}

struct State {
    route: Rc<str>,
    sockets: Rc<Sockets>,
    conn: Conn,
    /// Bumped by every connect and close; see the module comment.
    generation: u64,
    /// Read from the peer, not yet returned by a receive.
    buf: BytesMut,
    connect_timeout: Option<Duration>,
    send_timeout: Option<Duration>,
    read_timeout: Option<Duration>,
    pool: Option<PoolKey>,
    pool_size: usize,
    /// This connection's place in a pool that counts them (`backlog`).
    slot: Option<Slot>,
    reused: u32,
    /// `sslhandshake` succeeded on this connection (or on it before it was pooled).
    tls: bool,
    peer_ip: Option<IpAddr>,
    /// An I/O error closed the connection: `close` still answers 1 once, as
    /// lua-nginx-module's does for a socket the user has not closed.
    failed: bool,
    /// The request or timer run that created the socket.
    owner: u64,
    /// The raw request socket (`ngx.req.socket(true)`): the client's own
    /// connection, which is never connected elsewhere, pooled or handshaken.
    downstream: bool,
}

#[derive(Clone)]
pub struct TcpSocket(Rc<RefCell<State>>);

impl TcpSocket {
    /// Makes `ud`, a new `ngx.socket.tcp()` object, the raw request socket
    /// over the client's upgraded connection.
    pub fn attach_downstream(ud: &AnyUserData, stream: Stream) -> mlua::Result<TcpSocket> {
        let sock = ud.borrow::<TcpSocket>()?.clone();
        {
            let mut s = sock.0.borrow_mut();
            let (reader, writer) = tokio::io::split(stream);
            s.conn = Conn::Open {
                reader: Some(reader),
                writer: Some(writer),
            };
            s.downstream = true;
            s.pool = None;
        }
        Ok(sock)
    }

    /// Closes the connection (the raw request socket, when its request ends).
    pub fn close(&self) {
        close(&mut self.0.borrow_mut());
    }
}

/// What the raw request socket refuses, as lua-nginx-module's lacks these
/// methods.
fn refuse_downstream(s: &State, method: &str) -> mlua::Result<()> {
    if s.downstream {
        return Err(mlua::Error::runtime(format!(
            "attempt to call {method} on the raw request socket"
        )));
    }
    Ok(())
}

impl UserData for TcpSocket {}

/// A `receiveuntil` iterator's own state.
pub(crate) struct Until {
    pattern: Vec<u8>,
    inclusive: bool,
    /// The sized form returned the last piece before the boundary: the next
    /// call returns nil (and the iterator starts over).
    at_boundary: bool,
}

#[derive(Clone)]
pub(crate) struct UntilIter(pub(crate) Rc<RefCell<Until>>);

impl UserData for UntilIter {}

pub fn register(lua: &Lua, t: &Table, sockets: &Rc<Sockets>, marker: &Table) -> mlua::Result<()> {
    let s = sockets.clone();
    t.set(
        "tcp_new",
        lua.create_function(move |_, route: String| {
            crate::lua::api::check_may_yield("ngx.socket.tcp")?;
            Ok(TcpSocket(Rc::new(RefCell::new(State {
                route: Rc::from(route),
                sockets: s.clone(),
                conn: Conn::Closed,
                generation: 0,
                buf: BytesMut::new(),
                connect_timeout: None,
                send_timeout: None,
                read_timeout: None,
                pool: None,
                pool_size: DEFAULT_POOL_SIZE,
                slot: None,
                reused: 0,
                tls: false,
                peer_ip: None,
                failed: false,
                owner: crate::lua::budget::execution(),
                downstream: false,
            }))))
        })?,
    )?;
    let m = marker.clone();
    t.set(
        "tcp_connect",
        lua.create_function(move |lua, (ud, host, port, opts): (AnyUserData, Value, Value, Value)| {
            let st = state(&ud, "connect")?;
            connect(lua, &st, host, port, opts, &m)
        })?,
    )?;
    let m = marker.clone();
    t.set(
        "tcp_sslhandshake",
        lua.create_function(
            move |lua, (ud, _reused, name, verify): (AnyUserData, Value, Value, Value)| {
                let st = state(&ud, "sslhandshake")?;
                sslhandshake(lua, &st, name, verify, &m)
            },
        )?,
    )?;
    let m = marker.clone();
    t.set(
        "tcp_send",
        lua.create_function(move |lua, (ud, data): (AnyUserData, Value)| {
            let st = state(&ud, "send")?;
            send(lua, &st, &data, &m)
        })?,
    )?;
    let m = marker.clone();
    t.set(
        "tcp_receive",
        lua.create_function(move |lua, (ud, pattern): (AnyUserData, Value)| {
            let st = state(&ud, "receive")?;
            let want = receive_pattern(&pattern)?;
            receive(lua, &st, want, &m)
        })?,
    )?;
    let m = marker.clone();
    t.set(
        "tcp_receiveany",
        lua.create_function(move |lua, (ud, max): (AnyUserData, Value)| {
            let st = state(&ud, "receiveany")?;
            let max = match max {
                Value::Integer(n) if n > 0 => n as usize,
                Value::Number(n) if n >= 1.0 => n as usize,
                // lua-nginx-module's method errors name the function '?'.
                _ => return Err(mlua::Error::runtime(bad_argument(2, "?", "bad max argument"))),
            };
            receive(lua, &st, Want::Any(max), &m)
        })?,
    )?;
    t.set(
        "until_new",
        lua.create_function(|lua, (pattern, opts): (Value, Value)| until_new(lua, pattern, opts))?,
    )?;
    t.set(
        "tcp_receiveuntil",
        lua.create_function(|lua, (ud, pattern, opts): (AnyUserData, Value, Value)| {
            state(&ud, "receiveuntil")?;
            until_new(lua, pattern, opts)
        })?,
    )?;
    let m = marker.clone();
    t.set(
        "tcp_read_until",
        lua.create_function(move |lua, (ud, it, size): (AnyUserData, AnyUserData, Value)| {
            let st = state(&ud, "receiveuntil")?;
            match until_want(lua, &it, size)? {
                Some(want) => receive(lua, &st, want, &m),
                None => Value::Nil.into_lua_multi(lua),
            }
        })?,
    )?;
    t.set(
        "tcp_close",
        lua.create_function(|lua, ud: AnyUserData| {
            let st = state(&ud, "close")?;
            let mut s = st.borrow_mut();
            if let Some(busy) = s.conn.busy() {
                return (Value::Nil, busy).into_lua_multi(lua);
            }
            if matches!(s.conn, Conn::Closed) {
                if std::mem::take(&mut s.failed) {
                    return 1.into_lua_multi(lua);
                }
                return (Value::Nil, "closed").into_lua_multi(lua);
            }
            close(&mut s);
            1.into_lua_multi(lua)
        })?,
    )?;
    t.set(
        "tcp_setkeepalive",
        lua.create_function(|lua, (ud, timeout, size): (AnyUserData, Option<f64>, Value)| {
            let st = state(&ud, "setkeepalive")?;
            setkeepalive(lua, &st, timeout, size)
        })?,
    )?;
    t.set(
        "tcp_getreusedtimes",
        lua.create_function(|lua, ud: AnyUserData| {
            let st = state(&ud, "getreusedtimes")?;
            let s = st.borrow();
            match s.conn {
                Conn::Closed => (Value::Nil, "closed").into_lua_multi(lua),
                _ => s.reused.into_lua_multi(lua),
            }
        })?,
    )?;
    t.set(
        "tcp_settimeout",
        lua.create_function(|_, (ud, ms): (AnyUserData, Option<f64>)| {
            let st = state(&ud, "settimeout")?;
            let t = timeout_ms(ms)?;
            let mut s = st.borrow_mut();
            (s.connect_timeout, s.send_timeout, s.read_timeout) = (t, t, t);
            Ok(())
        })?,
    )?;
    t.set(
        "tcp_settimeouts",
        lua.create_function(
            |_, (ud, c, snd, r): (AnyUserData, Option<f64>, Option<f64>, Option<f64>)| {
                let st = state(&ud, "settimeouts")?;
                let mut s = st.borrow_mut();
                s.connect_timeout = timeout_ms(c)?;
                s.send_timeout = timeout_ms(snd)?;
                s.read_timeout = timeout_ms(r)?;
                Ok(())
            },
        )?,
    )?;
    t.set(
        "tcp_setoption",
        lua.create_function(|lua, (ud, option, _value): (AnyUserData, Value, Value)| {
            let st = state(&ud, "setoption")?;
            if matches!(st.borrow().conn, Conn::Closed) {
                return (Value::Nil, "closed").into_lua_multi(lua);
            }
            match option {
                // Accepted for LuaSocket compatibility; tokio sockets already
                // run with TCP_NODELAY off and the kernel's buffer sizes.
                Value::String(s)
                    if matches!(
                        &*s.as_bytes(),
                        b"keepalive" | b"reuseaddr" | b"tcp-nodelay" | b"sndbuf" | b"rcvbuf"
                    ) =>
                {
                    true.into_lua_multi(lua)
                }
                other => {
                    let name = lua
                        .coerce_string(other)?
                        .map(|s| s.to_string_lossy())
                        .unwrap_or_default();
                    (Value::Nil, format!("unsupported option {name}")).into_lua_multi(lua)
                }
            }
        })?,
    )?;
    Ok(())
}

/// A `receiveuntil` iterator for `pattern` (or `nil, "pattern is empty"`).
fn until_new(lua: &Lua, pattern: Value, opts: Value) -> mlua::Result<MultiValue> {
    let pattern = match pattern {
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Integer(_) | Value::Number(_) => lua
            .coerce_string(pattern)?
            .map(|s| s.as_bytes().to_vec())
            .unwrap_or_default(),
        other => {
            return Err(mlua::Error::runtime(bad_type(
                2,
                "receiveuntil",
                "string",
                type_name(&other),
            )));
        }
    };
    if pattern.is_empty() {
        return (Value::Nil, "pattern is empty").into_lua_multi(lua);
    }
    let inclusive = match opts {
        Value::Table(t) => match t.get::<Value>("inclusive")? {
            Value::Nil => false,
            Value::Boolean(b) => b,
            other => {
                let why = format!("bad \"inclusive\" option value type: {}", type_name(&other));
                return Err(mlua::Error::runtime(why));
            }
        },
        Value::Nil => false,
        other => {
            return Err(mlua::Error::runtime(bad_type(
                3,
                "receiveuntil",
                "table",
                type_name(&other),
            )));
        }
    };
    let it = UntilIter(Rc::new(RefCell::new(Until {
        pattern,
        inclusive,
        at_boundary: false,
    })));
    lua.create_userdata(it)?.into_lua_multi(lua)
}

/// What one call of a `receiveuntil` iterator with `size` waits for; `None`
/// when the sized form already returned the piece before the boundary (the
/// call returns nil and the iterator starts over).
pub(crate) fn until_want(_lua: &Lua, it: &AnyUserData, size: Value) -> mlua::Result<Option<Want>> {
    let it = it.borrow::<UntilIter>()?.0.clone();
    let size = match size {
        Value::Nil => None,
        Value::Integer(n) if n >= 0 => Some(n as usize),
        Value::Number(n) if n >= 0.0 => Some(n as usize),
        _ => return Err(mlua::Error::runtime(bad_argument(1, "iterator", "bad size argument"))),
    };
    if size.is_some() && it.borrow().at_boundary {
        it.borrow_mut().at_boundary = false;
        return Ok(None);
    }
    Ok(Some(Want::Until { it, size }))
}

/// The socket's state, checked to belong to the running request or timer.
fn state(ud: &AnyUserData, method: &str) -> mlua::Result<Rc<RefCell<State>>> {
    let st = ud
        .borrow::<TcpSocket>()
        .map_err(|_| mlua::Error::runtime(bad_type(1, method, "tcp socket", "userdata")))?
        .0
        .clone();
    if st.borrow().owner != crate::lua::budget::execution() {
        return Err(mlua::Error::runtime("bad request"));
    }
    crate::lua::api::check_may_yield(&format!("tcpsock:{method}"))?;
    Ok(st)
}

fn close(s: &mut State) {
    s.failed = false;
    s.conn = Conn::Closed;
    s.slot = None;
    s.tls = false;
    s.generation += 1;
    s.buf.clear();
}

/// Where `connect` goes.
enum Target {
    Host { host: String, port: u16 },
    Unix(String),
}

fn connect(
    lua: &Lua,
    st: &Rc<RefCell<State>>,
    host: Value,
    port: Value,
    opts: Value,
    marker: &Table,
) -> mlua::Result<MultiValue> {
    let host = match host {
        Value::String(s) => s.to_str()?.to_string(),
        other => {
            return Err(mlua::Error::runtime(bad_type(
                2,
                "connect",
                "string",
                type_name(&other),
            )));
        }
    };
    let (target, opts) = match host.strip_prefix("unix:") {
        Some(path) => (Target::Unix(path.to_string()), port),
        None => {
            let port = match &port {
                // `connect(host)` or `connect(host, opts)`: a name with no port.
                Value::Nil | Value::Table(_) => {
                    return (Value::Nil, "missing the port number").into_lua_multi(lua);
                }
                other => match port_arg(other, 3, "connect")? {
                    Ok(port) => port,
                    Err(bad) => return (Value::Nil, bad).into_lua_multi(lua),
                },
            };
            if host.is_empty() {
                return (Value::Nil, "failed to parse host name \"\": no host").into_lua_multi(lua);
            }
            (
                Target::Host {
                    host: host.clone(),
                    port,
                },
                opts,
            )
        }
    };
    let mut pool_name = match &target {
        Target::Host { host, port } => format!("{host}:{port}"),
        Target::Unix(path) => format!("unix:{path}"),
    };
    let mut pool_size = DEFAULT_POOL_SIZE;
    let mut backlog = None;
    match opts {
        Value::Nil => {}
        Value::Table(t) => {
            match t.get::<Value>("pool")? {
                Value::Nil => {}
                Value::String(s) => pool_name = s.to_str()?.to_string(),
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "bad \"pool\" option type: {}",
                        type_name(&other)
                    )));
                }
            }
            match t.get::<Value>("pool_size")? {
                Value::Nil => {}
                Value::Integer(n) if n > 0 => pool_size = n as usize,
                Value::Number(n) if n >= 1.0 => pool_size = n as usize,
                other => {
                    let shown = lua
                        .coerce_string(other)?
                        .map(|s| s.to_string_lossy())
                        .unwrap_or_default();
                    return Err(mlua::Error::runtime(format!("bad \"pool_size\" option value: {shown}")));
                }
            }
            backlog = match t.get::<Value>("backlog")? {
                Value::Nil => None,
                Value::Integer(n) if n >= 0 => Some(n as usize),
                Value::Number(n) if n >= 0.0 => Some(n as usize),
                Value::Integer(_) | Value::Number(_) => {
                    let n = t.get::<i64>("backlog")?;
                    return Err(mlua::Error::runtime(format!("bad \"backlog\" option value: {n}")));
                }
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "bad \"backlog\" option type: {}",
                        type_name(&other)
                    )));
                }
            };
        }
        other => return Err(mlua::Error::runtime(bad_type(4, "connect", "table", type_name(&other)))),
    }

    let mut s = st.borrow_mut();
    refuse_downstream(&s, "connect")?;
    if let Some(busy) = s.conn.busy() {
        return (Value::Nil, busy).into_lua_multi(lua);
    }
    // A connected socket reconnects: the old connection is closed first.
    close(&mut s);
    let key = PoolKey {
        route: s.route.clone(),
        name: pool_name,
    };
    s.pool = Some(key.clone());
    s.pool_size = pool_size;
    let pooled = s.sockets.pools.borrow_mut().take(&key);
    if let Some(pooled) = pooled {
        let (reader, writer) = tokio::io::split(pooled.stream);
        s.conn = Conn::Open {
            reader: Some(reader),
            writer: Some(writer),
        };
        s.slot = pooled.slot;
        s.reused = pooled.reused + 1;
        s.tls = pooled.tls;
        return 1.into_lua_multi(lua);
    }
    // A pool with a backlog opens at most its size: take a free slot, or
    // queue for one, or refuse when the queue is full.
    let mut queued = None;
    let mut slot = None;
    if let Some(backlog) = backlog {
        let slots = s.sockets.pools.borrow_mut().slots(&key, pool_size, backlog);
        match slots.try_acquire() {
            Some(free) => slot = Some(free),
            None => match slots.wait() {
                Ok(woken) => queued = Some((slots, woken)),
                Err(full) => return (Value::Nil, full).into_lua_multi(lua),
            },
        }
    }
    s.conn = Conn::Connecting;
    s.reused = 0;
    let generation = s.generation;
    let timeout = s.connect_timeout.unwrap_or(DEFAULT_TIMEOUT);
    let sockets = s.sockets.clone();
    drop(s);
    let site = crate::context::log_prefix();
    let st = st.clone();
    pending::park(async move {
        let result: Result<Opened, String> = async {
            if let Some((slots, woken)) = queued {
                match wait_for_slot(&sockets, &key, &slots, woken, timeout).await? {
                    Turn::Pooled(pooled) => {
                        return Ok(Opened::Pooled(pooled));
                    }
                    Turn::Slot(free) => slot = Some(free),
                }
            }
            // Counted from the connect on: a connection still connecting
            // holds a descriptor too.
            let permit = sockets.permit(&site)?;
            let (stream, peer_ip) = open(&sockets, &target, timeout, &site).await?;
            Ok(Opened::New(super::counted(stream, permit), peer_ip, slot))
        }
        .await;
        answer(move |lua| {
            let mut s = st.borrow_mut();
            if s.generation != generation {
                return (Value::Nil, "closed").into_lua_multi(lua);
            }
            let (stream, slot) = match result {
                Ok(Opened::New(stream, peer_ip, slot)) => {
                    s.peer_ip = peer_ip;
                    (stream, slot)
                }
                Ok(Opened::Pooled(pooled)) => {
                    s.reused = pooled.reused + 1;
                    s.tls = pooled.tls;
                    (pooled.stream, pooled.slot)
                }
                Err(e) => {
                    s.conn = Conn::Closed;
                    return (Value::Nil, e).into_lua_multi(lua);
                }
            };
            let (reader, writer) = tokio::io::split(stream);
            s.conn = Conn::Open {
                reader: Some(reader),
                writer: Some(writer),
            };
            s.slot = slot;
            1.into_lua_multi(lua)
        })
    });
    Value::Table(marker.clone()).into_lua_multi(lua)
}

/// What a connect ends with: a new connection, or one a queued connect
/// found pooled when it was woken.
enum Opened {
    New(Stream, Option<IpAddr>, Option<Slot>),
    Pooled(Pooled),
}

/// What a queued connect's wait gives it.
enum Turn {
    Slot(Slot),
    Pooled(Pooled),
}

/// Waits in pool `key`'s queue until a connection is pooled (taken) or a
/// slot frees (acquired), for at most the connect timeout.
async fn wait_for_slot(
    sockets: &Sockets,
    key: &PoolKey,
    slots: &Rc<Slots>,
    mut woken: tokio::sync::oneshot::Receiver<()>,
    timeout: Duration,
) -> Result<Turn, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // A closed sender is a wake too: the queue dropped it.
        if tokio::time::timeout_at(deadline, &mut woken).await.is_err() {
            return Err("timeout".into());
        }
        if let Some(pooled) = sockets.pools.borrow_mut().take(key) {
            return Ok(Turn::Pooled(pooled));
        }
        if let Some(slot) = slots.try_acquire() {
            return Ok(Turn::Slot(slot));
        }
        woken = slots.wait_again();
    }
}

/// Resolves, checks the egress policy, and connects within `timeout`.
async fn open(
    sockets: &Sockets,
    target: &Target,
    timeout: Duration,
    site: &str,
) -> Result<(Stream, Option<IpAddr>), String> {
    let deadline = Instant::now() + timeout;
    match target {
        Target::Unix(path) => {
            sockets.check_unix(path, site)?;
            match tokio::time::timeout_at(deadline.into(), tokio::net::UnixStream::connect(path)).await {
                Err(_) => Err("timeout".into()),
                Ok(Err(e)) => Err(os_error(&e)),
                Ok(Ok(s)) => Ok((Box::new(s), None)),
            }
        }
        Target::Host { host, port } => {
            let mut last = String::new();
            for addr in sockets.allowed(host, *port, timeout, site).await? {
                match tokio::time::timeout_at(deadline.into(), tokio::net::TcpStream::connect(addr)).await {
                    Err(_) => return Err("timeout".into()),
                    Ok(Err(e)) => last = os_error(&e),
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        return Ok((Box::new(s), Some(addr.ip())));
                    }
                }
            }
            Err(last)
        }
    }
}

fn sslhandshake(
    lua: &Lua,
    st: &Rc<RefCell<State>>,
    name: Value,
    verify: Value,
    marker: &Table,
) -> mlua::Result<MultiValue> {
    let name = match name {
        Value::Nil => None,
        Value::String(s) => Some(s.to_str()?.to_string()),
        other => {
            return Err(mlua::Error::runtime(bad_type(
                3,
                "sslhandshake",
                "string",
                type_name(&other),
            )));
        }
    };
    let verify = match verify {
        Value::Nil => false,
        Value::Boolean(b) => b,
        other => {
            return Err(mlua::Error::runtime(bad_type(
                4,
                "sslhandshake",
                "boolean",
                type_name(&other),
            )));
        }
    };
    let mut s = st.borrow_mut();
    refuse_downstream(&s, "sslhandshake")?;
    // A pooled connection that is TLS already: lua-nginx-module returns at once for a
    // handshaked connection (without checking `verify` again), and so does this.
    if s.tls
        && matches!(
            &s.conn,
            Conn::Open {
                reader: Some(_),
                writer: Some(_)
            }
        )
    {
        return true.into_lua_multi(lua);
    }
    let stream = match std::mem::replace(&mut s.conn, Conn::Connecting) {
        Conn::Open {
            reader: Some(r),
            writer: Some(w),
        } => r.unsplit(w),
        other => {
            let why = other.busy().unwrap_or("closed");
            s.conn = other;
            return (Value::Nil, why).into_lua_multi(lua);
        }
    };
    let server_name = match (&name, s.peer_ip) {
        (Some(n), _) => rustls_pki_types::ServerName::try_from(n.clone()).map_err(|_| format!("bad server name {n:?}")),
        (None, Some(ip)) => Ok(rustls_pki_types::ServerName::IpAddress(ip.into())),
        (None, None) => Err("no server name for the handshake".to_string()),
    };
    let server_name = match server_name {
        Ok(n) => n,
        Err(e) => {
            close(&mut s);
            return (Value::Nil, e).into_lua_multi(lua);
        }
    };
    let generation = s.generation;
    let timeout = s.connect_timeout.unwrap_or(DEFAULT_TIMEOUT);
    drop(s);
    let st = st.clone();
    pending::park(async move {
        let connector = tokio_rustls::TlsConnector::from(crate::proxy::tls::cosocket_config(verify));
        let result = tokio::time::timeout(timeout, connector.connect(server_name, stream)).await;
        answer(move |lua| {
            let mut s = st.borrow_mut();
            if s.generation != generation {
                return (Value::Nil, "closed").into_lua_multi(lua);
            }
            match result {
                Ok(Ok(tls)) => {
                    s.tls = true;
                    let stream: Stream = Box::new(tls);
                    let (reader, writer) = tokio::io::split(stream);
                    s.conn = Conn::Open {
                        reader: Some(reader),
                        writer: Some(writer),
                    };
                    true.into_lua_multi(lua)
                }
                Ok(Err(e)) => {
                    close(&mut s);
                    let why = match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                        Some(rustls::Error::InvalidCertificate(c)) => format!("certificate verify failed: {c:?}"),
                        _ => "handshake failed".to_string(),
                    };
                    (Value::Nil, why).into_lua_multi(lua)
                }
                Err(_) => {
                    close(&mut s);
                    (Value::Nil, "timeout").into_lua_multi(lua)
                }
            }
        })
    });
    Value::Table(marker.clone()).into_lua_multi(lua)
}

fn send(lua: &Lua, st: &Rc<RefCell<State>>, data: &Value, marker: &Table) -> mlua::Result<MultiValue> {
    let mut bytes = BytesMut::new();
    match data {
        Value::String(_) | Value::Number(_) | Value::Integer(_) | Value::Table(_) | Value::Nil | Value::Boolean(_) => {
            crate::lua::api::output::append_value(&mut bytes, data, "send", 2)?
        }
        other => {
            let what = "string, number, boolean, nil, or array table";
            return Err(mlua::Error::runtime(bad_type(2, "send", what, type_name(other))));
        }
    }
    crate::lua::budget::charge_bytes(bytes.len())?;
    let mut s = st.borrow_mut();
    let mut writer = match &mut s.conn {
        Conn::Open { writer, .. } => match writer.take() {
            Some(w) => w,
            None => return (Value::Nil, "socket busy writing").into_lua_multi(lua),
        },
        Conn::Connecting => return (Value::Nil, "socket busy connecting").into_lua_multi(lua),
        Conn::Closed => return (Value::Nil, "closed").into_lua_multi(lua),
    };
    if bytes.is_empty() {
        if let Conn::Open { writer: w, .. } = &mut s.conn {
            *w = Some(writer);
        }
        return 0.into_lua_multi(lua);
    }
    // Most sends fit the socket buffer: written now, with no yield.
    let len = bytes.len();
    match write_now(&mut writer, &mut bytes) {
        Poll::Ready(Ok(())) => {
            if let Conn::Open { writer: w, .. } = &mut s.conn {
                *w = Some(writer);
            }
            return len.into_lua_multi(lua);
        }
        Poll::Ready(Err(e)) => {
            close(&mut s);
            return (Value::Nil, os_error(&e)).into_lua_multi(lua);
        }
        Poll::Pending => {}
    }
    let generation = s.generation;
    let timeout = s.send_timeout.unwrap_or(DEFAULT_TIMEOUT);
    drop(s);
    let st = st.clone();
    pending::park(async move {
        let result = tokio::time::timeout(timeout, async {
            writer.write_all(&bytes).await?;
            writer.flush().await
        })
        .await;
        answer(move |lua| {
            let mut s = st.borrow_mut();
            if s.generation != generation {
                return (Value::Nil, "closed").into_lua_multi(lua);
            }
            match result {
                Ok(Ok(())) => {
                    if let Conn::Open { writer: w, .. } = &mut s.conn {
                        *w = Some(writer);
                    }
                    len.into_lua_multi(lua)
                }
                // Send errors, timeouts included, close the connection.
                Ok(Err(e)) => {
                    close(&mut s);
                    s.failed = true;
                    (Value::Nil, os_error(&e)).into_lua_multi(lua)
                }
                Err(_) => {
                    close(&mut s);
                    (Value::Nil, "timeout").into_lua_multi(lua)
                }
            }
        })
    });
    Value::Table(marker.clone()).into_lua_multi(lua)
}

/// Writes and flushes what the socket takes without waiting; `Pending`
/// leaves the rest in `bytes`.
fn write_now(writer: &mut WriteHalf<Stream>, bytes: &mut BytesMut) -> Poll<std::io::Result<()>> {
    let mut cx = Context::from_waker(Waker::noop());
    while !bytes.is_empty() {
        match Pin::new(&mut *writer).poll_write(&mut cx, bytes) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => bytes.advance(n),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    Pin::new(writer).poll_flush(&mut cx)
}

/// Reads what has already arrived into `buf`, without waiting, until it
/// answers `want`: `Ready(Ok)` with the answer, `Ready(Err)` at an error or
/// an end of stream that does not answer, `Pending` when more must come.
fn read_now(reader: &mut ReadHalf<Stream>, buf: &mut BytesMut, want: &Want) -> Poll<Result<(Vec<u8>, usize), String>> {
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if buf.len() > MAX_BUFFERED {
            return Poll::Ready(Err(format!("receive buffer full ({MAX_BUFFERED} bytes)")));
        }
        let mut chunk = [0u8; READ_CHUNK * 4];
        let mut rb = tokio::io::ReadBuf::new(&mut chunk);
        match Pin::new(&mut *reader).poll_read(&mut cx, &mut rb) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(os_error(&e))),
            Poll::Ready(Ok(())) => {
                let eof = rb.filled().is_empty();
                buf.extend_from_slice(rb.filled());
                if let Found::Data(data, used) = find(buf, want, eof) {
                    return Poll::Ready(Ok((data, used)));
                }
                if eof {
                    return Poll::Ready(Err("closed".into()));
                }
            }
        }
    }
}

/// What a receive waits for.
pub(crate) enum Want {
    Line,
    All,
    Bytes(usize),
    Any(usize),
    Until {
        it: Rc<RefCell<Until>>,
        size: Option<usize>,
    },
}

pub(crate) fn receive_pattern(pattern: &Value) -> mlua::Result<Want> {
    let bad = || mlua::Error::runtime(bad_argument(2, "receive", "bad pattern argument"));
    let size = |n: f64| {
        if n >= 0.0 {
            Ok(Want::Bytes(n as usize))
        } else {
            Err(bad())
        }
    };
    match pattern {
        Value::Nil => Ok(Want::Line),
        Value::Integer(n) => size(*n as f64),
        Value::Number(n) => size(*n),
        Value::String(s) => {
            let b = s.as_bytes();
            match &*b {
                b"*l" => Ok(Want::Line),
                b"*a" => Ok(Want::All),
                other => match std::str::from_utf8(other)
                    .ok()
                    .and_then(|t| t.trim().parse::<f64>().ok())
                {
                    Some(n) => size(n),
                    None => Err(bad()),
                },
            }
        }
        _ => Err(bad()),
    }
}

/// How a receive ends, judged on the buffer alone.
pub(crate) enum Found {
    /// The answer and how many buffered bytes it consumes.
    Data(Vec<u8>, usize),
    NeedMore,
}

/// Whether the buffer already answers `want`; `eof`: no more will come.
pub(crate) fn find(buf: &[u8], want: &Want, eof: bool) -> Found {
    match want {
        Want::Line => match memchr::memchr(b'\n', buf) {
            Some(i) => Found::Data(buf[..i].iter().copied().filter(|&b| b != b'\r').collect(), i + 1),
            None => Found::NeedMore,
        },
        Want::All if eof => Found::Data(buf.to_vec(), buf.len()),
        Want::All => Found::NeedMore,
        Want::Bytes(n) if buf.len() >= *n => Found::Data(buf[..*n].to_vec(), *n),
        Want::Bytes(_) => Found::NeedMore,
        Want::Any(_) if buf.is_empty() => Found::NeedMore,
        Want::Any(max) => {
            let n = buf.len().min(*max);
            Found::Data(buf[..n].to_vec(), n)
        }
        Want::Until { it, size } => {
            let mut it = it.borrow_mut();
            let plen = it.pattern.len();
            match memchr::memmem::find(buf, &it.pattern) {
                Some(i) => match size {
                    Some(size) if i > *size => Found::Data(buf[..*size].to_vec(), *size),
                    _ => {
                        let end = if it.inclusive { i + plen } else { i };
                        if size.is_some() {
                            it.at_boundary = true;
                        }
                        Found::Data(buf[..end].to_vec(), i + plen)
                    }
                },
                None => match size {
                    // Bytes that cannot start the boundary can go out now.
                    Some(size) => {
                        let safe = buf.len().saturating_sub(plen - 1);
                        if safe >= *size && *size > 0 {
                            Found::Data(buf[..*size].to_vec(), *size)
                        } else {
                            Found::NeedMore
                        }
                    }
                    None => Found::NeedMore,
                },
            }
        }
    }
}

fn receive(lua: &Lua, st: &Rc<RefCell<State>>, want: Want, marker: &Table) -> mlua::Result<MultiValue> {
    if matches!(want, Want::Bytes(0)) {
        let s = st.borrow();
        return match s.conn {
            Conn::Closed => (Value::Nil, "closed").into_lua_multi(lua),
            _ => lua.create_string("")?.into_lua_multi(lua),
        };
    }
    let mut s = st.borrow_mut();
    let mut reader = match &mut s.conn {
        Conn::Open { reader, .. } => match reader.take() {
            Some(r) => r,
            None => return (Value::Nil, "socket busy reading").into_lua_multi(lua),
        },
        Conn::Connecting => return (Value::Nil, "socket busy connecting").into_lua_multi(lua),
        Conn::Closed => return (Value::Nil, "closed").into_lua_multi(lua),
    };
    if let Found::Data(data, used) = find(&s.buf, &want, false) {
        s.buf.advance(used);
        if let Conn::Open { reader: r, .. } = &mut s.conn {
            *r = Some(reader);
        }
        return lua.create_string(&data)?.into_lua_multi(lua);
    }
    let mut buf = std::mem::take(&mut s.buf);
    // What already arrived may answer it: no yield then.
    match read_now(&mut reader, &mut buf, &want) {
        Poll::Ready(Ok((data, used))) => {
            buf.advance(used);
            s.buf = buf;
            if let Conn::Open { reader: r, .. } = &mut s.conn {
                *r = Some(reader);
            }
            return lua.create_string(&data)?.into_lua_multi(lua);
        }
        Poll::Ready(Err(e)) => {
            let partial = partial(&buf, &want);
            close(&mut s);
            s.failed = true;
            return (Value::Nil, e, lua.create_string(partial)?).into_lua_multi(lua);
        }
        Poll::Pending => {}
    }
    let generation = s.generation;
    let timeout = s.read_timeout.unwrap_or(DEFAULT_TIMEOUT);
    drop(s);
    let st = st.clone();
    pending::park(async move {
        let outcome = tokio::time::timeout(timeout, read_until_found(&mut reader, &mut buf, &want)).await;
        answer(move |lua| {
            let mut s = st.borrow_mut();
            if s.generation != generation {
                return (Value::Nil, "closed").into_lua_multi(lua);
            }
            match outcome {
                Ok(Ok((data, used))) => {
                    buf.advance(used);
                    s.buf = buf;
                    if let Conn::Open { reader: r, .. } = &mut s.conn {
                        *r = Some(reader);
                    }
                    lua.create_string(&data)?.into_lua_multi(lua)
                }
                // A read timeout leaves the connection open (lua-nginx-module
                // since v0.8.8); what arrived is returned as the partial.
                Err(_) => {
                    if let Conn::Open { reader: r, .. } = &mut s.conn {
                        *r = Some(reader);
                    }
                    (Value::Nil, "timeout", lua.create_string(partial(&buf, &want))?).into_lua_multi(lua)
                }
                Ok(Err(e)) => {
                    close(&mut s);
                    s.failed = true;
                    (Value::Nil, e, lua.create_string(partial(&buf, &want))?).into_lua_multi(lua)
                }
            }
        })
    });
    Value::Table(marker.clone()).into_lua_multi(lua)
}

/// The partial data of a failed receive: for `*l`, without its CRs.
pub(crate) fn partial(buf: &[u8], want: &Want) -> Vec<u8> {
    match want {
        Want::Line => buf.iter().copied().filter(|&b| b != b'\r').collect(),
        _ => buf.to_vec(),
    }
}

/// Reads into `buf` until it answers `want`; `Err("closed")` at an end of
/// stream that does not (`*a` ends there successfully).
async fn read_until_found(
    reader: &mut ReadHalf<Stream>,
    buf: &mut BytesMut,
    want: &Want,
) -> Result<(Vec<u8>, usize), String> {
    loop {
        if buf.len() > MAX_BUFFERED {
            return Err(format!("receive buffer full ({MAX_BUFFERED} bytes)"));
        }
        let chunk = match want {
            Want::Any(max) => (*max).min(READ_CHUNK * 4),
            Want::Bytes(n) => (*n - buf.len().min(*n)).clamp(1, READ_CHUNK * 16),
            _ => READ_CHUNK * 4,
        };
        buf.reserve(chunk);
        let n = reader.read_buf(buf).await.map_err(|e| os_error(&e))?;
        let eof = n == 0;
        if let Found::Data(data, used) = find(buf, want, eof) {
            return Ok((data, used));
        }
        if eof {
            return Err("closed".into());
        }
    }
}

fn setkeepalive(lua: &Lua, st: &Rc<RefCell<State>>, timeout: Option<f64>, size: Value) -> mlua::Result<MultiValue> {
    let size = match size {
        Value::Nil => None,
        Value::Integer(n) if n > 0 => Some(n as usize),
        Value::Number(n) if n >= 1.0 => Some(n as usize),
        other => {
            let shown = lua
                .coerce_string(other)?
                .map(|s| s.to_string_lossy())
                .unwrap_or_default();
            return Err(mlua::Error::runtime(bad_argument(
                3,
                "?",
                &format!("bad \"pool_size\" option value: {shown}"),
            )));
        }
    };
    if timeout.is_some_and(|t| t.is_nan() || t < 0.0) {
        return Err(mlua::Error::runtime(bad_argument(
            2,
            "setkeepalive",
            "bad timeout value",
        )));
    }
    let mut s = st.borrow_mut();
    refuse_downstream(&s, "setkeepalive")?;
    let stream = match std::mem::replace(&mut s.conn, Conn::Closed) {
        Conn::Open {
            reader: Some(r),
            writer: Some(w),
        } if s.buf.is_empty() => r.unsplit(w),
        Conn::Open {
            reader: Some(r),
            writer: Some(w),
        } => {
            s.conn = Conn::Open {
                reader: Some(r),
                writer: Some(w),
            };
            return (Value::Nil, "unread data in buffer").into_lua_multi(lua);
        }
        Conn::Closed => return (Value::Nil, "closed").into_lua_multi(lua),
        busy => {
            let why = busy.busy().unwrap_or("socket busy");
            s.conn = busy;
            return (Value::Nil, why).into_lua_multi(lua);
        }
    };
    s.generation += 1;
    let idle = match timeout {
        None => Some(DEFAULT_KEEPALIVE),
        Some(0.0) => None,
        Some(t) => Some(Duration::from_secs_f64((t / 1000.0).min(1e9))),
    };
    let size = size.unwrap_or(s.pool_size);
    let slot = s.slot.take();
    if let Some(key) = s.pool.clone() {
        let pooled = Pooled {
            stream,
            reused: s.reused,
            slot,
            tls: s.tls,
        };
        s.sockets.pools.borrow_mut().put(key, pooled, idle, size);
    }
    1.into_lua_multi(lua)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(f: Found) -> Option<(Vec<u8>, usize)> {
        match f {
            Found::Data(d, n) => Some((d, n)),
            Found::NeedMore => None,
        }
    }

    #[test]
    fn a_line_ends_at_lf_and_loses_every_cr() {
        assert_eq!(
            data(find(b"a\rb\r\nrest", &Want::Line, false)),
            Some((b"ab".to_vec(), 5))
        );
        assert!(data(find(b"no end", &Want::Line, false)).is_none());
        assert_eq!(partial(b"x\ry", &Want::Line), b"xy");
    }

    #[test]
    fn receiveuntil_with_a_size_reads_pieces_then_stops_at_the_boundary() {
        let it = Rc::new(RefCell::new(Until {
            pattern: b"\r\n--abcedhb".to_vec(),
            inclusive: false,
            at_boundary: false,
        }));
        let mut buf: Vec<u8> = b"hello, world! -agentzh\r\n--abcedhb blah blah".to_vec();
        let mut pieces = Vec::new();
        loop {
            let want = Want::Until {
                it: it.clone(),
                size: Some(4),
            };
            let (piece, used) = data(find(&buf, &want, false)).unwrap();
            buf.drain(..used);
            pieces.push(String::from_utf8(piece).unwrap());
            if it.borrow().at_boundary {
                break;
            }
        }
        assert_eq!(pieces, ["hell", "o, w", "orld", "! -a", "gent", "zh"]);
        assert_eq!(buf, b" blah blah");
    }

    #[test]
    fn receiveuntil_inclusive_keeps_the_boundary() {
        let it = Rc::new(RefCell::new(Until {
            pattern: b"--".to_vec(),
            inclusive: true,
            at_boundary: false,
        }));
        let want = Want::Until { it, size: None };
        assert_eq!(data(find(b"ab--cd", &want, false)), Some((b"ab--".to_vec(), 4)));
    }
}
