//! Format-2 services: a fresh `redis-server` or `memcached` on a free
//! 127.0.0.1 port for one case, started before the server under test and
//! stopped (by its pid) after it, also when the case fails or panics.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::server::{pick_port, release_port, stop};

/// The binaries services run with; `None`: looked up in `PATH`.
#[derive(Clone, Debug, Default)]
pub struct ServiceBinaries {
    pub redis_server: Option<PathBuf>,
    pub memcached: Option<PathBuf>,
}

/// A running service; stopped and its port released on drop.
pub struct Service {
    pub name: &'static str,
    pub port: u16,
    child: Child,
}

impl Drop for Service {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(5));
        release_port(self.port);
    }
}

/// `name` in one of `PATH`'s directories.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn command(name: &str, binary: &Path, port: u16, workdir: &Path) -> Command {
    let mut cmd = Command::new(binary);
    let port = port.to_string();
    match name {
        "redis" => {
            cmd.args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(workdir)
            .args(["--daemonize", "no", "--protected-mode", "no", "--logfile", ""]);
        }
        _ => {
            cmd.args(["-l", "127.0.0.1", "-p", &port, "-U", &port]);
            if running_as_root() {
                cmd.args(["-u", "nobody"]);
            }
        }
    }
    cmd.current_dir(workdir);
    cmd
}

/// Starts service `name` (`redis` or `memcached`) for one case, with its
/// working directory and log under `dir`, and waits until it accepts TCP
/// connections.
pub fn start(name: &str, bins: &ServiceBinaries, dir: &Path, start_timeout: Duration) -> Result<Service, String> {
    let (name, program, given) = match name {
        "redis" => ("redis", "redis-server", &bins.redis_server),
        "memcached" => ("memcached", "memcached", &bins.memcached),
        other => return Err(format!("unknown service {other:?}")),
    };
    let binary = match given {
        Some(p) if p.is_file() => p.clone(),
        Some(p) => return Err(format!("service {name}: {} not found", p.display())),
        None => find_in_path(program)
            .ok_or_else(|| format!("service {name}: {program} not found in PATH (install it or pass --{program})"))?,
    };
    let workdir = dir.join(name);
    std::fs::create_dir_all(&workdir)
        .map_err(|e| format!("service {name}: cannot create {}: {e}", workdir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&workdir, std::fs::Permissions::from_mode(0o777));
    }
    let log = dir.join(format!("{name}.log"));
    for _ in 0..3 {
        let port = pick_port()?;
        let spawned = File::create(&log)
            .and_then(|out| Ok((out.try_clone()?, out)))
            .map_err(|e| format!("service {name}: cannot create {}: {e}", log.display()))
            .and_then(|(out, err)| {
                command(name, &binary, port, &workdir)
                    .stdin(Stdio::null())
                    .stdout(out)
                    .stderr(err)
                    .spawn()
                    .map_err(|e| format!("service {name}: cannot start {}: {e}", binary.display()))
            });
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                release_port(port);
                return Err(e);
            }
        };
        let mut service = Service { name, port, child };
        let deadline = Instant::now() + start_timeout;
        loop {
            if !matches!(service.child.try_wait(), Ok(None)) {
                break;
            }
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return Ok(service);
            }
            if Instant::now() >= deadline {
                break;
            }
            sleep(Duration::from_millis(20));
        }
        drop(service);
    }
    Err(format!("service {name} did not start (see {})", log.display()))
}
