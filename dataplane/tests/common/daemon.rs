//! Real servers from Debian's packages (nginx, redis-server, memcached) run as
//! child processes on a free loopback port, each in its own temp dir. `.ci/run`
//! installs them; a missing binary fails the test with its name rather than
//! skipping it. Dropping a [`Daemon`] kills it.
//!
//! Readiness is an event: the daemon accepts a TCP connection on its port.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{STARTUP, wait_for};

pub struct Daemon {
    addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// nginx (one process, no daemonizing) with `server` as the body of its
    /// `server {}` block; `{root}` in it stands for [`Daemon::dir`]`/www`,
    /// where the test puts the files to serve. The access log, at
    /// `dir/access.log`, has one line per request:
    /// `$request_uri $connection $connection_requests`.
    pub fn nginx(server: &str, files: &[(&str, &[u8])]) -> Daemon {
        Daemon::start("nginx", |dir, port| {
            let www = dir.join("www");
            for (path, data) in files {
                let file = www.join(path);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(file, data).unwrap();
            }
            std::fs::create_dir_all(&www).unwrap();
            let d = dir.display();
            let server = server.replace("{root}", &www.display().to_string());
            let conf = format!(
                "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  log_format requests '$request_uri $connection $connection_requests';\n  \
                 access_log {d}/access.log requests;\n  client_body_temp_path {d}/body;\n  \
                 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
                 scgi_temp_path {d}/scgi;\n  default_type application/octet-stream;\n  \
                 server {{\n    listen 127.0.0.1:{port};\n{server}\n  }}\n}}\n"
            );
            std::fs::write(dir.join("nginx.conf"), conf).unwrap();
            let mut cmd = Command::new(find("nginx"));
            cmd.arg("-p").arg(dir).arg("-c").arg(dir.join("nginx.conf"));
            cmd
        })
    }

    /// redis-server without persistence.
    pub fn redis() -> Daemon {
        Daemon::start("redis-server", |dir, port| {
            let mut cmd = Command::new(find("redis-server"));
            cmd.args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir);
            cmd
        })
    }

    /// memcached with 64 MiB, on TCP and UDP.
    pub fn memcached() -> Daemon {
        Daemon::start("memcached", |_, port| {
            let mut cmd = Command::new(find("memcached"));
            cmd.args([
                "-l",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                // UDP on the same port, for the UDP cosocket tests.
                "-U",
                &port.to_string(),
                "-m",
                "64",
                "-u",
                "root",
            ]);
            cmd
        })
    }

    fn start(name: &'static str, command: impl FnOnce(&Path, u16) -> Command) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        // A port the kernel just handed out and nobody holds; the daemon binds it next.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut cmd = command(dir.path(), port);
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut daemon = Daemon { addr, child, dir };
        let ready = wait_for(STARTUP, || {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("{name} exited with {status}: {}", daemon.stderr());
            }
            TcpStream::connect(addr).ok()
        });
        assert!(ready.is_some(), "{name} never listened on {addr}: {}", daemon.stderr());
        daemon
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the daemon wrote to stdout and stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// nginx's access log lines so far (see [`Daemon::nginx`]).
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `name` on PATH or in the sbin directories Debian puts daemons in.
fn find(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed; scripts/test.sh installs it"))
}
