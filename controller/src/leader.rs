//! Leader election on a `coordination.k8s.io/v1` Lease, with the semantics of
//! client-go's `leaderelection` package (no third-party crate).
//!
//! Every controller replica runs [`campaign`]. It reads the Lease, creates it when
//! missing, and takes it over when its holder has let it expire; the leader renews
//! it every `retry_period`. All writes carry the `resourceVersion` that was read,
//! so of two candidates racing for the same Lease exactly one write succeeds and
//! the other gets 409 Conflict (or AlreadyExists on create) and keeps campaigning.
//!
//! Expiry is judged by the local monotonic clock, never by comparing clocks
//! between machines: a candidate records *when it observed* the Lease's spec
//! (holder, renewTime, …) last change, and considers the Lease expired
//! `leaseDurationSeconds` after that moment. The holder's `renewTime` is only
//! compared for change.
//!
//! Invariants and guarantees:
//! - `leading` is set to `true` only after a write naming us as holder succeeded,
//!   and to `false` before [`campaign`] returns; `campaign` never returns `Ok`:
//!   only an error when leadership is lost ([`LeaderError::Lost`]) or the settings
//!   are invalid ([`LeaderError::Settings`]).
//!   The caller then exits the process, as client-go controllers do.
//! - The leader gives up when no renewal has succeeded for `renew_deadline`,
//!   counted from when the last successful renewal was *sent*. Since
//!   `renew_deadline < lease_duration`, it stops before any standby can judge the
//!   Lease expired (standbys start counting only after they see the renewal).
//!   Each API call is bounded by the time left before that deadline.
//! - A standby polls every `retry_period` (jittered down by up to 20%), and when
//!   it knows when the Lease will expire, wakes at that moment. So when the
//!   leader dies, a standby takes over within `lease_duration + retry_period`
//!   (plus one API round trip) of the leader's last renewal.
//! - `leaseTransitions` counts changes of holder (creation is 0); `acquireTime` is
//!   the time of the last change of holder; `renewTime` of the last write.
//! - Identities must be unique per process (e.g. the pod name): a candidate that
//!   finds its own identity in the Lease treats the Lease as its own.
//!
//! On graceful shutdown, stop the campaign (drop its future) and the leader's
//! work first, then call [`release`] so a standby takes over at once instead of
//! waiting for the Lease to expire.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Lease duration assumed for a Lease that does not state one.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Where the Lease is, who we are, and the timings (as in client-go).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// Unique per process, e.g. the pod name.
    pub identity: String,
    /// How long a standby waits, after it saw the Lease last change, before it
    /// takes the Lease over. Written as whole seconds (rounded up). Default 15s.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal. Default 10s.
    pub renew_deadline: Duration,
    /// How often candidates poll and the leader renews. Default 2s.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// Settings with client-go's default timings (15s / 10s / 2s).
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseSettings {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    /// Checks `lease_duration > renew_deadline > retry_period > 0` and that the
    /// names are set.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let fail = |m: &str| Err(LeaderError::Settings(m.to_string()));
        if self.namespace.is_empty() || self.name.is_empty() {
            return fail("the lease namespace and name must be set");
        }
        if self.identity.is_empty() {
            return fail("the identity must be set");
        }
        if self.retry_period.is_zero() {
            return fail("retry_period must be positive");
        }
        if self.renew_deadline <= self.retry_period {
            return fail("renew_deadline must be greater than retry_period");
        }
        if self.lease_duration <= self.renew_deadline {
            return fail("lease_duration must be greater than renew_deadline");
        }
        if self.lease_duration.as_secs_f64().ceil() > f64::from(i32::MAX) {
            return fail("lease_duration is too long");
        }
        Ok(())
    }

    /// `lease_duration` in whole seconds, rounded up, at least 1.
    fn lease_duration_seconds(&self) -> i32 {
        (self.lease_duration.as_secs_f64().ceil() as i32).max(1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("invalid leader election settings: {0}")]
    Settings(String),
    /// We were leading and are no longer; the process should exit.
    #[error("lost the lease {namespace}/{name}: {reason}")]
    Lost {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("lease: {0}")]
    Kube(#[from] kube::Error),
}

/// What a candidate knows about the Lease: its spec as last read, and when
/// (local monotonic time) that spec was first seen in its current form.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// `None` when the Lease does not exist (or was never read).
    pub spec: Option<LeaseSpec>,
    /// When `spec` was last seen to change. `None` only before the first read.
    pub since: Option<Instant>,
}

impl Observed {
    /// Records a read of the Lease (`None`: it does not exist) at `now`.
    /// `since` moves only when the spec changed, like client-go's observedTime.
    pub fn observe(&mut self, spec: Option<&LeaseSpec>, now: Instant) {
        if self.since.is_none() || self.spec.as_ref() != spec {
            self.spec = spec.cloned();
            self.since = Some(now);
        }
    }

    /// The holder, if any (an empty identity is no holder).
    pub fn holder(&self) -> Option<&str> {
        holder(self.spec.as_ref())
    }
}

fn holder(spec: Option<&LeaseSpec>) -> Option<&str> {
    spec?.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// What to do with the Lease, given what we observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The Lease does not exist: create it, naming us.
    Create,
    /// Another candidate holds the Lease; it expires in this long unless renewed.
    Wait(Duration),
    /// Nobody holds the Lease, or its holder let it expire: take it over.
    Acquire,
    /// We hold the Lease: renew it.
    Renew,
}

/// Decides what `me` does with the Lease at `now`. Pure: all the timing logic of
/// the election is here.
pub fn decide(observed: &Observed, now: Instant, me: &str) -> Action {
    let Some(spec) = &observed.spec else {
        return Action::Create;
    };
    match holder(Some(spec)) {
        None => Action::Acquire,
        Some(h) if h == me => Action::Renew,
        Some(_) => {
            let duration = spec
                .lease_duration_seconds
                .map_or(DEFAULT_LEASE_DURATION, |s| Duration::from_secs(s.max(0) as u64));
            let expires = observed.since.unwrap_or(now) + duration;
            if now < expires {
                Action::Wait(expires - now)
            } else {
                Action::Acquire
            }
        }
    }
}

/// The spec to write for `action` (not [`Action::Wait`]) over the current one,
/// at wall-clock time `now`.
pub fn next_spec(action: Action, current: Option<&LeaseSpec>, settings: &LeaseSettings, now: Timestamp) -> LeaseSpec {
    let now = MicroTime(now);
    let mut spec = current.cloned().unwrap_or_default();
    let ours = holder(current) == Some(settings.identity.as_str());
    match action {
        Action::Create => {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(0);
        }
        Action::Renew | Action::Acquire if ours => {
            if spec.acquire_time.is_none() {
                spec.acquire_time = Some(now.clone());
            }
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0));
        }
        Action::Acquire | Action::Renew | Action::Wait(_) => {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
    }
    spec.holder_identity = Some(settings.identity.clone());
    spec.lease_duration_seconds = Some(settings.lease_duration_seconds());
    spec.renew_time = Some(now);
    spec
}

/// The spec [`release`] writes: no holder, a 1s duration, transitions kept.
pub fn released_spec(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        ..current.clone()
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// The outcome of one try to acquire or renew.
#[derive(Debug)]
enum Attempt {
    /// Our write naming us as holder succeeded.
    Held,
    /// Someone else holds the Lease or won the race; `retry_in` is when it expires, if known.
    NotHeld {
        holder: Option<String>,
        retry_in: Option<Duration>,
    },
}

struct Candidate {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Observed,
    /// The Lease as we last wrote it while holding it: renewals write over it
    /// directly, skipping the read, until a write conflicts.
    ours: Option<Lease>,
}

impl Candidate {
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let pp = PostParams::default();
        let name = self.settings.name.clone();
        if let Some(mut lease) = self.ours.take() {
            lease.spec = Some(next_spec(
                Action::Renew,
                lease.spec.as_ref(),
                &self.settings,
                Timestamp::now(),
            ));
            match self.api.replace(&name, &pp, &lease).await {
                Ok(written) => return Ok(self.wrote(written)),
                Err(e) if is_status(&e, 409) => debug!(lease = %name, "renewal conflicted; reading the lease"),
                Err(e) => return Err(e),
            }
        }

        let lease = self.api.get_opt(&name).await?;
        let now = Instant::now();
        let spec = lease.as_ref().map(|l| l.spec.clone().unwrap_or_default());
        self.observed.observe(spec.as_ref(), now);
        let action = decide(&self.observed, now, &self.settings.identity);
        let not_held = |observed: &Observed, retry_in| Attempt::NotHeld {
            holder: observed.holder().map(str::to_string),
            retry_in,
        };
        let result = match (action, lease) {
            (Action::Wait(left), _) => return Ok(not_held(&self.observed, Some(left))),
            (Action::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(next_spec(Action::Create, None, &self.settings, Timestamp::now())),
                };
                self.api.create(&pp, &lease).await
            }
            (action, Some(mut lease)) => {
                lease.spec = Some(next_spec(action, lease.spec.as_ref(), &self.settings, Timestamp::now()));
                self.api.replace(&name, &pp, &lease).await
            }
        };
        match result {
            Ok(written) => Ok(self.wrote(written)),
            // Another candidate wrote first: it holds the Lease now.
            Err(e) if is_status(&e, 409) => Ok(not_held(&self.observed, None)),
            Err(e) => Err(e),
        }
    }

    fn wrote(&mut self, lease: Lease) -> Attempt {
        self.observed
            .observe(Some(&lease.spec.clone().unwrap_or_default()), Instant::now());
        self.ours = Some(lease);
        Attempt::Held
    }
}

/// Campaigns for the Lease forever (see the module doc). Sends `true` on
/// `leading` once the Lease is acquired. When the leader cannot renew within
/// `renew_deadline`, or finds the Lease held by another, it sends `false` and
/// returns [`LeaderError::Lost`]; the caller should exit. Never returns `Ok`.
/// API errors are logged and retried (while leading, until the renew deadline).
/// Works with any [`kube::Client`].
pub async fn campaign(
    client: kube::Client,
    settings: LeaseSettings,
    leading: watch::Sender<bool>,
) -> Result<(), LeaderError> {
    settings.validate()?;
    let mut candidate = Candidate {
        api: Api::namespaced(client, &settings.namespace),
        settings: settings.clone(),
        observed: Observed::default(),
        ours: None,
    };
    let lease = format!("{}/{}", settings.namespace, settings.name);
    let identity = settings.identity.as_str();
    let lost = |reason: String| {
        warn!(%lease, %identity, %reason, "lost leadership");
        leading.send_replace(false);
        LeaderError::Lost {
            namespace: settings.namespace.clone(),
            name: settings.name.clone(),
            reason,
        }
    };
    // While leading: when the last successful renewal was sent.
    let mut renewed: Option<Instant> = None;
    let mut last_holder: Option<String> = None;
    info!(%lease, %identity, "campaigning for leadership");
    loop {
        let started = Instant::now();
        let deadline = renewed.map(|t| t + settings.renew_deadline);
        if deadline.is_some_and(|d| started >= d) {
            return Err(lost(format!(
                "no successful renewal within the renew deadline ({:?})",
                settings.renew_deadline
            )));
        }
        let budget = deadline.map_or(settings.renew_deadline, |d| d - started);
        let mut sleep = if renewed.is_some() {
            settings.retry_period
        } else {
            settings.retry_period.mul_f64(rand::random_range(0.8..=1.0))
        };
        match tokio::time::timeout(budget, candidate.try_acquire_or_renew()).await {
            Ok(Ok(Attempt::Held)) => {
                if renewed.is_none() {
                    info!(%lease, %identity, "became leader");
                    leading.send_replace(true);
                }
                renewed = Some(started);
                last_holder = Some(identity.to_string());
            }
            Ok(Ok(Attempt::NotHeld { holder, retry_in })) => {
                if renewed.is_some() {
                    candidate.ours = None;
                    let by = holder.as_deref().unwrap_or("another candidate");
                    return Err(lost(format!("the lease is now held by {by}")));
                }
                if holder != last_holder {
                    info!(%lease, %identity, leader = holder.as_deref().unwrap_or(""), "lease held by another candidate");
                    last_holder = holder;
                }
                if let Some(left) = retry_in {
                    sleep = sleep.min(left);
                }
            }
            Ok(Err(e)) => {
                warn!(%lease, %identity, error = %e, leading = renewed.is_some(), "could not acquire or renew the lease")
            }
            Err(_) => {
                candidate.ours = None;
                warn!(%lease, %identity, leading = renewed.is_some(), "acquiring or renewing the lease timed out");
            }
        }
        if let Some(t) = renewed {
            // Wake at the deadline at the latest, to give up on time.
            sleep = sleep.min((t + settings.renew_deadline).saturating_duration_since(Instant::now()));
        }
        tokio::time::sleep(sleep).await;
    }
}

/// Gives the Lease up if we hold it: clears the holder and sets a 1s duration, so
/// a standby takes over at its next poll. Returns whether we released it (false:
/// we did not hold it, or another candidate wrote it first). Call it after the
/// campaign has stopped, or the campaign may take the Lease right back.
pub async fn release(client: &kube::Client, settings: &LeaseSettings) -> Result<bool, LeaderError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        return Ok(false);
    };
    let spec = lease.spec.clone().unwrap_or_default();
    if holder(Some(&spec)) != Some(settings.identity.as_str()) {
        return Ok(false);
    }
    lease.spec = Some(released_spec(&spec, Timestamp::now()));
    match api.replace(&settings.name, &PostParams::default(), &lease).await {
        Ok(_) => {
            info!(lease = %format!("{}/{}", settings.namespace, settings.name), identity = %settings.identity, "released the lease");
            Ok(true)
        }
        Err(e) if is_status(&e, 409) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
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
                            let (method, path) =
                                (it.next().unwrap_or("").to_string(), it.next().unwrap_or("").to_string());
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
                            if write.write_all(head.as_bytes()).await.is_err() || write.write_all(&body).await.is_err()
                            {
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
}
