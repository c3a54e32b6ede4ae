//! HTTP at the edge: listeners and connections (hyper 1.x, HTTP/1.1 and h2c).

pub mod server;

use std::future::Future;

/// Runs the futures hyper spawns (HTTP/2 streams, server and client side) on
/// the worker's LocalSet, so they stay on the worker's thread.
#[derive(Clone, Copy)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}
