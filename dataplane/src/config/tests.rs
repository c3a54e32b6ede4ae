use super::*;
use moongate_route::{source, standalone};

fn config(yaml: &str) -> Config {
    let routes = source::parse_routes(yaml, None).unwrap();
    let sourced: Vec<_> = routes
        .into_iter()
        .map(|route| source::SourcedRoute {
            file: "t.yaml".into(),
            route,
        })
        .collect();
    let built = standalone::from_sources(&sourced, &[], 1).unwrap();
    assert!(built.refused.is_empty(), "{:?}", built.refused);
    Config::try_from(&built.snapshot).unwrap()
}

fn path_of(c: &Config, host: &str, uri: &str) -> Option<String> {
    c.find_location(c.server(&normalize_host(host.as_bytes())), uri.as_bytes())
        .map(|at| c.location(at).path.clone())
}

#[test]
fn nginx_location_selection_order() {
    let c = config(
        r#"
apiVersion: moongate.dev/v1alpha1
kind: LuaRoute
metadata: {name: a}
spec:
  locations:
  - {path: /, content: "ngx.say(1)"}
  - {path: /images/, match: PrefixPriority}
  - {path: /docs/, match: Prefix}
  - {path: /docs/exact, match: Exact}
  - {path: '\.(gif|jpg)$', match: RegexCaseInsensitive}
  - {path: '^/docs/.*\.txt$', match: Regex}
"#,
    );
    assert_eq!(path_of(&c, "x", "/docs/exact").unwrap(), "/docs/exact");
    assert_eq!(
        path_of(&c, "x", "/images/a.gif").unwrap(),
        "/images/",
        "^~ stops the regex search"
    );
    assert_eq!(
        path_of(&c, "x", "/docs/a.JPG").unwrap(),
        r"\.(gif|jpg)$",
        "regexes in declaration order"
    );
    assert_eq!(path_of(&c, "x", "/docs/a.txt").unwrap(), r"^/docs/.*\.txt$");
    assert_eq!(
        path_of(&c, "x", "/docs/a.html").unwrap(),
        "/docs/",
        "longest prefix when no regex matches"
    );
    assert_eq!(path_of(&c, "x", "/other").unwrap(), "/");
}

#[test]
fn hostnames_select_a_server() {
    let c = config(
        r#"
apiVersion: moongate.dev/v1alpha1
kind: LuaRoute
metadata: {name: a}
spec:
  hostnames: [Example.com]
  locations: [{path: /a}]
---
apiVersion: moongate.dev/v1alpha1
kind: LuaRoute
metadata: {name: b}
spec:
  locations: [{path: /b}]
"#,
    );
    assert_eq!(path_of(&c, "example.com", "/a/x").unwrap(), "/a");
    assert_eq!(path_of(&c, "example.com", "/b"), None);
    assert_eq!(path_of(&c, "other", "/b").unwrap(), "/b");
    assert_eq!(
        path_of(&c, "EXAMPLE.COM.", "/a").unwrap(),
        "/a",
        "a trailing dot and case do not matter, as for nginx server_name"
    );
}

/// Routes in namespaces a, b and c on one hostname (a shares it with all),
/// with a location per `allowFrom` case on a/target.
const ACCESS: &str = r#"
apiVersion: moongate.dev/v1alpha1
kind: LuaRoute
metadata: {name: target, namespace: a}
spec:
  hostnames: [shop.example.com]
  allowedNamespaces: ["*"]
  locations:
  - {path: /private, internal: true}
  - {path: /own-namespace, internal: true, allowFrom: [{}]}
  - {path: /just-a-sibling, allowFrom: [{name: sibling}]}
  - {path: /all-of-b, allowFrom: [{namespace: b}, {namespace: c, name: "*"}]}
  - {path: /anyone, internal: true, allowFrom: [{namespace: "*"}]}
  - {path: /b-caller, allowFrom: [{namespace: b, name: caller}]}
---
apiVersion: moongate.dev/v1alpha1
kind: LuaRoute
metadata: {name: sibling, namespace: a}
spec:
  hostnames: [shop.example.com]
  locations: [{path: /sibling}]
---
apiVersion: moongate.dev/v1alpha1
kind: LuaRoute
metadata: {name: cousin, namespace: a}
spec:
  hostnames: [shop.example.com]
  locations: [{path: /cousin}]
---
apiVersion: moongate.dev/v1alpha1
kind: LuaRoute
metadata: {name: caller, namespace: b}
spec:
  hostnames: [shop.example.com]
  locations: [{path: /b}]
---
apiVersion: moongate.dev/v1alpha1
kind: LuaRoute
metadata: {name: caller, namespace: c}
spec:
  hostnames: [shop.example.com]
  locations: [{path: /c}]
"#;

/// Which of the routes (as `ns/name`) may enter `path` of a/target by subrequest.
fn admitted(c: &Config, path: &str) -> Vec<String> {
    let target = c
        .find_location(c.server("shop.example.com"), path.as_bytes())
        .unwrap_or_else(|| panic!("{path} not found"));
    assert_eq!(c.routes[target.route].id, "a/target");
    (0..c.routes.len())
        .filter(|&caller| c.admits(caller, target))
        .map(|caller| c.routes[caller].id.clone())
        .collect()
}

#[test]
fn admits_follows_allow_from() {
    let c = config(ACCESS);
    assert_eq!(
        admitted(&c, "/private"),
        ["a/target"],
        "without allowFrom: only the own route"
    );
    assert_eq!(
        admitted(&c, "/own-namespace"),
        ["a/target", "a/sibling", "a/cousin"],
        "an empty entry: any route of the own namespace"
    );
    assert_eq!(admitted(&c, "/just-a-sibling"), ["a/target", "a/sibling"]);
    assert_eq!(
        admitted(&c, "/all-of-b"),
        ["a/target", "b/caller", "c/caller"],
        "a namespace with no name or name *: any of its routes"
    );
    assert_eq!(admitted(&c, "/anyone").len(), 5, "namespace *: every route");
    assert_eq!(
        admitted(&c, "/b-caller"),
        ["a/target", "b/caller"],
        "a name selects within its namespace only"
    );
}

#[test]
fn internal_is_parsed_and_defaults_to_false() {
    let c = config(ACCESS);
    let internal = |path: &str| {
        let at = c.find_location(c.server("shop.example.com"), path.as_bytes()).unwrap();
        c.location(at).internal
    };
    assert!(internal("/private") && internal("/own-namespace") && internal("/anyone"));
    assert!(!internal("/just-a-sibling") && !internal("/b"));
}

#[test]
fn admits_refuses_what_is_not_a_location() {
    let c = config(ACCESS);
    assert!(!c.admits(0, LocationRef::NONE));
    assert!(!c.admits(usize::MAX, LocationRef { route: 0, location: 0 }));
    assert!(!c.admits(0, LocationRef { route: 0, location: 99 }));
}

#[test]
fn allow_from_as_sent_defaults_to_the_own_namespace_and_any_name() {
    let own = |ns: &str, name: &str| pb::RouteRef {
        namespace: ns.into(),
        name: name.into(),
    };
    let sel = |r: &pb::RouteRef| RouteSelector::from_proto(r, "a");
    assert_eq!(
        sel(&own("", "")),
        RouteSelector {
            namespace: Some("a".into()),
            name: None
        }
    );
    assert_eq!(
        sel(&own("*", "*")),
        RouteSelector {
            namespace: None,
            name: None
        }
    );
    assert_eq!(
        sel(&own("b", "x")),
        RouteSelector {
            namespace: Some("b".into()),
            name: Some("x".into())
        }
    );
}

/// A snapshot of one route in `team` with module `own`, naming `libraries`,
/// beside the given libraries, built by hand as a restored or foreign
/// snapshot could be (the controller never sends a route that does not link).
fn linked(libraries: &[&str], present: Vec<pb::Library>) -> Result<Config> {
    let compiler = moongate_route::compile::Compiler::new();
    let module = |name: &str| pb::Module {
        name: name.into(),
        chunk: Some(compiler.chunk(name, "return {}").unwrap()),
    };
    let route = pb::Route {
        namespace: "team".into(),
        name: "r".into(),
        modules: vec![module("own")],
        libraries: libraries.iter().map(|l| l.to_string()).collect(),
        ..Default::default()
    };
    Config::try_from(&moongate_proto::snapshot::build(vec![route], Vec::new(), present, 1))
}

fn library(namespace: &str, name: &str, modules: &[&str]) -> pb::Library {
    let compiler = moongate_route::compile::Compiler::new();
    pb::Library {
        namespace: namespace.into(),
        name: name.into(),
        generation: 1,
        modules: modules
            .iter()
            .map(|m| pb::Module {
                name: m.to_string(),
                chunk: Some(compiler.chunk(m, "return {}").unwrap()),
            })
            .collect(),
    }
}

#[test]
fn a_route_gets_its_own_modules_then_its_libraries_sharing_their_chunks() {
    let shared = library("team", "shared", &["resty.jit-uuid"]);
    let c = linked(&["shared"], vec![shared]).unwrap();
    let names: Vec<&str> = c.routes[0].modules.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["own", "resty.jit-uuid"]);
}

#[test]
fn a_snapshot_whose_route_does_not_link_is_refused_naming_the_route() {
    let elsewhere = library("other", "shared", &["x"]);
    let err = linked(&["shared"], vec![elsewhere]).unwrap_err().to_string();
    assert_eq!(
        err,
        r#"route team/r: libraries: library "shared" not found in namespace "team""#
    );
    let clash = library("team", "shared", &["own"]);
    let err = linked(&["shared"], vec![clash]).unwrap_err().to_string();
    assert!(
        err.contains(r#"module "own" of library "shared" is also defined by the route's modules"#),
        "{err}"
    );

    let mut corrupt = library("team", "shared", &["x"]);
    corrupt.modules[0].chunk.as_mut().unwrap().bytecode.push(0);
    let err = linked(&["shared"], vec![corrupt]).unwrap_err().to_string();
    assert!(
        err.starts_with("library team/shared: chunk") && err.contains("digest mismatch"),
        "{err}"
    );
}
