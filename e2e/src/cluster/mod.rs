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
//!
//! This module configures and starts the pair; by concern, `processes` spawns
//! and supervises the children (tied to this process's lifetime), `kubectl`
//! gives tests clients and identities, `binaries` builds the pinned binaries.

mod binaries;
mod kubectl;
mod processes;

use std::fs;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};

use self::binaries::binaries;
use self::kubectl::client_cert_user;
use self::processes::{Proc, register_exit_hook};
use crate::pki::{Ca, KeyPairPem, Usage};

/// The apiserver needs a range to allocate Service ClusterIPs from; nothing
/// routes to it, so any private range works.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.0.0.0/24";
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc";

/// Free ports are found by binding port 0 and closing the socket, so another
/// process can take one before etcd or the apiserver binds it; retrying with
/// fresh ports makes that race harmless.
const START_ATTEMPTS: usize = 3;
/// Prefix of the per-cluster directories under the system temp dir, so that
/// directories of killed test processes can be found and removed later.
const DIR_PREFIX: &str = "moongate-kube-";
const OWNER_FILE: &str = "owner.pid";

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
    /// The CA the apiserver trusts for client certificates, to mint more
    /// identities (see [`Cluster::client_cert_kubeconfig`]).
    pub fn ca(&self) -> &Ca {
        &self.ca
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn path_flag(flag: &str, path: &Path) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(flag);
    s.push("=");
    s.push(path.as_os_str());
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
