//! End-to-end harness shared by the e2e binaries and tests.
//!
//! [`conformance`] runs the nginx + lua-nginx-module conformance cases of
//! `shared/conformance/cases` against the Moongate dataplane.

#![forbid(unsafe_code)]

pub mod conformance;
