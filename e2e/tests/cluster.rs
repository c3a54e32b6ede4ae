//! The e2e cluster is a real apiserver: objects persist in etcd, and RBAC and
//! client-certificate groups are enforced.

use std::process::Output;
use std::time::{Duration, Instant};

use moongate_e2e::cluster::Cluster;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_forbidden(out: &Output, what: &str) {
    assert!(!out.status.success(), "{what} should be forbidden but succeeded");
    assert!(
        stderr(out).contains("Forbidden") || stderr(out).contains("forbidden"),
        "{what} should fail as Forbidden, got: {}",
        stderr(out)
    );
}

#[test]
fn service_account_is_limited_to_its_role() {
    let cluster = Cluster::shared();
    let ns = cluster.temp_namespace("rbac");
    cluster.kubectl_ok(&["create", "serviceaccount", "reader", "-n", &ns]);
    cluster.kubectl_ok(&["create", "configmap", "visible", "-n", &ns, "--from-literal=k=v"]);
    cluster.apply_ok(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: configmap-reader
  namespace: {ns}
rules:
- apiGroups: [\"\"]
  resources: [configmaps]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: reader
  namespace: {ns}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: configmap-reader
subjects:
- kind: ServiceAccount
  name: reader
  namespace: {ns}
"
    ));

    let kubeconfig = cluster.service_account_kubeconfig(&ns, "reader", &cluster.dir.join(format!("{ns}.kubeconfig")));

    // The RBAC authorizer reads roles from an informer cache, so a binding
    // takes effect a moment after it is created.
    let deadline = Instant::now() + Duration::from_secs(15);
    let listed = loop {
        let out = cluster.kubectl_as(&kubeconfig, &["get", "configmaps", "-o", "name"]);
        if out.status.success() || Instant::now() >= deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        listed.status.success(),
        "list configmaps as reader: {}",
        stderr(&listed)
    );
    let names = String::from_utf8_lossy(&listed.stdout);
    assert!(names.contains("configmap/visible"), "got {names}");

    let whoami = cluster.kubectl_as(
        &kubeconfig,
        &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
    );
    assert_eq!(
        String::from_utf8_lossy(&whoami.stdout),
        format!("system:serviceaccount:{ns}:reader"),
        "{}",
        stderr(&whoami)
    );

    assert_forbidden(&cluster.kubectl_as(&kubeconfig, &["get", "secrets"]), "listing secrets");
    assert_forbidden(
        &cluster.kubectl_as(&kubeconfig, &["create", "configmap", "sneaky", "--from-literal=k=v"]),
        "creating a configmap",
    );
    let other = cluster.temp_namespace("rbac-other");
    assert_forbidden(
        &cluster.kubectl_as(&kubeconfig, &["get", "configmaps", "-n", &other]),
        "listing configmaps in another namespace",
    );
}

#[test]
fn admin_creates_a_lease() {
    let cluster = Cluster::shared();
    let ns = cluster.temp_namespace("lease");
    cluster.apply_ok(&format!(
        "apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: moongate-leader
  namespace: {ns}
spec:
  holderIdentity: controller-0
  leaseDurationSeconds: 15
"
    ));
    let holder = cluster.kubectl_ok(&[
        "get",
        "lease",
        "moongate-leader",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(holder, "controller-0");
}

#[test]
fn client_certificate_groups_are_honoured() {
    let cluster = Cluster::shared();
    let path = cluster.dir.join("alice.kubeconfig");
    let kubeconfig = cluster.client_cert_kubeconfig("alice", &["team-a", "team-b"], &path);
    let out = cluster.kubectl_as(&kubeconfig, &["auth", "whoami", "-o", "json"]);
    assert!(out.status.success(), "whoami as alice: {}", stderr(&out));
    let review: serde_json::Value = serde_json::from_slice(&out.stdout).expect("whoami prints JSON");
    let user = &review["status"]["userInfo"];
    assert_eq!(user["username"], "alice");
    let groups: Vec<&str> = user["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g.as_str())
        .collect();
    assert!(
        groups.contains(&"team-a") && groups.contains(&"team-b"),
        "groups: {groups:?}"
    );
    // Without a binding, a plain user can do nothing namespaced.
    assert_forbidden(
        &cluster.kubectl_as(&kubeconfig, &["get", "configmaps"]),
        "alice listing configmaps",
    );
}

#[test]
fn server_is_on_loopback_with_tls() {
    let cluster = Cluster::shared();
    assert!(cluster.server.starts_with("https://127.0.0.1:"), "{}", cluster.server);
    let version: serde_json::Value =
        serde_json::from_str(&cluster.kubectl_ok(&["get", "--raw", "/version"])).expect("version is JSON");
    assert!(
        version["gitVersion"].as_str().is_some_and(|v| v.starts_with("v1.")),
        "{version}"
    );
}
