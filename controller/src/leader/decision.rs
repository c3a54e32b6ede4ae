//! The election's decisions, as pure functions of values: what the Lease said
//! when it was read, when (local monotonic time) that was, and who we are.
//!
//! Nothing here talks to the API server, sleeps, or reads a clock: every `now`
//! is passed in, so each rule can be tested with plain values. The run loop in
//! `lease` does the I/O and follows what these functions say.
//!
//! Two layers:
//! - per read of the Lease: [`Observed`] remembers when the spec last changed,
//!   [`decide`] picks the [`Action`] (create, wait, acquire, renew), and
//!   [`next_spec`] / [`released_spec`] compute what to write;
//! - across rounds of the run loop: [`Election`] tracks whether we lead, says
//!   when the leader must step down, how long each attempt may take, and how
//!   long to sleep between rounds.
//!
//! `Instant` is tokio's so that the instants handed in by the loop compare with
//! the ones `tokio::time` sleeps on (and follow a paused test clock); it is
//! only used as a value here.

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

use super::{DEFAULT_LEASE_DURATION, LeaseSettings};

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
    /// `since` moves only when the spec changed, like client-go's observedTime:
    /// a holder that stopped renewing leaves the spec unchanged, so its Lease
    /// ages from the first time we saw it in that form, whatever its clock says.
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

/// The holder named by `spec`; an empty identity counts as no holder, as in
/// client-go (a released Lease may carry either).
pub(super) fn holder(spec: Option<&LeaseSpec>) -> Option<&str> {
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
            // A negative duration (from a broken writer) counts as zero, i.e.
            // already expired, instead of wrapping around to a huge one.
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
///
/// Fields we do not manage (e.g. `preferredHolder`) are carried over from
/// `current`. Wall-clock times are written for other tools to read; no
/// candidate bases a decision on them.
pub fn next_spec(action: Action, current: Option<&LeaseSpec>, settings: &LeaseSettings, now: Timestamp) -> LeaseSpec {
    let now = MicroTime(now);
    let mut spec = current.cloned().unwrap_or_default();
    let ours = holder(current) == Some(settings.identity.as_str());
    match action {
        Action::Create => {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(0);
        }
        // Still ours: not a change of holder, so no transition and the
        // acquire time stays (filled in only if some writer dropped it).
        Action::Renew | Action::Acquire if ours => {
            if spec.acquire_time.is_none() {
                spec.acquire_time = Some(now.clone());
            }
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0));
        }
        // A change of holder, from another candidate or from nobody (released).
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

/// The spec [`release`](super::release) writes: no holder, a 1s duration,
/// transitions kept, as client-go's release writes it. An unheld Lease is
/// taken at once whatever its duration (see [`decide`]); keeping
/// `leaseTransitions` lets the next holder count its takeover as a transition.
pub fn released_spec(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        ..current.clone()
    }
}

/// The outcome of one successful try to acquire or renew (a try that failed or
/// timed out taught us nothing and is recorded as `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Attempt {
    /// Our write naming us as holder succeeded.
    Held,
    /// Someone else holds the Lease or won the race; `retry_in` is when it expires, if known.
    NotHeld {
        holder: Option<String>,
        retry_in: Option<Duration>,
    },
}

/// Why a leader must stop leading. Its `Display` is the `reason` of
/// [`LeaderError::Lost`](super::LeaderError::Lost).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum StepDown {
    /// No renewal succeeded within the renew deadline (stated here).
    Unrenewed(Duration),
    /// The Lease now names someone else (`None`: holder unknown).
    Taken(Option<String>),
}

impl fmt::Display for StepDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepDown::Unrenewed(deadline) => {
                write!(f, "no successful renewal within the renew deadline ({deadline:?})")
            }
            StepDown::Taken(holder) => {
                let by = holder.as_deref().unwrap_or("another candidate");
                write!(f, "the lease is now held by {by}")
            }
        }
    }
}

/// What the run loop must do about a recorded round, besides sleeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing to announce.
    Unchanged,
    /// We were a standby and now hold the Lease: announce leadership.
    Elected,
    /// Still a standby, and the holder differs from the one last reported.
    Following(Option<String>),
    /// We were leading and are not any more: stop at once.
    StepDown(StepDown),
}

/// One round of the run loop: one attempt to acquire or renew, then a sleep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Round {
    /// When the round began; a successful renewal counts from here, since the
    /// write may have reached the API server as early as this.
    started: Instant,
    /// How long the attempt may take. While leading, the time left before the
    /// renew deadline, so a stuck call cannot keep us leading past it.
    pub(super) budget: Duration,
    /// The sleep after the attempt, before [`Election::sleep`] caps it.
    sleep: Duration,
}

/// One candidate's view of the election across rounds: whether it leads, and
/// the holder it last reported.
///
/// Invariant: `renewed` is `Some` exactly while we lead, i.e. from the first
/// successful write naming us until the loop stops (on [`StepDown`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Election {
    /// While leading: when the last successful renewal was sent.
    renewed: Option<Instant>,
    /// The holder last reported, so each change of holder is logged once.
    last_holder: Option<String>,
}

impl Election {
    pub(super) fn leading(&self) -> bool {
        self.renewed.is_some()
    }

    /// Opens a round at `now`, or says the leader must step down because its
    /// renew deadline has passed. `jitter` is called only for a standby and
    /// returns a factor in `0.8..=1.0` for its poll period, so standbys that
    /// started together do not keep polling in lockstep; the leader renews at
    /// the full period.
    pub(super) fn begin(
        &self,
        settings: &LeaseSettings,
        now: Instant,
        jitter: impl FnOnce() -> f64,
    ) -> Result<Round, StepDown> {
        let deadline = self.renewed.map(|t| t + settings.renew_deadline);
        if deadline.is_some_and(|d| now >= d) {
            return Err(StepDown::Unrenewed(settings.renew_deadline));
        }
        // A standby has no deadline; bounding its calls by `renew_deadline`
        // just keeps a hung call from stalling it forever.
        let budget = deadline.map_or(settings.renew_deadline, |d| d - now);
        let sleep = if self.leading() {
            settings.retry_period
        } else {
            settings.retry_period.mul_f64(jitter())
        };
        Ok(Round {
            started: now,
            budget,
            sleep,
        })
    }

    /// Records the outcome of `round`'s attempt (`None`: it failed or timed
    /// out) and says what to do about it. A failure changes nothing: a leader
    /// keeps leading until its deadline, a standby keeps polling.
    pub(super) fn record(&mut self, round: &mut Round, attempt: Option<Attempt>, identity: &str) -> Step {
        match attempt {
            Some(Attempt::Held) => {
                let elected = !self.leading();
                self.renewed = Some(round.started);
                self.last_holder = Some(identity.to_string());
                if elected { Step::Elected } else { Step::Unchanged }
            }
            // Someone else wrote the Lease while we thought we held it. We
            // cannot tell for how long they have led, so stop at once.
            Some(Attempt::NotHeld { holder, .. }) if self.leading() => Step::StepDown(StepDown::Taken(holder)),
            Some(Attempt::NotHeld { holder, retry_in }) => {
                // Wake when the holder's Lease would expire, if that is sooner.
                if let Some(left) = retry_in {
                    round.sleep = round.sleep.min(left);
                }
                if holder != self.last_holder {
                    self.last_holder = holder.clone();
                    Step::Following(holder)
                } else {
                    Step::Unchanged
                }
            }
            None => Step::Unchanged,
        }
    }

    /// How long to sleep after `round`, at `now`. A leader wakes at its renew
    /// deadline at the latest, so it steps down on time even after a long
    /// attempt.
    pub(super) fn sleep(&self, round: &Round, settings: &LeaseSettings, now: Instant) -> Duration {
        match self.renewed {
            Some(t) => round
                .sleep
                .min((t + settings.renew_deadline).saturating_duration_since(now)),
            None => round.sleep,
        }
    }
}
