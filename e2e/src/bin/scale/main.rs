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

mod bench;
mod dataplane;
mod machine;
mod report;
mod routes;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use clap::Parser;
use moongate_controller::discovery::Discovery;
use moongate_controller::fleet::Fleet;
use moongate_controller::published::Published;
use moongate_proto::v1 as pb;
use moongate_proto::v1::config_discovery_server::ConfigDiscoveryServer;
use moongate_proto::v1::controller_message::Kind as Push;
use moongate_route::RouteKey;
use moongate_route::compile::Compiler;
use tokio::sync::{oneshot, watch};

use crate::bench::{Bench, Lag, probe};
use crate::dataplane::Tally;
use crate::machine::{FdLimit, Machine, machine_peak_rss, raise_fd_limit};
use crate::report::bytes;
use crate::routes::{changed_index, compile, push_len};

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
