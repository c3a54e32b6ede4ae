//! Each upstream rule, good and bad, through whole routes so each problem is
//! seen with its route, location and field.

use super::*;
use crate::compile::{Compiler, compile_route};
use crate::source::parse_routes;

fn compile_with(compiler: &Compiler, upstream: &str) -> Result<pb::Upstream, Vec<String>> {
    let yaml = format!(
        "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {{name: r, namespace: team}}\nspec:\n  locations:\n  - path: /api/\n    upstream: {upstream}\n"
    );
    let routes = parse_routes(&yaml, None).expect("valid yaml");
    compile_route(compiler, &routes[0], 0)
        .map(|mut r| r.locations.remove(0).upstream.expect("an upstream"))
        .map_err(|ps| ps.iter().map(ToString::to_string).collect())
}

fn compile(upstream: &str) -> Result<pb::Upstream, Vec<String>> {
    compile_with(&Compiler::new(), upstream)
}

/// The one problem of `upstream`, which must name the route, the location and `field`.
fn problem(upstream: &str, field: &str) -> String {
    let problems = compile(upstream).expect_err(upstream);
    assert_eq!(problems.len(), 1, "{problems:?}");
    let prefix = format!("route team/r: location /api/: upstream.{field}: ");
    let p = &problems[0];
    assert!(p.starts_with(&prefix), "{p:?} should start with {prefix:?}");
    p[prefix.len()..].to_string()
}

#[test]
fn a_service_upstream_maps_name_and_port() {
    let u = compile("{service: web, port: 8080, uri: /new/}").unwrap();
    assert_eq!(
        (u.service.as_str(), u.port, u.uri.as_deref()),
        ("web", 8080, Some("/new/"))
    );
    assert!(u.url.is_empty() && u.servers.is_empty() && !u.tls);
    assert_eq!(u.protocol, pb::UpstreamProtocol::Http1 as i32);
    assert_eq!(u.host, None, "omitted: the client's Host");
}

#[test]
fn exactly_one_kind_and_port_only_with_service() {
    let both = compile("{service: web, port: 80, url: 'http://a'}").unwrap_err();
    assert!(
        both.iter()
            .any(|p| p.ends_with("upstream: an upstream has exactly one of service (with port), url or servers")),
        "{both:?}"
    );
    let none = compile("{uri: /x}").unwrap_err();
    assert!(none[0].contains("exactly one of"), "{none:?}");
    assert!(problem("{service: web}", "port").contains("required with service"));
    assert!(problem("{service: web, port: 0}", "port").contains("required"));
    let stray = compile("{url: 'http://a', port: 80}").unwrap_err();
    assert!(
        stray
            .iter()
            .any(|p| p.contains("upstream.port: port is only used with service")),
        "{stray:?}"
    );
    assert!(problem("{service: Web_1, port: 80}", "service").contains("DNS-1035"));
}

#[test]
fn a_url_splits_into_base_and_uri_and_https_turns_tls_on() {
    let u = compile("{url: 'http://127.0.0.1:8081/prefix/'}").unwrap();
    assert_eq!(
        (u.url.as_str(), u.uri.as_deref(), u.tls),
        ("http://127.0.0.1:8081", Some("/prefix/"), false)
    );
    let u = compile("{url: 'https://api.internal'}").unwrap();
    assert_eq!(
        (u.url.as_str(), u.uri.as_deref(), u.tls),
        ("https://api.internal", None, true)
    );
    assert_eq!(u.tls_settings, None, "defaults: verified against the system roots");
    // `http://a/` has the URI part "/", `http://a` none: nginx tells them apart.
    assert_eq!(compile("{url: 'http://a/'}").unwrap().uri.as_deref(), Some("/"));
    let u = compile("{url: 'http://[::1]:9000/x', tls: {serverName: x.internal}}");
    assert!(u.unwrap_err()[0].contains("upstream.tls: tls with an http:// url"));
    let u = compile("{url: 'https://[::1]:9000/x', tls: {serverName: x.internal}}").unwrap();
    assert_eq!((u.url.as_str(), u.tls), ("https://[::1]:9000", true));
    assert_eq!(u.tls_settings.unwrap().server_name, "x.internal");
}

#[test]
fn bad_urls_are_named() {
    assert!(problem("{url: 'ftp://a'}", "url").contains("http:// or https://"));
    assert!(problem("{url: 'http://u@a/'}", "url").contains("user info"));
    assert!(problem("{url: 'http://a/?q=1'}", "url").contains("query or fragment"));
    assert!(problem("{url: 'http://a:0/'}", "url").contains("invalid port"));
    assert!(problem("{url: 'http://a_b/'}", "url").contains("invalid host"));
    assert!(problem("{url: 'http://a', uri: /x}", "uri").contains("the url's path is its URI part"));
}

#[test]
fn servers_carry_weights_defaulting_to_one() {
    let u = compile(
        "{servers: [{address: '127.0.0.1:8081', weight: 2}, {address: '[::1]:80'}, {address: 'b.internal:9'}]}",
    )
    .unwrap();
    let servers: Vec<(&str, u32)> = u.servers.iter().map(|s| (s.address.as_str(), s.weight)).collect();
    assert_eq!(servers, [("127.0.0.1:8081", 2), ("[::1]:80", 1), ("b.internal:9", 1)]);
    assert!(problem("{servers: [{address: '127.0.0.1'}]}", "servers[0].address").contains("port is required"));
    assert!(problem("{servers: [{address: '::1:80'}]}", "servers[0].address").contains("brackets"));
    assert!(problem("{servers: [{address: 'a:+80'}]}", "servers[0].address").contains("invalid port"));
    assert!(problem("{servers: [{address: 'a:80', weight: 1001}]}", "servers[0].weight").contains("1..=1000"));
    assert!(problem("{servers: []}", "servers").contains("1 to 64"));
    assert!(problem("{servers: [{address: 'a:80'}], uri: 'x'}", "uri").contains("starts with '/'"));
}

#[test]
fn protocol_and_host_header() {
    let u = compile("{service: web, port: 80, protocol: HTTP2, host: $proxy_host}").unwrap();
    assert_eq!(u.protocol, pb::UpstreamProtocol::Http2 as i32);
    assert_eq!(u.host.as_deref(), Some("$proxy_host"));
    let u = compile("{service: web, port: 80, host: 'api.example.com:8443'}").unwrap();
    assert_eq!(u.host.as_deref(), Some("api.example.com:8443"));
    assert!(problem("{service: web, port: 80, host: 'a b'}", "host").contains("$proxy_host"));
}

#[test]
fn balance_policies_and_their_hash_key() {
    let u = compile("{service: web, port: 80, balance: {policy: LeastRequest}}").unwrap();
    assert_eq!(u.balance.unwrap().kind, pb::BalanceKind::LeastRequest as i32);
    let hash = |on: &str| {
        compile(&format!(
            "{{service: w, port: 1, balance: {{policy: ConsistentHash, hashOn: {on}}}}}"
        ))
    };
    let b = hash("{header: X-User}").unwrap().balance.unwrap();
    assert_eq!(
        (b.kind, b.hash_header.as_str()),
        (pb::BalanceKind::ConsistentHash as i32, "X-User")
    );
    assert_eq!(hash("{cookie: sid}").unwrap().balance.unwrap().hash_cookie, "sid");
    assert_eq!(
        hash("{var: request_uri}").unwrap().balance.unwrap().hash_var,
        "request_uri"
    );
    assert!(hash("{clientIP: true}").unwrap().balance.unwrap().hash_client_ip);

    let two = hash("{header: X-User, cookie: sid}").unwrap_err();
    assert!(two[0].contains("upstream.balance.hashOn: exactly one of"), "{two:?}");
    assert!(hash("{clientIP: false}").unwrap_err()[0].contains("hashes on nothing"));
    assert!(hash("{var: '$uri'}").unwrap_err()[0].contains("without '$'"));
    assert!(
        problem(
            "{service: w, port: 1, balance: {policy: ConsistentHash}}",
            "balance.hashOn"
        )
        .contains("required")
    );
    assert!(
        problem(
            "{service: w, port: 1, balance: {hashOn: {header: X}}}",
            "balance.hashOn"
        )
        .contains("only used with policy ConsistentHash")
    );
}

#[test]
fn durations_become_milliseconds_within_1ms_to_1h() {
    let u = compile("{service: w, port: 1, timeouts: {connect: 250ms, send: 1m, read: 1h}}").unwrap();
    assert_eq!(
        u.timeouts.unwrap(),
        pb::UpstreamTimeouts {
            connect_ms: 250,
            send_ms: 60_000,
            read_ms: 3_600_000
        }
    );
    let u = compile("{service: w, port: 1, timeouts: {read: 5s}}")
        .unwrap()
        .timeouts
        .unwrap();
    assert_eq!((u.connect_ms, u.read_ms), (0, 5000), "omitted: 0, the dataplane's 60 s");
    assert!(problem("{service: w, port: 1, timeouts: {connect: 0ms}}", "timeouts.connect").contains("1ms..=1h"));
    assert!(problem("{service: w, port: 1, timeouts: {read: 61m}}", "timeouts.read").contains("1ms..=1h"));
    assert!(problem("{service: w, port: 1, timeouts: {send: '5'}}", "timeouts.send").contains("invalid duration"));
}

#[test]
fn retries_map_on_error_false_to_no_retry_on_error() {
    let r = compile(
        "{service: w, port: 1, retries: {tries: 3, onStatus: [502, 503, 504], onError: false, nonIdempotent: true, budgetPercent: 50, minRetriesPerSecond: 5}}",
    )
    .unwrap()
    .retry
    .unwrap();
    assert_eq!(
        r,
        pb::Retry {
            tries: 3,
            on_status: vec![502, 503, 504],
            no_retry_on_error: true,
            non_idempotent: true,
            budget_percent: 50,
            min_retries_per_second: 5
        }
    );
    let r = compile("{service: w, port: 1, retries: {onError: true}}")
        .unwrap()
        .retry
        .unwrap();
    assert!(!r.no_retry_on_error && r.tries == 0);
    assert!(problem("{service: w, port: 1, retries: {tries: 11}}", "retries.tries").contains("1..=10"));
    assert!(problem("{service: w, port: 1, retries: {onStatus: [600]}}", "retries.onStatus").contains("600"));
    assert!(
        problem(
            "{service: w, port: 1, retries: {onStatus: [502, 502]}}",
            "retries.onStatus"
        )
        .contains("twice")
    );
    assert!(
        problem(
            "{service: w, port: 1, retries: {budgetPercent: 0}}",
            "retries.budgetPercent"
        )
        .contains("1..=100")
    );
}

#[test]
fn health_and_keepalive_map_enabled_false_to_disabled() {
    let u = compile(
        "{service: w, port: 1, passiveHealth: {consecutiveFailures: 5, baseEjectionTime: 10s, maxEjectionTime: 300s, enabled: false}, activeHealth: {path: /healthz, interval: 5s, timeout: 1s, healthyThreshold: 2, unhealthyThreshold: 3, statuses: [200]}, keepalive: {maxIdle: 32, idleTimeout: 60s, maxRequests: 1000, enabled: false}}",
    )
    .unwrap();
    assert_eq!(
        u.passive_health.unwrap(),
        pb::PassiveHealth {
            consecutive_failures: 5,
            base_ejection_ms: 10_000,
            max_ejection_ms: 300_000,
            disabled: true
        }
    );
    assert_eq!(
        u.active_health.unwrap(),
        pb::ActiveHealth {
            path: "/healthz".into(),
            interval_ms: 5000,
            timeout_ms: 1000,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            statuses: vec![200]
        }
    );
    assert_eq!(
        u.keepalive.unwrap(),
        pb::Keepalive {
            max_idle: 32,
            idle_timeout_ms: 60_000,
            max_requests: 1000,
            disabled: true
        }
    );
    let on = compile("{service: w, port: 1, keepalive: {enabled: true}, passiveHealth: {}}").unwrap();
    assert!(!on.keepalive.unwrap().disabled && !on.passive_health.unwrap().disabled);

    let p = problem(
        "{service: w, port: 1, passiveHealth: {baseEjectionTime: 10m}}",
        "passiveHealth.maxEjectionTime",
    );
    assert!(p.contains("below baseEjectionTime"), "{p}");
    let p = problem(
        "{service: w, port: 1, activeHealth: {path: /h, interval: 1s, timeout: 2s}}",
        "activeHealth.timeout",
    );
    assert!(p.contains("longer than interval"), "{p}");
    assert!(problem("{service: w, port: 1, activeHealth: {path: h}}", "activeHealth.path").contains("starts with '/'"));
    assert!(
        problem(
            "{service: w, port: 1, activeHealth: {path: /h, statuses: [99]}}",
            "activeHealth.statuses"
        )
        .contains("99")
    );
    assert!(problem("{service: w, port: 1, keepalive: {maxIdle: 2000}}", "keepalive.maxIdle").contains("1..=1024"));
}

#[test]
fn tls_files_are_read_in_standalone_mode_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
    let upstream = format!(
        "{{servers: [{{address: 'a:443'}}], tls: {{caFile: '{}'}}}}",
        ca.display()
    );

    let u = compile_with(&Compiler::standalone(), &upstream).unwrap();
    assert!(u.tls, "tls on servers turns TLS on");
    assert!(
        u.tls_settings
            .unwrap()
            .ca_pem
            .starts_with(b"-----BEGIN CERTIFICATE-----")
    );

    let refused = compile(&upstream).unwrap_err();
    assert!(
        refused[0].contains("upstream.tls.caFile: files are read in standalone mode only; on a cluster use caSecret"),
        "{refused:?}"
    );
    let relative = compile_with(
        &Compiler::standalone(),
        "{servers: [{address: 'a:443'}], tls: {caFile: ca.pem}}",
    );
    assert!(relative.unwrap_err()[0].contains("must be an absolute path"));
    let not_pem = dir.path().join("x.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let bad = compile_with(
        &Compiler::standalone(),
        &format!(
            "{{servers: [{{address: 'a:443'}}], tls: {{caFile: '{}'}}}}",
            not_pem.display()
        ),
    );
    assert!(bad.unwrap_err()[0].contains("not a PEM file"));
    let half = compile_with(
        &Compiler::standalone(),
        &format!(
            "{{servers: [{{address: 'a:443'}}], tls: {{clientCertFile: '{}'}}}}",
            ca.display()
        ),
    );
    assert!(half.unwrap_err()[0].contains("upstream.tls.clientKeyFile: clientCertFile needs clientKeyFile"));
}

#[test]
fn secrets_are_refused_until_supported() {
    assert!(problem("{service: w, port: 1, tls: {caSecret: my-ca}}", "tls.caSecret").contains("not supported yet"));
    assert!(
        problem(
            "{service: w, port: 1, tls: {clientSecret: my-cert}}",
            "tls.clientSecret"
        )
        .contains("not supported yet")
    );
}

#[test]
fn a_balancer_handler_compiles_and_requires_an_upstream() {
    let yaml = "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {name: r, namespace: team}\nspec:\n  locations:\n  - path: /a\n    upstream: {service: w, port: 1}\n    balancer: ngx.log(ngx.INFO, 'pick')\n  - path: /b\n    balancer: 'x('\n    content: ngx.say(1)\n  - path: /c\n    content: ngx.say(1)\n    upstream: {service: w, port: 1}\n";
    let routes = parse_routes(yaml, None).unwrap();
    let problems: Vec<String> = compile_route(&Compiler::new(), &routes[0], 0)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("location /b: balancer: balancer (balancer_by_lua) requires upstream"));
    assert!(problems[1].contains("location /b: balancer: line 1:"), "{problems:?}");
    assert!(problems[2].contains("location /c: upstream: a location has either content"));

    let ok = &routes[0].spec.locations[0];
    let mut route = routes[0].clone();
    route.spec.locations = vec![ok.clone()];
    let compiled = compile_route(&Compiler::new(), &route, 0).unwrap();
    let chunk = compiled.locations[0].balancer.as_ref().unwrap();
    assert_eq!(chunk.name, "=balancer_by_lua(team/r /a)");
}
