//! The Moongate dataplane: an HTTP server (hyper 1.x on tokio) that runs
//! OpenResty-style Lua handlers (mlua on LuaJIT) with lua-nginx-module's
//! request lifecycle and `ngx` API.
//!
//! `config` is the dataplane's view of a snapshot; `worker` and `http::server`
//! run the workers, each with one Lua VM per tenant namespace; `phase` drives a
//! request through the phases, on the state in `request`, made reachable to
//! the Lua API by `context` (the one place request state is ambient);
//! `response` sends the head and holds the body type, special pages and HTTP
//! dates; `lua` holds the VMs, the sandbox and the `ngx` API; `shdict` the
//! shared dicts; `durable_timer` the timers stored with them; `standalone`
//! loads LuaRoute files without a cluster. Dependencies point down this list's
//! request path: nothing below `phase` imports it, nothing below `worker`
//! imports the worker.
#![deny(unsafe_code)]

pub mod admin;
pub mod config;
pub mod context;
pub mod discovery;
pub mod durable_timer;
pub mod error;
pub mod http;
pub mod lua;
pub mod metrics;
pub mod phase;
pub mod proxy;
pub mod redb_file;
pub mod request;
pub mod response;
pub mod sched;
pub mod shdict;
pub mod standalone;
pub mod worker;

pub use error::{Error, Result};
