//! LuaLibrary status, written with server-side apply by the status loop
//! (`status::run`), with an Event for each condition that changes.
//!
//! Conditions:
//! - `Accepted`: the current generation compiled (`Accepted`), or not
//!   (`Invalid`, the message naming each module and Lua line, and the
//!   generation the routes keep meanwhile).
//! - `Programmed`: every connected dataplane applied a version carrying the
//!   current generation; `NotReferenced` while no published route names it.

use std::collections::HashMap;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::Recorder;
use kube::{Api, Client};

use crate::libraries::{LibraryVerdict, LibraryVerdicts};
use crate::status::{FIELD_MANAGER, FleetView, condition_events, condition_since};
use moongate_route::LibraryKey;
use moongate_route::crd::{LuaLibrary, LuaLibraryStatus};

/// Routes listed in a library's status, at most.
const ROUTES_LISTED: usize = 16;

/// The status `key` should have now.
pub fn desired(
    key: &LibraryKey,
    verdict: &LibraryVerdict,
    fleet: &FleetView,
    previous: Option<&LuaLibraryStatus>,
    now: &Time,
) -> LuaLibraryStatus {
    let generation = verdict.generation;
    let before = previous.map(|p| p.conditions.as_slice());
    let keep = match verdict.serving_generation {
        Some(g) if g != generation => format!("; the routes naming it keep its generation {g}"),
        _ => String::new(),
    };
    let accepted = match &verdict.accepted {
        Ok(()) => condition_since(
            "Accepted",
            true,
            "Accepted",
            "the modules compiled".into(),
            generation,
            before,
            now,
        ),
        Err(problems) => condition_since(
            "Accepted",
            false,
            "Invalid",
            format!("{problems}{keep}"),
            generation,
            before,
            now,
        ),
    };
    let applied: usize = fleet
        .by_version
        .iter()
        .filter(|(p, _)| p.library_generation(key) == Some(generation))
        .map(|(_, n)| n)
        .sum();
    let (ok, reason, message) = if verdict.accepted.is_err() {
        (
            false,
            "NotAccepted",
            format!("generation {generation} is not accepted{keep}"),
        )
    } else if verdict.published_generation != Some(generation) {
        (
            false,
            "NotReferenced",
            "no published LuaRoute names this library".to_string(),
        )
    } else if fleet.total == 0 {
        (false, "NoDataplanes", "no dataplane is connected".to_string())
    } else if applied == fleet.total {
        (
            true,
            "Programmed",
            format!("programmed on {applied}/{} dataplanes", fleet.total),
        )
    } else {
        (
            false,
            "Pending",
            format!("programmed on {applied}/{} dataplanes", fleet.total),
        )
    };
    let programmed = condition_since("Programmed", ok, reason, message, generation, before, now);
    let mut routes: Vec<String> = verdict
        .routes
        .iter()
        .take(ROUTES_LISTED)
        .map(|r| r.name.clone())
        .collect();
    if verdict.routes.len() > ROUTES_LISTED {
        routes.push("…".into());
    }
    LuaLibraryStatus {
        observed_generation: Some(generation),
        conditions: vec![accepted, programmed],
        serving_generation: verdict.serving_generation,
        routes,
        modules: Some(verdict.modules.join(",")),
    }
}

/// The statuses this controller wrote, so unchanged ones are not rewritten.
#[derive(Default)]
pub struct Written(HashMap<LibraryKey, LuaLibraryStatus>);

impl Written {
    /// Writes every status that differs from what was last written or read.
    pub async fn write(
        &mut self,
        client: &Client,
        recorder: &Recorder,
        verdicts: &LibraryVerdicts,
        fleet: &FleetView,
        now: &Time,
    ) {
        self.0.retain(|key, _| verdicts.contains_key(key));
        let mut writes = Vec::new();
        for (key, verdict) in verdicts {
            let previous = self.0.get(key).or(verdict.status.as_ref());
            let next = desired(key, verdict, fleet, previous, now);
            if previous == Some(&next) {
                continue;
            }
            let events = condition_events(previous.map(|p| p.conditions.as_slice()), &next.conditions);
            writes.push((key.clone(), verdict.reference.clone(), next, events));
        }
        let results: Vec<(LibraryKey, Option<LuaLibraryStatus>)> = futures::stream::iter(writes)
            .map(|(key, reference, status, events)| async move {
                let ok = patch(client, &key, &status).await;
                if ok {
                    for event in &events {
                        if let Err(e) = recorder.publish(event, &reference).await {
                            tracing::warn!(library = %key, "could not record an event: {e}");
                        }
                    }
                }
                (key, ok.then_some(status))
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for (key, status) in results {
            if let Some(status) = status {
                self.0.insert(key, status);
            }
        }
    }
}

async fn patch(client: &Client, key: &LibraryKey, status: &LuaLibraryStatus) -> bool {
    let api: Api<LuaLibrary> = Api::namespaced(client.clone(), &key.namespace);
    let patch = serde_json::json!({
        "apiVersion": "moongate.dev/v1alpha1",
        "kind": "LuaLibrary",
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
            tracing::warn!(library = %key, "status write failed: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use crate::fleet::Fleet;
    use crate::published::Published;
    use moongate_proto::v1 as pb;

    fn verdict(generation: i64, accepted: Result<(), String>, serving: Option<i64>) -> LibraryVerdict {
        LibraryVerdict {
            generation,
            accepted,
            published_generation: serving,
            serving_generation: serving,
            routes: vec![moongate_route::RouteKey::new("ns", "a")],
            modules: vec!["resty.jit-uuid".into(), "util".into()],
            reference: Default::default(),
            status: None,
        }
    }

    #[test]
    fn an_invalid_generation_names_the_module_line_and_the_generation_kept() {
        let key = LibraryKey::new("ns", "shared");
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(1000).unwrap());
        let fleet = Arc::new(Fleet::default());
        let member = fleet.join("dp-0", "ns/dp-0");
        let library = Arc::new(pb::Library {
            namespace: "ns".into(),
            name: "shared".into(),
            generation: 1,
            modules: Vec::new(),
        });
        member.applied(
            Arc::new(Published::with_libraries(
                1,
                BTreeMap::new(),
                Vec::new(),
                BTreeMap::from([(key.clone(), library)]),
            )),
            Vec::new(),
        );
        let view = FleetView::new(fleet.dataplanes());
        let good = desired(&key, &verdict(1, Ok(()), Some(1)), &view, None, &now);
        let programmed = good.conditions.iter().find(|c| c.type_ == "Programmed").unwrap();
        assert_eq!(
            (programmed.status.as_str(), programmed.reason.as_str()),
            ("True", "Programmed")
        );
        assert_eq!(good.modules.as_deref(), Some("resty.jit-uuid,util"));
        assert_eq!(good.routes, ["a"]);

        let bad = desired(
            &key,
            &verdict(
                2,
                Err("library ns/shared: module util: line 3: 'end' expected".into()),
                Some(1),
            ),
            &view,
            Some(&good),
            &now,
        );
        let accepted = &bad.conditions[0];
        assert_eq!(
            (accepted.status.as_str(), accepted.reason.as_str()),
            ("False", "Invalid")
        );
        assert!(
            accepted.message.contains("module util: line 3")
                && accepted.message.ends_with("the routes naming it keep its generation 1"),
            "{}",
            accepted.message
        );
        assert_eq!(accepted.observed_generation, Some(2));
        assert_eq!((bad.observed_generation, bad.serving_generation), (Some(2), Some(1)));
    }
}
