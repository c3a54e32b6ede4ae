//! Proxying, as nginx's `proxy_pass` and `upstream {}`. The phase driver is
//! `phase::proxy`; this module holds what it works with:
//! - `upstream`: a location's upstream, parsed once when the config loads;
//! - `endpoints`: the Service endpoints the controller sends, apart from routes;
//! - `state`: what a worker keeps per upstream (peers, health, retry budget);
//! - `balance`, `health`, `retry`: peer choice, outlier ejection and active
//!   checks, and the retry budget;
//! - `egress`: the operator's policy on where proxying may connect;
//! - `pool`, `tls`, `body`, `request`: connections and the keep-alive pool,
//!   upstream TLS, the body and head of the request sent upstream.

pub mod balance;
pub mod body;
pub mod egress;
pub mod endpoints;
pub mod health;
pub mod pool;
pub mod request;
pub mod retry;
pub mod state;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

/// One try of a proxied request, for `$upstream_*` variables.
#[derive(Clone, Debug)]
pub struct UpstreamTry {
    pub addr: SocketAddr,
    /// `None`: no response (nginx logs 502 or 504 for these).
    pub status: Option<u16>,
    pub connect: Option<Duration>,
    pub header: Option<Duration>,
    pub response: Option<Duration>,
}

/// What a `balancer` handler decided for one try (`ngx.balancer`).
#[derive(Clone, Debug, Default)]
pub struct BalancerCall {
    /// `set_current_peer(host, port)`.
    pub peer: Option<(String, u16)>,
    /// `set_more_tries(n)`.
    pub more_tries: u32,
    /// `set_timeouts(connect, send, read)`.
    pub timeouts: Option<upstream::Timeouts>,
    /// The previous try's failure, for `get_last_failure()`: ("failed" or
    /// "next", status).
    pub last_failure: Option<(String, u16)>,
}
