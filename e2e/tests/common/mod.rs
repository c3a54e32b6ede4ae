//! Harness for the Kubernetes e2e tests: a namespace per test on the shared
//! real API server, the controller running as a ServiceAccount bound to the
//! chart's ClusterRole (never as admin), and dataplane processes, all talking
//! mutual TLS with certificates made for the test.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use moongate_e2e::cluster::{self, Cluster};
use moongate_e2e::pki::{Ca, Usage};
use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(30);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The release binaries of the controller and the dataplane. `cargo test
/// --workspace` has built them already; run alone, this test builds them the
/// way `scripts/test.sh` does (`--workspace --bins`, so the feature set and
/// hence the build cache stay the same).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    // This test binary lives in target/release/deps.
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    BUILT.get_or_init(|| {
        let built = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let root = repo_root();
        let newest_source = ["controller/src", "dataplane/src", "proto/moongate"]
            .iter()
            .flat_map(|dir| walk(&root.join(dir)))
            .filter_map(|f| built(&f))
            .max();
        let stale = ["moongate-controller", "moongate-dataplane"].iter().any(|b| {
            let bin = path.with_file_name(b);
            built(&bin).is_none_or(|t| newest_source.is_some_and(|s| s > t))
        });
        if stale {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--release", "--workspace", "--bins"])
                .current_dir(&root)
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building the binaries failed");
        }
    });
    path
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .flat_map(|p| if p.is_dir() { walk(&p) } else { vec![p] })
        .collect()
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
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process whose stderr is kept; killed on drop.
pub struct Process {
    pub name: String,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command) -> Process {
        let mut child = command
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Process {
            name: name.to_string(),
            child: Some(child),
            logs,
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        wait_for(timeout, || {
            self.logs.lock().unwrap().iter().find(|l| l.contains(needle)).cloned()
        })
    }

    /// SIGKILL, as a crashed or evicted pod.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.logs());
        }
    }
}

/// A test's namespace with the controller's ServiceAccount and certificates.
pub struct Env {
    pub cluster: &'static Cluster,
    pub namespace: String,
    /// More namespaces the controller watches (`add_namespace`).
    pub other_namespaces: Vec<String>,
    pub dir: tempfile::TempDir,
    pub controller_kubeconfig: PathBuf,
    ca: Ca,
}

impl Env {
    pub fn new(prefix: &str) -> Env {
        let cluster = cluster::shared();
        install_cluster_wide(cluster);
        let namespace = cluster.temp_namespace(prefix);
        let dir = tempfile::tempdir().unwrap();
        cluster.kubectl_ok(&["create", "serviceaccount", "moongate-controller", "-n", &namespace]);
        // A RoleBinding to the ClusterRole: the controller watches only this namespace.
        cluster.kubectl_ok(&[
            "create",
            "rolebinding",
            "moongate-controller",
            "--clusterrole=moongate-controller",
            &format!("--serviceaccount={namespace}:moongate-controller"),
            "-n",
            &namespace,
        ]);
        let controller_kubeconfig = cluster.service_account_kubeconfig(
            &namespace,
            "moongate-controller",
            &dir.path().join("controller.kubeconfig"),
        );
        let ca = Ca::new("moongate-test-ca");
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        let server = ca.issue("moongate-controller", &[], &["127.0.0.1", "localhost"], Usage::Server);
        std::fs::write(dir.path().join("controller.pem"), &server.cert_pem).unwrap();
        std::fs::write(dir.path().join("controller-key.pem"), &server.key_pem).unwrap();
        let client = ca.issue("moongate-dataplane", &[], &[], Usage::Client);
        std::fs::write(dir.path().join("dataplane.pem"), &client.cert_pem).unwrap();
        std::fs::write(dir.path().join("dataplane-key.pem"), &client.key_pem).unwrap();
        Env {
            cluster,
            namespace,
            other_namespaces: Vec::new(),
            dir,
            controller_kubeconfig,
            ca,
        }
    }

    /// Another namespace for this test, where the controller's ServiceAccount
    /// is bound to its ClusterRole too; controllers started afterwards watch it.
    pub fn add_namespace(&mut self, prefix: &str) -> String {
        let namespace = self.cluster.temp_namespace(prefix);
        self.cluster.kubectl_ok(&[
            "create",
            "rolebinding",
            "moongate-controller",
            "--clusterrole=moongate-controller",
            &format!("--serviceaccount={}:moongate-controller", self.namespace),
            "-n",
            &namespace,
        ]);
        self.other_namespaces.push(namespace.clone());
        namespace
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["-n", &self.namespace];
        all.extend_from_slice(args);
        self.cluster.kubectl(&all)
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.namespace];
        all.extend_from_slice(args);
        self.cluster.kubectl_ok(&all)
    }

    /// `kubectl apply -f` of `yaml`; the output on success, stderr on failure.
    pub fn apply(&self, yaml: &str) -> Result<String, String> {
        self.apply_in(&self.namespace, yaml)
    }

    /// `kubectl apply -f` of `yaml` in `namespace`.
    pub fn apply_in(&self, namespace: &str, yaml: &str) -> Result<String, String> {
        let file = self.path(&format!("apply-{}.yaml", unique()));
        std::fs::write(&file, yaml).unwrap();
        let out = self
            .cluster
            .kubectl(&["-n", namespace, "apply", "-f", file.to_str().unwrap()]);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn route_json(&self, name: &str) -> Value {
        self.route_json_in(&self.namespace, name)
    }

    pub fn route_json_in(&self, namespace: &str, name: &str) -> Value {
        let json = self
            .cluster
            .kubectl_ok(&["-n", namespace, "get", "luaroute", name, "-o", "json"]);
        serde_json::from_str(&json).unwrap()
    }

    /// Waits until `name`'s status satisfies `f`; returns it. Panics with the last status.
    pub fn wait_status(&self, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        self.wait_status_in(&self.namespace, name, what, f)
    }

    /// As `wait_status`, for a route in `namespace`.
    pub fn wait_status_in(&self, namespace: &str, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        wait_for(WAIT, || {
            last = self.route_json_in(namespace, name);
            f(&last).then(|| last.clone())
        })
        .unwrap_or_else(|| panic!("{namespace}/{name}: status never became {what}; last:\n{last:#}"))
    }

    pub fn library_json(&self, name: &str) -> Value {
        let json = self.kubectl_ok(&["get", "lualibrary", name, "-o", "json"]);
        serde_json::from_str(&json).unwrap()
    }

    /// Waits until LuaLibrary `name`'s status satisfies `f`; returns it.
    pub fn wait_library_status(&self, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        wait_for(WAIT, || {
            last = self.library_json(name);
            f(&last).then(|| last.clone())
        })
        .unwrap_or_else(|| panic!("library {name}: status never became {what}; last:\n{last:#}"))
    }

    /// `--namespaces` for the controller: this test's namespace and the added ones.
    fn watched_namespaces(&self) -> String {
        std::iter::once(&self.namespace)
            .chain(&self.other_namespaces)
            .cloned()
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The controller's command line, as this test's ServiceAccount, without TLS flags.
    pub fn controller_command(&self, identity: &str, grpc_port: u16, admin_port: u16) -> Command {
        let mut command = Command::new(bin("moongate-controller"));
        command
            .args(["run", "--grpc-listen", &format!("127.0.0.1:{grpc_port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args([
                "--namespaces",
                &self.watched_namespaces(),
                "--lease-namespace",
                &self.namespace,
            ])
            .args(["--identity", identity, "--lease-duration", "6s"])
            .env("KUBECONFIG", &self.controller_kubeconfig)
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE");
        command
    }

    /// A controller with its certificate and client CA from files.
    pub fn controller(&self, identity: &str, grpc_port: u16, admin_port: u16) -> Process {
        let mut command = self.controller_command(identity, grpc_port, admin_port);
        command
            .arg("--tls-cert-file")
            .arg(self.path("controller.pem"))
            .arg("--tls-key-file")
            .arg(self.path("controller-key.pem"))
            .arg("--tls-client-ca-file")
            .arg(self.path("ca.pem"));
        Process::spawn(identity, &mut command)
    }

    /// A dataplane dialling `controllers` (gRPC ports) with a client certificate.
    pub fn dataplane(&self, name: &str, controllers: &[u16]) -> Dataplane {
        self.dataplane_with(name, controllers, &[])
    }

    /// A dataplane with more command-line arguments.
    pub fn dataplane_with(&self, name: &str, controllers: &[u16], extra: &[&str]) -> Dataplane {
        let data_dir = self.path(&format!("{name}-data"));
        Dataplane::start_with(self, name, controllers, &data_dir, extra)
    }
}

fn unique() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The CRDs and the controller's ClusterRole, installed once per cluster.
fn install_cluster_wide(cluster: &Cluster) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let root = repo_root();
        cluster.kubectl_ok(&["apply", "-f", root.join("crds/luaroute.yaml").to_str().unwrap()]);
        cluster.kubectl_ok(&["apply", "-f", root.join("crds/lualibrary.yaml").to_str().unwrap()]);
        cluster.kubectl_ok(&[
            "apply",
            "-f",
            root.join("charts/moongate/files/controller-rbac.yaml")
                .to_str()
                .unwrap(),
        ]);
        cluster.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/luaroutes.moongate.dev",
            "crd/lualibraries.moongate.dev",
        ]);
    });
}

pub struct Dataplane {
    pub process: Process,
    pub port: u16,
    pub name: String,
}

impl Dataplane {
    pub fn start(env: &Env, name: &str, controllers: &[u16], data_dir: &Path) -> Dataplane {
        Dataplane::start_with(env, name, controllers, data_dir, &[])
    }

    pub fn start_with(env: &Env, name: &str, controllers: &[u16], data_dir: &Path, extra: &[&str]) -> Dataplane {
        let addresses: Vec<String> = controllers.iter().map(|p| format!("https://127.0.0.1:{p}")).collect();
        let mut command = Command::new(bin("moongate-dataplane"));
        command
            .args(["--controller", &addresses.join(",")])
            .args(["--listen", "127.0.0.1:0", "--workers", "1"])
            .arg("--controller-ca")
            .arg(env.path("ca.pem"))
            .arg("--tls-cert")
            .arg(env.path("dataplane.pem"))
            .arg("--tls-key")
            .arg(env.path("dataplane-key.pem"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--node-id", name, "--pod-name", name, "--pod-namespace", &env.namespace])
            .args(extra);
        let process = Process::spawn(name, &mut command);
        let line = process
            .wait_log("serving http://127.0.0.1:", WAIT)
            .unwrap_or_else(|| panic!("{name} did not start:\n{}", process.logs()));
        let rest = &line[line.find("serving http://127.0.0.1:").unwrap() + "serving http://127.0.0.1:".len()..];
        let port = rest
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap();
        Dataplane {
            process,
            port,
            name: name.to_string(),
        }
    }

    /// GET `path` with `Host: host`: (status, body), or None when the connection failed.
    pub fn get(&self, host: &str, path: &str) -> Option<(u16, String)> {
        http_get(self.port, host, path)
    }
}

/// A minimal HTTP/1.1 GET over a fresh connection.
pub fn http_get(port: u16, host: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// `GET /readyz` on an admin port: the status code.
pub fn readyz(port: u16) -> Option<u16> {
    http_get(port, "localhost", "/readyz").map(|(s, _)| s)
}

/// The condition `type_` of a LuaRoute JSON: (status, reason, message).
pub fn condition(route: &Value, type_: &str) -> Option<(String, String, String)> {
    route["status"]["conditions"].as_array()?.iter().find_map(|c| {
        (c["type"] == type_).then(|| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

/// A LuaRoute named `name` serving `host` with a `/` location that says `body`.
pub fn route_yaml(name: &str, host: &str, content: &str) -> String {
    let content = content.replace('\n', "\n        ");
    format!(
        "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata:\n  name: {name}\nspec:\n  hostnames: [{host}]\n  locations:\n    - path: /\n      content: |\n        {content}\n"
    )
}
