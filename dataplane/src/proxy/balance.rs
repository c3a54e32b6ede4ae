//! Choosing a peer among an upstream's endpoints, as nginx's `upstream {}`
//! balancers: one `Balancer` per upstream per worker.
//!
//! In: the peer list (rebuilt when the endpoint generation changes), a hash
//! key per request, and a `usable(i)` filter from the caller (tried peers,
//! ejected peers). Out: a peer index. `start`/`finish` feed the load numbers.
//!
//! Invariants:
//! - `pick` returns only an index `i < peers.len()` with `usable(i)`; `None`
//!   means no peer is usable, never "try again".
//! - A worker is single-threaded, so state is in `Cell`s; a `Balancer` is not
//!   `Sync` and is never shared between workers.
//! - Weights are ≥ 1 (`new` raises 0 to 1), so every peer can be chosen.
//! - The hash ring depends only on the peers' addresses and weights, not on
//!   their order nor on the process: every worker and every replica maps a key
//!   to the same peer.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One endpoint of an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// ≥ 1; relative share of requests.
    pub weight: u32,
}

/// How `pick` chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// nginx's smooth weighted round-robin.
    RoundRobin,
    /// Power of two choices over peak-EWMA latency × (outstanding + 1).
    LeastRequest,
    /// Ketama-style ring over the request's hash key.
    ConsistentHash,
}

/// Ring points per unit of weight. Ketama uses 160; with 160 points the
/// share of keys a peer owns is within a few percent of its weight share.
const POINTS_PER_WEIGHT: u32 = 160;

/// The EWMA time constant: a sample `elapsed` after the previous one keeps
/// `exp(-elapsed / DECAY)` of the old estimate. 10 s is Finagle's and
/// linkerd's default: slow enough to ride out one slow request, fast enough
/// to follow a peer that degrades.
const DECAY: Duration = Duration::from_secs(10);

/// The latency assumed for a peer when no peer of the upstream has answered
/// yet. Every peer then has the same guess, so only outstanding counts matter.
const DEFAULT_RTT: Duration = Duration::from_millis(10);

/// The load numbers of one peer.
#[derive(Debug, Default)]
struct PeerState {
    /// Smooth round-robin's `current_weight`.
    current: Cell<i64>,
    outstanding: Cell<u32>,
    /// Peak EWMA of latency; `None` until the peer's first answer.
    rtt: Cell<Option<Ewma>>,
}

/// A latency estimate and the instant of its last update.
#[derive(Clone, Copy, Debug)]
struct Ewma {
    nanos: f64,
    at: Instant,
}

impl Ewma {
    /// Peak EWMA (Finagle's `PeakEwma`): a sample above the estimate replaces
    /// it at once, so a peer that slows down loses traffic immediately; one
    /// below is blended in with a weight growing with the time since the last
    /// sample, so a burst of fast answers does not erase a slow history.
    fn update(self, sample: Duration, now: Instant) -> Ewma {
        let sample = sample.as_nanos() as f64;
        if sample >= self.nanos {
            return Ewma { nanos: sample, at: now };
        }
        let keep = decay(now.saturating_duration_since(self.at));
        Ewma {
            nanos: self.nanos * keep + sample * (1.0 - keep),
            at: now,
        }
    }

    /// The estimate decayed toward zero for the time without a sample, as
    /// linkerd's: a peer that was slow once and then got no traffic becomes
    /// cheap again and gets a probe, instead of starving forever.
    fn decayed(self, now: Instant) -> f64 {
        self.nanos * decay(now.saturating_duration_since(self.at))
    }
}

fn decay(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp()
}

/// Chooses peers of one upstream for one worker.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    peers: Vec<Peer>,
    state: Vec<PeerState>,
    /// `(point, peer index)`, sorted; empty unless `ConsistentHash`.
    ring: Vec<(u64, usize)>,
    /// xorshift64* state; never 0.
    rng: Cell<u64>,
    /// EWMA over all peers' answers: the guess for a peer without samples,
    /// so a new peer is neither flooded (a guess of 0) nor starved (a guess
    /// of ∞); its outstanding count then corrects the guess within a few
    /// requests.
    upstream_rtt: Cell<Option<Ewma>>,
    /// The latest `now` given to `finish`: `pick` decays estimates to it,
    /// since `pick` is not given a clock.
    clock: Cell<Option<Instant>>,
}

impl Balancer {
    /// A balancer whose random choices are seeded from the OS.
    pub fn new(policy: Policy, peers: Vec<Peer>) -> Balancer {
        Balancer::with_seed(policy, peers, rand::random())
    }

    /// A balancer with a fixed seed, so tests are reproducible.
    pub fn with_seed(policy: Policy, mut peers: Vec<Peer>, seed: u64) -> Balancer {
        for p in &mut peers {
            p.weight = p.weight.max(1);
        }
        let ring = if policy == Policy::ConsistentHash {
            ring(&peers)
        } else {
            Vec::new()
        };
        Balancer {
            policy,
            state: peers.iter().map(|_| PeerState::default()).collect(),
            peers,
            ring,
            // xorshift has a fixed point at 0; mix the seed so 0 is fine too.
            rng: Cell::new(splitmix64(seed) | 1),
            upstream_rtt: Cell::new(None),
            clock: Cell::new(None),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// A usable peer's index, or `None` when no peer is usable. `hash_key` is
    /// used by `ConsistentHash` only; without one it round-robins.
    pub fn pick(&self, hash_key: Option<&[u8]>, usable: impl Fn(usize) -> bool) -> Option<usize> {
        match (self.policy, hash_key) {
            (Policy::RoundRobin, _) | (Policy::ConsistentHash, None) => self.round_robin(&usable),
            (Policy::LeastRequest, _) => self.least_request(&usable),
            (Policy::ConsistentHash, Some(key)) => self.hash(key, &usable),
        }
    }

    /// A request to peer `i` began.
    pub fn start(&self, i: usize) {
        if let Some(s) = self.state.get(i) {
            s.outstanding.set(s.outstanding.get().saturating_add(1));
        }
    }

    /// A request to peer `i` that `start`ed ended after `latency`, at `now`.
    /// Failures count too: a peer that fails slowly is slow.
    pub fn finish(&self, i: usize, latency: Duration, now: Instant) {
        let Some(s) = self.state.get(i) else { return };
        s.outstanding.set(s.outstanding.get().saturating_sub(1));
        let fresh = Ewma {
            nanos: latency.as_nanos() as f64,
            at: now,
        };
        s.rtt.set(Some(s.rtt.get().map_or(fresh, |e| e.update(latency, now))));
        self.upstream_rtt
            .set(Some(self.upstream_rtt.get().map_or(fresh, |e| e.update(latency, now))));
        if self.clock.get().is_none_or(|c| c < now) {
            self.clock.set(Some(now));
        }
    }

    /// Requests started and not yet finished on peer `i`.
    pub fn outstanding(&self, i: usize) -> u32 {
        self.state.get(i).map_or(0, |s| s.outstanding.get())
    }

    /// ngx_http_upstream_get_peer: every usable peer gains its weight, the
    /// richest is chosen and pays the total. Over any run of `total` picks
    /// with a fixed usable set each peer is chosen exactly `weight` times,
    /// interleaved (5,1,1 gives a a b a c a a, not a a a a a b c).
    fn round_robin(&self, usable: &impl Fn(usize) -> bool) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut total: i64 = 0;
        for (i, (p, s)) in self.peers.iter().zip(&self.state).enumerate() {
            if !usable(i) {
                continue;
            }
            let w = i64::from(p.weight);
            s.current.set(s.current.get() + w);
            total += w;
            if best.is_none_or(|b| s.current.get() > self.state[b].current.get()) {
                best = Some(i);
            }
        }
        let b = best?;
        let s = &self.state[b];
        s.current.set(s.current.get() - total);
        Some(b)
    }

    /// Power of two choices (Mitzenmacher): two distinct usable peers drawn
    /// with probability proportional to weight, the cheaper one wins. Two
    /// random candidates avoid herding on one "best" peer that every worker
    /// sees, at O(1) cost beyond collecting the usable set.
    fn least_request(&self, usable: &impl Fn(usize) -> bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.peers.len()).filter(|&i| usable(i)).collect();
        match candidates.len() {
            0 => return None,
            1 => return Some(candidates[0]),
            _ => {}
        }
        let total: u64 = candidates.iter().map(|&i| u64::from(self.peers[i].weight)).sum();
        let a = self.weighted(&candidates, total, None);
        let b = self.weighted(&candidates, total - u64::from(self.peers[a].weight), Some(a));
        // Ties go to the first draw, itself random, so no index is favoured.
        Some(if self.cost(b) < self.cost(a) { b } else { a })
    }

    /// A candidate drawn with probability weight / `total`, skipping `except`
    /// (whose weight `total` leaves out).
    fn weighted(&self, candidates: &[usize], total: u64, except: Option<usize>) -> usize {
        let mut r = self.next_u64() % total.max(1);
        let mut last = candidates[0];
        for &i in candidates {
            if Some(i) == except {
                continue;
            }
            let w = u64::from(self.peers[i].weight);
            if r < w {
                return i;
            }
            r -= w;
            last = i;
        }
        last
    }

    /// Expected wait for one more request: latency × (outstanding + 1).
    fn cost(&self, i: usize) -> f64 {
        let s = &self.state[i];
        let rtt = match (s.rtt.get().or(self.upstream_rtt.get()), self.clock.get()) {
            (Some(e), Some(now)) => e.decayed(now),
            (Some(e), None) => e.nanos,
            (None, _) => DEFAULT_RTT.as_nanos() as f64,
        };
        rtt * f64::from(s.outstanding.get().saturating_add(1))
    }

    /// The owner of the first ring point at or after the key's hash; if it is
    /// not usable, the next usable owner clockwise. Skipping an unusable peer
    /// this way sends its keys exactly where a ring without it would, so an
    /// ejection moves only the ejected peer's keys.
    fn hash(&self, key: &[u8], usable: &impl Fn(usize) -> bool) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let h = hash64(key);
        let start = self.ring.partition_point(|&(p, _)| p < h);
        let owner = self.ring[start % self.ring.len()].1;
        if usable(owner) {
            return Some(owner);
        }
        // Each peer has many points: remember refusals so `usable` runs at
        // most once per peer.
        let mut refused = vec![false; self.peers.len()];
        refused[owner] = true;
        for k in 1..self.ring.len() {
            let i = self.ring[(start + k) % self.ring.len()].1;
            if refused[i] {
                continue;
            }
            if usable(i) {
                return Some(i);
            }
            refused[i] = true;
        }
        None
    }

    fn next_u64(&self) -> u64 {
        // xorshift64* (Vigna): tiny, fast, good enough to choose candidates.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The ring: `POINTS_PER_WEIGHT × weight` points per peer, each the hash of
/// the peer's address and the point's number. Equal points are ordered by
/// address so the ring does not depend on the peers' order.
fn ring(peers: &[Peer]) -> Vec<(u64, usize)> {
    let mut ring = Vec::with_capacity(
        peers
            .iter()
            .map(|p| p.weight.saturating_mul(POINTS_PER_WEIGHT) as usize)
            .sum(),
    );
    for (i, p) in peers.iter().enumerate() {
        let name = p.addr.to_string();
        for n in 0..p.weight.saturating_mul(POINTS_PER_WEIGHT) {
            ring.push((hash64(format!("{name}-{n}").as_bytes()), i));
        }
    }
    ring.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| peers[a.1].addr.cmp(&peers[b.1].addr)));
    ring
}

/// FNV-1a then the splitmix64 finalizer: stable across processes and Rust
/// versions (unlike `DefaultHasher`), and the finalizer spreads FNV's weak
/// low bits over the ring.
fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(h)
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8, weight: u32) -> Peer {
        Peer {
            addr: SocketAddr::from(([10, 0, 0, n], 8080)),
            weight,
        }
    }

    fn peers(n: u8) -> Vec<Peer> {
        (1..=n).map(|i| peer(i, 1)).collect()
    }

    fn counts(b: &Balancer, picks: usize, key: impl Fn(usize) -> Option<Vec<u8>>) -> Vec<usize> {
        let mut c = vec![0; b.peers().len()];
        for n in 0..picks {
            let k = key(n);
            c[b.pick(k.as_deref(), |_| true).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn smooth_round_robin_interleaves_as_nginx_does() {
        let b = Balancer::with_seed(Policy::RoundRobin, vec![peer(1, 5), peer(2, 1), peer(3, 1)], 1);
        let seq: Vec<usize> = (0..14).map(|_| b.pick(None, |_| true).unwrap()).collect();
        // nginx's documented sequence for weights 5,1,1: a a b a c a a.
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn round_robin_skips_unusable_peers_and_keeps_the_others_weights() {
        let b = Balancer::with_seed(Policy::RoundRobin, vec![peer(1, 1), peer(2, 2), peer(3, 3)], 1);
        let mut c = [0; 3];
        for _ in 0..400 {
            c[b.pick(None, |i| i != 1).unwrap()] += 1;
        }
        assert_eq!(c, [100, 0, 300]);
        assert_eq!(b.pick(None, |_| false), None);
    }

    #[test]
    fn no_peers_pick_none_under_every_policy() {
        for policy in [Policy::RoundRobin, Policy::LeastRequest, Policy::ConsistentHash] {
            let b = Balancer::with_seed(policy, Vec::new(), 1);
            assert_eq!(b.pick(Some(b"k"), |_| true), None);
            assert_eq!(b.pick(None, |_| true), None);
        }
    }

    #[test]
    fn weight_zero_is_raised_to_one() {
        let b = Balancer::with_seed(Policy::RoundRobin, vec![peer(1, 0), peer(2, 1)], 1);
        assert_eq!(b.peers()[0].weight, 1);
        assert_eq!(counts(&b, 10, |_| None), [5, 5]);
    }

    #[test]
    fn least_request_with_equal_load_spreads_by_weight() {
        let b = Balancer::with_seed(Policy::LeastRequest, vec![peer(1, 1), peer(2, 1), peer(3, 2)], 7);
        let c = counts(&b, 40_000, |_| None);
        // No load recorded: every cost is equal, the first draw wins, so the
        // shares are the weights' 1:1:2.
        for (got, want) in c.iter().zip([10_000.0, 10_000.0, 20_000.0]) {
            assert!((*got as f64 - want).abs() < want * 0.05, "{c:?}");
        }
    }

    #[test]
    fn least_request_avoids_the_peer_with_outstanding_requests() {
        let b = Balancer::with_seed(Policy::LeastRequest, peers(2), 3);
        b.start(0);
        // Two peers: both are always the candidates, the idle one wins.
        for _ in 0..100 {
            assert_eq!(b.pick(None, |_| true), Some(1));
        }
        assert_eq!(b.outstanding(0), 1);
    }

    #[test]
    fn least_request_prefers_the_fast_peer_and_forgets_a_slow_past() {
        let b = Balancer::with_seed(Policy::LeastRequest, peers(2), 3);
        let t0 = Instant::now();
        for (i, ms) in [(0, 200), (1, 20)] {
            b.start(i);
            b.finish(i, Duration::from_millis(ms), t0);
        }
        assert_eq!(b.pick(None, |_| true), Some(1));
        // Even 3 outstanding on the fast peer (cost 20 × 4) beat the slow one.
        for _ in 0..3 {
            b.start(1);
        }
        assert_eq!(b.pick(None, |_| true), Some(1));
        // A minute of fast answers from peer 1 only: peer 0's estimate decays
        // (×e^-6) and, idle, it becomes the cheaper one again.
        for s in 1..=60 {
            b.start(1);
            b.finish(1, Duration::from_millis(20), t0 + Duration::from_secs(s));
        }
        assert_eq!(b.pick(None, |_| true), Some(0));
    }

    #[test]
    fn peak_ewma_jumps_up_at_once_and_comes_down_with_time() {
        let t0 = Instant::now();
        let e = Ewma { nanos: 10e6, at: t0 };
        assert_eq!(e.update(Duration::from_millis(50), t0).nanos, 50e6);
        // One time constant later a faster sample takes 1 - 1/e of the weight.
        let down = e.update(Duration::from_millis(0), t0 + DECAY).nanos;
        assert!((down - 10e6 / std::f64::consts::E).abs() < 1.0, "{down}");
        // A burst of fast samples at one instant does not move the estimate.
        assert_eq!(e.update(Duration::from_millis(1), t0).nanos, 10e6);
    }

    #[test]
    fn a_new_peer_is_guessed_at_the_upstream_average_so_it_is_neither_flooded_nor_starved() {
        let b = Balancer::with_seed(Policy::LeastRequest, peers(3), 5);
        let t0 = Instant::now();
        for i in [0, 1] {
            b.start(i);
            b.finish(i, Duration::from_millis(100), t0);
        }
        // Peer 2 has no sample: its cost is the upstream's 100 ms, like the
        // others, so the three share while idle…
        let c = counts(&b, 3_000, |_| None);
        assert!(c.iter().all(|&n| (800..1200).contains(&n)), "{c:?}");
        // …and once it has work outstanding it is not preferred any more.
        b.start(2);
        for _ in 0..100 {
            assert_ne!(b.pick(None, |_| true), Some(2));
        }
    }

    #[test]
    fn least_request_picks_the_only_usable_peer() {
        let b = Balancer::with_seed(Policy::LeastRequest, peers(3), 5);
        b.start(2);
        assert_eq!(b.pick(None, |i| i == 2), Some(2));
        assert_eq!(b.pick(None, |_| false), None);
        for _ in 0..100 {
            assert_ne!(b.pick(None, |i| i != 1), Some(1));
        }
    }

    #[test]
    fn seeded_balancers_choose_the_same_sequence() {
        let a = Balancer::with_seed(Policy::LeastRequest, peers(5), 42);
        let b = Balancer::with_seed(Policy::LeastRequest, peers(5), 42);
        let sa: Vec<_> = (0..50).map(|_| a.pick(None, |_| true)).collect();
        let sb: Vec<_> = (0..50).map(|_| b.pick(None, |_| true)).collect();
        assert_eq!(sa, sb);
    }

    fn key(n: usize) -> Option<Vec<u8>> {
        Some(format!("user-{n}").into_bytes())
    }

    #[test]
    fn the_same_key_goes_to_the_same_peer_whatever_the_peer_order() {
        let b = Balancer::with_seed(Policy::ConsistentHash, peers(5), 1);
        let mut reversed = peers(5);
        reversed.reverse();
        let r = Balancer::with_seed(Policy::ConsistentHash, reversed, 2);
        for n in 0..1_000 {
            let k = key(n).unwrap();
            let i = b.pick(Some(&k), |_| true).unwrap();
            assert_eq!(b.pick(Some(&k), |_| true), Some(i));
            assert_eq!(r.peers()[r.pick(Some(&k), |_| true).unwrap()].addr, b.peers()[i].addr);
        }
    }

    #[test]
    fn the_ring_spreads_keys_by_weight() {
        let b = Balancer::with_seed(Policy::ConsistentHash, vec![peer(1, 1), peer(2, 1), peer(3, 2)], 1);
        let c = counts(&b, 40_000, key);
        for (got, want) in c.iter().zip([10_000.0, 10_000.0, 20_000.0]) {
            assert!((*got as f64 - want).abs() < want * 0.15, "{c:?}");
        }
    }

    #[test]
    fn removing_one_peer_of_ten_moves_only_its_keys() {
        let all = Balancer::with_seed(Policy::ConsistentHash, peers(10), 1);
        let mut nine = peers(10);
        let gone = nine.remove(3).addr;
        let nine = Balancer::with_seed(Policy::ConsistentHash, nine, 1);
        let keys = 20_000;
        let mut moved = 0;
        for n in 0..keys {
            let k = key(n).unwrap();
            let before = all.peers()[all.pick(Some(&k), |_| true).unwrap()].addr;
            let after = nine.peers()[nine.pick(Some(&k), |_| true).unwrap()].addr;
            if before != after {
                assert_eq!(before, gone, "a key of a remaining peer moved");
                moved += 1;
            }
        }
        let share = moved as f64 / keys as f64;
        assert!((0.07..0.13).contains(&share), "{share}");
    }

    #[test]
    fn an_unusable_owner_sends_its_keys_where_a_ring_without_it_would() {
        let all = Balancer::with_seed(Policy::ConsistentHash, peers(6), 1);
        let mut five = peers(6);
        five.remove(2);
        let five = Balancer::with_seed(Policy::ConsistentHash, five, 1);
        for n in 0..2_000 {
            let k = key(n).unwrap();
            let skipped = all.peers()[all.pick(Some(&k), |i| i != 2).unwrap()].addr;
            let without = five.peers()[five.pick(Some(&k), |_| true).unwrap()].addr;
            assert_eq!(skipped, without);
        }
        assert_eq!(all.pick(Some(b"k"), |_| false), None);
        assert_eq!(all.pick(Some(b"k"), |i| i == 4), Some(4));
    }

    #[test]
    fn consistent_hash_without_a_key_round_robins() {
        let b = Balancer::with_seed(Policy::ConsistentHash, vec![peer(1, 2), peer(2, 1)], 1);
        let seq: Vec<usize> = (0..6).map(|_| b.pick(None, |_| true).unwrap()).collect();
        assert_eq!(seq, [0, 1, 0, 0, 1, 0]);
    }
}
