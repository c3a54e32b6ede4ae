//! The crate's error type. Every problem with a LuaRoute names where it is:
//! file, route, location, phase and Lua line, as far as each is known.

use std::fmt;
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
    /// One or more LuaRoutes are invalid; each problem says where.
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
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
            Error::Invalid(_) => "invalid",
            Error::Listen { .. } => "listen",
            Error::Kube(_) => "kube",
            Error::Tls(_) => "tls",
            Error::Grpc(_) => "grpc",
            Error::Start { .. } => "start",
            Error::Leader(_) => "leader",
        }
    }
}

/// One thing wrong with a LuaRoute, and where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problem {
    pub file: Option<PathBuf>,
    /// `namespace/name`
    pub route: Option<String>,
    /// The location's path.
    pub location: Option<String>,
    /// `rewrite`, `access`, `content`, …, `module NAME`, `init`, `initWorker`.
    pub phase: Option<String>,
    /// The Lua source line, 1-based.
    pub line: Option<u32>,
    pub message: String,
}

impl Problem {
    pub fn new(message: impl Into<String>) -> Self {
        Problem {
            message: message.into(),
            ..Default::default()
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(route) = &self.route {
            write!(f, "route {route}: ")?;
        }
        if let Some(location) = &self.location {
            write!(f, "location {location}: ")?;
        }
        if let Some(phase) = &self.phase {
            write!(f, "{phase}: ")?;
        }
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        f.write_str(&self.message)
    }
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}
