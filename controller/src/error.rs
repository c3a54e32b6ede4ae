//! The controller's error type. Problems with LuaRoutes themselves are the
//! route crate's ([`moongate_route::Error`]), each naming where it is.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// LuaRoutes that are invalid or could not be read; each problem says where.
    #[error(transparent)]
    Route(#[from] moongate_route::Error),
    #[error("{what} {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The gRPC TLS material is missing or unusable.
    #[error("TLS: {0}")]
    Tls(String),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// A thread or runtime could not be started.
    #[error("starting {what}: {source}")]
    Start {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Leader election failed or leadership was lost.
    #[error(transparent)]
    Leader(#[from] crate::leader::LeaderError),
}

impl Error {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Route(e) => e.metric_label(),
            Error::Listen { .. } => "listen",
            Error::Kube(_) => "kube",
            Error::Tls(_) => "tls",
            Error::Grpc(_) => "grpc",
            Error::Start { .. } => "start",
            Error::Leader(_) => "leader",
        }
    }
}
