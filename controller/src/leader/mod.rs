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
//!
//! Layout: `decision` holds every timing and ownership decision as pure
//! functions of values (what was read, when, who we are), so the election's
//! safety argument can be unit-tested without a clock or an API server;
//! `lease` does the Kubernetes I/O and the run loop, and decides nothing itself.
//! This module holds the settings, the error, and the public paths.

use std::time::Duration;

mod decision;
mod lease;
#[cfg(test)]
mod tests;

pub use decision::{Action, Observed, decide, next_spec, released_spec};
pub use lease::{campaign, release};

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

    /// `lease_duration` in whole seconds, rounded up, at least 1. Rounding up
    /// keeps the written duration no shorter than the configured one, so the
    /// `renew_deadline < lease_duration` margin survives the conversion.
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
