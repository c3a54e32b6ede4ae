//! Translation of a case into one `LuaRoute` document for the standalone dataplane.
//!
//! The document is written as JSON: JSON is YAML, so the dataplane's YAML loader
//! reads it, and serde_json quotes every string correctly (Lua code is full of
//! characters YAML would otherwise treat specially).

use serde::Serialize;

use super::case::{Case, OrderedMap, parse_proxy_pass};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LuaRoute<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: Spec<'a>,
}

#[derive(Serialize)]
struct Metadata {
    name: &'static str,
    namespace: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Spec<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    shared_dicts: Vec<SharedDict<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    init: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    init_worker: Option<&'a str>,
    locations: Vec<Location<'a>>,
}

#[derive(Serialize)]
struct SharedDict<'a> {
    name: &'a str,
    capacity: &'a str,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct Location<'a> {
    path: &'a str,
    #[serde(rename = "match")]
    match_kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    vars: Option<&'a OrderedMap<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_type: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    need_request_body: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    rewrite: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    access: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    header_filter: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_filter: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<Upstream<'a>>,
}

/// `proxy_pass http://127.0.0.1:PORT[/URI]` with nginx's defaults as far as
/// the LuaRoute has them: `Host: 127.0.0.1:PORT` (`$proxy_host`) and no kept
/// upstream connection (nginx closes after each request). The LuaRoute has no
/// setting for HTTP/1.0 to the upstream.
#[derive(Serialize)]
struct Upstream<'a> {
    url: &'a str,
    host: &'static str,
    keepalive: Keepalive,
}

#[derive(Serialize)]
struct Keepalive {
    enabled: bool,
}

/// The LuaRoute `match` value for an nginx location modifier.
pub fn match_kind(modifier: &str) -> Result<&'static str, String> {
    Ok(match modifier {
        "" => "Prefix",
        "=" => "Exact",
        "^~" => "PrefixPriority",
        "~" => "Regex",
        "~*" => "RegexCaseInsensitive",
        other => return Err(format!("bad location modifier {other:?}")),
    })
}

/// Builds the routes file content for a case. Fails on what the LuaRoute cannot
/// express (unknown modifiers or phases), with a message for the FAIL line.
pub fn to_routes_yaml(case: &Case) -> Result<String, String> {
    let shared_dicts = case
        .shared_dicts
        .iter()
        .flat_map(OrderedMap::iter)
        .map(|(name, capacity)| SharedDict { name, capacity })
        .collect();
    let mut locations = Vec::new();
    for loc in case.locations.as_deref().unwrap_or_default() {
        let mut out = Location {
            path: &loc.path,
            match_kind: match_kind(loc.modifier.as_deref().unwrap_or(""))?,
            vars: loc.vars.as_ref().filter(|v| !v.is_empty()),
            default_type: loc.default_type.as_deref(),
            need_request_body: loc.need_request_body.unwrap_or(false),
            ..Location::default()
        };
        for (phase, code) in loc.phases.iter().flat_map(OrderedMap::iter) {
            let slot = match phase {
                "rewrite" => &mut out.rewrite,
                "access" => &mut out.access,
                "content" => &mut out.content,
                "header_filter" => &mut out.header_filter,
                "body_filter" => &mut out.body_filter,
                "log" => &mut out.log,
                other => return Err(format!("unknown phase {other:?}")),
            };
            *slot = code.as_deref();
        }
        if let Some(url) = &loc.proxy_pass {
            if parse_proxy_pass(url).is_none() {
                return Err(format!("bad proxy_pass {url:?} in location {:?}", loc.path));
            }
            out.upstream = Some(Upstream {
                url,
                host: "$proxy_host",
                keepalive: Keepalive { enabled: false },
            });
        }
        locations.push(out);
    }
    let route = LuaRoute {
        api_version: "moongate.dev/v1alpha1",
        kind: "LuaRoute",
        metadata: Metadata {
            name: "case",
            namespace: "default",
        },
        spec: Spec {
            shared_dicts,
            init: case.init.as_deref(),
            init_worker: case.init_worker.as_deref(),
            locations,
        },
    };
    let json = serde_json::to_string_pretty(&route).map_err(|e| format!("cannot serialize the route: {e}"))?;
    Ok(escape_non_yaml_printable(&json))
}

/// serde_json writes DEL, C1 controls and BOMs raw, but YAML does not allow them
/// unescaped. They can only occur inside strings, where `\uXXXX` means the same
/// in JSON and in YAML.
fn escape_non_yaml_printable(json: &str) -> String {
    let bad = |c: char| matches!(c, '\u{7f}'..='\u{84}' | '\u{86}'..='\u{9f}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}');
    if !json.contains(bad) {
        return json.to_string();
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if bad(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::conformance::case::parse_case;

    fn case(text: &str) -> Case {
        parse_case(text, Path::new("t.json")).unwrap().case.unwrap()
    }

    #[test]
    fn translates_every_field() {
        let c = case(
            r#"{"id":"x#1","shared_dicts":{"dogs":"1m","cats":"100k"},"init":"a=1","init_worker":null,
            "locations":[
              {"modifier":"=","path":"/test","default_type":"text/html","vars":{"b":"2","a":"1"},
               "need_request_body":true,"phases":{"content":"ngx.say(1)","rewrite":"r","header_filter":"h",
               "body_filter":"b","log":"l","access":"a"}},
              {"modifier":"~*","path":"^/re(.*)","phases":{}},
              {"path":"/p"}],
            "requests":[{}],"expect":[{}]}"#,
        );
        let doc: serde_json::Value = serde_json::from_str(&to_routes_yaml(&c).unwrap()).unwrap();
        let want = serde_json::json!({
            "apiVersion": "moongate.dev/v1alpha1",
            "kind": "LuaRoute",
            "metadata": {"name": "case", "namespace": "default"},
            "spec": {
                "sharedDicts": [{"name": "dogs", "capacity": "1m"}, {"name": "cats", "capacity": "100k"}],
                "init": "a=1",
                "locations": [
                    {"path": "/test", "match": "Exact", "vars": {"a": "1", "b": "2"}, "defaultType": "text/html",
                     "needRequestBody": true, "rewrite": "r", "access": "a", "content": "ngx.say(1)",
                     "headerFilter": "h", "bodyFilter": "b", "log": "l"},
                    {"path": "^/re(.*)", "match": "RegexCaseInsensitive"},
                    {"path": "/p", "match": "Prefix"},
                ],
            },
        });
        assert_eq!(doc, want);
    }

    #[test]
    fn keeps_var_and_location_order() {
        let c = case(r#"{"locations":[{"path":"/b","vars":{"z":"1","a":"2"}},{"path":"/a"}]}"#);
        let text = to_routes_yaml(&c).unwrap();
        assert!(text.find("\"z\"").unwrap() < text.find("\"a\"").unwrap());
        assert!(text.find("\"/b\"").unwrap() < text.find("\"/a\"").unwrap());
    }

    #[test]
    fn rejects_unknown_phase_and_modifier() {
        let c = case(r#"{"locations":[{"path":"/","phases":{"ssl":"x"}}]}"#);
        assert_eq!(to_routes_yaml(&c).unwrap_err(), "unknown phase \"ssl\"");
        let c = case(r#"{"locations":[{"path":"/","modifier":"@"}]}"#);
        assert_eq!(to_routes_yaml(&c).unwrap_err(), "bad location modifier \"@\"");
    }

    #[test]
    fn proxy_pass_becomes_an_upstream() {
        let c = case(
            r#"{"format":2,"locations":[{"path":"/p","proxy_pass":"http://127.0.0.1:8080/backend","phases":{"rewrite":"r"}},
            {"path":"/q","proxy_pass":"http://127.0.0.1:81"}]}"#,
        );
        let doc: serde_json::Value = serde_json::from_str(&to_routes_yaml(&c).unwrap()).unwrap();
        let up = serde_json::json!({"url": "http://127.0.0.1:8080/backend", "host": "$proxy_host",
                                    "keepalive": {"enabled": false}});
        assert_eq!(doc["spec"]["locations"][0]["upstream"], up);
        assert_eq!(doc["spec"]["locations"][0]["rewrite"], "r");
        assert_eq!(doc["spec"]["locations"][1]["upstream"]["url"], "http://127.0.0.1:81");
        let c =
            case(r#"{"format":2,"locations":[{"path":"/p","proxy_pass":"http://127.0.0.1:$TEST_NGINX_SERVER_PORT"}]}"#);
        assert!(to_routes_yaml(&c).unwrap_err().contains("bad proxy_pass"));
    }

    #[test]
    fn escapes_characters_yaml_forbids() {
        let c = case("{\"init\":\"a\u{7f}\u{85}\u{9f}\",\"locations\":[]}");
        let text = to_routes_yaml(&c).unwrap();
        assert!(text.contains("a\\u007f\u{85}\\u009f"));
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["spec"]["init"], "a\u{7f}\u{85}\u{9f}");
    }
}

/// Every shipped case translates to a routes file the dataplane's loader accepts.
#[cfg(test)]
mod loader_tests {
    use std::path::PathBuf;

    use super::to_routes_yaml;
    use crate::conformance::case::{Ports, load_cases};

    #[test]
    fn all_cases_load_as_lua_routes() {
        let dir = std::env::var_os("MOONGATE_CONFORMANCE_CASES").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/cases"),
            PathBuf::from,
        );
        if !dir.is_dir() {
            eprintln!("skipped: no cases at {}", dir.display());
            return;
        }
        let cases = load_cases(&[dir]).unwrap();
        assert!(!cases.is_empty());
        let ports = Ports {
            server: 40001,
            redis: Some(40002),
            memcached: Some(40003),
        };
        for loaded in &cases {
            let case = loaded.case.as_ref().unwrap();
            case.validate().unwrap_or_else(|e| panic!("{}: {e}", loaded.id));
            let case = &case.substituted(&ports).unwrap();
            let text = to_routes_yaml(case).unwrap();
            let routes = moongate_route::source::parse_routes(&text, None)
                .unwrap_or_else(|e| panic!("{}: {e}\n{text}", loaded.id));
            assert_eq!(routes.len(), 1);
            let spec = &routes[0].spec;
            let locations = case.locations.as_deref().unwrap_or_default();
            assert_eq!(spec.locations.len(), locations.len(), "{}", loaded.id);
            for (got, want) in spec.locations.iter().zip(locations) {
                assert_eq!(got.path, want.path, "{}", loaded.id);
                let content = want
                    .phases
                    .as_ref()
                    .and_then(|p| p.iter().find(|(k, _)| *k == "content"));
                assert_eq!(
                    got.content.as_deref(),
                    content.and_then(|(_, c)| c.as_deref()),
                    "{}",
                    loaded.id
                );
            }
            assert_eq!(spec.init, case.init, "{}", loaded.id);
        }
    }
}
