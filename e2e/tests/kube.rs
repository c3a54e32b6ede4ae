//! Moongate on a real kube-apiserver and etcd: `kubectl apply` a LuaRoute and
//! see it served by two dataplane processes, with the status the controller
//! writes back. The controller runs as a ServiceAccount bound to the chart's
//! ClusterRole, and talks mutual TLS to the dataplanes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Env, WAIT, condition, free_port, readyz, route_yaml, wait_for};

/// Waits until every dataplane answers `host` with `body`.
fn wait_body(dataplanes: &[&common::Dataplane], host: &str, body: &str) {
    for dp in dataplanes {
        let mut last = None;
        wait_for(WAIT, || {
            last = dp.get(host, "/");
            (last == Some((200, body.to_string()))).then_some(())
        })
        .unwrap_or_else(|| panic!("{} never served {body:?} for {host}; last: {last:?}", dp.name));
    }
}

fn wait_status_code(dataplanes: &[&common::Dataplane], host: &str, code: u16) {
    for dp in dataplanes {
        wait_for(WAIT, || (dp.get(host, "/").map(|r| r.0) == Some(code)).then_some(()))
            .unwrap_or_else(|| panic!("{} never answered {code} for {host}", dp.name));
    }
}

fn programmed_on_all(route: &serde_json::Value, n: u64) -> bool {
    condition(route, "Accepted").is_some_and(|c| c.0 == "True")
        && condition(route, "Programmed").is_some_and(|c| c.0 == "True")
        && route["status"]["programmedDataplanes"] == n
        && route["status"]["totalDataplanes"] == n
        && route["status"]["observedGeneration"] == route["metadata"]["generation"]
}

#[test]
fn apply_update_reject_and_delete_a_route_on_two_dataplanes() {
    let env = Env::new("lifecycle");
    let grpc = free_port();
    let _controller = env.controller("controller-0", grpc, free_port());
    let a = env.dataplane("dp-a", &[grpc]);
    let b = env.dataplane("dp-b", &[grpc]);
    let both = [&a, &b];

    // Apply: served by both, Accepted and Programmed on 2/2.
    env.apply(&route_yaml("hello", "hello.test", "ngx.say(\"v1\")"))
        .unwrap();
    wait_body(&both, "hello.test", "v1\n");
    let status = env.wait_status("hello", "Programmed 2/2", |r| programmed_on_all(r, 2));
    assert_eq!(condition(&status, "ResolvedRefs").unwrap().0, "True");

    // Update: the new behaviour on both within a second.
    env.apply(&route_yaml("hello", "hello.test", "ngx.say(\"v2\")"))
        .unwrap();
    let applied = Instant::now();
    wait_body(&both, "hello.test", "v2\n");
    let took = applied.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the update took {took:?} to reach both dataplanes"
    );
    env.wait_status("hello", "Programmed 2/2 at generation 2", |r| {
        r["metadata"]["generation"] == 2 && programmed_on_all(r, 2)
    });

    // Bad Lua, with a client looping through the change: Accepted=False with
    // the line, and both dataplanes keep serving v2 without a failed request.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let ports = [a.port, b.port];
    let client = {
        let (stop, failures, requests) = (stop.clone(), failures.clone(), requests.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for port in ports {
                    requests.fetch_add(1, Ordering::Relaxed);
                    if common::http_get(port, "hello.test", "/") != Some((200, "v2\n".to_string())) {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    env.apply(&route_yaml(
        "hello",
        "hello.test",
        "local x = 1\nlocal y = 2\nngx.say(\"v3\"\n",
    ))
    .unwrap();
    let status = env.wait_status("hello", "Accepted=False", |r| {
        r["status"]["observedGeneration"] == 3 && condition(r, "Accepted").is_some_and(|c| c.0 == "False")
    });
    let (_, reason, message) = condition(&status, "Accepted").unwrap();
    assert_eq!(reason, "Invalid");
    assert!(message.contains("line 3") || message.contains("line 4"), "{message}");
    assert!(message.contains("content"), "the message names the phase: {message}");
    let (programmed, reason, message) = condition(&status, "Programmed").unwrap();
    assert_eq!((programmed.as_str(), reason.as_str()), ("False", "NotAccepted"));
    assert!(message.contains("keep serving generation 2"), "{message}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    assert!(requests.load(Ordering::Relaxed) > 10);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed while the bad version was rejected"
    );
    wait_body(&both, "hello.test", "v2\n");

    // An unknown field is refused by the API server, naming the field.
    let unknown = route_yaml("hello", "hello.test", "ngx.say(\"v4\")")
        .replace("    - path: /\n", "    - path: /\n      bogus: 1\n");
    let error = env.apply(&unknown).expect_err("an unknown field is rejected");
    assert!(error.contains("bogus"), "{error}");

    // Events tell the story in `kubectl describe`.
    let events = env.kubectl_ok(&["get", "events", "-o", "json"]);
    assert!(events.contains("\"reason\": \"Invalid\""), "{events}");

    // Delete: 404 on both.
    env.kubectl_ok(&["delete", "luaroute", "hello"]);
    wait_status_code(&both, "hello.test", 404);
}

#[test]
fn dataplanes_survive_the_controller_and_restart_without_it() {
    let env = Env::new("outage");
    let grpc = free_port();
    let mut controller = env.controller("controller-0", grpc, free_port());
    let a = env.dataplane("dp-a", &[grpc]);
    let mut b = env.dataplane("dp-b", &[grpc]);
    env.apply(&route_yaml("keep", "keep.test", "ngx.say(\"kept\")"))
        .unwrap();
    wait_body(&[&a, &b], "keep.test", "kept\n");

    // The controller is killed: both keep serving.
    controller.kill();
    std::thread::sleep(Duration::from_millis(300));
    wait_body(&[&a, &b], "keep.test", "kept\n");

    // A dataplane restarted while the controller is down serves the last good config.
    b.process.kill();
    let data_dir = env.path("dp-b-data");
    let b = common::Dataplane::start(&env, "dp-b", &[grpc], &data_dir);
    wait_body(&[&b], "keep.test", "kept\n");
    assert!(
        b.process
            .logs()
            .contains("serving the last config applied before the restart")
    );

    // The controller returns: both reconnect and take the next change.
    let _controller = env.controller("controller-1", grpc, free_port());
    env.apply(&route_yaml("keep", "keep.test", "ngx.say(\"after\")"))
        .unwrap();
    wait_body(&[&a, &b], "keep.test", "after\n");
    env.wait_status("keep", "Programmed 2/2", |r| programmed_on_all(r, 2));
}

#[test]
fn the_standby_takes_over_within_the_lease_duration() {
    let env = Env::new("failover");
    let (grpc0, admin0, grpc1, admin1) = (free_port(), free_port(), free_port(), free_port());
    let mut c0 = env.controller("controller-0", grpc0, admin0);
    wait_for(WAIT, || (readyz(admin0) == Some(200)).then_some(())).expect("controller-0 leads");
    let mut c1 = env.controller("controller-1", grpc1, admin1);
    c1.wait_log("standby", WAIT).expect("controller-1 waits as standby");
    assert_eq!(readyz(admin1), Some(503), "a standby is not ready");

    let a = env.dataplane("dp-a", &[grpc0, grpc1]);
    let b = env.dataplane("dp-b", &[grpc1, grpc0]);
    env.apply(&route_yaml("ha", "ha.test", "ngx.say(\"one\")")).unwrap();
    wait_body(&[&a, &b], "ha.test", "one\n");

    // Kill the leader; the standby must lead within the lease duration (6s).
    c0.kill();
    let killed = Instant::now();
    wait_for(Duration::from_secs(20), || (readyz(admin1) == Some(200)).then_some(()))
        .unwrap_or_else(|| panic!("the standby never took over:\n{}", c1.logs()));
    let failover = killed.elapsed();
    assert!(
        failover <= Duration::from_secs(6) + Duration::from_secs(2),
        "failover took {failover:?}, more than the 6s lease (plus one retry period)"
    );
    assert!(c1.running());

    env.apply(&route_yaml("ha", "ha.test", "ngx.say(\"two\")")).unwrap();
    wait_body(&[&a, &b], "ha.test", "two\n");
    env.wait_status("ha", "Programmed 2/2 by the new leader", |r| {
        r["metadata"]["generation"] == 2 && programmed_on_all(r, 2)
    });
}

#[test]
fn conflicts_and_missing_services_are_reported_where_users_look() {
    let env = Env::new("refs");
    let grpc = free_port();
    let _controller = env.controller("controller-0", grpc, free_port());
    let a = env.dataplane("dp-a", &[grpc]);

    env.apply(&route_yaml("older", "shared.test", "ngx.say(\"older\")"))
        .unwrap();
    env.wait_status("older", "Programmed", |r| programmed_on_all(r, 1));
    // creationTimestamp has one-second resolution: make "newer" really newer.
    std::thread::sleep(Duration::from_millis(1100));
    env.apply(&route_yaml("newer", "shared.test", "ngx.say(\"newer\")"))
        .unwrap();
    let status = env.wait_status("newer", "Conflicted", |r| {
        condition(r, "Accepted").is_some_and(|c| c.1 == "Conflicted")
    });
    let message = condition(&status, "Accepted").unwrap().2;
    assert!(
        message.contains("older") && message.contains("shared.test"),
        "{message}"
    );
    wait_body(&[&a], "shared.test", "older\n");
    assert!(condition(&env.route_json("older"), "Accepted").unwrap().0 == "True");

    // An upstream Service that does not exist: accepted, ResolvedRefs=False.
    let upstream = "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata:\n  name: proxied\nspec:\n  hostnames: [proxied.test]\n  locations:\n    - path: /api\n      upstream: {service: backend, port: 8080}\n    - path: /\n      content: ngx.say(\"local\")\n";
    env.apply(upstream).unwrap();
    let status = env.wait_status("proxied", "ResolvedRefs=False", |r| {
        condition(r, "ResolvedRefs").is_some_and(|c| c.0 == "False")
    });
    let (_, reason, message) = condition(&status, "ResolvedRefs").unwrap();
    assert_eq!(reason, "BackendNotFound");
    assert!(message.contains("backend"), "{message}");
    assert_eq!(condition(&status, "Accepted").unwrap().0, "True");
    wait_body(&[&a], "proxied.test", "local\n");
    // Other routes are untouched.
    wait_body(&[&a], "shared.test", "older\n");
}

#[test]
fn a_dataplane_without_a_trusted_client_certificate_gets_nothing() {
    let env = Env::new("mtls");
    // A Secret that does not exist: a clear error at start, before any campaign.
    let mut command = env.controller_command("controller-x", free_port(), free_port());
    command.args(["--tls-secret", &format!("{}/missing", env.namespace)]);
    let mut misconfigured = common::Process::spawn("controller-x", &mut command);
    wait_for(WAIT, || (!misconfigured.running()).then_some(())).expect("exits");
    let logs = misconfigured.logs();
    assert!(
        logs.contains(&format!("reading Secret {}/missing", env.namespace)),
        "{logs}"
    );
    assert!(
        env.kubectl(&["get", "lease", "moongate-controller"]).stdout.is_empty(),
        "it never campaigned"
    );

    // The controller's certificate, key and client CA come from a Secret here.
    env.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "moongate-grpc",
        &format!("--from-file=tls.crt={}", env.path("controller.pem").display()),
        &format!("--from-file=tls.key={}", env.path("controller-key.pem").display()),
        &format!("--from-file=ca.crt={}", env.path("ca.pem").display()),
    ]);
    let grpc = free_port();
    let mut command = env.controller_command("controller-0", grpc, free_port());
    command.args(["--tls-secret", &format!("{}/moongate-grpc", env.namespace)]);
    let _controller = common::Process::spawn("controller-0", &mut command);
    env.apply(&route_yaml(
        "secret",
        "secret.test",
        "ngx.say(\"for trusted dataplanes\")",
    ))
    .unwrap();

    // A certificate from another CA.
    let rogue_ca = moongate_e2e::pki::Ca::new("rogue");
    let rogue = rogue_ca.issue("rogue-dataplane", &[], &[], moongate_e2e::pki::Usage::Client);
    std::fs::write(env.path("rogue.pem"), &rogue.cert_pem).unwrap();
    std::fs::write(env.path("rogue-key.pem"), &rogue.key_pem).unwrap();
    let mut command = std::process::Command::new(common::bin("moongate-dataplane"));
    command
        .args(["--controller", &format!("https://127.0.0.1:{grpc}")])
        .args(["--listen", "127.0.0.1:0", "--workers", "1"])
        .arg("--controller-ca")
        .arg(env.path("ca.pem"))
        .arg("--tls-cert")
        .arg(env.path("rogue.pem"))
        .arg("--tls-key")
        .arg(env.path("rogue-key.pem"))
        .arg("--data-dir")
        .arg(env.path("rogue-data"));
    let rogue = common::Process::spawn("rogue", &mut command);
    rogue
        .wait_log("reconnecting", WAIT)
        .expect("the rogue dataplane is refused");

    let trusted = env.dataplane("dp-a", &[grpc]);
    wait_body(&[&trusted], "secret.test", "for trusted dataplanes\n");
    assert!(!rogue.logs().contains("config applied"), "{}", rogue.logs());
    env.wait_status("secret", "Programmed on the trusted dataplane only", |r| {
        programmed_on_all(r, 1)
    });
}

#[test]
fn the_api_server_rejects_what_can_be_checked_without_lua() {
    let env = Env::new("schema");
    let doc = |spec: &str| {
        format!("apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata:\n  name: bad\nspec:\n{spec}")
    };
    let cases = [
        (
            "  hostnames: [Example.com]\n  locations: [{path: /}]\n",
            "spec.hostnames[0]",
        ),
        ("  locations: [{path: hello}]\n", "path must start with '/'"),
        (
            "  locations: [{path: /a}, {path: /a, match: Prefix}]\n",
            "Duplicate value",
        ),
        (
            "  locations: [{path: /a, match: Suffix}]\n",
            "Unsupported value: \"Suffix\"",
        ),
        (
            "  locations: [{path: /a, upstream: {service: web, port: 0}}]\n",
            "spec.locations[0].upstream.port",
        ),
        (
            "  locations: [{path: /}]\n  sharedDicts: [{name: c, capacity: 1MB}]\n",
            "spec.sharedDicts[0].capacity",
        ),
        (
            "  locations: [{path: /}]\n  modules: {resty/cjson: 'return 1'}\n",
            "module names must be names of letters, digits",
        ),
        (
            "  locations: [{path: /}]\n  limits: {instructionBudget: 10}\n",
            "spec.limits.instructionBudget",
        ),
        (
            "  allowedNamespaces: [team_b]\n  locations: [{path: /}]\n",
            "spec.allowedNamespaces[0]",
        ),
        (
            "  allowedNamespaces: [b, b]\n  locations: [{path: /}]\n",
            "Duplicate value",
        ),
        (
            "  locations: [{path: /, allowFrom: [{name: Not.A.Name}]}]\n",
            "spec.locations[0].allowFrom[0].name",
        ),
    ];
    for (spec, expected) in cases {
        let error = env.apply(&doc(spec)).expect_err(spec);
        assert!(
            error.contains(expected),
            "for\n{spec}expected {expected:?} in:\n{error}"
        );
    }
    // Nothing was stored.
    assert!(env.kubectl_ok(&["get", "luaroutes", "-o", "name"]).trim().is_empty());
}

/// Namespace `owner`'s route on shop.test: a Prefix `/` answering "owner", with
/// `allowed` (a YAML flow list) as its `allowedNamespaces`.
fn shop_yaml(allowed: &str) -> String {
    format!(
        "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata:\n  name: shop\nspec:\n  hostnames: [shop.test]\n  allowedNamespaces: {allowed}\n  locations:\n    - path: /\n      content: ngx.say(\"owner\")\n"
    )
}

#[test]
fn a_hostname_belongs_to_the_first_namespace_until_it_allows_another() {
    // Namespace names sort "hosts-a-…" before "hosts-b-…": even at the same
    // creation second, the owner's route is the older.
    let mut env = Env::new("hosts-a");
    let tenant = env.add_namespace("hosts-b");
    let owner = env.namespace.clone();
    let grpc = free_port();
    let _controller = env.controller("controller-0", grpc, free_port());
    let dp = env.dataplane("dp-a", &[grpc]);

    env.apply(&shop_yaml("[]")).unwrap();
    env.wait_status("shop", "Programmed", |r| programmed_on_all(r, 1));
    // Without ownership, this regex location would win `/a.json` from the owner's `/`.
    let json = "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata:\n  name: json\nspec:\n  hostnames: [shop.test]\n  locations:\n    - path: '\\.json$'\n      match: Regex\n      content: ngx.say(\"tenant\")\n";
    env.apply_in(&tenant, json).unwrap();
    let status = env.wait_status_in(&tenant, "json", "Conflicted", |r| {
        condition(r, "Accepted").is_some_and(|c| c.0 == "False" && c.1 == "Conflicted")
    });
    let message = condition(&status, "Accepted").unwrap().2;
    for part in [
        "hostname \"shop.test\"".to_string(),
        format!("belongs to namespace {owner:?}"),
        format!("route {owner}/shop"),
        format!("must list {tenant:?} in spec.allowedNamespaces"),
    ] {
        assert!(message.contains(&part), "{part:?} missing from {message:?}");
    }
    assert_eq!(condition(&status, "Programmed").unwrap().1, "NotAccepted");
    assert_eq!(dp.get("shop.test", "/a.json"), Some((200, "owner\n".to_string())));
    assert_eq!(condition(&env.route_json("shop"), "Accepted").unwrap().0, "True");

    // The owner shares the hostname: the tenant's route is accepted and served.
    env.apply(&shop_yaml(&format!("[{tenant}]"))).unwrap();
    env.wait_status_in(&tenant, "json", "Programmed", |r| programmed_on_all(r, 1));
    let mut last = None;
    wait_for(WAIT, || {
        last = dp.get("shop.test", "/a.json");
        (last == Some((200, "tenant\n".to_string()))).then_some(())
    })
    .unwrap_or_else(|| panic!("the tenant's location never served /a.json; last: {last:?}"));
    assert_eq!(dp.get("shop.test", "/index.html"), Some((200, "owner\n".to_string())));
}

/// `name` on `host` answering `body`, with `init` run at load.
fn route_with_init(name: &str, host: &str, init: &str, body: &str) -> String {
    format!(
        "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata:\n  name: {name}\nspec:\n  hostnames: [{host}]\n  init: |\n    {init}\n  locations:\n    - path: /\n      content: ngx.say(\"{body}\")\n"
    )
}

#[test]
fn a_route_whose_init_fails_is_reported_and_never_blocks_the_others() {
    let env = Env::new("init");
    let grpc = free_port();
    let _controller = env.controller("controller-0", grpc, free_port());
    let a = env.dataplane("dp-a", &[grpc]);

    env.apply(&route_with_init("flaky", "flaky.test", "INIT = 1", "flaky v1"))
        .unwrap();
    env.apply(&route_yaml("steady", "steady.test", "ngx.say(\"steady v1\")"))
        .unwrap();
    env.wait_status("flaky", "Programmed", |r| programmed_on_all(r, 1));
    wait_body(&[&a], "flaky.test", "flaky v1\n");

    // A new generation whose init throws: the dataplane keeps the route's
    // serving version, says so, and applies everything else.
    env.apply(&route_with_init(
        "flaky",
        "flaky.test",
        "error('boom in init')",
        "flaky v2",
    ))
    .unwrap();
    env.apply(&route_yaml("steady", "steady.test", "ngx.say(\"steady v2\")"))
        .unwrap();
    let status = env.wait_status("flaky", "Programmed=False naming the init error", |r| {
        condition(r, "Programmed").is_some_and(|c| c.0 == "False" && c.2.contains("boom in init"))
    });
    let (_, reason, message) = condition(&status, "Programmed").unwrap();
    assert_eq!(reason, "Rejected", "{message}");
    assert!(
        message.contains("dp-a") && message.contains("previous version keeps serving"),
        "{message}"
    );
    assert_eq!(
        condition(&status, "Accepted").unwrap().0,
        "True",
        "the Lua compiles: only loading fails"
    );
    env.wait_status("steady", "Programmed", |r| programmed_on_all(r, 1));
    wait_body(&[&a], "steady.test", "steady v2\n");
    wait_body(&[&a], "flaky.test", "flaky v1\n");

    // A dataplane that starts now has no previous version to keep: the route
    // is left out there, and the others serve.
    let b = env.dataplane("dp-b", &[grpc]);
    wait_body(&[&b], "steady.test", "steady v2\n");
    wait_status_code(&[&b], "flaky.test", 404);

    // Fixed: programmed everywhere again.
    env.apply(&route_with_init("flaky", "flaky.test", "INIT = 3", "flaky v3"))
        .unwrap();
    env.wait_status("flaky", "Programmed", |r| programmed_on_all(r, 2));
    wait_body(&[&a, &b], "flaky.test", "flaky v3\n");
}

/// This machine's first non-loopback IPv4 address: the API server refuses
/// loopback addresses in EndpointSlices.
fn host_ip() -> String {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .expect("hostname -I");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| !ip.is_loopback()))
        .expect("a non-loopback IPv4 address")
        .to_string()
}

/// A backend on this host: a standalone dataplane on `ip` that answers `name`.
fn backend(env: &Env, name: &str, ip: &str) -> (common::Process, u16) {
    let routes = env.path(&format!("{name}.yaml"));
    std::fs::write(
        &routes,
        format!(
            "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  locations:\n    - path: /\n      content: ngx.say(\"{name}\")\n"
        ),
    )
    .unwrap();
    let mut command = std::process::Command::new(common::bin("moongate-dataplane"));
    command
        .arg("--routes")
        .arg(&routes)
        .args(["--listen", &format!("{ip}:0"), "--workers", "1"])
        .arg("--data-dir")
        .arg(env.path(&format!("{name}-data")));
    let process = common::Process::spawn(name, &mut command);
    let serving = format!("serving http://{ip}:");
    let line = process
        .wait_log(&serving, WAIT)
        .unwrap_or_else(|| panic!("{name} did not start:\n{}", process.logs()));
    let rest = &line[line.find(&serving).unwrap() + serving.len()..];
    let port = rest
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap();
    (process, port)
}

/// An EndpointSlice of Service `backend` with one ready endpoint.
fn endpoint_slice(name: &str, ip: &str, port: u16) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/service-name: backend}}\naddressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints:\n  - addresses: [{ip}]\n    conditions: {{ready: true}}\n"
    )
}

#[test]
fn a_service_upstream_follows_its_endpoint_slices_without_failing_a_request() {
    let env = Env::new("proxy");
    let grpc = free_port();
    let mut controller = env.controller("controller-0", grpc, free_port());
    // The backends are on this host: the egress policy allows exactly it.
    let ip = host_ip();
    let dp = env.dataplane_with("dp-a", &[grpc], &["--egress-allow", &format!("{ip}/32")]);
    let (_b1, p1) = backend(&env, "b1", &ip);
    let (_b2, p2) = backend(&env, "b2", &ip);

    env.apply(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: backend\nspec:\n  ports: [{name: http, port: 8080, protocol: TCP}]\n",
    )
    .unwrap();
    env.apply(&endpoint_slice("backend-1", &ip, p1)).unwrap();
    env.apply(
        "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata:\n  name: proxied\nspec:\n  hostnames: [proxied.test]\n  locations:\n    - path: /\n      upstream: {service: backend, port: 8080}\n",
    )
    .unwrap();
    wait_body(&[&dp], "proxied.test", "b1\n");
    let status = env.wait_status("proxied", "Programmed 1/1", |r| programmed_on_all(r, 1));
    assert_eq!(condition(&status, "ResolvedRefs").unwrap().0, "True");
    let lua_loads = dp.process.logs().matches("config applied").count();

    // A client loops through every change; each answer is tallied by backend.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, tally, failures, port) = (stop.clone(), tally.clone(), failures.clone(), dp.port);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match common::http_get(port, "proxied.test", "/") {
                    Some((200, body)) => tally.lock().unwrap().push(body),
                    other => {
                        eprintln!("failed request: {other:?}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let seen = |name: &str| tally.lock().unwrap().iter().filter(|b| b.trim() == name).count();

    // Scale up: the second endpoint gets traffic.
    env.apply(&endpoint_slice("backend-2", &ip, p2)).unwrap();
    wait_for(WAIT, || (seen("b2") > 0).then_some(())).expect("b2 never got a request");

    // Scale down: once the dataplane applied the removal, b1 gets nothing new.
    let removed = Instant::now();
    env.kubectl_ok(&["delete", "endpointslice", "backend-1"]);
    wait_for(WAIT, || {
        let t = tally.lock().unwrap();
        let n = t.len();
        // 50 answers in a row from b2 only: the removal is in effect.
        (n >= 50 && t[n - 50..].iter().all(|b| b.trim() == "b2")).then_some(())
    })
    .expect("b1 kept getting requests after its EndpointSlice was deleted");
    eprintln!("endpoint removal in effect after at most {:?}", removed.elapsed());
    let b1_after = seen("b1");
    let total = tally.lock().unwrap().len();
    wait_for(WAIT, || (tally.lock().unwrap().len() >= total + 100).then_some(())).unwrap();
    assert_eq!(seen("b1"), b1_after, "b1 got requests after the removal took effect");

    // The endpoint changes reloaded no Lua: no new "config applied".
    assert_eq!(
        dp.process.logs().matches("config applied").count(),
        lua_loads,
        "an endpoint change reloaded the routes:\n{}",
        dp.process.logs()
    );

    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed while endpoints changed"
    );

    // No ready endpoint: 503, with a log line naming the Service.
    env.kubectl_ok(&["delete", "endpointslice", "backend-2"]);
    wait_status_code(&[&dp], "proxied.test", 503);
    dp.process
        .wait_log("no live upstreams", WAIT)
        .unwrap_or_else(|| panic!("no log line for the 503:\n{}", dp.process.logs()));
    assert!(dp.process.logs().contains("backend"), "the log names the Service");

    // The controller gone: the dataplane keeps proxying with what it has.
    env.apply(&endpoint_slice("backend-2", &ip, p2)).unwrap();
    wait_body(&[&dp], "proxied.test", "b2\n");
    controller.kill();
    for _ in 0..50 {
        assert_eq!(dp.get("proxied.test", "/"), Some((200, "b2\n".to_string())));
    }
}

/// A LuaLibrary whose module `resty.jit-uuid` returns `{version = VERSION}`,
/// or whatever Lua `module` is.
fn library_yaml(name: &str, module: &str) -> String {
    let module = module.replace('\n', "\n      ");
    format!(
        "apiVersion: moongate.dev/v1alpha1\nkind: LuaLibrary\nmetadata:\n  name: {name}\nspec:\n  modules:\n    resty.jit-uuid: |\n      {module}\n"
    )
}

/// A LuaRoute on `host` that names `library` and says its module's version.
fn library_user_yaml(name: &str, host: &str, library: &str) -> String {
    route_yaml(name, host, "ngx.say(require(\"resty.jit-uuid\").version)")
        .replace("spec:\n", &format!("spec:\n  libraries: [{library}]\n"))
}

fn library_programmed(library: &serde_json::Value, generation: u64) -> bool {
    library["metadata"]["generation"] == generation
        && library["status"]["observedGeneration"] == generation
        && condition(library, "Accepted").is_some_and(|c| c.0 == "True")
        && condition(library, "Programmed").is_some_and(|c| c.0 == "True")
}

#[test]
fn a_library_shared_by_two_routes_hot_swaps_and_reports_status() {
    let env = Env::new("library");
    let grpc = free_port();
    let _controller = env.controller("controller-0", grpc, free_port());
    let dp = env.dataplane("dp-a", &[grpc]);
    let one = [&dp];

    // A library and two routes naming it, in one apply: both serve it.
    let yaml = [
        library_yaml("shared", "return {version = \"v1\"}"),
        library_user_yaml("first", "first.test", "shared"),
        library_user_yaml("second", "second.test", "shared"),
    ]
    .join("---\n");
    env.apply(&yaml).unwrap();
    wait_body(&one, "first.test", "v1\n");
    wait_body(&one, "second.test", "v1\n");
    let status = env.wait_library_status("shared", "Accepted and Programmed", |l| library_programmed(l, 1));
    assert_eq!(status["status"]["routes"], serde_json::json!(["first", "second"]));
    assert_eq!(status["status"]["modules"], "resty.jit-uuid");
    env.wait_status("first", "Programmed 1/1", |r| programmed_on_all(r, 1));

    // An edit hot-swaps into both routes; the routes' generation is unchanged.
    env.apply(&library_yaml("shared", "return {version = \"v2\"}")).unwrap();
    wait_body(&one, "first.test", "v2\n");
    wait_body(&one, "second.test", "v2\n");
    env.wait_library_status("shared", "Programmed at generation 2", |l| library_programmed(l, 2));
    assert_eq!(env.route_json("first")["metadata"]["generation"], 1);

    // A broken edit: Accepted=False naming the module and line, the routes
    // report it and keep serving generation 2.
    env.apply(&library_yaml("shared", "local M = {}\nfunction M.f(\nreturn M"))
        .unwrap();
    let status = env.wait_library_status("shared", "Accepted=False", |l| {
        l["status"]["observedGeneration"] == 3 && condition(l, "Accepted").is_some_and(|c| c.0 == "False")
    });
    let (_, reason, message) = condition(&status, "Accepted").unwrap();
    assert_eq!(reason, "Invalid");
    assert!(
        message.contains(&format!(
            "library {}/shared: module resty.jit-uuid: line 3",
            env.namespace
        )) && message.ends_with("the routes naming it keep its generation 2"),
        "{message}"
    );
    assert_eq!(status["status"]["servingGeneration"], 2);
    let route = env.wait_status("first", "ResolvedRefs=False", |r| {
        condition(r, "ResolvedRefs").is_some_and(|c| c.0 == "False")
    });
    let (_, reason, message) = condition(&route, "ResolvedRefs").unwrap();
    assert_eq!(reason, "LibraryInvalid");
    assert!(message.contains("keep its generation 2"), "{message}");
    assert_eq!(condition(&route, "Accepted").unwrap().0, "True");
    assert_eq!(dp.get("first.test", "/"), Some((200, "v2\n".to_string())));

    // A route naming a library its namespace does not have is refused,
    // naming the library, and is not served.
    env.apply(&library_user_yaml("orphan", "orphan.test", "nowhere"))
        .unwrap();
    let orphan = env.wait_status("orphan", "Accepted=False", |r| {
        condition(r, "Accepted").is_some_and(|c| c.0 == "False")
    });
    let (_, reason, message) = condition(&orphan, "Accepted").unwrap();
    assert_eq!(reason, "LibraryNotFound");
    assert_eq!(message, format!("LuaLibrary {}/nowhere not found", env.namespace));
    assert_eq!(dp.get("orphan.test", "/").map(|r| r.0), Some(404));

    // The apiserver applies the module name rule, with hyphens allowed.
    let error = env
        .apply(&library_yaml("shared", "return {}").replace("resty.jit-uuid", "resty/evil"))
        .expect_err("a module name with a slash is refused");
    assert!(error.contains("module names must be"), "{error}");
}
