//! Per-request state shared by the phase driver and the `ngx` Lua API: plain
//! data, with no Lua in it. How the Lua API reaches the request is
//! [`crate::context`]'s business.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};

use crate::config::{LocationRef, Phase, ServerId};
use crate::lua::budget::{Account, HookHandle};

/// What a handler asked the driver to do when it ended its coroutine early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `ngx.exit(status)`; 0 (`ngx.OK`) ends only the current phase.
    Status(i64),
    /// `ngx.exec(uri, args)`: internal redirect.
    Exec { uri: Vec<u8>, args: Option<Vec<u8>> },
}

/// The request body as far as it has been read.
#[derive(Debug, Default)]
pub enum Body {
    /// Not read yet; the stream is still in the driver.
    #[default]
    Unread,
    Read(Bytes),
    Discarded,
}

#[derive(Debug)]
pub struct RequestState {
    pub remote_addr: SocketAddr,
    pub server_addr: SocketAddr,
    pub scheme: &'static str,
    pub method: Method,
    pub version: Version,
    /// As the client sent it: `/a%20b?x=1`.
    pub request_uri: Vec<u8>,
    /// Decoded and normalized path (`ngx.var.uri`).
    pub uri: Vec<u8>,
    /// The query string without `?` (`ngx.var.args`).
    pub args: Option<Vec<u8>>,
    pub headers: HeaderMap,
    pub body: Body,
    /// The body `ngx.req.init_body` started and `append_body` fills, until `finish_body`.
    pub new_body: Option<bytes::BytesMut>,
    pub start_time: f64,
    pub internal: bool,

    /// The virtual server the request arrived on; it never leaves it.
    pub server: ServerId,
    /// The route (index into the config) whose handler sent the request to
    /// its next location: the parent of a subrequest, the caller of
    /// `ngx.exec`. `None` for a client request.
    pub caller: Option<usize>,
    pub location: LocationRef,
    /// "route default/hello, location /hello", for log lines.
    pub site: Arc<str>,
    pub phase: Phase,
    /// `set` variables of the location, and ones Lua created with `ngx.var.x = …`
    /// for declared names.
    pub vars: Vec<(String, Option<Vec<u8>>)>,
    /// `$1`… of a regex location's match.
    pub captures: Vec<Option<Vec<u8>>>,
    /// The location's header filter, taken when the headers are sent.
    pub header_filter: Option<mlua::Function>,
    pub default_type: Option<String>,
    /// The response goes out without Content-Type rather than with
    /// `default_type`: a handler removed it (`ngx.header.content_type = nil`)
    /// or an upstream sent none (nginx adds no type to a proxied response).
    pub no_default_type: bool,

    /// 0 until set.
    pub status: u16,
    pub resp_headers: HeaderMap,
    /// Set at the first output: headers can no longer change.
    pub headers_sent: bool,
    /// Output not yet handed to the body filters / the connection.
    pub output: Output,
    /// `ngx.eof()` was called or the content phase finished.
    pub eof: bool,
    pub exit: Option<Exit>,
    /// `ngx.ctx`, created on first use.
    pub ctx: Option<mlua::Table>,
    /// `ngx.arg[1]`, `ngx.arg[2]` in body_filter: the chunk and whether it is the last.
    pub filter_arg: (Bytes, bool),
    /// The CPU account of this request's handlers (`lua::budget`), created at
    /// the first handler and reset at each; a subrequest shares its parent's,
    /// so a whole subrequest tree runs on one budget.
    pub account: Option<Rc<Account>>,
    /// The hook of the VM of the current location's route, for `account`.
    pub hook: HookHandle,
    /// Close the connection without a response (`ngx.exit(444)`).
    pub close: bool,
    /// `ngx.req.socket(true)` was called (once per request).
    pub raw_socket_taken: bool,
    /// How deep this subrequest is (0 for a main request).
    pub subrequest_depth: u8,
    /// Subrequests this request's tree has started so far, shared with its
    /// subrequests (nginx caps a request at 65535).
    pub subrequests: Rc<std::cell::Cell<u32>>,
    /// Variables a subrequest was given (`vars`, `copy_all_vars`), applied when
    /// it enters its location.
    pub preset_vars: Vec<(String, Vec<u8>)>,
    /// Internal redirects so far (`ngx.exec`), bounded like nginx's 10.
    pub redirects: u8,
    /// The proxy's tries so far (`$upstream_addr` and friends).
    pub upstream_tries: Vec<crate::proxy::UpstreamTry>,
    /// Set while a `balancer` handler runs.
    pub balancer: Option<crate::proxy::BalancerCall>,
}

impl RequestState {
    /// A request about to be matched to a location.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        remote_addr: SocketAddr,
        server_addr: SocketAddr,
        method: Method,
        version: Version,
        request_uri: Vec<u8>,
        uri: Vec<u8>,
        args: Option<Vec<u8>>,
        headers: HeaderMap,
    ) -> RequestState {
        RequestState {
            remote_addr,
            server_addr,
            scheme: "http",
            method,
            version,
            request_uri,
            uri,
            args,
            headers,
            body: Body::Unread,
            new_body: None,
            start_time: 0.0,
            internal: false,
            server: ServerId::ANY,
            caller: None,
            location: LocationRef::NONE,
            site: Arc::from(""),
            phase: Phase::Rewrite,
            vars: Vec::new(),
            captures: Vec::new(),
            header_filter: None,
            default_type: None,
            no_default_type: false,
            status: 0,
            resp_headers: HeaderMap::new(),
            headers_sent: false,
            output: Output::default(),
            eof: false,
            exit: None,
            ctx: None,
            filter_arg: (Bytes::new(), false),
            close: false,
            raw_socket_taken: false,
            account: None,
            hook: HookHandle::NONE,
            subrequest_depth: 0,
            subrequests: Rc::default(),
            preset_vars: Vec::new(),
            redirects: 0,
            upstream_tries: Vec::new(),
            balancer: None,
        }
    }

    pub fn set_var(&mut self, name: &str, value: Option<Vec<u8>>) -> bool {
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => {
                *v = value;
                true
            }
            None => false,
        }
    }

    /// A `set` variable: `None` if not declared, `Some(None)` if set to nil.
    pub fn var(&self, name: &str) -> Option<Option<&[u8]>> {
        self.vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_deref())
    }

    /// `$host`: the Host header without port, lowercased; else the server name.
    pub fn host(&self) -> Vec<u8> {
        self.headers
            .get(http::header::HOST)
            .and_then(|v| host_of(v.as_bytes()))
            .unwrap_or_else(|| b"localhost".to_vec())
    }

    /// The response status as it will be sent.
    pub fn effective_status(&self) -> u16 {
        if self.status == 0 { 200 } else { self.status }
    }

    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers.get(name)
    }

    /// Sets or appends a response header, as `ngx.header` does.
    pub fn set_resp_header(&mut self, name: HeaderName, values: Vec<HeaderValue>) {
        self.resp_headers.remove(&name);
        for v in values {
            self.resp_headers.append(name.clone(), v);
        }
    }
}

/// Output not yet handed on: one buffer (a single allocation for a typical
/// response), plus where each `ngx.print` ended when a body filter needs the
/// chunks one by one.
#[derive(Debug, Default)]
pub struct Output {
    buf: BytesMut,
    ends: Vec<usize>,
    /// Whether the location has a body filter (which sees each print's chunk).
    pub keep_chunks: bool,
}

impl Output {
    pub fn buf(&mut self) -> &mut BytesMut {
        if self.buf.capacity() == 0 {
            self.buf.reserve(512);
        }
        &mut self.buf
    }

    /// Ends the current chunk (one `ngx.print` call).
    pub fn end_chunk(&mut self) {
        if self.keep_chunks && self.ends.last().copied().unwrap_or(0) != self.buf.len() {
            self.ends.push(self.buf.len());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf().extend_from_slice(data);
        self.end_chunk();
    }

    /// Everything, as one buffer.
    pub fn take(&mut self) -> Bytes {
        self.ends.clear();
        self.buf.split().freeze()
    }

    /// The chunks as they were printed.
    pub fn take_chunks(&mut self) -> Vec<Bytes> {
        let mut all = self.buf.split();
        let mut chunks = Vec::with_capacity(self.ends.len().max(1));
        let mut start = 0;
        for end in self.ends.drain(..) {
            chunks.push(all.split_to(end - start).freeze());
            start = end;
        }
        if !all.is_empty() {
            chunks.push(all.freeze());
        }
        chunks
    }
}

pub type SharedRequest = Rc<RefCell<RequestState>>;

/// `$host` of a Host header value: without the port or a trailing dot,
/// lowercase; `None` where nginx's `ngx_http_validate_host` answers 400
/// (empty, `/`, NUL, a leading dot or `..`, an unclosed `[`).
pub fn host_of(raw: &[u8]) -> Option<Vec<u8>> {
    let end = if raw.first() == Some(&b'[') {
        raw.iter().position(|&b| b == b']')? + 1
    } else {
        raw.iter().position(|&b| b == b':').unwrap_or(raw.len())
    };
    let host = &raw[..end];
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty()
        || host.first() == Some(&b'.')
        || host.iter().any(|&b| b == b'/' || b == 0)
        || host.windows(2).any(|w| w == b"..")
    {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

/// Splits `path?query` and decodes/normalizes the path as nginx does for `$uri`:
/// percent-decoding, merging slashes, resolving `.` and `..`. `None` if the path
/// climbs above the root or is not absolute (nginx answers 400).
pub fn normalize_path(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.first() != Some(&b'/') {
        return None;
    }
    let plain = !raw.contains(&b'%') && !raw.windows(2).any(|w| w == b"//" || w == b"/.");
    if plain {
        return Some(raw.to_vec());
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode(raw).collect();
    let mut out: Vec<u8> = Vec::with_capacity(decoded.len());
    for segment in decoded.split(|&b| b == b'/').skip(1) {
        match segment {
            b"" | b"." => {
                if !out.ends_with(b"/") {
                    out.push(b'/');
                }
            }
            b".." => {
                if out.ends_with(b"/") {
                    out.pop();
                }
                let cut = out.iter().rposition(|&b| b == b'/')?;
                out.truncate(cut + 1);
            }
            s => {
                if !out.ends_with(b"/") {
                    out.push(b'/');
                }
                out.extend_from_slice(s);
            }
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::normalize_path;

    fn n(s: &str) -> Option<String> {
        normalize_path(s.as_bytes()).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn normalizes_like_nginx() {
        assert_eq!(n("/a/b").as_deref(), Some("/a/b"));
        assert_eq!(n("/a//b/").as_deref(), Some("/a/b/"));
        assert_eq!(n("/a/./b/../c").as_deref(), Some("/a/c"));
        assert_eq!(n("/a%20b").as_deref(), Some("/a b"));
        assert_eq!(n("/a/..").as_deref(), Some("/"));
        assert_eq!(n("/.."), None);
        assert_eq!(n("x"), None);
    }
}
