//! A retry budget per upstream per worker, as Envoy's `retry_budget` and
//! linkerd's: retries may add at most a fixed share to the requests an
//! upstream gets, so retries cannot multiply the load on an upstream that is
//! already failing (a retry storm).
//!
//! In: `deposit` per original request, `withdraw` per retry wanted, each
//! with the instant. Out: whether the retry may go.
//!
//! Invariants:
//! - Over any window of `WINDOW_SECS` whole seconds, withdrawals granted
//!   ≤ max(percent% of deposits in the window, the per-second floor's).
//! - The window is buckets of one second: time is counted in whole seconds
//!   since the first call, so the window is between 9 and 10 s long.
//! - Time never runs backwards here: an instant before the latest one seen
//!   counts in the latest second.

use std::cell::Cell;
use std::time::Instant;

/// Seconds of history; Envoy and linkerd use 10 s.
const WINDOW_SECS: u64 = 10;

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// The second (since `epoch`) that this bucket counts.
    second: u64,
    requests: u64,
    retries: u64,
}

/// Allows a retry when retries in the window stay within `percent`% of the
/// requests in it, or, so that a quiet upstream can still retry at all,
/// when fewer than `min_per_second` retries were granted in the current
/// second. The floor is per second, not per window, so a quiet upstream
/// cannot be sent a burst of ten seconds' floor at once.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u32,
    min_per_second: u32,
    /// The instant of the first call: second 0.
    epoch: Cell<Option<Instant>>,
    /// The latest second seen.
    now: Cell<u64>,
    /// Indexed by `second % WINDOW_SECS`; a bucket whose `second` is not the
    /// index's latest is stale and counts as empty.
    buckets: [Cell<Bucket>; WINDOW_SECS as usize],
}

impl RetryBudget {
    pub fn new(percent: u32, min_per_second: u32) -> RetryBudget {
        RetryBudget {
            percent,
            min_per_second,
            epoch: Cell::new(None),
            now: Cell::new(0),
            buckets: Default::default(),
        }
    }

    /// An original request (not a retry) went to the upstream at `now`.
    pub fn deposit(&self, now: Instant) {
        let b = self.current(now);
        b.set(Bucket {
            requests: b.get().requests + 1,
            ..b.get()
        });
    }

    /// Whether a retry may go at `now`; if so it is counted.
    pub fn withdraw(&self, now: Instant) -> bool {
        let current = self.current(now);
        let (requests, retries) = self.window();
        let within_share = (retries + 1) * 100 <= requests * u64::from(self.percent);
        let within_floor = current.get().retries < u64::from(self.min_per_second);
        if !(within_share || within_floor) {
            return false;
        }
        current.set(Bucket {
            retries: current.get().retries + 1,
            ..current.get()
        });
        true
    }

    /// The bucket of `now`'s second, emptied if it held an older second.
    fn current(&self, now: Instant) -> &Cell<Bucket> {
        let epoch = self.epoch.get().unwrap_or(now);
        self.epoch.set(Some(epoch));
        let second = self.now.get().max(now.saturating_duration_since(epoch).as_secs());
        self.now.set(second);
        let b = &self.buckets[(second % WINDOW_SECS) as usize];
        if b.get().second != second {
            b.set(Bucket {
                second,
                ..Bucket::default()
            });
        }
        b
    }

    /// Requests and retries in the window ending at the latest second.
    fn window(&self) -> (u64, u64) {
        let now = self.now.get();
        self.buckets
            .iter()
            .map(Cell::get)
            .filter(|b| b.second <= now && now - b.second < WINDOW_SECS)
            .fold((0, 0), |(q, r), b| (q + b.requests, r + b.retries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    fn granted(b: &RetryBudget, n: u32, now: Instant) -> u32 {
        (0..n).filter(|_| b.withdraw(now)).count() as u32
    }

    #[test]
    fn retries_are_limited_to_the_percent_of_requests() {
        let b = RetryBudget::new(20, 0);
        let t0 = Instant::now();
        for _ in 0..100 {
            b.deposit(t0);
        }
        assert_eq!(granted(&b, 50, t0), 20);
        // Five more requests earn one more retry.
        for _ in 0..5 {
            b.deposit(t0);
        }
        assert_eq!(granted(&b, 50, t0), 1);
    }

    #[test]
    fn without_requests_only_the_floor_per_second_is_allowed() {
        let b = RetryBudget::new(20, 3);
        let t0 = Instant::now();
        assert_eq!(granted(&b, 10, t0), 3);
        assert_eq!(granted(&b, 10, t0 + Duration::from_millis(999)), 0);
        assert_eq!(granted(&b, 10, secs(t0, 1)), 3);
        let none = RetryBudget::new(20, 0);
        assert!(!none.withdraw(t0));
    }

    #[test]
    fn the_floor_and_the_share_are_alternatives_not_a_sum() {
        let b = RetryBudget::new(10, 2);
        let t0 = Instant::now();
        for _ in 0..50 {
            b.deposit(t0);
        }
        // Share: 5 in the window. Floor: 2 this second. Both overlap.
        assert_eq!(granted(&b, 20, t0), 5);
        assert_eq!(granted(&b, 20, secs(t0, 1)), 2);
    }

    #[test]
    fn requests_older_than_the_window_stop_paying_for_retries() {
        let b = RetryBudget::new(50, 0);
        let t0 = Instant::now();
        for _ in 0..10 {
            b.deposit(t0);
        }
        assert!(b.withdraw(secs(t0, 9)));
        assert_eq!(granted(&b, 10, secs(t0, 9)), 4);
        // At second 10 the deposits of second 0 have left the window, while
        // the 5 retries of second 9 have not: nothing is left to spend.
        assert!(!b.withdraw(secs(t0, 10)));
        b.deposit(secs(t0, 10));
        b.deposit(secs(t0, 10));
        // 2 requests, 5 retries (second 9) in the window: still refused.
        assert!(!b.withdraw(secs(t0, 10)));
        // Once second 9 has left too, 2 requests at 50% buy one retry.
        assert!(b.withdraw(secs(t0, 19)));
        assert!(!b.withdraw(secs(t0, 19)));
    }

    #[test]
    fn an_instant_before_the_latest_counts_in_the_latest_second() {
        let b = RetryBudget::new(100, 0);
        let t0 = Instant::now();
        b.deposit(t0);
        b.deposit(secs(t0, 20));
        // Late news of second 5: counted in second 20, so still in the window.
        b.deposit(secs(t0, 5));
        assert_eq!(granted(&b, 5, secs(t0, 20)), 2);
    }

    #[test]
    fn a_long_idle_gap_empties_every_bucket() {
        let b = RetryBudget::new(100, 0);
        let t0 = Instant::now();
        for s in 0..10 {
            b.deposit(secs(t0, s));
        }
        assert!(!b.withdraw(secs(t0, 1_000)));
    }
}
