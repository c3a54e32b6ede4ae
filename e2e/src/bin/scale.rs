//! Benchmark of the controller's config fan-out: how long the real
//! `ConfigDiscovery` service takes to bring N dataplane streams to a new
//! version, as a full snapshot and as a one-route delta.
//!
//! Everything runs in this process on loopback: the service on one tokio
//! runtime (threads `ctl-worker`), N simulated dataplanes on another (threads
//! `dp-worker`), each on its own HTTP/2 connection. A simulated dataplane does
//! what the real one does on the wire (Hello, then decode each push, apply a
//! delta to its own route map, Ack with the pushed content hash) but loads no
//! Lua and does not re-hash, so the numbers are the controller's and the
//! transport's, with the dataplanes' decoding on the same CPUs.
//!
//! `cargo run --release -p moongate-e2e --bin scale -- --streams 1000 --routes 3000`

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use moongate_controller::discovery::Discovery;
use moongate_controller::fleet::Fleet;
use moongate_controller::published::Published;
use moongate_proto::v1 as pb;
use moongate_proto::v1::config_discovery_client::ConfigDiscoveryClient;
use moongate_proto::v1::config_discovery_server::ConfigDiscoveryServer;
use moongate_proto::v1::controller_message::Kind as Push;
use moongate_proto::v1::dataplane_message::Kind as Reply;
use moongate_route::RouteKey;
use moongate_route::compile::{Compiler, compile_route};
use moongate_route::source::parse_routes;
use prost::Message;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// No single wait may take longer; keeps a broken run from hanging.
const PHASE_TIMEOUT: Duration = Duration::from_secs(90);
/// Connections opened at once, so the listen backlog never overflows.
const CONNECTS_IN_PARALLEL: usize = 64;
/// Same as the real controller (controller/src/run.rs).
const MAX_INBOUND_MESSAGE: usize = 4 << 20;

#[derive(Parser)]
#[command(about = "Controller config fan-out benchmark (in-process, loopback only)")]
struct Args {
    /// Simulated dataplane streams, each on its own connection.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Routes in the published config.
    #[arg(long, default_value_t = 3000)]
    routes: usize,
    /// Rounds of the one-route delta measurement.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Rounds of the full-snapshot measurement. Each reconnects every stream
    /// (a new stream always starts with a snapshot) and moves streams x
    /// snapshot bytes, tens of seconds at 1000 x 3000 routes on 2 CPUs.
    #[arg(long, default_value_t = 1)]
    snapshot_rounds: usize,
    /// Which sides run the production HTTP/2 keepalive (ping every 10 s, drop
    /// the connection after 5 s without an answer). Off by default: the
    /// simulated dataplanes share the controller's CPUs, and in a snapshot
    /// storm their answers come late in a way a real dataplane's would not.
    #[arg(long, value_enum, default_value_t = Keepalive::None)]
    keepalive: Keepalive,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Keepalive {
    None,
    /// The controller's (controller/src/run.rs).
    Server,
    /// The dataplanes' (dataplane/src/discovery/mod.rs).
    Dataplane,
    /// Both, as in production.
    Both,
}

impl Keepalive {
    fn server(self) -> bool {
        matches!(self, Keepalive::Server | Keepalive::Both)
    }

    fn dataplane(self) -> bool {
        matches!(self, Keepalive::Dataplane | Keepalive::Both)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.streams > 0 && args.routes > 0 && args.rounds > 0 && args.snapshot_rounds > 0,
        "--streams, --routes, --rounds and --snapshot-rounds must be positive"
    );
    let started = Instant::now();
    let machine = Machine::read();
    println!(
        "# Moongate controller fan-out: {} streams, {} routes, {} snapshot + {} delta rounds",
        args.streams, args.routes, args.snapshot_rounds, args.rounds
    );
    println!();
    println!("machine: {machine}");
    match raise_fd_limit(args.streams)? {
        FdLimit::Enough(soft) => println!("fd limit: soft {soft}, enough for 2x{} loopback sockets", args.streams),
        FdLimit::Raised(old, new) => println!("fd limit: raised RLIMIT_NOFILE soft {old} -> {new} with setrlimit"),
    }

    // 1. Realistic compiled routes, and each delta round's changed route,
    // compiled up front: the Compiler holds a LuaJIT state and stays on this thread.
    let compiler = Compiler::new();
    let abi = Compiler::abi().clone();
    let t = Instant::now();
    let routes: BTreeMap<RouteKey, Arc<pb::Route>> = (0..args.routes)
        .map(|i| compile(&compiler, i, 1).map(|r| (RouteKey::of(&r), Arc::new(r))))
        .collect::<anyhow::Result<_>>()?;
    let changes: Vec<Arc<pb::Route>> = (0..args.rounds)
        .map(|r| compile(&compiler, changed_index(r, args.routes), r as i64 + 2).map(Arc::new))
        .collect::<anyhow::Result<_>>()?;
    let compile_time = t.elapsed();
    let chunks: usize = routes
        .values()
        .flat_map(|r| &r.locations)
        .map(|l| usize::from(l.access.is_some()) + usize::from(l.content.is_some()))
        .sum();
    let bytecode: usize = routes
        .values()
        .flat_map(|r| &r.locations)
        .flat_map(|l| [&l.access, &l.content])
        .flatten()
        .map(|c| c.bytecode.len())
        .sum();
    let first = Arc::new(Published::new(1, routes.clone()));
    let snapshot_bytes = push_len(Push::Snapshot(first.snapshot()));
    println!(
        "routes: {} compiled in {:.2} s ({chunks} chunks, {} of bytecode); snapshot message {} ({snapshot_bytes} bytes, prost encoded_len)",
        routes.len(),
        compile_time.as_secs_f64(),
        bytes(bytecode),
        bytes(snapshot_bytes),
    );

    // 2. The service, on a runtime of its own.
    let controller = tokio::runtime::Builder::new_multi_thread()
        .thread_name("ctl-worker")
        .enable_all()
        .build()?;
    let fleet_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("dp-worker")
        .enable_all()
        .build()?;
    let listener = controller.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let address = format!("http://{}", listener.local_addr()?);
    let (latest, receiver) = watch::channel(None);
    let fleet = Arc::new(Fleet::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let keepalive = args.keepalive.server().then_some(Duration::from_secs(10));
    println!(
        "HTTP/2 keepalive (10 s ping, 5 s timeout): controller {}, dataplanes {} (--keepalive both is production)",
        if args.keepalive.server() { "on" } else { "off" },
        if args.keepalive.dataplane() { "on" } else { "off" },
    );
    let server = controller.spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(keepalive)
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .add_service(
                ConfigDiscoveryServer::new(Discovery::new(receiver, fleet.clone(), abi.clone()))
                    .max_decoding_message_size(MAX_INBOUND_MESSAGE),
            )
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );

    // How late each runtime runs a 20 ms timer: its scheduling delay, which is
    // what decides whether an HTTP/2 keepalive ping is answered in time.
    let lag = Lag::default();
    controller.spawn(probe(lag.controller.clone()));
    fleet_rt.spawn(probe(lag.dataplanes.clone()));

    // 3 and 4. The streams and the measurements.
    let bench = Bench {
        lag,
        args: &args,
        address,
        abi,
        latest,
        fleet,
        tally: Arc::new(Tally::default()),
        routes,
        changes,
    };
    let outcome = fleet_rt.block_on(bench.run());

    let _ = stop.send(());
    fleet_rt.shutdown_timeout(Duration::from_secs(5));
    let _ = controller.block_on(async { tokio::time::timeout(Duration::from_secs(5), server).await });
    controller.shutdown_timeout(Duration::from_secs(5));
    let results = outcome?;

    results.print(&args, snapshot_bytes);
    println!();
    println!(
        "peak RSS {} (controller + all simulated dataplanes); total run time {:.1} s",
        machine_peak_rss().map_or_else(|| "unknown".into(), bytes),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Route `i` at `revision`: a distinct hostname, an authenticated JSON API
/// location (access + content handler) and an exact health location.
fn route_yaml(i: usize, revision: i64) -> String {
    let ns = format!("team-{}", i % 20);
    let name = format!("app-{i:05}");
    format!(
        r#"apiVersion: moongate.dev/v1alpha1
kind: LuaRoute
metadata: {{name: {name}, namespace: {ns}, generation: {revision}}}
spec:
  hostnames: [{name}.{ns}.example.com]
  locations:
    - path: /api/
      access: |
        local token = ngx.var.http_authorization
        if token ~= "Bearer {name}-secret" then
          ngx.header["WWW-Authenticate"] = "Bearer"
          return ngx.exit(ngx.HTTP_UNAUTHORIZED)
        end
      content: |
        ngx.header["Content-Type"] = "application/json"
        ngx.header["X-Route"] = "{ns}/{name}"
        ngx.say('{{"app":"{name}","revision":{revision},"uri":"', ngx.var.uri, '"}}')
    - path: /healthz
      match: Exact
      content: |
        ngx.say("ok {name} revision {revision}")
"#
    )
}

fn compile(compiler: &Compiler, i: usize, revision: i64) -> anyhow::Result<pb::Route> {
    let yaml = route_yaml(i, revision);
    let parsed = parse_routes(&yaml, None)
        .map_err(|e| anyhow::anyhow!("route {i}: {e}"))?
        .pop()
        .context("no route parsed")?;
    compile_route(compiler, &parsed, i as i64).map_err(|problems| anyhow::anyhow!("route {i}: {problems:?}"))
}

/// The route delta round `round` changes: spread over the map.
fn changed_index(round: usize, routes: usize) -> usize {
    (round * 7919 + routes / 2) % routes
}

fn push_len(push: Push) -> usize {
    pb::ControllerMessage { kind: Some(push) }.encoded_len()
}

/// What the simulated dataplanes report, for the version being measured.
#[derive(Default)]
struct Tally {
    /// The version whose acks are counted.
    target: AtomicU64,
    acked: AtomicUsize,
    snapshots: AtomicUsize,
    deltas: AtomicUsize,
    /// When each stream sent its Ack for `target`.
    acks: Mutex<Vec<Instant>>,
    /// When the last stream sent its Ack for `target`.
    all_acked_at: Mutex<Option<Instant>>,
    all_acked: Notify,
    streams: AtomicUsize,
    failures: AtomicUsize,
    first_failure: Mutex<Option<String>>,
}

impl Tally {
    fn arm(&self, version: u64, streams: usize) {
        self.streams.store(streams, Ordering::SeqCst);
        self.acked.store(0, Ordering::SeqCst);
        self.snapshots.store(0, Ordering::SeqCst);
        self.deltas.store(0, Ordering::SeqCst);
        *self.all_acked_at.lock().unwrap() = None;
        self.acks.lock().unwrap().clear();
        self.target.store(version, Ordering::SeqCst);
    }

    fn acked(&self, version: u64, snapshot: bool) {
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

    fn failed(&self, error: String) {
        self.failures.fetch_add(1, Ordering::SeqCst);
        let acked = self.acked.load(Ordering::SeqCst);
        let version = self.target.load(Ordering::SeqCst);
        self.first_failure
            .lock()
            .unwrap()
            .get_or_insert_with(|| format!("{error} (when {acked} streams had acked version {version})"));
    }

    fn check(&self) -> anyhow::Result<()> {
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
async fn dataplane(
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

struct Bench<'a> {
    lag: Lag,
    args: &'a Args,
    address: String,
    abi: pb::BytecodeAbi,
    latest: watch::Sender<Option<Arc<Published>>>,
    fleet: Arc<Fleet>,
    tally: Arc<Tally>,
    routes: BTreeMap<RouteKey, Arc<pb::Route>>,
    changes: Vec<Arc<pb::Route>>,
}

/// One timed round.
struct Round {
    /// Until the last simulated dataplane sent its Ack.
    client: Duration,
    /// Until the controller's fleet shows every dataplane on the version.
    fleet: Duration,
    /// Each stream's Ack, from the publish, sorted.
    acks: Vec<Duration>,
    controller_cpu: f64,
    dataplane_cpu: f64,
    /// The worst scheduling delay of each runtime during the round.
    controller_lag: Duration,
    dataplane_lag: Duration,
}

/// The worst timer lateness seen by each runtime's probe, in microseconds.
#[derive(Default)]
struct Lag {
    controller: Arc<AtomicU64>,
    dataplanes: Arc<AtomicU64>,
}

impl Lag {
    fn reset(&self) {
        self.controller.store(0, Ordering::SeqCst);
        self.dataplanes.store(0, Ordering::SeqCst);
    }
}

async fn probe(worst: Arc<AtomicU64>) {
    const TICK: Duration = Duration::from_millis(20);
    loop {
        let t = Instant::now();
        tokio::time::sleep(TICK).await;
        let late = t.elapsed().saturating_sub(TICK);
        worst.fetch_max(late.as_micros() as u64, Ordering::SeqCst);
    }
}

struct Results {
    connect: Vec<Duration>,
    snapshot: Vec<Round>,
    delta: Vec<Round>,
    delta_bytes: usize,
    publish: Duration,
}

impl Bench<'_> {
    async fn run(self) -> anyhow::Result<Results> {
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

impl Results {
    fn print(&self, args: &Args, snapshot_bytes: usize) {
        let n = args.streams;
        println!();
        println!(
            "| measurement ({n} streams, {} routes) | rounds | median | max | last client Ack sent (median) | controller CPU (median) | dataplanes CPU (median) | worst scheduling delay, controller / dataplanes runtime | pushed per round |",
            args.routes
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let connect = stats(&self.connect);
        println!(
            "| connect {n} streams + Hello (until fleet.len() == {n}) | {} | {} | {} | | | | | |",
            self.connect.len(),
            ms(connect.0),
            ms(connect.1)
        );
        for (name, rounds, size) in [
            (
                "full snapshot to all (until all acked, per fleet)",
                &self.snapshot,
                snapshot_bytes,
            ),
            (
                "one-route delta to all (until all acked, per fleet)",
                &self.delta,
                self.delta_bytes,
            ),
        ] {
            let fleet = stats(&rounds.iter().map(|r| r.fleet).collect::<Vec<_>>());
            let client = stats(&rounds.iter().map(|r| r.client).collect::<Vec<_>>());
            let ctl = median_f64(rounds.iter().map(|r| r.controller_cpu).collect());
            let dp = median_f64(rounds.iter().map(|r| r.dataplane_cpu).collect());
            let ctl_lag = rounds.iter().map(|r| r.controller_lag).max().unwrap_or_default();
            let dp_lag = rounds.iter().map(|r| r.dataplane_lag).max().unwrap_or_default();
            println!(
                "| {name} | {} | {} | {} | {} | {:.2} s | {:.2} s | {} / {} | {} x {n} = {} |",
                rounds.len(),
                ms(fleet.0),
                ms(fleet.1),
                ms(client.0),
                ctl,
                dp,
                ms(ctl_lag),
                ms(dp_lag),
                bytes(size),
                bytes(size * n)
            );
        }
        println!();
        println!(
            "Timed from latest.send_replace(v) until fleet.dataplanes() shows all {n} on v. Each snapshot round \
             reconnects every stream (a new stream starts with a snapshot) and publishes only once all have said Hello; \
             delta rounds change one route and run on the last snapshot round's streams."
        );
        println!();
        println!(
            "Per round: all acked (fleet-confirmed) [when the 1st / 50% / 90% / 99% of streams had sent their Ack]:"
        );
        for (name, rounds) in [("snapshot", &self.snapshot), ("delta", &self.delta)] {
            let list: Vec<String> = rounds
                .iter()
                .map(|r| {
                    let at = |q: f64| ms(r.acks[((r.acks.len() - 1) as f64 * q) as usize]);
                    format!(
                        "{} [{} / {} / {} / {}]",
                        ms(r.fleet),
                        at(0.0),
                        at(0.5),
                        at(0.9),
                        at(0.99)
                    )
                })
                .collect();
            println!("- {name}: {}", list.join("; "));
        }
        println!();
        println!(
            "Published::new (once per version: hashes every route; not in the times above): {}",
            us(self.publish)
        );
        println!();
        let worst = stats(&self.delta.iter().map(|r| r.fleet).collect::<Vec<_>>()).1;
        let scope = if n == 1000 {
            String::new()
        } else {
            format!(" (measured with {n} streams, not 1000)")
        };
        let verdict = if worst < Duration::from_secs(1) {
            "MEETS"
        } else {
            "MISSES"
        };
        println!(
            "Verdict: {verdict} the goal \"1000-stream delta under 1 s\"{scope}: one-route delta to all {n} streams took {} median, {} worst of {} rounds ({} routes).",
            ms(stats(&self.delta.iter().map(|r| r.fleet).collect::<Vec<_>>()).0),
            ms(worst),
            self.delta.len(),
            args.routes
        );
    }
}

/// Median and max.
fn stats(values: &[Duration]) -> (Duration, Duration) {
    let mut sorted = values.to_vec();
    sorted.sort();
    let median = match sorted.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    };
    (median, sorted.last().copied().unwrap_or_default())
}

fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// CPU time of this process's threads, by runtime (thread name).
struct Cpu {
    controller: f64,
    dataplanes: f64,
}

impl Cpu {
    fn read() -> Cpu {
        // /proc/<pid>/task/<tid>/stat counts in USER_HZ, which is 100 on Linux.
        const TICK: f64 = 0.01;
        let mut cpu = Cpu {
            controller: 0.0,
            dataplanes: 0.0,
        };
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return cpu;
        };
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = &stat[open + 1..close];
            // After the name: state is field 3; utime and stime are fields 14 and 15.
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let ticks: u64 = fields
                .get(11..13)
                .into_iter()
                .flatten()
                .filter_map(|f| f.parse::<u64>().ok())
                .sum();
            let seconds = ticks as f64 * TICK;
            if name.starts_with("ctl-worker") {
                cpu.controller += seconds;
            } else if name.starts_with("dp-worker") {
                cpu.dataplanes += seconds;
            }
        }
        cpu
    }

    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            controller: self.controller - before.controller,
            dataplanes: self.dataplanes - before.dataplanes,
        }
    }
}

struct Machine {
    cpus: usize,
    kernel: String,
    model: String,
    memory: String,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown CPU".to_string(), |(_, m)| m.trim().to_string());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| kib_field(&m, "MemTotal:"))
            .map_or_else(|| "unknown".to_string(), bytes);
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".to_string(), |k| k.trim().to_string()),
            model,
            memory,
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "nproc {}, Linux {} ({}, {} RAM); controller and simulated dataplanes share these CPUs",
            self.cpus, self.kernel, self.model, self.memory
        )
    }
}

fn kib_field(text: &str, field: &str) -> Option<usize> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: usize = line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

fn machine_peak_rss() -> Option<usize> {
    kib_field(&std::fs::read_to_string("/proc/self/status").ok()?, "VmHWM:")
}

enum FdLimit {
    Enough(libc::rlim_t),
    Raised(libc::rlim_t, libc::rlim_t),
}

/// Both ends of every stream live in this process: two sockets per stream.
#[allow(unsafe_code)]
fn raise_fd_limit(streams: usize) -> anyhow::Result<FdLimit> {
    let needed = (2 * streams + 256) as libc::rlim_t;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("getrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error());
    }
    if limit.rlim_cur >= needed {
        return Ok(FdLimit::Enough(limit.rlim_cur));
    }
    ensure!(
        limit.rlim_max >= needed,
        "{streams} streams need {needed} file descriptors; the hard limit is {}",
        limit.rlim_max
    );
    let raised = libc::rlimit {
        rlim_cur: needed,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        bail!("setrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error());
    }
    Ok(FdLimit::Raised(limit.rlim_cur, needed))
}
