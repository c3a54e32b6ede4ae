//! `log_by_lua`: runs after the response went out. Output APIs are disabled;
//! `ngx.var`, `ngx.status` and `ngx.ctx` still describe the request.

use super::{Lifecycle, call_filter};
use crate::config::Phase;

pub(super) fn run(lc: &Lifecycle) {
    let at = lc.req.borrow().location;
    if let Some(f) = lc.loaded.handler(at, Phase::Log).cloned() {
        call_filter(lc, Phase::Log, &f);
    }
}
