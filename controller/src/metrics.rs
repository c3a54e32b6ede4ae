//! Prometheus metrics of the controller, served on the admin listener's `/metrics`.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

struct Metrics {
    registry: Registry,
    leader: Gauge,
    dataplanes: Gauge,
    config_version: Gauge,
    routes: Family<StateLabel, Gauge>,
    pushes: Family<KindLabel, Counter>,
    push_to_ack: Histogram,
    nacks: Counter,
    refused: Family<KindLabel, Counter>,
    status_writes: Family<KindLabel, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("moongate_controller");
    let m = Metrics {
        registry: Registry::default(),
        leader: Gauge::default(),
        dataplanes: Gauge::default(),
        config_version: Gauge::default(),
        routes: Family::default(),
        pushes: Family::default(),
        // 1 ms … ~16 s
        push_to_ack: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        nacks: Counter::default(),
        refused: Family::default(),
        status_writes: Family::default(),
    };
    registry.register(
        "leader",
        "1 while this replica holds the leader Lease",
        m.leader.clone(),
    );
    registry.register(
        "dataplanes",
        "Dataplanes connected to this controller",
        m.dataplanes.clone(),
    );
    registry.register(
        "config_version",
        "The newest published config version",
        m.config_version.clone(),
    );
    registry.register(
        "routes",
        "LuaRoutes by state: accepted, invalid, conflicted",
        m.routes.clone(),
    );
    registry.register(
        "pushes",
        "Configs pushed to dataplanes, by kind (snapshot, delta)",
        m.pushes.clone(),
    );
    registry.register(
        "push_to_ack_seconds",
        "Time from a push to the dataplane's acknowledgement",
        m.push_to_ack.clone(),
    );
    registry.register("nacks", "Versions a dataplane rejected", m.nacks.clone());
    registry.register(
        "refused_streams",
        "Dataplane streams refused, by reason",
        m.refused.clone(),
    );
    registry.register(
        "status_writes",
        "LuaRoute status writes, by result (ok, error)",
        m.status_writes.clone(),
    );
    Metrics { registry, ..m }
});

pub fn leader(leading: bool) {
    METRICS.leader.set(i64::from(leading));
}

pub fn dataplanes(n: usize) {
    METRICS.dataplanes.set(n as i64);
}

pub fn config_version(v: u64) {
    METRICS.config_version.set(v as i64);
}

pub fn routes(state: &'static str, n: usize) {
    METRICS.routes.get_or_create(&StateLabel { state }).set(n as i64);
}

pub fn pushed(kind: &'static str) {
    METRICS.pushes.get_or_create(&KindLabel { kind }).inc();
}

pub fn acked(after: Duration) {
    METRICS.push_to_ack.observe(after.as_secs_f64());
}

pub fn nacked() {
    METRICS.nacks.inc();
}

pub fn refused(kind: &'static str) {
    METRICS.refused.get_or_create(&KindLabel { kind }).inc();
}

pub fn status_written(kind: &'static str) {
    METRICS.status_writes.get_or_create(&KindLabel { kind }).inc();
}

pub fn encode() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry);
    out
}
