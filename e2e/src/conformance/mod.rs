//! The conformance runner: runs the nginx + lua-nginx-module cases of
//! `shared/conformance/cases` against the Moongate dataplane in standalone mode.
//!
//! Each case becomes one LuaRoute file ([`translate`]), served by a fresh
//! dataplane process ([`server`]); its requests are sent and the responses read
//! as the reference runner `run_nginx.py` does ([`http`]) and checked the same
//! way ([`compare`]).

pub mod case;
pub mod compare;
pub mod http;
pub mod nginx;
pub mod runner;
pub mod server;
pub mod services;
pub mod translate;
