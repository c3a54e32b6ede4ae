//! HTTP at the edge: listeners, connections (hyper 1.x, HTTP/1.1 and h2c),
//! response bodies and nginx-style special pages.

pub mod body;
pub mod server;
pub mod special;
