use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mimalloc::MiMalloc;
use moongate_dataplane::{admin, http::server, standalone, worker::Settings};

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
    #[arg(long, env = "MOONGATE_ROUTES")]
    routes: PathBuf,
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
    /// Lua VM instructions one handler may run before it is aborted with a 500
    /// (a route's `limits.instructionBudget` overrides it).
    #[arg(long, default_value_t = moongate_dataplane::worker::DEFAULT_INSTRUCTION_BUDGET)]
    instruction_budget: u64,
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
}

fn parse_size(s: &str) -> Result<u64, String> {
    moongate_controller::quantity::parse_bytes(s)
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
    match standalone::load(&cli.routes, 1).and_then(|config| moongate_dataplane::worker::check_loads(Arc::new(config)))
    {
        Ok(()) => {
            println!(
                "moongate-dataplane: the configuration in {} is ok",
                cli.routes.display()
            );
            ExitCode::SUCCESS
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
    let workers = cli
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let settings = Arc::new(Settings {
        max_body: cli.max_body_size,
        max_header: cli.max_header_size as usize,
        shutdown_timeout: Duration::from_secs_f64(cli.shutdown_timeout.max(0.0)),
        workers,
        instruction_budget: cli
            .instruction_budget
            .max(u64::from(moongate_dataplane::lua::budget::HOOK_INTERVAL)),
    });
    let admin_state = Arc::new(admin::AdminState::default());
    if let Some(addr) = cli.admin {
        let bound = admin::start(addr, admin_state.clone()).await?;
        tracing::info!("admin on http://{bound}");
    }
    let config = Arc::new(standalone::load(&cli.routes, 1)?);
    let dicts = Arc::new(moongate_dataplane::shdict::DictStore::with_data_dir(
        &cli.data_dir,
        Duration::from_millis(cli.commit_window_ms.max(1)),
    ));
    let (workers, bound) = server::start(cli.listen, settings, dicts.clone())?;
    workers.apply(config.clone()).await?;
    admin_state.set_config(config.version, &config.content_hash);
    tracing::info!(
        workers = workers.len(),
        routes = config.routes.len(),
        "serving http://{bound}"
    );
    let result = standalone::watch(cli.routes.clone(), &workers, 1, &admin_state).await;
    tracing::info!("shutting down");
    workers.shutdown();
    // Commit what the durable dicts still hold before exiting.
    dicts.flush_and_close();
    Ok(result?)
}
