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
        }
        for (name, _) in self.shared_dicts.iter().flat_map(OrderedMap::iter) {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("bad shared dict name {name:?}"));
            }
        }
        Ok(())
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
