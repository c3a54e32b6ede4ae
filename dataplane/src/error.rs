//! The dataplane's error type.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration (routes) could not be loaded; the last good one keeps serving.
    #[error(transparent)]
    Config(#[from] moongate_route::Error),
    /// A snapshot failed to load into a worker's Lua VM.
    #[error("route {route}: {message}")]
    Load {
        route: moongate_route::RouteKey,
        message: String,
    },
    /// A library of a snapshot is corrupt (a chunk's digest does not match).
    #[error("library {library}: {message}")]
    Library {
        library: moongate_route::LibraryKey,
        message: String,
    },
    #[error("{what} {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("worker {0} is gone")]
    WorkerGone(usize),
    /// Routes that did not load (one line each).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    RoutesFailed(Vec<RouteLoadError>),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(e) => e.metric_label(),
            Error::Load { .. } | Error::Library { .. } => "load",
            Error::Listen { .. } => "listen",
            Error::Io { .. } => "io",
            Error::WorkerGone(_) => "worker",
            Error::RoutesFailed(_) => "load",
        }
    }
}

/// Why a route did not load into a worker's VM; the other routes serve.
#[derive(Debug, Clone, thiserror::Error)]
#[error("route {route}: {message}")]
pub struct RouteLoadError {
    pub route: moongate_route::RouteKey,
    pub message: String,
}
