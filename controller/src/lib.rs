//! Moongate's control plane: the `LuaRoute` resource, its validation and
//! compilation to LuaJIT bytecode, and the config snapshots sent to dataplanes.
//!
//! Standalone mode in the dataplane uses `source`, `compile` and `snapshot` from
//! here, so a route is validated the same way with or without Kubernetes.
#![forbid(unsafe_code)]

pub mod admin;
pub mod compile;
pub mod crd;
pub mod discovery;
pub mod endpoints;
pub mod error;
pub mod fleet;
pub mod hostnames;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod published;
pub mod quantity;
pub mod reconcile;
pub mod routes;
pub mod run;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod tls;

pub use error::{Error, Problem, Result};
