//! Watches LuaRoutes, LuaLibraries, EndpointSlices and Services, and publishes a new config
//! version when what dataplanes should serve changes.
//!
//! Bursts are debounced: after a change the loop keeps absorbing changes until
//! the watch has been quiet for `quiet`, but never longer than `max_delay`, so
//! `kubectl apply` of 100 routes makes one push, and a lone apply is pushed
//! after `quiet` (milliseconds). Nothing is published until every watch has
//! listed its objects once: a dataplane is never sent a partial config.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::libraries::{LibraryVerdicts, library_key};
use crate::published::Published;
use crate::routes::{Acceptance, RouteTable, Verdicts, key_of};
use moongate_route::crd::{LuaLibrary, LuaRoute};

#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    pub quiet: Duration,
    pub max_delay: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            quiet: Duration::from_millis(5),
            max_delay: Duration::from_millis(100),
        }
    }
}

/// A namespace, or all of them.
type Scope = Option<String>;

enum Change {
    Route(Scope, watcher::Event<LuaRoute>),
    Slice(Scope, watcher::Event<EndpointSlice>),
    Service(Scope, watcher::Event<Service>),
    Library(Scope, watcher::Event<LuaLibrary>),
}

fn watch_kind<K, F>(client: &Client, scope: &Scope, wrap: F) -> BoxStream<'static, Change>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    F: Fn(Scope, watcher::Event<K>) -> Change + Send + 'static,
{
    let api: Api<K> = match scope {
        None => Api::all(client.clone()),
        Some(ns) => Api::namespaced(client.clone(), ns),
    };
    let scope = scope.clone();
    let kind = K::kind(&());
    watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |event| {
            let change = match event {
                Ok(event) => Some(wrap(scope.clone(), event)),
                Err(e) => {
                    tracing::warn!(%kind, namespace = scope.as_deref().unwrap_or("*"), "watch failed, retrying: {e}");
                    None
                }
            };
            std::future::ready(change)
        })
        .boxed()
}

/// Objects listed since a watch's `Init`, until its `InitDone`.
#[derive(Default)]
struct Relists {
    routes: HashMap<Scope, Vec<LuaRoute>>,
    slices: HashMap<Scope, Vec<EndpointSlice>>,
    services: HashMap<Scope, Vec<Service>>,
    libraries: HashMap<Scope, Vec<LuaLibrary>>,
    /// Watches that have completed a list at least once.
    synced: std::collections::HashSet<(u8, Scope)>,
}

fn apply(table: &mut RouteTable, relists: &mut Relists, change: Change) {
    use watcher::Event::*;
    match change {
        Change::Route(scope, event) => match event {
            Apply(route) => table.upsert(route),
            Delete(route) => table.remove(&key_of(&route)),
            Init => {
                relists.routes.insert(scope, Vec::new());
            }
            InitApply(route) => relists.routes.entry(scope).or_default().push(route),
            InitDone => {
                let listed = relists.routes.remove(&scope).unwrap_or_default();
                table.relist_routes(scope.as_deref(), listed);
                relists.synced.insert((0, scope));
            }
        },
        Change::Slice(scope, event) => match event {
            Apply(slice) => table.apply_slice(&slice),
            Delete(slice) => table.delete_slice(&slice),
            Init => {
                relists.slices.insert(scope, Vec::new());
            }
            InitApply(slice) => relists.slices.entry(scope).or_default().push(slice),
            InitDone => {
                let listed = relists.slices.remove(&scope).unwrap_or_default();
                table.relist_slices(scope.as_deref(), listed);
                relists.synced.insert((1, scope));
            }
        },
        Change::Service(scope, event) => match event {
            Apply(service) => table.apply_service(service),
            Delete(service) => table.delete_service(&service),
            Init => {
                relists.services.insert(scope, Vec::new());
            }
            InitApply(service) => relists.services.entry(scope).or_default().push(service),
            InitDone => {
                let listed = relists.services.remove(&scope).unwrap_or_default();
                table.relist_services(scope.as_deref(), listed);
                relists.synced.insert((2, scope));
            }
        },
        Change::Library(scope, event) => match event {
            Apply(library) => table.upsert_library(library),
            Delete(library) => table.remove_library(&library_key(&library)),
            Init => {
                relists.libraries.insert(scope, Vec::new());
            }
            InitApply(library) => relists.libraries.entry(scope).or_default().push(library),
            InitDone => {
                let listed = relists.libraries.remove(&scope).unwrap_or_default();
                table.relist_libraries(scope.as_deref(), listed);
                relists.synced.insert((3, scope));
            }
        },
    }
}

/// A version number larger than any an earlier controller process used:
/// milliseconds since the epoch at start, then one up per publish (pushes
/// are debounced, so this never catches up with the clock).
fn first_version() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
}

/// Runs until the watches end (they retry forever, so: until cancelled).
pub async fn run(
    client: Client,
    namespaces: Vec<String>,
    debounce: Debounce,
    latest: watch::Sender<Option<Arc<Published>>>,
    verdicts: VerdictSenders,
) {
    let scopes: Vec<Scope> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let mut streams = Vec::new();
    for scope in &scopes {
        streams.push(watch_kind::<LuaRoute, _>(&client, scope, Change::Route));
        streams.push(watch_kind::<EndpointSlice, _>(&client, scope, Change::Slice));
        streams.push(watch_kind::<Service, _>(&client, scope, Change::Service));
        streams.push(watch_kind::<LuaLibrary, _>(&client, scope, Change::Library));
    }
    let watches = streams.len();
    drive(
        futures::stream::select_all(streams),
        watches,
        debounce,
        latest,
        verdicts,
    )
    .await;
}

/// Applies `changes` to a route table and publishes after each debounced
/// burst, once all `watches` have listed. Returns when `changes` ends.
async fn drive(
    mut changes: impl futures::Stream<Item = Change> + Unpin,
    watches: usize,
    debounce: Debounce,
    latest: watch::Sender<Option<Arc<Published>>>,
    verdicts: VerdictSenders,
) {
    let mut table = RouteTable::default();
    let mut relists = Relists::default();
    let mut version = first_version();
    while let Some(change) = changes.next().await {
        apply(&mut table, &mut relists, change);
        let deadline = Instant::now() + debounce.max_delay;
        loop {
            let until = (Instant::now() + debounce.quiet).min(deadline);
            match tokio::time::timeout_at(until, changes.next()).await {
                Ok(Some(change)) => apply(&mut table, &mut relists, change),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        if relists.synced.len() < watches {
            continue;
        }
        let built = table.build();
        record_counts(&built.verdicts);
        let route_verdicts = built.verdicts;
        let library_verdicts = built.library_verdicts;
        let candidate = Published::with_libraries(version + 1, built.routes, built.endpoints, built.libraries);
        let unchanged = latest
            .borrow()
            .as_ref()
            .is_some_and(|p| p.content_hash == candidate.content_hash);
        if !unchanged {
            version += 1;
            tracing::info!(
                version,
                routes = candidate.routes.len(),
                services = candidate.endpoints.len(),
                libraries = candidate.libraries.len(),
                "publishing"
            );
            crate::metrics::config_version(version);
            latest.send_replace(Some(Arc::new(candidate)));
        }
        verdicts.routes.send_replace(Arc::new(route_verdicts));
        verdicts.libraries.send_replace(Arc::new(library_verdicts));
    }
}

/// Where the reconciler sends its verdicts, for the status writer.
pub struct VerdictSenders {
    pub routes: watch::Sender<Arc<Verdicts>>,
    pub libraries: watch::Sender<Arc<LibraryVerdicts>>,
}

impl VerdictSenders {
    /// Senders, and the receivers the status writer reads.
    pub fn channel() -> (
        VerdictSenders,
        watch::Receiver<Arc<Verdicts>>,
        watch::Receiver<Arc<LibraryVerdicts>>,
    ) {
        let (routes, route_verdicts) = watch::channel(Arc::default());
        let (libraries, library_verdicts) = watch::channel(Arc::default());
        (VerdictSenders { routes, libraries }, route_verdicts, library_verdicts)
    }
}

fn record_counts(verdicts: &Verdicts) {
    let count = |f: fn(&Acceptance) -> bool| verdicts.values().filter(|v| f(&v.acceptance)).count();
    crate::metrics::routes("accepted", count(|a| matches!(a, Acceptance::Accepted)));
    crate::metrics::routes("invalid", count(|a| matches!(a, Acceptance::Invalid(_))));
    crate::metrics::routes("conflicted", count(|a| matches!(a, Acceptance::Conflicted(_))));
    crate::metrics::routes("unlinked", count(|a| matches!(a, Acceptance::Unlinked(_))));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn route(i: usize) -> LuaRoute {
        let yaml = format!(
            "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {{name: r{i}, namespace: ns}}\nspec:\n  hostnames: [r{i}.test]\n  locations:\n    - path: /\n      content: ngx.say({i})\n"
        );
        let mut r = moongate_route::source::parse_routes(&yaml, None).unwrap().remove(0);
        r.metadata.generation = Some(1);
        r
    }

    /// Feeds `drive` the initial lists of the four watches of one scope.
    fn listed() -> Vec<Change> {
        vec![
            Change::Route(None, watcher::Event::Init),
            Change::Route(None, watcher::Event::InitDone),
            Change::Slice(None, watcher::Event::Init),
            Change::Slice(None, watcher::Event::InitDone),
            Change::Service(None, watcher::Event::Init),
            Change::Service(None, watcher::Event::InitDone),
            Change::Library(None, watcher::Event::Init),
            Change::Library(None, watcher::Event::InitDone),
        ]
    }

    /// Real time, with a debounce stretched so the bounds hold on a loaded machine.
    #[tokio::test]
    async fn a_burst_of_applies_is_published_once_and_a_lone_apply_promptly() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (latest, mut published) = watch::channel(None);
        let (verdicts, _, _) = VerdictSenders::channel();
        let debounce = Debounce {
            quiet: Duration::from_millis(50),
            max_delay: Duration::from_secs(3),
        };
        // The route table holds a LuaJIT state, so `drive` stays on this thread.
        let local = tokio::task::LocalSet::new();
        local.spawn_local(drive(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
            4,
            debounce,
            latest,
            verdicts,
        ));
        local
            .run_until(async move {
                for change in listed() {
                    tx.send(change).unwrap();
                }
                published.changed().await.unwrap();
                let empty = published.borrow_and_update().clone().unwrap();
                assert!(
                    empty.routes.is_empty(),
                    "the first version is published once listed, even empty"
                );

                // 100 applies at once: one version with all of them.
                let routes: Vec<LuaRoute> = (0..100).map(route).collect();
                for r in routes {
                    tx.send(Change::Route(None, watcher::Event::Apply(r))).unwrap();
                }
                published.changed().await.unwrap();
                let burst = published.borrow_and_update().clone().unwrap();
                assert_eq!(burst.routes.len(), 100);
                assert_eq!(burst.version, empty.version + 1, "one push for the whole burst");

                // A lone apply goes out after the quiet period, well before the maximum delay.
                let start = Instant::now();
                tx.send(Change::Route(None, watcher::Event::Apply(route(100)))).unwrap();
                published.changed().await.unwrap();
                assert_eq!(
                    published.borrow_and_update().as_ref().unwrap().version,
                    burst.version + 1
                );
                assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());

                // Changes that never pause are still published by the maximum delay.
                let start = Instant::now();
                let sender = tokio::spawn(async move {
                    for i in 0.. {
                        let _ = tx.send(Change::Route(None, watcher::Event::Apply(route(200 + i % 5))));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                });
                published.changed().await.unwrap();
                let took = start.elapsed();
                assert!(took >= debounce.max_delay && took < debounce.max_delay * 2, "{took:?}");
                sender.abort();
            })
            .await;
    }

    #[tokio::test]
    async fn nothing_is_published_before_every_watch_has_listed() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (latest, published) = watch::channel(None);
        let (verdicts, _, _) = VerdictSenders::channel();
        let local = tokio::task::LocalSet::new();
        local.spawn_local(drive(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
            4,
            Debounce::default(),
            latest,
            verdicts,
        ));
        local
            .run_until(async move {
                tx.send(Change::Route(None, watcher::Event::Init)).unwrap();
                tx.send(Change::Route(None, watcher::Event::InitApply(route(1))))
                    .unwrap();
                tx.send(Change::Route(None, watcher::Event::InitDone)).unwrap();
                tx.send(Change::Slice(None, watcher::Event::Init)).unwrap();
                tx.send(Change::Slice(None, watcher::Event::InitDone)).unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert!(published.borrow().is_none(), "Services have not been listed yet");
                tx.send(Change::Service(None, watcher::Event::Init)).unwrap();
                tx.send(Change::Service(None, watcher::Event::InitDone)).unwrap();
                tx.send(Change::Library(None, watcher::Event::Init)).unwrap();
                tx.send(Change::Library(None, watcher::Event::InitDone)).unwrap();
                let mut published = published;
                published.changed().await.unwrap();
                assert_eq!(published.borrow().as_ref().unwrap().routes.len(), 1);
            })
            .await;
    }
}
