//! Prometheus metrics of the dataplane, served on the admin listener's `/metrics`.
//!
//! Counters are process-wide atomics; the per-status-class request counters are
//! resolved once, so the request path does one atomic add and no label lookup.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::config::Phase;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// An upstream of a route. Bounded: one per location with an upstream in
/// the config (the upstream is named by its Service or first server, never
/// by an endpoint address).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    route: String,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamClassLabel {
    route: String,
    upstream: String,
    /// 1xx … 5xx, or "error" for a try that got no response.
    class: &'static str,
}

struct Upstreams {
    requests: Family<UpstreamClassLabel, Counter>,
    latency: Family<UpstreamLabel, Histogram>,
    connect_errors: Family<UpstreamLabel, Counter>,
    retries: Family<UpstreamLabel, Counter>,
    ejections: Family<UpstreamLabel, Counter>,
    no_endpoints: Family<UpstreamLabel, Counter>,
    egress_refused: Family<UpstreamLabel, Counter>,
    connections_open: Gauge,
    connections_idle: Gauge,
}

struct Metrics {
    upstreams: Upstreams,
    registry: Registry,
    /// Responses by status class: 1xx … 5xx, and "closed" (no response, 444).
    responses: [Counter; 6],
    lua_errors: Family<PhaseLabel, Counter>,
    budget_exceeded: Counter,
    reloads: Family<ResultLabel, Counter>,
    config_version: Gauge,
    controller_connected: Gauge,
    durable_store_corrupt: Counter,
    durable_committed_seq: Gauge,
    durable_timers_fired: Counter,
    durable_timers_dropped: Counter,
    timer_callback_errors: Counter,
    cosocket_refused: Counter,
    lua_memory_errors: Counter,
    tenant_vms: Family<WorkerLabel, Gauge>,
    routes_failed: Counter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("moongate");
    let by_class = Family::<ClassLabel, Counter>::default();
    let responses = ["1xx", "2xx", "3xx", "4xx", "5xx", "closed"]
        .map(|class| by_class.get_or_create(&ClassLabel { class }).clone());
    registry.register("responses", "HTTP responses sent, by status class", by_class);
    let lua_errors = Family::<PhaseLabel, Counter>::default();
    registry.register(
        "lua_errors",
        "Lua errors in request handlers, by phase",
        lua_errors.clone(),
    );
    let budget_exceeded = Counter::default();
    registry.register(
        "lua_instruction_budget_exceeded",
        "Lua handlers aborted for running past their instruction budget",
        budget_exceeded.clone(),
    );
    let reloads = Family::<ResultLabel, Counter>::default();
    registry.register(
        "config_reloads",
        "Config reloads, by result (applied or rejected)",
        reloads.clone(),
    );
    let config_version = Gauge::default();
    registry.register(
        "config_version",
        "Version of the config being served",
        config_version.clone(),
    );
    let controller_connected = Gauge::default();
    registry.register(
        "controller_connected",
        "1 while the config stream to the controller is up",
        controller_connected.clone(),
    );
    let durable_store_corrupt = Counter::default();
    registry.register(
        "shared_dict_store_corrupt",
        "Store files (shared_dicts.redb, config.redb) found corrupt, empty or unreadable, \
         and replaced by an empty store",
        durable_store_corrupt.clone(),
    );
    let durable_committed_seq = Gauge::default();
    registry.register(
        "durable_committed_seq",
        "Committed watermark of durable writes: every durable dict write and durable timer change \
         numbered at or below it is in a completed commit",
        durable_committed_seq.clone(),
    );
    let durable_timers_fired = Counter::default();
    registry.register(
        "durable_timers_fired",
        "Durable timers whose callback ran (successfully or not)",
        durable_timers_fired.clone(),
    );
    let durable_timers_dropped = Counter::default();
    registry.register(
        "durable_timers_dropped",
        "Durable timers dropped at fire time: route, module or function gone, or record unreadable",
        durable_timers_dropped.clone(),
    );
    let timer_callback_errors = Counter::default();
    registry.register(
        "timer_callback_errors",
        "Timer callbacks (ngx.timer.* and durable) that ended with a Lua error",
        timer_callback_errors.clone(),
    );
    let cosocket_refused = Counter::default();
    registry.register(
        "cosocket_egress_refused",
        "Cosocket connects (ngx.socket.tcp/udp) refused by the egress policy",
        cosocket_refused.clone(),
    );
    let lua_memory_errors = Counter::default();
    registry.register(
        "lua_memory_errors",
        "Lua code that failed for running past its tenant VM's memory limit",
        lua_memory_errors.clone(),
    );
    let tenant_vms = Family::<WorkerLabel, Gauge>::default();
    registry.register(
        "lua_tenant_vms",
        "Tenant Lua VMs (one per namespace with routes in the served config), by worker",
        tenant_vms.clone(),
    );
    let routes_failed = Counter::default();
    registry.register(
        "config_routes_failed",
        "Routes left out of an applied config because they failed to load (init error, refused dict)",
        routes_failed.clone(),
    );
    let upstreams = Upstreams {
        requests: Family::default(),
        latency: Family::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        }),
        connect_errors: Family::default(),
        retries: Family::default(),
        ejections: Family::default(),
        no_endpoints: Family::default(),
        egress_refused: Family::default(),
        connections_open: Gauge::default(),
        connections_idle: Gauge::default(),
    };
    registry.register(
        "upstream_requests",
        "Proxy tries by route, upstream and status class (error: no response)",
        upstreams.requests.clone(),
    );
    registry.register(
        "upstream_header_seconds",
        "Time from the start of a proxy try to the upstream's response head",
        upstreams.latency.clone(),
    );
    registry.register(
        "upstream_connect_errors",
        "Proxy tries that could not connect (refused, unreachable, timed out, TLS)",
        upstreams.connect_errors.clone(),
    );
    registry.register(
        "upstream_retries",
        "Proxy tries beyond the first",
        upstreams.retries.clone(),
    );
    registry.register(
        "upstream_ejections",
        "Upstream endpoints ejected after consecutive failures",
        upstreams.ejections.clone(),
    );
    registry.register(
        "upstream_no_endpoints",
        "Proxied requests answered 503 because the Service had no ready endpoint",
        upstreams.no_endpoints.clone(),
    );
    registry.register(
        "upstream_egress_refused",
        "Proxy tries refused by the egress policy",
        upstreams.egress_refused.clone(),
    );
    registry.register(
        "upstream_connections_open",
        "Upstream connections open, in use or idle",
        upstreams.connections_open.clone(),
    );
    registry.register(
        "upstream_connections_idle",
        "Upstream connections idle in the keep-alive pools",
        upstreams.connections_idle.clone(),
    );
    Metrics {
        upstreams,
        registry,
        lua_memory_errors,
        tenant_vms,
        routes_failed,
        responses,
        lua_errors,
        budget_exceeded,
        reloads,
        config_version,
        controller_connected,
        durable_store_corrupt,
        durable_committed_seq,
        durable_timers_fired,
        durable_timers_dropped,
        timer_callback_errors,
        cosocket_refused,
    }
});

/// Counts a response with `status`, or a connection closed without one.
pub fn response(status: Option<u16>) {
    let i = match status {
        Some(s) if (100..600).contains(&s) => usize::from(s / 100 - 1),
        _ => 5,
    };
    METRICS.responses[i].inc();
}

pub fn lua_error(phase: Phase) {
    METRICS
        .lua_errors
        .get_or_create(&PhaseLabel { phase: phase.name() })
        .inc();
}

pub fn budget_exceeded() {
    METRICS.budget_exceeded.inc();
}

pub fn reload(applied: bool) {
    let result = if applied { "applied" } else { "rejected" };
    METRICS.reloads.get_or_create(&ResultLabel { result }).inc();
}

pub fn controller_connected(connected: bool) {
    METRICS.controller_connected.set(i64::from(connected));
}

pub fn config_version(version: u64) {
    METRICS.config_version.set(i64::try_from(version).unwrap_or(i64::MAX));
}

/// Counts a store file that was corrupt, empty or unreadable.
pub fn durable_store_corrupt() {
    METRICS.durable_store_corrupt.inc();
}

/// Store files found bad so far; for tests.
pub fn durable_store_corrupt_count() -> u64 {
    METRICS.durable_store_corrupt.get()
}

/// The committed watermark of the durable store.
pub fn durable_committed_seq(seq: u64) {
    METRICS
        .durable_committed_seq
        .set(i64::try_from(seq).unwrap_or(i64::MAX));
}

pub fn durable_timer_fired() {
    METRICS.durable_timers_fired.inc();
}

pub fn durable_timer_dropped() {
    METRICS.durable_timers_dropped.inc();
}

pub fn timer_callback_error() {
    METRICS.timer_callback_errors.inc();
}

pub fn cosocket_refused() {
    METRICS.cosocket_refused.inc();
}

pub fn lua_memory_error() {
    METRICS.lua_memory_errors.inc();
}

pub fn tenant_vms(worker: usize, n: usize) {
    METRICS
        .tenant_vms
        .get_or_create(&WorkerLabel { worker })
        .set(i64::try_from(n).unwrap_or(i64::MAX));
}

pub fn routes_failed(n: usize) {
    METRICS.routes_failed.inc_by(n as u64);
}

/// (fired, dropped, callback errors) so far; for tests.
pub fn durable_timer_counts() -> (u64, u64, u64) {
    (
        METRICS.durable_timers_fired.get(),
        METRICS.durable_timers_dropped.get(),
        METRICS.timer_callback_errors.get(),
    )
}

/// The text exposition format.
pub fn encode() -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry);
    out
}

/// The metric handles of one upstream, resolved once per worker and
/// upstream, so a request does no label lookup.
pub struct UpstreamMetrics {
    /// 1xx … 5xx, then "error".
    requests: [Counter; 6],
    latency: Histogram,
    connect_errors: Counter,
    retries: Counter,
    ejections: Counter,
    no_endpoints: Counter,
    egress_refused: Counter,
}

impl UpstreamMetrics {
    pub fn new(route: &str, upstream: &str) -> UpstreamMetrics {
        let m = &METRICS.upstreams;
        let label = UpstreamLabel {
            route: route.to_string(),
            upstream: upstream.to_string(),
        };
        let requests = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"].map(|class| {
            m.requests
                .get_or_create(&UpstreamClassLabel {
                    route: label.route.clone(),
                    upstream: label.upstream.clone(),
                    class,
                })
                .clone()
        });
        UpstreamMetrics {
            requests,
            latency: m.latency.get_or_create(&label).clone(),
            connect_errors: m.connect_errors.get_or_create(&label).clone(),
            retries: m.retries.get_or_create(&label).clone(),
            ejections: m.ejections.get_or_create(&label).clone(),
            no_endpoints: m.no_endpoints.get_or_create(&label).clone(),
            egress_refused: m.egress_refused.get_or_create(&label).clone(),
        }
    }

    /// A try's outcome: the upstream's status, or 0 for no response.
    pub fn response(&self, status: u16) {
        let i = if (100..600).contains(&status) {
            usize::from(status / 100 - 1)
        } else {
            5
        };
        self.requests[i].inc();
    }

    pub fn observe(&self, header_time: std::time::Duration) {
        self.latency.observe(header_time.as_secs_f64());
    }

    pub fn connect_error(&self) {
        self.connect_errors.inc();
    }

    pub fn retry(&self) {
        self.retries.inc();
    }

    pub fn ejection(&self) {
        self.ejections.inc();
    }

    pub fn no_endpoints(&self) {
        self.no_endpoints.inc();
    }

    pub fn egress_refused(&self) {
        self.egress_refused.inc();
    }
}

pub fn upstream_connection_opened() {
    METRICS.upstreams.connections_open.inc();
}

pub fn upstream_connection_closed() {
    METRICS.upstreams.connections_open.dec();
}

/// Idle upstream connections came (`delta` > 0) or went.
pub fn upstream_idle(delta: i64) {
    METRICS.upstreams.connections_idle.inc_by(delta);
}
