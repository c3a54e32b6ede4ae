//! Starting and stopping the server under test for one case: free ports, the
//! process itself, waiting until it accepts connections, and shutting it down.

use std::collections::HashSet;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::nginx;
use super::translate;
use crate::conformance::case::{Case, Ports};

/// What the cases run against.
#[derive(Clone, Debug)]
pub enum Backend {
    /// `moongate-dataplane` in standalone mode.
    Dataplane { binary: PathBuf },
    /// nginx + lua-nginx-module, to check the runner itself against the reference.
    Nginx { binary: PathBuf, modules: Vec<PathBuf> },
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Dataplane { .. } => "dataplane",
            Backend::Nginx { .. } => "nginx",
        }
    }

    /// How long a SIGTERM'd server gets before it is killed.
    fn stop_grace(&self) -> Duration {
        match self {
            Backend::Dataplane { .. } => Duration::from_secs(2),
            // SIGKILL on the nginx master would orphan its worker; let it exit by itself.
            Backend::Nginx { .. } => Duration::from_secs(10),
        }
    }

    /// Writes the server's configuration for `case` into `dir` and returns the command to start it.
    fn prepare(&self, case: &Case, dir: &Path, port: u16) -> Result<Command, String> {
        let listen = format!("127.0.0.1:{port}");
        match self {
            Backend::Dataplane { binary } => {
                let routes = dir.join("routes.yaml");
                let text = translate::to_routes_yaml(case)?;
                std::fs::write(&routes, text).map_err(|e| format!("cannot write {}: {e}", routes.display()))?;
                let mut cmd = Command::new(binary);
                // Cases proxy (and open cosockets) to themselves and to their
                // services, all on 127.0.0.1.
                cmd.arg("--routes").arg(&routes).args([
                    "--listen",
                    &listen,
                    "--workers",
                    "1",
                    "--egress-allow",
                    "127.0.0.1/32",
                    "--egress-allow-self",
                ]);
                Ok(cmd)
            }
            Backend::Nginx { binary, modules } => {
                for sub in ["logs", "conf"] {
                    std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("cannot create {sub}: {e}"))?;
                }
                let conf_path = dir.join("conf/nginx.conf");
                std::fs::write(&conf_path, nginx::gen_conf(case, dir, port, modules))
                    .map_err(|e| format!("cannot write {}: {e}", conf_path.display()))?;
                let mut prefix = dir.as_os_str().to_owned();
                prefix.push("/");
                let mut cmd = Command::new(binary);
                cmd.arg("-p").arg(prefix).arg("-c").arg(&conf_path);
                Ok(cmd)
            }
        }
    }
}

/// Ports handed out and not yet released, so parallel cases never share one.
static PORTS_IN_USE: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port that was free a moment ago (bind to port 0, then close).
pub(crate) fn pick_port() -> Result<u16, String> {
    let mut in_use = PORTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    let in_use = in_use.get_or_insert_with(HashSet::new);
    for _ in 0..200 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port: {e}"))?
            .port();
        if port >= 1024 && in_use.insert(port) {
            return Ok(port);
        }
    }
    Err("cannot find a free port".into())
}

pub(crate) fn release_port(port: u16) {
    let mut in_use = PORTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(set) = in_use.as_mut() {
        set.remove(&port);
    }
}

/// A running server; stopped and its port released on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    /// The case as run: placeholders replaced for this port and the services'.
    pub case: Case,
    grace: Duration,
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.child, self.grace);
        release_port(self.port);
    }
}

/// SIGTERM (through kill(1): the crate forbids unsafe code), then SIGKILL after `grace`.
pub(crate) fn stop(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `n` non-empty lines of the server's log, joined with " | ".
fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Starts the server for `case` in `dir` and waits until its port accepts
/// connections. The server's stdout and stderr go to `dir/server.log`. The
/// port is picked first, then the case's placeholders are replaced
/// (`services` has the services' ports) and the configuration is written.
pub fn start(
    backend: &Backend,
    case: &Case,
    services: Ports,
    dir: &Path,
    start_timeout: Duration,
) -> Result<Server, String> {
    let log = dir.join("server.log");
    let name = backend.name();
    for attempt in 0..3 {
        let port = pick_port()?;
        let run = match case.substituted(&Ports {
            server: port,
            ..services
        }) {
            Ok(run) => run,
            Err(e) => {
                release_port(port);
                return Err(format!("bad case: {e}"));
            }
        };
        let spawned = backend.prepare(&run, dir, port).and_then(|mut cmd| {
            let out = File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
            let err = out.try_clone().map_err(|e| e.to_string())?;
            cmd.stdin(Stdio::null()).stdout(out).stderr(err);
            cmd.spawn().map_err(|e| format!("cannot start {name}: {e}"))
        });
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                release_port(port);
                return Err(e);
            }
        };
        let mut server = Server {
            child,
            port,
            case: run,
            grace: backend.stop_grace(),
        };
        let deadline = Instant::now() + start_timeout;
        let exited = loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                break Some(status);
            }
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return Ok(server);
            }
            if Instant::now() >= deadline {
                break None;
            }
            sleep(Duration::from_millis(20));
        };
        drop(server);
        let tail = log_tail(&log, 3);
        if tail.contains("Address already in use") && attempt < 2 {
            continue;
        }
        return Err(match exited {
            Some(status) => format!("{name} did not start ({status}): {tail}"),
            None => format!(
                "{name} did not accept connections on port {port} within {:?}: {tail}",
                start_timeout
            ),
        });
    }
    Err(format!("{name} did not start: port conflicts"))
}
