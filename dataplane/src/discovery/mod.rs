//! The controller client: dials `ConfigDiscovery.Stream`, applies what the
//! controller pushes, and answers each version with an Ack or a Nack.
//!
//! Invariants:
//! - A version is applied to every worker VM or to none (`Workers::apply`);
//!   a version that fails anywhere is Nacked with the reason and the previous
//!   config keeps serving.
//! - A delta applies only on top of the version it names; otherwise, or if
//!   the result does not hash to what the controller sent, the dataplane
//!   Nacks and reconnects for a full snapshot.
//! - Every applied version is persisted (`store`), so a restart while the
//!   controller is unreachable serves the last good config.
//! - Connection failures never touch the serving config; the client retries
//!   with jittered exponential backoff, trying each controller address in turn
//!   (a standby controller refuses streams, so this finds the leader).

pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use moongate_proto::v1 as pb;
use moongate_proto::v1::config_discovery_client::ConfigDiscoveryClient;
use moongate_proto::v1::controller_message::Kind as Push;
use moongate_proto::v1::dataplane_message::Kind as Reply;
use moongate_route::{LibraryKey, RouteKey};
use rand::Rng;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::admin::AdminState;
use crate::config::Config;
use crate::worker::Workers;
use store::SnapshotStore;

/// How to reach and authenticate to the controller.
#[derive(Clone, Debug)]
pub struct ControllerSettings {
    /// `https://host:port` (or `http://` with `insecure`), tried in turn.
    pub addresses: Vec<String>,
    pub tls: Option<ClientTls>,
    pub node_id: String,
    pub pod_name: String,
    pub pod_namespace: String,
}

#[derive(Clone, Debug)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// The name the controller's certificate must carry; default: the address's host.
    pub server_name: Option<String>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What this dataplane serves: routes by key, and the version they make up.
#[derive(Default)]
struct Applied {
    routes: BTreeMap<RouteKey, pb::Route>,
    /// Service endpoints by (namespace, service, port).
    endpoints: BTreeMap<(String, String, u32), pb::ServiceEndpoints>,
    /// LuaLibraries by key; a version that changes one reloads the routes
    /// (every route is reloaded on a version that changes any route or library).
    libraries: BTreeMap<LibraryKey, pb::Library>,
    version: u64,
    content_hash: Vec<u8>,
    /// The hash of `routes` and `libraries`, without endpoints: a version
    /// that changes only endpoints leaves it as it is, and reloads no Lua.
    routes_hash: Vec<u8>,
    /// Routes of `routes` that failed to load and are not served.
    left_out: Vec<pb::RouteError>,
}

pub struct Client<'a> {
    settings: ControllerSettings,
    workers: &'a Workers,
    admin: &'a AdminState,
    store: Option<SnapshotStore>,
    applied: Applied,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Protocol(String),
}

impl<'a> Client<'a> {
    pub fn new(
        settings: ControllerSettings,
        workers: &'a Workers,
        admin: &'a AdminState,
        store: Option<SnapshotStore>,
    ) -> Client<'a> {
        Client {
            settings,
            workers,
            admin,
            store,
            applied: Applied::default(),
        }
    }

    /// Serves the last persisted snapshot, if there is one that loads.
    pub async fn restore(&mut self) {
        let Some(snapshot) = self.store.as_ref().and_then(SnapshotStore::load) else {
            return;
        };
        let version = snapshot.version;
        match self.load(snapshot).await {
            Ok(_) => tracing::info!(version, "serving the last config applied before the restart"),
            Err(e) => tracing::error!(version, "the persisted config does not load: {}", e.message),
        }
    }

    /// Talks to the controller until the future is dropped.
    pub async fn run(&mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut next_address = 0;
        loop {
            let address = self.settings.addresses[next_address % self.settings.addresses.len()].clone();
            next_address += 1;
            let mut connected = false;
            let outcome = self.session(&address, &mut connected).await;
            if connected {
                backoff = BACKOFF_MIN;
            }
            match outcome {
                Ok(()) => tracing::warn!(controller = %address, "the controller ended the config stream"),
                Err(SessionError::Status(s)) if s.code() == tonic::Code::FailedPrecondition => {
                    tracing::error!(controller = %address, "the controller refused this dataplane: {}", s.message());
                }
                Err(e) => tracing::warn!(controller = %address, "config stream: {e}"),
            }
            crate::metrics::controller_connected(false);
            // Full jitter between half and all of the backoff, so a fleet
            // that lost its controller does not reconnect in lockstep.
            let sleep = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
            tracing::info!(retry_in_ms = sleep.as_millis() as u64, "reconnecting");
            tokio::time::sleep(sleep).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn channel(&self, address: &str) -> Result<Channel, SessionError> {
        let mut endpoint = Endpoint::from_shared(address.to_string())
            .map_err(|e| SessionError::Protocol(format!("bad controller address {address:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            // As the controller's: generous, so a busy controller is not taken for a dead one.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.settings.tls {
            let mut config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
            if let Some(name) = &tls.server_name {
                config = config.domain_name(name.clone());
            }
            endpoint = endpoint.tls_config(config)?;
        }
        Ok(endpoint.connect().await?)
    }

    async fn session(&mut self, address: &str, connected: &mut bool) -> Result<(), SessionError> {
        let channel = self.channel(address).await?;
        let mut client = ConfigDiscoveryClient::new(channel).max_decoding_message_size(usize::MAX);
        let (replies, outbound) = mpsc::channel(4);
        let hello = pb::Hello {
            node_id: self.settings.node_id.clone(),
            pod_name: self.settings.pod_name.clone(),
            pod_namespace: self.settings.pod_namespace.clone(),
            abi: Some(moongate_route::compile::Compiler::abi().clone()),
            last_applied_version: self.applied.version,
            last_applied_hash: self.applied.content_hash.clone(),
        };
        send(&replies, Reply::Hello(hello)).await?;
        let mut inbound = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(outbound))
            .await?
            .into_inner();
        *connected = true;
        crate::metrics::controller_connected(true);
        tracing::info!(controller = %address, "connected to the controller");
        while let Some(message) = inbound.message().await? {
            let (routes, endpoints, libraries, version, content_hash) = match message.kind {
                Some(Push::Snapshot(snapshot)) => {
                    let routes = snapshot.routes.into_iter().map(|r| (RouteKey::of(&r), r)).collect();
                    let endpoints = snapshot.endpoints.into_iter().map(|e| (endpoints_key(&e), e)).collect();
                    let libraries = snapshot
                        .libraries
                        .into_iter()
                        .map(|l| (LibraryKey::of(&l), l))
                        .collect();
                    (routes, endpoints, libraries, snapshot.version, snapshot.content_hash)
                }
                Some(Push::Delta(delta)) => {
                    if delta.base_version != self.applied.version {
                        let message = format!(
                            "delta {} applies to version {}, but this dataplane serves version {}",
                            delta.version, delta.base_version, self.applied.version
                        );
                        send(&replies, nack(delta.version, message.clone(), Vec::new())).await?;
                        return Err(SessionError::Protocol(message));
                    }
                    let mut routes = self.applied.routes.clone();
                    for key in delta.removed {
                        routes.remove(&RouteKey::from(&key));
                    }
                    for route in delta.upserted {
                        routes.insert(RouteKey::of(&route), route);
                    }
                    let mut endpoints = self.applied.endpoints.clone();
                    for key in delta.removed_endpoints {
                        endpoints.remove(&(key.namespace, key.service, key.port));
                    }
                    for e in delta.upserted_endpoints {
                        endpoints.insert(endpoints_key(&e), e);
                    }
                    let mut libraries = self.applied.libraries.clone();
                    for key in delta.removed_libraries {
                        libraries.remove(&LibraryKey::from(&key));
                    }
                    for l in delta.upserted_libraries {
                        libraries.insert(LibraryKey::of(&l), l);
                    }
                    (routes, endpoints, libraries, delta.version, delta.content_hash)
                }
                None => {
                    return Err(SessionError::Protocol(
                        "the controller sent a message of a kind this dataplane does not know".into(),
                    ));
                }
            };
            let snapshot = moongate_proto::snapshot::build(
                routes.values().cloned().collect(),
                endpoints.values().cloned().collect(),
                libraries.into_values().collect(),
                version,
            );
            if snapshot.content_hash != content_hash {
                let message = format!(
                    "version {version}: the routes, endpoints and libraries do not match the controller's content hash"
                );
                send(&replies, nack(version, message.clone(), Vec::new())).await?;
                return Err(SessionError::Protocol(message));
            }
            let reply = match self.apply(snapshot).await {
                Ok(left_out) => Reply::Ack(pb::Ack {
                    version,
                    content_hash,
                    route_errors: left_out,
                }),
                Err(rejection) => {
                    tracing::error!(
                        version,
                        "rejected the controller's config, still serving the last good one: {}",
                        rejection.message
                    );
                    nack(version, rejection.message, rejection.route_errors)
                }
            };
            send(&replies, reply).await?;
        }
        Ok(())
    }

    /// Applies `snapshot`; returns the routes it left out (they failed to load).
    async fn apply(&mut self, snapshot: pb::Snapshot) -> Result<Vec<pb::RouteError>, Rejection> {
        if snapshot.content_hash == self.applied.content_hash {
            // Same routes under a new version (e.g. the restored config): nothing to load.
            self.applied.version = snapshot.version;
            self.admin.set_config(snapshot.version, &snapshot.content_hash);
            return Ok(self.applied.left_out.clone());
        }
        let left_out = if routes_hash(&snapshot) == self.applied.routes_hash {
            // Only endpoints changed: the table is swapped, no Lua reloads.
            self.workers.endpoints().replace(&snapshot.endpoints);
            self.admin.set_config(snapshot.version, &snapshot.content_hash);
            tracing::info!(
                version = snapshot.version,
                services = snapshot.endpoints.len(),
                "endpoints applied"
            );
            self.applied.endpoints = snapshot
                .endpoints
                .iter()
                .map(|e| (endpoints_key(e), e.clone()))
                .collect();
            self.applied.version = snapshot.version;
            self.applied.content_hash = snapshot.content_hash.clone();
            self.applied.left_out.clone()
        } else {
            self.load(snapshot.clone()).await?
        };
        if let Some(store) = &self.store
            && let Err(e) = store.save(&snapshot)
        {
            tracing::error!(
                "cannot persist the applied config; a restart without the controller would serve an older one: {e}"
            );
        }
        Ok(left_out)
    }

    /// Loads `snapshot` into every worker and makes it what this dataplane
    /// serves; returns the routes left out because they failed to load.
    async fn load(&mut self, snapshot: pb::Snapshot) -> Result<Vec<pb::RouteError>, Rejection> {
        // Endpoints first, so that a route new in this version finds its
        // Service's; put back if the version does not load.
        let table = self.workers.endpoints().clone();
        table.replace(&snapshot.endpoints);
        let loaded = match Config::try_from(&snapshot) {
            Ok(config) => self.workers.apply(Arc::new(config)).await,
            Err(e) => Err(e),
        };
        crate::metrics::reload(loaded.is_ok());
        if loaded.is_err() {
            table.replace(&self.applied.endpoints.values().cloned().collect::<Vec<_>>());
        }
        let applied = loaded.map_err(Rejection::from)?;
        applied.log();
        let left_out: Vec<pb::RouteError> = applied
            .failed
            .iter()
            .map(|(key, failed)| route_error(key, failed.to_string()))
            .collect();
        self.admin.set_config(snapshot.version, &snapshot.content_hash);
        tracing::info!(
            version = snapshot.version,
            routes = snapshot.routes.len(),
            "config applied"
        );
        self.applied = Applied {
            routes_hash: routes_hash(&snapshot),
            endpoints: snapshot.endpoints.into_iter().map(|e| (endpoints_key(&e), e)).collect(),
            routes: snapshot.routes.into_iter().map(|r| (RouteKey::of(&r), r)).collect(),
            libraries: snapshot
                .libraries
                .into_iter()
                .map(|l| (LibraryKey::of(&l), l))
                .collect(),
            version: snapshot.version,
            content_hash: snapshot.content_hash,
            left_out: left_out.clone(),
        };
        Ok(left_out)
    }
}

/// Why a version did not load, with the routes to blame when known.
struct Rejection {
    message: String,
    route_errors: Vec<pb::RouteError>,
}

impl From<crate::Error> for Rejection {
    fn from(e: crate::Error) -> Rejection {
        let route_errors = match &e {
            crate::Error::Load { route, message } => vec![route_error(route, message.clone())],
            _ => Vec::new(),
        };
        Rejection {
            message: e.to_string(),
            route_errors,
        }
    }
}

fn route_error(key: &RouteKey, message: String) -> pb::RouteError {
    pb::RouteError {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        message,
    }
}

fn nack(version: u64, message: String, route_errors: Vec<pb::RouteError>) -> Reply {
    Reply::Nack(pb::Nack {
        version,
        message,
        route_errors,
    })
}

async fn send(replies: &mpsc::Sender<pb::DataplaneMessage>, kind: Reply) -> Result<(), SessionError> {
    replies
        .send(pb::DataplaneMessage { kind: Some(kind) })
        .await
        .map_err(|_| SessionError::Protocol("the stream to the controller closed".into()))
}

fn endpoints_key(e: &pb::ServiceEndpoints) -> (String, String, u32) {
    (e.namespace.clone(), e.service.clone(), e.port)
}

/// The hash of a snapshot's routes and libraries without its endpoints.
fn routes_hash(snapshot: &pb::Snapshot) -> Vec<u8> {
    moongate_proto::snapshot::content_hash(snapshot.routes.iter(), std::iter::empty(), snapshot.libraries.iter())
}
