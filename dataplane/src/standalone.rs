//! Standalone mode: LuaRoutes and LuaLibraries from YAML files, no cluster.
//!
//! The files are validated and compiled by the same code the controller uses
//! (`moongate_controller::{source, snapshot}`), which also applies the
//! controller's hostname ownership and location conflict rules: a refused route
//! is logged as an error (file, both routes, the hostname or location) and left
//! out, and the others are served. A change to the files — seen by
//! polling their content once a second, or on SIGHUP — reloads atomically: a
//! bad file is reported and the last good config keeps serving. Polling the
//! content rather than watching inotify events handles editors' rename-on-save
//! and Kubernetes ConfigMap symlink swaps alike, at a cost of one read a second.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use moongate_route::source;
use moongate_route::standalone::{self, RefusedRoute};
use sha2::{Digest, Sha256};
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::AdminState;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::worker::Workers;

/// A config read from files, and the routes left out of it.
pub struct Loaded {
    pub config: Config,
    /// Routes refused by hostname ownership or a location conflict; not in `config`.
    pub refused: Vec<RefusedRoute>,
}

/// Reads, validates and compiles the routes at `path`. An invalid route fails
/// the load; a refused one is left out and listed in [`Loaded::refused`].
pub fn load(path: &Path, version: u64) -> Result<Loaded> {
    let sources = source::load_path(path)?;
    let built = standalone::from_sources(&sources.routes, &sources.libraries, version)?;
    Ok(Loaded {
        config: Config::try_from(&built.snapshot)?,
        refused: built.refused,
    })
}

/// Logs each refused route as an error.
pub fn log_refused(refused: &[RefusedRoute]) {
    for r in refused {
        tracing::error!("route refused, serving the others without it: {r}");
    }
}

/// A fingerprint of the route files' names and contents.
fn fingerprint(path: &Path) -> Option<Vec<u8>> {
    let mut hasher = Sha256::new();
    let mut files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    for f in files {
        hasher.update(f.as_os_str().as_encoded_bytes());
        hasher.update(std::fs::read(&f).unwrap_or_default());
    }
    Some(hasher.finalize().to_vec())
}

/// Returns at SIGTERM or SIGINT.
pub async fn until_terminated() -> Result<()> {
    let sig = |kind| {
        signal(kind).map_err(|source| Error::Io {
            path: "signal handler".into(),
            source,
        })
    };
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
    }
}

/// Serves until SIGTERM/SIGINT, reloading on file changes and SIGHUP.
pub async fn watch(path: PathBuf, workers: &Workers, mut version: u64, admin: &AdminState) -> Result<()> {
    let sig = |kind| {
        signal(kind).map_err(|source| Error::Io {
            path: "signal handler".into(),
            source,
        })
    };
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut hup = sig(SignalKind::hangup())?;
    let mut last = fingerprint(&path);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let forced = tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => true,
            _ = tick.tick() => false,
        };
        let now = fingerprint(&path);
        if !forced && now == last {
            continue;
        }
        last = now;
        version += 1;
        match reload(&path, workers, version).await {
            Ok(hash) => {
                crate::metrics::reload(true);
                admin.set_config(version, &hash);
                tracing::info!(version, path = %path.display(), "config reloaded");
            }
            Err(e) => {
                crate::metrics::reload(false);
                for line in e.to_string().lines() {
                    tracing::error!("config rejected, still serving the last good one: {line}");
                }
            }
        }
    }
}

async fn reload(path: &Path, workers: &Workers, version: u64) -> Result<Vec<u8>> {
    let loaded = load(path, version)?;
    let hash = loaded.config.content_hash.clone();
    workers.apply(Arc::new(loaded.config)).await?.log();
    log_refused(&loaded.refused);
    Ok(hash)
}
