//! The body of a request sent upstream: what Lua read or set
//! (`ngx.req.read_body`, `set_body_data`), or the client's body streamed
//! through as it arrives. Streaming is backpressured by construction: hyper
//! polls the client's body only when the upstream connection can take more,
//! and polling it first is what makes hyper answer a client's
//! `Expect: 100-continue`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

pub enum ProxyBody {
    Empty,
    Full(Option<Bytes>),
    /// The client's body, as it arrives, with the bytes it may still send
    /// (`client_max_body_size`; past it the upload is aborted).
    Client {
        body: Incoming,
        remaining: u64,
    },
}

/// The client sent more than `client_max_body_size` while it streamed.
#[derive(Debug)]
pub struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("client intended to send too large body")
    }
}

impl std::error::Error for TooLarge {}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(data) => Poll::Ready(data.take().filter(|d| !d.is_empty()).map(|d| Ok(Frame::data(d)))),
            ProxyBody::Client { body, remaining } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    if len > *remaining {
                        return Poll::Ready(Some(Err(Box::new(TooLarge))));
                    }
                    *remaining -= len;
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                other => other.map(|f| f.map(|r| r.map_err(|e| Box::new(e) as Self::Error))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(data) => data.as_ref().is_none_or(|d| d.is_empty()),
            ProxyBody::Client { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            ProxyBody::Client { body, .. } => body.size_hint(),
        }
    }
}
