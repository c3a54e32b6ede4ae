//! Whether a peer may be sent requests: passive outlier ejection from the
//! outcomes of real requests, and the state machine of active checks.
//!
//! In: outcomes per peer address, with the instant they were seen. Out:
//! `usable`/`healthy` answers for the balancer's filter.
//!
//! Invariants:
//! - State is keyed by `SocketAddr`, not by an index into an endpoint list,
//!   so it survives endpoint changes: a pod that stays keeps its record.
//! - One instance per worker (single-threaded): `RefCell`, no locks.
//! - Time is always passed in; nothing here reads a clock.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Passive health settings of one upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassiveConfig {
    /// Failures in a row that eject a peer; 0 is taken as 1.
    pub consecutive_failures: u32,
    /// The first ejection's length; each further one doubles it.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
    /// Off: `failure` never ejects, every peer is usable.
    pub enabled: bool,
}

impl Default for PassiveConfig {
    /// Envoy's outlier detection defaults: 5 failures, 30 s, at most 300 s.
    fn default() -> PassiveConfig {
        PassiveConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            enabled: true,
        }
    }
}

/// The record of a peer that failed recently. A peer with nothing to
/// remember has no entry, so the map holds only troubled peers.
#[derive(Clone, Copy, Debug, Default)]
struct Outlier {
    /// Failures in a row since the last success or ejection.
    failures: u32,
    /// Ejected until then (exclusive).
    ejected_until: Option<Instant>,
    /// The back-off level: the next ejection lasts base × 2^level.
    level: u32,
}

impl Outlier {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|u| now < u)
    }

    fn is_clean(&self) -> bool {
        self.failures == 0 && self.level == 0 && self.ejected_until.is_none()
    }
}

/// Outlier ejection from request outcomes, as nginx's `max_fails` with
/// Envoy's growing ejection time.
///
/// Back-off: an ejection lasts `base × 2^level` capped at `max`, and raises
/// the level. After the peer returns, each success lowers the level by one:
/// a peer that is healed gets back to `base` within a few requests, while
/// one that keeps failing right after each return (fewer successes than
/// ejections) keeps its long ejections instead of being forgiven by one
/// lucky answer.
#[derive(Debug)]
pub struct PassiveHealth {
    config: PassiveConfig,
    peers: RefCell<HashMap<SocketAddr, Outlier>>,
}

impl PassiveHealth {
    pub fn new(config: PassiveConfig) -> PassiveHealth {
        PassiveHealth {
            config,
            peers: RefCell::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &PassiveConfig {
        &self.config
    }

    /// Whether `addr` is not ejected at `now`. Ignores panic mode: the
    /// balancer's filter should come from `usable_in`.
    ///
    /// This is also where a peer is seen to have returned: every request to
    /// a peer passes this filter first, so `success` can tell a returned
    /// peer's answers from answers to requests sent before its ejection.
    pub fn usable(&self, addr: SocketAddr, now: Instant) -> bool {
        if !self.config.enabled {
            return true;
        }
        let mut peers = self.peers.borrow_mut();
        let Some(o) = peers.get_mut(&addr) else { return true };
        if o.ejected(now) {
            return false;
        }
        o.ejected_until = None;
        true
    }

    /// `usable` for each of an upstream's peers, with Envoy's panic mode: if
    /// every peer is ejected, all are usable. Ejection is for steering load
    /// away from bad peers to good ones; with no good one left, refusing
    /// every request would turn a partial outage into a total one, while
    /// the "ejected" peers may still answer some.
    pub fn usable_in(&self, addrs: &[SocketAddr], now: Instant) -> Vec<bool> {
        let usable: Vec<bool> = addrs.iter().map(|&a| self.usable(a, now)).collect();
        if usable.iter().any(|&u| u) {
            usable
        } else {
            vec![true; addrs.len()]
        }
    }

    /// A request to `addr` succeeded.
    pub fn success(&self, addr: SocketAddr) {
        let mut peers = self.peers.borrow_mut();
        let Some(o) = peers.get_mut(&addr) else { return };
        o.failures = 0;
        // While ejected (until `usable` sees the return) a success answers a
        // request sent before the ejection: it earns no forgiveness.
        if o.ejected_until.is_none() {
            o.level = o.level.saturating_sub(1);
        }
        if o.is_clean() {
            peers.remove(&addr);
        }
    }

    /// A request to `addr` failed at `now`. Returns how long `addr` is now
    /// ejected if this failure ejected it. Failures while ejected (answers
    /// to requests sent before, or in panic mode) neither extend the
    /// ejection nor count toward the next one.
    pub fn failure(&self, addr: SocketAddr, now: Instant) -> Option<Duration> {
        if !self.config.enabled {
            return None;
        }
        let mut peers = self.peers.borrow_mut();
        let o = peers.entry(addr).or_default();
        if o.ejected(now) {
            return None;
        }
        o.ejected_until = None;
        o.failures += 1;
        if o.failures < self.config.consecutive_failures.max(1) {
            return None;
        }
        let length = self
            .config
            .base_ejection
            .saturating_mul(1 << o.level.min(31))
            .min(self.config.max_ejection);
        o.failures = 0;
        o.ejected_until = Some(now + length);
        // Stop raising once the cap is reached, so a few successes bring the
        // peer back below the cap instead of paying off a level of 31.
        if length < self.config.max_ejection {
            o.level += 1;
        }
        Some(length)
    }

    /// Forget peers that `keep` rejects, e.g. addresses no longer in any
    /// endpoint list, so pod IP churn does not grow the map forever.
    pub fn retain(&self, keep: impl Fn(SocketAddr) -> bool) {
        self.peers.borrow_mut().retain(|&a, _| keep(a));
    }
}

/// Active health check state of one peer.
#[derive(Clone, Copy, Debug)]
struct Checked {
    healthy: bool,
    /// Results in a row that disagree with `healthy`.
    streak: u32,
}

/// The state machine of active health checks, as Envoy's and nginx plus's
/// `health_check passes= fails=`: a peer flips only after `healthy_threshold`
/// passing checks in a row (when unhealthy) or `unhealthy_threshold` failing
/// ones (when healthy), so one lost probe does not flap it. Peers start
/// healthy: a new endpoint is ready by Kubernetes' account already, and
/// starting unhealthy would refuse a fresh upstream until its first checks.
#[derive(Debug)]
pub struct ActiveHealth {
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    peers: RefCell<HashMap<SocketAddr, Checked>>,
}

impl ActiveHealth {
    /// Thresholds of 0 are taken as 1.
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> ActiveHealth {
        ActiveHealth {
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
            peers: RefCell::new(HashMap::new()),
        }
    }

    /// Record one check of `addr`; `Some(new_state)` when it flipped.
    pub fn record(&self, addr: SocketAddr, healthy: bool) -> Option<bool> {
        let mut peers = self.peers.borrow_mut();
        let c = peers.entry(addr).or_insert(Checked {
            healthy: true,
            streak: 0,
        });
        if healthy == c.healthy {
            c.streak = 0;
            return None;
        }
        c.streak += 1;
        let threshold = if healthy {
            self.healthy_threshold
        } else {
            self.unhealthy_threshold
        };
        if c.streak < threshold {
            return None;
        }
        *c = Checked { healthy, streak: 0 };
        Some(healthy)
    }

    pub fn healthy(&self, addr: SocketAddr) -> bool {
        self.peers.borrow().get(&addr).is_none_or(|c| c.healthy)
    }

    /// Forget peers that `keep` rejects; a forgotten peer starts healthy.
    pub fn retain(&self, keep: impl Fn(SocketAddr) -> bool) {
        self.peers.borrow_mut().retain(|&a, _| keep(a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 80))
    }

    fn config() -> PassiveConfig {
        PassiveConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(35),
            enabled: true,
        }
    }

    fn fail_times(h: &PassiveHealth, a: SocketAddr, n: u32, now: Instant) -> Option<Duration> {
        (0..n).map(|_| h.failure(a, now)).last().flatten()
    }

    #[test]
    fn a_peer_is_ejected_after_consecutive_failures_and_returns_when_the_time_is_up() {
        let h = PassiveHealth::new(config());
        let t0 = Instant::now();
        assert_eq!(h.failure(addr(1), t0), None);
        assert_eq!(h.failure(addr(1), t0), None);
        assert!(h.usable(addr(1), t0));
        assert_eq!(h.failure(addr(1), t0), Some(Duration::from_secs(10)));
        assert!(!h.usable(addr(1), t0 + Duration::from_secs(9)));
        assert!(h.usable(addr(1), t0 + Duration::from_secs(10)));
        assert!(h.usable(addr(2), t0));
    }

    #[test]
    fn a_success_breaks_the_run_of_failures() {
        let h = PassiveHealth::new(config());
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(fail_times(&h, addr(1), 2, t0), None);
            h.success(addr(1));
        }
        assert!(h.usable(addr(1), t0));
    }

    #[test]
    fn each_further_ejection_doubles_up_to_the_max() {
        let h = PassiveHealth::new(config());
        let mut now = Instant::now();
        for want in [10, 20, 35, 35] {
            let got = fail_times(&h, addr(1), 3, now).unwrap();
            assert_eq!(got, Duration::from_secs(want));
            now += got;
        }
    }

    #[test]
    fn failures_while_ejected_neither_extend_nor_count() {
        let h = PassiveHealth::new(config());
        let t0 = Instant::now();
        fail_times(&h, addr(1), 3, t0).unwrap();
        assert_eq!(fail_times(&h, addr(1), 10, t0 + Duration::from_secs(5)), None);
        let back = t0 + Duration::from_secs(10);
        assert!(h.usable(addr(1), back));
        // The run starts again from zero after the return.
        assert_eq!(fail_times(&h, addr(1), 2, back), None);
        assert_eq!(h.failure(addr(1), back), Some(Duration::from_secs(20)));
    }

    #[test]
    fn successes_after_return_lower_the_back_off_one_level_each() {
        let h = PassiveHealth::new(config());
        let mut now = Instant::now();
        for _ in 0..2 {
            now += fail_times(&h, addr(1), 3, now).unwrap(); // 10 s, then 20 s; level 2
        }
        // The balancer's filter sees the return before any new request.
        assert!(h.usable(addr(1), now));
        h.success(addr(1)); // level 1
        assert_eq!(fail_times(&h, addr(1), 3, now), Some(Duration::from_secs(20)));
        h.success(addr(1)); // an answer sent before the ejection: still level 2
        now += Duration::from_secs(20);
        assert!(h.usable(addr(1), now));
        h.success(addr(1));
        assert!(!h.peers.borrow().is_empty());
        h.success(addr(1)); // level 0: forgotten entirely
        assert!(h.peers.borrow().is_empty());
        assert_eq!(fail_times(&h, addr(1), 3, now), Some(Duration::from_secs(10)));
    }

    #[test]
    fn disabled_passive_health_never_ejects() {
        let h = PassiveHealth::new(PassiveConfig {
            enabled: false,
            ..config()
        });
        let t0 = Instant::now();
        assert_eq!(fail_times(&h, addr(1), 100, t0), None);
        assert!(h.usable(addr(1), t0));
    }

    #[test]
    fn when_every_peer_is_ejected_all_are_usable() {
        let h = PassiveHealth::new(config());
        let t0 = Instant::now();
        let addrs = [addr(1), addr(2), addr(3)];
        fail_times(&h, addr(1), 3, t0).unwrap();
        assert_eq!(h.usable_in(&addrs, t0), [false, true, true]);
        fail_times(&h, addr(2), 3, t0).unwrap();
        assert_eq!(h.usable_in(&addrs, t0), [false, false, true]);
        fail_times(&h, addr(3), 3, t0).unwrap();
        assert_eq!(h.usable_in(&addrs, t0), [true, true, true]);
        assert!(!h.usable(addr(3), t0));
        assert!(h.usable_in(&[], t0).is_empty());
    }

    #[test]
    fn ejection_follows_the_address_across_endpoint_lists() {
        let h = PassiveHealth::new(config());
        let t0 = Instant::now();
        fail_times(&h, addr(2), 3, t0).unwrap();
        // The same pod at another index of a new list is still ejected.
        assert_eq!(h.usable_in(&[addr(4), addr(2)], t0), [true, false]);
        h.retain(|a| a != addr(2));
        assert!(h.usable(addr(2), t0));
    }

    #[test]
    fn active_checks_flip_only_after_the_thresholds() {
        let h = ActiveHealth::new(2, 3);
        let a = addr(1);
        assert!(h.healthy(a));
        assert_eq!(h.record(a, true), None);
        assert_eq!(h.record(a, false), None);
        assert_eq!(h.record(a, false), None);
        assert_eq!(h.record(a, true), None); // breaks the failing run
        assert!(h.healthy(a));
        assert_eq!(h.record(a, false), None);
        assert_eq!(h.record(a, false), None);
        assert_eq!(h.record(a, false), Some(false));
        assert!(!h.healthy(a));
        assert_eq!(h.record(a, false), None);
        assert_eq!(h.record(a, true), None);
        assert_eq!(h.record(a, false), None); // breaks the passing run
        assert_eq!(h.record(a, true), None);
        assert_eq!(h.record(a, true), Some(true));
        assert!(h.healthy(a));
        assert!(h.healthy(addr(2)));
    }

    #[test]
    fn active_thresholds_of_zero_act_as_one() {
        let h = ActiveHealth::new(0, 0);
        assert_eq!(h.record(addr(1), false), Some(false));
        assert_eq!(h.record(addr(1), true), Some(true));
    }
}
