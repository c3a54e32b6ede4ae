//! Test harness: runs the real `moongate-dataplane` binary on a free port with a
//! routes file in a temp dir, keeps every stderr line it logs, and talks to it
//! over plain sockets (HTTP/1.x by hand, so tests see exactly what goes on the wire).
//! `upstream`: the backends a proxying dataplane talks to (echo, h2c, TLS, WebSocket,
//! and servers that misbehave on purpose).

#![allow(dead_code)]

pub mod daemon;
pub mod upstream;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The dataplane binary Cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_moongate-dataplane");

/// Generous: the tests run on loaded CI machines.
pub const STARTUP: Duration = Duration::from_secs(60);
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A LuaRoute document named `name` in namespace `default` with `spec` (YAML, indented by 2).
pub fn route(name: &str, spec: &str) -> String {
    route_in("default", name, spec)
}

/// A LuaRoute document `namespace/name` with `spec` (YAML, indented by 2).
pub fn route_in(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )
}

/// `name: |` with `source` as a YAML block, an entry under a spec's `modules:`.
pub fn module(name: &str, source: &str) -> String {
    let mut out = format!("    {name}: |\n");
    for line in source.lines() {
        out.push_str("      ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The environment variable naming the directory of upstream OpenResty libraries that the
/// repository does not carry (`tests/resty_unmodified.rs`): `<dir>/<repository>/lib/...`,
/// each file as upstream published it.
pub const RESTY_UPSTREAM_ENV: &str = "MOONGATE_RESTY_UPSTREAM";

/// The `modules:` entries for `files` (module name, path under `<dir>/<repository>/`) of one
/// upstream library, read unchanged from `$MOONGATE_RESTY_UPSTREAM`. Panics, saying what to
/// set, when the directory or a file is missing.
pub fn upstream_modules(repository: &str, files: &[(&str, &str)]) -> String {
    let dir = std::env::var_os(RESTY_UPSTREAM_ENV).unwrap_or_else(|| {
        panic!("set {RESTY_UPSTREAM_ENV} to a directory holding {repository}/ as published upstream")
    });
    let mut out = String::new();
    for (name, path) in files {
        let file = Path::new(&dir).join(repository).join(path);
        let source =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e} ({RESTY_UPSTREAM_ENV})", file.display()));
        out.push_str(&module(name, &source));
    }
    out
}

/// Removes ANSI colour sequences (the log formatter may colour even when not on a tty).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `moongate-dataplane --check --routes PATH`.
pub fn check(path: &Path) -> Output {
    Command::new(BIN)
        .arg("--check")
        .arg("--routes")
        .arg(path)
        .env("NO_COLOR", "1")
        .output()
        .expect("run moongate-dataplane --check")
}

/// A running dataplane. Killed on drop.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    logs: Arc<Mutex<Vec<String>>>,
    /// The stderr reader saw the end of the stream.
    reader_done: Arc<Mutex<bool>>,
    routes: PathBuf,
    _dir: tempfile::TempDir,
}

pub struct Builder {
    yaml: String,
    workers: usize,
    extra: Vec<String>,
    /// Take the config from a controller at this address instead of a file.
    controller: Option<String>,
}

impl Builder {
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.to_string());
        self
    }

    /// Dials the controller at `address` (plaintext) instead of reading routes.
    pub fn controller(mut self, address: &str) -> Self {
        self.controller = Some(address.to_string());
        self
    }

    /// Cosockets may reach 127.0.0.1 (the test's own servers; never the gateway itself).
    pub fn loopback_egress(self) -> Self {
        self.arg("--egress-allow").arg("127.0.0.1/32")
    }

    /// Two workers on `dir` for durable dicts and timers, as the restart tests run.
    pub fn durable(self, dir: &str) -> Self {
        self.workers(2).arg("--data-dir").arg(dir)
    }

    pub fn start(self) -> Server {
        let mut server = self.launch();
        let port = wait_for(STARTUP, || {
            if let Some(status) = server.try_wait() {
                panic!("dataplane exited early with {status}; stderr:\n{}", server.logs());
            }
            server.find_log_map(|l| {
                let rest = &l[l.find("serving http://127.0.0.1:")? + "serving http://127.0.0.1:".len()..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u16>().ok()
            })
        });
        server.port = port.unwrap_or_else(|| panic!("dataplane never said it was serving; stderr:\n{}", server.logs()));
        server
    }

    /// Starts the dataplane expecting it to refuse to run: its exit status
    /// and everything it logged. Panics if it starts serving instead.
    pub fn start_expecting_exit(self) -> (ExitStatus, String) {
        let mut server = self.launch();
        let status = wait_for(STARTUP, || {
            if server.logs().contains("serving http://") {
                panic!("the dataplane started serving; stderr:\n{}", server.logs());
            }
            server.try_wait()
        })
        .unwrap_or_else(|| panic!("the dataplane neither exited nor served; stderr:\n{}", server.logs()));
        // The stderr reader may still be draining the last lines.
        wait_for(IO_TIMEOUT, || server.reader_done.lock().unwrap().then_some(()));
        (status, server.logs())
    }

    /// Spawns the process; `port` is 0 until it says where it serves.
    fn launch(self) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let routes = dir.path().join("routes.yaml");
        std::fs::write(&routes, &self.yaml).expect("write routes");
        let mut command = Command::new(BIN);
        match &self.controller {
            None => command.arg("--routes").arg(&routes),
            Some(address) => command.args(["--controller", address, "--insecure"]),
        };
        if !self.extra.iter().any(|a| a == "--data-dir") {
            // Never the shared default, /var/lib/moongate.
            command.arg("--data-dir").arg(dir.path().join("data"));
        }
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--workers", &self.workers.to_string()])
            .args(&self.extra)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn moongate-dataplane");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let reader_done = Arc::new(Mutex::new(false));
        let stderr = child.stderr.take().expect("stderr");
        let (sink, done) = (logs.clone(), reader_done.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(strip_ansi(&line));
            }
            *done.lock().unwrap() = true;
        });
        Server {
            child: Some(child),
            port: 0,
            logs,
            reader_done,
            routes,
            _dir: dir,
        }
    }
}

impl Server {
    /// Starts a one-worker dataplane serving `yaml`.
    pub fn start(yaml: &str) -> Server {
        Server::builder(yaml).start()
    }

    pub fn builder(yaml: &str) -> Builder {
        Builder {
            yaml: yaml.to_string(),
            workers: 1,
            extra: Vec::new(),
            controller: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Everything logged so far, one line per line.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn log_count(&self) -> usize {
        self.logs.lock().unwrap().len()
    }

    /// Lines logged after the first `from`.
    pub fn logs_since(&self, from: usize) -> String {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .skip(from)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn find_log_map<T>(&self, f: impl Fn(&str) -> Option<T>) -> Option<T> {
        self.logs.lock().unwrap().iter().find_map(|l| f(l))
    }

    /// Waits until a line logged after the first `from` contains `needle`; returns that line.
    pub fn wait_log_since(&self, from: usize, needle: &str, timeout: Duration) -> Option<String> {
        wait_for(timeout, || {
            self.logs
                .lock()
                .unwrap()
                .iter()
                .skip(from)
                .find(|l| l.contains(needle))
                .cloned()
        })
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_log_since(0, needle, timeout)
    }

    /// Replaces the routes file atomically (write a sibling, then rename), as editors do.
    pub fn write_routes(&self, yaml: &str) {
        let tmp = self.routes.with_extension("tmp");
        std::fs::write(&tmp, yaml).expect("write routes");
        std::fs::rename(&tmp, &self.routes).expect("rename routes");
    }

    // libc::kill has no safe binding in std; it touches no memory of ours.
    #[allow(unsafe_code)]
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) takes plain integers.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_for(timeout, || self.try_wait())
    }

    /// Open file descriptors of the process (Linux).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .count()
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr()).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// Sends `raw` on a new connection and reads one response.
    pub fn raw(&self, raw: &[u8]) -> Response {
        let mut s = self.connect();
        s.write_all(raw).expect("send request");
        read_response(&mut BufReader::new(s)).expect("read response")
    }

    /// Sends `raw` on a new connection and returns every byte received until
    /// the server closes it (or resets it, or the read times out).
    pub fn raw_bytes(&self, raw: &[u8]) -> Vec<u8> {
        let mut s = self.connect();
        s.write_all(raw).expect("send request");
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match std::io::Read::read(&mut s, &mut buf) {
                Ok(0) | Err(_) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Sends `raw` on a new connection and reads one response; `Err` when none
    /// comes (the process died, or no answer within `IO_TIMEOUT`).
    pub fn try_raw(&self, raw: &[u8]) -> std::io::Result<Response> {
        let mut s = TcpStream::connect(self.addr())?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        s.write_all(raw)?;
        read_response(&mut BufReader::new(s))
    }

    /// `GET path` with `Host: host` and `extra` header lines (each ending in CRLF), as `try_raw`.
    pub fn try_get_host(&self, host: &str, path: &str, extra: &str) -> std::io::Result<Response> {
        self.try_raw(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n").as_bytes())
    }

    /// `GET path` with `Host: host`; panics, with the logs, when no response comes.
    pub fn get_host(&self, host: &str, path: &str) -> Response {
        self.try_get_host(host, path, "")
            .unwrap_or_else(|e| panic!("GET {host}{path}: no response ({e}); logs:\n{}", self.logs()))
    }

    /// `GET path` on the admin listener (started with `--admin 127.0.0.1:0`),
    /// at the address the server logged.
    pub fn admin_get(&self, path: &str) -> Response {
        let line = self
            .wait_log("admin on http://", STARTUP)
            .unwrap_or_else(|| panic!("no admin address logged:\n{}", self.logs()));
        let addr = line[line.find("admin on http://").unwrap() + "admin on http://".len()..].trim();
        let mut s = TcpStream::connect(addr).expect("connect admin");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
            .expect("send");
        read_response(&mut BufReader::new(s)).expect("read admin response")
    }

    /// `GET path` over HTTP/1.1 with `Connection: close`.
    pub fn get(&self, path: &str) -> Response {
        self.raw(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
    }

    /// Requests `path` on a background thread; returns the raw bytes received until close or error.
    pub fn get_async_raw(&self, path: &str) -> std::thread::JoinHandle<Vec<u8>> {
        let addr = self.addr();
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(180))).unwrap();
            s.write_all(req.as_bytes()).expect("send");
            let mut out = Vec::new();
            let _ = std::io::Read::read_to_end(&mut s, &mut out);
            out
        })
    }

    /// Requests `path` on a background thread.
    pub fn get_async(&self, path: &str) -> std::thread::JoinHandle<Response> {
        let addr = self.addr();
        let path = path.to_string();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
                .expect("send");
            read_response(&mut BufReader::new(s)).expect("read response")
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One HTTP/1.x response.
#[derive(Debug, Clone)]
pub struct Response {
    pub version: String,
    pub status: u16,
    /// Names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A status line and headers: (version, status, headers with lowercased names).
pub type Head = (String, u16, Vec<(String, String)>);

/// Reads the status line and headers of one response.
pub fn read_head(r: &mut impl BufRead) -> std::io::Result<Head> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next().unwrap_or_default().to_string();
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h
            .split_once(':')
            .ok_or_else(|| std::io::Error::other(format!("bad header {h:?}")))?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    Ok((version, status, headers))
}

/// Reads one chunk of a chunked body; `None` at the last (empty) chunk.
pub fn read_chunk(r: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut size = String::new();
    r.read_line(&mut size)?;
    let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or_default(), 16)
        .map_err(|_| std::io::Error::other(format!("bad chunk size {size:?}")))?;
    if size == 0 {
        // Trailers, then the empty line.
        loop {
            let mut t = String::new();
            r.read_line(&mut t)?;
            if t.trim_end().is_empty() {
                return Ok(None);
            }
        }
    }
    let mut data = vec![0; size + 2];
    r.read_exact(&mut data)?;
    data.truncate(size);
    Ok(Some(data))
}

/// Reads one whole response (Content-Length, chunked, or until close).
pub fn read_response(r: &mut impl BufRead) -> std::io::Result<Response> {
    read_response_to(r, false)
}

/// As `read_response`; `head_only` for responses to HEAD.
pub fn read_response_to(r: &mut impl BufRead, head_only: bool) -> std::io::Result<Response> {
    let (version, status, headers) = read_head(r)?;
    let mut resp = Response {
        version,
        status,
        headers,
        body: Vec::new(),
    };
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(resp);
    }
    if resp
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        while let Some(chunk) = read_chunk(r)? {
            resp.body.extend(chunk);
        }
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().map_err(|_| std::io::Error::other("bad content-length"))?;
        resp.body = vec![0; len];
        r.read_exact(&mut resp.body)?;
    } else {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}
