//! The crate's error type. Every problem with a LuaRoute or a LuaLibrary names
//! where it is: file, route or library, location, phase (or module) and Lua
//! line, as far as each is known.

use std::fmt;
use std::path::PathBuf;

use crate::{LibraryKey, RouteKey};

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
}

impl Error {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Invalid(_) => "invalid",
        }
    }
}

/// One thing wrong with a LuaRoute, and where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problem {
    pub file: Option<PathBuf>,
    pub route: Option<RouteKey>,
    /// The LuaLibrary, for a problem of a library rather than a route.
    pub library: Option<LibraryKey>,
    /// The location's path.
    pub location: Option<String>,
    /// The part of the route: `rewrite`, `access`, `content`, …, `module
    /// NAME`, `init`, `initWorker`, or a spec field such as `allowedNamespaces`.
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
        if let Some(library) = &self.library {
            write!(f, "library {library}: ")?;
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
