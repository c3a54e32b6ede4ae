//! `content_by_lua`: produces the response. After it, `ngx.exit(status)` only
//! picks the status when nothing was sent yet; otherwise the output so far is
//! the response. A location without a content handler serves nothing (404),
//! as nginx does with no files to serve; one with an `upstream` proxies
//! (`proxy`).

use super::{Finish, Flow, HandlerEnd, Lifecycle};
use crate::config::{LocationRef, Phase};
use crate::request::Exit;

pub(super) async fn run(lc: &mut Lifecycle, at: LocationRef) -> Flow {
    if lc.loaded.config.location(at).upstream.is_some() && lc.loaded.handler(at, Phase::Content).is_none() {
        return super::proxy::run(lc, at).await;
    }
    let Some(f) = lc.loaded.handler(at, Phase::Content).cloned() else {
        let sent = lc.req.borrow().headers_sent;
        return Flow::Finish(if sent { Finish::Output } else { Finish::Status(404) });
    };
    {
        // Like nginx's ngx_http_set_content_type before a content handler runs.
        let mut r = lc.req.borrow_mut();
        if !r.resp_headers.contains_key(http::header::CONTENT_TYPE) {
            let ty = r.default_type.as_deref().unwrap_or("text/plain");
            if let Ok(v) = http::HeaderValue::from_str(ty) {
                r.resp_headers.insert(http::header::CONTENT_TYPE, v);
            }
        }
    }
    let end = lc.run_handler(Phase::Content, &f).await;
    let sent = lc.req.borrow().headers_sent;
    match end {
        HandlerEnd::Done => Flow::Finish(Finish::Output),
        HandlerEnd::Exit(Exit::Exec { uri, args }) => super::internal_redirect(lc, uri, args),
        HandlerEnd::Exit(Exit::Status(status)) => Flow::Finish(super::exit_finish(status, sent)),
        HandlerEnd::Error => Flow::Finish(if sent { Finish::Output } else { Finish::Status(500) }),
        HandlerEnd::Abort(status) => Flow::Finish(Finish::Status(status)),
    }
}
