//! The response body type handed to hyper.
//!
//! `Buffered` is the whole body at once. Lua output is sent like nginx sends
//! it: without a Content-Length (so chunked on HTTP/1.1) unless the handler
//! set one, because nginx sends headers at the first output, before the length
//! is known. Special pages (error pages, redirects) carry a Content-Length.
//! `Streaming` receives pieces from a handler that called `ngx.flush`, or
//! from a proxied upstream; `Piece::End` (or trailers) ends it, and a sender
//! dropped without one aborts the response (the client sees a truncated
//! body, not a complete one), as nginx does when a filter fails or an
//! upstream breaks off mid-response.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// The response was aborted mid-body.
#[derive(Debug)]
pub struct Aborted;

impl std::fmt::Display for Aborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("response aborted")
    }
}

impl std::error::Error for Aborted {}

pub enum ResponseBody {
    Buffered { data: Option<Bytes>, known_length: bool },
    Streaming(mpsc::Receiver<Piece>),
}

/// What goes down a streaming body.
#[derive(Debug)]
pub enum Piece {
    Data(Bytes),
    /// Trailers end the body (gRPC's `grpc-status`).
    Trailers(http::HeaderMap),
    End,
}

impl ResponseBody {
    pub fn empty() -> Self {
        ResponseBody::Buffered {
            data: None,
            known_length: true,
        }
    }

    pub fn with_length(data: Bytes) -> Self {
        ResponseBody::Buffered {
            data: Some(data),
            known_length: true,
        }
    }

    pub fn without_length(data: Bytes) -> Self {
        ResponseBody::Buffered {
            data: Some(data),
            known_length: false,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut *self {
            ResponseBody::Buffered { data, .. } => {
                Poll::Ready(data.take().filter(|d| !d.is_empty()).map(|d| Ok(Frame::data(d))))
            }
            ResponseBody::Streaming(rx) => rx.poll_recv(cx).map(|c| match c {
                Some(Piece::Data(d)) => Some(Ok(Frame::data(d))),
                Some(Piece::Trailers(t)) => {
                    rx.close();
                    Some(Ok(Frame::trailers(t)))
                }
                Some(Piece::End) => None,
                None => Some(Err(Aborted)),
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Buffered { data, known_length } => {
                *known_length && data.as_ref().is_none_or(|d| d.is_empty())
            }
            ResponseBody::Streaming(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Buffered {
                data,
                known_length: true,
            } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            _ => SizeHint::default(),
        }
    }
}
