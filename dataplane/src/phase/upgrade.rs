//! Protocol switches through the proxy (WebSocket and other `Upgrade`s):
//! the upstream's 101 goes to the client, then bytes flow both ways between
//! the two upgraded connections until either side closes.

use std::net::SocketAddr;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::{Finish, Flow, Lifecycle};
use crate::response::body::ResponseBody;

pub(super) fn splice(lc: &mut Lifecycle, upstream: OnUpgrade, addr: SocketAddr) -> Flow {
    let Some(client) = lc.upgrade.take() else {
        return Flow::Finish(Finish::Status(502));
    };
    let site = lc.req.borrow().site.clone();
    crate::response::head::send_header(&lc.req);
    lc.req.borrow_mut().eof = true;
    lc.head_pending = false;
    let head = lc.response(ResponseBody::empty());
    lc.put_head(head);
    tokio::task::spawn_local(async move {
        let (client, upstream) = match tokio::join!(client, upstream) {
            (Ok(c), Ok(u)) => (c, u),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!("{site}: upgrade with upstream {addr} failed: {e}");
                return;
            }
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!("{site}: upgraded connection with upstream {addr} ended: {e}");
        }
    });
    Flow::Finish(Finish::Output)
}
