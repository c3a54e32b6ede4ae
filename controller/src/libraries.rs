//! The controller's table of LuaLibraries: each library's latest object, its
//! compilation, and the generation the routes naming it are served with.
//!
//! Invariants:
//! - A library is compiled once per generation; status-only updates do not
//!   recompile.
//! - The generation served to routes is the current one when it compiles,
//!   else the last one that did (`last_good`), so a bad edit never takes the
//!   routes naming the library down. A deleted library that had a good
//!   generation stays a *tombstone* serving it while some route still names
//!   it; the routes say `LibraryNotFound` meanwhile. (That memory is per
//!   controller process, like a route's last good generation.)
//! - A library that never compiled, or never existed, serves nothing: a
//!   route naming it keeps its own last published generation, if any.
//! - One generation of a library is served at a time, to every route of the
//!   namespace that names it: the snapshot carries a library once, by name.
//!   So an edit that compiles but adds a module clashing with a route's own
//!   module refuses that route (`LibraryConflict`) and leaves it out until
//!   one of them is fixed: its last published generation would clash with
//!   the new library too. Pinning library generations per route would keep
//!   it serving, at the cost of carrying several generations of a library.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::ResourceExt;
use moongate_proto::v1 as pb;
use moongate_route::compile::{Compiler, compile_library};
use moongate_route::crd::{LuaLibrary, LuaLibraryStatus};
use moongate_route::{LibraryKey, Problem, RouteKey};

/// A reference a route cannot resolve as it is now, for its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    /// The condition reason: `BackendNotFound`, `LibraryNotFound`,
    /// `LibraryInvalid` or `LibraryConflict`.
    pub reason: &'static str,
    pub message: String,
}

/// What the controller concluded about one LuaLibrary.
#[derive(Clone, Debug)]
pub struct LibraryVerdict {
    pub generation: i64,
    /// `Err`: every problem, each naming the module and Lua line.
    pub accepted: Result<(), String>,
    /// The generation in the published config, if a published route names it.
    pub published_generation: Option<i64>,
    /// The generation routes naming it are served with (current or last good).
    pub serving_generation: Option<i64>,
    /// The routes of its namespace whose current spec names it.
    pub routes: Vec<RouteKey>,
    pub modules: Vec<String>,
    pub reference: k8s_openapi::api::core::v1::ObjectReference,
    /// The status as last read from the API server.
    pub status: Option<LuaLibraryStatus>,
}

pub type LibraryVerdicts = BTreeMap<LibraryKey, LibraryVerdict>;

struct Entry {
    /// `None`: deleted, kept as a tombstone for its `last_good`.
    object: Option<LuaLibrary>,
    compiled: Result<Arc<pb::Library>, Vec<Problem>>,
    last_good: Option<Arc<pb::Library>>,
}

#[derive(Default)]
pub struct LibraryTable {
    libraries: BTreeMap<LibraryKey, Entry>,
}

pub fn library_key(object: &LuaLibrary) -> LibraryKey {
    LibraryKey::new(object.namespace().unwrap_or_default(), object.name_any())
}

impl LibraryTable {
    /// Records the newest state of a LuaLibrary, compiling it if its spec changed.
    pub fn upsert(&mut self, compiler: &Compiler, object: LuaLibrary) {
        let key = library_key(&object);
        if let Some(Entry {
            object: Some(known), ..
        }) = self.libraries.get_mut(&key)
            && known.spec == object.spec
            && known.metadata.generation == object.metadata.generation
            && known.metadata.uid == object.metadata.uid
        {
            *known = object;
            return;
        }
        let compiled = compile_library(compiler, &object).map(Arc::new);
        match &compiled {
            Ok(_) => tracing::info!(library = %key, generation = ?object.metadata.generation, "compiled"),
            Err(problems) => {
                for p in problems {
                    tracing::warn!("rejected: {p}");
                }
            }
        }
        // Kept across delete and re-create too: the routes naming the
        // library by name keep working until a good generation replaces it.
        let last_good = match &compiled {
            Ok(library) => Some(library.clone()),
            Err(_) => self.libraries.get(&key).and_then(|e| e.last_good.clone()),
        };
        self.libraries.insert(
            key,
            Entry {
                object: Some(object),
                compiled,
                last_good,
            },
        );
    }

    /// Forgets a deleted library, or keeps it as a tombstone if it has a good
    /// generation (dropped by [`LibraryTable::forget_unnamed`]).
    pub fn remove(&mut self, key: &LibraryKey) {
        match self.libraries.get_mut(key) {
            Some(entry) if entry.last_good.is_some() => entry.object = None,
            Some(_) => {
                self.libraries.remove(key);
            }
            None => {}
        }
    }

    /// Replaces every library in `scope` (a namespace, or all) with a fresh list.
    pub fn relist(&mut self, compiler: &Compiler, scope: Option<&str>, objects: Vec<LuaLibrary>) {
        let listed: BTreeSet<LibraryKey> = objects.iter().map(library_key).collect();
        let gone: Vec<LibraryKey> = self
            .libraries
            .keys()
            .filter(|key| scope.is_none_or(|s| s == key.namespace) && !listed.contains(*key))
            .cloned()
            .collect();
        for key in &gone {
            self.remove(key);
        }
        for object in objects {
            self.upsert(compiler, object);
        }
    }

    /// Drops tombstones that no route names any more.
    pub fn forget_unnamed(&mut self, named: &BTreeSet<LibraryKey>) {
        self.libraries
            .retain(|key, entry| entry.object.is_some() || named.contains(key));
    }

    /// The generation of `key` routes are served with now, and what is wrong
    /// with the library as it is (deleted, or its newest generation invalid),
    /// if anything. `Err` when there is nothing to serve.
    pub fn serving(&self, key: &LibraryKey) -> Result<(Arc<pb::Library>, Option<Unresolved>), Unresolved> {
        let not_found = || Unresolved {
            reason: "LibraryNotFound",
            message: format!("LuaLibrary {key} not found"),
        };
        let Some(entry) = self.libraries.get(key) else {
            return Err(not_found());
        };
        let Some(object) = &entry.object else {
            let good = entry.last_good.clone().ok_or_else(not_found)?;
            let mut why = not_found();
            why.message = format!(
                "{}; the routes naming it keep its generation {}",
                why.message, good.generation
            );
            return Ok((good, Some(why)));
        };
        match &entry.compiled {
            Ok(library) => Ok((library.clone(), None)),
            Err(problems) => {
                let generation = object.metadata.generation.unwrap_or(0);
                let problems = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                match &entry.last_good {
                    Some(good) => Ok((
                        good.clone(),
                        Some(Unresolved {
                            reason: "LibraryInvalid",
                            message: format!(
                                "generation {generation} of LuaLibrary {key} is invalid ({problems}); the routes naming it keep its generation {}",
                                good.generation
                            ),
                        }),
                    )),
                    None => Err(Unresolved {
                        reason: "LibraryInvalid",
                        message: format!("LuaLibrary {key} is invalid: {problems}"),
                    }),
                }
            }
        }
    }

    /// The verdict of every library that exists (not the tombstones).
    /// `published` are the libraries of the version being published; `naming`
    /// the routes whose current spec names each library.
    pub fn verdicts(
        &self,
        published: &BTreeMap<LibraryKey, Arc<pb::Library>>,
        naming: &BTreeMap<LibraryKey, Vec<RouteKey>>,
    ) -> LibraryVerdicts {
        let mut verdicts = LibraryVerdicts::new();
        for (key, entry) in &self.libraries {
            let Some(object) = &entry.object else { continue };
            let accepted = match &entry.compiled {
                Ok(_) => Ok(()),
                Err(problems) => Err(problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")),
            };
            verdicts.insert(
                key.clone(),
                LibraryVerdict {
                    generation: object.metadata.generation.unwrap_or(0),
                    accepted,
                    published_generation: published.get(key).map(|l| l.generation),
                    serving_generation: self.serving(key).ok().map(|(l, _)| l.generation),
                    routes: naming.get(key).cloned().unwrap_or_default(),
                    modules: object.spec.modules.keys().cloned().collect(),
                    reference: {
                        use kube::Resource;
                        object.object_ref(&())
                    },
                    status: object.status.clone(),
                },
            );
        }
        verdicts
    }
}
