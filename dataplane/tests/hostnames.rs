//! Hostname ownership in standalone mode, over the real binary: the namespace
//! of the first route naming a hostname owns it, a route of another namespace
//! naming it is refused whole (logged with file, both routes and the hostname)
//! while the rest is served, and the owner's `allowedNamespaces` lets it in on
//! the next reload. `--check` fails on a refused route.

mod common;

use std::time::Duration;

use common::{Response, Server, check};

const RELOAD: Duration = Duration::from_secs(30);
const HOST: &str = "shop.example.com";

/// Namespace a's route: a Prefix `/` on the shop that answers for a.
fn shop(extra: &str) -> String {
    format!(
        r#"apiVersion: moongate.dev/v1alpha1
kind: LuaRoute
metadata: {{name: shop, namespace: a}}
spec:
  hostnames: [{HOST}]
{extra}  locations:
  - path: /
    content: |
      ngx.say("a: ", ngx.var.uri)
"#
    )
}

/// Namespace b's route on the same host: a regex location that, by nginx's
/// rules, beats a's Prefix `/` for `*.json`, and a path of its own.
fn json() -> String {
    format!(
        r#"apiVersion: moongate.dev/v1alpha1
kind: LuaRoute
metadata: {{name: json, namespace: b}}
spec:
  hostnames: [{HOST}]
  locations:
  - path: '\.json$'
    match: Regex
    content: |
      ngx.say("b: ", ngx.var.uri, " ", tostring(ngx.var.http_authorization))
  - path: /b-only
    content: ngx.say("b only")
"#
    )
}

fn routes(shop_extra: &str) -> String {
    [shop(shop_extra), json()].join("---\n")
}

fn get(s: &Server, path: &str) -> Response {
    s.raw(
        format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer a-secret\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
}

#[test]
fn another_namespace_gets_an_owned_hostname_only_once_the_owner_allows_it() {
    let s = Server::start(&routes(""));
    let r = get(&s, "/a.json");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "a: /a.json\n"),
        "a's request (and token) stays with a; logs:\n{}",
        s.logs()
    );
    // Refused whole: b's other location is not served either.
    assert_eq!(get(&s, "/b-only").text(), "a: /b-only\n");
    let line = s
        .wait_log("route refused", RELOAD)
        .unwrap_or_else(|| panic!("the refusal was not logged:\n{}", s.logs()));
    assert!(line.contains("ERROR"), "{line}");
    for part in [
        "routes.yaml: route b/json: refused:",
        r#"hostname "shop.example.com" belongs to namespace "a""#,
        "route a/shop",
        r#"must list "b" in spec.allowedNamespaces"#,
        "(a/shop is in ",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }

    let before = s.log_count();
    s.write_routes(&routes("  allowedNamespaces: [b]\n"));
    s.wait_log_since(before, "config reloaded", RELOAD)
        .unwrap_or_else(|| panic!("no reload:\n{}", s.logs_since(before)));
    assert!(
        !s.logs_since(before).contains("route refused"),
        "nothing is refused once a allows b:\n{}",
        s.logs_since(before)
    );
    let r = get(&s, "/a.json");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "b: /a.json Bearer a-secret\n"),
        "b's regex location serves it now"
    );
    assert_eq!(get(&s, "/b-only").text(), "b only\n");
    assert_eq!(get(&s, "/index.html").text(), "a: /index.html\n", "a keeps the rest");

    // Taking the allowance back refuses b again on the next reload.
    let before = s.log_count();
    s.write_routes(&routes(""));
    s.wait_log_since(before, "config reloaded", RELOAD)
        .unwrap_or_else(|| panic!("no reload:\n{}", s.logs_since(before)));
    assert!(s.logs_since(before).contains("route b/json: refused"));
    assert_eq!(get(&s, "/a.json").text(), "a: /a.json\n");
}

#[test]
fn check_fails_naming_the_refused_route_and_passes_once_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.yaml");
    std::fs::write(&path, routes("")).unwrap();
    let out = check(&path);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("route b/json"))
        .unwrap_or_else(|| panic!("the refused route is not named:\n{text}"));
    assert!(
        line.contains("shop.yaml") && line.contains(HOST) && line.contains(r#"namespace "a""#),
        "{line}"
    );
    assert!(text.contains("configuration test failed"), "{text}");

    std::fs::write(&path, routes("  allowedNamespaces: ['*']\n")).unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_location_conflict_across_files_is_refused_and_named_too() {
    // Before, standalone silently kept the first of two exact locations.
    let dir = tempfile::tempdir().unwrap();
    let doc = |name: &str, body: &str| {
        format!(
            "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {{name: {name}, namespace: a}}\nspec:\n  hostnames: [{HOST}]\n  locations:\n  - {{path: /x, match: Exact, content: 'ngx.say(\"{body}\")'}}\n"
        )
    };
    std::fs::write(dir.path().join("1-first.yaml"), doc("first", "first")).unwrap();
    std::fs::write(dir.path().join("2-second.yaml"), doc("second", "second")).unwrap();
    let out = check(dir.path());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("route a/second"))
        .unwrap_or_else(|| panic!("{text}"));
    for part in ["2-second.yaml", r#"location "= /x""#, HOST, "a/first", "1-first.yaml"] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
}
