//! The dataplanes connected to this controller and what each has applied.
//!
//! A dataplane is known by its node id; when it reconnects before its old
//! stream is torn down, the newer session replaces the older one, and the
//! older one's departure is ignored (sessions are numbered).
//!
//! Every change bumps a watch channel, which the status writer follows.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use moongate_proto::v1 as pb;
use tokio::sync::watch;

use crate::published::Published;
use moongate_route::RouteKey;

/// One dataplane's rejection of a version.
#[derive(Clone, Debug)]
pub struct Rejection {
    pub version: u64,
    /// The published version it rejected: its generations say which route
    /// generations the rejection is about.
    pub published: Arc<Published>,
    pub message: String,
    pub route_errors: Vec<pb::RouteError>,
}

impl Rejection {
    /// The message to show on `key`'s status, if this rejection concerns it:
    /// a named route error, or the whole-version message when no route was named.
    pub fn message_for(&self, key: &RouteKey) -> Option<&str> {
        if self.route_errors.is_empty() {
            return self.published.routes.contains_key(key).then_some(self.message.as_str());
        }
        self.route_errors
            .iter()
            .find(|e| e.namespace == key.namespace && e.name == key.name)
            .map(|e| e.message.as_str())
    }
}

#[derive(Clone, Debug)]
pub struct Dataplane {
    pub node_id: String,
    /// `namespace/name` of its pod, or the node id when it runs outside a pod.
    pub pod: String,
    session: u64,
    /// The last version it acknowledged on this session.
    pub applied: Option<Arc<Published>>,
    /// Its most recent rejection, cleared by the next acknowledgement; or
    /// the routes its last acknowledged version left out (`applied` is then
    /// that rejection's `published`).
    pub rejection: Option<Rejection>,
}

#[derive(Default)]
struct Inner {
    dataplanes: BTreeMap<String, Dataplane>,
    next_session: u64,
}

pub struct Fleet {
    inner: Mutex<Inner>,
    changed: watch::Sender<()>,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            inner: Mutex::default(),
            changed: watch::channel(()).0,
        }
    }
}

/// A connected dataplane's registration; dropping it removes the dataplane.
pub struct Membership {
    fleet: Arc<Fleet>,
    node_id: String,
    session: u64,
}

impl Fleet {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves plain data behind, still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    pub fn join(self: &Arc<Self>, node_id: &str, pod: &str) -> Membership {
        let mut inner = self.lock();
        inner.next_session += 1;
        let session = inner.next_session;
        inner.dataplanes.insert(
            node_id.to_string(),
            Dataplane {
                node_id: node_id.to_string(),
                pod: pod.to_string(),
                session,
                applied: None,
                rejection: None,
            },
        );
        drop(inner);
        self.changed.send_replace(());
        crate::metrics::dataplanes(self.len());
        Membership {
            fleet: self.clone(),
            node_id: node_id.to_string(),
            session,
        }
    }

    /// The connected dataplanes, by node id.
    pub fn dataplanes(&self) -> Vec<Dataplane> {
        self.lock().dataplanes.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().dataplanes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn update(&self, node_id: &str, session: u64, f: impl FnOnce(&mut Dataplane)) {
        let mut inner = self.lock();
        if let Some(dp) = inner.dataplanes.get_mut(node_id).filter(|dp| dp.session == session) {
            f(dp);
            drop(inner);
            self.changed.send_replace(());
        }
    }
}

impl Membership {
    /// The dataplane applied `published`, without the routes in `left_out`.
    pub fn applied(&self, published: Arc<Published>, left_out: Vec<pb::RouteError>) {
        self.fleet.update(&self.node_id, self.session, |dp| {
            dp.rejection = (!left_out.is_empty()).then(|| Rejection {
                version: published.version,
                published: published.clone(),
                message: "routes left out".into(),
                route_errors: left_out,
            });
            dp.applied = Some(published);
        });
    }

    pub fn rejected(&self, rejection: Rejection) {
        self.fleet
            .update(&self.node_id, self.session, |dp| dp.rejection = Some(rejection));
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut inner = self.fleet.lock();
        if inner
            .dataplanes
            .get(&self.node_id)
            .is_some_and(|dp| dp.session == self.session)
        {
            inner.dataplanes.remove(&self.node_id);
            let len = inner.dataplanes.len();
            drop(inner);
            self.fleet.changed.send_replace(());
            crate::metrics::dataplanes(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnect_replaces_the_old_session_and_outlives_its_drop() {
        let fleet = Arc::new(Fleet::default());
        let old = fleet.join("dp-1", "ns/dp-1");
        let new = fleet.join("dp-1", "ns/dp-1");
        old.applied(Arc::new(Published::new(3, Default::default())), Vec::new());
        assert!(
            fleet.dataplanes()[0].applied.is_none(),
            "the stale session must not update the new one"
        );
        drop(old);
        assert_eq!(fleet.len(), 1);
        new.applied(Arc::new(Published::new(4, Default::default())), Vec::new());
        assert_eq!(fleet.dataplanes()[0].applied.as_ref().map(|p| p.version), Some(4));
        drop(new);
        assert!(fleet.is_empty());
    }
}
