//! The measurement rounds: connect the streams, publish a version, time until
//! every stream acknowledged it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use moongate_controller::fleet::Fleet;
use moongate_controller::published::Published;
use moongate_proto::v1 as pb;
use moongate_proto::v1::controller_message::Kind as Push;
use moongate_route::RouteKey;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::Args;
use crate::dataplane::{Tally, dataplane};
use crate::machine::Cpu;
use crate::report::ms;
use crate::routes::push_len;

/// No single wait may take longer; keeps a broken run from hanging.
const PHASE_TIMEOUT: Duration = Duration::from_secs(90);
/// Connections opened at once, so the listen backlog never overflows.
const CONNECTS_IN_PARALLEL: usize = 64;

/// What every measurement round shares: the service's address and watch, the
/// fleet it reports to, and the routes to publish.
pub(crate) struct Bench<'a> {
    pub(crate) lag: Lag,
    pub(crate) args: &'a Args,
    pub(crate) address: String,
    pub(crate) abi: pb::BytecodeAbi,
    pub(crate) latest: watch::Sender<Option<Arc<Published>>>,
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) tally: Arc<Tally>,
    pub(crate) routes: BTreeMap<RouteKey, Arc<pb::Route>>,
    pub(crate) changes: Vec<Arc<pb::Route>>,
}

/// One timed round.
pub(crate) struct Round {
    /// Until the last simulated dataplane sent its Ack.
    pub(crate) client: Duration,
    /// Until the controller's fleet shows every dataplane on the version.
    pub(crate) fleet: Duration,
    /// Each stream's Ack, from the publish, sorted.
    pub(crate) acks: Vec<Duration>,
    pub(crate) controller_cpu: f64,
    pub(crate) dataplane_cpu: f64,
    /// The worst scheduling delay of each runtime during the round.
    pub(crate) controller_lag: Duration,
    pub(crate) dataplane_lag: Duration,
}

/// The worst timer lateness seen by each runtime's probe, in microseconds.
#[derive(Default)]
pub(crate) struct Lag {
    pub(crate) controller: Arc<AtomicU64>,
    pub(crate) dataplanes: Arc<AtomicU64>,
}

impl Lag {
    pub(crate) fn reset(&self) {
        self.controller.store(0, Ordering::SeqCst);
        self.dataplanes.store(0, Ordering::SeqCst);
    }
}

pub(crate) async fn probe(worst: Arc<AtomicU64>) {
    const TICK: Duration = Duration::from_millis(20);
    loop {
        let t = Instant::now();
        tokio::time::sleep(TICK).await;
        let late = t.elapsed().saturating_sub(TICK);
        worst.fetch_max(late.as_micros() as u64, Ordering::SeqCst);
    }
}

/// The rounds of a whole run, printed by `report`.
pub(crate) struct Results {
    pub(crate) connect: Vec<Duration>,
    pub(crate) snapshot: Vec<Round>,
    pub(crate) delta: Vec<Round>,
    pub(crate) delta_bytes: usize,
    pub(crate) publish: Duration,
}

impl Bench<'_> {
    pub(crate) async fn run(self) -> anyhow::Result<Results> {
        let n = self.args.streams;
        let mut version = 1;
        let mut connect = Vec::new();
        let mut snapshot = Vec::new();
        let mut clients: Vec<JoinHandle<()>> = Vec::new();
        for round in 0..self.args.snapshot_rounds {
            // A new stream always starts with a full snapshot, so every
            // snapshot round reconnects all streams, with nothing published
            // until all of them have said Hello.
            self.latest.send_replace(None);
            disconnect(&mut clients);
            self.wait_fleet(0).await?;
            let t = Instant::now();
            eprintln!("[scale] snapshot round {}: connecting {n} streams", round + 1);
            clients = self.connect(round);
            self.wait_fleet(n).await?;
            connect.push(t.elapsed());
            version += 1;
            let published = Arc::new(Published::new(version, self.routes.clone()));
            let measured = self.measure(published).await?;
            eprintln!(
                "[scale] snapshot round {}: all acked in {}",
                round + 1,
                ms(measured.fleet)
            );
            snapshot.push(measured);
            ensure!(
                self.tally.snapshots.load(Ordering::SeqCst) == n,
                "round {round}: not every stream got a snapshot"
            );
        }

        eprintln!("[scale] delta rounds");
        let mut delta = Vec::new();
        let mut routes = self.routes.clone();
        let mut delta_bytes = 0;
        let mut publish = Duration::ZERO;
        for change in &self.changes {
            let base = self.latest.borrow().clone().context("nothing published")?;
            routes.insert(RouteKey::of(change), change.clone());
            version += 1;
            // What the reconciler does once per version (content hash over
            // every route), kept out of the fan-out time.
            let t = Instant::now();
            let published = Arc::new(Published::new(version, routes.clone()));
            publish = publish.max(t.elapsed());
            let diff = published.delta_from(&base);
            ensure!(
                diff.upserted.len() == 1 && diff.removed.is_empty(),
                "a delta round must change one route"
            );
            delta_bytes = push_len(Push::Delta(diff.as_ref().clone()));
            let measured = self.measure(published).await?;
            eprintln!(
                "[scale] delta round {}: all acked in {}",
                delta.len() + 1,
                ms(measured.fleet)
            );
            delta.push(measured);
            ensure!(
                self.tally.deltas.load(Ordering::SeqCst) == n,
                "not every stream got a delta"
            );
        }
        disconnect(&mut clients);
        Ok(Results {
            connect,
            snapshot,
            delta,
            delta_bytes,
            publish,
        })
    }

    fn connect(&self, round: usize) -> Vec<JoinHandle<()>> {
        let connects = Arc::new(Semaphore::new(CONNECTS_IN_PARALLEL));
        (0..self.args.streams)
            .map(|i| {
                let (address, abi, tally, connects) = (
                    self.address.clone(),
                    self.abi.clone(),
                    self.tally.clone(),
                    connects.clone(),
                );
                let keepalive = self.args.keepalive.dataplane();
                tokio::spawn(async move {
                    let node = format!("bench-dp-{round}-{i}");
                    if let Err(e) = dataplane(address, node.clone(), abi, tally.clone(), connects, keepalive).await {
                        tally.failed(format!("{node}: {e:#}"));
                    }
                })
            })
            .collect()
    }

    async fn wait_fleet(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + PHASE_TIMEOUT;
        while self.fleet.len() != n {
            self.tally.check()?;
            ensure!(
                Instant::now() < deadline,
                "the fleet has {} dataplanes after {PHASE_TIMEOUT:?}, expected {n}",
                self.fleet.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Publishes `published` and times until every stream acknowledged it.
    async fn measure(&self, published: Arc<Published>) -> anyhow::Result<Round> {
        let n = self.args.streams;
        let version = published.version;
        let mut changes = self.fleet.subscribe();
        self.tally.arm(version, n);
        let cpu = Cpu::read();
        self.lag.reset();
        let t0 = Instant::now();
        self.latest.send_replace(Some(published));

        let deadline = t0 + PHASE_TIMEOUT;
        let notified = self.tally.all_acked.notified();
        tokio::pin!(notified);
        while self.tally.acked.load(Ordering::SeqCst) < n {
            self.tally.check()?;
            ensure!(
                Instant::now() < deadline,
                "version {version}: {} of {n} streams acked within {PHASE_TIMEOUT:?}",
                self.tally.acked.load(Ordering::SeqCst)
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), notified.as_mut()).await;
            notified.set(self.tally.all_acked.notified());
        }
        let client = self
            .tally
            .all_acked_at
            .lock()
            .unwrap()
            .context("no time for the last ack")?
            - t0;

        // The controller has seen every Ack once each session recorded it.
        loop {
            let dataplanes = self.fleet.dataplanes();
            if dataplanes.len() == n
                && dataplanes
                    .iter()
                    .all(|d| d.applied.as_ref().is_some_and(|p| p.version == version))
            {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "version {version}: the fleet never showed every ack"
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
        }
        let fleet = t0.elapsed();
        let used = Cpu::read().since(&cpu);
        let mut acks: Vec<Duration> = self.tally.acks.lock().unwrap().iter().map(|&at| at - t0).collect();
        acks.sort();
        Ok(Round {
            client,
            fleet,
            acks,
            controller_cpu: used.controller,
            dataplane_cpu: used.dataplanes,
            controller_lag: Duration::from_micros(self.lag.controller.load(Ordering::SeqCst)),
            dataplane_lag: Duration::from_micros(self.lag.dataplanes.load(Ordering::SeqCst)),
        })
    }
}

fn disconnect(clients: &mut Vec<JoinHandle<()>>) {
    for client in clients.drain(..) {
        client.abort();
    }
}
