//! The pinned etcd, kube-apiserver and kubectl binaries, built by
//! `e2e/kube/build.sh`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e crate is inside the repository")
        .to_path_buf()
}

/// Runs `e2e/kube/build.sh` once per process and returns the binary directory.
pub(super) fn binaries() -> Result<PathBuf> {
    static BIN_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN_DIR
        .get_or_init(|| build_binaries().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build_binaries() -> Result<PathBuf> {
    let repo = repo_root();
    let script = repo.join("e2e/kube/build.sh");
    let bin_dir = match std::env::var_os("E2E_BIN_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo.join(".cache/e2e-bin"),
    };
    // Output is inherited, not captured: a cold build takes minutes and its
    // progress (module downloads, compile errors) should be visible as it goes.
    let status = Command::new("bash")
        .arg(&script)
        .env("E2E_BIN_DIR", &bin_dir)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("run {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status}); see its output above", script.display());
    }
    Ok(bin_dir)
}
