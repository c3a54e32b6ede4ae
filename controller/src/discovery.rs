//! The `ConfigDiscovery` gRPC service: one session per connected dataplane.
//!
//! A session starts with the dataplane's `Hello`; a dataplane whose bytecode
//! ABI differs from ours is refused with `FAILED_PRECONDITION`, since our
//! bytecode would not load in it. It then gets the full snapshot, and after
//! that a delta for each newer version, computed from what *it* last
//! acknowledged. At most one push is outstanding per session, so a slow
//! dataplane is sent only the newest version once it answers, and never holds
//! up the others. A version it rejected (by content hash) is never sent to it
//! again; it keeps serving what it had, and it is offered the next version.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moongate_proto::v1 as pb;
use moongate_proto::v1::config_discovery_server::ConfigDiscovery;
use moongate_proto::v1::controller_message::Kind as Push;
use moongate_proto::v1::dataplane_message::Kind as Reply;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::fleet::{Fleet, Membership, Rejection};
use crate::published::Published;

/// How long a new stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The newest published version; `None` until the controller has listed
/// every LuaRoute, so no dataplane is ever sent a partial config.
pub type Latest = watch::Receiver<Option<Arc<Published>>>;

pub struct Discovery {
    latest: Latest,
    fleet: Arc<Fleet>,
    abi: pb::BytecodeAbi,
}

impl Discovery {
    pub fn new(latest: Latest, fleet: Arc<Fleet>, abi: pb::BytecodeAbi) -> Discovery {
        Discovery { latest, fleet, abi }
    }
}

fn describe(abi: &pb::BytecodeAbi) -> String {
    format!(
        "LuaJIT {:?} on {:?}, format {:?}",
        abi.luajit_version, abi.arch, abi.format
    )
}

#[tonic::async_trait]
impl ConfigDiscovery for Discovery {
    type StreamStream = ReceiverStream<Result<pb::ControllerMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<pb::DataplaneMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown peer".to_string(), |a| a.to_string());
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::DataplaneMessage {
                kind: Some(Reply::Hello(hello)),
            }))) => hello,
            Ok(Ok(Some(_))) => {
                return Err(refuse(
                    &peer,
                    Status::invalid_argument("the first message must be Hello"),
                ));
            }
            Ok(Ok(None)) => return Err(refuse(&peer, Status::cancelled("stream closed before Hello"))),
            Ok(Err(status)) => return Err(refuse(&peer, status)),
            Err(_) => return Err(refuse(&peer, Status::deadline_exceeded("no Hello within 10s"))),
        };
        if hello.node_id.is_empty() {
            return Err(refuse(&peer, Status::invalid_argument("Hello.node_id is empty")));
        }
        let abi = hello.abi.clone().unwrap_or_default();
        if abi != self.abi {
            crate::metrics::refused("abi");
            return Err(refuse(
                &peer,
                Status::failed_precondition(format!(
                    "bytecode ABI mismatch: dataplane {} runs {}, this controller compiles for {}; \
                     run a dataplane built with the controller's LuaJIT",
                    hello.node_id,
                    describe(&abi),
                    describe(&self.abi)
                )),
            ));
        }
        let pod = if hello.pod_name.is_empty() {
            hello.node_id.clone()
        } else {
            format!("{}/{}", hello.pod_namespace, hello.pod_name)
        };
        tracing::info!(
            node = %hello.node_id,
            %pod,
            %peer,
            last_applied = hello.last_applied_version,
            "dataplane connected"
        );
        let (tx, rx) = mpsc::channel(1);
        let session = Session {
            node: hello.node_id.clone(),
            membership: self.fleet.join(&hello.node_id, &pod),
            latest: self.latest.clone(),
            out: tx,
            applied: None,
            left_out: Vec::new(),
            in_flight: None,
            rejected: HashSet::new(),
        };
        tokio::spawn(session.run(inbound));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn refuse(peer: &str, status: Status) -> Status {
    tracing::warn!(%peer, code = ?status.code(), "refused a dataplane stream: {}", status.message());
    status
}

struct Session {
    node: String,
    membership: Membership,
    latest: Latest,
    out: mpsc::Sender<Result<pb::ControllerMessage, Status>>,
    /// What the dataplane acknowledged last on this stream.
    applied: Option<Arc<Published>>,
    /// The routes the dataplane left out of `applied` (its Ack's errors).
    left_out: Vec<pb::RouteError>,
    in_flight: Option<(Arc<Published>, Instant)>,
    /// Content hashes this dataplane rejected.
    rejected: HashSet<Vec<u8>>,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<pb::DataplaneMessage>) {
        loop {
            if self.in_flight.is_none() && !self.push_latest().await {
                break;
            }
            tokio::select! {
                changed = self.latest.changed() => if changed.is_err() {
                    break;
                },
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        if let Err(status) = self.receive(message) {
                            tracing::warn!(node = %self.node, "closing the stream: {}", status.message());
                            let _ = self.out.send(Err(status)).await;
                            break;
                        }
                    }
                    Ok(None) => {
                        tracing::info!(node = %self.node, "dataplane closed its stream");
                        break;
                    }
                    Err(status) => {
                        // A malformed message, or the connection went away;
                        // tell the dataplane which, if it can still hear.
                        tracing::warn!(node = %self.node, code = ?status.code(), "dataplane stream broke: {}", status.message());
                        let reason = format!("could not read the dataplane's message: {}", status.message());
                        let _ = tokio::time::timeout(Duration::from_secs(1), self.out.send(Err(Status::invalid_argument(reason)))).await;
                        break;
                    }
                },
            }
        }
        tracing::info!(node = %self.node, "dataplane disconnected");
    }

    /// Sends the newest version unless the dataplane has it or rejected it.
    /// Returns false when the stream is gone.
    async fn push_latest(&mut self) -> bool {
        let Some(latest) = self.latest.borrow_and_update().clone() else {
            return true;
        };
        if let Some(applied) = &self.applied
            && applied.content_hash == latest.content_hash
        {
            if applied.version != latest.version {
                // Same content under a newer version: nothing to load.
                self.applied = Some(latest.clone());
                self.membership.applied(latest, self.left_out.clone());
            }
            return true;
        }
        if self.rejected.contains(&latest.content_hash) {
            return true;
        }
        let (push, kind) = match &self.applied {
            Some(base) => (Push::Delta(latest.delta_from(base).as_ref().clone()), "delta"),
            None => (Push::Snapshot(latest.snapshot()), "snapshot"),
        };
        tracing::debug!(node = %self.node, version = latest.version, kind, "pushing");
        crate::metrics::pushed(kind);
        self.in_flight = Some((latest, Instant::now()));
        self.out
            .send(Ok(pb::ControllerMessage { kind: Some(push) }))
            .await
            .is_ok()
    }

    fn receive(&mut self, message: pb::DataplaneMessage) -> Result<(), Status> {
        match message.kind {
            Some(Reply::Ack(ack)) => {
                let Some((pushed, at)) = self.in_flight.take_if(|(p, _)| p.version == ack.version) else {
                    return Err(Status::invalid_argument(format!(
                        "Ack for version {}, which is not the version in flight",
                        ack.version
                    )));
                };
                if ack.content_hash != pushed.content_hash {
                    return Err(Status::data_loss(format!(
                        "Ack for version {} with a different content hash: the dataplane's routes diverged",
                        ack.version
                    )));
                }
                crate::metrics::acked(at.elapsed());
                tracing::debug!(node = %self.node, version = ack.version, "acked");
                for e in &ack.route_errors {
                    tracing::warn!(node = %self.node, version = ack.version, route = %format_args!("{}/{}", e.namespace, e.name), "dataplane left the route out: {}", e.message);
                }
                self.applied = Some(pushed.clone());
                self.left_out = ack.route_errors.clone();
                self.membership.applied(pushed, ack.route_errors);
                Ok(())
            }
            Some(Reply::Nack(nack)) => {
                let Some((pushed, _)) = self.in_flight.take_if(|(p, _)| p.version == nack.version) else {
                    return Err(Status::invalid_argument(format!(
                        "Nack for version {}, which is not the version in flight",
                        nack.version
                    )));
                };
                crate::metrics::nacked();
                tracing::warn!(node = %self.node, version = nack.version, "dataplane rejected the version: {}", nack.message);
                self.rejected.insert(pushed.content_hash.clone());
                self.membership.rejected(Rejection {
                    version: nack.version,
                    published: pushed,
                    message: nack.message,
                    route_errors: nack.route_errors,
                });
                Ok(())
            }
            Some(Reply::Hello(_)) => Err(Status::invalid_argument("Hello may only be the first message")),
            None => Err(Status::invalid_argument(
                "a message of a kind this controller does not know (a newer dataplane?)",
            )),
        }
    }
}
