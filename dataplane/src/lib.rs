//! The Moongate dataplane: an HTTP server (hyper 1.x on tokio) that runs
//! OpenResty-style Lua handlers (mlua on LuaJIT) with lua-nginx-module's
//! request lifecycle and `ngx` API.
//!
//! `config` is the dataplane's view of a snapshot; `worker` and `http::server`
//! run one Lua VM per thread; `phase` drives a request through the phases;
//! `lua` holds the VM, the sandbox and the `ngx` API; `shdict` the shared
//! dicts; `durable_timer` the timers stored with them; `standalone` loads
//! LuaRoute files without a cluster.
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
pub mod redb_file;
pub mod request;
pub mod response;
pub mod sched;
pub mod shdict;
pub mod standalone;
pub mod worker;

pub use error::{Error, Result};
