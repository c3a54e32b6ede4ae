//! Sending the response head, and with it `header_filter_by_lua`: it runs
//! once, when the head is sent — at
//! the first output, `ngx.send_headers()`, or the end of the content phase —
//! with `ngx.status` and `ngx.header` still writable. The handler is put on
//! the request when the location is entered (`RequestState::header_filter`)
//! and run here, at the same moment nginx runs it, even in the middle of a
//! content handler. nginx's not_modified filter (304/412 for conditional
//! requests against `Last-Modified`/`ETag`) runs after it.

use http::header::{ETAG, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_UNMODIFIED_SINCE, LAST_MODIFIED};

use crate::config::Phase;
use crate::context::call_plain;
use crate::request::{Exit, RequestState, SharedRequest};
use crate::response::date::parse_http_time;

/// Marks the response head sent and runs the header filter, once.
pub fn send_header(req: &SharedRequest) {
    let filter = {
        let mut r = req.borrow_mut();
        if r.headers_sent {
            return;
        }
        r.headers_sent = true;
        default_type(&mut r);
        r.header_filter.take()
    };
    if let Some(filter) = filter {
        let result = call_plain(req, Phase::HeaderFilter, &filter);
        let mut r = req.borrow_mut();
        match result {
            Err(e) => {
                // nginx finalizes the request with an error: no response goes out.
                crate::lua::log_error(&r.site, Phase::HeaderFilter, &e);
                r.status = 500;
                r.close = true;
            }
            Ok(()) if r.exit == Some(Exit::Status(444)) => r.close = true,
            // `ngx.exit(status)` here finalizes the response as nginx's
            // filter_finalize does: the head goes out with that status and
            // whatever body the content phase produced, or will, is dropped.
            Ok(()) => {
                if let Some(Exit::Status(status)) = r.exit
                    && (200..1000).contains(&status)
                {
                    r.status = status as u16;
                    r.output.clear();
                    r.eof = true;
                    r.exit = None;
                }
            }
        }
    }
    not_modified(&mut req.borrow_mut());
}

/// The location's `default_type` for a response Lua produced without a
/// Content-Type, as nginx's `ngx_http_set_content_type` gives it before the
/// header filters run (so `header_filter` may still remove it). None for a
/// handler that removed it itself, or a proxied response (which keeps the
/// upstream's headers as they are).
fn default_type(r: &mut RequestState) {
    if r.no_default_type
        || !r.upstream_tries.is_empty()
        || r.resp_headers.contains_key(http::header::CONTENT_TYPE)
        || matches!(r.effective_status(), 101 | 304)
    {
        return;
    }
    let ty = r.default_type.as_deref().unwrap_or("text/plain");
    if let Ok(v) = http::HeaderValue::from_str(ty) {
        r.resp_headers.insert(http::header::CONTENT_TYPE, v);
    }
}

/// nginx's not_modified filter, for 200 responses that carry validators.
fn not_modified(r: &mut RequestState) {
    // Most requests carry no conditional header: one pass over the names.
    if r.effective_status() != 200 || !r.headers.keys().any(|k| k.as_str().starts_with("if-")) {
        return;
    }
    let header_time = |v: Option<&http::HeaderValue>| v.and_then(|v| parse_http_time(v.as_bytes()));
    let last_modified = header_time(r.resp_headers.get(LAST_MODIFIED));
    let etag = r.resp_headers.get(ETAG).map(|v| v.as_bytes().to_vec());
    if let (Some(lm), Some(ius)) = (last_modified, header_time(r.headers.get(IF_UNMODIFIED_SINCE)))
        && lm > ius
    {
        r.status = 412;
        return;
    }
    if let Some(im) = r.headers.get(IF_MATCH)
        && !etag_matches(im.as_bytes(), etag.as_deref(), false)
    {
        r.status = 412;
        return;
    }
    let ims = r.headers.get(IF_MODIFIED_SINCE);
    let inm = r.headers.get(IF_NONE_MATCH);
    if ims.is_none() && inm.is_none() {
        return;
    }
    // `if_modified_since exact` (nginx's default): the dates must be equal.
    if ims.is_some() && (last_modified.is_none() || header_time(ims) != last_modified) {
        return;
    }
    if let Some(inm) = inm
        && !etag_matches(inm.as_bytes(), etag.as_deref(), true)
    {
        return;
    }
    r.status = 304;
    r.output.clear();
}

/// Whether an `If-Match`/`If-None-Match` list names `etag` (`*` matches any).
fn etag_matches(list: &[u8], etag: Option<&[u8]>, weak: bool) -> bool {
    let Some(etag) = etag else { return false };
    let strip = |t: &[u8]| -> Vec<u8> {
        let t = t.trim_ascii();
        if weak {
            t.strip_prefix(b"W/").unwrap_or(t).to_vec()
        } else {
            t.to_vec()
        }
    };
    let etag = strip(etag);
    list.split(|&b| b == b',')
        .any(|t| t.trim_ascii() == b"*" || strip(t) == etag)
}
