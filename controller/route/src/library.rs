//! Linking a route to the LuaLibraries it names: the one rule the
//! controller, standalone mode and the dataplane apply.
//!
//! A route names libraries of its own namespace only (a library of another
//! namespace is never found). Module names must be unique across what a
//! route can `require`: a library module with the name of one of the route's
//! own modules, or two named libraries with a module of the same name, is a
//! [`LinkError::Conflict`] that refuses the route. Refusing is the safe
//! choice: shadowing either way would let an edit of one object silently
//! change which code another runs.

use std::collections::HashMap;
use std::fmt;

use moongate_proto::v1 as pb;

use crate::{LibraryKey, RouteKey};

/// Why a route cannot be linked to its libraries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkError {
    /// No library of that name in the route's namespace.
    Missing(LibraryKey),
    /// A module name defined twice among the route's modules and libraries.
    Conflict {
        module: String,
        /// Where the module was defined first: `the route's modules` or
        /// `library NAME`.
        first: String,
        /// The library defining it again.
        second: LibraryKey,
    },
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Missing(key) => write!(f, "library {:?} not found in namespace {:?}", key.name, key.namespace),
            LinkError::Conflict { module, first, second } => write!(
                f,
                "module {module:?} of library {:?} is also defined by {first}: module names must be unique across a route's modules and libraries",
                second.name
            ),
        }
    }
}

/// The key of each library `route` names, in its order.
pub fn named(route: &pb::Route) -> impl Iterator<Item = LibraryKey> + '_ {
    route
        .libraries
        .iter()
        .map(|name| LibraryKey::new(&route.namespace, name))
}

/// The libraries `route` names, found with `find`, in the route's order;
/// `Err` for the first that is missing or conflicts.
pub fn link<'a>(
    route: &pb::Route,
    find: impl Fn(&LibraryKey) -> Option<&'a pb::Library>,
) -> Result<Vec<&'a pb::Library>, LinkError> {
    let mut defined: HashMap<&str, String> = route
        .modules
        .iter()
        .map(|m| (m.name.as_str(), "the route's modules".to_string()))
        .collect();
    let mut linked = Vec::with_capacity(route.libraries.len());
    for key in named(route) {
        let library = find(&key).ok_or_else(|| LinkError::Missing(key.clone()))?;
        for module in &library.modules {
            if let Some(first) = defined.insert(&module.name, format!("library {:?}", library.name)) {
                return Err(LinkError::Conflict {
                    module: module.name.clone(),
                    first,
                    second: key,
                });
            }
        }
        linked.push(library);
    }
    Ok(linked)
}

/// `link`, for messages about a route: `route NS/NAME: libraries: ...`.
pub fn route_problem(route: &pb::Route, error: &LinkError) -> crate::Problem {
    crate::Problem {
        route: Some(RouteKey::of(route)),
        phase: Some("libraries".into()),
        ..crate::Problem::new(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(name: &str) -> pb::Module {
        pb::Module {
            name: name.into(),
            chunk: None,
        }
    }

    fn library(namespace: &str, name: &str, modules: &[&str]) -> pb::Library {
        pb::Library {
            namespace: namespace.into(),
            name: name.into(),
            generation: 1,
            modules: modules.iter().map(|m| module(m)).collect(),
        }
    }

    fn route(own: &[&str], libraries: &[&str]) -> pb::Route {
        pb::Route {
            namespace: "team".into(),
            name: "r".into(),
            modules: own.iter().map(|m| module(m)).collect(),
            libraries: libraries.iter().map(|l| l.to_string()).collect(),
            ..Default::default()
        }
    }

    fn find<'a>(libraries: &'a [pb::Library]) -> impl Fn(&LibraryKey) -> Option<&'a pb::Library> {
        |key| libraries.iter().find(|l| LibraryKey::of(l) == *key)
    }

    #[test]
    fn libraries_are_found_in_the_routes_namespace_only() {
        let libraries = [
            library("team", "jwt", &["resty.jwt-validators"]),
            library("other", "uuid", &["resty.jit-uuid"]),
        ];
        let linked = link(&route(&["own"], &["jwt"]), find(&libraries)).unwrap();
        assert_eq!(linked.len(), 1);
        assert_eq!(linked[0].name, "jwt");
        let err = link(&route(&[], &["jwt", "uuid"]), find(&libraries)).unwrap_err();
        assert_eq!(err, LinkError::Missing(LibraryKey::new("team", "uuid")));
        assert_eq!(err.to_string(), r#"library "uuid" not found in namespace "team""#);
    }

    #[test]
    fn a_module_defined_twice_refuses_the_route_naming_both_sites() {
        let libraries = [
            library("team", "a", &["util", "resty.a"]),
            library("team", "b", &["resty.a"]),
        ];
        let own = link(&route(&["util"], &["a"]), find(&libraries)).unwrap_err();
        assert!(
            own.to_string()
                .starts_with(r#"module "util" of library "a" is also defined by the route's modules"#),
            "{own}"
        );
        let two = link(&route(&[], &["a", "b"]), find(&libraries)).unwrap_err();
        assert!(
            two.to_string()
                .starts_with(r#"module "resty.a" of library "b" is also defined by library "a""#),
            "{two}"
        );
    }
}
