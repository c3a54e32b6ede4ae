//! etcd and kube-apiserver as child processes: started with their output in
//! log files, polled until the apiserver is ready, killed on stop.
//!
//! Invariant: no child outlives this process. Each is forked by one long-lived
//! thread with PR_SET_PDEATHSIG (`spawn_tied`), so the kernel kills it however
//! we die; a normal exit also stops the shared cluster (`register_exit_hook`).

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Cluster, SHARED};

/// Cold etcd + apiserver start is ~5 s on an idle 2-core machine; the margin
/// is for CI machines busy compiling in parallel.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const LOG_TAIL_LINES: usize = 40;

/// A started child, and the file its stdout and stderr go to.
pub(super) struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Cluster {
    pub(super) fn spawn(&self, name: &'static str, mut cmd: Command) -> Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.current_dir(&self.dir).stdin(Stdio::null()).stdout(out).stderr(err);
        // The user's etcd environment (ETCD_DATA_DIR, ETCD_LISTEN_*...) would
        // otherwise be mixed into our flags.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        let child = spawn_tied(cmd).with_context(|| format!("spawn {name}"))?;
        self.procs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Proc { name, child, log });
        Ok(())
    }

    pub(super) fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_alive()?;
            let out = self.kubectl(&["get", "--raw", "/readyz", "--request-timeout=5s"]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let verbose = self.kubectl(&["get", "--raw", "/readyz?verbose", "--request-timeout=5s"]);
                bail!(
                    "kube-apiserver at {} not ready after {:?}:\n{}{}\n{}",
                    self.server,
                    READY_TIMEOUT,
                    String::from_utf8_lossy(&verbose.stdout),
                    String::from_utf8_lossy(&verbose.stderr),
                    self.log_tails()
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    fn check_alive(&self) -> Result<()> {
        let mut procs = self.procs.lock().unwrap_or_else(PoisonError::into_inner);
        for p in procs.iter_mut() {
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "{} exited during startup ({status}); last lines of {}:\n{}",
                    p.name,
                    p.log.display(),
                    tail(&p.log, LOG_TAIL_LINES)
                );
            }
        }
        Ok(())
    }

    fn log_tails(&self) -> String {
        let procs = self.procs.lock().unwrap_or_else(PoisonError::into_inner);
        procs
            .iter()
            .map(|p| {
                format!(
                    "--- last lines of {} ---\n{}",
                    p.log.display(),
                    tail(&p.log, LOG_TAIL_LINES)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kills etcd and the apiserver; idempotent. Also done on drop.
    pub fn stop(&self) {
        let mut procs = self.procs.lock().unwrap_or_else(PoisonError::into_inner);
        // The apiserver first, so it does not log a burst of etcd errors.
        for p in procs.iter_mut().rev() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        procs.clear();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let mut buf = Vec::new();
    let read = File::open(path).and_then(|mut f| {
        // Logs can be large; the last 64 KiB hold the interesting lines.
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        f.read_to_end(&mut buf)
    });
    if let Err(e) = read {
        return format!("(cannot read {}: {e})", path.display());
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that the kernel SIGKILLs it when this process dies.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
/// the process, and test threads come and go; so every child is forked by one
/// thread that lives as long as the process.
fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("e2e-child-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // Unreachable while SPAWNER holds the sender, but exiting
                // would kill every child, so never exit.
                loop {
                    thread::park();
                }
            })
            .expect("start the child spawner thread");
        tx
    });
    set_parent_death_signal(&mut cmd);
    let (reply, result) = mpsc::channel();
    let gone = || io::Error::other("the child spawner thread is gone");
    spawner.send((cmd, reply)).map_err(|_| gone())?;
    result.recv().map_err(|_| gone())?
}

#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe operations are allowed: it makes two syscalls and
    // builds io::Errors from errno values, which does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // If we died between fork and prctl, the signal was never sent
            // and the child has been reparented: give up rather than leak it.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Statics are never dropped, so the shared cluster is stopped and its
/// directory removed from an `atexit` hook. The children would die anyway
/// (PDEATHSIG); killing and reaping them first lets the directory go too.
#[allow(unsafe_code)]
pub(super) fn register_exit_hook() {
    extern "C" fn stop_shared() {
        if let Some(Ok(cluster)) = SHARED.get() {
            cluster.stop();
            let _ = fs::remove_dir_all(&cluster.dir);
        }
    }
    // SAFETY: registers a plain function with no preconditions; it only
    // touches a 'static and cannot unwind (no panicking calls).
    unsafe {
        libc::atexit(stop_shared);
    }
}
