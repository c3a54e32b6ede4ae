//! The dataplane against the controller's real `ConfigDiscovery` service, run
//! in this test process with a config the test publishes (no Kubernetes: the
//! e2e tests cover the API server side). The dataplane is the real binary.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Server, wait_for};
use moongate_controller::discovery::Discovery;
use moongate_controller::fleet::Fleet;
use moongate_controller::published::Published;
use moongate_proto::v1 as pb;
use moongate_proto::v1::config_discovery_server::ConfigDiscoveryServer;
use moongate_route::RouteKey;
use moongate_route::compile::{Compiler, compile_route};
use moongate_route::source::parse_routes;
use tokio::sync::{oneshot, watch};

const WAIT: Duration = Duration::from_secs(20);

/// The controller's gRPC service on a free loopback port.
struct Controller {
    runtime: tokio::runtime::Runtime,
    address: String,
    latest: watch::Sender<Option<Arc<Published>>>,
    fleet: Arc<Fleet>,
    stop: Option<oneshot::Sender<()>>,
}

impl Controller {
    fn start() -> Controller {
        Controller::start_on("127.0.0.1:0")
    }

    fn start_on(addr: &str) -> Controller {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind(addr)).unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let (latest, receiver) = watch::channel(None);
        let fleet = Arc::new(Fleet::default());
        let service = Discovery::new(receiver, fleet.clone(), Compiler::abi().clone());
        let (stop, stopped) = oneshot::channel::<()>();
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(ConfigDiscoveryServer::new(service))
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Controller {
            runtime,
            address,
            latest,
            fleet,
            stop: Some(stop),
        }
    }

    fn publish(&self, version: u64, routes: Vec<pb::Route>) -> Arc<Published> {
        let published = Arc::new(Published::new(
            version,
            routes.into_iter().map(|r| (RouteKey::of(&r), Arc::new(r))).collect(),
        ));
        self.latest.send_replace(Some(published.clone()));
        published
    }

    /// Waits until every connected dataplane acknowledged `version`; returns how many there are.
    fn wait_applied(&self, version: u64) -> usize {
        wait_for(WAIT, || {
            let dps = self.fleet.dataplanes();
            (!dps.is_empty()
                && dps
                    .iter()
                    .all(|d| d.applied.as_ref().map(|p| p.version) == Some(version)))
            .then_some(dps.len())
        })
        .unwrap_or_else(|| {
            panic!(
                "version {version} was not acknowledged; fleet: {:?}",
                self.fleet.dataplanes()
            )
        })
    }

    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.runtime.shutdown_timeout(Duration::from_secs(5));
    }
}

/// A compiled route `name` whose `/` location says `body`.
fn route(name: &str, body: &str) -> pb::Route {
    let yaml = common::route(
        name,
        &format!("  hostnames: [{name}.test]\n  locations:\n    - path: /\n      content: ngx.say(\"{body}\")\n"),
    );
    let parsed = parse_routes(&yaml, None).unwrap().remove(0);
    compile_route(&Compiler::new(), &parsed, 1).unwrap()
}

fn get(server: &Server, host: &str) -> (u16, String) {
    let response = server.raw(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes());
    (response.status, response.text())
}

#[test]
fn applies_snapshot_then_deltas_and_acknowledges_each() {
    let controller = Controller::start();
    controller.publish(10, vec![route("a", "a1"), route("b", "b1")]);
    let server = Server::builder("").workers(2).controller(&controller.address).start();
    assert_eq!(controller.wait_applied(10), 1);
    assert_eq!(get(&server, "a.test"), (200, "a1\n".into()));
    assert_eq!(get(&server, "b.test"), (200, "b1\n".into()));

    // A delta: a changed, b removed, c added.
    controller.publish(11, vec![route("a", "a2"), route("c", "c1")]);
    controller.wait_applied(11);
    assert_eq!(get(&server, "a.test"), (200, "a2\n".into()));
    assert_eq!(get(&server, "b.test").0, 404);
    assert_eq!(get(&server, "c.test"), (200, "c1\n".into()));
    assert!(server.logs().contains("config applied"), "{}", server.logs());
    controller.stop();
}

#[test]
fn a_version_that_does_not_load_is_nacked_never_resent_and_the_old_one_keeps_serving() {
    let controller = Controller::start();
    controller.publish(1, vec![route("a", "good")]);
    let server = Server::builder("").workers(2).controller(&controller.address).start();
    controller.wait_applied(1);

    // Bytecode that does not match its digest: the dataplane must refuse it.
    let mut bad = route("a", "bad");
    bad.locations[0].content.as_mut().unwrap().bytecode.push(0);
    controller.publish(2, vec![bad]);
    let rejection = wait_for(WAIT, || controller.fleet.dataplanes()[0].rejection.clone()).expect("a Nack");
    assert_eq!(rejection.version, 2);
    assert!(rejection.message.contains("digest mismatch"), "{}", rejection.message);
    assert_eq!(rejection.route_errors.len(), 1, "{rejection:?}");
    assert_eq!(rejection.route_errors[0].name, "a");
    assert_eq!(get(&server, "a.test"), (200, "good\n".into()));
    assert_eq!(controller.fleet.dataplanes()[0].applied.as_ref().unwrap().version, 1);

    // Republishing the same content under a new version is not sent again.
    let log_mark = server.log_count();
    let mut bad_again = route("a", "bad");
    bad_again.locations[0].content.as_mut().unwrap().bytecode.push(0);
    controller.publish(3, vec![bad_again]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !server.logs_since(log_mark).contains("rejected"),
        "{}",
        server.logs_since(log_mark)
    );

    // The next good version lands as a delta on top of version 1.
    controller.publish(4, vec![route("a", "fixed")]);
    controller.wait_applied(4);
    assert_eq!(get(&server, "a.test"), (200, "fixed\n".into()));
    controller.stop();
}

#[test]
fn a_restart_while_the_controller_is_down_serves_the_last_good_config() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let controller = Controller::start();
    controller.publish(7, vec![route("a", "persisted")]);
    let server = Server::builder("")
        .controller(&controller.address)
        .arg("--data-dir")
        .arg(data_dir)
        .start();
    controller.wait_applied(7);
    let address = controller.address.clone();
    controller.stop();
    // The controller is gone: still serving.
    assert_eq!(get(&server, "a.test"), (200, "persisted\n".into()));
    drop(server);

    let restarted = Server::builder("")
        .controller(&address)
        .arg("--data-dir")
        .arg(data_dir)
        .start();
    assert_eq!(get(&restarted, "a.test"), (200, "persisted\n".into()));
    assert!(
        restarted
            .logs()
            .contains("serving the last config applied before the restart")
    );

    // When the controller comes back on the same address, the stored
    // version is replaced by what it publishes.
    let port = address.rsplit(':').next().unwrap();
    let controller = Controller::start_on(&format!("127.0.0.1:{port}"));
    controller.publish(8, vec![route("b", "new")]);
    controller.wait_applied(8);
    assert_eq!(get(&restarted, "a.test").0, 404);
    assert_eq!(get(&restarted, "b.test"), (200, "new\n".into()));
    controller.stop();
}

#[test]
fn a_fresh_dataplane_retries_an_unreachable_controller_until_it_comes() {
    // Nothing listens here: the port was just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server::builder("")
        .controller(&format!("http://127.0.0.1:{port}"))
        .start();
    // Until it has a config it accepts no connections (and is not ready).
    assert!(
        server.wait_log_since(0, "reconnecting", WAIT).is_some(),
        "{}",
        server.logs()
    );
    let controller = Controller::start_on(&format!("127.0.0.1:{port}"));
    controller.publish(1, vec![route("a", "late")]);
    controller.wait_applied(1);
    assert_eq!(get(&server, "a.test"), (200, "late\n".into()));
    controller.stop();
}

/// A "controller" that answers every stream with one undecodable message:
/// a gRPC frame whose protobuf is truncated mid-field.
fn garbage_controller(addr: &str) -> tokio::runtime::Runtime {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind(addr)).unwrap();
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    // Field 1 (snapshot), length-delimited, claiming 127 bytes that never come.
                    let message: &[u8] = &[0x0a, 0x7f, 0x08];
                    let mut frame = vec![0u8];
                    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
                    frame.extend_from_slice(message);
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    let frames: Vec<Result<Frame<bytes::Bytes>, std::convert::Infallible>> =
                        vec![Ok(Frame::data(frame.into())), Ok(Frame::trailers(trailers))];
                    let body = StreamBody::new(tokio_stream::iter(frames));
                    let response = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(body)
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    runtime
}

#[test]
fn a_malformed_push_is_reported_and_the_last_good_config_keeps_serving() {
    let controller = Controller::start();
    controller.publish(1, vec![route("a", "good")]);
    let server = Server::builder("").controller(&controller.address).start();
    controller.wait_applied(1);
    let address = controller.address.clone();
    controller.stop();

    let mark = server.log_count();
    let _garbage = garbage_controller(address.trim_start_matches("http://"));
    let line = server
        .wait_log_since(mark, "decode", WAIT)
        .unwrap_or_else(|| panic!("no decode error logged:\n{}", server.logs_since(mark)));
    assert!(line.contains("config stream"), "{line}");
    assert_eq!(get(&server, "a.test"), (200, "good\n".into()));
    // It keeps retrying rather than giving up or crashing.
    assert!(server.wait_log_since(mark, "reconnecting", WAIT).is_some());
}
