//! Cosockets: `ngx.socket.tcp`, `ngx.socket.udp` and `ngx.socket.connect`,
//! lua-nginx-module's non-blocking sockets, on tokio.
//!
//! Every operation that waits parks a future (`super::pending`) and yields
//! to the driver of its Lua thread, so a worker never blocks and other
//! requests and light threads run meanwhile. Results and error strings are
//! lua-nginx-module's (`nil, "timeout"`, `nil, "closed", partial`, …), since
//! libraries such as lua-resty-redis match on them.
//!
//! A cosocket in a multi-tenant gateway is an SSRF primitive, so:
//! - every address is checked against the operator's egress policy after
//!   name resolution (DNS rebinding cannot get around it), and a refusal is
//!   `nil, err`, logged and counted;
//! - `unix:` paths are refused unless the operator allowed that path;
//! - keep-alive pools are per route: a connection one route authenticated is
//!   never handed to another route, even of the same namespace.
//!
//! One [`Sockets`] per tenant VM holds the pools and the resolver cache.

mod pool;
mod resolve;
pub(crate) mod tcp;
mod udp;

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mlua::{Lua, Table};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::egress::EgressPolicy;

/// lua-nginx-module's `lua_socket_*` defaults.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);
const DEFAULT_POOL_SIZE: usize = 30;
/// `lua_socket_buffer_size`: the most one read asks the kernel for.
const READ_CHUNK: usize = 4096;
/// Bytes a receive may hold while it looks for a line end or a boundary, or
/// reads `*a`; past it the receive fails instead of exhausting the worker.
const MAX_BUFFERED: usize = 64 << 20;

/// Open cosockets one tenant VM may hold by default (`--cosocket-max-open`).
pub const DEFAULT_MAX_OPEN: usize = 1024;

/// Where cosockets may connect: the proxy's egress policy plus the `unix:`
/// paths the operator allowed; and how many one tenant may hold open.
#[derive(Clone, Debug)]
pub struct SocketPolicy {
    pub egress: Arc<EgressPolicy>,
    pub unix_allow: Vec<PathBuf>,
    /// Connections (TCP, unix, UDP; in use, connecting or pooled) one
    /// tenant VM holds at most, so that no tenant can take all of the
    /// worker's file descriptors from the others.
    pub max_open: usize,
}

impl Default for SocketPolicy {
    fn default() -> Self {
        SocketPolicy {
            egress: Arc::default(),
            unix_allow: Vec::new(),
            max_open: DEFAULT_MAX_OPEN,
        }
    }
}

/// One open cosocket counted against its tenant's `max_open`; released on
/// drop, wherever the connection went (a pool, a TLS stream, the collector).
pub struct Permit(Rc<Cell<usize>>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// A stream that holds its permit for as long as it lives.
struct Counted<S> {
    inner: S,
    _permit: Permit,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// `stream`, counted by `permit` until it is dropped.
fn counted(stream: tcp::Stream, permit: Permit) -> tcp::Stream {
    Box::new(Counted {
        inner: stream,
        _permit: permit,
    })
}

impl SocketPolicy {
    fn unix_allowed(&self, path: &str) -> bool {
        let path = std::path::Path::new(path);
        // `..` would climb out of an allowed directory.
        if !path.is_absolute() || path.components().any(|c| c == std::path::Component::ParentDir) {
            return false;
        }
        self.unix_allow
            .iter()
            .any(|p| path == p || path.starts_with(p) && p.is_dir())
    }
}

/// A tenant VM's cosocket state.
pub struct Sockets {
    policy: SocketPolicy,
    /// Open connections, against `policy.max_open`.
    open: Rc<Cell<usize>>,
    pools: std::cell::RefCell<pool::Pools>,
    resolver: resolve::Resolver,
}

impl Sockets {
    pub fn new(policy: SocketPolicy) -> Rc<Sockets> {
        Rc::new(Sockets {
            policy,
            open: Rc::default(),
            pools: Default::default(),
            resolver: resolve::Resolver::default(),
        })
    }

    /// The addresses of `host` the egress policy allows, in the resolver's
    /// order; each refusal is logged and counted. `Err`: resolution failed,
    /// or every address was refused (the last refusal says why).
    async fn allowed(&self, host: &str, port: u16, timeout: Duration, site: &str) -> Result<Vec<SocketAddr>, String> {
        let mut last = String::from("no address");
        let mut allowed = Vec::new();
        for ip in self.resolver.resolve(host, timeout).await? {
            let addr = SocketAddr::new(ip, port);
            match self.policy.egress.check(addr) {
                Ok(()) => allowed.push(addr),
                Err(refusal) => {
                    crate::metrics::cosocket_refused();
                    tracing::error!("{site}cosocket connect to {host}:{port}: {refusal}");
                    last = refusal.to_string();
                }
            }
        }
        if allowed.is_empty() { Err(last) } else { Ok(allowed) }
    }

    /// A permit for one more open connection, or the refusal (logged) when
    /// the tenant holds `max_open` already.
    fn permit(&self, site: &str) -> Result<Permit, String> {
        let open = self.open.get();
        if open >= self.policy.max_open {
            let why =
                format!("too many open sockets: this tenant holds {open} (the operator's limit, --cosocket-max-open)");
            tracing::error!("{site}cosocket refused: {why}");
            return Err(why);
        }
        self.open.set(open + 1);
        Ok(Permit(self.open.clone()))
    }

    /// Whether a `unix:` peer is allowed; a refusal is logged and counted.
    fn check_unix(&self, path: &str, site: &str) -> Result<(), String> {
        if self.policy.unix_allowed(path) {
            return Ok(());
        }
        crate::metrics::cosocket_refused();
        tracing::error!(
            "{site}cosocket connect to unix:{path} refused: unix sockets are not allowed (allow a directory with --egress-allow-unix)"
        );
        Err(format!(
            "connect to unix:{path} refused: unix sockets are not allowed by the egress policy"
        ))
    }
}

/// Registers the VM-wide primitives (`raw.socket`) the prelude wraps.
pub fn register(lua: &Lua, raw: &Table, sockets: &Rc<Sockets>, yield_marker: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    tcp::register(lua, &t, sockets, yield_marker)?;
    udp::register(lua, &t, sockets, yield_marker)?;
    raw.set("socket", t)?;
    Ok(())
}

/// An OS error as nginx words it: `strerror` with a lowercase first letter
/// ("connection refused", "connection reset by peer").
fn os_error(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".to_string(),
        ConnectionReset => "connection reset by peer".to_string(),
        BrokenPipe => "broken pipe".to_string(),
        TimedOut => "timeout".to_string(),
        UnexpectedEof => "closed".to_string(),
        _ => {
            let s = e.to_string();
            let s = match s.find(" (os error") {
                Some(i) => s[..i].to_string(),
                None => s,
            };
            let mut chars = s.chars();
            match chars.next() {
                Some(c) => c.to_lowercase().chain(chars).collect(),
                None => "error".to_string(),
            }
        }
    }
}

/// A port argument read as `luaL_checkinteger` reads it (a number or a
/// numeric string; anything else raises). `Ok(Err(msg))` is a number out of
/// range, which lua-nginx-module answers with `nil, "bad port number: N"`.
fn port_arg(v: &mlua::Value, narg: usize, func: &str) -> mlua::Result<Result<u16, String>> {
    use mlua::Value;
    let n = match v {
        Value::Integer(n) => *n,
        Value::Number(n) => *n as i64,
        Value::String(s) => match s.to_str()?.trim().parse::<f64>() {
            Ok(n) => n as i64,
            Err(_) => {
                return Err(mlua::Error::runtime(crate::lua::args::bad_type(
                    narg, func, "number", "string",
                )));
            }
        },
        other => {
            let got = crate::lua::args::type_name(other);
            return Err(mlua::Error::runtime(crate::lua::args::bad_type(
                narg, func, "number", got,
            )));
        }
    };
    Ok(u16::try_from(n).map_err(|_| format!("bad port number: {n}")))
}

/// Milliseconds as a timeout: 0 (or nil) is "the default", as in
/// lua-nginx-module, which truncates the number to an integer and refuses one
/// that does not fit in 31 bits (negative, or 2^31 and up) with a plain
/// "bad timeout value".
fn timeout_ms(v: Option<f64>) -> mlua::Result<Option<Duration>> {
    let ms = v.unwrap_or(0.0) as i64;
    if ms >> 31 != 0 {
        return Err(mlua::Error::runtime("bad timeout value"));
    }
    Ok((ms > 0).then(|| Duration::from_millis(ms as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_31_bit_milliseconds_and_zero_is_the_default() {
        assert_eq!(timeout_ms(None).unwrap(), None);
        assert_eq!(timeout_ms(Some(0.9)).unwrap(), None);
        assert_eq!(timeout_ms(Some(150.7)).unwrap(), Some(Duration::from_millis(150)));
        let max = f64::from(i32::MAX);
        assert_eq!(
            timeout_ms(Some(max)).unwrap(),
            Some(Duration::from_millis(i32::MAX as u64))
        );
        for bad in [max + 1.0, -1.0, 1e300] {
            let err = timeout_ms(Some(bad)).unwrap_err().to_string();
            assert_eq!(err, "runtime error: bad timeout value", "{bad}");
        }
    }

    #[test]
    fn os_errors_read_as_nginx_words_them() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(os_error(&refused), "connection refused");
        let unreachable = std::io::Error::from_raw_os_error(libc::EHOSTUNREACH);
        assert_eq!(os_error(&unreachable), "no route to host");
    }

    #[test]
    fn a_unix_path_is_allowed_only_under_an_allowed_one() {
        let dir = std::env::temp_dir();
        let policy = SocketPolicy {
            unix_allow: vec![dir.clone()],
            ..SocketPolicy::default()
        };
        assert!(policy.unix_allowed(dir.join("redis.sock").to_str().unwrap()));
        assert!(!policy.unix_allowed("/var/run/docker.sock"));
        assert!(!policy.unix_allowed(dir.join("../var/run/docker.sock").to_str().unwrap()));
        assert!(!SocketPolicy::default().unix_allowed(dir.join("x").to_str().unwrap()));
    }
}
