//! LuaRoutes from YAML files: the source for standalone mode and `--check`.

use std::path::{Path, PathBuf};

use crate::RouteKey;
use crate::crd::LuaRoute;
use crate::error::{Error, Problem, Result};

/// A LuaRoute and the file it came from.
#[derive(Clone, Debug)]
pub struct SourcedRoute {
    pub file: PathBuf,
    pub route: LuaRoute,
}

/// Parses a multi-document YAML text of LuaRoutes. Empty documents are skipped;
/// anything that is not a `moongate.dev/v1alpha1` `LuaRoute` is an error.
pub fn parse_routes(text: &str, file: Option<&Path>) -> Result<Vec<LuaRoute>> {
    let at = |message: String| Problem {
        file: file.map(Path::to_path_buf),
        ..Problem::new(message)
    };
    let docs: Vec<Option<serde_json::Value>> =
        serde_saphyr::from_multiple(text).map_err(|e| Error::Invalid(vec![at(format!("invalid YAML: {e}"))]))?;
    let mut routes = Vec::new();
    let mut problems = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let Some(doc) = doc.filter(|d| !d.is_null()) else {
            continue;
        };
        let api_version = doc.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default();
        let kind = doc.get("kind").and_then(|v| v.as_str()).unwrap_or_default();
        let field = |pointer: &str, default: &str| {
            doc.pointer(pointer)
                .and_then(|v| v.as_str())
                .unwrap_or(default)
                .to_string()
        };
        let key = RouteKey::new(
            field("/metadata/namespace", "default"),
            field("/metadata/name", "<unnamed>"),
        );
        if api_version != "moongate.dev/v1alpha1" || kind != "LuaRoute" {
            problems.push(at(format!(
                "document {}: expected apiVersion moongate.dev/v1alpha1, kind LuaRoute; got {api_version:?}, {kind:?}",
                i + 1
            )));
            continue;
        }
        match serde_json::from_value::<LuaRoute>(doc) {
            Ok(route) => routes.push(route),
            Err(e) => problems.push(Problem {
                route: Some(key),
                ..at(format!("document {}: {e}", i + 1))
            }),
        }
    }
    if problems.is_empty() {
        Ok(routes)
    } else {
        Err(Error::Invalid(problems))
    }
}

/// Loads a file, or every `*.yaml`/`*.yml` file of a directory in name order.
pub fn load_path(path: &Path) -> Result<Vec<SourcedRoute>> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let files = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| Error::Io {
            path: file.clone(),
            source,
        })?;
        match parse_routes(&text, Some(&file)) {
            Ok(routes) => out.extend(routes.into_iter().map(|route| SourcedRoute {
                file: file.clone(),
                route,
            })),
            Err(Error::Invalid(p)) => problems.extend(p),
            Err(e) => return Err(e),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Error::Invalid(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_is_named() {
        let err = parse_routes(
            "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {name: a}\nspec:\n  locations:\n  - path: /\n    contnet: x\n",
            Some(Path::new("r.yaml")),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("r.yaml") && err.contains("contnet"), "{err}");
    }

    #[test]
    fn malformed_yaml_is_reported_with_position() {
        let err = parse_routes("apiVersion: [\n", Some(Path::new("bad.yaml")))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("bad.yaml: invalid YAML"), "{err}");
    }

    #[test]
    fn multi_document_and_wrong_kind() {
        let ok = "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {name: a}\nspec: {locations: [{path: /a}]}\n---\n---\napiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {name: b}\nspec: {locations: [{path: /b}]}\n";
        assert_eq!(parse_routes(ok, None).unwrap().len(), 2);
        let err = parse_routes("apiVersion: v1\nkind: ConfigMap\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected apiVersion moongate.dev/v1alpha1"), "{err}");
    }
}
