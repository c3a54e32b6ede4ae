// TEMPORARY placeholder until wip/algos lands.
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;
pub struct Peer { pub addr: SocketAddr, pub weight: u32 }
pub enum Policy { RoundRobin, LeastRequest, ConsistentHash }
pub struct Balancer { peers: Vec<Peer>, next: Cell<usize> }
impl Balancer {
    pub fn new(_policy: Policy, peers: Vec<Peer>) -> Balancer { Balancer { peers, next: Cell::new(0) } }
    pub fn peers(&self) -> &[Peer] { &self.peers }
    pub fn pick(&self, _hash_key: Option<&[u8]>, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.peers.len();
        for k in 0..n { let i = (self.next.get() + k) % n; if usable(i) { self.next.set(i + 1); return Some(i); } }
        None
    }
    pub fn start(&self, _i: usize) {}
    pub fn finish(&self, _i: usize, _latency: Duration, _now: std::time::Instant) {}
}
