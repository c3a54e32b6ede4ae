//! The LuaRoute domain, shared by the controller and the dataplane: the
//! LuaRoute and LuaLibrary resources' types, validation, compilation of its Lua to LuaJIT bytecode, the
//! hostname and location rules that decide which routes are served, and routes
//! read from files for standalone mode.
//!
//! A leaf: no Kubernetes client, no gRPC, no I/O beyond reading route files.
//! `kube` comes in with `derive` only, for the resource type.
#![forbid(unsafe_code)]

pub mod compile;
pub mod crd;
pub mod error;
pub mod hostnames;
pub mod index;
pub mod key;
pub mod library;
pub mod location;
pub mod quantity;
pub mod source;
pub mod standalone;

pub use error::{Error, Problem, Result};
pub use key::{LibraryKey, RouteKey};
