//! The admin listener: `/healthz` (the process is up), `/readyz` (this replica
//! leads and has published a config, so it serves dataplanes; a standby is not
//! ready) and `/metrics` (Prometheus).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::error::{Error, Result};

#[derive(Default)]
pub struct Readiness {
    pub leading: AtomicBool,
    pub serving: AtomicBool,
}

/// Binds `addr` and serves it in the background.
pub async fn start(addr: SocketAddr, readiness: Arc<Readiness>) -> Result<SocketAddr> {
    let listen_error = |source| Error::Listen {
        what: "admin",
        addr: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let readiness = readiness.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let readiness = readiness.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&readiness, req.uri().path())) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

fn respond(readiness: &Readiness, path: &str) -> http::Response<Full<Bytes>> {
    let leading = readiness.leading.load(Ordering::Relaxed);
    let serving = readiness.serving.load(Ordering::Relaxed);
    let (status, body) = match path {
        "/healthz" => (200, "ok\n".to_string()),
        "/metrics" => (200, crate::metrics::encode()),
        "/readyz" if leading && serving => (200, "ready\n".to_string()),
        "/readyz" if leading => (503, "leader, listing LuaRoutes\n".to_string()),
        "/readyz" => (503, "standby: another replica holds the lease\n".to_string()),
        _ => (404, "not found\n".to_string()),
    };
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    resp
}
