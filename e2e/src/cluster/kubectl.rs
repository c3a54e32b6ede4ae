//! Clients of the cluster: `kubectl` runs, kubeconfigs for the admin, for
//! ServiceAccounts and for client certificates, and throwaway namespaces.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::{Cluster, path_flag};
use crate::pki::Usage;

impl Cluster {
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
    /// [`Ca::issue`](crate::pki::Ca::issue)), and returns `path`.
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

    pub(super) fn kubeconfig_yaml(&self, user: &str, namespace: &str) -> String {
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

/// The `user:` body of a kubeconfig entry for a client certificate; PEM is
/// embedded so the kubeconfig can be copied around on its own.
pub(super) fn client_cert_user(cert_pem: &str, key_pem: &str) -> String {
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
