//! The request as it goes upstream, as nginx's proxy module builds it: the
//! URI (`proxy_pass` with or without a URI part), the headers after Lua
//! changed them, minus hop-by-hop headers, plus Host and the forwarding
//! headers ingress-nginx sets.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::upstream::{HostHeader, Upstream};
use crate::request::{RequestState, normalize_path};

/// Hop-by-hop headers (RFC 9110 §7.6.1), and those a proxy answers itself
/// (`Expect`) or recomputes (`Content-Length`, `Host`).
const NOT_FORWARDED: [HeaderName; 10] = [
    header::CONNECTION,
    header::HeaderName::from_static("keep-alive"),
    header::HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::EXPECT,
    header::CONTENT_LENGTH,
    header::HOST,
];

/// Set by the proxy from the connection; a client's own values are replaced.
const FORWARDING: [HeaderName; 4] = [
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
];

/// Whether the URI was changed since the client sent it (`ngx.req.set_uri`,
/// `set_uri_args`, `ngx.exec`): then nginx passes the normalized, escaped URI
/// rather than the client's bytes.
fn uri_changed(r: &RequestState) -> bool {
    let (path, query) = match r.request_uri.iter().position(|&b| b == b'?') {
        Some(i) => (&r.request_uri[..i], Some(&r.request_uri[i + 1..])),
        None => (&r.request_uri[..], None),
    };
    normalize_path(path).as_deref() != Some(&r.uri[..]) || query != r.args.as_deref()
}

/// The request target sent upstream. `prefix` is the part of the URI the
/// location matched (a prefix location's path, an exact location's URI;
/// `None` for a regex location, where nginx allows no URI part).
pub fn target(r: &RequestState, up: &Upstream, prefix: Option<&[u8]>) -> Vec<u8> {
    let changed = uri_changed(r);
    let replace = match (&up.uri, prefix) {
        // nginx: after a URI change in the location, the URI part is ignored.
        (Some(part), Some(prefix)) if !changed => Some((part, prefix)),
        _ => None,
    };
    let Some((part, prefix)) = replace else {
        if !changed {
            return r.request_uri.clone();
        }
        let mut out = escape(&r.uri);
        append_args(&mut out, r.args.as_deref());
        return out;
    };
    let rest = r.uri.strip_prefix(prefix).unwrap_or(&r.uri[..]);
    let mut out = part.clone();
    out.extend(escape(rest));
    append_args(&mut out, r.args.as_deref());
    out
}

fn append_args(out: &mut Vec<u8>, args: Option<&[u8]>) {
    if let Some(args) = args {
        out.push(b'?');
        out.extend_from_slice(args);
    }
}

/// nginx's `NGX_ESCAPE_URI`: what may not stand in a request line's path.
fn escape(path: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(path.len());
    for &b in path {
        if b <= 0x20 || b >= 0x7f || matches!(b, b'#' | b'%' | b'?' | b'"') {
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        } else {
            out.push(b);
        }
    }
    out
}

/// Whether the client asks to switch protocols (WebSocket and the like) on
/// HTTP/1.1: `Connection: upgrade` with an `Upgrade` header.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The headers sent upstream. `proxy_host` is the peer's `$proxy_host`;
/// `body_len` the length of a body the proxy holds whole (`None` while the
/// client's body streams through, which keeps the client's length, if any).
pub fn headers(r: &RequestState, up: &Upstream, proxy_host: &str, body_len: Option<u64>, upgrade: bool) -> HeaderMap {
    let named: Vec<HeaderName> = connection_tokens(&r.headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    let mut out = HeaderMap::with_capacity(r.headers.len() + 6);
    let mut xff: Option<Vec<u8>> = None;
    for (name, value) in &r.headers {
        if NOT_FORWARDED.contains(name) || FORWARDING.contains(name) || named.contains(name) {
            continue;
        }
        if name.as_str() == "x-forwarded-for" {
            let joined = xff.get_or_insert_with(Vec::new);
            if !joined.is_empty() {
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(value.as_bytes());
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    let host = match &up.host {
        HostHeader::Client => r
            .headers
            .get(header::HOST)
            .cloned()
            .or_else(|| HeaderValue::from_bytes(&r.host()).ok()),
        HostHeader::Proxy => HeaderValue::from_str(proxy_host).ok(),
        HostHeader::Literal(v) => Some(v.clone()),
    };
    if let Some(host) = host {
        out.insert(header::HOST, host);
    }
    let ip = r.remote_addr.ip().to_string();
    // `$proxy_add_x_forwarded_for`: the client's list, then the client.
    let mut forwarded = xff.unwrap_or_default();
    if !forwarded.is_empty() {
        forwarded.extend_from_slice(b", ");
    }
    forwarded.extend_from_slice(ip.as_bytes());
    let value = |b: &[u8]| HeaderValue::from_bytes(b).ok();
    let set = |out: &mut HeaderMap, name: &'static str, v: Option<HeaderValue>| {
        if let Some(v) = v {
            out.insert(HeaderName::from_static(name), v);
        }
    };
    set(&mut out, "x-forwarded-for", value(&forwarded));
    set(&mut out, "x-real-ip", value(ip.as_bytes()));
    set(&mut out, "x-forwarded-proto", value(r.scheme.as_bytes()));
    // The client's Host as sent, port included (ingress-nginx's `$best_http_host`).
    let client_host = r.headers.get(header::HOST).cloned().or_else(|| value(&r.host()));
    set(&mut out, "x-forwarded-host", client_host);
    set(
        &mut out,
        "x-forwarded-port",
        value(r.server_addr.port().to_string().as_bytes()),
    );
    // gRPC needs `TE: trailers` end to end; it is the one TE value passed.
    if r.headers.get_all(header::TE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
    }) {
        out.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade && let Some(u) = r.headers.get(header::UPGRADE) {
        out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        out.insert(header::UPGRADE, u.clone());
    }
    match body_len {
        Some(len) if len > 0 || method_has_body(&r.method) || r.headers.contains_key(header::CONTENT_LENGTH) => {
            out.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        Some(_) => {}
        None => {
            if let Some(len) = r.headers.get(header::CONTENT_LENGTH)
                && !r.headers.contains_key(header::TRANSFER_ENCODING)
            {
                out.insert(header::CONTENT_LENGTH, len.clone());
            }
        }
    }
    out
}

fn method_has_body(m: &http::Method) -> bool {
    matches!(*m, http::Method::POST | http::Method::PUT | http::Method::PATCH)
}

/// Response headers an upstream sends that do not go on to the client:
/// hop-by-hop ones, those named in its `Connection`, and what nginx's
/// `proxy_hide_header` hides by default (`Date`, `Server`, `X-Pad`,
/// `X-Accel-*`, which the proxy sets or interprets itself).
pub fn response_headers(mut h: HeaderMap, upgrade: bool) -> HeaderMap {
    let named: Vec<HeaderName> = connection_tokens(&h)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| !(upgrade && *n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::DATE,
        header::SERVER,
        HeaderName::from_static("x-pad"),
    ] {
        h.remove(n);
    }
    if !upgrade {
        h.remove(header::UPGRADE);
    }
    let accel: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("x-accel-"))
        .cloned()
        .collect();
    for n in accel {
        h.remove(n);
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RequestState;

    fn request(raw: &str) -> RequestState {
        let (path, query) = match raw.split_once('?') {
            Some((p, q)) => (p, Some(q.as_bytes().to_vec())),
            None => (raw, None),
        };
        RequestState::new(
            "10.0.0.9:5555".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
            http::Method::GET,
            http::Version::HTTP_11,
            raw.as_bytes().to_vec(),
            normalize_path(path.as_bytes()).unwrap(),
            query,
            HeaderMap::new(),
        )
    }

    fn upstream(uri: Option<&str>) -> Upstream {
        let u = moongate_proto::v1::Upstream {
            url: "http://127.0.0.1:9".into(),
            uri: uri.map(String::from),
            ..Default::default()
        };
        Upstream::from_proto(&u, "ns").unwrap()
    }

    #[test]
    fn without_a_uri_part_the_client_bytes_pass_unchanged() {
        let r = request("/a/./b//c?x=%20y");
        assert_eq!(target(&r, &upstream(None), Some(b"/a/")), b"/a/./b//c?x=%20y");
    }

    #[test]
    fn a_uri_part_replaces_the_matched_prefix_of_the_normalized_uri() {
        let r = request("/api/v1/../users%20x?id=1");
        assert_eq!(
            target(&r, &upstream(Some("/new/")), Some(b"/api/")),
            b"/new/users%20x?id=1"
        );
        let r = request("/api");
        assert_eq!(target(&r, &upstream(Some("/")), Some(b"/api")), b"/");
    }

    #[test]
    fn a_changed_uri_passes_whole_and_escaped_ignoring_the_uri_part() {
        let mut r = request("/api/x?a=1");
        r.uri = b"/other path".to_vec();
        r.args = Some(b"b=2".to_vec());
        assert_eq!(
            target(&r, &upstream(Some("/new/")), Some(b"/api/")),
            b"/other%20path?b=2"
        );
    }

    #[test]
    fn forwarding_headers_are_appended_or_replaced_and_hop_by_hop_removed() {
        let mut r = request("/");
        for (n, v) in [
            ("host", "shop.test:8080"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-real-ip", "6.6.6.6"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "drop me"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers, deflate"),
            ("expect", "100-continue"),
            ("x-kept", "yes"),
        ] {
            r.headers
                .append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let h = headers(&r, &upstream(None), "127.0.0.1:9", None, false);
        assert_eq!(h["host"], "shop.test:8080");
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.0.0.9");
        assert_eq!(h["x-real-ip"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.test:8080");
        assert_eq!(h["x-forwarded-port"], "8080");
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-kept"], "yes");
        for gone in ["connection", "x-secret", "keep-alive", "expect"] {
            assert!(!h.contains_key(gone), "{gone} was forwarded");
        }
    }
}
