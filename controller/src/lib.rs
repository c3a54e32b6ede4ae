//! Moongate's control plane: watches LuaRoutes, LuaLibraries and EndpointSlices, compiles
//! routes with [`moongate_route`], publishes versioned config to dataplanes over
//! gRPC, and writes status back.
#![forbid(unsafe_code)]

pub mod admin;
pub mod discovery;
pub mod endpoints;
pub mod error;
pub mod fleet;
pub mod leader;
pub mod libraries;
pub mod library_status;
pub mod metrics;
pub mod published;
pub mod reconcile;
pub mod routes;
pub mod run;
pub mod status;
pub mod tls;

pub use error::{Error, Result};
