//! End-to-end harness shared by the e2e binaries and tests.
//!
//! [`conformance`] runs the nginx + lua-nginx-module conformance cases of
//! `shared/conformance/cases` against the Moongate dataplane.

// deny rather than forbid: `cluster` needs two audited `unsafe` blocks (prctl
// in pre_exec, atexit) to tie child processes' lifetime to ours, and forbid
// cannot be lifted locally.
#![deny(unsafe_code)]

pub mod cluster;
pub mod conformance;
pub mod pki;
