//! The Kubernetes side of the election: reading and writing the Lease through
//! kube, and the run loop of [`campaign`]. Every decision (what to write, when
//! to step down, how long to wait) is taken by `decision`; this module only
//! performs it, reads the clocks, and logs.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::decision::{Action, Attempt, Election, Observed, Step, decide, holder, next_spec, released_spec};
use super::{LeaderError, LeaseSettings};

pub(super) fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

struct Candidate {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Observed,
    /// The Lease as we last wrote it while holding it: renewals write over it
    /// directly, skipping the read, until a write conflicts. Its
    /// `resourceVersion` makes such a blind renewal fail (409) if anyone else
    /// wrote in between, so skipping the read never overwrites another holder.
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

    /// Records our own write as an observation, so `observed` always holds the
    /// latest spec we know of and reading it back unchanged is not a change.
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
    // The only way out of the loop once validated: `leading` goes false first,
    // so nobody acts on leadership after we stopped renewing.
    let lost = |reason: String| {
        warn!(%lease, %identity, %reason, "lost leadership");
        leading.send_replace(false);
        LeaderError::Lost {
            namespace: settings.namespace.clone(),
            name: settings.name.clone(),
            reason,
        }
    };
    let mut election = Election::default();
    info!(%lease, %identity, "campaigning for leadership");
    loop {
        let mut round = match election.begin(&settings, Instant::now(), || rand::random_range(0.8..=1.0)) {
            Ok(round) => round,
            Err(reason) => return Err(lost(reason.to_string())),
        };
        let attempt = match tokio::time::timeout(round.budget, candidate.try_acquire_or_renew()).await {
            Ok(Ok(attempt)) => Some(attempt),
            Ok(Err(e)) => {
                warn!(%lease, %identity, error = %e, leading = election.leading(), "could not acquire or renew the lease");
                None
            }
            Err(_) => {
                // Whether the write landed is unknown, so the next attempt must
                // read first. `try_acquire_or_renew` already took the cache
                // before writing; clearing it again keeps this rule from
                // depending on that detail.
                candidate.ours = None;
                warn!(%lease, %identity, leading = election.leading(), "acquiring or renewing the lease timed out");
                None
            }
        };
        match election.record(&mut round, attempt, identity) {
            Step::Unchanged => {}
            Step::Elected => {
                info!(%lease, %identity, "became leader");
                leading.send_replace(true);
            }
            Step::Following(holder) => {
                info!(%lease, %identity, leader = holder.as_deref().unwrap_or(""), "lease held by another candidate");
            }
            Step::StepDown(reason) => {
                candidate.ours = None;
                return Err(lost(reason.to_string()));
            }
        }
        tokio::time::sleep(election.sleep(&round, &settings, Instant::now())).await;
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
    // The write carries the resourceVersion just read, so if a standby took
    // the Lease meanwhile we get 409 and leave its holder alone.
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
