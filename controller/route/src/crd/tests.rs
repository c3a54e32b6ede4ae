use super::*;
use crate::quantity::parse_bytes;
use kube::CustomResourceExt;
use serde_json::{Value, json};

fn schema() -> Value {
    let crd = serde_json::to_value(LuaRoute::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn spec() -> Value {
    schema()["properties"]["spec"].clone()
}

fn location() -> Value {
    spec()["properties"]["locations"]["items"].clone()
}

/// The CEL rules at a schema node, as (rule, message) pairs.
fn rules(at: &Value) -> Vec<(String, String)> {
    at["x-kubernetes-validations"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| {
                    (
                        r["rule"].as_str().unwrap().to_string(),
                        r["message"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A schema `pattern`, anchored as the apiserver (Go RE2) reads it; pcre2 agrees
/// with RE2 on these simple patterns.
fn pattern(at: &Value) -> pcre2::bytes::Regex {
    let p = at["pattern"].as_str().unwrap_or_else(|| panic!("no pattern at {at}"));
    pcre2::bytes::Regex::new(p).unwrap()
}

fn matches(re: &pcre2::bytes::Regex, s: &str) -> bool {
    re.is_match(s.as_bytes()).unwrap()
}

#[test]
fn hostnames_are_bounded_unique_dns_names() {
    let h = &spec()["properties"]["hostnames"];
    assert_eq!(h["maxItems"], 16);
    assert_eq!(h["x-kubernetes-list-type"], "set");
    assert_eq!(h["items"]["maxLength"], 253);
    assert_eq!(h["items"]["minLength"], 1);
    assert_eq!(h["items"]["pattern"], HOSTNAME_PATTERN);
    let re = pattern(&h["items"]);
    for ok in [
        "example.com",
        "a.b-c.example.com",
        "*.example.com",
        "localhost",
        "10.0.0.1",
        "xn--bcher-kva.example",
        &format!("{}.com", "a".repeat(63)),
    ] {
        assert!(matches(&re, ok), "{ok} should be accepted");
    }
    for bad in [
        "",
        "Example.com",
        "*",
        "*.",
        "a.*.example.com",
        "www.example.*",
        "example.com:8080",
        "http://example.com",
        "-a.example.com",
        "a-.example.com",
        "a..b",
        ".example.com",
        "example.com.",
        "exa mple.com",
        "exa_mple.com",
        &format!("{}.com", "a".repeat(64)),
    ] {
        assert!(!matches(&re, bad), "{bad:?} should be rejected");
    }
}

#[test]
fn locations_are_bounded_and_unique_by_match_and_path() {
    let l = &spec()["properties"]["locations"];
    assert_eq!(l["minItems"], 1);
    assert_eq!(l["maxItems"], 256);
    assert_eq!(l["x-kubernetes-list-type"], "map");
    assert_eq!(l["x-kubernetes-list-map-keys"], json!(["match", "path"]));
    // A list-map key must be required or defaulted.
    assert_eq!(l["items"]["required"], json!(["path"]));
    assert_eq!(l["items"]["properties"]["match"]["default"], "Prefix");
    assert_eq!(
        l["items"]["properties"]["match"]["enum"],
        json!(["Prefix", "Exact", "PrefixPriority", "Regex", "RegexCaseInsensitive"])
    );
    assert!(rules(l).is_empty(), "uniqueness needs no quadratic CEL rule");
}

#[test]
fn a_location_checks_its_path_and_handlers() {
    let loc = location();
    assert_eq!(loc["required"], json!(["path"]));
    let path = &loc["properties"]["path"];
    assert_eq!(path["minLength"], 1);
    assert_eq!(path["maxLength"], 1024);

    let cel = loc["x-kubernetes-validations"].as_array().unwrap();
    assert_eq!(cel.len(), 3);
    assert_eq!(
        cel[0]["rule"],
        "(has(self.match) && self.match in ['Regex', 'RegexCaseInsensitive']) || self.path.startsWith('/')"
    );
    assert_eq!(cel[0]["fieldPath"], ".path");
    assert_eq!(cel[0]["reason"], "FieldValueInvalid");
    assert_eq!(cel[1]["rule"], "!has(self.content) || !has(self.upstream)");
    assert_eq!(cel[1]["fieldPath"], ".upstream");
    assert_eq!(cel[1]["reason"], "FieldValueForbidden");
    assert_eq!(cel[2]["rule"], "!has(self.balancer) || has(self.upstream)");
    assert_eq!(cel[2]["fieldPath"], ".balancer");
    assert_eq!(cel[2]["reason"], "FieldValueForbidden");

    // No rule demands a handler: a location without content or upstream is a 404,
    // as in nginx, and one with only filters is fine.
    assert!(
        !cel.iter()
            .any(|r| r["rule"].as_str().unwrap().contains("has(self.rewrite)"))
    );

    let vars = &loc["properties"]["vars"];
    assert_eq!(vars["maxProperties"], 64);
    assert_eq!(
        rules(vars)[0].0,
        format!("self.all(k, k.matches('{VAR_NAME_PATTERN}'))")
    );

    let default_type = &loc["properties"]["defaultType"];
    assert_eq!(default_type["maxLength"], 255);
    assert_eq!(default_type["nullable"], true);
    let re = pattern(default_type);
    for ok in [
        "text/plain",
        "application/json",
        "application/vnd.api+json",
        "text/html; charset=utf-8",
    ] {
        assert!(matches(&re, ok), "{ok} should be accepted");
    }
    for bad in [
        "",
        "json",
        "text/",
        "/json",
        "text/html\r\nX-Evil: 1",
        "text html/plain",
    ] {
        assert!(!matches(&re, bad), "{bad:?} should be rejected");
    }
}

#[test]
fn upstream_is_one_of_service_url_or_servers() {
    let u = &location()["properties"]["upstream"];
    assert!(u.get("required").is_none(), "each kind is optional; CEL picks one");
    let cel = u["x-kubernetes-validations"].as_array().unwrap();
    let by_path = |path: &str| {
        cel.iter()
            .find(|r| r["fieldPath"] == path)
            .unwrap_or_else(|| panic!("{path}"))
    };
    assert_eq!(
        by_path(".service")["rule"],
        "(has(self.service) ? 1 : 0) + (has(self.url) ? 1 : 0) + (has(self.servers) ? 1 : 0) == 1"
    );
    assert_eq!(by_path(".port")["rule"], "has(self.service) == has(self.port)");
    assert_eq!(by_path(".uri")["rule"], "!has(self.uri) || !has(self.url)");
    assert_eq!(by_path(".uri")["reason"], "FieldValueForbidden");

    let props = &u["properties"];
    assert_eq!(props["port"]["minimum"].as_f64(), Some(1.0));
    assert_eq!(props["port"]["maximum"].as_f64(), Some(65535.0));
    assert_eq!(props["port"]["format"], "int32");
    let service = &props["service"];
    assert_eq!(service["maxLength"], 63);
    let re = pattern(service);
    for ok in ["web", "my-svc", "a1", "a"] {
        assert!(matches(&re, ok), "{ok} should be accepted");
    }
    for bad in ["", "1web", "Web", "my_svc", "my.svc", "web-", &"a".repeat(64)] {
        assert!(!matches(&re, bad), "{bad:?} should be rejected");
    }

    let servers = &props["servers"];
    assert_eq!(
        (servers["minItems"].as_u64(), servers["maxItems"].as_u64()),
        (Some(1), Some(64))
    );
    assert_eq!(servers["items"]["required"], json!(["address"]));
    let weight = &servers["items"]["properties"]["weight"];
    assert_eq!(
        (weight["minimum"].as_f64(), weight["maximum"].as_f64()),
        (Some(1.0), Some(1000.0))
    );
    let re = pattern(&servers["items"]["properties"]["address"]);
    for ok in ["127.0.0.1:8081", "web.internal:80", "[::1]:443", "a:1"] {
        assert!(matches(&re, ok), "{ok} should be accepted");
    }
    for bad in ["127.0.0.1", "web:", ":80", "::1:80", "http://a:80", "a b:80", "[::1]"] {
        assert!(!matches(&re, bad), "{bad:?} should be rejected");
    }

    let re = pattern(&props["url"]);
    for ok in [
        "http://127.0.0.1:8081/prefix/",
        "https://api.internal",
        "http://[::1]:80/",
        "http://a/b/c",
    ] {
        assert!(matches(&re, ok), "{ok} should be accepted");
    }
    for bad in [
        "ftp://a",
        "http://",
        "http://u:p@a/",
        "http://a/?q=1",
        "http://a/#f",
        "a:80",
        "http://a /",
    ] {
        assert!(!matches(&re, bad), "{bad:?} should be rejected");
    }
    let re = pattern(&props["uri"]);
    assert!(matches(&re, "/new/") && matches(&re, "/"));
    for bad in ["new/", "/a?b", "/a#b", "/a b", ""] {
        assert!(!matches(&re, bad), "{bad:?} should be rejected");
    }
    let re = pattern(&props["host"]);
    for ok in [
        "$proxy_host",
        "api.internal",
        "api.internal:8080",
        "[::1]:80",
        "10.0.0.1",
    ] {
        assert!(matches(&re, ok), "{ok} should be accepted");
    }
    for bad in ["$host", "a b", "a/b", "api.internal:", "http://a"] {
        assert!(!matches(&re, bad), "{bad:?} should be rejected");
    }
    assert_eq!(props["protocol"]["enum"], json!(["HTTP1", "HTTP2"]));
    assert_eq!(props["protocol"]["default"], "HTTP1");
}

#[test]
fn durations_are_a_number_and_a_unit_that_compile_parses() {
    let t = &location()["properties"]["upstream"]["properties"]["timeouts"]["properties"];
    for field in ["connect", "send", "read"] {
        assert_eq!(t[field]["pattern"], DURATION_PATTERN, "{field}");
    }
    let re = pattern(&t["connect"]);
    for ok in ["250ms", "5s", "1m", "1h", "60s"] {
        assert!(matches(&re, ok), "{ok} should be accepted");
        assert!(crate::compile::parse_duration_ms(ok).is_ok(), "{ok} should parse");
    }
    for bad in ["", "5", "s", "1.5s", "5 s", "-1s", "1d", "5S"] {
        assert!(!matches(&re, bad), "{bad:?} should be rejected");
        assert!(
            crate::compile::parse_duration_ms(bad).is_err(),
            "{bad:?} should not parse"
        );
    }
}

#[test]
fn balance_hashes_on_exactly_one_key_for_consistent_hash_only() {
    let b = &location()["properties"]["upstream"]["properties"]["balance"];
    assert_eq!(
        b["properties"]["policy"]["enum"],
        json!(["RoundRobin", "LeastRequest", "ConsistentHash"])
    );
    assert_eq!(
        rules(b)[0].0,
        "has(self.hashOn) == (has(self.policy) && self.policy == 'ConsistentHash')"
    );
    let on = &b["properties"]["hashOn"];
    assert!(rules(on)[0].0.ends_with("(has(self.clientIP) ? 1 : 0) == 1"));
    assert!(on["properties"]["clientIP"].is_object(), "spelled clientIP");
    let re = pattern(&on["properties"]["header"]);
    assert!(matches(&re, "X-User") && !matches(&re, "X User") && !matches(&re, "X:U"));
}

#[test]
fn health_and_retry_statuses_are_http_statuses() {
    let u = &location()["properties"]["upstream"]["properties"];
    for s in [
        &u["retries"]["properties"]["onStatus"],
        &u["activeHealth"]["properties"]["statuses"],
    ] {
        assert_eq!(s["items"]["minimum"].as_f64(), Some(100.0));
        assert_eq!(s["items"]["maximum"].as_f64(), Some(599.0));
        assert_eq!(s["x-kubernetes-list-type"], "set");
    }
    assert_eq!(u["activeHealth"]["required"], json!(["path"]));
    assert_eq!(u["retries"]["properties"]["tries"]["maximum"].as_f64(), Some(10.0));
}

#[test]
fn shared_dicts_are_unique_by_name_with_parseable_capacities() {
    let d = &spec()["properties"]["sharedDicts"];
    assert_eq!(d["maxItems"], 32);
    assert_eq!(d["x-kubernetes-list-type"], "map");
    assert_eq!(d["x-kubernetes-list-map-keys"], json!(["name"]));
    // A list-map key must be required (or defaulted).
    assert!(d["items"]["required"].as_array().unwrap().contains(&json!("name")));

    let name = &d["items"]["properties"]["name"];
    assert_eq!(name["maxLength"], 64);
    let re = pattern(name);
    for ok in ["counters", "my_cache", "plugin-limit-req", "_x", "Cache2"] {
        assert!(matches(&re, ok), "{ok} should be accepted");
    }
    for bad in ["", "my cache", "a.b", "ngx.shared", "é"] {
        assert!(!matches(&re, bad), "{bad:?} should be rejected");
    }

    let capacity = &d["items"]["properties"]["capacity"];
    assert_eq!(capacity["maxLength"], 32);
    assert_sizes_agree_with_parse_bytes(&pattern(capacity));
}

/// The size pattern accepts exactly what `parse_bytes` parses (short of overflow).
fn assert_sizes_agree_with_parse_bytes(re: &pcre2::bytes::Regex) {
    let mut inputs: Vec<String> = [
        "", "Mi", "1.5Mi", "-1", "1 Mi", " 1Mi", "1MiB", "1mi", "1KI", "0x10", "1e6",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for unit in [
        "", "k", "K", "Ki", "m", "M", "Mi", "g", "G", "Gi", "Ti", "T", "t", "b", "B", "kB", "Kib", "i",
    ] {
        inputs.push(format!("8{unit}"));
        inputs.push(format!("1024{unit}"));
    }
    for s in inputs {
        assert_eq!(
            matches(re, &s),
            parse_bytes(&s).is_ok() && !s.contains(' '),
            "pattern and parse_bytes disagree on {s:?}"
        );
    }
}

#[test]
fn module_names_are_dotted_names_with_hyphens_in_both_schemas() {
    let library = serde_json::to_value(LuaLibrary::crd()).unwrap();
    let library_modules =
        &library["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["modules"];
    let route_modules = &spec()["properties"]["modules"];
    for m in [route_modules, library_modules] {
        assert_eq!(m["maxProperties"], 128);
        assert_eq!(m["additionalProperties"]["type"], "string");
        let (rule, message) = &rules(m)[0];
        assert_eq!(
            rule,
            &format!("self.all(k, size(k) <= 128 && k.matches('{MODULE_NAME_PATTERN}'))")
        );
        assert_eq!(message, MODULE_NAME_MESSAGE);
    }
    assert_eq!(library_modules["minProperties"], 1);
    // The pattern sits in a single-quoted CEL string: no quote or backslash to escape.
    assert!(!MODULE_NAME_PATTERN.contains(['\'', '\\']));
    assert!(!VAR_NAME_PATTERN.contains(['\'', '\\']));
    let re = pcre2::bytes::Regex::new(MODULE_NAME_PATTERN).unwrap();
    for ok in [
        "util",
        "resty.http",
        "my_lib.v2.core",
        "_private",
        "resty.jwt-validators",
        "resty.jit-uuid",
        "lua-cjson",
        "resty.md5",
        "3rdparty.x",
    ] {
        assert!(matches(&re, ok), "{ok} should be accepted");
    }
    for bad in [
        "",
        "resty..http",
        ".resty",
        "resty.",
        "resty/http",
        "-resty",
        "resty.-x",
        "a b",
    ] {
        assert!(!matches(&re, bad), "{bad:?} should be rejected");
    }
}

#[test]
fn libraries_are_a_set_of_object_names() {
    let l = &spec()["properties"]["libraries"];
    assert_eq!(l["maxItems"], 16);
    assert_eq!(l["x-kubernetes-list-type"], "set");
    let re = pattern(&l["items"]);
    assert!(matches(&re, "shared-auth") && matches(&re, "jwt.v2"));
    assert!(!matches(&re, "Shared") && !matches(&re, "a/b") && !matches(&re, ""));
}

#[test]
fn limits_have_floors_and_sizes() {
    let l = &spec()["properties"]["limits"]["properties"];
    // JSONSchemaProps keeps bounds as f64.
    assert_eq!(
        l["instructionBudget"]["minimum"].as_f64(),
        Some(MIN_INSTRUCTION_BUDGET as f64)
    );
    assert_eq!(l["instructionBudget"]["nullable"], true);
    assert_eq!(l["maxBodySize"]["maxLength"], 32);
    assert_sizes_agree_with_parse_bytes(&pattern(&l["maxBodySize"]));
}

/// The apiserver refuses a CEL rule whose worst-case cost it cannot bound, and
/// estimates that cost from `maxItems`/`maxProperties`: every list and map in the
/// spec is bounded.
#[test]
fn every_list_and_map_in_the_spec_is_bounded() {
    fn walk(at: &str, s: &Value, unbounded: &mut Vec<String>) {
        match s["type"].as_str() {
            Some("array") if s.get("maxItems").is_none() => unbounded.push(at.to_string()),
            Some("object") if s.get("additionalProperties").is_some() && s.get("maxProperties").is_none() => {
                unbounded.push(at.to_string())
            }
            _ => {}
        }
        if let Some(props) = s["properties"].as_object() {
            for (name, p) in props {
                walk(&format!("{at}.{name}"), p, unbounded);
            }
        }
        if let Some(items) = s.get("items") {
            walk(&format!("{at}[]"), items, unbounded);
        }
    }
    let mut unbounded = Vec::new();
    walk("spec", &spec(), &mut unbounded);
    assert!(unbounded.is_empty(), "unbounded lists or maps: {unbounded:?}");
}

/// Every CEL rule carries a message, and none is left to the derive's own
/// structural rewriting to mangle.
#[test]
fn every_cel_rule_has_a_message() {
    fn walk(s: &Value, found: &mut usize) {
        for r in s["x-kubernetes-validations"].as_array().into_iter().flatten() {
            assert!(
                r["message"].as_str().is_some_and(|m| !m.is_empty()),
                "rule without message: {r}"
            );
            let rule = r["rule"].as_str().unwrap();
            assert_eq!(
                rule.matches('(').count(),
                rule.matches(')').count(),
                "unbalanced: {rule}"
            );
            assert_eq!(rule.matches('\'').count() % 2, 0, "unbalanced quotes: {rule}");
            *found += 1;
        }
        for p in s["properties"].as_object().into_iter().flat_map(|p| p.values()) {
            walk(p, found);
        }
        if let Some(items) = s.get("items") {
            walk(items, found);
        }
        if let Some(values) = s.get("additionalProperties") {
            walk(values, found);
        }
    }
    let mut found = 0;
    walk(&schema(), &mut found);
    assert_eq!(found, 10);
}

/// The apiserver warns about formats it does not know (`uint16`, `uint64`...) on
/// every `kubectl apply` of the CRD.
#[test]
fn every_integer_format_is_one_kubernetes_knows() {
    fn walk(at: &str, s: &Value, unknown: &mut Vec<String>) {
        if let Some(f) = s["format"].as_str()
            && !["int32", "int64", "date-time"].contains(&f)
        {
            unknown.push(format!("{at}: {f}"));
        }
        for (name, p) in s["properties"].as_object().into_iter().flatten() {
            walk(&format!("{at}.{name}"), p, unknown);
        }
        if let Some(items) = s.get("items") {
            walk(&format!("{at}[]"), items, unknown);
        }
    }
    let mut unknown = Vec::new();
    walk("", &schema(), &mut unknown);
    assert!(unknown.is_empty(), "formats the apiserver warns about: {unknown:?}");
}

#[test]
fn allowed_namespaces_are_a_bounded_set_of_namespace_names_or_a_star() {
    let a = &spec()["properties"]["allowedNamespaces"];
    assert_eq!(a["type"], "array");
    assert_eq!(a["maxItems"], 32);
    assert_eq!(a["x-kubernetes-list-type"], "set");
    assert_eq!(a["items"]["minLength"], 1);
    assert_eq!(a["items"]["maxLength"], 63);
    assert_eq!(a["items"]["pattern"], NAMESPACE_OR_ANY_PATTERN);
    let doc = a["description"].as_str().unwrap();
    assert!(
        doc.starts_with("Other namespaces whose LuaRoutes may serve this route's hostnames too."),
        "{doc}"
    );
    for told in [
        "oldest LuaRoute",
        "`*`",
        "Conflicted",
        "per hostname",
        "owning namespace",
    ] {
        assert!(doc.contains(told), "kubectl explain should say {told:?}: {doc}");
    }
    let re = pattern(&a["items"]);
    for ok in ["b", "team-b", "*", "default", "0ns", &"a".repeat(63)] {
        assert!(matches(&re, ok), "{ok} should be accepted");
    }
    for bad in [
        "",
        "B",
        "team_b",
        "a.b",
        "-a",
        "a-",
        "*.a",
        "a*",
        "**",
        " *",
        &"a".repeat(64),
    ] {
        assert!(!matches(&re, bad), "{bad:?} should be rejected");
    }
}

#[test]
fn a_location_may_be_internal_and_name_the_routes_allowed_in() {
    let loc = location();
    let internal = &loc["properties"]["internal"];
    assert_eq!(internal["type"], "boolean");
    assert!(internal["description"].as_str().unwrap().contains("404"));

    let allow = &loc["properties"]["allowFrom"];
    assert_eq!(allow["type"], "array");
    assert_eq!(allow["maxItems"], 16);
    let doc = allow["description"].as_str().unwrap();
    assert!(doc.contains("ngx.exec") && doc.contains("same hostname"), "{doc}");
    let entry = &allow["items"];
    assert!(entry.get("required").is_none(), "namespace and name both default");
    let namespace = &entry["properties"]["namespace"];
    assert_eq!(namespace["maxLength"], 63);
    assert_eq!(namespace["pattern"], NAMESPACE_OR_ANY_PATTERN);
    let name = &entry["properties"]["name"];
    assert_eq!(name["maxLength"], 253);
    let re = pattern(name);
    for ok in ["shop", "shop.v2", "*", "a-b.c-d", "0", &"a".repeat(100)] {
        assert!(matches(&re, ok), "{ok} should be accepted");
    }
    for bad in ["", "Shop", "shop_", ".a", "a.", "a..b", "*a", "a.*", "a b"] {
        assert!(!matches(&re, bad), "{bad:?} should be rejected");
    }
    // The entry is closed: a misspelt field is refused, not ignored.
    let parsed: Result<LuaRouteRef, _> = serde_json::from_value(json!({"namespce": "b"}));
    assert!(parsed.unwrap_err().to_string().contains("namespce"));
}

#[test]
fn printer_columns_and_description_survive() {
    let crd = serde_json::to_value(LuaRoute::crd()).unwrap();
    let columns: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Hosts", "Accepted", "Programmed", "Age"]);
    assert!(
        schema()["description"]
            .as_str()
            .unwrap()
            .starts_with("LuaRoute is a set of OpenResty-style Lua handlers")
    );
}
