//! `conformance`: runs the Lua phase-handler conformance cases against the
//! Moongate dataplane in standalone mode.
//!
//! ```text
//! cargo run --release -p moongate-e2e --bin conformance -- [--verbose] [-j N] [--filter REGEX] \
//!     [--dataplane PATH] [--redis-server PATH] [--memcached PATH] DIR_OR_FILE…
//! ```
//!
//! Prints `PASS <id>` / `FAIL <id>: <first problem>` per case and a final
//! `N passed, M failed`. Exits 0 whatever the results, 2 when the runner itself
//! cannot work (bad arguments, unreadable cases, no cases, binary missing).

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use moongate_e2e::conformance::case::load_cases;
use moongate_e2e::conformance::compare::compile_python_regex;
use moongate_e2e::conformance::runner::{Options, json_report, run_all};
use moongate_e2e::conformance::server::Backend;
use moongate_e2e::conformance::services::ServiceBinaries;

#[derive(Parser, Debug)]
#[command(about = "Run the Lua conformance cases against moongate-dataplane")]
struct Args {
    /// Case files (*.json) or directories searched recursively for them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Print the problems of failed cases, with a short diff, under their FAIL line.
    #[arg(short, long)]
    verbose: bool,
    /// Print only FAIL lines and the summary.
    #[arg(short, long)]
    quiet: bool,
    /// Cases run in parallel.
    #[arg(short, long, default_value_t = 2)]
    jobs: usize,
    /// Only run cases whose id matches this regex (searched, Python `re` style).
    #[arg(long)]
    filter: Option<String>,
    /// The dataplane binary [default: moongate-dataplane next to this executable].
    #[arg(long, env = "MOONGATE_DATAPLANE")]
    dataplane: Option<PathBuf>,
    /// Also write {id: {ok, messages}} as JSON to this file.
    #[arg(long)]
    json_report: Option<PathBuf>,
    /// Keep the temporary directory (routes.yaml, server.log) of failed cases.
    #[arg(long)]
    keep_failed: bool,
    /// Seconds to wait for each read of a response.
    #[arg(long, default_value_t = 10.0)]
    request_timeout: f64,
    /// Seconds to wait for the server to accept connections.
    #[arg(long, default_value_t = 10.0)]
    start_timeout: f64,
    /// Seconds all requests of one case may take together.
    #[arg(long, default_value_t = 60.0)]
    case_timeout: f64,
    /// redis-server for format-2 cases with service "redis" [default: redis-server in PATH].
    #[arg(long)]
    redis_server: Option<PathBuf>,
    /// memcached for format-2 cases with service "memcached" [default: memcached in PATH].
    #[arg(long)]
    memcached: Option<PathBuf>,
    /// Where per-case temporary directories go.
    #[arg(long)]
    tmpdir: Option<PathBuf>,
    /// Development aid: run against this nginx (with lua-nginx-module) instead of
    /// the dataplane, to check the runner itself against the reference.
    #[arg(long, hide = true)]
    nginx: Option<PathBuf>,
    /// Dynamic modules nginx loads (with --nginx; repeatable).
    #[arg(long = "module", hide = true)]
    modules: Vec<PathBuf>,
}

fn seconds(name: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|_| format!("--{name} must be a non-negative number of seconds"))
}

fn default_dataplane() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    Ok(dir.join("moongate-dataplane"))
}

fn backend(args: &Args) -> Result<Backend, String> {
    if let Some(nginx) = &args.nginx {
        let modules = if args.modules.is_empty() {
            ["ndk_http_module.so", "ngx_http_lua_module.so"]
                .iter()
                .map(|m| Path::new("/usr/lib/nginx/modules").join(m))
                .collect()
        } else {
            args.modules.clone()
        };
        for path in std::iter::once(nginx).chain(&modules) {
            if !path.is_file() {
                return Err(format!("not found: {}", path.display()));
            }
        }
        return Ok(Backend::Nginx {
            binary: nginx.clone(),
            modules,
        });
    }
    let binary = match &args.dataplane {
        Some(p) => p.clone(),
        None => default_dataplane()?,
    };
    if !binary.is_file() {
        return Err(format!(
            "dataplane binary not found: {} (build it with `cargo build --release -p moongate-dataplane` or pass --dataplane)",
            binary.display()
        ));
    }
    Ok(Backend::Dataplane { binary })
}

fn run(args: Args) -> Result<(), String> {
    let backend = backend(&args)?;
    let opts = Options {
        backend,
        jobs: args.jobs.max(1),
        request_timeout: seconds("request-timeout", args.request_timeout)?,
        start_timeout: seconds("start-timeout", args.start_timeout)?,
        case_timeout: seconds("case-timeout", args.case_timeout)?,
        tmpdir: args.tmpdir.clone(),
        keep_failed: args.keep_failed,
        services: ServiceBinaries {
            redis_server: args.redis_server.clone(),
            memcached: args.memcached.clone(),
        },
    };
    let mut cases = load_cases(&args.paths).map_err(|e| format!("cannot load cases: {e}"))?;
    if cases.is_empty() {
        return Err("no case files found".into());
    }
    if let Some(filter) = &args.filter {
        let re = compile_python_regex(filter).map_err(|e| format!("bad --filter regex: {e}"))?;
        cases.retain(|c| re.is_match(c.id.as_bytes()).unwrap_or(false));
        if cases.is_empty() {
            return Err(format!("no case id matches --filter {filter:?}"));
        }
    }
    let stdout = std::io::stdout();
    let results = run_all(&cases, &opts, args.verbose, args.quiet, &mut stdout.lock());
    if let Some(path) = &args.json_report {
        std::fs::write(path, json_report(&results)).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
