//! Proxying, as nginx's `proxy_pass` and `upstream {}`: where a location's
//! requests go (`endpoints`, the Service endpoints the controller sends), and
//! the machinery that carries them there. Per upstream per worker: `balance`
//! chooses a peer, `health` says which peers may be chosen (outlier ejection
//! and active checks), `retry` bounds retries with a budget; `egress` is the
//! operator's policy on which peer addresses may be reached at all.

pub mod balance;
pub mod egress;
pub mod endpoints;
pub mod health;
pub mod retry;
