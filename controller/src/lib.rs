//! Moongate's control plane: the `LuaRoute` resource, its validation and
//! compilation to LuaJIT bytecode, and the config snapshots sent to dataplanes.
//!
//! Standalone mode in the dataplane uses `source`, `compile` and `snapshot` from
//! here, so a route is validated the same way with or without Kubernetes.
#![forbid(unsafe_code)]

pub mod compile;
pub mod crd;
pub mod error;
pub mod quantity;
pub mod snapshot;
pub mod source;

pub use error::{Error, Problem, Result};
