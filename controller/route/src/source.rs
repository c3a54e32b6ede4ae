//! LuaRoutes and LuaLibraries from YAML files: the source for standalone mode
//! and `--check`. Both kinds may sit in the same file, namespaced as in a
//! cluster (`metadata.namespace`, `default` when omitted).

use std::path::{Path, PathBuf};

use crate::crd::{LuaLibrary, LuaRoute};
use crate::error::{Error, Problem, Result};
use crate::{LibraryKey, RouteKey};

/// A LuaRoute and the file it came from.
#[derive(Clone, Debug)]
pub struct SourcedRoute {
    pub file: PathBuf,
    pub route: LuaRoute,
}

/// A LuaLibrary and the file it came from.
#[derive(Clone, Debug)]
pub struct SourcedLibrary {
    pub file: PathBuf,
    pub library: LuaLibrary,
}

/// What a set of files holds.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub routes: Vec<SourcedRoute>,
    pub libraries: Vec<SourcedLibrary>,
}

/// The objects of one YAML text, in document order per kind.
#[derive(Clone, Debug, Default)]
pub struct Documents {
    pub routes: Vec<LuaRoute>,
    pub libraries: Vec<LuaLibrary>,
}

/// Parses a multi-document YAML text of LuaRoutes only (no LuaLibrary).
pub fn parse_routes(text: &str, file: Option<&Path>) -> Result<Vec<LuaRoute>> {
    let docs = parse_documents(text, file)?;
    if let Some(library) = docs.libraries.first() {
        return Err(Error::Invalid(vec![Problem {
            file: file.map(Path::to_path_buf),
            ..Problem::new(format!(
                "expected only LuaRoutes; got LuaLibrary {}",
                library.metadata.name.as_deref().unwrap_or("<unnamed>")
            ))
        }]));
    }
    Ok(docs.routes)
}

/// Parses a multi-document YAML text of LuaRoutes and LuaLibraries. Empty
/// documents are skipped; anything that is not a `moongate.dev/v1alpha1`
/// `LuaRoute` or `LuaLibrary` is an error.
pub fn parse_documents(text: &str, file: Option<&Path>) -> Result<Documents> {
    let at = |message: String| Problem {
        file: file.map(Path::to_path_buf),
        ..Problem::new(message)
    };
    let docs: Vec<Option<serde_json::Value>> =
        serde_saphyr::from_multiple(text).map_err(|e| Error::Invalid(vec![at(format!("invalid YAML: {e}"))]))?;
    let mut out = Documents::default();
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
        let (namespace, name) = (
            field("/metadata/namespace", "default"),
            field("/metadata/name", "<unnamed>"),
        );
        let invalid = |e: serde_json::Error| format!("document {}: {e}", i + 1);
        match (api_version, kind) {
            ("moongate.dev/v1alpha1", "LuaRoute") => match serde_json::from_value::<LuaRoute>(doc) {
                Ok(route) => out.routes.push(route),
                Err(e) => problems.push(Problem {
                    route: Some(RouteKey::new(namespace, name)),
                    ..at(invalid(e))
                }),
            },
            ("moongate.dev/v1alpha1", "LuaLibrary") => match serde_json::from_value::<LuaLibrary>(doc) {
                Ok(library) => out.libraries.push(library),
                Err(e) => problems.push(Problem {
                    library: Some(LibraryKey::new(namespace, name)),
                    ..at(invalid(e))
                }),
            },
            _ => problems.push(at(format!(
                "document {}: expected apiVersion moongate.dev/v1alpha1, kind LuaRoute or LuaLibrary; got {api_version:?}, {kind:?}",
                i + 1
            ))),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Error::Invalid(problems))
    }
}

/// Loads a file, or every `*.yaml`/`*.yml` file of a directory in name order.
pub fn load_path(path: &Path) -> Result<Sources> {
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
    let mut out = Sources::default();
    let mut problems = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| Error::Io {
            path: file.clone(),
            source,
        })?;
        match parse_documents(&text, Some(&file)) {
            Ok(docs) => {
                out.routes.extend(docs.routes.into_iter().map(|route| SourcedRoute {
                    file: file.clone(),
                    route,
                }));
                out.libraries
                    .extend(docs.libraries.into_iter().map(|library| SourcedLibrary {
                        file: file.clone(),
                        library,
                    }));
            }
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

    #[test]
    fn routes_and_libraries_share_a_file() {
        let text = "apiVersion: moongate.dev/v1alpha1\nkind: LuaLibrary\nmetadata: {name: shared, namespace: team}\nspec:\n  modules: {resty.jit-uuid: 'return {}'}\n---\napiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {name: a, namespace: team}\nspec: {libraries: [shared], locations: [{path: /a}]}\n";
        let docs = parse_documents(text, None).unwrap();
        assert_eq!(docs.routes.len(), 1);
        assert_eq!(docs.libraries.len(), 1);
        assert_eq!(docs.routes[0].spec.libraries, ["shared"]);
        let err = parse_routes(text, None).unwrap_err().to_string();
        assert!(err.contains("got LuaLibrary shared"), "{err}");
        let err = parse_documents(
            "apiVersion: moongate.dev/v1alpha1\nkind: LuaLibrary\nmetadata: {name: l}\nspec: {modules: {a: x}, extra: 1}\n",
            Some(Path::new("l.yaml")),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("l.yaml: library default/l: document 1:") && err.contains("extra"),
            "{err}"
        );
    }
}
