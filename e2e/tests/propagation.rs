//! Benchmark, not a test (ignored by `cargo test`): how long a `kubectl apply`
//! of a changed LuaRoute takes to be served by every dataplane. Run with
//!
//!     cargo test --release -p moongate-e2e --test propagation -- --ignored --nocapture
//!
//! against the same real API server, controller and two dataplanes the e2e
//! tests use. It prints p50/p99 over `MOONGATE_PROPAGATION_ROUNDS` (50)
//! updates, measured two ways: from starting `kubectl apply` (includes
//! kubectl's own start-up) and from the moment `kubectl apply` returned (the
//! object is stored).

mod common;

use std::time::{Duration, Instant};

use common::{Env, free_port, route_yaml};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn propagation_latency_from_kubectl_apply_to_200_on_every_dataplane() {
    let rounds: usize = std::env::var("MOONGATE_PROPAGATION_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let env = Env::new("propagation");
    let grpc = free_port();
    let _controller = env.controller("controller-0", grpc, free_port());
    let dataplanes = [env.dataplane("dp-a", &[grpc]), env.dataplane("dp-b", &[grpc])];
    let manifest = env.path("route.yaml");

    let mut from_start = Vec::with_capacity(rounds);
    let mut from_stored = Vec::with_capacity(rounds);
    for round in 0..=rounds {
        let body = format!("v{round}");
        std::fs::write(
            &manifest,
            route_yaml("bench", "bench.test", &format!("ngx.say(\"{body}\")")),
        )
        .unwrap();
        let started = Instant::now();
        env.kubectl_ok(&["apply", "-f", manifest.to_str().unwrap()]);
        let stored = Instant::now();
        let expected = Some((200, format!("{body}\n")));
        // Polled back to back (a request over a fresh connection takes a
        // fraction of a millisecond), not at the harness's 20 ms interval.
        for dp in &dataplanes {
            let deadline = Instant::now() + Duration::from_secs(30);
            while dp.get("bench.test", "/") != expected {
                assert!(Instant::now() < deadline, "{} never served {body}", dp.name);
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let served = Instant::now();
        // Round 0 creates the route and warms everything up; it is not counted.
        if round > 0 {
            from_start.push(served - started);
            from_stored.push(served - stored);
        }
    }
    // The same updates as server-side apply requests from a client library,
    // so no kubectl process start-up is in the figure.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let api: kube::Api<moongate_route::crd::LuaRoute> = runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(&env.cluster.admin_kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Api::namespaced(kube::Client::try_from(config).unwrap(), &env.namespace)
    });
    let mut from_request = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let body = format!("api{round}");
        let yaml = route_yaml("bench", "bench.test", &format!("ngx.say(\"{body}\")"));
        let route: serde_json::Value =
            serde_json::to_value(moongate_route::source::parse_routes(&yaml, None).unwrap().remove(0)).unwrap();
        let started = Instant::now();
        runtime
            .block_on(api.patch(
                "bench",
                &kube::api::PatchParams::apply("propagation-bench").force(),
                &kube::api::Patch::Apply(&route),
            ))
            .unwrap();
        let expected = Some((200, format!("{body}\n")));
        for dp in &dataplanes {
            let deadline = Instant::now() + Duration::from_secs(30);
            while dp.get("bench.test", "/") != expected {
                assert!(Instant::now() < deadline, "{} never served {body}", dp.name);
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        from_request.push(started.elapsed());
    }
    from_start.sort();
    from_stored.sort();
    from_request.sort();
    println!(
        "\npropagation over {rounds} updates, 2 dataplanes, 1 controller (real kube-apiserver + etcd on loopback)"
    );
    println!("| measured from | p50 | p99 | max |");
    println!("|---|---|---|---|");
    for (what, samples) in [
        ("kubectl apply started", &from_start),
        ("kubectl apply returned (object stored)", &from_stored),
        ("server-side apply request sent (kube-rs client)", &from_request),
    ] {
        println!(
            "| {what} | {} | {} | {} |",
            ms(percentile(samples, 50.0)),
            ms(percentile(samples, 99.0)),
            ms(*samples.last().unwrap())
        );
    }
}
