use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use kube::CustomResourceExt;
use moongate_controller::leader::LeaseSettings;
use moongate_controller::reconcile::Debounce;
use moongate_controller::run::{Options, run};
use moongate_controller::tls::TlsSource;
use moongate_route::crd::{LuaLibrary, LuaRoute};

/// The Moongate controller.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Watch LuaRoutes and stream their compiled config to dataplanes.
    Run(RunArgs),
    /// Print a CustomResourceDefinition as YAML (`crds/luaroute.yaml`,
    /// `crds/lualibrary.yaml`).
    Crd {
        #[arg(value_enum, default_value_t = CrdKind::Luaroute)]
        kind: CrdKind,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CrdKind {
    Luaroute,
    Lualibrary,
}

#[derive(Args)]
struct RunArgs {
    /// Address of the gRPC config stream dataplanes dial.
    #[arg(long, default_value = "0.0.0.0:18000")]
    grpc_listen: SocketAddr,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Namespaces to watch, comma-separated. Default: all.
    #[arg(long, value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Server certificate (PEM) for the gRPC stream.
    #[arg(long, requires_all = ["tls_key_file", "tls_client_ca_file"])]
    tls_cert_file: Option<PathBuf>,
    #[arg(long)]
    tls_key_file: Option<PathBuf>,
    /// CA that signs dataplane client certificates.
    #[arg(long)]
    tls_client_ca_file: Option<PathBuf>,
    /// `namespace/name` of a Secret holding tls.crt, tls.key and ca.crt.
    #[arg(long, conflicts_with = "tls_cert_file")]
    tls_secret: Option<String>,
    /// Serve gRPC in plaintext without client authentication.
    #[arg(long, conflicts_with_all = ["tls_cert_file", "tls_secret"])]
    insecure: bool,
    /// Run without leader election (exactly one replica).
    #[arg(long)]
    no_leader_election: bool,
    /// Namespace of the leader Lease. Default: $POD_NAMESPACE, else "default".
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    #[arg(long, default_value = "moongate-controller")]
    lease_name: String,
    /// How long a leader's Lease lasts without renewal: the longest failover.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// This replica's name in the Lease. Default: $POD_NAME, else hostname-pid.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Push after the watches have been quiet this long…
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    debounce_quiet: Duration,
    /// …but never later than this after the first change.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    debounce_max: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (e.g. 15s, 100ms)"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {s:?}: use ms, s or m")),
    };
    Ok(Duration::from_secs_f64(seconds.max(0.0)))
}

fn tls_source(args: &RunArgs) -> Result<TlsSource, String> {
    if args.insecure {
        return Ok(TlsSource::Insecure);
    }
    if let Some(secret) = &args.tls_secret {
        let (namespace, name) = secret
            .split_once('/')
            .ok_or_else(|| format!("--tls-secret {secret:?}: expected namespace/name"))?;
        return Ok(TlsSource::Secret {
            namespace: namespace.into(),
            name: name.into(),
        });
    }
    match (&args.tls_cert_file, &args.tls_key_file, &args.tls_client_ca_file) {
        (Some(cert), Some(key), Some(ca)) => Ok(TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: ca.clone(),
        }),
        _ => Err(
            "the gRPC stream needs TLS: pass --tls-cert-file, --tls-key-file and --tls-client-ca-file, \
                  or --tls-secret, or --insecure for plaintext"
                .into(),
        ),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = match Cli::parse().command {
        Command::Crd { kind } => {
            let crd = match kind {
                CrdKind::Luaroute => LuaRoute::crd(),
                CrdKind::Lualibrary => LuaLibrary::crd(),
            };
            return match serde_saphyr::to_string(&crd) {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("moongate-controller: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Run(args) => args,
    };
    let tls = match tls_source(&args) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("moongate-controller: {e}");
            return ExitCode::from(2);
        }
    };
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let options = Options {
        grpc_listen: args.grpc_listen,
        admin_listen: args.admin_listen,
        namespaces: args.namespaces.clone(),
        tls,
        lease: (!args.no_leader_election).then(|| LeaseSettings {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity: identity.clone(),
            lease_duration: args.lease_duration,
            renew_deadline: args.lease_duration * 2 / 3,
            retry_period: args.lease_duration / 7,
        }),
        identity,
        debounce: Debounce {
            quiet: args.debounce_quiet,
            max_delay: args.debounce_max.max(args.debounce_quiet),
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("moongate-controller: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moongate-controller: {e}");
            ExitCode::FAILURE
        }
    }
}
