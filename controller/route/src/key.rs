//! The identities of a LuaRoute and of a LuaLibrary: namespace and name.

use std::fmt;

use moongate_proto::v1 as pb;

/// `namespace/name` of a LuaRoute. Ordered by namespace, then name.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    pub namespace: String,
    pub name: String,
}

impl RouteKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> RouteKey {
        RouteKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a route as the wire carries it.
    pub fn of(route: &pb::Route) -> RouteKey {
        RouteKey::new(&route.namespace, &route.name)
    }
}

/// `namespace/name`, as kubectl names an object.
impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl From<&pb::RouteKey> for RouteKey {
    fn from(key: &pb::RouteKey) -> RouteKey {
        RouteKey::new(&key.namespace, &key.name)
    }
}

impl From<RouteKey> for pb::RouteKey {
    fn from(key: RouteKey) -> pb::RouteKey {
        pb::RouteKey {
            namespace: key.namespace,
            name: key.name,
        }
    }
}

/// `namespace/name` of a LuaLibrary. Ordered by namespace, then name. A
/// library serves only the routes of its own namespace, so a route names one
/// by `name` alone and the key is completed with the route's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LibraryKey {
    pub namespace: String,
    pub name: String,
}

impl LibraryKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> LibraryKey {
        LibraryKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a library as the wire carries it.
    pub fn of(library: &pb::Library) -> LibraryKey {
        LibraryKey::new(&library.namespace, &library.name)
    }
}

/// `namespace/name`, as kubectl names an object.
impl fmt::Display for LibraryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl From<&pb::LibraryKey> for LibraryKey {
    fn from(key: &pb::LibraryKey) -> LibraryKey {
        LibraryKey::new(&key.namespace, &key.name)
    }
}

impl From<LibraryKey> for pb::LibraryKey {
    fn from(key: LibraryKey) -> pb::LibraryKey {
        pb::LibraryKey {
            namespace: key.namespace,
            name: key.name,
        }
    }
}
