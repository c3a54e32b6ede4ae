//! `access_by_lua`: runs after rewrite, typically to authenticate. Same exit
//! rules as rewrite: `ngx.exit(ngx.OK)` continues to content, a status ≥ 200
//! (e.g. `ngx.exit(403)`) ends the request.

use super::{Flow, Lifecycle, early_phase_flow};
use crate::config::{LocationRef, Phase};

pub(super) async fn run(lc: &mut Lifecycle, at: LocationRef) -> Flow {
    let Some(f) = lc.loaded.handler(at, Phase::Access).cloned() else {
        return Flow::Next;
    };
    let end = lc.run_handler(Phase::Access, &f).await;
    early_phase_flow(lc, end)
}
