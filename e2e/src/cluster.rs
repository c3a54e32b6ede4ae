//! A real kube-apiserver backed by a real etcd, on loopback, for integration
//! tests.
//!
//! The binaries come from `e2e/kube/build.sh` (pinned upstream Go modules, built
//! once into `.cache/e2e-bin`). No controller-manager, scheduler or kubelet
//! runs: objects are stored, validated, admitted and authorized as in a real
//! cluster, but nothing acts on them (no pods start, no ServiceAccount or
//! namespace controllers, no garbage collection).
//!
//! Tests normally use [`Cluster::shared`], one cluster per test process. Its
//! children get SIGKILL from the kernel when the process dies, however it dies,
//! and a normal exit also removes its temporary directory.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::pki::{Ca, KeyPairPem, Usage};

/// The apiserver needs a range to allocate Service ClusterIPs from; nothing
/// routes to it, so any private range works.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.0.0.0/24";
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc";

/// Cold etcd + apiserver start is ~5 s on an idle 2-core machine; the margin
/// is for CI machines busy compiling in parallel.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Free ports are found by binding port 0 and closing the socket, so another
/// process can take one before etcd or the apiserver binds it; retrying with
/// fresh ports makes that race harmless.
const START_ATTEMPTS: usize = 3;
/// Prefix of the per-cluster directories under the system temp dir, so that
/// directories of killed test processes can be found and removed later.
const DIR_PREFIX: &str = "moongate-kube-";
const OWNER_FILE: &str = "owner.pid";
const LOG_TAIL_LINES: usize = 40;

/// A running etcd + kube-apiserver pair and an admin identity for it.
pub struct Cluster {
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// Kubeconfig for `CN=admin, O=system:masters` (bypasses RBAC).
    pub admin_kubeconfig: PathBuf,
    /// The CA that signed the serving and client certificates; the apiserver
    /// trusts client certificates it signs.
    pub ca_pem: String,
    pub ca_file: PathBuf,
    /// Where `kube-apiserver`, `kubectl` and `etcd` live.
    pub bin_dir: PathBuf,
    /// `http://127.0.0.1:<port>`, plain HTTP: only loopback can reach it.
    pub etcd_url: String,
    /// The cluster's temporary directory: certificates, kubeconfigs, etcd data
    /// and the `etcd.log` / `kube-apiserver.log` files.
    pub dir: PathBuf,
    ca: Ca,
    procs: Mutex<Vec<Proc>>,
    /// Removes the directory on drop; taken when a failed start keeps it. The
    /// shared cluster is never dropped: its exit hook removes the directory.
    tmp: Option<tempfile::TempDir>,
}

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The process-wide cluster; see [`Cluster::shared`].
pub fn shared() -> &'static Cluster {
    Cluster::shared()
}

impl Cluster {
    /// The process-wide cluster, started on first use.
    ///
    /// # Panics
    ///
    /// If the binaries cannot be built or the cluster does not become ready;
    /// every later call panics with the same message instead of retrying.
    pub fn shared() -> &'static Cluster {
        let shared = SHARED.get_or_init(|| {
            let cluster = Cluster::start().map_err(|e| format!("{e:#}"))?;
            register_exit_hook();
            Ok(cluster)
        });
        match shared {
            Ok(cluster) => cluster,
            Err(e) => panic!("e2e cluster failed to start: {e}"),
        }
    }

    /// Builds the binaries if needed and starts a new, private cluster, which
    /// stops when dropped.
    pub fn start() -> Result<Cluster> {
        let bin_dir = binaries()?;
        remove_stale_dirs();
        let mut attempt = 1;
        loop {
            match Cluster::start_once(&bin_dir) {
                Err(e) if attempt < START_ATTEMPTS && format!("{e:#}").contains("address already in use") => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn start_once(bin_dir: &Path) -> Result<Cluster> {
        let tmp = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .context("create cluster directory")?;
        let dir = tmp.path().to_path_buf();
        fs::write(dir.join(OWNER_FILE), std::process::id().to_string())?;

        let pki = dir.join("pki");
        fs::create_dir(&pki)?;
        let ca = Ca::new("moongate-e2e-ca");
        let ca_file = ca.write_to(&pki, "ca")?.cert;
        let serving = ca
            .issue(
                "kube-apiserver",
                &[],
                &[
                    "127.0.0.1",
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                ],
                Usage::Server,
            )
            .write_to(&pki, "apiserver")?;
        let sa_key = KeyPairPem::generate().write_to(&pki, "service-account")?;

        let [etcd_port, etcd_peer_port, api_port] = free_ports()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let etcd_peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        let server = format!("https://127.0.0.1:{api_port}");

        let mut cluster = Cluster {
            server,
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            ca_pem: ca.cert_pem().to_owned(),
            ca_file,
            bin_dir: bin_dir.to_path_buf(),
            etcd_url,
            dir: dir.clone(),
            ca,
            procs: Mutex::new(Vec::new()),
            tmp: Some(tmp),
        };
        let admin = cluster.ca.issue("admin", &["system:masters"], &[], Usage::Client);
        fs::write(
            &cluster.admin_kubeconfig,
            cluster.kubeconfig_yaml(&client_cert_user(&admin.cert_pem, &admin.key_pem), "default"),
        )?;

        let mut etcd = Command::new(bin_dir.join("etcd"));
        etcd.args(["--name", "e2e"])
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &cluster.etcd_url])
            .args(["--advertise-client-urls", &cluster.etcd_url])
            .args(["--listen-peer-urls", &etcd_peer_url])
            .args(["--initial-advertise-peer-urls", &etcd_peer_url])
            .args(["--initial-cluster", &format!("e2e={etcd_peer_url}")])
            // Durability across crashes is worthless for a throwaway cluster,
            // and fsync latency dominates write-heavy tests.
            .arg("--unsafe-no-fsync")
            .args(["--log-level", "warn"]);
        cluster.spawn("etcd", etcd)?;

        let mut apiserver = Command::new(bin_dir.join("kube-apiserver"));
        apiserver
            .arg(format!("--etcd-servers={}", cluster.etcd_url))
            .arg("--bind-address=127.0.0.1")
            // Without it the apiserver advertises the host's first non-loopback
            // address, which tests must never send traffic to.
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={api_port}"))
            .arg(path_flag("--cert-dir", &pki))
            .arg(path_flag("--tls-cert-file", &serving.cert))
            .arg(path_flag("--tls-private-key-file", &serving.key))
            .arg(path_flag("--client-ca-file", &cluster.ca_file))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"))
            .arg(path_flag("--service-account-key-file", &sa_key.cert))
            .arg(path_flag("--service-account-signing-key-file", &sa_key.key))
            .arg(format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"))
            // The `kubernetes` Service endpoints would be 127.0.0.1, which
            // Endpoints validation rejects, so the reconciler would log an
            // error every few seconds; nothing here needs those endpoints.
            .arg("--endpoint-reconciler-type=none")
            // Pods must name an existing ServiceAccount under this plugin, and
            // the controller that creates each namespace's `default` one does
            // not run; envtest disables it for the same reason.
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--allow-privileged=true")
            .arg("--profiling=false");
        cluster.spawn("kube-apiserver", apiserver)?;

        if let Err(e) = cluster.wait_ready() {
            // Keep the logs and data for a post-mortem; a later run's
            // remove_stale_dirs deletes the directory once we have exited.
            cluster.stop();
            if let Some(tmp) = cluster.tmp.take() {
                let _ = tmp.keep();
            }
            return Err(e.context(format!("cluster directory kept at {}", dir.display())));
        }
        Ok(cluster)
    }

    fn spawn(&self, name: &'static str, mut cmd: Command) -> Result<()> {
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

    fn wait_ready(&self) -> Result<()> {
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

    /// The CA the apiserver trusts for client certificates, to mint more
    /// identities (see [`Cluster::client_cert_kubeconfig`]).
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// A `kubectl` command (the built one) for `kubeconfig`, isolated from the
    /// user's `~/.kube` config, cache and kuberc; add arguments and run it.
    pub fn kubectl_command(&self, kubeconfig: &Path) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.arg(path_flag("--kubeconfig", kubeconfig))
            .env_remove("KUBECONFIG")
            .env("KUBECACHEDIR", self.dir.join("kubectl-cache"))
            .env("KUBERC", "off")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs kubectl as admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.admin_kubeconfig, args)
    }

    /// Runs kubectl as admin and returns stdout.
    ///
    /// # Panics
    ///
    /// If kubectl fails, with its stderr.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        expect_success(args, self.kubectl(args))
    }

    /// Runs kubectl with another kubeconfig, e.g. one from
    /// [`Cluster::service_account_kubeconfig`].
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        self.kubectl_command(kubeconfig)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run kubectl {args:?}: {e}"))
    }

    /// Runs kubectl as admin with `stdin` as its standard input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .kubectl_command(&self.admin_kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run kubectl {args:?}: {e}"));
        // Written from a thread so a large manifest cannot deadlock against
        // kubectl filling its stdout pipe.
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = stdin.to_owned();
        let writer = thread::spawn(move || pipe.write_all(input.as_bytes()));
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("wait for kubectl {args:?}: {e}"));
        writer
            .join()
            .expect("stdin writer panicked")
            .unwrap_or_else(|e| panic!("write kubectl {args:?} stdin: {e}"));
        out
    }

    /// `kubectl apply -f -` as admin (server-side, so repeated applies of
    /// different managers behave as in a real cluster) and returns stdout.
    ///
    /// # Panics
    ///
    /// If kubectl fails, with its stderr.
    pub fn apply_ok(&self, manifest: &str) -> String {
        let args = ["apply", "--server-side", "-f", "-"];
        expect_success(&args, self.kubectl_stdin(&args, manifest))
    }

    /// Writes to `path` a kubeconfig that authenticates as ServiceAccount
    /// `namespace/sa_name` with a 2-hour bound token, defaulting to
    /// `namespace`, and returns `path`. The ServiceAccount must exist.
    ///
    /// # Panics
    ///
    /// If the token cannot be created or the file written.
    pub fn service_account_kubeconfig(&self, namespace: &str, sa_name: &str, path: &Path) -> PathBuf {
        let token = self.kubectl_ok(&["create", "token", sa_name, "-n", namespace, "--duration=2h"]);
        let user = format!("    token: {}\n", token.trim());
        write_file(path, &self.kubeconfig_yaml(&user, namespace));
        path.to_path_buf()
    }

    /// Writes to `path` a kubeconfig that authenticates with a client
    /// certificate for user `user` in `groups` (at most two, see
    /// [`Ca::issue`]), and returns `path`.
    ///
    /// # Panics
    ///
    /// If the file cannot be written.
    pub fn client_cert_kubeconfig(&self, user: &str, groups: &[&str], path: &Path) -> PathBuf {
        let issued = self.ca.issue(user, groups, &[], Usage::Client);
        let user = client_cert_user(&issued.cert_pem, &issued.key_pem);
        write_file(path, &self.kubeconfig_yaml(&user, "default"));
        path.to_path_buf()
    }

    /// Creates a namespace named `<prefix>-<unique suffix>` and returns its
    /// name. Nothing deletes it: without the namespace controller a deleted
    /// namespace would stay Terminating anyway.
    ///
    /// # Panics
    ///
    /// If `prefix` is not a lowercase DNS label of at most 40 characters, or
    /// the namespace cannot be created.
    pub fn temp_namespace(&self, prefix: &str) -> String {
        assert!(
            !prefix.is_empty()
                && prefix.len() <= 40
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !prefix.starts_with('-'),
            "namespace prefix {prefix:?} must be a lowercase DNS label of at most 40 characters"
        );
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{n}-{}", random_suffix());
        self.kubectl_ok(&["create", "namespace", &name]);
        name
    }

    fn kubeconfig_yaml(&self, user: &str, namespace: &str) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: e2e
  user:
{user}contexts:
- name: e2e
  context:
    cluster: e2e
    user: e2e
    namespace: {namespace}
current-context: e2e
",
            server = self.server,
            ca = BASE64.encode(&self.ca_pem),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `user:` body of a kubeconfig entry for a client certificate; PEM is
/// embedded so the kubeconfig can be copied around on its own.
fn client_cert_user(cert_pem: &str, key_pem: &str) -> String {
    format!(
        "    client-certificate-data: {}\n    client-key-data: {}\n",
        BASE64.encode(cert_pem),
        BASE64.encode(key_pem)
    )
}

fn expect_success(args: &[&str], out: Output) -> String {
    if !out.status.success() {
        panic!(
            "kubectl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("kubectl {args:?} printed non-UTF-8: {e}"))
}

fn write_file(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn path_flag(flag: &str, path: &Path) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(flag);
    s.push("=");
    s.push(path.as_os_str());
    s
}

/// Distinguishes namespaces of different test processes sharing a cluster
/// started elsewhere, and makes names easy to tell apart in logs.
fn random_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let mut x = u64::from(nanos) ^ (u64::from(std::process::id()) << 32);
    let mut s = String::new();
    for _ in 0..5 {
        s.push(char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize]));
        x /= 36;
    }
    s
}

fn free_ports<const N: usize>() -> io::Result<[u16; N]> {
    // All listeners stay open until every port is known, so the N are distinct.
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr()?.port();
    }
    Ok(ports)
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

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e crate is inside the repository")
        .to_path_buf()
}

/// Runs `e2e/kube/build.sh` once per process and returns the binary directory.
fn binaries() -> Result<PathBuf> {
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

/// Removes directories left by test processes that were killed before their
/// exit hook or `Drop` ran (their children died with them via PDEATHSIG).
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let owner = fs::read_to_string(dir.join(OWNER_FILE)).ok();
        let alive = match owner.as_deref().map(str::trim).map(str::parse::<u32>) {
            Some(Ok(pid)) => Path::new("/proc").join(pid.to_string()).exists(),
            // Another process may be between creating the directory and
            // writing its owner file; only give up on it after a while.
            _ => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < Duration::from_secs(3600)),
        };
        if !alive {
            let _ = fs::remove_dir_all(&dir);
        }
    }
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
fn register_exit_hook() {
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
