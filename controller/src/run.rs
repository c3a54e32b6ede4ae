//! Wires the controller together: leader election, the watches, the gRPC
//! config stream, status writing and the admin listener.
//!
//! A replica does nothing but campaign until it holds the Lease: only the
//! leader serves dataplane streams and writes status, and a standby answers
//! `/readyz` with 503 so a Service sends dataplanes to the leader. A leader
//! that loses the Lease exits (as client-go controllers do) rather than risk
//! two writers; it comes back as a standby.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use moongate_proto::v1::config_discovery_server::ConfigDiscoveryServer;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::admin::Readiness;
use crate::discovery::Discovery;
use crate::error::{Error, Result};
use crate::fleet::Fleet;
use crate::leader::LeaseSettings;
use crate::reconcile::Debounce;
use crate::tls::TlsSource;
use moongate_route::compile::Compiler;

pub struct Options {
    pub grpc_listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    /// Empty: all namespaces.
    pub namespaces: Vec<String>,
    pub tls: TlsSource,
    /// `None`: no leader election (a single replica).
    pub lease: Option<LeaseSettings>,
    pub identity: String,
    pub debounce: Debounce,
}

pub async fn run(options: Options) -> Result<()> {
    let client = Client::try_default().await?;
    let readiness = Arc::new(Readiness::default());
    if let Some(addr) = options.admin_listen {
        let bound = crate::admin::start(addr, readiness.clone()).await?;
        tracing::info!("admin on http://{bound}");
    }
    let mut term = signal(SignalKind::terminate()).map_err(|source| Error::Start {
        what: "the SIGTERM handler",
        source,
    })?;

    // Bad TLS material is a configuration error: say so before campaigning,
    // rather than after taking the Lease from a working leader.
    let tls = crate::tls::server_config(&client, &options.tls).await?;

    let (leading_tx, mut leading) = watch::channel(options.lease.is_none());
    let campaign = {
        let client = client.clone();
        let lease = options.lease.clone();
        async move {
            match lease {
                Some(lease) => crate::leader::campaign(client, lease, leading_tx).await,
                None => std::future::pending().await,
            }
        }
    };
    tokio::pin!(campaign);
    if options.lease.is_some() {
        tracing::info!(identity = %options.identity, "standby: waiting for the leader Lease");
    }
    tokio::select! {
        _ = leading.wait_for(|l| *l) => {}
        result = &mut campaign => return result.map_err(Into::into),
        _ = term.recv() => return Ok(()),
        _ = tokio::signal::ctrl_c() => return Ok(()),
    }
    crate::metrics::leader(true);
    readiness.leading.store(true, Ordering::Relaxed);
    tracing::info!(identity = %options.identity, "leading: serving dataplanes and writing status");

    let fleet = Arc::new(Fleet::default());
    let (latest_tx, latest) = watch::channel(None);
    let (verdicts_tx, verdicts, library_verdicts) = crate::reconcile::VerdictSenders::channel();
    spawn_reconciler(
        client.clone(),
        options.namespaces.clone(),
        options.debounce,
        latest_tx,
        verdicts_tx,
    )?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "moongate-controller".into(),
            instance: Some(options.identity.clone()),
        },
    );
    tokio::spawn(crate::status::run(
        client.clone(),
        recorder,
        verdicts,
        library_verdicts,
        fleet.clone(),
    ));
    {
        let readiness = readiness.clone();
        let mut latest = latest.clone();
        tokio::spawn(async move {
            if latest.wait_for(Option::is_some).await.is_ok() {
                readiness.serving.store(true, Ordering::Relaxed);
            }
        });
    }

    let discovery = Discovery::new(latest, fleet, Compiler::abi().clone());
    let mut server = tonic::transport::Server::builder()
        // Finds dataplanes that vanished without closing their connection.
        // The timeout is generous: while a full snapshot goes out to a large
        // fleet, connection tasks can be polled seconds late, and hyper then
        // counts a pong that did arrive as missing (measured: streams dropped
        // at 5 s with 1000 dataplanes on 2 cores).
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    let listener = tokio::net::TcpListener::bind(options.grpc_listen)
        .await
        .map_err(|source| Error::Listen {
            what: "gRPC",
            addr: options.grpc_listen.to_string(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| Error::Listen {
        what: "gRPC",
        addr: options.grpc_listen.to_string(),
        source,
    })?;
    tracing::info!("serving gRPC on {bound}");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let serve = server
        .add_service(ConfigDiscoveryServer::new(discovery).max_decoding_message_size(MAX_MESSAGE))
        .serve_with_incoming(incoming);
    let outcome = tokio::select! {
        result = serve => result.map_err(Error::from),
        result = &mut campaign => result.map_err(Into::into),
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    if let Some(lease) = &options.lease {
        // Hand over at once instead of making the standby wait out the lease.
        if let Err(e) = crate::leader::release(&client, lease).await {
            tracing::warn!("could not release the Lease: {e}");
        }
    }
    outcome
}

/// The reconciler compiles Lua with a LuaJIT state, which cannot move between
/// threads, so it runs on a thread of its own; compiling there also keeps the
/// CPU work off the threads serving dataplane streams.
fn spawn_reconciler(
    client: Client,
    namespaces: Vec<String>,
    debounce: Debounce,
    latest: watch::Sender<Option<Arc<crate::published::Published>>>,
    verdicts: crate::reconcile::VerdictSenders,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Start {
            what: "the reconciler's runtime",
            source,
        })?;
    std::thread::Builder::new()
        .name("reconciler".into())
        .spawn(move || runtime.block_on(crate::reconcile::run(client, namespaces, debounce, latest, verdicts)))
        .map_err(|source| Error::Start {
            what: "the reconciler thread",
            source,
        })?;
    Ok(())
}

/// Dataplanes send small messages (Hello, Ack, Nack); a Nack lists errors per route.
const MAX_MESSAGE: usize = 4 << 20;
