//! Standalone mode's snapshot: routes read from files, validated and compiled,
//! with the routes the hostname and location rules refuse left out and named
//! with their files.

use moongate_proto::snapshot::build;
use moongate_proto::v1 as pb;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::RouteKey;
use crate::compile::{Compiler, compile_route};
use crate::error::{Error, Problem, Result};
use crate::index::{self, Refusal};
use crate::source::SourcedRoute;

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

/// Validates and compiles routes read from files (standalone mode) into a
/// snapshot. Routes are ordered by their position in the files, so the first
/// route naming a hostname makes its namespace the owner.
///
/// Any invalid route fails the whole load (`Error::Invalid`, every problem
/// with its file). Routes that are valid but refused by the same rules the
/// controller applies ([`index::admit`]) are left out and listed in
/// [`FromSources::refused`]; the rest is served.
pub fn from_sources(sources: &[SourcedRoute], version: u64) -> Result<FromSources> {
    let compiler = Compiler::standalone();
    let mut routes = Vec::with_capacity(sources.len());
    let mut files: HashMap<RouteKey, &Path> = HashMap::with_capacity(sources.len());
    let mut problems: Vec<Problem> = Vec::new();
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
    if !problems.is_empty() {
        return Err(Error::Invalid(problems));
    }
    let refusals = index::retain_admitted(&mut routes);
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
        snapshot: build(routes, Vec::new(), version),
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
        let built = from_sources(&sources, 7).unwrap();
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
        let err = from_sources(&sources, 1).unwrap_err().to_string();
        assert!(
            err.contains("x.yaml") && err.contains("allowedNamespaces") && err.contains("Not_A_Namespace"),
            "{err}"
        );
    }
}
