//! `body_filter_by_lua`: called for each chunk of output (`ngx.arg[1]`) and
//! once more at the end with `ngx.arg[2] = true`. Setting `ngx.arg[1]`
//! replaces the chunk; setting `ngx.arg[2] = true` ends the body there.

use bytes::{Bytes, BytesMut};

use super::{Lifecycle, call_filter};
use crate::config::Phase;

/// Filters the pending output (and the final empty chunk when `eof`) into one buffer.
pub(super) fn run(lc: &mut Lifecycle, eof: bool) -> Bytes {
    let at = lc.req.borrow().location;
    let Some(f) = lc.loaded.handler(at, Phase::BodyFilter).cloned() else {
        return lc.req.borrow_mut().output.take();
    };
    let chunks = lc.req.borrow_mut().output.take_chunks();
    let mut out = BytesMut::new();
    if lc.req.borrow().filter_arg.1 {
        // An earlier call set ngx.arg[2]: the body already ended.
        return Bytes::new();
    }
    let n = chunks.len();
    let calls = chunks.into_iter().enumerate().map(|(i, c)| (c, eof && i + 1 == n));
    let calls: Vec<(Bytes, bool)> = if eof && n == 0 {
        vec![(Bytes::new(), true)]
    } else {
        calls.collect()
    };
    for (chunk, last) in calls {
        lc.req.borrow_mut().filter_arg = (chunk, last);
        if !call_filter(lc, Phase::BodyFilter, &f) {
            // nginx aborts the response when a body filter fails.
            lc.req.borrow_mut().close = true;
            return Bytes::new();
        }
        let (chunk, ended) = lc.req.borrow().filter_arg.clone();
        out.extend_from_slice(&chunk);
        if ended {
            lc.req.borrow_mut().filter_arg.1 = true;
            break;
        }
    }
    out.freeze()
}
