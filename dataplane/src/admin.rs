//! The admin listener: `/healthz` (the process is up), `/readyz` (a config is
//! loaded), `/config` (its version and content hash), `/durable` (the
//! sequence numbers of durable writes: `{"recovered": R, "committed": C,
//! "assigned": A}` — the cut found in the file at open, the committed
//! watermark, the last number given out) and `/metrics` (Prometheus).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::error::{Error, Result};
use crate::shdict::Sequencer;

#[derive(Default)]
pub struct AdminState {
    ready: AtomicBool,
    version: AtomicU64,
    content_hash: Mutex<String>,
    /// The durable store's numbering; unset without a data dir.
    durable: OnceLock<Arc<Sequencer>>,
}

impl AdminState {
    /// Serves `/durable` from `seq`.
    pub fn set_durable(&self, seq: Arc<Sequencer>) {
        let _ = self.durable.set(seq);
    }

    pub fn set_config(&self, version: u64, content_hash: &[u8]) {
        self.version.store(version, Ordering::Relaxed);
        if let Ok(mut h) = self.content_hash.lock() {
            *h = content_hash.iter().map(|b| format!("{b:02x}")).collect();
        }
        self.ready.store(true, Ordering::Relaxed);
        crate::metrics::config_version(version);
    }
}

/// Binds the admin address and serves it in the background.
pub async fn start(addr: SocketAddr, state: Arc<AdminState>) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen {
            what: "admin",
            addr: addr.to_string(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| Error::Listen {
        what: "admin",
        addr: addr.to_string(),
        source,
    })?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&state, req.uri().path())) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

fn respond(state: &AdminState, path: &str) -> http::Response<Full<Bytes>> {
    let (status, body) = match path {
        "/healthz" => (200, "ok\n".to_string()),
        "/metrics" => (200, crate::metrics::encode()),
        "/readyz" if state.ready.load(Ordering::Relaxed) => (200, "ready\n".to_string()),
        "/readyz" => (503, "no config loaded\n".to_string()),
        "/config" => {
            let hash = state.content_hash.lock().map(|h| h.clone()).unwrap_or_default();
            (
                200,
                format!(
                    "{{\"version\":{},\"contentHash\":\"{hash}\"}}\n",
                    state.version.load(Ordering::Relaxed)
                ),
            )
        }
        "/durable" => match state.durable.get() {
            Some(seq) => (
                200,
                format!(
                    "{{\"recovered\":{},\"committed\":{},\"assigned\":{}}}\n",
                    seq.recovered(),
                    seq.committed(),
                    seq.assigned()
                ),
            ),
            None => (404, "no data dir: durable dicts are not persisted\n".to_string()),
        },
        _ => (404, "not found\n".to_string()),
    };
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    resp
}
