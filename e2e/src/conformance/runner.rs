//! Running cases: one server per case, its requests in order, results printed
//! in input order as `run_nginx.py` prints them.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::case::{Case, LoadedCase, Ports};
use super::compare::compare;
use super::http::send_request;
use super::server::{self, Backend};
use super::services::{self, ServiceBinaries};

/// How cases are run.
#[derive(Clone, Debug)]
pub struct Options {
    pub backend: Backend,
    pub jobs: usize,
    /// Per socket read (and connect) of a request.
    pub request_timeout: Duration,
    /// Until the server accepts connections.
    pub start_timeout: Duration,
    /// For all requests of a case together, so a hung case cannot hang the run.
    pub case_timeout: Duration,
    /// Where the per-case temporary directories go (default: the system's).
    pub tmpdir: Option<PathBuf>,
    /// Keep the temporary directory of failed cases (routes.yaml, server.log).
    pub keep_failed: bool,
    /// `redis-server` and `memcached` for format-2 services.
    pub services: ServiceBinaries,
}

/// The outcome of one case.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CaseResult {
    pub id: String,
    pub ok: bool,
    /// Problems (the first one is the FAIL reason), notes, and where a kept directory is.
    pub messages: Vec<String>,
}

/// Runs one case against a fresh server.
pub fn run_case(loaded: &LoadedCase, opts: &Options) -> CaseResult {
    let (ok, messages) = run_case_inner(loaded, opts);
    CaseResult {
        id: loaded.id.clone(),
        ok,
        messages,
    }
}

fn run_case_inner(loaded: &LoadedCase, opts: &Options) -> (bool, Vec<String>) {
    let case = match &loaded.case {
        Ok(case) => case,
        Err(e) => return (false, vec![format!("bad case: {e}")]),
    };
    if let Err(e) = case.validate() {
        return (false, vec![format!("bad case: {e}")]);
    }
    let mut builder = tempfile::Builder::new();
    builder.prefix("moongate-conf-");
    let dir = match &opts.tmpdir {
        Some(t) => builder.tempdir_in(t),
        None => builder.tempdir(),
    };
    let dir = match dir {
        Ok(d) => d,
        Err(e) => return (false, vec![format!("cannot create a temporary directory: {e}")]),
    };
    // nginx workers run as nobody when the runner is root and must reach the prefix.
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
    }
    let mut msgs = Vec::new();
    // Services first (dropped last: stopped after the server), one per name.
    let mut running: Vec<services::Service> = Vec::new();
    let mut ports = Ports::default();
    for name in case.services.iter().flatten() {
        if running.iter().any(|s| s.name == name) {
            continue;
        }
        match services::start(name, &opts.services, dir.path(), opts.start_timeout) {
            Ok(svc) => {
                match svc.name {
                    "redis" => ports.redis = Some(svc.port),
                    _ => ports.memcached = Some(svc.port),
                }
                running.push(svc);
            }
            Err(e) => return (false, vec![e]),
        }
    }
    match server::start(&opts.backend, case, ports, dir.path(), opts.start_timeout) {
        Err(e) => msgs.push(e),
        Ok(server) => {
            let deadline = Instant::now() + opts.case_timeout;
            let requests = server.case.requests.as_deref().unwrap_or_default();
            let expect = server.case.expect.as_deref().unwrap_or_default();
            for (i, (req, exp)) in requests.iter().zip(expect).enumerate() {
                let timeout = req
                    .client_timeout_s
                    .and_then(|t| Duration::try_from_secs_f64(t).ok())
                    .unwrap_or(opts.request_timeout);
                let resp = match send_request(server.port, req, timeout, deadline) {
                    Ok(resp) => resp,
                    Err(e) => {
                        msgs.push(format!("request {i}: no valid response ({})", e.0));
                        continue;
                    }
                };
                if let Some(note) = &resp.note {
                    msgs.push(format!("request {i}: note: {note}"));
                }
                match compare(i, exp, &resp) {
                    Ok(problems) => msgs.extend(problems),
                    Err(bad) => return (false, vec![format!("bad case: {}", bad.0)]),
                }
            }
            drop(server);
        }
    }
    drop(running);
    let ok = msgs.iter().all(|m| is_note(m));
    if !ok && matches!(opts.backend, Backend::Dataplane { .. }) {
        msgs.extend(unsupported(case).map(|u| format!("case: note: not applied (no dataplane equivalent): {u}")));
    }
    if !ok && opts.keep_failed {
        let kept = dir.keep();
        msgs.push(format!("directory kept: {}", kept.display()));
    }
    (ok, msgs)
}

/// The case's settings the dataplane has no equivalent for, as nginx directives.
fn unsupported(case: &Case) -> impl Iterator<Item = String> + '_ {
    let tokens = (case.server_tokens == Some(false)).then(|| "server_tokens off (server level)".to_string());
    let sockets = |holder: String, settings: &crate::conformance::case::OrderedMap<String>| {
        settings
            .iter()
            .map(|(k, v)| format!("lua_socket_{k} {v} ({holder})"))
            .collect::<Vec<_>>()
    };
    let server_sockets = case
        .lua_socket
        .iter()
        .flat_map(move |s| sockets("server level".into(), s));
    let locations = case.locations.iter().flatten().flat_map(move |loc| {
        let clear = loc
            .clear_headers
            .iter()
            .filter(|h| !h.is_empty())
            .map(|h| format!("more_clear_headers {} (location {:?})", h.join(" "), loc.path));
        let socks = loc
            .lua_socket
            .iter()
            .flat_map(|s| sockets(format!("location {:?}", loc.path), s));
        clear.chain(socks).collect::<Vec<_>>()
    });
    tokens.into_iter().chain(server_sockets).chain(locations)
}

fn is_note(message: &str) -> bool {
    message.contains(": note: ")
}

/// Runs all cases, `opts.jobs` at a time, printing each result in input order
/// to `out` (the diff lines only when `verbose`; PASS lines unless `quiet`),
/// then the summary line. Returns the results in input order.
pub fn run_all(
    cases: &[LoadedCase],
    opts: &Options,
    verbose: bool,
    quiet: bool,
    out: &mut dyn Write,
) -> Vec<CaseResult> {
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, CaseResult)>();
    let mut results = Vec::with_capacity(cases.len());
    let (mut passed, mut failed) = (0usize, 0usize);
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.clamp(1, cases.len().max(1)) {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    if tx.send((i, run_case(case, opts))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut pending: HashMap<usize, CaseResult> = HashMap::new();
        for (i, result) in rx {
            pending.insert(i, result);
            while let Some(r) = pending.remove(&results.len()) {
                if r.ok {
                    passed += 1;
                } else {
                    failed += 1;
                }
                let _ = print_result(&r, verbose, quiet, out);
                results.push(r);
            }
        }
    });
    let _ = writeln!(out, "{passed} passed, {failed} failed");
    let _ = out.flush();
    results
}

fn print_result(r: &CaseResult, verbose: bool, quiet: bool, out: &mut dyn Write) -> std::io::Result<()> {
    if r.ok {
        if !quiet {
            writeln!(out, "PASS {}", r.id)?;
        }
    } else {
        // The FAIL line shows the first real problem, not a note.
        let first = r.messages.iter().find(|m| !is_note(m)).or(r.messages.first());
        let first = first.map_or("failed", |m| m.lines().next().unwrap_or(""));
        writeln!(out, "FAIL {}: {first}", r.id)?;
        if verbose {
            for m in &r.messages {
                for line in m.lines() {
                    writeln!(out, "    {line}")?;
                }
            }
        }
    }
    out.flush()
}

/// `{id: {ok, messages}}` as JSON, keys sorted, for `--json-report`.
pub fn json_report(results: &[CaseResult]) -> String {
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        ok: bool,
        messages: &'a [String],
    }
    let map: BTreeMap<&str, Entry> = results
        .iter()
        .map(|r| {
            (
                r.id.as_str(),
                Entry {
                    ok: r.ok,
                    messages: &r.messages,
                },
            )
        })
        .collect();
    serde_json::to_string_pretty(&map).unwrap_or_else(|_| "{}".into())
}
