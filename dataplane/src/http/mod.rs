//! HTTP at the edge: listeners and connections (hyper 1.x, HTTP/1.1 and h2c).

pub mod server;
