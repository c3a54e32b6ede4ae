//! Standalone mode's snapshot: routes and libraries read from files,
//! validated, compiled and linked, with the routes the hostname and location
//! rules refuse left out and named with their files.

use moongate_proto::snapshot::build;
use moongate_proto::v1 as pb;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::compile::{Compiler, compile_library, compile_route};
use crate::error::{Error, Problem, Result};
use crate::index::{self, Refusal};
use crate::library;
use crate::source::{SourcedLibrary, SourcedRoute};
use crate::{LibraryKey, RouteKey};

/// A snapshot built from files, and the routes left out of it.
#[derive(Debug)]
pub struct FromSources {
    pub snapshot: pb::Snapshot,
    /// Routes refused by hostname ownership or a location conflict
    /// ([`index::admit`]), one entry per reason, oldest refused route first;
    /// none of them is in `snapshot`.
    pub refused: Vec<RefusedRoute>,
}

/// A route left out of a snapshot built from files, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedRoute {
    /// The file the refused route came from.
    pub file: PathBuf,
    /// The file of the route holding the hostname or location.
    pub holder_file: PathBuf,
    pub refusal: Refusal,
}

impl RefusedRoute {
    /// The refusal as a problem with its site: file, route, and a message that
    /// names the hostname or location and the holding route with its file.
    pub fn problem(&self) -> Problem {
        Problem {
            file: Some(self.file.clone()),
            route: Some(self.refusal.route().clone()),
            ..Problem::new(format!(
                "refused: {} ({} is in {})",
                self.refusal.message(),
                self.refusal.holder(),
                self.holder_file.display()
            ))
        }
    }
}

impl std::fmt::Display for RefusedRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.problem().fmt(f)
    }
}

/// Validates and compiles routes and libraries read from files (standalone
/// mode) into a snapshot. Routes are ordered by their position in the files,
/// so the first route naming a hostname makes its namespace the owner.
///
/// Any invalid route or library fails the whole load (`Error::Invalid`, every
/// problem with its file), and so does a route naming a library its namespace
/// does not have, or one whose modules clash ([`library::link`]). Routes that
/// are valid but refused by the same rules the controller applies
/// ([`index::admit`]) are left out and listed in [`FromSources::refused`];
/// the rest is served, with the libraries they name.
pub fn from_sources(sources: &[SourcedRoute], libraries: &[SourcedLibrary], version: u64) -> Result<FromSources> {
    let compiler = Compiler::standalone();
    let mut routes = Vec::with_capacity(sources.len());
    let mut files: HashMap<RouteKey, &Path> = HashMap::with_capacity(sources.len());
    let mut problems: Vec<Problem> = Vec::new();
    let mut compiled_libraries: BTreeMap<LibraryKey, pb::Library> = BTreeMap::new();
    for src in libraries {
        match compile_library(&compiler, &src.library) {
            Ok(l) => {
                let key = LibraryKey::of(&l);
                if compiled_libraries.insert(key.clone(), l).is_some() {
                    problems.push(Problem {
                        file: Some(src.file.clone()),
                        library: Some(key),
                        ..Problem::new("library defined twice")
                    });
                }
            }
            Err(ps) => problems.extend(ps.into_iter().map(|p| Problem {
                file: Some(src.file.clone()),
                ..p
            })),
        }
    }
    for (i, src) in sources.iter().enumerate() {
        match compile_route(&compiler, &src.route, i as i64) {
            Ok(r) => {
                if files.insert(RouteKey::of(&r), &src.file).is_some() {
                    problems.push(Problem {
                        file: Some(src.file.clone()),
                        route: Some(RouteKey::of(&r)),
                        ..Problem::new("route defined twice")
                    });
                }
                routes.push(r);
            }
            Err(ps) => problems.extend(ps.into_iter().map(|p| Problem {
                file: Some(src.file.clone()),
                ..p
            })),
        }
    }
    for route in &routes {
        if let Err(e) = library::link(route, |key| compiled_libraries.get(key)) {
            problems.push(Problem {
                file: files.get(&RouteKey::of(route)).map(|f| f.to_path_buf()),
                ..library::route_problem(route, &e)
            });
        }
    }
    if !problems.is_empty() {
        return Err(Error::Invalid(problems));
    }
    let refusals = index::retain_admitted(&mut routes);
    let named: BTreeSet<LibraryKey> = routes.iter().flat_map(library::named).collect();
    compiled_libraries.retain(|key, _| named.contains(key));
    let file_of = |key: &RouteKey| files.get(key).map_or_else(PathBuf::new, |f| f.to_path_buf());
    let refused = refusals
        .into_iter()
        .map(|refusal| RefusedRoute {
            file: file_of(refusal.route()),
            holder_file: file_of(refusal.holder()),
            refusal,
        })
        .collect();
    Ok(FromSources {
        snapshot: build(routes, Vec::new(), compiled_libraries.into_values().collect(), version),
        refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::parse_routes;

    fn sourced(file: &str, yaml: &str) -> Vec<SourcedRoute> {
        parse_routes(yaml, None)
            .unwrap()
            .into_iter()
            .map(|route| SourcedRoute {
                file: file.into(),
                route,
            })
            .collect()
    }

    fn doc(ns: &str, name: &str, spec: &str) -> String {
        format!(
            "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
        )
    }

    #[test]
    fn refused_routes_are_left_out_and_named_with_their_files() {
        let mut sources = sourced(
            "a.yaml",
            &doc(
                "a",
                "shop",
                "  hostnames: [shop.example.com]\n  locations: [{path: /, content: ngx.say(1)}]\n",
            ),
        );
        sources.extend(sourced(
            "b.yaml",
            &[
                doc(
                    "b",
                    "json",
                    "  hostnames: [shop.example.com]\n  locations: [{path: '\\.json$', match: Regex}]\n",
                ),
                doc("b", "own", "  hostnames: [b.example.com]\n  locations: [{path: /}]\n"),
                doc("b", "again", "  hostnames: [b.example.com]\n  locations: [{path: /}]\n"),
            ]
            .join("---\n"),
        ));
        let built = from_sources(&sources, &[], 7).unwrap();
        let served: Vec<&str> = built.snapshot.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(served, ["shop", "own"]);
        assert_eq!(built.snapshot.version, 7);
        assert_eq!(built.refused.len(), 2, "{:?}", built.refused);

        let hostname = built.refused[0].to_string();
        assert!(
            hostname
                .starts_with("b.yaml: route b/json: refused: hostname \"shop.example.com\" belongs to namespace \"a\""),
            "{hostname}"
        );
        assert!(hostname.ends_with("(a/shop is in a.yaml)"), "{hostname}");
        let location = built.refused[1].to_string();
        assert!(
            location.starts_with("b.yaml: route b/again: refused: location \"/\" on host \"b.example.com\""),
            "{location}"
        );
        assert!(location.ends_with("(b/own is in b.yaml)"), "{location}");
    }

    #[test]
    fn an_invalid_route_still_fails_the_whole_load() {
        let sources = sourced(
            "x.yaml",
            &doc(
                "a",
                "bad",
                "  allowedNamespaces: [Not_A_Namespace]\n  locations: [{path: /}]\n",
            ),
        );
        let err = from_sources(&sources, &[], 1).unwrap_err().to_string();
        assert!(
            err.contains("x.yaml") && err.contains("allowedNamespaces") && err.contains("Not_A_Namespace"),
            "{err}"
        );
    }

    fn sourced_libraries(file: &str, yaml: &str) -> Vec<SourcedLibrary> {
        crate::source::parse_documents(yaml, None)
            .unwrap()
            .libraries
            .into_iter()
            .map(|library| SourcedLibrary {
                file: file.into(),
                library,
            })
            .collect()
    }

    fn library_doc(ns: &str, name: &str, modules: &str) -> String {
        format!(
            "apiVersion: moongate.dev/v1alpha1\nkind: LuaLibrary\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  modules:\n{modules}"
        )
    }

    #[test]
    fn routes_of_a_namespace_share_its_library_and_the_snapshot_carries_it_once() {
        let mut sources = sourced(
            "r.yaml",
            &[
                doc("team", "a", "  libraries: [shared]\n  locations: [{path: /a}]\n"),
                doc("team", "b", "  libraries: [shared]\n  locations: [{path: /b}]\n"),
            ]
            .join("---\n"),
        );
        let libraries = sourced_libraries(
            "l.yaml",
            &[
                library_doc("team", "shared", "    resty.jit-uuid: 'return {}'\n"),
                library_doc("team", "unused", "    x: 'return {}'\n"),
            ]
            .join("---\n"),
        );
        let built = from_sources(&sources, &libraries, 1).unwrap();
        let names: Vec<&str> = built.snapshot.libraries.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["shared"], "once, and only the libraries routes name");
        assert!(
            built.snapshot.routes.iter().all(|r| r.modules.is_empty()),
            "not copied into routes"
        );

        sources.extend(sourced(
            "other.yaml",
            &doc("other", "c", "  libraries: [shared]\n  locations: [{path: /c}]\n"),
        ));
        let err = from_sources(&sources, &libraries, 2).unwrap_err().to_string();
        assert_eq!(
            err,
            r#"other.yaml: route other/c: libraries: library "shared" not found in namespace "other""#
        );
    }

    #[test]
    fn an_invalid_library_fails_the_load_naming_file_library_module_and_line() {
        let sources = sourced(
            "r.yaml",
            &doc("team", "a", "  libraries: [shared]\n  locations: [{path: /a}]\n"),
        );
        let libraries = sourced_libraries(
            "l.yaml",
            &library_doc("team", "shared", "    resty.jwt-validators: |\n      return {\n"),
        );
        let err = from_sources(&sources, &libraries, 1).unwrap_err().to_string();
        assert!(
            err.starts_with("l.yaml: library team/shared: module resty.jwt-validators: line 2: "),
            "{err}"
        );
    }
}
