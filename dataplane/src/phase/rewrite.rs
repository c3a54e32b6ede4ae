//! `rewrite_by_lua`: the first handler. `ngx.exit(ngx.OK)` moves on to access;
//! a status ≥ 200 ends the request; `ngx.exec` and
//! `ngx.req.set_uri(uri, true)` jump to another location.

use super::{Flow, Lifecycle, early_phase_flow};
use crate::config::{LocationRef, Phase};

pub(super) async fn run(lc: &mut Lifecycle, at: LocationRef) -> Flow {
    let Some(f) = lc.loaded.handler(at, Phase::Rewrite).cloned() else {
        return Flow::Next;
    };
    let end = lc.run_handler(Phase::Rewrite, &f).await;
    early_phase_flow(lc, end)
}
