// TEMPORARY placeholder until wip/algos lands.
use std::time::Instant;
pub struct RetryBudget;
impl RetryBudget {
    pub fn new(_p: u32, _m: u32) -> Self { RetryBudget }
    pub fn deposit(&self, _now: Instant) {}
    pub fn withdraw(&self, _now: Instant) -> bool { true }
}
