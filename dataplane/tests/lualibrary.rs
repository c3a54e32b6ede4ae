//! LuaLibrary in standalone mode, through the real binary and real sockets:
//! routes of a namespace share a library from the same file, each with its
//! own instance of its modules; a route of another namespace cannot name it;
//! an edit hot-swaps into the routes naming it; a broken edit is rejected
//! with its library, module and line while the last good one keeps serving;
//! `--check` says the same.

mod common;

use std::time::Duration;

use common::{Server, check, route_in, wait_for};

const RELOAD: Duration = Duration::from_secs(30);

/// LuaLibrary `namespace/name` with `modules` (YAML, indented by 4).
fn library(namespace: &str, name: &str, modules: &str) -> String {
    format!(
        "apiVersion: moongate.dev/v1alpha1\nkind: LuaLibrary\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  modules:\n{modules}"
    )
}

/// The shared library at `version`: `resty.jit-uuid` counts its calls in
/// module state, `resty.jwt-validators` requires it (a library module
/// requiring another).
fn shared(version: &str) -> String {
    library(
        "team",
        "shared",
        &format!(
            r#"    resty.jit-uuid: |
      local M = {{calls = 0}}
      function M.bump()
        M.calls = M.calls + 1
        return M.calls
      end
      return M
    resty.jwt-validators: |
      local uuid = require "resty.jit-uuid"
      return {{version = "{version}", bump = uuid.bump}}
"#
        ),
    )
}

/// Route `namespace/name` on `host` whose `/NAME` says the library's version
/// and its own call count.
fn user(namespace: &str, name: &str, host: &str) -> String {
    route_in(
        namespace,
        name,
        &format!(
            r#"  hostnames: [{host}]
  libraries: [shared]
  locations:
  - path: /{name}
    content: |
      local v = require "resty.jwt-validators"
      ngx.say("{name} ", v.version, " ", v.bump())
"#
        ),
    )
}

fn config(parts: &[String]) -> String {
    parts.join("---\n")
}

fn team(version: &str) -> Vec<String> {
    vec![
        shared(version),
        user("team", "a", "team.test"),
        user("team", "b", "team.test"),
    ]
}

fn check_text(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lib.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = check(&path);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn routes_share_a_library_of_their_namespace_and_edits_hot_swap_or_are_refused() {
    let s = Server::builder(&config(&team("v1"))).workers(1).start();
    let get = |path: &str| s.get_host("team.test", path).text();

    // Both routes load the library; each has its own instance of its state.
    assert_eq!(get("/a"), "a v1 1\n");
    assert_eq!(get("/a"), "a v1 2\n");
    assert_eq!(get("/b"), "b v1 1\n", "b's module state is its own, not a's");

    // A route of another namespace cannot name it: the version is refused
    // and the last good one serves on.
    let mut other = team("v1");
    other.push(user("other", "c", "other.test"));
    let before = s.log_count();
    s.write_routes(&config(&other));
    let line = s
        .wait_log_since(before, "config rejected, still serving the last good one", RELOAD)
        .unwrap_or_else(|| panic!("no rejection:\n{}", s.logs()));
    assert!(
        line.contains(r#"route other/c: libraries: library "shared" not found in namespace "other""#),
        "{line}"
    );
    assert_eq!(s.get_host("other.test", "/c").status, 404);
    assert_eq!(get("/a"), "a v1 3\n", "the routes kept their VMs, untouched");

    // An edit of the library hot-swaps into both routes (their modules are
    // loaded afresh, so the counts start again).
    s.write_routes(&config(&team("v2")));
    let swapped = wait_for(RELOAD, || (get("/a") == "a v2 1\n").then_some(()));
    assert!(swapped.is_some(), "v2 never served; logs:\n{}", s.logs());
    assert_eq!(get("/b"), "b v2 1\n");

    // A broken edit names the library, the module and the line, and v2 stays.
    let mut broken = team("v2");
    broken[0] = library(
        "team",
        "shared",
        "    resty.jit-uuid: |\n      local M = {}\n      function M.bump(\n      return M\n",
    );
    let before = s.log_count();
    s.write_routes(&config(&broken));
    let line = s
        .wait_log_since(before, "config rejected, still serving the last good one", RELOAD)
        .unwrap_or_else(|| panic!("no rejection:\n{}", s.logs()));
    assert!(
        line.contains("routes.yaml: library team/shared: module resty.jit-uuid: line 3: "),
        "{line}"
    );
    assert_eq!(get("/a"), "a v2 2\n");
    assert_eq!(get("/b"), "b v2 2\n");
}

#[test]
fn check_applies_the_library_rules_with_the_same_messages() {
    let (code, out) = check_text(&config(&team("v1")));
    assert_eq!(code, Some(0), "{out}");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/library.yaml");
    let out = check(std::path::Path::new(example));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));

    let mut other = team("v1");
    other.push(user("other", "c", "other.test"));
    let (code, out) = check_text(&config(&other));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(r#"route other/c: libraries: library "shared" not found in namespace "other""#),
        "{out}"
    );

    // A route module of the same name as a library module is a conflict.
    let mut clash = team("v1");
    clash[1] = route_in(
        "team",
        "a",
        "  hostnames: [team.test]\n  libraries: [shared]\n  modules:\n    resty.jit-uuid: 'return {}'\n  locations: [{path: /a}]\n",
    );
    let (code, out) = check_text(&config(&clash));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(r#"route team/a: libraries: module "resty.jit-uuid" of library "shared" is also defined by the route's modules"#),
        "{out}"
    );

    // Module names follow the schema's rule, in routes and libraries alike.
    let bad_name = config(&[library("team", "l", "    'resty/evil': 'return {}'\n")]);
    let (code, out) = check_text(&bad_name);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(r#"library team/l: module resty/evil: invalid module name "resty/evil""#),
        "{out}"
    );
}
