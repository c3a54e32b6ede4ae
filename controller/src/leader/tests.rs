//! Tests of the leader election. The decision tests use plain values (specs,
//! instants, identities); the campaign tests run real candidates against a
//! tiny in-memory API server, with timings shortened to fractions of a second.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

use super::decision::{Attempt, Election, Step, StepDown};
use super::lease::is_status;
use super::*;

fn spec(holder: Option<&str>, duration: Option<i32>, renew_secs: i64) -> LeaseSpec {
    LeaseSpec {
        holder_identity: holder.map(str::to_string),
        lease_duration_seconds: duration,
        renew_time: Some(MicroTime(Timestamp::from_second(renew_secs).unwrap())),
        ..Default::default()
    }
}

fn settings(identity: &str) -> LeaseSettings {
    LeaseSettings::new("ns", "lease", identity)
}

const S: Duration = Duration::from_secs(1);

#[test]
fn missing_lease_is_created() {
    let mut o = Observed::default();
    o.observe(None, Instant::now());
    assert_eq!(decide(&o, Instant::now(), "me"), Action::Create);
}

#[test]
fn held_lease_expires_lease_duration_after_last_observed_change() {
    let t0 = Instant::now();
    let mut o = Observed::default();
    o.observe(Some(&spec(Some("other"), Some(15), 100)), t0);
    assert_eq!(decide(&o, t0, "me"), Action::Wait(15 * S));
    assert_eq!(decide(&o, t0 + 14 * S, "me"), Action::Wait(S));
    // Re-reading the same spec does not move the observation time...
    o.observe(Some(&spec(Some("other"), Some(15), 100)), t0 + 10 * S);
    assert_eq!(decide(&o, t0 + 15 * S, "me"), Action::Acquire);
    // ...a renewal does.
    o.observe(Some(&spec(Some("other"), Some(15), 112)), t0 + 16 * S);
    assert_eq!(decide(&o, t0 + 17 * S, "me"), Action::Wait(14 * S));
    assert_eq!(decide(&o, t0 + 31 * S, "me"), Action::Acquire);
}

#[test]
fn expiry_ignores_the_holders_clock() {
    let t0 = Instant::now();
    // renewTime far in the past (the holder's clock is behind): still fresh
    // because we only just saw it.
    let mut o = Observed::default();
    o.observe(Some(&spec(Some("other"), Some(15), 0)), t0);
    assert!(matches!(decide(&o, t0 + S, "me"), Action::Wait(_)));
    // renewTime far in the future (clock ahead): expired once it stops changing.
    let mut o = Observed::default();
    o.observe(Some(&spec(Some("other"), Some(15), 4_000_000_000)), t0);
    assert_eq!(decide(&o, t0 + 15 * S, "me"), Action::Acquire);
}

#[test]
fn uses_the_duration_stated_in_the_lease() {
    let t0 = Instant::now();
    let mut o = Observed::default();
    o.observe(Some(&spec(Some("other"), Some(3), 1)), t0);
    assert_eq!(decide(&o, t0 + 2 * S, "me"), Action::Wait(S));
    assert_eq!(decide(&o, t0 + 3 * S, "me"), Action::Acquire);
    let mut o = Observed::default();
    o.observe(Some(&spec(Some("other"), None, 1)), t0);
    assert_eq!(decide(&o, t0, "me"), Action::Wait(DEFAULT_LEASE_DURATION));
}

#[test]
fn unheld_lease_is_acquired_at_once_and_our_own_renewed() {
    let t0 = Instant::now();
    for empty in [None, Some("")] {
        let mut o = Observed::default();
        o.observe(Some(&spec(empty, Some(15), 1)), t0);
        assert_eq!(decide(&o, t0, "me"), Action::Acquire);
    }
    let mut o = Observed::default();
    o.observe(Some(&spec(Some("me"), Some(15), 1)), t0);
    assert_eq!(decide(&o, t0, "me"), Action::Renew);
}

#[test]
fn takeover_counts_a_transition_and_renewal_does_not() {
    let s = settings("me");
    let t1 = Timestamp::from_second(1000).unwrap();
    let t2 = Timestamp::from_second(2000).unwrap();

    let created = next_spec(Action::Create, None, &s, t1);
    assert_eq!(created.holder_identity.as_deref(), Some("me"));
    assert_eq!(created.lease_transitions, Some(0));
    assert_eq!(created.lease_duration_seconds, Some(15));
    assert_eq!(created.acquire_time, Some(MicroTime(t1)));
    assert_eq!(created.renew_time, Some(MicroTime(t1)));

    let renewed = next_spec(Action::Renew, Some(&created), &s, t2);
    assert_eq!(renewed.lease_transitions, Some(0));
    assert_eq!(renewed.acquire_time, Some(MicroTime(t1)));
    assert_eq!(renewed.renew_time, Some(MicroTime(t2)));

    let mut theirs = created.clone();
    theirs.holder_identity = Some("other".into());
    theirs.lease_transitions = Some(4);
    theirs.preferred_holder = Some("kept".into());
    let taken = next_spec(Action::Acquire, Some(&theirs), &s, t2);
    assert_eq!(taken.holder_identity.as_deref(), Some("me"));
    assert_eq!(taken.lease_transitions, Some(5));
    assert_eq!(taken.acquire_time, Some(MicroTime(t2)));
    assert_eq!(taken.renew_time, Some(MicroTime(t2)));
    assert_eq!(taken.preferred_holder.as_deref(), Some("kept"));

    // Taking over a released lease is a transition too.
    let released = released_spec(&taken, t2);
    assert_eq!(released.holder_identity, None);
    assert_eq!(released.lease_duration_seconds, Some(1));
    assert_eq!(released.lease_transitions, Some(5));
    let again = next_spec(Action::Acquire, Some(&released), &settings("next"), t2);
    assert_eq!(again.lease_transitions, Some(6));
}

#[test]
fn lease_duration_is_written_in_whole_seconds_rounded_up() {
    let mut s = settings("me");
    s.lease_duration = Duration::from_millis(1500);
    s.renew_deadline = Duration::from_millis(1000);
    s.retry_period = Duration::from_millis(100);
    s.validate().unwrap();
    assert_eq!(
        next_spec(Action::Create, None, &s, Timestamp::now()).lease_duration_seconds,
        Some(2)
    );
}

#[test]
fn settings_are_validated() {
    assert!(settings("me").validate().is_ok());
    let bad = [
        LeaseSettings {
            identity: String::new(),
            ..settings("me")
        },
        LeaseSettings {
            renew_deadline: Duration::from_secs(15),
            ..settings("me")
        },
        LeaseSettings {
            retry_period: Duration::from_secs(10),
            ..settings("me")
        },
        LeaseSettings {
            retry_period: Duration::ZERO,
            ..settings("me")
        },
    ];
    for s in bad {
        assert!(matches!(s.validate(), Err(LeaderError::Settings(_))), "{s:?}");
    }
}

#[test]
fn standby_polls_jittered_and_the_leader_renews_at_the_full_period() {
    let s = settings("me");
    let t0 = Instant::now();
    let mut e = Election::default();
    let mut round = e.begin(&s, t0, || 0.8).unwrap();
    // A standby has no deadline; its calls are bounded by renew_deadline.
    assert_eq!(round.budget, 10 * S);
    assert_eq!(e.sleep(&round, &s, t0), Duration::from_millis(1600));
    assert_eq!(e.record(&mut round, Some(Attempt::Held), "me"), Step::Elected);
    assert!(e.leading());

    let mut round = e.begin(&s, t0 + S, || panic!("the leader does not jitter")).unwrap();
    // The leader's calls are bounded by the time left before its deadline.
    assert_eq!(round.budget, 9 * S);
    assert_eq!(e.sleep(&round, &s, t0 + S), 2 * S);
    assert_eq!(e.record(&mut round, Some(Attempt::Held), "me"), Step::Unchanged);
    assert!(e.leading());
}

#[test]
fn leader_steps_down_a_renew_deadline_after_its_last_renewal_was_sent() {
    let s = settings("me");
    let t0 = Instant::now();
    let mut e = Election::default();
    let mut round = e.begin(&s, t0, || 1.0).unwrap();
    // The write succeeds late in the round; the deadline still counts from t0.
    assert_eq!(e.record(&mut round, Some(Attempt::Held), "me"), Step::Elected);

    // Failed renewals change nothing but the time left.
    let mut round = e.begin(&s, t0 + 9 * S + S / 2, || 1.0).unwrap();
    assert_eq!(round.budget, S / 2);
    assert_eq!(e.record(&mut round, None, "me"), Step::Unchanged);
    assert!(e.leading());
    // The sleep ends at the deadline, so the next round starts on time.
    assert_eq!(
        e.sleep(&round, &s, t0 + 9 * S + Duration::from_millis(800)),
        Duration::from_millis(200)
    );
    assert_eq!(e.sleep(&round, &s, t0 + 11 * S), Duration::ZERO);

    let down = e.begin(&s, t0 + 10 * S, || 1.0).unwrap_err();
    assert_eq!(down, StepDown::Unrenewed(10 * S));
    assert_eq!(
        down.to_string(),
        "no successful renewal within the renew deadline (10s)"
    );
}

#[test]
fn leader_that_finds_another_holder_steps_down_at_once() {
    let s = settings("me");
    let t0 = Instant::now();
    let mut e = Election::default();
    let mut round = e.begin(&s, t0, || 1.0).unwrap();
    e.record(&mut round, Some(Attempt::Held), "me");
    let mut round = e.begin(&s, t0 + S, || 1.0).unwrap();
    let taken = Attempt::NotHeld {
        holder: Some("x".into()),
        retry_in: Some(S),
    };
    let step = e.record(&mut round, Some(taken), "me");
    assert_eq!(step, Step::StepDown(StepDown::Taken(Some("x".into()))));
    let Step::StepDown(reason) = step else { unreachable!() };
    assert_eq!(reason.to_string(), "the lease is now held by x");
    assert_eq!(
        StepDown::Taken(None).to_string(),
        "the lease is now held by another candidate"
    );
}

#[test]
fn standby_wakes_when_the_lease_expires_and_reports_each_new_holder_once() {
    let s = settings("me");
    let t0 = Instant::now();
    let mut e = Election::default();
    let not_held = |holder: Option<&str>, retry_in| {
        Some(Attempt::NotHeld {
            holder: holder.map(str::to_string),
            retry_in,
        })
    };

    let mut round = e.begin(&s, t0, || 1.0).unwrap();
    let step = e.record(&mut round, not_held(Some("a"), Some(S / 2)), "me");
    assert_eq!(step, Step::Following(Some("a".into())));
    // The Lease expires before the next poll: wake then.
    assert_eq!(e.sleep(&round, &s, t0), S / 2);

    let mut round = e.begin(&s, t0, || 1.0).unwrap();
    assert_eq!(
        e.record(&mut round, not_held(Some("a"), Some(5 * S)), "me"),
        Step::Unchanged
    );
    assert_eq!(e.sleep(&round, &s, t0), 2 * S);

    let mut round = e.begin(&s, t0, || 1.0).unwrap();
    assert_eq!(
        e.record(&mut round, not_held(Some("b"), None), "me"),
        Step::Following(Some("b".into()))
    );
    assert_eq!(e.record(&mut round, None, "me"), Step::Unchanged);
    assert_eq!(e.record(&mut round, not_held(None, None), "me"), Step::Following(None));
    assert!(!e.leading());
}

/// A tiny in-memory API server holding Leases, speaking just enough HTTP/1.1
/// for kube's client. Each candidate talks to its own listener, so one can be
/// cut off (its requests hang) while the others keep working.
mod fake {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use k8s_openapi::api::coordination::v1::Lease;
    use serde_json::json;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    #[derive(Default)]
    pub struct Store {
        leases: Mutex<(u64, HashMap<String, Lease>)>,
    }

    impl Store {
        pub fn get(&self, name: &str) -> Option<Lease> {
            self.leases.lock().unwrap().1.get(name).cloned()
        }

        fn handle(&self, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
            let path = path.split('?').next().unwrap_or_default();
            let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
            // apis/coordination.k8s.io/v1/namespaces/{ns}/leases[/{name}]
            if parts.len() < 6 || parts[..3] != ["apis", "coordination.k8s.io", "v1"] || parts[5] != "leases" {
                return status(404, "NotFound", "no such path");
            }
            let mut guard = self.leases.lock().unwrap();
            let (rv, leases) = &mut *guard;
            match (method, parts.get(6)) {
                ("GET", Some(name)) => match leases.get(*name) {
                    Some(l) => (200, serde_json::to_value(l).unwrap()),
                    None => status(404, "NotFound", "lease not found"),
                },
                ("POST", None) => {
                    let mut lease: Lease = serde_json::from_slice(body).unwrap();
                    let name = lease.metadata.name.clone().unwrap();
                    if leases.contains_key(&name) {
                        return status(409, "AlreadyExists", "lease already exists");
                    }
                    *rv += 1;
                    lease.metadata.resource_version = Some(rv.to_string());
                    leases.insert(name, lease.clone());
                    (201, serde_json::to_value(lease).unwrap())
                }
                ("PUT", Some(name)) => {
                    let mut lease: Lease = serde_json::from_slice(body).unwrap();
                    let Some(current) = leases.get(*name) else {
                        return status(404, "NotFound", "lease not found");
                    };
                    if lease.metadata.resource_version != current.metadata.resource_version {
                        return status(409, "Conflict", "the object has been modified");
                    }
                    *rv += 1;
                    lease.metadata.resource_version = Some(rv.to_string());
                    leases.insert(name.to_string(), lease.clone());
                    (200, serde_json::to_value(lease).unwrap())
                }
                _ => status(405, "MethodNotAllowed", "not supported"),
            }
        }
    }

    fn status(code: u16, reason: &str, message: &str) -> (u16, serde_json::Value) {
        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "code": code, "reason": reason, "message": message});
        (code, body)
    }

    /// Serves `store` on a fresh port; requests hang while `cut` is set.
    pub async fn serve(store: Arc<Store>, cut: Arc<AtomicBool>) -> kube::Client {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let (store, cut) = (store.clone(), cut.clone());
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut read = BufReader::new(read);
                    loop {
                        let mut line = String::new();
                        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut it = line.split_whitespace();
                        let (method, path) = (it.next().unwrap_or("").to_string(), it.next().unwrap_or("").to_string());
                        let mut length = 0;
                        loop {
                            let mut header = String::new();
                            if read.read_line(&mut header).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let header = header.trim_end();
                            if header.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = header.split_once(':')
                                && k.eq_ignore_ascii_case("content-length")
                            {
                                length = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; length];
                        if read.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        while cut.load(Ordering::SeqCst) {
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        }
                        let (code, json) = store.handle(&method, &path, &body);
                        let body = serde_json::to_vec(&json).unwrap();
                        let head = format!(
                            "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        if write.write_all(head.as_bytes()).await.is_err() || write.write_all(&body).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }
}

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn fast(identity: &str) -> LeaseSettings {
    LeaseSettings {
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(600),
        retry_period: Duration::from_millis(100),
        ..settings(identity)
    }
}

struct Running {
    client: kube::Client,
    cut: Arc<AtomicBool>,
    leading: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<Result<(), LeaderError>>,
}

async fn start(store: &Arc<Store>, identity: &str) -> Running {
    let cut = Arc::new(AtomicBool::new(false));
    let client = fake::serve(store.clone(), cut.clone()).await;
    let (tx, leading) = watch::channel(false);
    let task = tokio::spawn(campaign(client.clone(), fast(identity), tx));
    Running {
        client,
        cut,
        leading,
        task,
    }
}

use fake::Store;

/// Waits until exactly one of `candidates` leads and returns its index.
async fn one_leader(candidates: &mut [&mut Running]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let leaders: Vec<usize> = (0..candidates.len())
            .filter(|&i| *candidates[i].leading.borrow())
            .collect();
        assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
        if let [i] = leaders[..] {
            return i;
        }
        assert!(Instant::now() < deadline, "nobody became leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_leading(r: &mut Running, within: Duration) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(within, r.leading.wait_for(|l| *l))
        .await
        .expect("did not become leader in time")
        .unwrap();
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_then_failover_within_lease_duration() {
    let store = Arc::new(Store::default());
    let mut a = start(&store, "a").await;
    let mut b = start(&store, "b").await;
    let first = one_leader(&mut [&mut a, &mut b]).await;
    let (leader, standby) = if first == 0 { (a, b) } else { (b, a) };
    let mut standby = standby;
    // Several renewals go by and the standby stays a standby.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!*standby.leading.borrow());
    let held = store.get("lease").unwrap().spec.unwrap();
    let leader_id = if first == 0 { "a" } else { "b" };
    assert_eq!(held.holder_identity.as_deref(), Some(leader_id));
    assert_eq!(held.lease_transitions, Some(0));
    assert_eq!(held.lease_duration_seconds, Some(1));

    // The leader dies without releasing: the standby waits out the lease.
    leader.task.abort();
    let took = wait_leading(&mut standby, Duration::from_secs(3)).await;
    // The last renewal was at most one retry period before the abort, and
    // the lease lasts 1s from when the standby saw it.
    assert!(took >= Duration::from_millis(850), "took over too early: {took:?}");
    assert!(
        took <= Duration::from_millis(1100 + 400),
        "took over too late: {took:?}"
    );
    let held = store.get("lease").unwrap().spec.unwrap();
    assert_ne!(held.holder_identity.as_deref(), Some(leader_id));
    assert_eq!(held.lease_transitions, Some(1));
    assert!(held.acquire_time.is_some() && held.renew_time.is_some());
    standby.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_leader_steps_down_before_the_standby_takes_over() {
    let store = Arc::new(Store::default());
    let mut a = start(&store, "a").await;
    wait_leading(&mut a, Duration::from_secs(2)).await;
    let mut b = start(&store, "b").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!*b.leading.borrow());

    let cut_at = Instant::now();
    a.cut.store(true, Ordering::SeqCst);
    let result = tokio::time::timeout(Duration::from_secs(2), &mut a.task)
        .await
        .expect("the cut-off leader kept leading")
        .unwrap();
    let stepped_down = cut_at.elapsed();
    assert!(matches!(result, Err(LeaderError::Lost { .. })), "{result:?}");
    assert!(!*a.leading.borrow(), "leading must be false after losing");
    assert!(stepped_down <= Duration::from_millis(600 + 300), "{stepped_down:?}");

    // The standby cannot have taken over before the old leader stepped down:
    // it waits a full lease duration after it last saw a renewal.
    assert!(!*b.leading.borrow(), "two leaders at once");
    let took = wait_leading(&mut b, Duration::from_secs(2)).await;
    assert!(
        stepped_down + took >= Duration::from_millis(850),
        "{stepped_down:?} + {took:?}"
    );
    assert_eq!(
        store.get("lease").unwrap().spec.unwrap().holder_identity.as_deref(),
        Some("b")
    );
    b.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_hands_over_at_once() {
    let store = Arc::new(Store::default());
    let mut a = start(&store, "a").await;
    wait_leading(&mut a, Duration::from_secs(2)).await;
    let mut b = start(&store, "b").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A standby releasing does nothing.
    assert!(!release(&b.client, &fast("b")).await.unwrap());
    assert!(!*b.leading.borrow());

    a.task.abort();
    let _ = (&mut a.task).await;
    assert!(release(&a.client, &fast("a")).await.unwrap());
    // Released (or already taken by b, which polls every 100ms).
    let holder = store.get("lease").unwrap().spec.unwrap().holder_identity;
    assert_ne!(holder.as_deref(), Some("a"));
    // Well under the 1s lease: the standby does not wait for expiry.
    let took = wait_leading(&mut b, Duration::from_millis(500)).await;
    assert!(took < Duration::from_millis(300), "{took:?}");
    assert_eq!(store.get("lease").unwrap().spec.unwrap().lease_transitions, Some(1));
    b.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_taken_from_under_the_leader_is_lost() {
    let store = Arc::new(Store::default());
    let mut a = start(&store, "a").await;
    wait_leading(&mut a, Duration::from_secs(2)).await;
    // Someone else writes the lease (as if a's renewals had stalled unseen).
    let api: Api<Lease> = Api::namespaced(a.client.clone(), "ns");
    loop {
        let mut lease = api.get("lease").await.unwrap();
        lease.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
        match api.replace("lease", &PostParams::default(), &lease).await {
            Ok(_) => break,
            // a renewed in between: read again.
            Err(e) if is_status(&e, 409) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    let result = tokio::time::timeout(Duration::from_secs(1), &mut a.task)
        .await
        .expect("did not notice the lease was taken")
        .unwrap();
    match result {
        Err(LeaderError::Lost { reason, .. }) => assert!(reason.contains("intruder"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(!*a.leading.borrow());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_candidates_one_leader() {
    let store = Arc::new(Store::default());
    let mut rs = Vec::new();
    for i in 0..5 {
        rs.push(start(&store, &format!("c{i}")).await);
    }
    let mut refs: Vec<&mut Running> = rs.iter_mut().collect();
    one_leader(&mut refs).await;
    // It stays exactly one for a while.
    for _ in 0..50 {
        let n = rs.iter().filter(|r| *r.leading.borrow()).count();
        assert_eq!(n, 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in rs {
        r.task.abort();
    }
}
