use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mimalloc::MiMalloc;
use moongate_dataplane::discovery::store::SnapshotStore;
use moongate_dataplane::discovery::{Client, ClientTls, ControllerSettings};
use moongate_dataplane::lua::budget::{HOOK_INTERVAL, Limits};
use moongate_dataplane::proxy::egress::EgressPolicy;
use moongate_dataplane::shdict::{DictLimits, DictStore};
use moongate_dataplane::{admin, http::server, standalone, worker, worker::Settings};

/// A request allocates a dozen small objects (hyper's head and buffers, the
/// request state, Lua output); mimalloc's thread-local free lists make those
/// several times cheaper than glibc malloc (measured: ~12% of instructions per
/// request went to malloc/free).
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// The Moongate dataplane: serves HTTP with OpenResty-style Lua handlers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// LuaRoute YAML: a file or a directory of `*.yaml` files (standalone mode).
    #[arg(
        long,
        env = "MOONGATE_ROUTES",
        required_unless_present = "controller",
        conflicts_with = "controller"
    )]
    routes: Option<PathBuf>,
    /// Controller addresses (`https://host:port`), comma-separated, tried in
    /// turn: the config comes from the controller instead of files.
    #[arg(long, env = "MOONGATE_CONTROLLER", value_delimiter = ',')]
    controller: Vec<String>,
    /// CA certificate (PEM) that signed the controller's certificate.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    controller_ca: Option<PathBuf>,
    /// This dataplane's client certificate (PEM) for mutual TLS.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// The name the controller's certificate must carry, if not the address's host.
    #[arg(long)]
    controller_server_name: Option<String>,
    /// Talk to the controller in plaintext (`http://`), unauthenticated.
    #[arg(long, conflicts_with = "controller_ca")]
    insecure: bool,
    /// Unique id of this dataplane. Default: $POD_UID, else hostname-pid.
    #[arg(long, env = "POD_UID")]
    node_id: Option<String>,
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod_name: String,
    #[arg(long, env = "POD_NAMESPACE", default_value = "")]
    pod_namespace: String,
    /// Validate and compile the routes, print any errors, and exit (like `nginx -t`).
    #[arg(long)]
    check: bool,
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address for /healthz, /readyz and /config.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Worker threads, each with its own Lua VM. Default: one per core.
    #[arg(long)]
    workers: Option<usize>,
    /// Largest request body (nginx `client_max_body_size`) when a route sets none.
    #[arg(long, default_value = "1Mi", value_parser = parse_size)]
    max_body_size: u64,
    /// Largest request head; larger gets 431.
    #[arg(long, default_value = "16Ki", value_parser = parse_size)]
    max_header_size: u64,
    /// Lua VM instructions (and their equivalent in C work) one handler may
    /// run before it is aborted with a 500. A ceiling: a route's
    /// `limits.instructionBudget` can only lower it.
    #[arg(long, default_value_t = worker::DEFAULT_INSTRUCTION_BUDGET)]
    instruction_budget: u64,
    /// Instructions Lua runs before it is preempted to let other requests on
    /// the worker run (where it can yield).
    #[arg(long, default_value_t = worker::DEFAULT_SLICE)]
    preemption_slice: u64,
    /// The most instructions Lua may run where it cannot be preempted (in a
    /// filter or log handler, or a callback from C such as a table.sort
    /// comparator) before it is aborted.
    #[arg(long, default_value_t = worker::DEFAULT_UNPREEMPTIBLE)]
    max_unpreemptible: u64,
    /// Memory one namespace's Lua may hold on one worker (its tenant VM).
    #[arg(long, default_value = "128Mi", value_parser = parse_size)]
    lua_memory_limit: u64,
    /// The largest shared dict a route may declare.
    #[arg(long, default_value = "1Gi", value_parser = parse_size)]
    max_shared_dict_size: u64,
    /// The most shared dict capacity one namespace may declare in all.
    #[arg(long, default_value = "4Gi", value_parser = parse_size)]
    max_namespace_shared_dicts: u64,
    /// Where `persistence: Durable` shared dicts are stored (one redb file).
    #[arg(long, env = "MOONGATE_DATA_DIR", default_value = "/var/lib/moongate")]
    data_dir: PathBuf,
    /// Group-commit window of durable dicts, in milliseconds: a crash loses at
    /// most the writes of the last window (plus the commit in progress).
    #[arg(long, default_value_t = 10)]
    commit_window_ms: u64,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, default_value_t = 10.0)]
    shutdown_timeout: f64,
    /// Where proxying may connect: `CIDR` or `CIDR:PORT` (`[v6CIDR]:PORT`),
    /// repeatable or comma-separated. Default: any address except loopback,
    /// link-local (cloud metadata, 169.254.169.254), unspecified and
    /// multicast; a rule at least as specific as one of those ranges allows
    /// it (`127.0.0.1/32`). The dataplane's own listen and admin ports are
    /// always refused.
    #[arg(long, env = "MOONGATE_EGRESS_ALLOW", value_delimiter = ',')]
    egress_allow: Vec<moongate_dataplane::proxy::egress::AllowRule>,
    /// Directories whose unix sockets Lua cosockets may connect to
    /// (`sock:connect("unix:/run/redis/redis.sock")`), repeatable or
    /// comma-separated. Default: none, since a unix socket is the host's
    /// (a container runtime's, the kubelet's).
    #[arg(long, env = "MOONGATE_EGRESS_ALLOW_UNIX", value_delimiter = ',')]
    egress_allow_unix: Vec<PathBuf>,
    /// Cosocket connections (TCP, unix and UDP; in use, connecting or idle
    /// in a keep-alive pool) one tenant namespace may hold open per worker.
    /// Past it `connect`/`setpeername` answer `nil, err`, so that no tenant
    /// can take the worker's file descriptors from the others.
    #[arg(long, env = "MOONGATE_COSOCKET_MAX_OPEN", default_value_t = moongate_dataplane::lua::api::socket::DEFAULT_MAX_OPEN)]
    cosocket_max_open: usize,
    /// Let routes proxy to (and open cosockets to) this dataplane's own
    /// *listen* port; the admin port stays refused. Off by default. Meant for
    /// standalone tests (the conformance cases proxy to their own server) and
    /// single-tenant setups: a route that connects to its own gateway can
    /// loop. Loopback still needs an `--egress-allow` rule (`127.0.0.1/32`).
    #[arg(long, env = "MOONGATE_EGRESS_ALLOW_SELF")]
    egress_allow_self: bool,
}

fn controller_settings(cli: &Cli) -> anyhow::Result<ControllerSettings> {
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path).map_err(|e| anyhow::anyhow!("reading the {what} {}: {e}", path.display()))
    };
    let tls = match (&cli.controller_ca, &cli.tls_cert, &cli.tls_key) {
        _ if cli.insecure => None,
        (Some(ca), Some(cert), Some(key)) => Some(ClientTls {
            ca_pem: read(ca, "controller CA")?,
            cert_pem: read(cert, "client certificate")?,
            key_pem: read(key, "client key")?,
            server_name: cli.controller_server_name.clone(),
        }),
        _ => anyhow::bail!(
            "the config stream needs mutual TLS: pass --controller-ca, --tls-cert and --tls-key, \
             or --insecure for plaintext"
        ),
    };
    let node_id = cli.node_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    Ok(ControllerSettings {
        addresses: cli.controller.clone(),
        tls,
        node_id,
        pod_name: cli.pod_name.clone(),
        pod_namespace: cli.pod_namespace.clone(),
    })
}

fn parse_size(s: &str) -> Result<u64, String> {
    moongate_route::quantity::parse_bytes(s)
}

fn settings(cli: &Cli) -> Settings {
    let workers = cli
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let budget = cli.instruction_budget.max(u64::from(HOOK_INTERVAL));
    Settings {
        max_body: cli.max_body_size,
        max_header: cli.max_header_size as usize,
        shutdown_timeout: Duration::from_secs_f64(cli.shutdown_timeout.max(0.0)),
        workers,
        cpu: Limits {
            budget,
            slice: cli.preemption_slice.clamp(u64::from(HOOK_INTERVAL), budget),
            unpreemptible: cli.max_unpreemptible.clamp(u64::from(HOOK_INTERVAL), budget),
        },
        memory_limit: usize::try_from(cli.lua_memory_limit).unwrap_or(usize::MAX),
        egress: Arc::new({
            let policy = EgressPolicy::new(cli.egress_allow.clone(), cli.admin.into_iter().collect())
                .allowing_own_listen(cli.egress_allow_self);
            // The listen socket as given; `server::start` adds the one bound.
            policy.with_own(cli.listen)
        }),
        unix_allow: cli.egress_allow_unix.clone(),
        cosocket_max_open: cli.cosocket_max_open,
    }
}

fn dict_limits(cli: &Cli) -> DictLimits {
    DictLimits {
        max_capacity: cli.max_shared_dict_size,
        max_namespace_total: cli.max_namespace_shared_dicts,
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if cli.check {
        return check(&cli);
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("moongate-dataplane: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moongate-dataplane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(cli: &Cli) -> ExitCode {
    let Some(routes) = &cli.routes else {
        println!("moongate-dataplane: --check needs --routes");
        return ExitCode::from(2);
    };
    let settings = Arc::new(settings(cli));
    let dicts = Arc::new(DictStore::default().with_limits(dict_limits(cli)));
    let checked = standalone::load(routes, 1).and_then(|loaded| {
        worker::check_loads(Arc::new(loaded.config), settings, dicts)?;
        Ok(loaded.refused)
    });
    match checked {
        Ok(refused) if refused.is_empty() => {
            println!("moongate-dataplane: the configuration in {} is ok", routes.display());
            ExitCode::SUCCESS
        }
        // Served, the others would run without these: as `nginx -t` fails on a
        // duplicate location, the test fails.
        Ok(refused) => {
            for r in &refused {
                println!("moongate-dataplane: {r}");
            }
            println!("moongate-dataplane: configuration test failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            for line in e.to_string().lines() {
                println!("moongate-dataplane: {line}");
            }
            println!("moongate-dataplane: configuration test failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let mut settings = settings(&cli);
    let dicts = Arc::new(
        DictStore::with_data_dir(&cli.data_dir, Duration::from_millis(cli.commit_window_ms.max(1)))
            .with_limits(dict_limits(&cli)),
    );
    // A data dir another dataplane holds is refused before serving anything.
    dicts.open_existing()?;
    let admin_state = Arc::new(admin::AdminState::default());
    if let Some(seq) = dicts.sequencer() {
        admin_state.set_durable(seq.clone());
    }
    if let Some(addr) = cli.admin {
        let bound = admin::start(addr, admin_state.clone()).await?;
        tracing::info!("admin on http://{bound}");
        // The port actually bound (the flag may say 0) is never a proxy peer.
        settings.egress = Arc::new(settings.egress.with_refused_own(bound));
    }
    let settings = Arc::new(settings);
    let result = match &cli.routes {
        Some(routes) => {
            let loaded = standalone::load(routes, 1)?;
            standalone::log_refused(&loaded.refused);
            let config = Arc::new(loaded.config);
            let (workers, bound) = server::start(cli.listen, settings, dicts.clone())?;
            workers.apply(config.clone()).await?.log();
            admin_state.set_config(config.version, &config.content_hash);
            tracing::info!(
                workers = workers.len(),
                routes = config.routes.len(),
                "serving http://{bound}"
            );
            let result = standalone::watch(routes.clone(), &workers, 1, &admin_state).await;
            (workers, result)
        }
        None => {
            let controller = controller_settings(&cli)?;
            let store = SnapshotStore::open(&cli.data_dir)?;
            let (workers, bound) = server::start(cli.listen, settings, dicts.clone())?;
            let mut client = Client::new(controller, &workers, &admin_state, store);
            client.restore().await;
            tracing::info!(workers = workers.len(), "serving http://{bound}");
            let result = tokio::select! {
                () = client.run() => Ok(()),
                result = standalone::until_terminated() => result,
            };
            drop(client);
            (workers, result)
        }
    };
    let (workers, result) = result;
    tracing::info!("shutting down");
    workers.shutdown();
    // Commit what the durable dicts still hold before exiting.
    dicts.flush_and_close();
    Ok(result?)
}
