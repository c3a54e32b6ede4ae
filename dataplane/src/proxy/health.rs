// TEMPORARY placeholder until wip/algos lands.
use std::net::SocketAddr;
use std::time::{Duration, Instant};
pub struct PassiveConfig { pub consecutive_failures: u32, pub base_ejection: Duration, pub max_ejection: Duration, pub enabled: bool }
pub struct PassiveHealth;
impl PassiveHealth {
    pub fn new(_c: PassiveConfig) -> Self { PassiveHealth }
    pub fn usable(&self, _a: SocketAddr, _now: Instant) -> bool { true }
    pub fn success(&self, _a: SocketAddr) {}
    pub fn failure(&self, _a: SocketAddr, _now: Instant) -> Option<Duration> { None }
}
pub struct ActiveHealth;
impl ActiveHealth {
    pub fn new(_h: u32, _u: u32) -> Self { ActiveHealth }
    pub fn healthy(&self, _a: SocketAddr) -> bool { true }
    pub fn record(&self, _a: SocketAddr, _healthy: bool) -> Option<bool> { None }
}
