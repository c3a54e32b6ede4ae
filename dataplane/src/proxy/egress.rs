// TEMPORARY placeholder until wip/algos lands.
use std::net::SocketAddr;
#[derive(Clone, Debug)]
pub struct AllowRule(String);
impl std::str::FromStr for AllowRule { type Err = String; fn from_str(s: &str) -> Result<Self, String> { Ok(AllowRule(s.into())) } }
#[derive(Debug)]
pub struct EgressPolicy;
#[derive(Debug)]
pub struct Refusal(SocketAddr);
impl std::fmt::Display for Refusal { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "egress to {} refused", self.0) } }
impl EgressPolicy {
    pub fn new(_a: Vec<AllowRule>, _o: Vec<SocketAddr>) -> Self { EgressPolicy }
    pub fn check(&self, _a: SocketAddr) -> Result<(), Refusal> { Ok(()) }
}
