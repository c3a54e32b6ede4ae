//! The `ConfigDiscovery` service against misbehaving dataplanes: each bad
//! stream gets a clear error and is dropped, and never affects the others.
//! The service runs in-process on a real loopback socket; clients are tonic
//! clients, raw where the test needs to send bytes no real dataplane would.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut};
use moongate_controller::discovery::Discovery;
use moongate_controller::fleet::Fleet;
use moongate_controller::published::Published;
use moongate_proto::v1 as pb;
use moongate_proto::v1::config_discovery_client::ConfigDiscoveryClient;
use moongate_proto::v1::config_discovery_server::ConfigDiscoveryServer;
use moongate_proto::v1::controller_message::Kind as Push;
use moongate_proto::v1::dataplane_message::Kind as Reply;
use moongate_route::RouteKey;
use moongate_route::compile::Compiler;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

struct Service {
    address: String,
    latest: watch::Sender<Option<Arc<Published>>>,
    fleet: Arc<Fleet>,
}

async fn serve() -> Service {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (latest, receiver) = watch::channel(None);
    let fleet = Arc::new(Fleet::default());
    let discovery = Discovery::new(receiver, fleet.clone(), Compiler::abi().clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ConfigDiscoveryServer::new(discovery))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Service { address, latest, fleet }
}

impl Service {
    fn publish(&self, version: u64, n: usize) -> Arc<Published> {
        let routes = (0..n)
            .map(|i| {
                let route = pb::Route {
                    namespace: "ns".into(),
                    name: format!("r{i}"),
                    generation: 1,
                    hostnames: vec![format!("r{i}.test")],
                    // Some bulk, so a snapshot of many routes spans many frames.
                    locations: vec![pb::Location {
                        path: format!("/{}", "x".repeat(200)),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                (RouteKey::new("ns", format!("r{i}")), Arc::new(route))
            })
            .collect();
        let published = Arc::new(Published::new(version, routes));
        self.latest.send_replace(Some(published.clone()));
        published
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.address.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn wait_fleet(&self, n: usize) {
        for _ in 0..200 {
            if self.fleet.len() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("fleet has {} dataplanes, expected {n}", self.fleet.len());
    }
}

fn hello(node: &str) -> pb::DataplaneMessage {
    pb::DataplaneMessage {
        kind: Some(Reply::Hello(pb::Hello {
            node_id: node.into(),
            abi: Some(Compiler::abi().clone()),
            ..Default::default()
        })),
    }
}

/// A well-behaved dataplane: says Hello and returns its inbound stream.
async fn connect(
    service: &Service,
    node: &str,
) -> (
    mpsc::Sender<pb::DataplaneMessage>,
    tonic::Streaming<pb::ControllerMessage>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello(node)).await.unwrap();
    let inbound = ConfigDiscoveryClient::new(service.channel().await)
        .stream(ReceiverStream::new(rx))
        .await
        .expect("stream accepted")
        .into_inner();
    (tx, inbound)
}

fn ack(version: u64, hash: &[u8]) -> pb::DataplaneMessage {
    pb::DataplaneMessage {
        kind: Some(Reply::Ack(pb::Ack {
            version,
            content_hash: hash.to_vec(),
            route_errors: Vec::new(),
        })),
    }
}

/// Sends and receives raw message bytes, to say what no real dataplane says.
#[derive(Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

async fn raw_stream(service: &Service, messages: Vec<Vec<u8>>) -> Result<tonic::Streaming<Vec<u8>>, Status> {
    let mut grpc = tonic::client::Grpc::new(service.channel().await);
    grpc.ready().await.unwrap();
    let (tx, rx) = mpsc::channel(8);
    for m in messages {
        tx.send(m).await.unwrap();
    }
    // Keep the request stream open while the test reads.
    std::mem::forget(tx);
    grpc.streaming(
        tonic::Request::new(ReceiverStream::new(rx)),
        http::uri::PathAndQuery::from_static("/moongate.v1.ConfigDiscovery/Stream"),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_dataplane_with_another_bytecode_abi_is_refused_with_both_abis_named() {
    let service = serve().await;
    service.publish(1, 1);
    let mut wrong = Compiler::abi().clone();
    wrong.arch = "arm64".into();
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::DataplaneMessage {
        kind: Some(Reply::Hello(pb::Hello {
            node_id: "dp-arm".into(),
            abi: Some(wrong),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let status = ConfigDiscoveryClient::new(service.channel().await)
        .stream(ReceiverStream::new(rx))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("bytecode ABI mismatch"),
        "{}",
        status.message()
    );
    assert!(status.message().contains("\"arm64\""), "{}", status.message());
    assert!(service.fleet.is_empty());

    // The next, matching dataplane is served as usual.
    let (_tx, mut inbound) = connect(&service, "dp-ok").await;
    let first = inbound.message().await.unwrap().unwrap();
    assert!(matches!(first.kind, Some(Push::Snapshot(s)) if s.version == 1));
}

#[tokio::test]
async fn a_first_message_that_is_not_hello_is_refused() {
    let service = serve().await;
    let status = raw_stream(&service, vec![ack(1, b"").encode_to_vec()])
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("first message must be Hello"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_malformed_message_closes_that_stream_only() {
    let service = serve().await;
    let v1 = service.publish(1, 3);
    let (good_tx, mut good) = connect(&service, "good").await;
    assert!(matches!(
        good.message().await.unwrap().unwrap().kind,
        Some(Push::Snapshot(_))
    ));
    good_tx.send(ack(1, &v1.content_hash)).await.unwrap();

    // Hello, then bytes that are not a DataplaneMessage (a truncated varint field).
    let mut bad = raw_stream(&service, vec![hello("bad").encode_to_vec(), vec![0x0a, 0xff, 0xff]])
        .await
        .expect("Hello is accepted");
    let status = loop {
        match bad.message().await {
            Ok(Some(_snapshot)) => continue,
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("could not read the dataplane's message"),
        "{}",
        status.message()
    );
    service.wait_fleet(1).await;
    assert_eq!(service.fleet.dataplanes()[0].node_id, "good");

    // The good stream still gets the next version, as a delta on what it acked.
    let v2 = service.publish(2, 4);
    match good.message().await.unwrap().unwrap().kind {
        Some(Push::Delta(d)) => {
            assert_eq!((d.base_version, d.version), (1, 2));
            assert_eq!(d.upserted.len(), 1);
            assert_eq!(d.content_hash, v2.content_hash);
        }
        other => panic!("expected a delta, got {other:?}"),
    }
}

#[tokio::test]
async fn an_ack_for_a_version_never_pushed_closes_the_stream_with_a_reason() {
    let service = serve().await;
    service.publish(5, 1);
    let (tx, mut inbound) = connect(&service, "confused").await;
    assert!(matches!(
        inbound.message().await.unwrap().unwrap().kind,
        Some(Push::Snapshot(_))
    ));
    tx.send(ack(4, b"whatever")).await.unwrap();
    let status = inbound.message().await.expect_err("closed with a status");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("not the version in flight"),
        "{}",
        status.message()
    );
    service.wait_fleet(0).await;
}

#[tokio::test]
async fn a_stream_reset_in_the_middle_of_a_push_affects_no_one_else() {
    let service = serve().await;
    let v1 = service.publish(1, 5000);
    // Says Hello, then vanishes while ~1 MB of snapshot is on its way.
    for _ in 0..5 {
        let (tx, inbound) = connect(&service, "flaky").await;
        drop(inbound);
        drop(tx);
    }
    let (tx, mut inbound) = connect(&service, "steady").await;
    match inbound.message().await.unwrap().unwrap().kind {
        Some(Push::Snapshot(s)) => assert_eq!(s.routes.len(), 5000),
        other => panic!("expected a snapshot, got {other:?}"),
    }
    tx.send(ack(1, &v1.content_hash)).await.unwrap();
    service.wait_fleet(1).await;
    assert_eq!(service.fleet.dataplanes()[0].node_id, "steady");
}

#[tokio::test]
async fn unknown_fields_from_a_newer_dataplane_are_ignored_as_protobuf_intends() {
    let service = serve().await;
    let v1 = service.publish(1, 1);
    let mut bytes = hello("newer").encode_to_vec();
    // Field 99 of DataplaneMessage, a varint: unknown to this controller.
    bytes.extend_from_slice(&[0x98, 0x06, 0x01]);
    let mut stream = raw_stream(&service, vec![bytes]).await.expect("accepted");
    let first = pb::ControllerMessage::decode(stream.message().await.unwrap().unwrap().as_slice()).unwrap();
    assert!(matches!(first.kind, Some(Push::Snapshot(s)) if s.content_hash == v1.content_hash));
}
