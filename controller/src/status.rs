//! LuaRoute status: what the controller concluded about each route and what
//! the dataplanes reported, written back with server-side apply, with an
//! Event for each condition that changes. LuaLibrary status is built in
//! `library_status` and written by the same loop.
//!
//! Conditions follow the Gateway API's shape:
//! - `Accepted`: the current generation is valid and holds its locations.
//! - `ResolvedRefs`: every upstream Service exists (else `BackendNotFound`),
//!   and every LuaLibrary named is served as it is now (else
//!   `LibraryNotFound`, `LibraryInvalid` or `LibraryConflict`).
//! - `Programmed`: every connected dataplane acknowledged a version
//!   containing the current generation.
//!
//! A condition's `lastTransitionTime` changes only when its status does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::fleet::{Dataplane, Fleet};
use crate::libraries::LibraryVerdicts;
use crate::published::Published;
use crate::routes::{Acceptance, Verdict, Verdicts};
use moongate_route::RouteKey;
use moongate_route::crd::LuaRouteStatus;

pub const FIELD_MANAGER: &str = "moongate-controller";

/// Coalesces bursts of acknowledgements into one status write per route.
const COALESCE: Duration = Duration::from_millis(20);
/// Failed writes are retried at least this often.
const RETRY: Duration = Duration::from_secs(5);

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: i64,
    previous: Option<&LuaRouteStatus>,
    now: &Time,
) -> Condition {
    let previous = previous.map(|p| p.conditions.as_slice());
    condition_since(type_, ok, reason, message, generation, previous, now)
}

/// A condition whose `lastTransitionTime` is kept from `previous` when its
/// status is unchanged.
pub(crate) fn condition_since(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: i64,
    previous: Option<&[Condition]>,
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .and_then(|p| p.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: Some(generation),
        last_transition_time: since,
    }
}

/// The connected dataplanes as one status pass sees them, grouped by the
/// version they applied (usually one or two versions for the whole fleet), so
/// counting a route costs a lookup per version, not per dataplane.
pub struct FleetView {
    pub(crate) total: usize,
    pub(crate) by_version: Vec<(Arc<Published>, usize)>,
    /// Dataplanes with a rejection, in node order: rare.
    rejecting: Vec<Dataplane>,
}

impl FleetView {
    pub fn new(dataplanes: Vec<Dataplane>) -> FleetView {
        let mut by_version: Vec<(Arc<Published>, usize)> = Vec::new();
        for applied in dataplanes.iter().filter_map(|dp| dp.applied.as_ref()) {
            match by_version.iter_mut().find(|(p, _)| Arc::ptr_eq(p, applied)) {
                Some((_, n)) => *n += 1,
                None => by_version.push((applied.clone(), 1)),
            }
        }
        FleetView {
            total: dataplanes.len(),
            by_version,
            rejecting: dataplanes.into_iter().filter(|dp| dp.rejection.is_some()).collect(),
        }
    }

    /// Dataplanes serving `generation` of `key`: those that applied a
    /// version with it, less those that left it out of that version.
    fn programmed(&self, key: &RouteKey, generation: i64) -> usize {
        let applied: usize = self
            .by_version
            .iter()
            .filter(|(p, _)| p.generation(key) == Some(generation))
            .map(|(_, n)| n)
            .sum();
        let left_out = self
            .rejecting
            .iter()
            .filter(|dp| match (&dp.applied, &dp.rejection) {
                (Some(applied), Some(r)) => {
                    Arc::ptr_eq(applied, &r.published)
                        && applied.generation(key) == Some(generation)
                        && r.message_for(key).is_some()
                }
                _ => false,
            })
            .count();
        applied - left_out
    }
}

/// The status `key` should have now.
pub fn desired(
    key: &RouteKey,
    verdict: &Verdict,
    fleet: &FleetView,
    previous: Option<&LuaRouteStatus>,
    now: &Time,
) -> LuaRouteStatus {
    let generation = verdict.generation;
    let (accepted, reason, message) = match &verdict.acceptance {
        Acceptance::Accepted => (
            true,
            "Accepted",
            "the Lua compiled and the route holds its locations".to_string(),
        ),
        Acceptance::Invalid(m) => (false, "Invalid", m.clone()),
        Acceptance::Conflicted(m) => (false, "Conflicted", m.clone()),
        Acceptance::Unlinked(u) => (false, u.reason, u.message.clone()),
    };
    let accepted = condition("Accepted", accepted, reason, message, generation, previous, now);
    let refs = match &verdict.resolved_refs {
        Ok(()) => condition(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "all references resolved".into(),
            generation,
            previous,
            now,
        ),
        Err(u) => condition(
            "ResolvedRefs",
            false,
            u.reason,
            u.message.clone(),
            generation,
            previous,
            now,
        ),
    };
    let total = fleet.total;
    let programmed = fleet.programmed(key, generation);
    let nack = fleet.rejecting.iter().find_map(|dp| {
        let rejection = dp.rejection.as_ref()?;
        (rejection.published.generation(key) == Some(generation))
            .then(|| rejection.message_for(key))
            .flatten()
            .map(|m| format!("dataplane {}: {m}", dp.pod))
    });
    let is_current = verdict.published_generation == Some(generation);
    let (ok, reason, message) = if !is_current {
        let serving = match verdict.published_generation {
            Some(g) => format!("; dataplanes keep serving generation {g}"),
            None => String::new(),
        };
        (
            false,
            "NotAccepted",
            format!("generation {generation} is not accepted{serving}"),
        )
    } else if let Some(nack) = &nack {
        (false, "Rejected", nack.clone())
    } else if total == 0 {
        (false, "NoDataplanes", "no dataplane is connected".to_string())
    } else if programmed == total {
        (
            true,
            "Programmed",
            format!("programmed on {programmed}/{total} dataplanes"),
        )
    } else {
        (
            false,
            "Pending",
            format!("programmed on {programmed}/{total} dataplanes"),
        )
    };
    let programmed_condition = condition("Programmed", ok, reason, message, generation, previous, now);
    LuaRouteStatus {
        observed_generation: Some(generation),
        conditions: vec![accepted, refs, programmed_condition],
        programmed_dataplanes: Some(programmed as u32),
        total_dataplanes: Some(total as u32),
        nack_message: nack,
    }
}

/// Events for conditions that changed from `previous` to `next`.
fn transitions(previous: Option<&LuaRouteStatus>, next: &LuaRouteStatus) -> Vec<Event> {
    condition_events(previous.map(|p| p.conditions.as_slice()), &next.conditions)
}

/// Events for conditions that changed from `previous` to `next`.
pub(crate) fn condition_events(previous: Option<&[Condition]>, next: &[Condition]) -> Vec<Event> {
    next.iter()
        .filter(|c| !matches!(c.reason.as_str(), "Pending" | "NoDataplanes" | "NotAccepted"))
        .filter(|c| {
            let before = previous.and_then(|p| p.iter().find(|p| p.type_ == c.type_));
            before.is_none_or(|b| {
                b.status != c.status || b.reason != c.reason || (c.status == "False" && b.message != c.message)
            })
        })
        .map(|c| Event {
            type_: if c.status == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: c.reason.clone(),
            note: Some(truncate(&c.message, 1000)),
            action: c.type_.clone(),
            secondary: None,
        })
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Writes status whenever verdicts or dataplane reports change, until the
/// verdict channel closes.
pub async fn run(
    client: Client,
    recorder: Recorder,
    mut verdicts: watch::Receiver<Arc<Verdicts>>,
    mut library_verdicts: watch::Receiver<Arc<LibraryVerdicts>>,
    fleet: Arc<Fleet>,
) {
    let mut reports = fleet.subscribe();
    let mut written: HashMap<RouteKey, LuaRouteStatus> = HashMap::new();
    let mut libraries_written = crate::library_status::Written::default();
    let mut retry = tokio::time::interval(RETRY);
    loop {
        tokio::select! {
            changed = verdicts.changed() => if changed.is_err() {
                return;
            },
            _ = library_verdicts.changed() => {}
            _ = reports.changed() => {}
            _ = retry.tick() => {}
        }
        tokio::time::sleep(COALESCE).await;
        let current = verdicts.borrow_and_update().clone();
        let libraries = library_verdicts.borrow_and_update().clone();
        reports.borrow_and_update();
        let view = FleetView::new(fleet.dataplanes());
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        libraries_written
            .write(&client, &recorder, &libraries, &view, &now)
            .await;
        written.retain(|key, _| current.contains_key(key));
        let mut writes = Vec::new();
        for (key, verdict) in current.iter() {
            let previous = written.get(key).or(verdict.status.as_ref());
            let next = desired(key, verdict, &view, previous, &now);
            if previous == Some(&next) {
                continue;
            }
            let events = transitions(previous, &next);
            writes.push((key.clone(), verdict.reference.clone(), next, events));
        }
        let results: Vec<(RouteKey, Option<LuaRouteStatus>)> = futures::stream::iter(writes)
            .map(|(key, reference, status, events)| {
                let client = client.clone();
                let recorder = &recorder;
                async move {
                    let ok = write(&client, &key, &status).await;
                    if ok {
                        for event in &events {
                            if let Err(e) = recorder.publish(event, &reference).await {
                                tracing::warn!(route = %key, "could not record an event: {e}");
                            }
                        }
                    }
                    (key, ok.then_some(status))
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for (key, status) in results {
            if let Some(status) = status {
                written.insert(key, status);
            }
        }
    }
}

async fn write(client: &Client, key: &RouteKey, status: &LuaRouteStatus) -> bool {
    let api: Api<moongate_route::crd::LuaRoute> = Api::namespaced(client.clone(), &key.namespace);
    let patch = serde_json::json!({
        "apiVersion": "moongate.dev/v1alpha1",
        "kind": "LuaRoute",
        "status": status,
    });
    match api
        .patch_status(
            &key.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => {
            crate::metrics::status_written("ok");
            true
        }
        // Deleted meanwhile: the next verdicts drop it.
        Err(kube::Error::Api(e)) if e.code == 404 => true,
        Err(e) => {
            crate::metrics::status_written("error");
            tracing::warn!(route = %key, "status write failed: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(generation: i64, acceptance: Acceptance, published: Option<i64>) -> Verdict {
        Verdict {
            generation,
            acceptance,
            resolved_refs: Ok(()),
            published_generation: published,
            reference: Default::default(),
            status: None,
        }
    }

    fn dataplanes(fleet: &Arc<Fleet>, applied: &[Option<i64>]) -> Vec<crate::fleet::Membership> {
        applied
            .iter()
            .enumerate()
            .map(|(i, generation)| {
                let m = fleet.join(&format!("dp-{i}"), &format!("ns/dp-{i}"));
                if let Some(g) = generation {
                    let route = moongate_proto::v1::Route {
                        namespace: "ns".into(),
                        name: "r".into(),
                        generation: *g,
                        ..Default::default()
                    };
                    let routes = [(RouteKey::new("ns", "r"), Arc::new(route))].into();
                    m.applied(Arc::new(Published::new(1, routes)), Vec::new());
                }
                m
            })
            .collect()
    }

    fn get<'a>(s: &'a LuaRouteStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn programmed_needs_every_connected_dataplane_at_the_current_generation() {
        let key = RouteKey::new("ns", "r");
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(1000).unwrap());
        let fleet = Arc::new(Fleet::default());
        let _members = dataplanes(&fleet, &[Some(2), Some(1)]);
        let s = desired(
            &key,
            &verdict(2, Acceptance::Accepted, Some(2)),
            &FleetView::new(fleet.dataplanes()),
            None,
            &now,
        );
        assert_eq!((s.programmed_dataplanes, s.total_dataplanes), (Some(1), Some(2)));
        assert_eq!(get(&s, "Programmed").status, "False");
        assert_eq!(get(&s, "Programmed").reason, "Pending");
        assert_eq!(get(&s, "Accepted").status, "True");

        let fleet = Arc::new(Fleet::default());
        let _members = dataplanes(&fleet, &[Some(2), Some(2)]);
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(2000).unwrap());
        let t = desired(
            &key,
            &verdict(2, Acceptance::Accepted, Some(2)),
            &FleetView::new(fleet.dataplanes()),
            Some(&s),
            &later,
        );
        assert_eq!(get(&t, "Programmed").status, "True");
        assert_eq!(get(&t, "Programmed").message, "programmed on 2/2 dataplanes");
        assert_eq!(
            get(&t, "Programmed").last_transition_time,
            later,
            "status changed: new time"
        );
        assert_eq!(
            get(&t, "Accepted").last_transition_time,
            now,
            "status unchanged: time kept"
        );
        assert_eq!(
            transitions(Some(&s), &t)
                .iter()
                .map(|e| e.reason.as_str())
                .collect::<Vec<_>>(),
            ["Programmed"]
        );
    }

    #[test]
    fn an_invalid_generation_says_which_generation_keeps_serving() {
        let key = RouteKey::new("ns", "r");
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(1000).unwrap());
        let fleet = Arc::new(Fleet::default());
        let _members = dataplanes(&fleet, &[Some(1)]);
        let v = verdict(
            2,
            Acceptance::Invalid("content: line 3: unexpected symbol".into()),
            Some(1),
        );
        let s = desired(&key, &v, &FleetView::new(fleet.dataplanes()), None, &now);
        let accepted = get(&s, "Accepted");
        assert_eq!(
            (accepted.status.as_str(), accepted.reason.as_str()),
            ("False", "Invalid")
        );
        assert!(accepted.message.contains("line 3"));
        assert_eq!(accepted.observed_generation, Some(2));
        assert!(get(&s, "Programmed").message.contains("keep serving generation 1"));
        assert_eq!(s.programmed_dataplanes, Some(0));
        let events = transitions(None, &s);
        assert!(
            events
                .iter()
                .any(|e| e.reason == "Invalid" && e.type_ == EventType::Warning)
        );
    }
}
