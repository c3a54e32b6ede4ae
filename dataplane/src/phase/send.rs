//! Handing the response to the connection: the head once (through the
//! lifecycle's `HeadSlot`, or into the capture of a subrequest), then the body
//! as it is flushed, then its end.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Finish, Lifecycle, Response, body_filter};
use crate::config::Phase;
use crate::response::body::{Piece, ResponseBody};
use crate::response::head::send_header;
use crate::response::special;

impl Lifecycle {
    /// Hands the output so far to the client; with `eof`, ends the response.
    pub(super) async fn flush(&mut self, eof: bool) {
        if !eof && !self.req.borrow().headers_sent && self.req.borrow().output.is_empty() {
            // nginx sends nothing for a flush before any output.
            return;
        }
        // Sends the head (running the header filter) if no handler did yet.
        send_header(&self.req);
        if self.req.borrow().close {
            self.head_pending = false;
            self.stream_tx = None;
            return;
        }
        let body = body_filter::run(self, eof);
        if self.req.borrow().close {
            // A filter failed: abort instead of sending what it refused.
            self.head_pending = false;
            self.stream_tx = None;
            return;
        }
        if eof {
            self.req.borrow_mut().eof = true;
        }
        if let Some(captured) = &mut self.captured {
            if self.head_pending {
                self.head_pending = false;
                captured.record_head(&self.req.borrow());
            }
            captured.append(&body);
            return;
        }
        if self.head_pending {
            self.head_pending = false;
            if eof {
                let resp = self.response(ResponseBody::without_length(body));
                self.put_head(resp);
                return;
            }
            self.open_stream();
        }
        if let Some(stx) = &self.stream_tx {
            if !body.is_empty() {
                // A gone client makes send fail; the handler goes on, as in nginx.
                let _ = stx.send(Piece::Data(body)).await;
            }
            if eof {
                let end = match self.trailers.take() {
                    Some(t) => Piece::Trailers(t),
                    None => Piece::End,
                };
                let _ = stx.send(end).await;
                self.stream_tx = None;
            }
        }
    }

    /// Hands the head to the connection with a streaming body.
    fn open_stream(&mut self) {
        self.head_pending = false;
        // Bounded: a client slower than the producer (a handler, an
        // upstream) makes the producer wait, so memory does not grow.
        let (stx, srx) = mpsc::channel(16);
        let resp = self.response(ResponseBody::Streaming(srx));
        self.put_head(resp);
        self.stream_tx = Some(stx);
    }

    /// Sends one chunk of a proxied body: through the body filter when the
    /// location has one, else straight to the client, without a copy.
    pub(super) async fn send_body(&mut self, data: Bytes) {
        if self
            .loaded
            .handler(self.req.borrow().location, Phase::BodyFilter)
            .is_some()
            || self.captured.is_some()
        {
            self.req.borrow_mut().output.push(&data);
            self.flush(false).await;
            return;
        }
        if self.head_pending {
            send_header(&self.req);
            if self.req.borrow().close {
                self.head_pending = false;
                return;
            }
            self.open_stream();
        }
        if let Some(stx) = &self.stream_tx {
            let _ = stx.send(Piece::Data(data)).await;
        }
    }

    pub(super) async fn finish(&mut self, finish: Finish) {
        match finish {
            Finish::Output => {}
            Finish::Close | Finish::Abort => {
                // No head makes the connection task close the connection; a
                // stream dropped without its end aborts the response.
                self.head_pending = false;
                self.stream_tx = None;
                return;
            }
            Finish::Status(status) => {
                if self.req.borrow().headers_sent {
                    // Too late for a status: end what was started.
                } else {
                    let mut r = self.req.borrow_mut();
                    r.status = status;
                    r.output.clear();
                    if let Some(page) = special::page(status) {
                        r.resp_headers
                            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/html"));
                        r.output.push(&page);
                    }
                    r.resp_headers.remove(http::header::CONTENT_LENGTH);
                    if status >= 300 {
                        let len = r.output.len();
                        r.resp_headers.insert(http::header::CONTENT_LENGTH, len.into());
                    }
                }
            }
        }
        if self.req.borrow().eof && !self.head_pending && self.stream_tx.is_none() {
            return;
        }
        self.flush(true).await;
    }

    pub(super) fn put_head(&self, resp: Response) {
        if let Some(head) = &self.head {
            head.set(Some(resp));
        }
    }

    /// The response head from the request state, with `body`.
    pub(super) fn response(&self, body: ResponseBody) -> Response {
        let r = self.req.borrow();
        let mut resp = http::Response::new(body);
        *resp.status_mut() = http::StatusCode::from_u16(r.effective_status()).unwrap_or(http::StatusCode::OK);
        // The log phase may still read ngx.header; otherwise the headers move out.
        let mut headers = if self.loaded.handler(r.location, Phase::Log).is_some() {
            r.resp_headers.clone()
        } else {
            drop(r);
            let mut r = self.req.borrow_mut();
            std::mem::take(&mut r.resp_headers)
        };
        let r = self.req.borrow();
        if !headers.contains_key(http::header::CONTENT_TYPE)
            && !r.no_default_type
            && !matches!(r.effective_status(), 101 | 304)
        {
            let ty = r.default_type.as_deref().unwrap_or("text/plain");
            if let Ok(v) = http::HeaderValue::from_str(ty) {
                headers.insert(http::header::CONTENT_TYPE, v);
            }
        }
        *resp.headers_mut() = headers;
        resp
    }
}
