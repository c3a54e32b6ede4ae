//! The simulated dataplanes, and the tally of what they acknowledged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use moongate_proto::v1 as pb;
use moongate_proto::v1::config_discovery_client::ConfigDiscoveryClient;
use moongate_proto::v1::controller_message::Kind as Push;
use moongate_proto::v1::dataplane_message::Kind as Reply;
use moongate_route::RouteKey;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// What the simulated dataplanes report, for the version being measured.
#[derive(Default)]
pub(crate) struct Tally {
    /// The version whose acks are counted.
    target: AtomicU64,
    pub(crate) acked: AtomicUsize,
    pub(crate) snapshots: AtomicUsize,
    pub(crate) deltas: AtomicUsize,
    /// When each stream sent its Ack for `target`.
    pub(crate) acks: Mutex<Vec<Instant>>,
    /// When the last stream sent its Ack for `target`.
    pub(crate) all_acked_at: Mutex<Option<Instant>>,
    pub(crate) all_acked: Notify,
    streams: AtomicUsize,
    failures: AtomicUsize,
    first_failure: Mutex<Option<String>>,
}

impl Tally {
    pub(crate) fn arm(&self, version: u64, streams: usize) {
        self.streams.store(streams, Ordering::SeqCst);
        self.acked.store(0, Ordering::SeqCst);
        self.snapshots.store(0, Ordering::SeqCst);
        self.deltas.store(0, Ordering::SeqCst);
        *self.all_acked_at.lock().unwrap() = None;
        self.acks.lock().unwrap().clear();
        self.target.store(version, Ordering::SeqCst);
    }

    pub(crate) fn acked(&self, version: u64, snapshot: bool) {
        if version != self.target.load(Ordering::SeqCst) {
            return;
        }
        self.acks.lock().unwrap().push(Instant::now());
        if snapshot {
            self.snapshots.fetch_add(1, Ordering::Relaxed);
        } else {
            self.deltas.fetch_add(1, Ordering::Relaxed);
        }
        if self.acked.fetch_add(1, Ordering::SeqCst) + 1 == self.streams.load(Ordering::SeqCst) {
            *self.all_acked_at.lock().unwrap() = Some(Instant::now());
            self.all_acked.notify_one();
        }
    }

    pub(crate) fn failed(&self, error: String) {
        self.failures.fetch_add(1, Ordering::SeqCst);
        let acked = self.acked.load(Ordering::SeqCst);
        let version = self.target.load(Ordering::SeqCst);
        self.first_failure
            .lock()
            .unwrap()
            .get_or_insert_with(|| format!("{error} (when {acked} streams had acked version {version})"));
    }

    pub(crate) fn check(&self) -> anyhow::Result<()> {
        let failures = self.failures.load(Ordering::SeqCst);
        if failures > 0 {
            bail!(
                "{failures} simulated dataplanes failed; first: {}",
                self.first_failure.lock().unwrap().as_deref().unwrap_or("?")
            );
        }
        Ok(())
    }
}

/// One simulated dataplane: its own connection and stream, a route map it
/// keeps in step with the pushes, an Ack for each.
pub(crate) async fn dataplane(
    address: String,
    node_id: String,
    abi: pb::BytecodeAbi,
    tally: Arc<Tally>,
    connects: Arc<Semaphore>,
    keepalive: bool,
) -> anyhow::Result<()> {
    let permit = connects.acquire_owned().await?;
    // Endpoint settings of the real dataplane (dataplane/src/discovery/mod.rs).
    let mut endpoint = Endpoint::from_shared(address)?.connect_timeout(Duration::from_secs(5));
    if keepalive {
        endpoint = endpoint
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
    }
    let channel = endpoint.connect().await?;
    drop(permit);
    let mut client = ConfigDiscoveryClient::new(channel).max_decoding_message_size(usize::MAX);
    let (replies, outbound) = mpsc::channel(4);
    replies
        .send(pb::DataplaneMessage {
            kind: Some(Reply::Hello(pb::Hello {
                node_id,
                abi: Some(abi),
                ..Default::default()
            })),
        })
        .await?;
    let mut inbound = client.stream(ReceiverStream::new(outbound)).await?.into_inner();
    let mut routes: BTreeMap<RouteKey, pb::Route> = BTreeMap::new();
    let mut applied = 0;
    while let Some(message) = inbound.message().await? {
        let (version, content_hash, snapshot) = match message.kind {
            Some(Push::Snapshot(snapshot)) => {
                routes = snapshot.routes.into_iter().map(|r| (RouteKey::of(&r), r)).collect();
                (snapshot.version, snapshot.content_hash, true)
            }
            Some(Push::Delta(delta)) => {
                ensure!(
                    delta.base_version == applied,
                    "delta {} is on top of {}, this dataplane has {applied}",
                    delta.version,
                    delta.base_version
                );
                for key in delta.removed {
                    routes.remove(&RouteKey::from(&key));
                }
                for route in delta.upserted {
                    routes.insert(RouteKey::of(&route), route);
                }
                (delta.version, delta.content_hash, false)
            }
            None => bail!("a push of an unknown kind"),
        };
        applied = version;
        replies
            .send(pb::DataplaneMessage {
                kind: Some(Reply::Ack(pb::Ack {
                    version,
                    content_hash,
                    route_errors: Vec::new(),
                })),
            })
            .await?;
        tally.acked(version, snapshot);
    }
    Ok(())
}
