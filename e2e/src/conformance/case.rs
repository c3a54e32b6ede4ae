//! The conformance case format (`shared/conformance/README.md`): loading and validation.
//!
//! Cases are read with serde straight from the file text rather than through
//! `serde_json::Value`, because `Value` maps are sorted and the cases' maps
//! (request headers, vars, locations' phases) are ordered.

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// A JSON object with its keys in document order. A repeated key keeps its
/// first position and its last value, as a Python `dict` built by `json.load` does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OrderedMap<V>(pub Vec<(String, V)>);

impl<V> OrderedMap<V> {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, V)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, V>()? {
                    match out.iter_mut().find(|(old, _)| *old == k) {
                        Some(slot) => slot.1 = v,
                        None => out.push((k, v)),
                    }
                }
                Ok(OrderedMap(out))
            }
        }
        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

impl<V: Serialize> Serialize for OrderedMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// One case file. Required fields are `Option`s so that a missing one is a
/// "bad case" failure of that case, as in `run_nginx.py`, not a load error.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct Case {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub shared_dicts: Option<OrderedMap<String>>,
    #[serde(default)]
    pub init: Option<String>,
    #[serde(default)]
    pub init_worker: Option<String>,
    #[serde(default)]
    pub locations: Option<Vec<Location>>,
    #[serde(default)]
    pub requests: Option<Vec<Request>>,
    #[serde(default)]
    pub expect: Option<Vec<Expect>>,
    /// `1` when missing; anything but 1 or 2 is refused by [`Case::validate`].
    #[serde(default)]
    pub format: Option<serde_json::Value>,
    /// Format 2: `"memcached"`, `"redis"`.
    #[serde(default)]
    pub services: Option<Vec<String>>,
    /// Format 2: `false` is `server_tokens off;`. Missing: `true`.
    #[serde(default)]
    pub server_tokens: Option<bool>,
    /// Format 2: server-level `lua_socket_KEY VALUE;`.
    #[serde(default)]
    pub lua_socket: Option<OrderedMap<String>>,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct Location {
    #[serde(default)]
    pub modifier: Option<String>,
    pub path: String,
    #[serde(default)]
    pub default_type: Option<String>,
    #[serde(default)]
    pub vars: Option<OrderedMap<String>>,
    #[serde(default)]
    pub need_request_body: Option<bool>,
    #[serde(default)]
    pub phases: Option<OrderedMap<Option<String>>>,
    /// Format 2: `proxy_pass URL;`.
    #[serde(default)]
    pub proxy_pass: Option<String>,
    /// Format 2: `more_clear_headers NAME...;`.
    #[serde(default)]
    pub clear_headers: Option<Vec<String>>,
    /// Format 2: location-level `lua_socket_KEY VALUE;`.
    #[serde(default)]
    pub lua_socket: Option<OrderedMap<String>>,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct Request {
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub headers: Option<OrderedMap<String>>,
    #[serde(default)]
    pub body: Option<String>,
    /// Format 2: the client's per-I/O-step timeout in seconds; `None`: the runner's default.
    #[serde(default)]
    pub client_timeout_s: Option<f64>,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct Expect {
    #[serde(default)]
    pub status: Option<i64>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub body_like: Option<String>,
    #[serde(default)]
    pub headers: Option<OrderedMap<Option<String>>>,
}

/// The phase keys a location may use, in the order nginx runs them.
pub const PHASES: [&str; 6] = ["rewrite", "access", "content", "header_filter", "body_filter", "log"];

/// The nginx location modifiers the format allows.
pub const MODIFIERS: [&str; 5] = ["", "=", "^~", "~", "~*"];

/// A case as loaded: its id and either the case or why its file is malformed.
#[derive(Debug)]
pub struct LoadedCase {
    pub id: String,
    pub file: PathBuf,
    pub case: Result<Case, String>,
}

impl Case {
    /// The same checks as `run_nginx.py`'s `validate_case`.
    pub fn validate(&self) -> Result<(), String> {
        let (Some(locations), Some(requests), Some(expect)) = (&self.locations, &self.requests, &self.expect) else {
            let missing = [
                ("locations", self.locations.is_none()),
                ("requests", self.requests.is_none()),
                ("expect", self.expect.is_none()),
            ];
            let name = missing.iter().find(|(_, m)| *m).map_or("?", |(n, _)| *n);
            return Err(format!("missing field '{name}'"));
        };
        let format = self.format_number()?;
        if format < 2 {
            let case_level = [
                ("services", self.services.is_some()),
                ("server_tokens", self.server_tokens.is_some()),
                ("lua_socket", self.lua_socket.is_some()),
            ];
            let loc_level = locations.iter().flat_map(|l| {
                [
                    ("proxy_pass", l.proxy_pass.is_some()),
                    ("clear_headers", l.clear_headers.is_some()),
                    ("lua_socket", l.lua_socket.is_some()),
                ]
            });
            let req_level = requests
                .iter()
                .map(|r| ("client_timeout_s", r.client_timeout_s.is_some()));
            if let Some((name, _)) = case_level
                .into_iter()
                .chain(loc_level)
                .chain(req_level)
                .find(|(_, p)| *p)
            {
                return Err(format!("field '{name}' needs \"format\": 2"));
            }
        }
        let services = self.services.as_deref().unwrap_or_default();
        if let Some(svc) = services.iter().find(|s| !SERVICES.contains(&s.as_str())) {
            return Err(format!("unknown service {svc:?} (known: redis, memcached)"));
        }
        if format >= 2 {
            self.check_placeholders()?;
        }
        let socket_settings = self
            .lua_socket
            .iter()
            .chain(locations.iter().filter_map(|l| l.lua_socket.as_ref()))
            .flat_map(OrderedMap::iter);
        for (key, value) in socket_settings {
            if !lua_socket_value_ok(key, value) {
                return Err(format!("bad lua_socket entry {key:?}: {value:?}"));
            }
        }
        for (i, r) in requests.iter().enumerate() {
            if let Some(t) = r.client_timeout_s
                && !(t.is_finite() && t > 0.0)
            {
                return Err(format!("bad client_timeout_s {t} in request {i}"));
            }
        }
        if requests.len() != expect.len() {
            return Err("requests and expect differ in length".into());
        }
        if requests.is_empty() {
            return Err("no requests".into());
        }
        for loc in locations {
            let modifier = loc.modifier.as_deref().unwrap_or("");
            if !MODIFIERS.contains(&modifier) {
                return Err(format!("bad location modifier {modifier:?}"));
            }
            for (phase, _) in loc.phases.iter().flat_map(OrderedMap::iter) {
                if !PHASES.contains(&phase) {
                    return Err(format!("unknown phase {phase:?}"));
                }
            }
            for (name, _) in loc.vars.iter().flat_map(OrderedMap::iter) {
                if !is_var_name(name) {
                    return Err(format!("bad variable name {name:?}"));
                }
            }
            if let Some(pp) = &loc.proxy_pass {
                let probe = if format >= 2 {
                    replace_placeholders(pp, |_| Some("1".into()))?
                } else {
                    pp.clone()
                };
                if parse_proxy_pass(&probe).is_none() {
                    return Err(format!("bad proxy_pass {pp:?} in location {:?}", loc.path));
                }
                let content = loc
                    .phases
                    .iter()
                    .flat_map(OrderedMap::iter)
                    .any(|(k, c)| k == "content" && c.is_some());
                if content {
                    return Err(format!("proxy_pass and a content phase in location {:?}", loc.path));
                }
            }
            for h in loc.clear_headers.iter().flatten() {
                if !is_header_name(h) {
                    return Err(format!("bad clear_headers entry {h:?} in location {:?}", loc.path));
                }
            }
        }
        for (name, _) in self.shared_dicts.iter().flat_map(OrderedMap::iter) {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("bad shared dict name {name:?}"));
            }
        }
        Ok(())
    }
}

/// The services a format-2 case may ask for.
pub const SERVICES: [&str; 2] = ["redis", "memcached"];

/// Format-2 placeholders and the service whose port each stands for (`None`:
/// the server under test).
pub const PLACEHOLDERS: [(&str, Option<&str>); 3] = [
    ("TEST_NGINX_SERVER_PORT", None),
    ("TEST_NGINX_REDIS_PORT", Some("redis")),
    ("TEST_NGINX_MEMCACHED_PORT", Some("memcached")),
];

/// The ports placeholders are replaced by.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Ports {
    pub server: u16,
    pub redis: Option<u16>,
    pub memcached: Option<u16>,
}

impl Ports {
    fn get(&self, name: &str) -> Option<u16> {
        match name {
            "TEST_NGINX_SERVER_PORT" => Some(self.server),
            "TEST_NGINX_REDIS_PORT" => self.redis,
            "TEST_NGINX_MEMCACHED_PORT" => self.memcached,
            _ => None,
        }
    }
}

/// Replaces every placeholder (`$` + the longest match of
/// `TEST_NGINX_[_A-Z0-9]+`) in `text` by `value(name)`; a name it has no value
/// for is an error naming it.
pub fn replace_placeholders(text: &str, value: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    const PREFIX: &str = "$TEST_NGINX_";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        let after = &rest[at + PREFIX.len()..];
        let len = after
            .bytes()
            .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
            .count();
        if len == 0 {
            // `$TEST_NGINX_` alone is no placeholder.
            out.push_str(&rest[..at + PREFIX.len()]);
            rest = after;
            continue;
        }
        let name = &rest[at + 1..at + PREFIX.len() + len];
        out.push_str(&rest[..at]);
        out.push_str(&value(name).ok_or_else(|| format!("${name}"))?);
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `http://127.0.0.1:PORT` + optional URI → (port, URI), as `run_nginx.py`'s
/// `^http://127\.0\.0\.1:\d{1,5}(/[^\s$]*)?$`.
pub fn parse_proxy_pass(url: &str) -> Option<(u16, Option<&str>)> {
    let rest = url.strip_prefix("http://127.0.0.1:")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if !(1..=5).contains(&digits) {
        return None;
    }
    let port = rest[..digits].parse::<u16>().ok()?;
    let uri = &rest[digits..];
    if uri.is_empty() {
        return Some((port, None));
    }
    if !uri.starts_with('/') || uri.chars().any(|c| c.is_whitespace() || c == '$') {
        return None;
    }
    Some((port, Some(uri)))
}

fn is_header_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `run_nginx.py`'s `LUA_SOCKET_DIRECTIVES` patterns.
fn lua_socket_value_ok(key: &str, value: &str) -> bool {
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = value.split_at(digits);
    match key {
        "connect_timeout" | "send_timeout" | "read_timeout" | "keepalive_timeout" => {
            !num.is_empty() && matches!(unit, "" | "ms" | "s" | "m")
        }
        "buffer_size" | "send_lowat" => !num.is_empty() && matches!(unit, "" | "k" | "K" | "m" | "M"),
        "pool_size" => !num.is_empty() && unit.is_empty(),
        "log_errors" => matches!(value, "on" | "off"),
        _ => false,
    }
}

impl Case {
    /// The case's format: 1 when missing; an error for anything but 1 or 2.
    pub fn format_number(&self) -> Result<u64, String> {
        match &self.format {
            None => Ok(1),
            Some(serde_json::Value::Number(n)) if matches!(n.as_u64(), Some(1 | 2)) => Ok(n.as_u64().unwrap_or(1)),
            Some(other) => Err(format!(
                "unsupported format {other} (this runner knows formats 1 and 2)"
            )),
        }
    }

    /// Calls `f` on every string value placeholders are substituted in: all
    /// of them but `id` (`source` and `title` are not read); never object keys.
    fn for_each_string(&mut self, f: &mut dyn FnMut(&mut String) -> Result<(), String>) -> Result<(), String> {
        fn map<V>(
            m: &mut Option<OrderedMap<V>>,
            f: &mut dyn FnMut(&mut V) -> Result<(), String>,
        ) -> Result<(), String> {
            for (_, v) in m.iter_mut().flat_map(|m| m.0.iter_mut()) {
                f(v)?;
            }
            Ok(())
        }
        fn opt(s: &mut Option<String>, f: &mut dyn FnMut(&mut String) -> Result<(), String>) -> Result<(), String> {
            s.as_mut().map_or(Ok(()), f)
        }
        map(&mut self.shared_dicts, f)?;
        opt(&mut self.init, f)?;
        opt(&mut self.init_worker, f)?;
        for s in self.services.iter_mut().flatten() {
            f(s)?;
        }
        map(&mut self.lua_socket, f)?;
        for loc in self.locations.iter_mut().flatten() {
            opt(&mut loc.modifier, f)?;
            f(&mut loc.path)?;
            opt(&mut loc.default_type, f)?;
            map(&mut loc.vars, f)?;
            map(&mut loc.phases, &mut |code: &mut Option<String>| opt(code, f))?;
            opt(&mut loc.proxy_pass, f)?;
            for h in loc.clear_headers.iter_mut().flatten() {
                f(h)?;
            }
            map(&mut loc.lua_socket, f)?;
        }
        for req in self.requests.iter_mut().flatten() {
            opt(&mut req.method, f)?;
            opt(&mut req.uri, f)?;
            map(&mut req.headers, f)?;
            opt(&mut req.body, f)?;
        }
        for exp in self.expect.iter_mut().flatten() {
            opt(&mut exp.body, f)?;
            opt(&mut exp.body_like, f)?;
            map(&mut exp.headers, &mut |v: &mut Option<String>| opt(v, f))?;
        }
        Ok(())
    }

    /// Refuses unknown `$TEST_NGINX_...` names and service placeholders whose
    /// service is not in `services`.
    fn check_placeholders(&self) -> Result<(), String> {
        let services = self.services.clone().unwrap_or_default();
        let check = |name: &str| -> Option<String> {
            let (_, svc) = PLACEHOLDERS.iter().find(|(n, _)| *n == name)?;
            match svc {
                Some(svc) if !services.iter().any(|s| s == svc) => None,
                _ => Some(String::new()),
            }
        };
        let mut copy = self.clone();
        copy.for_each_string(&mut |s: &mut String| {
            replace_placeholders(s, check).map(|_| ()).map_err(|name| {
                match PLACEHOLDERS.iter().find(|(n, _)| format!("${n}") == name) {
                    Some((_, Some(svc))) => format!("placeholder {name} needs service {svc:?} in \"services\""),
                    _ => format!("unknown placeholder {name}"),
                }
            })
        })
    }

    /// The case with every placeholder replaced by its port (format 2; a
    /// format-1 case is returned unchanged). Validate first: a placeholder
    /// without a port is an error here too.
    pub fn substituted(&self, ports: &Ports) -> Result<Case, String> {
        let mut case = self.clone();
        if self.format_number()? < 2 {
            return Ok(case);
        }
        case.for_each_string(&mut |s: &mut String| {
            if s.contains("$TEST_NGINX_") {
                *s = replace_placeholders(s, |n| ports.get(n).map(|p| p.to_string()))
                    .map_err(|name| format!("no port for placeholder {name}"))?;
            }
            Ok(())
        })?;
        Ok(case)
    }
}

fn is_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses one case file's text. `Err` only for text that is not JSON at all; a
/// JSON document of the wrong shape becomes a case that fails as "bad case".
pub fn parse_case(text: &str, file: &Path) -> Result<LoadedCase, String> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        #[serde(default)]
        id: Option<serde_json::Value>,
    }
    serde_json::from_str::<IgnoredAny>(text).map_err(|e| format!("{}: {e}", file.display()))?;
    let fallback_id = file
        .file_name()
        .map_or_else(|| file.display().to_string(), |n| n.to_string_lossy().into());
    let case = serde_json::from_str::<Case>(text).map_err(|e| e.to_string());
    let id = match &case {
        Ok(c) => c.id.clone(),
        Err(_) => match serde_json::from_str::<IdOnly>(text).ok().and_then(|c| c.id) {
            Some(serde_json::Value::String(s)) => Some(s),
            _ => None,
        },
    }
    .unwrap_or(fallback_id);
    Ok(LoadedCase {
        id,
        file: file.to_path_buf(),
        case,
    })
}

/// Loads every `*.json` under the given directories (recursively) and every
/// file given directly, sorted by path as `run_nginx.py` does.
pub fn load_cases(paths: &[PathBuf]) -> Result<Vec<LoadedCase>, String> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut files).map_err(|e| format!("{}: {e}", p.display()))?;
        } else {
            files.push(p.clone());
        }
    }
    files.sort();
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            parse_case(&text, f)
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_map_keeps_document_order_and_last_duplicate() {
        let m: OrderedMap<String> = serde_json::from_str(r#"{"b":"1","a":"2","b":"3"}"#).unwrap();
        assert_eq!(m.0, vec![("b".into(), "3".into()), ("a".into(), "2".into())]);
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"b":"3","a":"2"}"#);
    }

    #[test]
    fn malformed_cases_fail_validation_not_loading() {
        let f = Path::new("x/y.json");
        assert!(parse_case("{nope", f).is_err());
        let c = parse_case(r#"{"locations": 3}"#, f).unwrap();
        assert_eq!(c.id, "y.json");
        assert!(c.case.is_err());
        let c = parse_case(r#"{"id": "a#1", "locations": []}"#, f).unwrap();
        assert_eq!(c.id, "a#1");
        assert_eq!(c.case.unwrap().validate().unwrap_err(), "missing field 'requests'");
    }

    #[test]
    fn validation_rejects_unknown_phases_and_modifiers() {
        let base = r#"{"requests":[{}],"expect":[{}],"locations":[LOC]}"#;
        let check = |loc: &str| {
            let text = base.replace("LOC", loc);
            parse_case(&text, Path::new("c.json")).unwrap().case.unwrap().validate()
        };
        assert!(check(r#"{"path":"/","phases":{"content":"x"}}"#).is_ok());
        assert!(
            check(r#"{"path":"/","phases":{"balancer":"x"}}"#)
                .unwrap_err()
                .contains("unknown phase")
        );
        assert!(
            check(r#"{"path":"/","modifier":"@"}"#)
                .unwrap_err()
                .contains("bad location modifier")
        );
        assert!(
            check(r#"{"path":"/","vars":{"1a":"x"}}"#)
                .unwrap_err()
                .contains("bad variable name")
        );
    }
}

#[cfg(test)]
mod format2_tests {
    use super::*;

    fn load(text: &str) -> Case {
        parse_case(text, Path::new("c.json")).unwrap().case.unwrap()
    }

    fn with(extra: &str, loc: &str, req: &str) -> Case {
        let format = if extra.contains("\"format\"") {
            ""
        } else {
            r#""format":2,"#
        };
        load(&format!(
            r#"{{"id":"x#1",{format}{extra}"locations":[{{"path":"/t"{loc}}}],"requests":[{{"uri":"/t"{req}}}],"expect":[{{}}]}}"#
        ))
    }

    #[test]
    fn placeholders_take_the_longest_name() {
        let ports = |n: &str| match n {
            "TEST_NGINX_SERVER_PORT" => Some("1984".to_string()),
            _ => None,
        };
        assert_eq!(
            replace_placeholders("a $TEST_NGINX_SERVER_PORT, $TEST_NGINX_SERVER_PORT.", ports).unwrap(),
            "a 1984, 1984."
        );
        assert_eq!(
            replace_placeholders("x$TEST_NGINX_SERVER_PORTS", ports).unwrap_err(),
            "$TEST_NGINX_SERVER_PORTS"
        );
        assert_eq!(
            replace_placeholders("$TEST_NGINX_SERVER_PORT_2", ports).unwrap_err(),
            "$TEST_NGINX_SERVER_PORT_2"
        );
        // Lowercase ends the name; `$TEST_NGINX_` alone and no `$` are no placeholders.
        assert_eq!(
            replace_placeholders("$TEST_NGINX_SERVER_PORTx", ports).unwrap(),
            "1984x"
        );
        assert_eq!(
            replace_placeholders("$TEST_NGINX_ TEST_NGINX_X", ports).unwrap(),
            "$TEST_NGINX_ TEST_NGINX_X"
        );
    }

    #[test]
    fn substitution_covers_every_string_value_but_not_keys_or_id() {
        let c = load(
            r#"{"id":"$TEST_NGINX_SERVER_PORT","format":2,"services":["memcached","redis"],
            "init":"p=$TEST_NGINX_REDIS_PORT","init_worker":"$TEST_NGINX_MEMCACHED_PORT",
            "locations":[{"path":"/t","vars":{"v":"$TEST_NGINX_SERVER_PORT"},
              "phases":{"content":"sock:connect('127.0.0.1', $TEST_NGINX_MEMCACHED_PORT)"},
              "proxy_pass":null},
              {"path":"/p","proxy_pass":"http://127.0.0.1:$TEST_NGINX_SERVER_PORT/echo"}],
            "requests":[{"uri":"/t?p=$TEST_NGINX_SERVER_PORT","headers":{"$TEST_NGINX_SERVER_PORT":"$TEST_NGINX_REDIS_PORT"},
              "body":"b$TEST_NGINX_SERVER_PORT"}],
            "expect":[{"body":"$TEST_NGINX_SERVER_PORT\n","body_like":"^$TEST_NGINX_REDIS_PORT",
              "headers":{"X":"$TEST_NGINX_MEMCACHED_PORT","Y":null}}]}"#,
        );
        c.validate().unwrap();
        let ports = Ports {
            server: 1984,
            redis: Some(6379),
            memcached: Some(11211),
        };
        let s = c.substituted(&ports).unwrap();
        assert_eq!(s.id.as_deref(), Some("$TEST_NGINX_SERVER_PORT"));
        assert_eq!(s.init.as_deref(), Some("p=6379"));
        assert_eq!(s.init_worker.as_deref(), Some("11211"));
        let locs = s.locations.as_ref().unwrap();
        assert_eq!(locs[0].vars.as_ref().unwrap().0, vec![("v".into(), "1984".into())]);
        assert_eq!(
            locs[0].phases.as_ref().unwrap().0[0].1.as_deref(),
            Some("sock:connect('127.0.0.1', 11211)")
        );
        assert_eq!(locs[1].proxy_pass.as_deref(), Some("http://127.0.0.1:1984/echo"));
        let req = &s.requests.as_ref().unwrap()[0];
        assert_eq!(req.uri.as_deref(), Some("/t?p=1984"));
        assert_eq!(
            req.headers.as_ref().unwrap().0,
            vec![("$TEST_NGINX_SERVER_PORT".into(), "6379".into())]
        );
        assert_eq!(req.body.as_deref(), Some("b1984"));
        let exp = &s.expect.as_ref().unwrap()[0];
        assert_eq!(exp.body.as_deref(), Some("1984\n"));
        assert_eq!(exp.body_like.as_deref(), Some("^6379"));
        assert_eq!(
            exp.headers.as_ref().unwrap().0,
            vec![("X".into(), Some("11211".into())), ("Y".into(), None)]
        );
    }

    #[test]
    fn format_1_is_never_substituted() {
        let c = load(r#"{"locations":[],"requests":[{"uri":"/$TEST_NGINX_SERVER_PORT"}],"expect":[{}]}"#);
        c.validate().unwrap();
        let s = c.substituted(&Ports::default()).unwrap();
        assert_eq!(s.requests.unwrap()[0].uri.as_deref(), Some("/$TEST_NGINX_SERVER_PORT"));
    }

    #[test]
    fn format_2_fields_load_with_defaults() {
        let c = with(
            r#""services":["redis"],"server_tokens":false,"lua_socket":{"read_timeout":"100ms"},"#,
            r#","proxy_pass":"http://127.0.0.1:$TEST_NGINX_SERVER_PORT","clear_headers":["Date"],"lua_socket":{"pool_size":"2"}"#,
            r#","client_timeout_s":0.5"#,
        );
        c.validate().unwrap();
        assert_eq!(c.format_number(), Ok(2));
        assert_eq!(c.services.as_deref(), Some(&["redis".to_string()][..]));
        assert_eq!(c.server_tokens, Some(false));
        assert_eq!(
            c.lua_socket.as_ref().unwrap().0,
            vec![("read_timeout".into(), "100ms".into())]
        );
        let loc = &c.locations.as_ref().unwrap()[0];
        assert_eq!(loc.clear_headers.as_deref(), Some(&["Date".to_string()][..]));
        assert_eq!(
            loc.lua_socket.as_ref().unwrap().0,
            vec![("pool_size".into(), "2".into())]
        );
        assert_eq!(c.requests.as_ref().unwrap()[0].client_timeout_s, Some(0.5));
        // Everything missing: the defaults.
        let c = with("", "", "");
        c.validate().unwrap();
        assert!(c.services.is_none() && c.server_tokens.is_none() && c.lua_socket.is_none());
        assert!(c.requests.as_ref().unwrap()[0].client_timeout_s.is_none());
        assert_eq!(load(r#"{"locations":[]}"#).format_number(), Ok(1));
    }

    #[test]
    fn format_2_refusals() {
        let err = |extra: &str, loc: &str, req: &str| with(extra, loc, req).validate().unwrap_err();
        assert_eq!(
            err(r#""format":3,"#, "", ""),
            "unsupported format 3 (this runner knows formats 1 and 2)"
        );
        assert!(err(r#""format":"2","#, "", "").starts_with("unsupported format \"2\""));
        assert!(err(r#""format":true,"#, "", "").starts_with("unsupported format true"));
        assert_eq!(
            err(r#""services":["postgres"],"#, "", ""),
            "unknown service \"postgres\" (known: redis, memcached)"
        );
        assert_eq!(
            err("", r#","phases":{"content":"x=$TEST_NGINX_RESOLVER"}"#, ""),
            "unknown placeholder $TEST_NGINX_RESOLVER"
        );
        assert_eq!(
            err("", "", r#","body":"$TEST_NGINX_REDIS_PORT""#),
            "placeholder $TEST_NGINX_REDIS_PORT needs service \"redis\" in \"services\""
        );
        assert!(
            err(
                r#""services":["redis"],"#,
                "",
                r#","body":"$TEST_NGINX_MEMCACHED_PORT""#
            )
            .contains("needs service \"memcached\"")
        );
        assert!(err(r#""lua_socket":{"read_timeout":"1h"},"#, "", "").starts_with("bad lua_socket entry"));
        assert!(err(r#""lua_socket":{"nope":"1"},"#, "", "").starts_with("bad lua_socket entry"));
        assert!(err("", "", r#","client_timeout_s":0"#).starts_with("bad client_timeout_s"));
        assert!(err("", r#","proxy_pass":"http://localhost:80""#, "").starts_with("bad proxy_pass"));
        assert!(
            err("", r#","proxy_pass":"http://127.0.0.1:1","phases":{"content":"x"}"#, "")
                .starts_with("proxy_pass and a content phase")
        );
        assert!(err("", r#","clear_headers":["a b"]"#, "").starts_with("bad clear_headers entry"));
        // Format-2 fields in a format-1 case.
        let c = load(r#"{"server_tokens":false,"locations":[],"requests":[{}],"expect":[{}]}"#);
        assert_eq!(c.validate().unwrap_err(), "field 'server_tokens' needs \"format\": 2");
        let c = load(r#"{"locations":[],"requests":[{"client_timeout_s":1}],"expect":[{}]}"#);
        assert_eq!(
            c.validate().unwrap_err(),
            "field 'client_timeout_s' needs \"format\": 2"
        );
    }

    #[test]
    fn proxy_pass_urls() {
        assert_eq!(parse_proxy_pass("http://127.0.0.1:8080"), Some((8080, None)));
        assert_eq!(parse_proxy_pass("http://127.0.0.1:1234/"), Some((1234, Some("/"))));
        assert_eq!(parse_proxy_pass("http://127.0.0.1:1/a/b"), Some((1, Some("/a/b"))));
        assert_eq!(parse_proxy_pass("http://127.0.0.1:123456"), None);
        assert_eq!(parse_proxy_pass("http://127.0.0.1:80x"), None);
        assert_eq!(parse_proxy_pass("http://127.0.0.1:80/$uri"), None);
        assert_eq!(parse_proxy_pass("https://127.0.0.1:80"), None);
    }
}
