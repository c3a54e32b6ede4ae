//! Builds the versioned, content-hashed `Snapshot` a dataplane loads.

use moongate_proto::v1 as pb;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::compile::{Compiler, compile_route};
use crate::error::{Error, Problem, Result};
use crate::source::SourcedRoute;

/// Orders routes as the dataplane resolves overlaps (creation time, then
/// namespace/name) and hashes their content.
pub fn build(mut routes: Vec<pb::Route>, version: u64) -> pb::Snapshot {
    routes.sort_by(order);
    pb::Snapshot {
        version,
        content_hash: content_hash(routes.iter()),
        routes,
    }
}

/// The order a dataplane resolves overlapping routes in.
pub fn order(a: &pb::Route, b: &pb::Route) -> std::cmp::Ordering {
    (a.created_at, &a.namespace, &a.name).cmp(&(b.created_at, &b.namespace, &b.name))
}

/// SHA-256 over the routes' encodings in dataplane order, whatever order they
/// come in: the controller and a dataplane applying a delta must agree on it.
pub fn content_hash<'a>(routes: impl Iterator<Item = &'a pb::Route>) -> Vec<u8> {
    let mut routes: Vec<&pb::Route> = routes.collect();
    routes.sort_by(|a, b| order(a, b));
    let mut hasher = Sha256::new();
    let mut buf = Vec::new();
    for route in routes {
        buf.clear();
        route.encode(&mut buf).expect("a Vec grows as needed");
        hasher.update(&buf);
    }
    hasher.finalize().to_vec()
}

/// Validates and compiles routes read from files (standalone mode) into a
/// snapshot. Routes are ordered by their position in the files.
pub fn from_sources(sources: &[SourcedRoute], version: u64) -> Result<pb::Snapshot> {
    let compiler = Compiler::new();
    let mut routes = Vec::with_capacity(sources.len());
    let mut problems: Vec<Problem> = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        match compile_route(&compiler, &src.route, i as i64) {
            Ok(r) => routes.push(r),
            Err(ps) => problems.extend(ps.into_iter().map(|p| Problem {
                file: Some(src.file.clone()),
                ..p
            })),
        }
    }
    let mut seen = std::collections::HashSet::new();
    for r in &routes {
        if !seen.insert((r.namespace.clone(), r.name.clone())) {
            problems.push(Problem {
                route: Some(format!("{}/{}", r.namespace, r.name)),
                ..Problem::new("route defined twice")
            });
        }
    }
    if !problems.is_empty() {
        return Err(Error::Invalid(problems));
    }
    Ok(build(routes, version))
}
